"""What every trace offers a view, whether it is being recorded now or was read from disk.

Views take a `Trace` and nothing else: live and replay are the same code. A subclass
supplies `info`, `steps`, `events(step)`; everything here is derived from those.

`info` is the run's self-description, a JSON object (docs/TRACE_FORMAT.md lists its keys):
model metadata and the quant type of each weight, the vocabulary pieces, the engine and
its settings, the capture policy and the prompt, so replay needs no model file.
"""

from __future__ import annotations

from traces.schema import STOP_ORDER, Event


class Trace:
    info: dict

    @property
    def steps(self) -> list[int]:
        raise NotImplementedError

    def events(self, step: int) -> list[Event]:
        """The events of one step, in the order they were emitted."""
        raise NotImplementedError

    @property
    def complete(self) -> bool:
        """True once the run ended normally (a crashed recording stays False)."""
        raise NotImplementedError

    # Derived: the same for every trace.

    def get(self, step: int, stop: str, layer: int | None = None, part: str = "") -> Event | None:
        for event in self.events(step):
            if event.stop == stop and event.layer == layer and event.part == part:
                return event
        return None

    def find(self, step: int, stop: str) -> list[Event]:
        return [e for e in self.events(step) if e.stop == stop]

    def stops_captured(self) -> list[str]:
        names = {e.stop for step in self.steps for e in self.events(step)}
        return sorted(names, key=STOP_ORDER.__getitem__)

    @property
    def n_layer(self) -> int:
        return int(self.info.get("model", {}).get("n_layer", 0))

    @property
    def pieces(self) -> list[str]:
        return self.info.get("vocab", {}).get("pieces", [])

    def piece(self, token_id: int) -> str:
        pieces = self.pieces
        return pieces[token_id] if 0 <= token_id < len(pieces) else f"<{token_id}>"

    def prompt_ids(self) -> list[int]:
        event = self.get(0, "tokenize")
        return list(event.scalars.get("ids", [])) if event else []

    def generated_ids(self) -> list[int]:
        """The token drawn at each step, in step order."""
        out = []
        for step in self.steps:
            for event in self.events(step):
                if event.stop == "sample" and event.part == "" and "token" in event.scalars:
                    out.append(int(event.scalars["token"]))
        return out

    def context_ids(self, step: int) -> list[int]:
        """Every token the model had seen by the end of `step`: prompt plus drawn tokens before it."""
        return self.prompt_ids() + self.generated_ids()[:step]

    def streamed_text(self) -> str:
        return "".join(
            e.scalars.get("text", "") for step in self.steps for e in self.events(step) if e.stop == "stream"
        )

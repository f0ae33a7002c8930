"""What every trace offers a view, whether it is being recorded now or was read from disk.

Views take a `Trace` and nothing else: live and replay are the same code. A subclass
supplies `info`, `steps`, `events(step)` (and, to be fast, a cached `index(step)`);
everything here is derived from those.

`info` is the run's self-description, a JSON object (docs/TRACE_FORMAT.md lists its keys):
model metadata and the quant type of each weight, the vocabulary pieces, the engine and
its settings, the capture policy and the prompt, so replay needs no model file.

For a notebook (README, "Python API"):

    t = traces.open("run.trace")
    t[0, "attn", 3]                        # numpy: step 0's attention weights at layer 3
    t[0, "qkv", 3, "k"]                    # a named tensor of a multi-tensor event
    t[0, "blocks.3.attn.hook_pattern"]     # the same as t[0, "attn", 3] (traces/names.py)
    for event in t: ...                    # every event, step by step
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from traces.schema import STOP_BY_NAME, STOP_ORDER, Event

# The tensor `trace[step, stop, layer]` means when the event carries several (it always
# means the only one when there is one). qkv and rope carry q, k (and v) of equal standing:
# those need a name.
MAIN_TENSOR = {"text": "bytes", "tokenize": "ids", "embed": "out", "attn_norm": "out", "attn": "weights",
               "attn_out": "out", "ffn_norm": "out", "ffn_out": "out", "residual": "out", "logits": "logits",
               "sample": "probs"}


class NotInTrace(KeyError):
    """`trace[...]` names something the trace does not hold; the message says what it does."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StepIndex:
    """One step's events, and the same events by key and by stop: O(1) lookups for the views."""

    __slots__ = ("events", "by_key", "by_stop")

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events: list[Event] = []
        self.by_key: dict[tuple, Event] = {}
        self.by_stop: dict[str, list[Event]] = {}
        for event in events:
            self.add(event)

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.by_key.setdefault((event.stop, event.layer, event.part), event)  # the first one, as a scan finds
        self.by_stop.setdefault(event.stop, []).append(event)


class TraceTensor(np.ndarray):
    """A tensor from `trace[...]`: a numpy array (a read-only view into the file, for a file)
    that also turns into torch."""

    def to_torch(self):
        """A torch tensor with its own copy of the values (the trace's map is read-only)."""
        import torch

        return torch.from_numpy(np.array(self))

    def __array_wrap__(self, array, context=None, return_scalar=False):
        # Arithmetic on it gives plain numpy (or a Python-level scalar), not more TraceTensors.
        out = np.asarray(array)
        return out[()] if return_scalar else out


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

    @property
    def truncated_at(self):
        """Where the size budget stopped the tensors (`Truncation(step, seq, reason)`), or None."""
        return None

    def hook_cost(self, step: int):
        """What the hook machinery cost this step (traces/schema.py HookCost), or None: not measured
        (a trace older than the measurement, or a step whose cost never reached the recorder)."""
        return None

    def index(self, step: int) -> StepIndex:
        """The step's events by key. Subclasses cache it; this builds it every time."""
        return StepIndex(self.events(step))

    # Derived: the same for every trace.

    def get(self, step: int, stop: str, layer: int | None = None, part: str = "") -> Event | None:
        return self.index(step).by_key.get((stop, layer, part))

    def find(self, step: int, stop: str) -> list[Event]:
        return list(self.index(step).by_stop.get(stop, ()))

    def stops_captured(self) -> list[str]:
        names = {stop for step in self.steps for stop in self.index(step).by_stop}
        return sorted(names, key=STOP_ORDER.__getitem__)

    @property
    def stops(self) -> list[str]:
        """The stops this trace holds events of, in the order a token passes them."""
        return self.stops_captured()

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
            event = self.get(step, "sample")
            if event is not None and "token" in event.scalars:
                out.append(int(event.scalars["token"]))
        return out

    def context_ids(self, step: int) -> list[int]:
        """Every token the model had seen by the end of `step`: prompt plus drawn tokens before it."""
        return self.prompt_ids() + self.generated_ids()[:step]

    def streamed_text(self) -> str:
        return "".join(e.scalars.get("text", "") for step in self.steps
                       for e in self.index(step).by_stop.get("stream", ()))

    # The notebook API.

    def __iter__(self) -> Iterator[Event]:
        for step in self.steps:
            yield from self.index(step).events

    def __getitem__(self, key) -> TraceTensor:
        """`trace[step, stop]`, `trace[step, stop, layer]`, `trace[step, stop, layer, tensor]`, or
        `trace[step, "blocks.3.attn.hook_pattern"]` (a TransformerLens name): one tensor as numpy."""
        from traces.names import resolve

        if not isinstance(key, tuple) or not 2 <= len(key) <= 4:
            raise NotInTrace(f"{key!r}: index a trace as trace[step, stop, layer, tensor] or trace[step, hook_name]")
        step, stop, *rest = key
        layer, name = (rest + [None, None])[:2]
        if len(key) == 2 and stop not in STOP_BY_NAME:
            stop, layer, name = resolve(stop)  # a TransformerLens hook name
        where = f"step {step} · {stop}" + ("" if layer is None else f" · layer {layer}")
        event = self.get(step, stop, layer)
        if event is None:
            raise NotInTrace(f"{where}: no such event in this trace ({self._why_missing(step, stop, layer)})")
        tensors = event.tensors
        dropped = getattr(tensors, "dropped", ())  # a file's events name what the size budget left out
        if name is None:
            if len(tensors) == 1:
                name = next(iter(tensors))
            elif MAIN_TENSOR.get(stop) in tensors or (not tensors and MAIN_TENSOR.get(stop) in dropped):
                name = MAIN_TENSOR[stop]
            elif tensors:
                raise NotInTrace(f"{where}: carries {', '.join(tensors)}; name one, "
                                 f"e.g. trace[{step}, {stop!r}, {layer}, {next(iter(tensors))!r}]")
        if name is None or name not in tensors:
            if name in dropped or (name is None and dropped):
                cut = self.truncated_at
                what = f"tensor {name!r}" if name else f"its tensors ({', '.join(dropped)})"
                raise NotInTrace(f"{where}: {what} not kept: {cut.reason if cut else 'the size budget'}")
            if not tensors:
                raise NotInTrace(f"{where}: the event carries no tensors "
                                 "(the capture policy kept none, or the stop has none)")
            raise NotInTrace(f"{where}: no tensor {name!r} (it carries {', '.join(tensors)})")
        return np.asarray(tensors[name]).view(TraceTensor)


    def _why_missing(self, step: int, stop: str, layer: int | None) -> str:
        steps = self.steps
        if step not in steps:
            return "it holds no steps" if not steps else f"it holds steps {steps[0]}..{steps[-1]}"
        capture = self.info.get("capture")
        if isinstance(capture, dict) and isinstance(capture.get("stops"), dict) and not capture.get("timings"):
            kept = capture["stops"]
            ranges = kept.get(stop, ())
            try:  # the info is the file's word: a hostile one must not turn a KeyError into a TypeError
                if stop not in kept or (layer is not None and ranges is not None
                                        and not any(a <= layer and (b is None or layer <= b) for a, b in ranges)):
                    return f"the capture policy {capture.get('spec')!r} did not record it"
            except (TypeError, ValueError):
                pass
        return "the engine did not emit it"

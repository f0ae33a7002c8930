"""A trace held in memory while a run is live: the recorder appends, the views read.

The engine thread appends and the UI thread reads; appends to a list are atomic in
CPython and a step's list (and its index) is only ever added to, so readers need no lock.

With a capture policy the live trace keeps what a recording keeps -- the same rows, heads
and dtype (traces/policy.py) -- so live and replay show the same tensors, and `max_bytes`
bounds the tensor bytes held in memory as it bounds a trace file.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from traces.base import StepIndex, Trace
from traces.schema import Event, HookCost
from traces.writer import Truncation, budget_reason

if TYPE_CHECKING:
    from traces.policy import CapturePolicy


class KeptTensors(dict):
    """An event's tensors as kept, and the names the size budget left out (as a file's `Tensors`)."""

    dropped: tuple[str, ...] = ()


class MemoryTrace(Trace):
    def __init__(self, info: dict, capture: CapturePolicy | None = None, max_bytes: int | None = None) -> None:
        self.info = info if capture is None else {**info, "capture": capture.describe(max_bytes)}
        self.capture = capture
        self.max_bytes = max_bytes
        self.nbytes = 0  # tensor bytes held
        self._truncated: Truncation | None = None
        self._steps: dict[int, StepIndex] = {}
        self._order: list[int] = []
        self._tokens: dict[int, int] = {}  # step -> the token drawn, as the sample events arrive
        self._text: list[str] = []
        self._costs: dict[int, HookCost] = {}
        self._complete = False

    def __call__(self, event: Event) -> None:
        """A hook-bus listener: keep every event (its tensors as the policy and budget allow)."""
        self.append(event)

    def append(self, event: Event) -> None:
        if (self.capture is not None or self.max_bytes is not None) and event.tensors:
            event = self._keep(event)
        bucket = self._steps.get(event.step)
        if bucket is None:
            bucket = self._steps[event.step] = StepIndex()
            self._order.append(event.step)
        bucket.add(event)
        if event.stop == "sample" and event.part == "" and "token" in event.scalars:
            self._tokens.setdefault(event.step, int(event.scalars["token"]))
        elif event.stop == "stream":
            self._text.append(event.scalars.get("text", ""))

    def step_cost(self, step: int, cost: HookCost) -> None:
        """The hook bus's report of what its hooks cost this step (engine/hooks.py)."""
        self._costs[step] = cost

    def hook_cost(self, step: int) -> HookCost | None:
        return self._costs.get(step)

    def _keep(self, event: Event) -> Event:
        tensors = event.tensors
        if self.capture is not None:
            keep = self.capture.keeps_tensors(event.stop, event.layer)
            tensors = self.capture.shape(event.stop, tensors)[0] if keep else {}
        kept, dropped = KeptTensors(), []
        for name, arr in tensors.items():
            if self._truncated is None and self.max_bytes is not None and self.nbytes + arr.nbytes > self.max_bytes:
                self._truncated = Truncation(event.step, event.seq, budget_reason(self.max_bytes))
            if self._truncated is None:
                kept[name] = arr
                self.nbytes += arr.nbytes
            else:
                dropped.append(name)
        kept.dropped = tuple(dropped)
        return replace(event, tensors=kept)  # the bus's event stays as it was for the other listeners

    def finish(self) -> None:
        self._complete = True

    @property
    def steps(self) -> list[int]:
        return list(self._order)

    def events(self, step: int) -> list[Event]:
        index = self._steps.get(step)
        return list(index.events) if index is not None else []

    def index(self, step: int) -> StepIndex:
        return self._steps.get(step) or StepIndex()

    def generated_ids(self) -> list[int]:
        return [self._tokens[s] for s in self._order if s in self._tokens]

    def streamed_text(self) -> str:
        return "".join(self._text)

    @property
    def truncated_at(self) -> Truncation | None:
        return self._truncated

    @property
    def complete(self) -> bool:
        return self._complete

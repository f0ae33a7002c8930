"""A trace held in memory while a run is live: the recorder appends, the views read.

The engine thread appends and the UI thread reads; appends to a list are atomic in
CPython and a step's list is only ever appended to, so readers need no lock.
"""

from __future__ import annotations

from traces.base import Trace
from traces.schema import Event


class MemoryTrace(Trace):
    def __init__(self, info: dict) -> None:
        self.info = info
        self._steps: dict[int, list[Event]] = {}
        self._order: list[int] = []
        self._complete = False

    def __call__(self, event: Event) -> None:
        """A hook-bus listener: keep every event."""
        self.append(event)

    def append(self, event: Event) -> None:
        bucket = self._steps.get(event.step)
        if bucket is None:
            bucket = self._steps[event.step] = []
            self._order.append(event.step)
        bucket.append(event)

    def finish(self) -> None:
        self._complete = True

    @property
    def steps(self) -> list[int]:
        return list(self._order)

    def events(self, step: int) -> list[Event]:
        return list(self._steps.get(step, ()))

    @property
    def complete(self) -> bool:
        return self._complete

"""Stop timing on a GPU: CUDA events at the stop boundaries, read once per step.

On a GPU the engine's Python only queues kernels, so the CPU clock between two stops measures
the launches, not the work. Instead the bus records a CUDA event on the device's stream at
each stop boundary; the time between two events is the GPU time of the kernels queued between
them. Reading an event's time needs the GPU to have reached it, so the events of a step are
read together when the step ends: one wait for the step's last event, none per stop.

`live`: a listener that must see each event as it happens (the run controller pausing at a
breakpoint, the live views) cannot wait for the step's end, so each stop waits for its own
event instead (those runs copy the stop's tensors to the CPU anyway, which waits as long), and
the next stop's first boundary is recorded after the copies and the listeners, as on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from traces.schema import Event


class CudaStopTimer:
    def __init__(self, device, live: bool = False, make_event: Callable | None = None) -> None:
        """`make_event`: what makes a timing event (torch.cuda.Event(enable_timing=True) by default;
        anything with record(), synchronize() and elapsed_time(other) in ms will do)."""
        if make_event is None:
            import torch

            def make_event():
                return torch.cuda.Event(enable_timing=True)

            self._stream_of = lambda: torch.cuda.current_stream(device)
        else:
            self._stream_of = lambda: None
        self.live = live
        self._make = make_event
        self._free: list = []  # events already read, reused: a 32-layer step marks ~400 boundaries
        self._start = None
        self._start_ns = 0
        self._pending: list[tuple[Event, object]] = []

    def _record(self):
        ev = self._free.pop() if self._free else self._make()
        stream = self._stream_of()
        ev.record() if stream is None else ev.record(stream)
        return ev

    def noop(self) -> None:
        """A boundary nobody reads (the hook bus times a thousand to know what one costs)."""
        self._free.append(self._record())

    def start(self) -> None:
        """The step's first boundary."""
        if self._start is not None:
            self._free.append(self._start)
        self._start = self._record()
        self._start_ns = time.perf_counter_ns()

    def boundary(self):
        """A stop boundary, recorded before the stop's tensors are copied (their copy is not its work)."""
        if self._start is None:
            self.start()
        return self._record()

    def hold(self, event: Event, boundary) -> list[Event]:
        """`event`'s work is what was queued between the previous boundary and `boundary`. Returns
        the events whose times are known now: live, this one; otherwise none until `resolve`."""
        self._pending.append((event, boundary))
        return self.resolve() if self.live else []

    def take(self) -> tuple | None:
        """Detach the stops held so far, to be timed by `times` (later, maybe in another thread);
        the next boundary starts a new chain. None when nothing is held."""
        if not self._pending:
            return None
        held = (self._start, self._start_ns, self._pending)
        self._start, self._pending = None, []
        return held

    def times(self, held: tuple | None) -> list[Event]:
        """Wait for the last boundary of `held` (from `take`), set every event's dur_ns and t_start_ns
        from the GPU's clock, and return them in order. The events read go back to the free list."""
        if held is None:
            return []
        start, t, pending = held
        pending[-1][1].synchronize()  # the stream is in order: every earlier boundary has passed too
        prev = start
        for event, end in pending:
            ns = int(prev.elapsed_time(end) * 1e6)  # ms -> ns
            event.t_start_ns, event.dur_ns = t, ns
            t += ns
            self._free.append(prev)  # (list.append: safe beside the engine thread's pop)
            prev = end
        self._free.append(prev)
        return [event for event, _ in pending]

    def resolve(self) -> list[Event]:
        """`times(take())`: wait here for the stops held so far and return them timed."""
        return self.times(self.take())

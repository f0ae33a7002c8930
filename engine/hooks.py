"""The hook bus: where an engine's stops become events.

An engine calls `bus.wants(stop, layer)` before it prepares anything for a stop, and
`bus.emit(...)` only when that said yes. With no listener `wants` is one attribute
read and a False, so a run nobody watches pays no copies, no syncs and no clock reads.

Listeners are called in order: the recorder first, then the run controller, which may block
(a breakpoint) until the user steps; in the engine's thread, except as `defer` says below.

A stop's duration is the work since the previous stop: the CPU's monotonic clock, or on a
GPU (`on_device`) CUDA events read when the step ends (engine/cuda_timing.py). With `defer`
the listeners get a GPU step's events after it ends, from a background thread that waits for
the step's timing events and its tensors' asynchronous copies (engine/async_copy.py), so the
engine thread never waits for the GPU on a listener's behalf; without it each stop waits for
its own and its tensors are copied at once (a breakpoint needs them now).

What the hooks themselves cost is measured too, per step, and handed to the listeners that have a
`step_cost(step, HookCost)` method (the recorder puts it in the trace): the time inside `emit` --
copies, listeners, the rest -- with the time a listener spends blocked (a paused controller,
which says so in its `blocked_ns`) left out, and the clock's own share from a calibration of
the bus's clock reads (and CUDA event records) at its start.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np

from traces.schema import Event, HookCost, check_stop

CALIBRATION_CALLS = 1000


class Listener(Protocol):
    def __call__(self, event: Event) -> None: ...


def to_numpy(value) -> np.ndarray:
    """A CPU numpy copy of a torch tensor or array-like; the engine's buffers stay untouched."""
    if hasattr(value, "detach"):
        return numpy_ready(value.detach()).cpu().numpy().copy()
    return np.array(value, copy=True)


def numpy_ready(t):
    """`t` in a dtype numpy has: bf16 (and the like) widened to float32, on its own device."""
    if t.dtype.is_floating_point and t.dtype not in (_torch_f32(), _torch_f16()):
        return t.float()
    return t


def _torch_f32():
    import torch

    return torch.float32


def _torch_f16():
    import torch

    return torch.float16


def per_call_ns(fn, n: int = CALIBRATION_CALLS) -> float:
    """What one call of `fn` costs, loop included: the best of three timings of `n` calls (the least
    disturbed by the other threads on the machine)."""
    best = None
    for _ in range(3):
        t = time.perf_counter_ns()
        for _ in range(n):
            fn()
        ns = time.perf_counter_ns() - t
        best = ns if best is None else min(best, ns)
    return best / n


class _Tally:
    """One step's hook cost so far (HookBus fills it; `cost` is what it reports)."""

    def __init__(self, step: int | None = None) -> None:
        self.step = step
        self.stops = self.emit_ns = self.copy_ns = self.listener_ns = self.callback_ns = 0
        self.blocked_ns = self.work_ns = self.reads = self.records = 0

    def cost(self, read_ns: float, record_ns: float) -> HookCost:
        clock = int(self.reads * read_ns + self.records * record_ns)
        hooks = self.emit_ns - self.blocked_ns + self.callback_ns
        return HookCost(self.stops, hooks, self.copy_ns, self.listener_ns - self.blocked_ns, self.callback_ns,
                        clock, round(clock / self.stops, 1) if self.stops else 0.0, self.blocked_ns,
                        self.work_ns + self.emit_ns - self.blocked_ns)


class HookBus:
    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._filter: Callable[[str, int | None], bool] | None = None
        self.enabled = False
        # Which stops' tensors are copied into their events (a capture policy's `keeps_tensors`);
        # None copies all. The others still carry their scalars and timing, and cost no copy.
        self.tensor_filter: Callable[[str, int | None], bool] | None = None
        self._seq = 0
        self._last_ns = 0
        # Hold a GPU step's events until the step ends, so timing needs no wait per stop: for a run
        # nobody steps through (`llm-inspect profile`). Set before the engine's `on_device`.
        self.defer = False
        # Times the stops when the engine runs on a GPU (`on_device`: a CudaStopTimer); None: the CPU clock.
        self.gpu_timer = None
        # With `defer` on a GPU (engine/async_copy.py): the captured tensors' asynchronous copies into
        # pinned memory, and the thread that waits for them and calls the listeners. None: in the engine thread.
        self.copies = None
        self.delivery = None
        # What the hooks cost (HookCost, per step): this step's tally; the listeners that block (have
        # `blocked_ns`, the time they waited for the user) and those told each step's cost (`step_cost`).
        self._tally = _Tally()
        self._blockers: list = []
        self._told: list = []
        self.emitted_ns = 0  # every emit's time so far, blocked included (the llama.cpp engine's callback_cost)
        self.read_ns = 0.0  # one clock read, and one CUDA event record: calibrated when the first listener comes
        self.record_ns = 0.0

    def add(self, listener: Listener) -> None:
        if not self.read_ns:
            self.read_ns = per_call_ns(time.perf_counter_ns)
        self._listeners.append(listener)
        self._sort_listeners()
        self.enabled = True

    def remove(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        self._sort_listeners()
        self.enabled = bool(self._listeners)

    def _sort_listeners(self) -> None:
        self._blockers = [x for x in self._listeners if hasattr(x, "blocked_ns")]
        self._told = [x for x in self._listeners if hasattr(x, "step_cost")]

    def set_filter(self, wants: Callable[[str, int | None], bool] | None) -> None:
        """Narrow the stops emitted (a capture policy); None emits every stop."""
        self._filter = wants

    def wants(self, stop: str, layer: int | None = None) -> bool:
        if not self.enabled:
            return False
        return self._filter is None or self._filter(stop, layer)

    def on_device(self, device) -> None:
        """The engine runs on `device`: on a GPU, time the stops with CUDA events (and with `defer`, deliver
        the events from a background thread, their tensors copied asynchronously)."""
        if getattr(device, "type", str(device).partition(":")[0]) == "cuda":
            from engine.cuda_timing import CudaStopTimer

            self.gpu_timer = CudaStopTimer(device, live=not self.defer)
            self.record_ns = per_call_ns(self.gpu_timer.noop)
            if self.defer:
                from engine.async_copy import PinnedCopies

                self.deliver_later(PinnedCopies())

    def deliver_later(self, copies) -> None:
        """Copy tensors with `copies` (engine/async_copy.py's PinnedCopies) and call the listeners from
        a background thread once a step's copies and timing events have arrived (needs `gpu_timer`)."""
        from engine.async_copy import Delivery

        self.copies, self.delivery = copies, Delivery(self._listeners)

    def start_step(self) -> None:
        """Mark the start of a step's work, so the first stop's duration is its own."""
        if self.enabled:
            if self.gpu_timer is not None:
                self._end_gpu_step()
                self.gpu_timer.start()
            self._last_ns = time.perf_counter_ns()

    def end_step(self) -> None:
        """The step's work is queued (the engine calls this before it yields the step): a GPU
        step's held events get their times and go to the listeners, then the step's hook cost."""
        self._end_gpu_step()
        self._close_step()

    def _end_gpu_step(self) -> None:
        if self.gpu_timer is None:
            return
        if self.delivery is None:
            self._deliver(self.gpu_timer.resolve())
            return
        held = self.gpu_timer.take()
        if held is None:
            return
        fence = self.copies.fence()  # after the step's last copy, which follows its last boundary
        timer, copies = self.gpu_timer, self.copies

        def arrived() -> list[Event]:  # in the delivery thread: the only waits of the step
            fence.synchronize()
            events = timer.times(held)
            for event in events:
                event.tensors = {k: copies.take(v) for k, v in event.tensors.items()}
            return events

        self.delivery.submit(arrived)

    def flush(self) -> None:
        """Every event emitted so far has reached the listeners (the engine calls this when a run ends)."""
        self.end_step()
        if self.delivery is not None:
            self.delivery.flush()

    def callback_cost(self, step: int, ns: int, calls: int) -> None:
        """An engine's own hook machinery outside `emit` (llama.cpp's eval callback, `ns` over `calls`
        calls, each timed by two clock reads; the emits inside it already taken out) belongs to `step`."""
        if not self.enabled:
            return
        if self._tally.step != step:
            self._close_step()
            self._tally.step = step
        self._tally.callback_ns += max(0, ns)
        self._tally.reads += 2 * calls

    def _close_step(self) -> None:
        """Hand the step's hook cost to the listeners that take it (after its events, in their order)."""
        tally, self._tally = self._tally, _Tally()
        if tally.step is None or not (tally.stops or tally.callback_ns) or not self._told:
            return
        step, cost, told = tally.step, tally.cost(self.read_ns, self.record_ns), list(self._told)

        def report() -> list:
            for listener in told:
                listener.step_cost(step, cost)
            return []

        self.delivery.submit(report) if self.delivery is not None else report()

    def emit(
        self,
        stop: str,
        step: int,
        layer: int | None = None,
        part: str = "",
        tensors: dict | None = None,
        **scalars,
    ) -> Event:
        now = time.perf_counter_ns()
        since = now - self._last_ns if self._last_ns else 0  # the engine's work since the last stop (CPU clock)
        tally = self._tally
        if tally.step != step:  # a new step: the last one's cost goes out first
            self._close_step()
            tally = self._tally
            tally.step = step
        boundary = self.gpu_timer.boundary() if self.gpu_timer is not None else None
        check_stop(stop)
        copied = {}
        if tensors and (self.tensor_filter is None or self.tensor_filter(stop, layer)):
            t = time.perf_counter_ns()
            copied = {k: (self.copies.copy(v) if self.copies is not None else to_numpy(v)) for k, v in tensors.items()}
            tally.copy_ns += time.perf_counter_ns() - t
            tally.reads += 2
        event = Event(
            seq=self._seq,
            stop=stop,
            step=step,
            layer=layer,
            part=part,
            tensors=copied,
            scalars=scalars,
            t_start_ns=self._last_ns or now,
            dur_ns=since,
        )
        self._seq += 1
        ready = (event,) if boundary is None else self.gpu_timer.hold(event, boundary)
        blocked = sum(x.blocked_ns for x in self._blockers) if self._blockers else 0
        t = time.perf_counter_ns()
        self._deliver(ready)
        # Copies and listeners (a paused controller included) are not the next stop's work.
        end = self._last_ns = time.perf_counter_ns()
        if self._blockers:
            blocked = sum(x.blocked_ns for x in self._blockers) - blocked
            tally.blocked_ns += blocked
        tally.listener_ns += end - t
        tally.work_ns += since
        tally.stops += 1
        tally.emit_ns += end - now
        tally.reads += 3
        tally.records += 0 if boundary is None else 2 if self.gpu_timer.live else 1
        self.emitted_ns += end - now
        if boundary is not None and self.gpu_timer.live:
            self.gpu_timer.start()
        return event

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            for listener in self._listeners:
                listener(event)

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
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

import numpy as np

from traces.schema import Event, check_stop


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

    def add(self, listener: Listener) -> None:
        self._listeners.append(listener)
        self.enabled = True

    def remove(self, listener: Listener) -> None:
        self._listeners.remove(listener)
        self.enabled = bool(self._listeners)

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
                self.end_step()
                self.gpu_timer.start()
            self._last_ns = time.perf_counter_ns()

    def end_step(self) -> None:
        """The step's work is queued (the engine calls this before it yields the step): a GPU
        step's held events get their times and go to the listeners. Nothing to do on a CPU."""
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
        boundary = self.gpu_timer.boundary() if self.gpu_timer is not None else None
        check_stop(stop)
        event = Event(
            seq=self._seq,
            stop=stop,
            step=step,
            layer=layer,
            part=part,
            tensors=({k: (self.copies.copy(v) if self.copies is not None else to_numpy(v)) for k, v in tensors.items()}
                     if tensors and (self.tensor_filter is None or self.tensor_filter(stop, layer)) else {}),
            scalars=scalars,
            t_start_ns=self._last_ns or now,
            dur_ns=now - self._last_ns if self._last_ns else 0,
        )
        self._seq += 1
        if boundary is None:
            for listener in self._listeners:
                listener(event)
        else:
            self._deliver(self.gpu_timer.hold(event, boundary))
        # Copies and listeners (a paused controller included) are not the next stop's work.
        self._last_ns = time.perf_counter_ns()
        if boundary is not None and self.gpu_timer.live:
            self.gpu_timer.start()
        return event

    def _deliver(self, events: list[Event]) -> None:
        for event in events:
            for listener in self._listeners:
                listener(event)

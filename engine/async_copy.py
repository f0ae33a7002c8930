"""Captured tensors leave the GPU without the engine waiting for them.

`.cpu()` on a CUDA tensor waits until the GPU has computed it: one wait per captured stop, a
few hundred a step, each draining the queue of kernels the engine has launched ahead. Instead
(`PinnedCopies`) each tensor is copied with `non_blocking=True` into a page-locked ("pinned")
host buffer from a pool (by size and dtype), which the GPU's copy engine fills in stream order,
and at the step's end one CUDA event (`fence`) is recorded after the step's last copy. A
background thread (`Delivery`) waits for that event, turns the buffers into numpy arrays, gives
the buffers back to the pool, and calls the listeners (the recorder) with the step's events in
order, while the engine thread is already launching the next step.

Only for runs nobody steps through (HookBus.defer: `llm-inspect profile`, `--record --headless`,
the benches): a live controller that may pause at a breakpoint needs each stop's data when the
stop happens, so live runs copy synchronously (engine/hooks.py `to_numpy`). On the CPU there is
no copy engine to overlap with, and the listeners stay in the engine's thread: calling the
recorder from a thread instead measured no faster (SmolLM2, default capture, 1 torch thread:
8.07 vs 8.32 tok/s, median of 6 rounds, more CPU time), the GIL being shared.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable

import numpy as np

from engine.hooks import numpy_ready, to_numpy


class PendingCopy:
    """A tensor on its way to a pinned host buffer; the array once the fence has passed."""

    __slots__ = ("buffer", "key", "shape")

    def __init__(self, buffer, key, shape):
        self.buffer, self.key, self.shape = buffer, key, shape


class PinnedCopies:
    def __init__(self, host_buffer: Callable | None = None, make_event: Callable | None = None) -> None:
        """`host_buffer(n, dtype)`: a flat host tensor of n elements to copy into (pinned memory by default);
        `make_event()`: something with record() and synchronize() (a torch.cuda.Event by default).
        Tests substitute both."""
        if host_buffer is None:
            import torch

            def host_buffer(n, dtype):
                return torch.empty(n, dtype=dtype, pin_memory=True)

        if make_event is None:
            import torch

            make_event = torch.cuda.Event
        self._alloc, self._make_event = host_buffer, make_event
        self._pool: dict[tuple, list] = {}  # (size, dtype) -> free buffers; a step's set is reused next step
        self._lock = threading.Lock()  # the engine thread takes buffers, the delivery thread gives them back
        self.allocated = 0

    def copy(self, value):
        """Start copying `value` (a tensor) to the host; anything else becomes an array now."""
        if not hasattr(value, "detach"):
            return to_numpy(value)
        t = numpy_ready(value.detach())  # bf16 widened on the device
        # Buffers come in power-of-two sizes, so a tensor that grows a little each step (the
        # attention weights, one key more) reuses last step's buffer, and the pool stays small.
        key = (1 << max(t.numel() - 1, 0).bit_length(), t.dtype)
        with self._lock:
            free = self._pool.get(key)
            buffer = free.pop() if free else None
        if buffer is None:
            buffer = self._alloc(key[0], key[1])
            self.allocated += 1
        buffer[:t.numel()].view(t.shape).copy_(t, non_blocking=True)
        return PendingCopy(buffer, key, t.shape)

    def fence(self):
        """An event after every copy started so far: once it has passed, their buffers hold the data."""
        event = self._make_event()
        event.record()
        return event

    def take(self, value) -> np.ndarray:
        """The array of a copy whose fence has passed (its buffer goes back to the pool)."""
        if not isinstance(value, PendingCopy):
            return value
        # a copy: the pinned buffer is reused by a later step
        array = value.buffer[:math.prod(value.shape)].numpy().reshape(value.shape).copy()
        with self._lock:
            self._pool.setdefault(value.key, []).append(value.buffer)
        return array


class Delivery:
    """A thread that runs `work()` for each submitted step, in order, and hands the events it
    returns to the listeners. At most `depth` steps wait, so a slow recorder slows the engine
    rather than piling up pinned memory. An error in the thread is raised in the engine's
    thread at its next submit or flush."""

    def __init__(self, listeners: list, depth: int = 4) -> None:
        self._listeners = listeners  # the bus's own list: a listener added later is called too
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="llm-inspect-delivery", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], list]) -> None:
        self._raise()
        self._queue.put(work)

    def flush(self) -> None:
        """Wait until every submitted step has reached the listeners."""
        self._queue.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            try:
                if self._error is None:  # after an error, the rest of the run is dropped until it is raised
                    for event in work():
                        for listener in list(self._listeners):
                            listener(event)
            except BaseException as e:  # noqa: BLE001 -- handed to the engine's thread
                self._error = e
            finally:
                self._queue.task_done()

"""Captured tensors leaving a GPU without the engine waiting (engine/async_copy.py), with `defer`.

Without a GPU the pieces a CUDA device would provide are stand-ins: host buffers are ordinary
CPU tensors, the copies' fence and the timing events are objects whose synchronize() can be
held shut by the test and notes which thread waited. What is checked is the bus's side: the
events and tensors the listeners get are those of a synchronous run, in order; they arrive from
the background thread only after the step's fence has passed; the engine thread never waits;
the buffer pool is reused step after step; an error in a listener reaches the engine's caller.
"""

import threading
import time

import numpy as np
import pytest
import torch

from engine.async_copy import PinnedCopies
from engine.cuda_timing import CudaStopTimer
from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace

PROMPT, N = "hello the llama", 12


class StandInEvent:
    """A CUDA event stand-in: the CPU clock at record(); synchronize() waits for `gate` and notes who waited."""

    gate = threading.Event()
    waiters: list[str] = []

    def record(self, stream=None):
        self.ns = time.perf_counter_ns()

    def synchronize(self):
        StandInEvent.waiters.append(threading.current_thread().name)
        assert StandInEvent.gate.wait(timeout=60)

    def elapsed_time(self, end) -> float:
        return (end.ns - self.ns) / 1e6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("async") / "tiny.gguf", seed=2, n_layer=3))


@pytest.fixture(autouse=True)
def open_gate():
    StandInEvent.gate.set()
    StandInEvent.waiters = []
    yield
    StandInEvent.gate.set()


def deferred_bus() -> tuple[HookBus, PinnedCopies]:
    """A bus as `on_device` sets it up on a GPU with `defer`, on stand-ins."""
    bus = HookBus()
    bus.defer = True
    bus.gpu_timer = CudaStopTimer(None, live=False, make_event=StandInEvent)
    copies = PinnedCopies(host_buffer=lambda n, dtype: torch.empty(n, dtype=dtype), make_event=StandInEvent)
    bus.deliver_later(copies)
    return bus, copies


def record(path, bus: HookBus, n: int = N) -> MemoryTrace:
    trace = MemoryTrace({})
    bus.add(trace)
    engine = TorchEngine(path, bus=bus, numerics="exact")
    for _ in engine.generate(PROMPT, n):
        pass
    trace.finish()
    return trace


def key(e):
    """What an event says, its draw's random seed aside (each run seeds its own)."""
    return e.stop, e.layer, e.part, {k: v for k, v in e.scalars.items() if k not in ("seed", "u")}


def test_the_listeners_get_what_a_synchronous_run_gives_them(tiny):
    sync = record(tiny, HookBus())
    bus, copies = deferred_bus()
    arrived = []
    bus.add(lambda e: arrived.append((e.seq, threading.current_thread().name)))
    late = record(tiny, bus)
    assert late.steps == sync.steps == list(range(N))
    assert [s for s, _ in arrived] == sorted(s for s, _ in arrived)  # in order
    assert {name for _, name in arrived} == {"llm-inspect-delivery"}
    for step in sync.steps:
        a, b = sync.events(step), late.events(step)
        assert [key(e) for e in a] == [key(e) for e in b]
        for x, y in zip(a, b):
            assert x.tensors.keys() == y.tensors.keys()
            for k in x.tensors:
                assert y.tensors[k].shape == x.tensors[k].shape and np.array_equal(y.tensors[k], x.tensors[k])
    # every wait (the fences, the timing events) was the delivery thread's, none the engine's
    assert StandInEvent.waiters and set(StandInEvent.waiters) == {"llm-inspect-delivery"}


def test_nothing_arrives_before_the_step_s_copies_have(tiny):
    bus, _ = deferred_bus()
    trace = MemoryTrace({})
    bus.add(trace)
    engine = TorchEngine(tiny, bus=bus, numerics="exact")
    StandInEvent.gate.clear()  # the GPU has not reached the fence yet
    steps = engine.generate(PROMPT, 3)
    assert next(steps).step == 0 and next(steps).step == 1  # the engine runs on without waiting
    assert trace.steps == []
    StandInEvent.gate.set()
    assert [r.step for r in steps] == [2]  # the run's end waits for every step's events
    assert trace.steps == [0, 1, 2]


def test_the_pinned_buffers_are_reused_step_after_step(tiny):
    bus, copies = deferred_bus()
    trace = record(tiny, bus, n=24)
    copied = sum(len(e.tensors) for s in trace.steps for e in trace.events(s))
    per_step = max(sum(len(e.tensors) for e in trace.events(s)) for s in trace.steps)
    assert copied > 20 * per_step
    # at most the steps in flight (queued, plus one in the thread, plus one being launched) each hold
    # a set; a few more where the attention weights outgrow a power of two
    assert copies.allocated <= 3 * per_step


def test_a_listener_error_reaches_the_engine_s_caller(tiny):
    bus, _ = deferred_bus()

    def broken(event):
        if event.step == 1:
            raise OSError("disk full")

    bus.add(broken)
    engine = TorchEngine(tiny, bus=bus, numerics="exact")
    with pytest.raises(OSError, match="disk full"):
        for _ in engine.generate(PROMPT, 6):
            pass


def test_without_defer_each_stop_is_delivered_at_once(tiny):
    """A live run (a controller that may pause at a breakpoint) gets each event, tensors included,
    in the engine's thread before the engine goes on."""
    bus = HookBus()
    bus.gpu_timer = CudaStopTimer(None, live=True, make_event=StandInEvent)
    seen = []
    bus.add(lambda e: seen.append((e.seq, threading.current_thread() is threading.main_thread(),
                                   all(isinstance(t, np.ndarray) for t in e.tensors.values()))))
    engine = TorchEngine(tiny, bus=bus, numerics="exact")
    steps = engine.generate(PROMPT, 2)
    next(steps)
    n = len(seen)
    assert n and all(main and arrays for _, main, arrays in seen)
    assert [s for s, _, _ in seen] == list(range(seen[0][0], seen[0][0] + n))

"""Stop timing on a GPU: CUDA events at each stop boundary, read once at the step's end.

Without a GPU the timer runs on stand-in events that read the CPU clock, which checks the bus's
side (when events reach the listeners, how many waits a step costs, that the durations add up);
the CUDA tests run where torch sees a device."""

import time

import pytest
import torch

from engine.cuda_timing import CudaStopTimer
from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.timing import profile

SLOW_LAYER, N_LAYER = 3, 6
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


class ClockEvent:
    """A stand-in for torch.cuda.Event: records the CPU clock; counts the waits."""

    waits = 0

    def record(self):
        self.ns = time.perf_counter_ns()

    def synchronize(self):
        ClockEvent.waits += 1

    def elapsed_time(self, end) -> float:
        return (end.ns - self.ns) / 1e6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=N_LAYER))


def run(path, bus: HookBus, n: int = 4, device: str = "cpu", slow=None) -> tuple[MemoryTrace, list[int]]:
    """A timing-only run; also, per step, how many events the listeners had when the step was yielded."""
    bus.tensor_filter = lambda stop, layer: False
    engine = TorchEngine(path, bus=bus, numerics="exact", device=device)
    if slow:
        slow(engine)
    trace = MemoryTrace({})
    bus.add(trace)
    seen = []
    for r in engine.generate("hello llama", n):
        seen.append(len(trace.events(r.step)))
    trace.finish()
    return trace, seen


def test_deferred_gpu_timing_waits_once_a_step_and_delivers_at_its_end(tiny):
    bus = HookBus()
    bus.defer = True
    bus.gpu_timer = CudaStopTimer(None, live=False, make_event=ClockEvent)
    arrived: dict[int, list[int]] = {}  # step -> when each of its events reached a listener
    bus.add(lambda e: arrived.setdefault(e.step, []).append(time.perf_counter_ns()))
    ClockEvent.waits = 0
    trace, seen = run(tiny, bus)
    assert ClockEvent.waits == len(trace.steps)  # one wait per step, none per stop
    assert seen == [len(trace.events(s)) for s in trace.steps]  # every event in before the step is yielded
    for s in trace.steps:  # and none before the step's work was done
        last = trace.events(s)[-1]
        assert min(arrived[s]) >= last.t_start_ns + last.dur_ns
    for s in trace.steps:
        events = trace.events(s)
        assert all(e.dur_ns >= 0 for e in events) and sum(e.dur_ns for e in events) > 0
        # back to back: each stop starts where the previous one ended
        assert all(b.t_start_ns == a.t_start_ns + a.dur_ns for a, b in zip(events, events[1:]))


def test_live_gpu_timing_waits_per_stop(tiny):
    bus = HookBus()
    bus.gpu_timer = CudaStopTimer(None, live=True, make_event=ClockEvent)
    ClockEvent.waits = 0
    trace, _ = run(tiny, bus, n=2)
    assert ClockEvent.waits == sum(len(trace.events(s)) for s in trace.steps)


def test_the_cpu_bus_has_no_gpu_timer(tiny):
    bus = HookBus()
    TorchEngine(tiny, bus=bus, numerics="exact")
    assert bus.gpu_timer is None


@cuda
def test_cuda_events_time_the_gpu_work_not_the_launch(tiny):
    """A layer whose ffn_down queues a GPU kernel that spins: the CPU returns at once, so only
    the GPU's clock can see it; the profile must name that layer first."""
    def slow(engine):
        fast = engine.model.num.linear

        def linear(x, w, name):
            if name.startswith(f"blk.{SLOW_LAYER}.ffn_down"):
                torch.cuda._sleep(20_000_000)  # ~10 ms of GPU cycles
            return fast(x, w, name)

        engine.model.num.linear = linear

    bus = HookBus()
    bus.defer = True
    trace, _ = run(tiny, bus, n=5, device="cuda", slow=slow)
    assert isinstance(bus.gpu_timer, CudaStopTimer)
    first = profile(trace).rows[0]
    assert (first.stop, first.layer) == ("ffn_out", SLOW_LAYER)
    assert first.vs_peers > 5

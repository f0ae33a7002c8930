"""What watching costs: the hook bus measures its own time per step, the trace keeps it, the
profile and the timing view show it (engine/hooks.py, traces/schema.py HookCost)."""

import json
import threading
import time
from types import SimpleNamespace

import pytest

from engine import hooks
from engine.controller import Breakpoint, RunController
from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.cli import main
from inspector.commands.profile import table
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.policy import parse
from traces.reader import TraceError, open_trace
from traces.schema import Event, HookCost
from traces.timing import profile
from traces.writer import TraceWriter
from views.hook_cost import NOT_MEASURED, hooks_text
from views.selection import Selection
from views.timing import TimingView

N_LAYER = 3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=N_LAYER))


def record(model: str, path, n: int = 3, listeners=()) -> None:
    """A run recorded with the default capture, as `llm-inspect run --record` does."""
    bus = HookBus()
    engine = TorchEngine(model, bus=bus, numerics="exact", background_load=False)
    info = engine.info("hello llama", n)
    policy = parse("default").bind(info["model"], len(engine.encode("hello llama")), None)
    bus.set_filter(policy.wants)
    bus.tensor_filter = policy.keeps_tensors
    writer = TraceWriter(path, info, capture=policy)
    bus.add(writer)
    for listener in listeners:
        bus.add(listener)
    for _ in engine.generate("hello llama", n):
        pass
    writer.close()


def test_default_capture_records_a_hook_cost_within_each_step(tiny, tmp_path):
    record(tiny, tmp_path / "run.trace")
    trace = open_trace(tmp_path / "run.trace")
    assert trace.steps == [0, 1, 2]
    for step in trace.steps:
        cost = trace.hook_cost(step)
        assert cost is not None, step
        assert cost.stops == len(trace.events(step))  # every emit counted, each once
        assert cost.hooks_ns > 0 and cost.copy_ns > 0 and cost.listener_ns > 0  # default capture copies tensors
        assert cost.clock_ns > 0 and cost.boundary_ns > 0
        assert cost.hooks_ns >= cost.copy_ns + cost.listener_ns
        # the step's wall time is its stops' work plus the hooks: the hooks are a part of it
        assert cost.hooks_ns <= cost.wall_ns
        assert cost.wall_ns >= sum(e.dur_ns for e in trace.events(step))
        assert cost.blocked_ns == 0
    prof = profile(trace)
    assert prof.hooks is not None and 0 < prof.hooks.hooks_ns
    assert "hooks: " in table(prof) and "of the step: copies" in table(prof)


def test_a_slow_listener_is_counted_as_listener_time_not_as_the_stops(tiny, tmp_path):
    nap = 0.002

    def sleepy(event: Event) -> None:
        time.sleep(nap)

    trace = MemoryTrace({})
    bus = HookBus()
    engine = TorchEngine(tiny, bus=bus, numerics="exact", background_load=False)
    bus.add(trace)
    bus.add(sleepy)
    for _ in engine.generate("hello llama", 3):
        pass
    for step in trace.steps:
        cost = trace.hook_cost(step)
        assert cost.listener_ns >= cost.stops * nap * 1e9
        assert cost.hooks_ns >= cost.listener_ns
        # the naps are the hooks' time, which the stops' own durations leave out
        assert cost.wall_ns - sum(e.dur_ns for e in trace.events(step)) >= cost.stops * nap * 1e9


class FakeClock:
    """perf_counter_ns that moves 10 ns a read, plus what a test adds: the bus's arithmetic exactly."""

    def __init__(self) -> None:
        self.ns = 1_000_000

    def perf_counter_ns(self) -> int:
        self.ns += 10
        return self.ns


def test_time_blocked_in_a_listener_is_left_out(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(hooks, "time", SimpleNamespace(perf_counter_ns=clock.perf_counter_ns))
    pause = 10**12

    class Pausing:  # a controller at a breakpoint: waits `pause` and says so
        blocked_ns = 0

        def __call__(self, event):
            clock.ns += pause
            self.blocked_ns += pause

    trace = MemoryTrace({})
    bus = HookBus()
    bus.add(trace)
    bus.add(Pausing())
    bus.start_step()
    bus.emit("batch", 0, ids=[1])
    bus.emit("logits", 0, tensors={"logits": [0.5, 0.25]})
    bus.end_step()
    cost = trace.hook_cost(0)
    assert cost.stops == 2 and cost.blocked_ns == 2 * pause
    assert 0 < cost.hooks_ns < 1000 and 0 < cost.listener_ns < cost.hooks_ns and cost.copy_ns > 0
    assert cost.wall_ns < 1000  # the pauses are in neither the hooks nor the step
    assert "paused, left out" in hooks_text(cost)


def test_a_paused_controller_reports_its_wait(tiny):
    trace = MemoryTrace({})
    controller = RunController([Breakpoint.parse("logits")])
    bus = HookBus()
    engine = TorchEngine(tiny, bus=bus, numerics="exact", background_load=False)
    bus.add(trace)
    bus.add(controller)
    wait = 0.05

    def resume_after_a_while():
        while controller.paused_at is None:
            time.sleep(0.001)
        time.sleep(wait)
        controller.run_to_end()

    helper = threading.Thread(target=resume_after_a_while)
    helper.start()
    for _ in engine.generate("hello llama", 2):
        pass
    helper.join()
    assert trace.hook_cost(0).blocked_ns >= wait * 1e9
    assert trace.hook_cost(0).hooks_ns <= trace.hook_cost(0).wall_ns


def test_a_trace_without_hook_cost_says_not_measured(tmp_path):
    path = tmp_path / "old.trace"
    with TraceWriter(path, {"model": {"n_layer": 1}}) as w:  # no step_cost: as traces written before it
        for step in (0, 1):
            w(Event(2 * step, "batch", step, dur_ns=1000))
            w(Event(2 * step + 1, "logits", step, dur_ns=5000))
    trace = open_trace(path)
    assert trace.hook_cost(1) is None
    prof = profile(trace)
    assert prof.hooks is None and prof.to_json()["hooks"] is None
    assert NOT_MEASURED in table(prof) and "not measured" in NOT_MEASURED
    view = TimingView()
    view.show(trace, Selection(step=1, stop="logits"))
    assert "hooks: not measured" in view.rendered_text().plain


def test_the_timing_view_shows_the_steps_hook_cost(tiny, tmp_path):
    record(tiny, tmp_path / "run.trace", n=2)
    trace = open_trace(tmp_path / "run.trace")
    view = TimingView()
    view.show(trace, Selection(step=1, stop="attn"))
    line = view.rendered_text().plain.splitlines()[1]
    assert line.startswith("hooks ") and f"{trace.hook_cost(1).stops} stops" in line


def test_a_bad_hooks_object_is_a_trace_error(tmp_path):
    path = tmp_path / "bad.trace"
    with TraceWriter(path, {}) as w:
        w(Event(0, "batch", 0))
        w.step_cost(0, HookCost(stops=1, hooks_ns=5))
    assert open_trace(path).hook_cost(0) == HookCost(stops=1, hooks_ns=5)
    with pytest.raises(ValueError, match="hooks_ns"):
        HookCost.from_json({"stops": 1, "hooks_ns": -3})
    with pytest.raises(ValueError, match="stops"):
        HookCost.from_json({"stops": "many", "hooks_ns": 3})
    raw = bytearray(path.read_bytes())
    at = raw.find(b'"hooks_ns":5')
    raw[at:at + 12] = b'"hooks_nx":5'  # the total gone (crc fixed below)
    _refix_table_crc(raw, at)
    broken = tmp_path / "broken.trace"
    broken.write_bytes(bytes(raw))
    with pytest.raises(TraceError, match="hooks"):
        open_trace(broken).hook_cost(0)


def _refix_table_crc(raw: bytearray, inside: int) -> None:
    """Recompute the crc32 of the record holding byte `inside` (a TABLE), so only its content is wrong."""
    import struct
    import zlib

    from traces.writer import RECORD, TABLE

    pos = raw.rfind(struct.pack("<I", TABLE), 0, inside)
    kind, _, n = RECORD.unpack_from(raw, pos)
    assert kind == TABLE
    start = pos + RECORD.size
    struct.pack_into("<I", raw, pos + 4, zlib.crc32(bytes(raw[start:start + n])))


def test_profile_json_carries_the_hook_cost(tiny, capsys):
    assert main(["profile", tiny, "hello llama", "-n", "3", "--numerics", "exact", "--json", "--no-roofline"]) == 0
    hooks_json = json.loads(capsys.readouterr().out)["hooks"]
    assert hooks_json["stops"] > 0 and 0 < hooks_json["hooks_ns"] <= hooks_json["wall_ns"]
    assert hooks_json["copy_ns"] == 0  # the profile copies nothing


def test_llamacpp_engine_counts_its_eval_callback(tiny):
    from engine.llamacpp_engine import LlamaCppEngine

    bus = HookBus()
    engine = LlamaCppEngine(tiny, bus=bus, threads=2)
    trace = MemoryTrace({})
    bus.add(trace)
    for _ in engine.generate("hello llama", 3):
        pass
    engine.close()
    assert trace.steps == [0, 1, 2]
    for step in trace.steps:
        cost = trace.hook_cost(step)
        assert cost.stops == len(trace.events(step))
        assert cost.callback_ns > 0 and cost.hooks_ns >= cost.callback_ns + cost.listener_ns
        assert cost.hooks_ns <= cost.wall_ns
    assert "eval callback" in hooks_text(trace.hook_cost(1))

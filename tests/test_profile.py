"""Finding the slow layer: a layer made slow on purpose is the one the profile names first."""

import json
import time

import pytest

from engine.breakpoints import Breakpoint, PeerTimes
from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.cli import main
from inspector.commands.profile import table
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.schema import Event
from traces.timing import profile

SLOW_LAYER, N_LAYER = 3, 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=N_LAYER))


def slowed(engine: TorchEngine, weight: str, seconds: float) -> None:
    """Make one matmul of the model slow, the way a bad kernel or a cold page would."""
    num = engine.model.num
    fast = num.linear

    def linear(x, w, name):
        if name.startswith(weight):
            time.sleep(seconds)
        return fast(x, w, name)

    num.linear = linear


def test_profile_names_the_slow_layer_first(tiny):
    bus = HookBus()
    bus.tensor_filter = lambda stop, layer: False
    engine = TorchEngine(tiny, bus=bus, numerics="exact")
    slowed(engine, f"blk.{SLOW_LAYER}.ffn_down", 0.02)
    trace = MemoryTrace({})
    bus.add(trace)
    for _ in engine.generate("hello llama", 6):
        pass
    assert all(not e.tensors for s in trace.steps for e in trace.events(s))  # timing only: no copies
    prof = profile(trace)
    first = prof.rows[0]
    assert (first.stop, first.layer) == ("ffn_out", SLOW_LAYER)
    # first among the outliers too (a loaded machine may add a noisy one further down)
    assert [(r.stop, r.layer) for r in prof.outliers][0] == ("ffn_out", SLOW_LAYER)
    assert first.vs_peers > 10
    assert f"ffn_out@{SLOW_LAYER}" in table(prof)


def test_profile_command_prints_json(tiny, capsys):
    assert main(["profile", tiny, "hello llama", "-n", "3", "--numerics", "exact", "--json", "--no-roofline"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_decode"] == 2 and out["rows"]
    stops = {r["stop"] for r in out["rows"]}
    assert {"attn", "ffn_out", "logits"} <= stops


def test_profile_bad_factor_is_one_line(tiny, capsys):
    assert main(["profile", tiny, "--factor", "0.5", "--headless"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_relative_slow_breakpoint_compares_with_peer_layers():
    bp = Breakpoint.parse("slow>3x")
    assert str(bp) == "slow>3x"
    peers = PeerTimes()
    verdicts = []
    for layer, ms in enumerate([1.0, 1.1, 0.9, 1.0, 5.0, 1.0]):
        e = Event(0, "ffn_out", 1, layer, dur_ns=int(ms * 1e6))
        verdicts.append(bp.matches(e, peers))
        peers.add(e)
    assert verdicts == [False, False, False, False, True, False]  # no verdict before three peers
    # the next step starts with no peers of its own: the previous decode step's stand in
    assert bp.matches(Event(0, "ffn_out", 2, 0, dur_ns=4_000_000), peers)


def test_break_slow_needs_a_factor(capsys):
    assert main(["--break-slow", "lots", "--headless"]) == 2
    assert "bad breakpoint" in capsys.readouterr().err


def record_profile(path, model: str, slow: float = 0.0) -> str:
    """A timing-only run written to `path`, as `llm-inspect profile --record` writes it."""
    from traces.writer import TraceWriter

    bus = HookBus()
    bus.tensor_filter = lambda stop, layer: False
    engine = TorchEngine(model, bus=bus, numerics="exact")
    if slow:
        slowed(engine, f"blk.{SLOW_LAYER}.ffn_down", slow)
    with TraceWriter(path, engine.info("hello llama", 8)) as writer:
        bus.add(writer)
        for _ in engine.generate("hello llama", 8):
            pass
    return str(path)


def test_compare_names_what_got_slower_and_faster(tiny, tmp_path):
    import traces
    from traces.timing import compare

    fast = record_profile(tmp_path / "fast.trace", tiny)
    slow = record_profile(tmp_path / "slow.trace", tiny, slow=0.02)
    with traces.open(fast) as a, traces.open(slow) as b:
        worse = compare(a, b)
        better = compare(b, a)
    first = worse.changes[0]
    assert (first.stop, first.layer, first.verdict) == ("ffn_out", SLOW_LAYER, "slower")
    assert first.ratio > 5 and worse.b_step_ns > worse.a_step_ns
    assert (better.changes[0].stop, better.changes[0].layer, better.changes[0].verdict) == ("ffn_out", SLOW_LAYER, "faster")
    # the same run against itself: nothing beyond noise
    with traces.open(fast) as a, traces.open(fast) as a2:
        same = compare(a, a2)
    assert not [c for c in same.changes if c.verdict] and all(c.ratio == 1.0 for c in same.changes)


def test_profile_compare_command(tiny, tmp_path, capsys):
    fast = record_profile(tmp_path / "fast.trace", tiny)
    slow = record_profile(tmp_path / "slow.trace", tiny, slow=0.02)
    assert main(["profile", "--compare", fast, slow, "--top", "5"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.strip().startswith("1 "))
    assert "ffn_out" in row and f" {SLOW_LAYER} " in row and "slower" in row
    assert main(["profile", "--compare", fast, slow, "--json"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["changes"][0]["verdict"] == "slower"


def test_profile_compare_bad_input_is_one_line(tiny, tmp_path, capsys):
    assert main(["profile", "--compare", str(tmp_path / "nope.trace"), str(tmp_path / "nope2.trace")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["profile", tiny, "--compare", "a", "b"]) == 2
    assert "no model" in capsys.readouterr().err


def made_up(per_step: dict[tuple[str, int | None], list[int]]) -> MemoryTrace:
    """A trace whose decode steps 1..n give each (stop, layer) the listed durations."""
    trace = MemoryTrace({})
    n = len(next(iter(per_step.values())))
    seq = 0
    for step in range(n + 1):
        for (stop, layer), ns in per_step.items():
            trace.append(Event(seq, stop, step, layer, dur_ns=ns[step - 1] if step else ns[0]))
            seq += 1
    trace.finish()
    return trace


def test_compare_calls_a_change_only_beyond_the_runs_noise():
    from traces.timing import compare

    steady = [1_000_000] * 6
    a = made_up({("ffn_out", 0): steady, ("qkv", 0): steady, ("attn", 0): [1_000_000, 200_000] * 3,
                 ("rope", 0): [5_000] * 6})
    b = made_up({("ffn_out", 0): [1_300_000] * 6,  # 30% slower, every step: news
                 ("qkv", 0): [1_050_000] * 6,  # 5%: under the 10% floor
                 ("attn", 0): [1_200_000, 400_000] * 3,  # median +33%, but it swings more than that
                 ("rope", 0): [15_000] * 6})  # 3x, but 10 µs of a 3 ms step
    verdicts = {(c.stop, c.layer): c.verdict for c in compare(a, b).changes}
    assert verdicts == {("ffn_out", 0): "slower", ("qkv", 0): "", ("attn", 0): "", ("rope", 0): ""}
    assert compare(a, b).changes[0].stop == "ffn_out"  # the biggest change in time first

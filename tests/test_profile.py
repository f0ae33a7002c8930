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
    assert main(["profile", tiny, "hello llama", "-n", "3", "--numerics", "exact", "--json"]) == 0
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

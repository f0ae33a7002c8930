"""The q·k·v view on a YaRN model (a tiny deepseek2 stretched 4× past 64 positions): the angles it
draws are the ones the engines turned the keys by, read back from the trace's own qkv and rope
tensors, for the torch engine and for llama.cpp."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.app import make_app
from tests.fixtures.screen import screen_text
from tests.tiny_deepseek import N_ROT, write_tiny_deepseek2
from traces.live import MemoryTrace
from traces.policy import parse
from views.qkv import read_head

YARN = {"factor": 4.0, "n_ctx_orig": 64, "log_mul": 0.1}
PROMPT = "hello, llama! " * 2
N_STEPS = 3


def record(engine) -> MemoryTrace:
    info = engine.info(PROMPT, N_STEPS)
    policy = parse("default").bind(info["model"], 8, None)
    trace = MemoryTrace(info, capture=policy)
    engine.bus.set_filter(policy.wants)
    engine.bus.tensor_filter = policy.keeps_tensors
    engine.bus.add(trace)
    for _ in engine.generate(PROMPT, N_STEPS):
        pass
    trace.finish()
    return trace


@pytest.fixture(scope="module")
def yarn_file(tmp_path_factory):
    return str(write_tiny_deepseek2(tmp_path_factory.mktemp("yarn") / "ds.gguf", n_layer=2, yarn=YARN))


@pytest.fixture(scope="module")
def torch_trace(yarn_file):
    return record(TorchEngine(yarn_file, bus=HookBus(), background_load=False))


def turned_angles(trace, step: int, layer: int) -> tuple[list[int], np.ndarray]:
    """The angle each position's k_pe pairs were really turned by [T, rope_dim/2]: k_pe before RoPE
    (the last rope_dim values of qkv's k) against after (rope's k), adjacent pairs (2i, 2i+1)."""
    x = trace.get(step, "qkv", layer).tensors["k"][:, 0, -N_ROT:].astype(np.float64)
    y = trace.get(step, "rope", layer).tensors["k"][:, 0, -N_ROT:].astype(np.float64)
    x0, x1, y0, y1 = x[:, 0::2], x[:, 1::2], y[:, 0::2], y[:, 1::2]
    return trace.get(step, "rope", layer).scalars["positions"], np.arctan2(x0 * y1 - x1 * y0, x0 * y0 + x1 * y1)


def wrapped(a: np.ndarray) -> np.ndarray:
    return (a + np.pi) % (2 * np.pi) - np.pi


def assert_view_draws_the_turned_angles(trace):
    for step in range(N_STEPS):
        for layer in (0, 1):
            h = read_head(trace, step, layer, 0)
            assert h.rope_dim == N_ROT and len(h.inv_freq) == N_ROT // 2  # not the 64-wide cached row
            positions, turned = turned_angles(trace, step, layer)
            assert h.positions == positions
            drawn = np.outer(positions, h.inv_freq)
            assert np.abs(wrapped(drawn - turned)).max() < 1e-4, (step, layer)


def test_the_view_draws_the_angles_the_torch_engine_turned(torch_trace):
    assert_view_draws_the_turned_angles(torch_trace)
    # plain RoPE's angles (what the view drew before) are off by a quarter turn and more on the slowed pairs
    positions, turned = turned_angles(torch_trace, 0, 0)
    plain = np.outer(positions, 10000.0 ** (-np.arange(0, N_ROT, 2) / N_ROT))
    assert np.abs(wrapped(plain - turned)).max() > 0.4


def test_the_view_draws_the_angles_llama_cpp_turned(yarn_file):
    pytest.importorskip("llama_cpp")
    from engine.llamacpp_engine import LlamaCppEngine

    engine = LlamaCppEngine(yarn_file, bus=HookBus(), threads=2)
    try:
        assert_view_draws_the_turned_angles(record(engine))
    finally:
        engine.close()


def test_the_rope_scaling_in_the_trace_info(torch_trace):
    s = torch_trace.info["model"]["rope_scaling"]
    assert (s["type"], s["factor"], s["n_ctx_orig"]) == ("yarn", 4.0, 64)
    assert len(s["ramp"]) == len(s["inv_freq"]) == N_ROT // 2
    assert s["ramp"][0] == 1.0 and s["ramp"][-1] == 0.0  # the fastest pair kept, the slowest slowed 4×
    plain = 10000.0 ** (-np.arange(0, N_ROT, 2) / N_ROT)
    assert s["inv_freq"][0] == pytest.approx(plain[0]) and s["inv_freq"][-1] == pytest.approx(plain[-1] / 4)


async def test_the_legend_says_which_pairs_yarn_slows(torch_trace):
    app = make_app(torch_trace)
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        assert "YaRN ×4: pairs 0→0 kept, 3→7 ÷4" in screen_text(app)


def fixed_clock(trace: MemoryTrace) -> MemoryTrace:
    """The same events, each timed 1 µs, so a snapshot shows no measured durations."""
    out = MemoryTrace(trace.info)
    for step in trace.steps:
        for e in trace.events(step):
            out.append(dataclasses.replace(e, t_start_ns=e.seq * 1000, dur_ns=1000))
    out.finish()
    return out


def test_qkv_view_yarn_snapshot(snap_compare, torch_trace):
    assert snap_compare(make_app(fixed_clock(torch_trace)), press=["v"], terminal_size=(80, 24))

"""The MoE routing view, on a trace recorded from a tiny Mixtral-style model (tests/tiny_moe.py):
each token's picks and gate weights over the router's probabilities, and the experts' load."""

import dataclasses

import pytest

from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.app import make_app
from tests.fixtures.screen import screen_text
from tests.tiny_moe import write_tiny_moe
from traces.live import MemoryTrace
from views.moe import HeatGrid, read_routing

PROMPT = "hello the llama"
N_LAYER = 3


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """Prefill and two decode steps; every stop but the per-layer tensors the view does not read."""
    path = str(write_tiny_moe(tmp_path_factory.mktemp("moe-view") / "mixtral.gguf", n_layer=N_LAYER))
    bus = HookBus()
    engine = TorchEngine(path, bus=bus)
    bus.set_filter(lambda stop, layer: stop in ("text", "tokenize", "moe", "logits", "sample", "stream"))
    recorded = MemoryTrace(engine.info(PROMPT, 3))
    bus.add(recorded)
    list(engine.generate(PROMPT, 3))
    # The numbers are the model's (fixed seed); the clock is not: give every event a fixed time.
    t = MemoryTrace(recorded.info)
    for step in recorded.steps:
        for event in recorded.events(step):
            t.append(dataclasses.replace(event, t_start_ns=1_000 * event.seq, dur_ns=1_000 + 100 * (event.layer or 0)))
    t.finish()
    return t


def test_reads_each_tokens_picks_and_the_load(trace):
    r = read_routing(trace, 0, 1)
    T = len(trace.prompt_ids())
    assert r.experts.shape == (T, 2) and r.probs.shape == (T, 8) and r.k == 2 and r.n_expert == 8
    assert r.tokens == trace.prompt_ids() and r.positions == list(range(T))
    assert r.load.sum() == 2 * T and r.load.tolist() == trace.get(0, "moe", 1).scalars["load"]
    decode = read_routing(trace, 2, 0)
    assert decode.positions == [T + 1] and decode.tokens == [trace.generated_ids()[1]]
    assert read_routing(trace, 0, N_LAYER) is None


async def test_the_moe_stop_opens_the_view_and_x_picks_it(trace):
    app = make_app(trace)
    async with app.run_test(size=(110, 34)) as pilot:
        app.select_stop("moe", 1)
        await pilot.pause()
        assert app.selection.view == "moe"
        text = screen_text(app)
        assert f"experts · step 0 (prefill) · layer 1/{N_LAYER} · softmax · top-2 of 8 · renormalized" in text
        r = read_routing(trace, 0, 1)
        e, w = r.experts[0], r.weights[0]
        assert f"e{e[0]} {w[0]:.2f}" in text and f"e{e[1]} {w[1]:.2f}" in text
        assert "busiest" in text and "L0" in text and f"L{N_LAYER - 1}" in text
        # The picked experts carry the dot in their token's row.
        grid = app.query_one("#moe-tokens", HeatGrid)
        row = "".join(seg.text for seg in grid.render_line(1))
        cells = row.split("│", 1)[1]
        assert sorted(i // 2 for i, ch in enumerate(cells) if ch == "●") == sorted(e.tolist())
        await pilot.press("t", "x")
        await pilot.pause()
        assert app.selection.view == "moe"


async def test_a_dense_model_has_no_moe_event_and_says_so(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=(100, 30)) as pilot:
        app.select_stop("moe", 0)
        await pilot.pause()
        assert "no moe event for this step and layer" in screen_text(app)


def test_moe_view_snapshot(snap_compare, trace):
    async def run_before(pilot):
        pilot.app.select_stop("moe", 1)
        await pilot.pause()

    assert snap_compare(make_app(trace), run_before=run_before, terminal_size=(110, 34))

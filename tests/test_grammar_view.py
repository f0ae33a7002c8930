"""The grammar view on a real grammar-constrained run (tests/fixtures/grammar_run.py)."""

import json

import numpy as np

from inspector.app import make_app
from tests.fixtures import grammar_run
from tests.fixtures.screen import screen_text
from views.grammar import read_step


def test_each_step_reads_the_mask_the_draw_and_the_state():
    trace = grammar_run.trace()
    text = trace.streamed_text()
    assert json.loads(text)["animal"] in ("llama", "alpaca", "vicuna")
    steps = [read_step(trace, s) for s in trace.steps]
    assert all(g is not None and 0 < g.allowed < g.n_vocab == 49_152 for g in steps)
    for g in steps:
        assert g.drawn in g.ids[:1]  # greedy: the drawn token is the most likely allowed one
        assert abs(sum(g.probs) - 1) < 1e-6 or g.allowed > len(g.ids)
        assert np.all(np.diff(g.probs) <= 0)
    assert not steps[0].accepting and steps[-1].accepting
    assert trace.generated_ids()[-1] in (0, 2, 4)  # the run ended with an end-of-generation token


async def test_m_opens_the_grammar_view():
    app = make_app(grammar_run.trace())
    async with app.run_test(size=(120, 36)) as pilot:
        await pilot.press("m")
        await pilot.pause()
        text = screen_text(app)
        assert app.selection.view == "grammar" and app.selection.stop == "grammar"
        assert "grammar · step 0 · animal.json (json-schema)" in text
        assert "of 49,152 tokens" in text and "must go on" in text


def test_grammar_view_snapshot(snap_compare):
    async def run_before(pilot):
        await pilot.press("m")
        for _ in range(5):
            await pilot.press("right")  # step 5: inside the object, several choices
        await pilot.pause()

    assert snap_compare(make_app(grammar_run.trace()), run_before=run_before, terminal_size=(120, 36))

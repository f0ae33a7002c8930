"""The q·k·v view: one head's vectors before and after RoPE, and RoPE's angle grid."""

import math

import numpy as np

from inspector.app import make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_text
from views.qkv import angle_arrow, read_head


def test_reads_the_selected_head_and_its_kv_group():
    trace = synthetic.trace()
    h = read_head(trace, 0, 1, 2)
    assert (h.head, h.n_head, h.kv_head) == (2, synthetic.N_HEAD, 0)  # GQA 3/1: every head reads kv head 0
    names = [name for name, _ in h.rows]
    assert names == ["q", "q·rope", "k", "k·rope", "v"]
    q = trace.get(0, "qkv", 1).tensors["q"]
    assert np.array_equal(h.rows[0][1], q[-1, 2])
    assert h.positions == list(range(len(synthetic.PROMPT_IDS)))
    assert h.token_ids == synthetic.PROMPT_IDS


def test_angle_arrows_point_where_the_angle_does():
    assert [angle_arrow(a) for a in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2, 2 * math.pi)] == list("→↑←↓→")


async def test_v_opens_the_view_and_h_changes_head():
    app = make_app(synthetic.trace())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("v")
        await pilot.pause()
        assert "q·k·v · step 0 (prefill) · layer 0 · head 0/3" in screen_text(app)
        assert "rope angles" in screen_text(app)
        await pilot.press("h")
        await pilot.pause()
        assert "head 1/3" in screen_text(app)


def test_qkv_view_snapshot(snap_compare):
    assert snap_compare(make_app(synthetic.trace()), press=["v", "l"], terminal_size=(80, 24))


def test_diverging_row_gives_each_value_its_diverging_colour():
    """The q/k/v rows are coloured at once; each cell must get the colour `diverging` gives it."""
    import numpy as np

    from views.qkv import diverging, diverging_row

    x = np.concatenate([np.linspace(-1.5, 1.5, 4001), np.random.default_rng(0).standard_normal(2000)])
    assert diverging_row(x) == [diverging(float(v)) for v in x]

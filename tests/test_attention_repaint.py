"""The attention view repaints only what a key changed, and what it leaves on screen is what a
full repaint would show (issue #6: a keypress within ~30 ms on a 512-token prefill)."""

import numpy as np

from inspector.app import make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_lines
from views.attention import Heatmap, head_entropy

LARGE = (140, 40)


async def _full_repaint_lines(app, pilot, heatmap):
    heatmap.refresh()
    await pilot.pause()
    return screen_lines(app)


async def test_stepping_leaves_on_screen_what_a_full_repaint_shows(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a")
        heatmap = app.query_one(Heatmap)
        for key in ["right_square_bracket", "right_square_bracket", "l", "h", "left_square_bracket",
                    "left_square_bracket", "L", "H", "right_square_bracket"]:
            before = screen_lines(app)
            await pilot.press(key)
            await pilot.pause()
            shown = screen_lines(app)
            assert shown != before, key  # every key changes the map or its labels
            assert shown == await _full_repaint_lines(app, pilot, heatmap), key


async def test_a_scrolled_map_repaints_like_a_full_repaint():
    app = make_app(synthetic.long_prompt(80))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("a", "tab", *["down"] * 6, *["right"] * 9, "h")
        await pilot.pause()
        heatmap = app.query_one(Heatmap)
        assert heatmap.scroll_offset.x > 0 and heatmap.scroll_offset.y > 0 and app.selection.head == 1
        assert screen_lines(app) == await _full_repaint_lines(app, pilot, heatmap)


async def test_decode_steps_lay_nothing_out_and_repaint_only_the_changed_lines(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a", "right_square_bracket")  # prefill → decode: the map's height changes
        await pilot.pause()
        heatmap = app.query_one(Heatmap)
        layouts, repainted = [], []
        refresh_layout, refresh = app.screen._refresh_layout, heatmap.refresh
        app.screen._refresh_layout = lambda *a, **k: (layouts.append(a), refresh_layout(*a, **k))[1]
        heatmap.refresh = lambda *regions, **k: (repainted.append(regions), refresh(*regions, **k))[1]
        await pilot.press("right_square_bracket")  # one key more: a new virtual size
        await pilot.pause()
        assert layouts == []
        # The key labels of the keys both steps have stay; the new key's column and the map row change.
        lines = sorted({y for regions in repainted for region in regions for y in range(region.y, region.bottom)})
        assert repainted and all(regions for regions in repainted)  # never the whole widget
        assert heatmap.label_rows in lines and len(lines) < heatmap.size.height


async def test_reopening_the_view_where_it_was_needs_no_second_layout(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a", "t", "l")
        await pilot.pause()
        heatmap = app.query_one(Heatmap)
        layout_requests = []
        refresh = heatmap.refresh
        heatmap.refresh = lambda *a, **k: (k.get("layout") and layout_requests.append(k), refresh(*a, **k))[1]
        await pilot.press("a")  # another layer's map, shown at the size the view had
        await pilot.pause()
        assert app.selection.view == "attention" and heatmap.map.layer == 1
        assert layout_requests == []
        assert screen_lines(app) == await _full_repaint_lines(app, pilot, heatmap)


def test_head_entropy_of_integer_and_half_precision_weights_matches_float64():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 70, 70))
    logits[:, np.triu_indices(70, 1)[0], np.triu_indices(70, 1)[1]] = -np.inf
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = -(weights * np.log(np.where(weights > 0, weights, 1))).sum(-1).mean(-1)
    assert np.allclose(head_entropy(weights.astype(np.float16)), expected, atol=2e-3)
    onehot = np.zeros((1, 3, 3), dtype=np.int64)
    onehot[0, np.arange(3), 0] = 1  # every query on key 0: no uncertainty
    assert head_entropy(onehot).tolist() == [0.0]


async def test_a_terminal_resized_while_the_view_is_hidden_shows_the_map_at_the_new_size():
    app = make_app(synthetic.long_prompt(80))
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a")
        heatmap = app.query_one(Heatmap)
        wide = heatmap.label_rows, heatmap.virtual_size
        await pilot.press("t")
        await pilot.resize_terminal(80, 24)  # the attention view is hidden: it has no size to follow
        await pilot.pause()
        await pilot.press("a")
        await pilot.pause()
        assert (heatmap.label_rows, heatmap.virtual_size) != wide  # fitted to the smaller screen
        assert heatmap.label_rows == min(5, heatmap.size.height // 3)
        assert screen_lines(app) == await _full_repaint_lines(app, pilot, heatmap)
        await pilot.resize_terminal(140, 40)  # and shown: it follows at once
        await pilot.pause()
        assert (heatmap.label_rows, heatmap.virtual_size) == wide
        assert screen_lines(app) == await _full_repaint_lines(app, pilot, heatmap)

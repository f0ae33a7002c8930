"""The views: snapshots of each on the synthetic trace, and the helpers they show data through."""

import numpy as np
import pytest

from inspector.app import make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_text
from views.attention import AttentionView, Heatmap, head_entropy, head_map
from views.format import entropy
from views.logits import top_k
from views.pieces import readable
from views.safe import escape_controls, safe
from views.selection import Selection

SMALL, LARGE = (80, 24), (140, 40)


# Snapshots: one per view and size ------------------------------------------------------------


class TestTokensSnapshots:
    def test_prompt_at_prefill(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), terminal_size=SMALL)

    def test_decode_step_large(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["right_square_bracket"] * 2, terminal_size=LARGE)


class TestAttentionSnapshots:
    def test_prefill(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["a"], terminal_size=SMALL)

    def test_next_head_next_layer_large(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["a", "h", "l"], terminal_size=LARGE)

    def test_decode_step_one_query(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["a", "right_square_bracket"], terminal_size=SMALL)


class TestLogitsSnapshots:
    def test_prefill(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["g"], terminal_size=SMALL)

    def test_decode_step_large(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["g", "right_square_bracket"], terminal_size=LARGE)


class TestEventSnapshots:
    def test_residual_of_layer_1(self, snap_compare, synthetic_trace):
        async def pick(pilot):
            pilot.app.selection = Selection(step=0, stop="residual", layer=1, view="event")
            await pilot.pause()

        assert snap_compare(make_app(synthetic_trace), run_before=pick, terminal_size=SMALL)


# What the views draw -------------------------------------------------------------------------


async def test_attention_decode_step_draws_one_row_of_full_blocks(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("a", "right_square_bracket")
        heatmap = app.query_one(Heatmap)
        assert heatmap.map is not None and heatmap.map.n_query == 1 and heatmap.n_lines == 1
        assert "█" in heatmap.render_line(heatmap.label_rows).text
        assert heatmap.map.n_key == 13  # the 12 prompt tokens and the token drawn at step 0


async def test_attention_labels_keys_with_the_context_pieces(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a")
        text = screen_text(app)
        assert "sink 0." in text and "head 0/3 · kv group 0" in text
        heatmap = app.query_one(Heatmap)
        label_rows = [heatmap.render_line(y).text for y in range(heatmap.label_rows)]
        cell = heatmap.render_line(heatmap.label_rows).text.count("▀") // heatmap.map.n_key
        # `hello` is key 3: its letters run down one column
        x = heatmap.axis_width + 3 * cell + (cell - 1) // 2
        assert "".join(row[x] for row in label_rows) == "hello"[: heatmap.label_rows]
        # the query axis: the upper and lower query of each line
        assert heatmap.render_line(heatmap.label_rows).text.lstrip().startswith("im_st…/user")


async def test_heatmap_scrolls_under_fixed_axes():
    app = make_app(synthetic.long_prompt(80))
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("a", "tab")
        heatmap = app.query_one(Heatmap)
        assert app.focused is heatmap
        first_query = heatmap.render_line(heatmap.label_rows).text[: heatmap.axis_width]
        await pilot.press(*["down"] * 8, *["right"] * 10)
        await pilot.pause()
        assert heatmap.scroll_offset.x > 0 and heatmap.scroll_offset.y > 0
        assert heatmap.render_line(0).text.lstrip().startswith("key →")  # the key axis stays on top
        assert heatmap.render_line(heatmap.label_rows).text[: heatmap.axis_width] != first_query
        assert heatmap.render_line(heatmap.label_rows).text[heatmap.axis_width - 1] == "▕"  # and the query axis left


async def test_hovering_a_cell_reads_out_its_weight(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        heatmap = app.query_one(Heatmap)
        cell = heatmap.render_line(heatmap.label_rows).text.count("▀") // heatmap.map.n_key
        await pilot.hover(Heatmap, offset=(heatmap.axis_width + 3 * cell, heatmap.label_rows + 2))
        await pilot.pause()
        weight = heatmap.map.weights[4, 3]
        assert f"query 4 , → key 3 hello: {weight:.4f}" in screen_text(app)


def test_head_map_masks_the_future_and_keeps_the_sink(synthetic_trace):
    event = synthetic_trace.get(0, "attn", 0)
    hm = head_map(synthetic_trace, 0, 0, 2, event.tensors["weights"])
    assert hm.group == 0 and hm.n_query == hm.n_key == len(synthetic.PROMPT_IDS)
    assert (hm.levels[np.triu_indices(hm.n_key, 1)] < 0).all()  # future keys: masked
    assert (hm.levels[np.tril_indices(hm.n_key)] >= 0).all()
    assert hm.weights[:, 0].mean() > 0.3  # the fixture's sink
    assert hm.key_axis[0] == "im_start" and hm.key_labels[0] == "<|im_start|>"


def test_gqa_group_follows_the_head():
    trace = synthetic.trace()
    trace.info["model"].update(n_head=4, n_head_kv=2)
    weights = np.full((4, 1, 3), 1 / 3, dtype=np.float32)
    assert [head_map(trace, 1, 0, h, weights).group for h in range(4)] == [0, 0, 1, 1]


@pytest.mark.parametrize("causal", [True, False])
def test_head_entropy_matches_the_float64_rows(causal):
    rng = np.random.default_rng(0)
    n_q = n_k = 150  # more than one block of queries, and a last block cut short
    logits = rng.normal(size=(3, n_q, n_k))
    if causal:
        logits[:, np.triu_indices(n_k, 1)[0], np.triu_indices(n_k, 1)[1]] = -np.inf
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights = (weights / weights.sum(-1, keepdims=True)).astype(np.float32)
    expected = entropy(weights.astype(np.float64), axis=-1).mean(axis=-1)
    assert np.allclose(head_entropy(weights), expected, atol=1e-5)
    decode = weights[:, -1:, :]  # one query that sees every key
    assert np.allclose(head_entropy(decode), entropy(decode.astype(np.float64), axis=-1).mean(axis=-1), atol=1e-5)


async def test_attention_head_change_keeps_the_entropies_and_the_layout(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a")
        view = app.query_one(AttentionView)
        first = dict(view._entropies)
        before = screen_text(app)
        layouts = []  # a layout repaints the whole screen: a head change needs none
        refresh_layout = app.screen._refresh_layout
        app.screen._refresh_layout = lambda *args, **kwargs: (layouts.append(args), refresh_layout(*args, **kwargs))
        await pilot.press("h")
        assert "head 1/3" in screen_text(app) and screen_text(app) != before
        assert view._entropies.keys() == first.keys()  # the same event: not computed again
        assert all(view._entropies[k] is v for k, v in first.items())
        assert layouts == []


async def test_heatmap_redraws_in_the_focus_colour(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a")
        heatmap = app.query_one(Heatmap)
        blurred = heatmap.render_line(0)._segments[0].style.bgcolor
        heatmap.focus()
        await pilot.pause()
        focused = heatmap.render_line(0)._segments[0].style.bgcolor
        assert focused == heatmap.rich_style.bgcolor != blurred


async def test_attention_view_says_when_a_layer_has_not_run(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        app.selection = Selection(step=9, stop="attn", layer=0, view="attention")
        await pilot.pause()
        assert app.query_one(Heatmap).map is None
        assert "no attn event for this step and layer" in screen_text(app)


# Data is shown, never interpreted --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, shown",
    [
        ("\x1b[31m", "␛[31m"),
        ("a\nb", "a␊b"),
        ("tab\there", "tab␉here"),
        ("\x7f\x9b", "␡\\x9b"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("[bold]x[/]", "[bold]x[/]"),
    ],
)
def test_escape_controls(raw, shown):
    assert escape_controls(raw) == shown


def test_safe_never_parses_markup():
    text = safe("[bold red]x[/] \x1b[2J")
    assert text.plain == "[bold red]x[/] ␛[2J" and not text.spans


@pytest.mark.parametrize(
    "piece, byte_level, shown",
    [
        ("Ġhello", True, "␣hello"),
        ("Ċ", True, "⏎"),
        ("ĠĠ", True, "␣␣"),
        ("ĉ", True, "⇥"),
        ("Ã©", True, "é"),
        ("ðŁ", True, "\\xf0\\x9f"),  # half an emoji: the bytes, not a replacement character
        ("<0x0A>", False, "⏎"),
        ("▁the", False, "␣the"),
        ("\x1b[31m", True, "␛[31m"),
    ],
)
def test_readable_pieces(piece, byte_level, shown):
    assert readable(piece, byte_level) == shown


def test_special_pieces_are_kept_as_they_are():
    assert readable("<|im_start|>", True, special=True) == "<|im_start|>"


def test_logits_top_k_and_a_drawn_token_outside_it(synthetic_trace):
    top = top_k(synthetic_trace, 0)
    assert top.ids[0] == synthetic.DRAWN[0] == top.chosen and top.chosen_prob is None
    assert abs(sum(top.probs) - 1) < 0.2 and top.entropy > 0
    sample = synthetic_trace.get(0, "sample")
    outside = next(i for i in range(len(synthetic.PIECES)) if i not in top.ids)
    sample.scalars["token"] = outside
    top = top_k(synthetic_trace, 0)
    assert top.chosen == outside and 0 < top.chosen_prob < top.probs[-1]
    assert len(top.logits) == len(top.ids) + 1

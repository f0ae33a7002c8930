"""The diff screen: snapshots on two deterministic traces (tests/fixtures/diffs.py), and its keys."""

import pytest

from inspector.screens.diff import DiffScreen, make_diff_app
from tests.fixtures import diffs
from tests.fixtures.screen import screen_lines, screen_text
from traces.diff import diff_traces
from views.diff import DiffMap, diff_grid, level

SMALL, LARGE = (80, 24), (140, 40)


@pytest.fixture
def pair():
    """8 layers, 12 steps; B parts at step 3 · attn_out · layer 2 and draws another token at step 6."""
    return diffs.screen_pair()


def app_for(a, b, **tol):
    return make_diff_app(a, b, diff_traces(a, b))


class TestDiffSnapshots:
    def test_opens_at_the_first_divergence(self, snap_compare, pair):
        assert snap_compare(app_for(*pair), terminal_size=SMALL)

    def test_next_stop_other_metric_moved_large(self, snap_compare, pair):
        assert snap_compare(app_for(*pair), press=["s", "m", "right", "right", "down"], terminal_size=LARGE)

    def test_logits_row_with_kl(self, snap_compare, pair):
        # attn_out → ffn_out → residual → logits; KL is its fourth metric; step 6 is where the tokens part
        assert snap_compare(app_for(*pair), press=["s", "s", "s", "m", "m", "m", "right", "right", "right"],
                            terminal_size=SMALL)

    def test_identical_traces(self, snap_compare):
        a = diffs.trace(diffs.run(n_steps=4))
        assert snap_compare(app_for(a, diffs.trace(diffs.run(n_steps=4))), terminal_size=SMALL)


async def test_cursor_starts_on_the_first_divergence_and_f_comes_back(pair):
    app = app_for(*pair)
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        assert isinstance(screen, DiffScreen)
        assert (screen.pick.stop, screen.pick.step, screen.pick.layer) == ("attn_out", 3, 2)
        assert "first divergence step 3 · attn_out · layer 2: out: cos" in screen_text(app)
        await pilot.press("right", "right", "down", "down")
        assert (screen.pick.step, screen.pick.layer) == (5, 4)
        assert "step 5 · attn_out · layer 4" in screen_text(app)
        await pilot.press("s", "s", "s")
        assert screen.pick.stop == "logits" and screen.pick.layer is None
        await pilot.press("f")
        assert (screen.pick.stop, screen.pick.step, screen.pick.layer) == ("attn_out", 3, 2)


async def test_readout_shows_every_tensor_of_the_cell(pair):
    app = app_for(*pair)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("S", "S", "S")  # attn_out → attn → qkv → attn_norm
        await pilot.press("s")  # → qkv
        assert app.screen.pick.stop == "qkv"
        text = screen_text(app)
        for name in ("q [1, 2, 4]", "k [1, 2, 4]", "v [1, 2, 4]"):
            assert name in text


async def test_token_streams_mark_the_first_differing_token(pair):
    app = app_for(*pair)
    async with app.run_test(size=SMALL):
        lines = screen_lines(app)
        a_line = next(i for i, line in enumerate(lines) if line.startswith(" A ␣"))
        assert lines[a_line + 1].startswith(" B ")
        # step 6: A drew a token B did not; the columns line up
        b_line = lines[a_line + 1]
        assert "." in b_line and b_line.index(".") < len(lines[a_line])


async def test_hostile_pieces_show_literally():
    a, b = diffs.trace(diffs.run()), diffs.trace(diffs.flip_token(diffs.run(), 2, 17))
    for t in (a, b):
        t.info["vocab"]["pieces"][17] = "[bold red]x[/]\x1b[2J"
    app = app_for(a, b)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("f")
        text = screen_text(app)
        assert "\x1b" not in text
        assert " B ? ⇥ [bold␣red]x… " in text  # B's token in the stream, shown as the tokens view shows pieces
        assert "B 17 '[bold red]x[/]\\x1b[2J'" in text  # the readout's detail


async def test_metric_and_stop_keys_cycle(pair):
    app = app_for(*pair)
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        seen = []
        for _ in range(3):
            await pilot.press("m")
            seen.append(screen.pick.metric)
        assert seen == ["rel_l2", "max_abs", "cos"]  # no KL outside the logits
        stops = []
        for _ in range(len(screen.stops)):
            await pilot.press("s")
            stops.append(screen.pick.stop)
        assert stops[-1] == "attn_out" and "logits" in stops and "sample" not in stops


def test_grid_levels_follow_the_metric(pair):
    d = diff_traces(*pair)
    grid = diff_grid(d, "attn_out", "cos", 8)
    assert grid.levels.shape == (8, 12)
    assert grid.levels[:, :3].max() < grid.levels[2, 3]  # before the divergence: darker
    assert grid.levels[2, 3] >= level(1e-3, "cos")  # beyond the tolerance
    assert level(0.0, "cos") == 0 and level(None, "cos") == -1 and level(10.0, "rel_l2") == 31
    logits = diff_grid(d, "logits", "kl", 8)
    assert logits.rows == [None] and logits.levels.shape == (1, 12)


async def test_clicking_a_cell_selects_it(pair):
    app = app_for(*pair)
    async with app.run_test(size=LARGE) as pilot:
        diff_map = app.screen.query_one(DiffMap)
        # the map's content starts after its gutter and two axis rows; each step is `_cell` wide
        await pilot.click(DiffMap, offset=(1 + 7 + 5 * diff_map._cell, 2 + 1))
        assert (app.screen.pick.step, app.screen.pick.layer) == (5, 2)

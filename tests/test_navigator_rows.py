"""The navigator draws its own rows (views/navigator.py): what it shows must be what Tree itself draws.

After each step, scroll, opened or closed stop and cursor move, every row of the navigator as the
screen has it (the rows of the last paint: rows that were not repainted are kept as they were) is
compared with a full repaint from nothing by Textual's own Tree drawing. A relabelled row that was
not repainted shows the last step's time and fails this; so does a row drawn differently from Tree.
"""

from functools import partial

from textual.geometry import Region
from textual.widgets import Tree

from inspector.app import make_app
from traces.live import MemoryTrace
from traces.schema import STOPS, Event

N_LAYER = 12
N_STEP = 3
NOT_CAPTURED = {"gqa", "mla", "moe", "grammar"}  # drawn dim, with no time


def every_stop_trace() -> MemoryTrace:
    """Every stop but a few, at 12 layers and 3 steps; each event's time differs from step to step."""
    trace = MemoryTrace({"model": {"name": "rows-12L", "architecture": "llama", "n_layer": N_LAYER},
                         "vocab": {"pieces": ["a", "b", "c"]}})
    seq = 0
    for step in range(N_STEP):
        for index, stop in enumerate(STOPS):
            if stop.name in NOT_CAPTURED:
                continue
            for layer in range(N_LAYER) if stop.per_layer else [None]:
                scalars = {"ids": [0, 1, 2]} if stop.name == "tokenize" else (
                    {"token": 1} if stop.name == "sample" else {})
                ns = (step + 1) * (index + 1) * 1_000 + (layer or 0) * 100
                trace.append(Event(seq, stop.name, step, layer, scalars=scalars, t_start_ns=seq, dur_ns=ns))
                seq += 1
    trace.finish()
    return trace


async def assert_rows_fresh(pilot, nav, monkeypatch, after: str) -> None:
    """Each row on screen equals the row a full repaint by Tree's own drawing makes."""
    await pilot.pause()
    whole = Region(0, 0, *nav.outer_size)
    shown = nav.render_lines(whole)  # nothing awaits a repaint now: these are the rows on screen
    with monkeypatch.context() as patch:
        patch.setattr(nav, "render_line", partial(Tree.render_line, nav))
        patch.setattr(nav, "_render_line", partial(Tree._render_line, nav))
        patch.setattr(nav, "_frame_rows", lambda crop: None)
        nav.notify_style_update()  # Tree forgets the rows it keeps
        nav.refresh()  # and Textual the framed rows
        fresh = nav.render_lines(whole)
    nav.notify_style_update()
    nav.refresh()  # the next paint draws every row again, in the navigator's own way
    assert len(shown) == len(fresh)
    for y, (row, want) in enumerate(zip(shown, fresh)):
        assert row == want, f"after {after}: row {y} shows {row.text!r}; a full repaint draws {want.text!r}"


def times_shown(nav) -> set[str]:
    return {strip.text for strip in nav.render_lines(Region(0, 0, *nav.outer_size))}


async def test_rows_on_screen_are_the_rows_a_full_repaint_draws(monkeypatch):
    app = make_app(every_stop_trace())
    async with app.run_test(size=(80, 24)) as pilot:
        nav = app.query_one("#nav")
        await assert_rows_fresh(pilot, nav, monkeypatch, "opening")
        for key in ("right_square_bracket", "right_square_bracket", "left_square_bracket"):
            before = times_shown(nav)
            await pilot.press(key)
            await assert_rows_fresh(pilot, nav, monkeypatch, key)
            assert times_shown(nav) != before  # the step changed what the rows say
        await pilot.press("a")  # attention: its stop opens, its layer rows show
        await assert_rows_fresh(pilot, nav, monkeypatch, "opening attention")
        await pilot.press("right_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step with a stop open")
        for y in range(0, nav.max_scroll_y + 1, 4):  # layer rows relabelled as they come into view
            nav.scroll_to(y=y, animate=False)
            await assert_rows_fresh(pilot, nav, monkeypatch, f"scrolling to {y}")
        await pilot.press("left_square_bracket")  # a step, scrolled down
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step, scrolled")
        for key in ("l", "l", "L"):
            await pilot.press(key)
            await assert_rows_fresh(pilot, nav, monkeypatch, f"layer key {key}")
        nav.move_to("attn", None)
        await pilot.pause()
        await pilot.press("enter")  # closes the attention stop
        await assert_rows_fresh(pilot, nav, monkeypatch, "closing attention")
        await pilot.press("right_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step with the stop closed")
        for key in ("down", "down", "up", "home", "down"):  # the cursor's rows repaint after the pick
            await pilot.press(key)
            await assert_rows_fresh(pilot, nav, monkeypatch, f"cursor {key}")
        await pilot.hover("#nav", offset=(6, 4))  # the mouse over a row: its row and label highlighted
        assert nav.hover_line >= 0
        await assert_rows_fresh(pilot, nav, monkeypatch, "the mouse over a row")
        await pilot.press("right_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step under the mouse")
        await pilot.hover("#stepbar")
        await pilot.press("tab")  # the view takes the focus: the cursor's row and guides dim
        assert not nav.has_focus
        await assert_rows_fresh(pilot, nav, monkeypatch, "the navigator losing the focus")
        await pilot.press("left_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step without the focus")
        nav.focus()
        await pilot.press("r")  # the residual stop opens below: an open stop under a closed one
        await pilot.press("right_square_bracket", "right_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "steps in residual")
        nav.scroll_to(y=0, animate=False)
        await assert_rows_fresh(pilot, nav, monkeypatch, "scrolling back to the top")


async def test_without_the_tree_internals_it_reads_tree_draws_the_rows(monkeypatch):
    # A Textual whose Tree keeps its rows' state elsewhere (pyproject allows textual>=1.0,<9): the
    # navigator leaves the drawing to Tree and Textual, and still shows each step's times.
    app = make_app(every_stop_trace())
    async with app.run_test(size=(80, 24)) as pilot:
        nav = app.query_one("#nav")
        nav._own_rows = False
        nav.refresh()
        await pilot.press("a", "right_square_bracket")
        await assert_rows_fresh(pilot, nav, monkeypatch, "a step, drawn by Tree")
        assert any("attention" in row and "µs" in row for row in times_shown(nav))

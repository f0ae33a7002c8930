"""Run control from the UI: step over a layer, run to the next token, the breakpoint editor, the stop finder."""

from engine.breakpoints import Breakpoint
from engine.controller import RunController
from inspector.app import make_app
from tests.fixtures.screen import screen_lines, screen_text
from tests.test_app import LARGE, SMALL, FakeRun, until


async def test_step_over_layer_and_to_next_token():
    controller = RunController(start_paused=True)
    run = FakeRun(controller)
    app = make_app(run.trace, controller, run=run)
    async with app.run_test(size=LARGE) as pilot:
        await until(pilot, lambda: controller.paused)
        controller.breakpoints = []
        await pilot.press("b")  # the editor opens with the selected stop
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k", *"attn@1", "enter", "escape")
        await pilot.pause()
        assert [str(b) for b in controller.breakpoints] == ["attn@1"]
        await pilot.press("space")
        await until(pilot, lambda: controller.paused and controller.paused_at.stop == "attn")
        assert "breakpoint attn@1 · step 0 · attn · layer 1" in screen_lines(app)[-2]
        await pilot.press("o")  # the rest of layer 1, stopping at layer 2's first stop
        await until(pilot, lambda: controller.paused and controller.paused_at.layer == 2)
        assert "stepped over the layer" in screen_lines(app)[-2]
        await pilot.press("u")
        await until(pilot, lambda: controller.paused and controller.paused_at.step == 1)
        assert "ran to the next token · step 1" in screen_lines(app)[-2]
        await pilot.press("G")  # run to the end: the attn@1 breakpoint no longer stops it
        await until(pilot, lambda: run.ended.is_set())
    assert not run.cancelled


async def test_breakpoint_editor_rejects_a_typo_in_place():
    controller = RunController(start_paused=True)
    run = FakeRun(controller)
    app = make_app(run.trace, controller, run=run)
    async with app.run_test(size=SMALL) as pilot:
        await until(pilot, lambda: controller.paused)
        await pilot.press("b")
        await pilot.pause()
        await pilot.press("ctrl+a", "ctrl+k", *"entropy>lots", "enter")
        await pilot.pause()
        assert "bad breakpoint" in screen_text(app)
        await pilot.press("ctrl+a", "ctrl+k", *"entropy>3", "enter", "escape")
        await pilot.pause()
        assert [str(b) for b in controller.breakpoints] == ["entropy>3"]
        assert "breaks entropy>3" in screen_lines(app)[-2]


def test_breakpoint_editor_snapshot(snap_compare):
    controller = RunController(start_paused=True)
    run = FakeRun(controller)

    async def run_before(pilot):
        await until(pilot, lambda: controller.paused)
        controller.breakpoints.append(Breakpoint.parse("slow>2ms"))
        await pilot.press("b")
        await pilot.pause()
        pilot.app.screen.query_one("Input").cursor_blink = False  # a blinking cursor makes the snapshot flaky
        await pilot.pause()

    assert snap_compare(make_app(run.trace, controller, run=run), run_before=run_before, terminal_size=SMALL)


async def test_stop_finder_jumps_to_a_layer(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"attn@2")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.selection.stop == "attn" and app.selection.layer == 2
        assert "attention · layer 2/3" in screen_text(app)

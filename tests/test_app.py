"""The inspector app: the replay and help screens, its keys, its status line, and a live run."""

import threading

from engine.controller import Breakpoint, RunCancelled, RunController
from inspector.app import InspectorApp, make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_lines, screen_text
from traces.live import MemoryTrace
from views.selection import Selection

SMALL, LARGE = (80, 24), (140, 40)


class TestReplaySnapshots:
    def test_replay_screen(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), terminal_size=SMALL)

    def test_replay_screen_large(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["right_square_bracket"], terminal_size=LARGE)


class TestHelpSnapshots:
    def test_help(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["question_mark"], terminal_size=SMALL)

    def test_help_large(self, snap_compare, synthetic_trace):
        assert snap_compare(make_app(synthetic_trace), press=["question_mark"], terminal_size=LARGE)


# Keys ---------------------------------------------------------------------------------------------


async def test_brackets_and_arrows_move_the_step(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=SMALL) as pilot:
        assert app.selection.step == 0
        await pilot.press("right_square_bracket")
        assert app.selection.step == 1
        assert "step 1/4 ▸ decode" in screen_text(app)
        await pilot.press("right", "right", "right", "right")  # past the end: stays on the last step
        assert app.selection.step == 4
        await pilot.press("left_square_bracket", "left")
        assert app.selection.step == 2
        assert "stops · step 2" in screen_text(app)


async def test_h_changes_the_head_label(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("a")
        assert "head 0/3 · kv group 0" in screen_text(app)
        await pilot.press("h")
        assert "head 1/3 · kv group 0" in screen_text(app)
        await pilot.press("H", "H")
        assert "head 2/3" in screen_text(app)  # wraps around


async def test_l_changes_the_layer_and_the_navigator_follows(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("a", "l")
        await pilot.pause()
        assert app.selection.layer == 1
        assert "attention · layer 1/3" in screen_text(app)
        assert app.query_one("#nav").cursor_node.data.layer == 1


async def test_view_keys_switch_views(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=SMALL) as pilot:
        for key, view, title in [("a", "attention", "attention · layer"), ("g", "logits", "logits · entropy"),
                                 ("e", "event", "logits · step 0 (prefill) · C13"), ("t", "tokens", "tokens · in")]:
            await pilot.press(key)
            await pilot.pause()
            assert app.selection.view == view
            assert title in screen_text(app), key


async def test_navigator_picks_a_stop_and_its_view(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("down", "down", "down", "down", "down", "down", "down")  # … layers → attn norm
        await pilot.pause()
        assert app.selection.stop == "attn_norm" and app.selection.view == "event"
        assert "attn norm · step 0 (prefill) · layer 0/3" in screen_text(app)


async def test_navigator_layer_times_follow_the_step_into_a_collapsed_stop():
    # The navigator relabels a collapsed stop's layers only when it is expanded: they must still
    # show the selected step's times, and flag that step's slowest layer.
    from traces.schema import Event

    trace = MemoryTrace(synthetic.info(synthetic.PIECES))
    trace.append(Event(0, "tokenize", 0, scalars={"ids": [3, 4]}, dur_ns=1_000))
    for step, slow in ((0, 2), (1, 0)):
        for layer in range(synthetic.N_LAYER):
            trace.append(Event(10 * step + 1 + layer, "attn", step, layer, dur_ns=7_000 if layer == slow else 1_000))
    trace.finish()
    app = make_app(trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("right_square_bracket", "a")  # step 1, then the attention view expands attn
        await pilot.pause()
        lines = {line.split("layer ")[1][:1]: line for line in screen_lines(app) if "layer " in line and "µs" in line}
        assert "7.0µs" in lines["0"] and "1.0µs" in lines["2"], lines


async def test_logits_mark_the_drawn_token(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("g")
        drawn = [line for line in screen_lines(app) if "◀ drawn" in line]
        assert len(drawn) == 1 and " Hello " in drawn[0]


async def test_help_lists_every_binding(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("question_mark")
        text = screen_text(app)
        for binding in InspectorApp.BINDINGS:
            assert binding.description in text, binding.id
        await pilot.press("escape")
        assert "pause/resume" not in screen_text(app)


# The status line ------------------------------------------------------------------------------------


async def test_status_in_replay(synthetic_trace, cut_short_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=SMALL):
        assert "replay · complete · 5 steps" in screen_text(app)
    app = make_app(cut_short_trace)
    async with app.run_test(size=SMALL):
        assert "replay · incomplete trace (run was cut short)" in screen_text(app)


# Data from the trace is shown literally ----------------------------------------------------------------


async def test_hostile_pieces_show_literally(hostile_trace):
    app = make_app(hostile_trace)
    async with app.run_test(size=LARGE) as pilot:
        await pilot.press("right_square_bracket", "right_square_bracket")
        text = screen_text(app)
        assert "\x1b" not in text
        # the tokens view (pieces: a space is drawn ␣) and the stream (the text itself)
        assert "[bold␣red]x[/]" in text and "␛[31mred␛[0m" in text
        assert "Hello[bold red]x[/]␛[31mred␛[0m" in text
        # the model's name in the header
        assert "[bold red]evil[/] ␛[2J" in text
        await pilot.press("g")
        assert "␛[31mred␛[0m" in screen_text(app)


# A live run -------------------------------------------------------------------------------------------


class FakeRun:
    """An engine stand-in: appends the synthetic events to a MemoryTrace and calls the controller at each."""

    def __init__(self, controller: RunController) -> None:
        self.trace = MemoryTrace(synthetic.info(synthetic.PIECES))
        self.controller = controller
        self.ended = threading.Event()
        self.cancelled = False

    def __call__(self) -> None:
        try:
            for event in synthetic.events():
                self.trace.append(event)
                self.controller(event)
            self.trace.finish()
        except RunCancelled:
            self.cancelled = True
            raise
        finally:
            self.ended.set()


async def until(pilot, condition, timeout: float = 5.0) -> None:
    waited = 0.0
    while not condition():
        assert waited < timeout, "timed out"
        await pilot.pause(0.02)
        waited += 0.02
    await pilot.pause(0.15)  # two poll ticks: the app has seen it


async def test_live_run_breakpoint_step_and_resume():
    controller = RunController([Breakpoint.parse("attn@1")])
    run = FakeRun(controller)
    app = make_app(run.trace, controller, run=run)
    async with app.run_test(size=LARGE) as pilot:
        await until(pilot, lambda: controller.paused)
        status = screen_lines(app)[-2]
        assert "breakpoint attn@1 · step 0 · attn · layer 1" in status
        # the views jumped to the event the run is paused at
        assert app.selection == Selection(step=0, stop="attn", layer=1, head=0, view="attention")
        assert "attention · layer 1/3" in screen_text(app)

        await pilot.press("n")
        await until(pilot, lambda: controller.paused and controller.paused_at.stop == "attn_out")
        assert "stepped · step 0 · attn_out · layer 1" in screen_lines(app)[-2]
        assert app.selection.stop == "attn_out" and app.selection.view == "event"

        # space resumes; the breakpoint stops the run again at layer 1 of every later step, then it ends
        for step in range(1, 5):
            await pilot.press("space")
            await until(pilot, lambda: controller.paused and controller.paused_at.step == step)
            assert f"breakpoint attn@1 · step {step} · attn · layer 1" in screen_lines(app)[-2]
        await pilot.press("space")
        await until(pilot, lambda: run.ended.is_set() and "finished" in screen_lines(app)[-2])
        assert "■ finished · 5 steps" in screen_lines(app)[-2]
        assert app.selection.step == 4 and "Hello there!" in screen_text(app)
    assert not run.cancelled


async def test_live_run_pause_then_quit_ends_the_engine_thread():
    controller = RunController(start_paused=True)
    run = FakeRun(controller)
    app = make_app(run.trace, controller, run=run)
    async with app.run_test(size=SMALL) as pilot:
        await until(pilot, lambda: controller.paused)
        assert "paused · step 0 · text" in screen_lines(app)[-2]
        await pilot.press("q")
    assert run.ended.wait(5) and run.cancelled


async def test_live_run_error_is_shown():
    controller = RunController()

    def broken() -> None:
        raise ValueError("the prompt encodes to no tokens")

    app = make_app(MemoryTrace(synthetic.info(synthetic.PIECES)), controller, run=broken)
    async with app.run_test(size=SMALL) as pilot:
        await until(pilot, lambda: "error" in screen_lines(app)[-2])
        assert "ValueError: the prompt encodes to no tokens" in screen_lines(app)[-2]

"""The inspector app: a navigator of stops, the views, the step scrubber, the stream and a status bar.

    make_app(trace)                                  replay a trace
    make_app(trace, controller, run=engine_loop)     a live run: `run` goes to a thread worker,
                                                     appends to `trace` and calls `controller`

The app owns what is selected (`selection`) and hands it down to the views; they render
from the `Trace` alone. A live trace is polled 15 times a second, and only a change in
its event count or in the controller's state costs more than a few attribute reads.
When the run pauses, the views jump to the event it is paused at.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from rich.text import Text
from textual import events, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.widgets import ContentSwitcher, Header, Static
from textual.worker import Worker, WorkerState

from engine.controller import RunCancelled, RunController
from inspector.collector import IDLE_S, Collector
from inspector.footer import KeyFooter
from inspector.palette import StopFinder
from inspector.screens.breakpoints import BreakpointScreen
from inspector.screens.help import HelpRow, HelpScreen
from traces.base import Trace
from traces.schema import STOP_BY_NAME, Event
from views import colors
from views.attention import AttentionView
from views.event import EventView
from views.grammar import GrammarView
from views.kv_cache import KVCacheView
from views.logits import LogitsView
from views.mla import MLAView
from views.moe import MoEView
from views.navigator import Navigator
from views.qkv import QKVView
from views.residual import ResidualView
from views.safe import assemble, escape_controls
from views.sampling import SamplingView
from views.selection import VIEWS, Selection
from views.steps import StepBar
from views.stream import StreamText
from views.timing import TimingView
from views.tokens import TokensView

POLL_HZ = 15

STEP = Binding.Group("step", compact=True)
HEAD = Binding.Group("head", compact=True)
LAYER = Binding.Group("layer", compact=True)
VIEW = Binding.Group("view")

# Help sections, by the part of a binding id before the dot.
SECTIONS = {"run": "live run", "nav": "move", "view": "views", "app": "app"}
# Actions that need a live run, and those that only mean something in one view.
LIVE_ACTIONS = {"pause_resume", "step_stop", "step_layer", "step_token", "run_to_end", "breakpoints"}
VIEW_ACTIONS = {"head": ("attention", "qkv")}


def describe_model(info: dict) -> str:
    """`SmolLM2-135M · llama · 30 layers · 9/3 heads · d 576 · torch cpu float32`, escaped."""
    model, engine = info.get("model", {}), info.get("engine", {})
    parts = [str(model.get("name") or model.get("file") or "model"), str(model.get("architecture", ""))]
    if model.get("n_layer"):
        parts.append(f"{model['n_layer']} layers")
    if model.get("n_head"):
        parts.append(f"{model['n_head']}/{model.get('n_head_kv', model['n_head'])} heads")
    if model.get("n_embd"):
        parts.append(f"d {model['n_embd']}")
    if engine:
        parts.append(" ".join(str(engine[k]) for k in ("name", "device", "dtype") if engine.get(k)))
    if "flash_attn" in engine:  # llama.cpp: with flash attention on, no attention weights exist
        parts.append("flash-attn on: no attention weights" if engine["flash_attn"] else "flash-attn off")
    return escape_controls(" · ".join(p for p in parts if p))


class InspectorApp(App[None]):
    """Step through one inference run, live or from a saved trace."""

    # The help screen's sheet loads with the app's: loaded on the first `?`, Textual would re-parse
    # every sheet and restyle every widget then (~0.9 s on a 2-core machine). It selects only help ids.
    CSS_PATH = ["app.tcss", "screens/help.tcss"]
    COMMANDS = {StopFinder}  # ctrl+p finds a stop or layer by name
    COMMAND_PALETTE_BINDING = "ctrl+p"
    BINDINGS = [
        Binding("space", "pause_resume", "pause/go", id="run.pause", priority=True),
        Binding("n", "step_stop", "next stop", id="run.step"),
        Binding("o", "step_layer", "step over the layer", id="run.over", show=False),
        Binding("u", "step_token", "run to the next token", id="run.token", show=False),
        Binding("G", "run_to_end", "run to the end, no breaks", id="run.end", show=False),
        Binding("b", "breakpoints", "breakpoints", id="run.breaks"),
        Binding("left_square_bracket,left", "step(-1)", "previous step", id="nav.step-prev",
                key_display="[", group=STEP),
        Binding("right_square_bracket,right", "step(1)", "next step", id="nav.step-next",
                key_display="]", group=STEP),
        Binding("l", "layer(1)", "next layer", id="nav.layer-next", group=LAYER),
        Binding("L", "layer(-1)", "previous layer", id="nav.layer-prev", group=LAYER),
        Binding("h,full_stop", "head(1)", "next head", id="nav.head-next", key_display="h", group=HEAD),
        Binding("H,comma", "head(-1)", "previous head", id="nav.head-prev", key_display="H", group=HEAD),
        Binding("t", "view('tokens')", "tokens view", id="view.tokens", group=VIEW),
        Binding("a", "view('attention')", "attention view", id="view.attention", group=VIEW),
        Binding("g", "view('logits')", "logits view", id="view.logits", group=VIEW),
        Binding("r", "view('residual')", "residual view", id="view.residual", group=VIEW, show=False),
        Binding("v", "view('qkv')", "q·k·v, rope view", id="view.qkv", group=VIEW, show=False),
        Binding("k", "view('kv')", "kv cache view", id="view.kv", group=VIEW, show=False),
        Binding("s", "view('sampling')", "sampling view", id="view.sampling", group=VIEW, show=False),
        Binding("m", "view('grammar')", "grammar mask view", id="view.grammar", group=VIEW, show=False),
        Binding("x", "view('moe')", "experts view", id="view.moe", group=VIEW, show=False),
        Binding("w", "view('mla')", "MLA latent cache view", id="view.mla", group=VIEW, show=False),
        Binding("e", "view('event')", "event (raw numbers)", id="view.event", group=VIEW, show=False),
        Binding("p", "view('timing')", "timing view", id="view.timing", group=VIEW,
                show=False),
        Binding("question_mark", "help", "help", id="app.help", key_display="?"),
        Binding("q", "quit", "quit", id="app.quit"),
    ]

    # repaint=False: the views refresh what changed; a repaint of the whole screen per keypress
    # was ~30 ms of each press on 2 cores (bench/ui.py).
    selection: reactive[Selection] = reactive(Selection, init=False, repaint=False)
    """What the views show: step, stop, layer, head and which view."""

    def __init__(
        self,
        trace: Trace,
        controller: RunController | None = None,
        title: str = "llm-inspect",
        run: Callable[[], None] | None = None,
        view: str | None = None,
    ) -> None:
        super().__init__()
        self._initial_view = view  # a view to open on (the profile command opens on timing)
        self.trace = trace
        self.controller = controller
        self._run = run
        self.title = escape_controls(title)
        self.sub_title = describe_model(trace.info)
        self.live = controller is not None or run is not None
        self._follow = True  # a live run: keep showing the newest step until the person moves away
        self._seen: tuple = ()
        self._paused_at: Event | None = None
        self._run_state = "running" if run is not None else ""
        self._status: Text | None = None
        self._collector = Collector()

    # Layout ----------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="body"):
            yield Navigator(id="nav")
            with ContentSwitcher(initial="tokens", id="views"):
                yield TokensView(id="tokens")
                yield AttentionView(id="attention")
                yield LogitsView(id="logits")
                yield EventView(id="event")
                yield QKVView(id="qkv")
                yield ResidualView(id="residual")
                yield SamplingView(id="sampling")
                yield GrammarView(id="grammar")
                yield KVCacheView(id="kv")
                yield MoEView(id="moe")
                yield MLAView(id="mla")
                yield TimingView(id="timing")
        yield StepBar(id="stepbar")
        yield StreamText(id="stream")
        yield Static(id="status")
        yield KeyFooter(compact=True)

    def on_mount(self) -> None:
        self.query_one(StreamText).border_title = "stream"
        nav = self.query_one(Navigator)
        nav.build(self.trace)
        nav.focus()
        self._seen = self._trace_signature()
        selection = Selection(step=self._latest_step() if self.live else 0)
        if self._initial_view in VIEWS:
            selection = selection.with_view(self._initial_view)
        self.set_reactive(InspectorApp.selection, selection)
        self._show()
        self._update_status()
        if self.live:
            self.set_interval(1 / POLL_HZ, self._poll)
        if self._run is not None:
            self._run_engine()
        # Python's cycle collector runs between keypresses, not in one (inspector/collector.py).
        self._collector.start()
        self.set_interval(IDLE_S / 4, self._collector.tick)

    async def on_event(self, event: events.Event) -> None:
        if isinstance(event, (events.Key, events.MouseDown, events.MouseScrollDown, events.MouseScrollUp)):
            self._collector.on_input()
        await super().on_event(event)

    # Selection -------------------------------------------------------------------

    def watch_selection(self, selection: Selection) -> None:
        self._show()

    def _show(self) -> None:
        sel, trace = self.selection, self.trace
        switcher = self.query_one(ContentSwitcher)
        if switcher.current != sel.view:
            # Which keys are enabled depends on the view (`h` in attention): update the key bar now,
            # before the switch, so its repaint is queued ahead of the switch's layout and lands in
            # the same frame. Textual refreshes the bindings after the frame: a second one (~20 ms).
            self.screen.refresh_bindings()
            switcher.current = sel.view
        view = switcher.get_child_by_id(sel.view)
        view.show(trace, sel)
        self.query_one(Navigator).update_labels(trace, sel.step)
        self.query_one(StepBar).show(trace, sel.step)
        self.query_one(StreamText).show(trace, sel.step)

    def on_navigator_picked(self, message: Navigator.Picked) -> None:
        item, sel = message.item, self.selection
        if not message.explicit and item.stop == sel.stop and item.layer in (None, sel.layer):
            return  # the cursor followed the selection (a key, a pause): keep the view that was picked
        self.selection = sel.with_stop(item.stop, item.layer)

    def _latest_step(self) -> int:
        steps = self.trace.steps
        return steps[-1] if steps else 0

    # Live runs -------------------------------------------------------------------

    def _trace_signature(self) -> tuple:
        steps = self.trace.steps
        return (len(steps), len(self.trace.events(steps[-1])) if steps else 0, self.trace.complete)

    def _poll(self) -> None:
        """Cheap checks 15 times a second; redraw only what changed."""
        signature = self._trace_signature()
        if signature != self._seen:
            self._seen = signature
            self.query_one(Navigator).build(self.trace)
            if self._follow and self.selection.step != self._latest_step():
                self.selection = replace(self.selection, step=self._latest_step())
            else:
                self._show()
        paused_at = self.controller.paused_at if self.controller else None
        if paused_at is not None and paused_at is not self._paused_at:
            self._jump_to(paused_at)
        self._paused_at = paused_at
        self._update_status()

    def show_now(self, then: Callable[[], None] | None = None) -> None:
        """Show what the trace holds now, not at the next poll, and call `then` once it is on
        screen. The engine thread asks this (through call_from_thread) before long work that
        would slow the UI thread down, such as importing torch (inspector/commands/run.py)."""
        self._poll()
        if then is not None:
            self.call_after_refresh(then)

    def _jump_to(self, event: Event) -> None:
        """Show the event the run is paused at: its step, its stop, its layer."""
        self._follow = True
        self.selection = replace(self.selection.with_stop(event.stop, event.layer), step=event.step)
        self.query_one(Navigator).move_to(event.stop, event.layer)

    @work(thread=True, exclusive=True, group="engine", exit_on_error=False, name="engine")
    def _run_engine(self) -> None:
        assert self._run is not None
        self._run()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """The one place the engine worker's end is handled."""
        if event.worker.group != "engine":
            return
        if event.state == WorkerState.SUCCESS:
            self._run_state = "finished"
        elif event.state == WorkerState.ERROR:
            error = event.worker.error
            self._run_state = "cancelled" if isinstance(error, RunCancelled) else (
                f"error · {type(error).__name__}: {error}")
        elif event.state == WorkerState.CANCELLED:
            self._run_state = "cancelled"
        else:
            return
        self._poll()

    def status_text(self) -> Text:
        """Where the run is and why it stopped; the status bar's line."""
        trace, ctl = self.trace, self.controller
        if not self.live:
            state = "complete" if trace.complete else "incomplete trace (run was cut short)"
            return assemble(("replay", colors.ACCENT), f" · {state}",
                            (f" · {len(trace.steps)} steps", colors.DIM))
        if self._run_state.startswith("error"):
            return assemble(("✖ ", colors.WARN), (self._run_state, colors.WARN))
        if self._run_state == "cancelled":
            return assemble(("■ cancelled", colors.WARN), f" · {len(trace.steps)} steps recorded")
        if self._run_state == "finished" or (self._run is None and trace.complete):
            done = "" if trace.complete else " · trace incomplete"
            return assemble(("■ finished", colors.CHOSEN), f" · {len(trace.steps)} steps{done}")
        paused_at = ctl.paused_at if ctl else None
        if paused_at is not None:
            text = assemble(("⏸ ", colors.SINK), (ctl.reason, colors.SINK), " · ", paused_at.describe())
        else:
            last = trace.events(trace.steps[-1])[-1:] if trace.steps else []
            where = last[0].describe() if last else "starting"
            text = assemble(("▶ running", colors.CHOSEN), " · ", where)
        if ctl is not None and ctl.breakpoints:
            text.append_text(assemble((" · breaks " + " ".join(str(b) for b in ctl.breakpoints), colors.DIM)))
        return text

    def _update_status(self) -> None:
        text = self.status_text()
        cut = self.trace.truncated_at
        if cut is not None:  # the size budget stopped the tensors: views from here on show scalars only
            text.append_text(assemble((f" · no tensors from step {cut.step}: {cut.reason}", colors.WARN)))
        if text != self._status:
            self._status = text
            self.query_one("#status", Static).update(text)
            self.refresh_bindings()

    # Actions ---------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if len(self.screen_stack) > 1 and action not in ("quit", "help"):
            return False  # a screen is open over the inspector (help): leave what is under it alone
        if action in LIVE_ACTIONS:
            if self.controller is None:
                return False
            return None if self._run_state in ("finished", "cancelled") or self._run_state.startswith("error") \
                else True
        if action in VIEW_ACTIONS and self.selection.view not in VIEW_ACTIONS[action]:
            return None
        return True

    def action_pause_resume(self) -> None:
        assert self.controller is not None
        if self.controller.paused:
            self.controller.resume()
        else:
            self.controller.pause()
        self._update_status()

    def action_step_stop(self) -> None:
        assert self.controller is not None
        self.controller.step()
        self._update_status()

    def action_step_layer(self) -> None:
        assert self.controller is not None
        self.controller.step_layer()
        self._update_status()

    def action_step_token(self) -> None:
        assert self.controller is not None
        self.controller.step_token()
        self._update_status()

    def action_run_to_end(self) -> None:
        assert self.controller is not None
        self.controller.run_to_end()
        self._update_status()

    def action_breakpoints(self) -> None:
        """Edit the live run's breakpoints; the input starts with the selected stop."""
        assert self.controller is not None
        sel = self.selection
        suggestion = sel.stop + (f"@{sel.event_layer}" if sel.event_layer is not None else "")

        def apply(breakpoints: list | None) -> None:
            if breakpoints is not None:
                self.controller.breakpoints = breakpoints  # one assignment: the engine thread sees old or new
            self._update_status()

        self.push_screen(BreakpointScreen(self.controller.breakpoints, suggestion), apply)

    def select_stop(self, stop: str, layer: int | None = None) -> None:
        """Show a stop (and layer) at the current step: the navigator and the palette use this."""
        self.selection = self.selection.with_stop(stop, layer)
        self.query_one(Navigator).move_to(stop, layer)

    def action_step(self, delta: int) -> None:
        steps = self.trace.steps
        if not steps:
            return
        current = self.selection.step
        index = min(range(len(steps)), key=lambda i: abs(steps[i] - current))
        index = max(0, min(len(steps) - 1, index + delta))
        self._follow = index == len(steps) - 1
        self.selection = replace(self.selection, step=steps[index])

    def action_layer(self, delta: int) -> None:
        n_layer = self.trace.n_layer
        if n_layer < 1:
            return
        sel = self.selection
        self.selection = replace(sel, layer=(sel.layer + delta) % n_layer)
        stop = STOP_BY_NAME.get(sel.stop)
        if stop is not None and stop.per_layer:
            self.query_one(Navigator).move_to(sel.stop, self.selection.layer)

    def action_head(self, delta: int) -> None:
        n_head = int(self.trace.info.get("model", {}).get("n_head") or 0)
        event = self.trace.get(self.selection.step, "attn", self.selection.layer)
        if event is not None and "weights" in event.tensors:
            n_head = event.tensors["weights"].shape[0]
        if n_head < 1:
            return
        self.selection = replace(self.selection, head=(self.selection.head + delta) % n_head)

    def action_view(self, view: str) -> None:
        if view not in VIEWS:
            return
        self.selection = self.selection.with_view(view)
        self.query_one(Navigator).move_to(self.selection.stop, self.selection.event_layer)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
        else:
            # Installed, the screen outlives its first close: later opens skip composing and styling it.
            if not self.is_screen_installed("help"):
                self.install_screen(HelpScreen(self.help_rows(), split=3), "help")
            self.push_screen("help")

    def help_rows(self) -> list[HelpRow]:
        """Every binding of the app, by section, in the order declared."""
        declared: dict[str, list[Binding]] = {}
        for binding in Binding.make_bindings(self.BINDINGS):
            declared.setdefault(binding.id or binding.action, []).append(binding)
        rows = []
        for binding_id, bindings in declared.items():
            binding = bindings[0]
            keys = [self.get_key_display(b.with_key(b.key)) for b in bindings]
            action = binding.action.split("(")[0]
            note = "live" if action in LIVE_ACTIONS else ", ".join(VIEW_ACTIONS.get(action, ()))
            rows.append(HelpRow(SECTIONS.get(binding_id.split(".")[0], "other"), " ".join(keys),
                                binding.description, note))
        rows += [
            HelpRow("navigator", "↑ ↓", "move between stops"),
            HelpRow("navigator", "enter", "a stop's layers"),
            HelpRow("navigator", "tab", "focus the view"),
            HelpRow("navigator", "^p", "find a stop by name"),
        ]
        # The navigator's keys beside the other moving keys; the first three sections make the left
        # column, so both columns fit an 80 × 24 terminal.
        order = [SECTIONS["run"], SECTIONS["nav"], "navigator", SECTIONS["view"], SECTIONS["app"]]
        rows.sort(key=lambda r: order.index(r.section) if r.section in order else len(order))
        return rows

    def on_unmount(self) -> None:
        """However the app ends (q, ctrl+q, a test), a live run's engine thread must end too."""
        if self.controller is not None:
            self.controller.cancel()  # the engine thread raises RunCancelled at its next stop
        self._collector.release()


def make_app(
    trace: Trace,
    controller: RunController | None = None,
    title: str = "llm-inspect",
    run: Callable[[], None] | None = None,
    view: str | None = None,
) -> InspectorApp:
    """The app factory the CLI and the tests share."""
    return InspectorApp(trace, controller=controller, title=title, run=run, view=view)

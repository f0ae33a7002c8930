"""The breakpoint editor: type a breakpoint, see the ones set, remove one.

Opened with `b` over a live run; the input starts with the selected stop and layer
(`attn@3`), so the common case is one key and enter. The grammar is engine/breakpoints.py's
(`entropy>4`, `slow>2ms`, `token=Paris`, ...); a typo is shown under the input, not raised.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, OptionList, Static
from textual.widgets.option_list import Option

from engine.breakpoints import Breakpoint
from views import colors
from views.safe import assemble, escape_controls

HINT = "attn@3 · logits:5 · entropy>4 · top1<0.2 · slow>2ms · token=Paris"
KEYS = "enter add · tab, then del: remove · esc close"


class BreakpointScreen(ModalScreen[list[Breakpoint]]):
    """Edits a copy of the breakpoints; dismissing returns the new list."""

    CSS_PATH = "breakpoints.tcss"
    BINDINGS = [
        Binding("escape", "close", "close", id="breaks.close"),
        Binding("delete,backspace", "remove", "remove the highlighted breakpoint", id="breaks.remove", show=False),
    ]

    def __init__(self, breakpoints: list[Breakpoint], suggestion: str = "") -> None:
        super().__init__()
        self.breakpoints = list(breakpoints)
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical(id="breaks-box"):
            yield Static(assemble(("breakpoints", "bold")), id="breaks-title")
            yield Input(value=self.suggestion, placeholder="attn@3", id="breaks-input")
            yield Static(assemble((HINT, colors.DIM)), id="breaks-message")
            yield Static(assemble(("set", "bold"), "  ", (KEYS, colors.DIM)))
            yield OptionList(id="breaks-list")

    def on_mount(self) -> None:
        self._refresh_list()
        self.query_one(Input).focus()

    def _refresh_list(self) -> None:
        options = self.query_one(OptionList)
        options.clear_options()
        if not self.breakpoints:
            options.add_option(Option(assemble(("none set", colors.DIM)), disabled=True))
        for bp in self.breakpoints:
            options.add_option(Option(escape_controls(str(bp))))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        message = self.query_one("#breaks-message", Static)
        try:
            bp = Breakpoint.parse(text)
        except ValueError as e:
            message.update(assemble((escape_controls(str(e)), colors.WARN)))
            return
        if bp in self.breakpoints:
            message.update(assemble((f"{bp} is already set", colors.DIM)))
        else:
            self.breakpoints.append(bp)
            message.update(assemble((f"added {bp}", colors.CHOSEN)))
        event.input.value = ""
        self._refresh_list()

    def action_remove(self) -> None:
        # Only reached with the list focused: in the input, backspace edits the text.
        options = self.query_one(OptionList)
        if options.highlighted is None or not self.breakpoints:
            return
        removed = self.breakpoints.pop(options.highlighted)
        self.query_one("#breaks-message", Static).update(assemble((f"removed {removed}", colors.DIM)))
        self._refresh_list()

    def action_close(self) -> None:
        self.dismiss(self.breakpoints)

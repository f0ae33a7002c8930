"""The help screen: every key binding, read from the bindings the app actually has."""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from views import colors
from views.safe import NL, assemble

KEY_WIDTH = 7


@dataclass(frozen=True)
class HelpRow:
    section: str
    keys: str
    description: str
    note: str = ""


def section_text(rows: list[HelpRow]) -> Text:
    """Sections in the order given, each a heading and one line per binding."""
    out = Text(end="")
    section = None
    for row in rows:
        if row.section != section:
            if section is not None:
                out.append_text(NL)
            section = row.section
            out.append_text(assemble((section, "bold underline")))
        out.append_text(assemble(NL, (f"{row.keys:>{KEY_WIDTH}}", "bold"), "  ", row.description))
        if row.note:
            out.append_text(assemble((f" ({row.note})", colors.DIM)))
    return out


class HelpScreen(ModalScreen[None]):
    """Two columns of sections; the first `split` sections go left."""

    CSS_PATH = "help.tcss"
    BINDINGS = [
        Binding("escape,question_mark,q", "dismiss", "close help", id="help.close"),
    ]

    def __init__(self, rows: list[HelpRow], split: int = 2) -> None:
        super().__init__()
        self.rows = rows
        self.split = split

    def compose(self) -> ComposeResult:
        sections = list(dict.fromkeys(r.section for r in self.rows))
        left = [r for r in self.rows if r.section in sections[: self.split]]
        right = [r for r in self.rows if r.section not in sections[: self.split]]
        with Vertical(id="help-box"):
            yield Static(assemble(("llm-inspect keys", colors.ACCENT), ("   esc ? q: close", colors.DIM)),
                         id="help-title")
            with Horizontal(id="help-columns"):
                yield Static(section_text(left), classes="help-column")
                yield Static(section_text(right), classes="help-column")

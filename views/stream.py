"""The streamed text: what the user of the model saw, released step by step.

Text released up to the selected step is drawn normally, the selected step's chunk
highlighted, later chunks dimmed. Newlines are drawn as ⏎ so the whole stream reads on
a couple of lines; when it does not fit, its end is shown.
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from traces.base import Trace
from views import colors
from views.safe import escape_controls

NEWLINE = str.maketrans({"\n": "\u23ce"})


def stream_chunks(trace: Trace) -> list[tuple[int, str]]:
    """(step, text released at that step), in step order."""
    return [(step, str(e.scalars.get("text", ""))) for step in trace.steps for e in trace.find(step, "stream")]


class StreamText(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._chunks: list[tuple[int, str]] = []
        self._step = 0
        self._shown: tuple | None = None

    def show(self, trace: Trace, step: int) -> None:
        key = (id(trace), step, len(trace.steps), len(trace.find(trace.steps[-1], "stream")) if trace.steps else 0)
        if key == self._shown:
            return
        self._shown = key
        self._chunks = stream_chunks(trace)
        self._step = step
        self.refresh()

    def render(self) -> Text:
        room = max(1, self.size.width * max(1, self.size.height) - 1)
        parts: list[tuple[str, str]] = []
        for step, text in self._chunks:
            shown = escape_controls(text.translate(NEWLINE))
            if not shown:
                continue
            style = "" if step < self._step else ("bold reverse" if step == self._step else colors.DIM)
            parts.append((shown, style))
        if not parts:
            return Text("nothing streamed yet", style=colors.DIM, end="")
        # Keep the end: drop whole chunks, then characters, from the front until it fits.
        total = sum(cell_len(t) for t, _ in parts)
        cut = total > room
        while total > room:
            text, style = parts[0]
            over = total - room + 1  # one cell for the … marker
            if cell_len(text) <= over:
                parts.pop(0)
                total -= cell_len(text)
            else:
                parts[0] = (text[over:], style)
                total -= cell_len(text) - cell_len(parts[0][0])
        out = Text("…" if cut else "", style=colors.DIM, end="")
        for text, style in parts:
            out.append(text, style=style)
        return out

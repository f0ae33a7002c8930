"""Small charts drawn with block characters, shared by the views."""

from __future__ import annotations

from rich.text import Text

from views import colors
from views.lines import cells_text
from views.safe import assemble

_EIGHTHS = " ▁▂▃▄▅▆▇█"


def column_chart(values: list[float], width: int, rows: int, hot: set[int], color: str = colors.ACCENT) -> list[Text]:
    """One column per value, `rows` high, drawn to an eighth of a cell; hot columns in the warning colour."""
    top = max(values) if values else 0
    col = 2 if len(values) * 3 <= width else 1  # two cells and a gap when it fits, else one cell
    gap = 1 if len(values) * (col + 1) <= width else 0
    lines = []
    eighths = [round(ns / top * rows * 8) if top else 0 for ns in values]
    for row in range(rows - 1, -1, -1):
        cells = []
        for il, e in enumerate(eighths):
            cells.append((_EIGHTHS[max(0, min(8, e - row * 8))] * col, colors.WARN if il in hot else color))
            if gap:
                cells.append((" " * gap, ""))
        lines.append(cells_text("", cells))
    # layer numbers under every fifth column
    labels = [" "] * (len(values) * (col + gap))
    for il in range(0, len(values), 5):
        for k, ch in enumerate(str(il)):
            pos = il * (col + gap) + k
            if pos < len(labels):
                labels[pos] = ch
    lines.append(assemble(("".join(labels), colors.DIM)))
    return lines

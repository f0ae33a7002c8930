"""Small charts drawn with block characters, shared by the views."""

from __future__ import annotations

from rich.text import Text

from views import colors
from views.safe import assemble

_EIGHTHS = " ▁▂▃▄▅▆▇█"


def column_chart(values: list[float], width: int, rows: int, hot: set[int], color: str = colors.ACCENT) -> list[Text]:
    """One column per value, `rows` high, drawn to an eighth of a cell; hot columns in the warning colour."""
    top = max(values) if values else 0
    col = 2 if len(values) * 3 <= width else 1  # two cells and a gap when it fits, else one cell
    gap = 1 if len(values) * (col + 1) <= width else 0
    lines = []
    for row in range(rows - 1, -1, -1):
        line = Text(end="")
        for il, ns in enumerate(values):
            eighths = round(ns / top * rows * 8) if top else 0
            level = max(0, min(8, eighths - row * 8))
            line.append(_EIGHTHS[level] * col, colors.WARN if il in hot else color)
            line.append(" " * gap)
        lines.append(line)
    # layer numbers under every fifth column
    labels = [" "] * (len(values) * (col + gap))
    for il in range(0, len(values), 5):
        for k, ch in enumerate(str(il)):
            pos = il * (col + gap) + k
            if pos < len(labels):
                labels[pos] = ch
    lines.append(assemble(("".join(labels), colors.DIM)))
    return lines

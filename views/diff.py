"""The diff views: where two runs part, as a heatmap of layers × steps, the two token streams, a readout.

`DiffMap` is a line-API `ScrollView` like the attention `Heatmap`: one column per step,
two layers per screen line (`▀` in the colour of layer 2i over the colour of layer 2i+1),
whole-line strips kept in an LRU cache. A cell's colour is the chosen metric of the chosen
stop at that (step, layer) — the worst of the event's tensors — on a log scale, dark where
A and B agree and bright where they part; cells not compared are drawn in `MASKED`, the
cursor in white. The two axis rows above the map stay put: step numbers, then markers
(◆ the first divergence, ▼ the cursor).

The map owns the cursor it draws and says where it moved (`DiffMap.Moved`); the screen
owns which stop and metric are shown and hands them down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from traces.base import Trace
from traces.diff import METRICS, Divergence, TraceDiff, describe_side
from views import colors
from views.paint_style import PaintStyle
from views.pieces import piece_format
from views.safe import NL, assemble, truncate

METRIC_LABEL = {"cos": "1 − cos", "rel_l2": "rel L2", "max_abs": "max |Δ|", "kl": "KL(A‖B)"}
# The error each metric maps onto the colour ramp, as log10 (lowest, highest): below the lowest
# is the ramp's darkest colour (agreement to float32 rounding), above the highest its brightest.
METRIC_RANGE = {"cos": (-8.0, -1.0), "rel_l2": (-6.0, 0.0), "max_abs": (-6.0, 2.0), "kl": (-8.0, 0.0)}
MISSING = -1
NO_ROW = -2  # the lower half of the last line when the number of layers is odd
CURSOR = -3
CURSOR_COLOR = "#ffffff"
GUTTER = 7  # "L28/29▕"
AXIS_ROWS = 2
MAX_CELL = 6
TOKEN_WIDTH = 12


def level(error: float | None, metric: str) -> int:
    """The ramp level of an error (0 = identical), or MISSING."""
    if error is None or math.isnan(error):
        return MISSING
    lo, hi = METRIC_RANGE[metric]
    if error <= 0.0:
        return 0
    x = (math.log10(error) - lo) / (hi - lo) if math.isfinite(error) else 1.0
    return int(round(min(1.0, max(0.0, x)) * (colors.LEVELS - 1)))


@dataclass
class DiffGrid:
    """One stop's metric over (layer or the one row of a stop outside the layers) × step."""

    stop: str
    metric: str
    steps: list[int]
    rows: list[int | None]  # layers, or [None]
    errors: np.ndarray  # [n_rows, n_steps] float, NaN where not compared
    levels: np.ndarray  # [n_rows, n_steps] int

    @property
    def per_layer(self) -> bool:
        return self.rows != [None]

    @property
    def n_lines(self) -> int:
        return (len(self.rows) + 1) // 2 if self.per_layer else 1


def diff_grid(diff: TraceDiff, stop: str, metric: str, n_layer: int) -> DiffGrid:
    cells = [e for e in diff.events if e.stop == stop]
    layers = sorted({e.layer for e in cells if e.layer is not None})
    rows: list[int | None] = list(range(max(n_layer, layers[-1] + 1))) if layers else [None]
    steps = list(diff.steps)
    col = {s: i for i, s in enumerate(steps)}
    row = {r: i for i, r in enumerate(rows)}
    errors = np.full((len(rows), len(steps)), np.nan)
    for e in cells:
        value = e.error(metric)
        if value is not None and e.layer in row and e.step in col:
            r, c = row[e.layer], col[e.step]
            errors[r, c] = value if math.isnan(errors[r, c]) else max(errors[r, c], value)  # parts: the worst
    levels = np.array([[level(None if math.isnan(v) else v, metric) for v in line] for line in errors],
                      dtype=np.int16).reshape(errors.shape)
    return DiffGrid(stop, metric, steps, rows, errors, levels)


def metrics_for(stop: str) -> tuple[str, ...]:
    return METRICS if stop == "logits" else METRICS[:3]


class DiffMap(PaintStyle, ScrollView, can_focus=True):
    """Layers × steps of one stop, coloured by one metric; arrow keys move the cursor."""

    BINDINGS = [
        Binding("left,h", "move(-1, 0)", "step", id="diff.step-prev", key_display="←→",
                group=Binding.Group("step", compact=True)),
        Binding("right,l", "move(1, 0)", "next step", id="diff.step-next", show=False),
        Binding("up,k", "move(0, -1)", "layer", id="diff.layer-prev", key_display="↑↓",
                group=Binding.Group("layer", compact=True)),
        Binding("down,j", "move(0, 1)", "next layer", id="diff.layer-next", show=False),
        Binding("home", "edge(-1)", "first step", id="diff.first-step", show=False),
        Binding("end", "edge(1)", "last step", id="diff.last-step", show=False),
    ]

    class Moved(Message):
        """The cursor is on (step, layer) now; layer is None for a stop outside the layers."""

        def __init__(self, step: int, layer: int | None) -> None:
            super().__init__()
            self.step = step
            self.layer = layer

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.grid: DiffGrid | None = None
        self.first: tuple[int, int] | None = None  # (row, col) of the first divergence, on this stop
        self.cursor = (0, 0)  # (row, col)
        self._lines: LRUCache[tuple, Strip] = LRUCache(maxsize=512)
        self._styles: dict[tuple[int, int], Style] = {}
        self._cell = 1

    # What it shows -------------------------------------------------------------------------------

    def set_grid(self, grid: DiffGrid | None, step: int, layer: int | None, first: Divergence | None) -> None:
        self.grid = grid
        self._lines.clear()
        self.first = None
        if grid is not None:
            if first is not None and first.stop == grid.stop and first.step in grid.steps and first.layer in grid.rows:
                self.first = (grid.rows.index(first.layer), grid.steps.index(first.step))
            self.cursor = self._cell_of(step, layer)
        self._update_geometry()
        self._scroll_to_cursor()
        self.refresh()

    def _cell_of(self, step: int, layer: int | None) -> tuple[int, int]:
        assert self.grid is not None
        steps, rows = self.grid.steps, self.grid.rows
        col = min(range(len(steps)), key=lambda i: abs(steps[i] - step)) if steps else 0
        row = rows.index(layer) if layer in rows else (min(layer, len(rows) - 1) if isinstance(layer, int) else 0)
        return (row, col)

    @property
    def at(self) -> tuple[int, int | None] | None:
        """The (step, layer) under the cursor."""
        if self.grid is None or not self.grid.steps:
            return None
        row, col = self.cursor
        return self.grid.steps[col], self.grid.rows[row]

    # Keys and mouse ------------------------------------------------------------------------------

    def action_move(self, d_step: int, d_layer: int) -> None:
        if self.grid is None or not self.grid.steps:
            return
        row, col = self.cursor
        self._go(min(len(self.grid.rows) - 1, max(0, row + d_layer)), min(len(self.grid.steps) - 1, max(0, col + d_step)))

    def action_edge(self, side: int) -> None:
        if self.grid is not None and self.grid.steps:
            self._go(self.cursor[0], 0 if side < 0 else len(self.grid.steps) - 1)

    def on_click(self, event: events.Click) -> None:
        cell = self._cell_at(event.x, event.y)
        if cell is not None:
            self._go(*cell)

    def _go(self, row: int, col: int) -> None:
        if (row, col) == self.cursor:
            return
        self.cursor = (row, col)  # the line cache keys the cursor's lines by it: nothing to evict
        self._scroll_to_cursor()
        self.refresh()
        step, layer = self.at
        self.post_message(self.Moved(step, layer))

    def _cell_at(self, x: int, y: int) -> tuple[int, int] | None:
        if self.grid is None or x < GUTTER or y < AXIS_ROWS:
            return None
        scroll_x, scroll_y = self.scroll_offset
        col = (x - GUTTER + scroll_x) // self._cell
        line = y - AXIS_ROWS + scroll_y
        if not (0 <= col < len(self.grid.steps) and 0 <= line < self.grid.n_lines):
            return None
        row = 2 * line if self.grid.per_layer else 0
        return (min(row, len(self.grid.rows) - 1), col)

    # Geometry ------------------------------------------------------------------------------------

    def _line(self, row: int) -> int:
        return row // 2 if self.grid is not None and self.grid.per_layer else 0

    def _update_geometry(self) -> None:
        if self.grid is None:
            self.virtual_size = Size(0, 0)
            return
        room = max(1, self.scrollable_content_region.width - GUTTER)
        cell = max(1, min(MAX_CELL, room // max(1, len(self.grid.steps))))
        if cell != self._cell:
            self._cell = cell
            self._lines.clear()
        self.virtual_size = Size(GUTTER + len(self.grid.steps) * cell, AXIS_ROWS + self.grid.n_lines)

    def _scroll_to_cursor(self) -> None:
        if self.grid is None:
            return
        row, col = self.cursor
        region = self.scrollable_content_region
        room, height = max(1, region.width - GUTTER), max(1, region.height - AXIS_ROWS)
        x0, line = col * self._cell, self._line(row)
        scroll_x, scroll_y = self.scroll_offset
        if x0 < scroll_x or x0 + self._cell > scroll_x + room:
            scroll_x = max(0, x0 + self._cell - room) if x0 >= scroll_x else x0
        if line < scroll_y or line >= scroll_y + height:
            scroll_y = line if line < scroll_y else line - height + 1
        self.scroll_to(scroll_x, scroll_y, animate=False, immediate=True)

    def on_resize(self, event: events.Resize) -> None:
        self._update_geometry()
        self._scroll_to_cursor()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()

    # Drawing ---------------------------------------------------------------------------------------

    @staticmethod
    def _color(value: int):
        if value == CURSOR:
            return CURSOR_COLOR
        return colors.MASKED if value == MISSING else colors.RAMP[value]

    def _style(self, top: int, bottom: int) -> Style:
        style = self._styles.get((top, bottom))
        if style is None:
            bg = None if bottom == NO_ROW else self._color(bottom)
            style = self._styles[(top, bottom)] = Style(color=self._color(top), bgcolor=bg)
        return style

    def _row_strip(self, line: int) -> Strip:
        """One line of the map, cursor included (the cache key says whether it is on this line)."""
        assert self.grid is not None
        row, col = self.cursor
        on_line = self._line(row) == line
        key = ("row", line, self._cell, self.cursor if on_line else None)
        strip = self._lines.get(key)
        if strip is not None:
            return strip
        levels = self.grid.levels
        if self.grid.per_layer:
            top = levels[2 * line].tolist()
            bottom = levels[2 * line + 1].tolist() if 2 * line + 1 < len(self.grid.rows) else [NO_ROW] * len(top)
            char = "▀"
        else:
            top, bottom, char = levels[0].tolist(), [NO_ROW] * levels.shape[1], "█"
        if on_line:
            (top if row % 2 == 0 or not self.grid.per_layer else bottom)[col] = CURSOR
        segments: list[Segment] = []
        run_style, run = None, 0
        for t, b in zip(top, bottom):
            style = self._style(t, b)
            if style is run_style:
                run += 1
                continue
            if run_style is not None:
                segments.append(Segment(char * (run * self._cell), run_style))
            run_style, run = style, 1
        if run_style is not None:
            segments.append(Segment(char * (run * self._cell), run_style))
        strip = self._lines[key] = Strip(segments, len(top) * self._cell)
        return strip

    def _gutter(self, line: int) -> Strip:
        assert self.grid is not None
        base = self.rich_style
        rows = self.grid.rows
        if not self.grid.per_layer:
            label, marked = self.grid.stop, {0}  # one row: the stop outside the layers
        else:
            upper = rows[2 * line]
            lower = rows[2 * line + 1] if 2 * line + 1 < len(rows) else None
            label = f"L{upper}" + (f"/{lower}" if lower is not None else "")
            marked = {2 * line, 2 * line + 1}
        style = base
        if self.first is not None and self.first[0] in marked:
            style = base + Style.parse(colors.WARN)
        if self.cursor[0] in marked:
            style = style + Style(bold=True, reverse=True)
        text = truncate(label, GUTTER - 1)
        return Strip([Segment(" " * (GUTTER - 1 - cell_len(text)), base), Segment(text, style),
                      Segment("▕", base + Style(color=colors.DIM))])

    def _ticks(self) -> Strip:
        """Step numbers, as many as fit without touching."""
        assert self.grid is not None
        key = ("ticks", self._cell)
        strip = self._lines.get(key)
        if strip is None:
            steps, cell = self.grid.steps, self._cell
            width = len(steps) * cell
            chars = [" "] * width
            need = len(str(steps[-1])) + 1 if steps else 1
            every = next(t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10**9) if t * cell >= need)
            for i, s in enumerate(steps):
                label = str(s)
                if s % every == 0 and i * cell + len(label) <= width:
                    chars[i * cell:i * cell + len(label)] = label
            strip = self._lines[key] = Strip([Segment("".join(chars), self.rich_style + Style(color=colors.DIM))])
        return strip

    def _markers(self) -> Strip:
        assert self.grid is not None
        cell, base = self._cell, self.rich_style
        segments = [Segment(" " * (len(self.grid.steps) * cell), base)]
        marks = {}
        if self.first is not None:
            marks[self.first[1]] = Segment("◆", base + Style.parse(colors.WARN))
        marks.setdefault(self.cursor[1], Segment("▼", base + Style(bold=True)))
        strip = Strip(segments)
        for col, seg in sorted(marks.items()):
            x = col * cell + (cell - 1) // 2
            strip = Strip.join([strip.crop(0, x), Strip([seg]), strip.crop(x + 1, strip.cell_length)])
        return strip

    def _corner(self, row: int) -> Strip:
        text = ("step →", "layer↓" if self.grid is not None and self.grid.per_layer else "")[row]
        return Strip([Segment(" " * (GUTTER - 1 - cell_len(text)) + text + " ", self.rich_style + Style(color=colors.DIM))])

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if self.grid is None or not self.grid.steps:
            return Strip.blank(width, self.rich_style)
        scroll_x, scroll_y = self.scroll_offset
        room = max(0, width - GUTTER)
        if y < AXIS_ROWS:
            left, body = self._corner(y), (self._ticks() if y == 0 else self._markers())
        else:
            line = y - AXIS_ROWS + scroll_y
            if line >= self.grid.n_lines:
                return Strip.blank(width, self.rich_style)
            left, body = self._gutter(line), self._row_strip(line)
        return Strip.join([left, body.crop(scroll_x, scroll_x + room)]).adjust_cell_length(width, self.rich_style)


# The two token streams ---------------------------------------------------------------------------


class TokenStreams(Widget):
    """A's and B's drawn tokens, one column per step, B's differing ones marked; two lines per row."""

    MAX_ROWS = 2

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._columns: list[tuple[int, str, str, bool]] = []  # (step, A's piece, B's piece, match)
        self._first: int | None = None
        self._step = 0

    def show(self, diff: TraceDiff, a: Trace, b: Trace, step: int) -> None:
        fa, fb = piece_format(a), piece_format(b)
        self._columns = [(t.step, "·" if t.a is None else fa.show(t.a), "·" if t.b is None else fb.show(t.b), t.match)
                         for t in diff.tokens]
        self._first = next((t.step for t in diff.tokens if not t.match), None)
        self._step = step
        self.refresh(layout=True)

    def _rows(self, width: int) -> list[list[tuple[int, str, str, bool]]]:
        rows, row, used = [], [], 2
        for column in self._columns:
            w = min(TOKEN_WIDTH, max(cell_len(column[1]), cell_len(column[2]), 1)) + 1
            if row and used + w > width:
                rows.append(row)
                row, used = [], 2
            row.append(column)
            used += w
        if row or not rows:
            rows.append(row)
        return rows

    def get_content_height(self, container, viewport, width: int) -> int:
        return 2 * min(self.MAX_ROWS, len(self._rows(max(1, width))))

    def render(self) -> Text:
        rows = self._rows(max(1, self.size.width))
        at = next((i for i, r in enumerate(rows) if any(c[0] == self._step for c in r)), 0)
        start = max(0, min(at, len(rows) - self.MAX_ROWS))
        out = Text(end="")
        for n, row in enumerate(rows[start:start + self.MAX_ROWS]):
            if n:
                out.append_text(NL)
            line_a, line_b = assemble(("A ", colors.ACCENT)), assemble(("B ", colors.ACCENT))
            for step, pa, pb, match in row:
                w = min(TOKEN_WIDTH, max(cell_len(pa), cell_len(pb), 1))
                style = "bold underline" if step == self._step else ""
                b_style = (colors.DIM if match else f"{colors.WARN} reverse" if step == self._first else colors.WARN)
                line_a.append_text(assemble((_cell(pa, w), style), " "))
                line_b.append_text(assemble((_cell(pb, w), f"{b_style} {style}".strip()), " "))
            if not row:
                line_a.append_text(assemble(("no tokens drawn", colors.DIM)))
            out.append_text(line_a)
            out.append_text(NL)
            out.append_text(line_b)
        return out


def _cell(text: str, width: int) -> str:
    text = truncate(text, width)
    return text + " " * (width - cell_len(text))


# Text blocks -----------------------------------------------------------------------------------


def side_line(name: str, side: dict) -> Text:
    """`A a.trace · SmolLM2 · torch llamacpp float32 · 8 steps`."""
    return assemble((f"{name} ", colors.ACCENT), describe_side(side))


def first_line(diff: TraceDiff) -> Text:
    first = diff.first
    if first is None:
        return assemble(("no divergence", colors.CHOSEN), (f" beyond the tolerance ({diff.tolerance.describe()})", colors.DIM))
    return assemble(("first divergence ", colors.WARN), (first.where(), "bold"), ": ", first.detail)


def reasons_line(diff: TraceDiff, width: int) -> Text:
    if not diff.reasons:
        return assemble(("every step, stop and layer aligned", colors.DIM))
    more = len(diff.reasons) - 1
    tail = f"  (+{more} more: --headless lists all)" if more else ""
    label = "not aligned "
    head = truncate(diff.reasons[0].text, max(10, width - 2 - len(label) - cell_len(tail)))  # 2: the padding
    return assemble((label, colors.WARN), head, (tail, colors.DIM))


def readout(diff: TraceDiff, stop: str, step: int, layer: int | None, metric: str) -> Text:
    """The metrics of every tensor of the (step, stop, layer) under the cursor."""
    where = f"step {step} · {stop}" + (f" · layer {layer}" if layer is not None else "")
    cells = diff.at(step, stop, layer)
    out = assemble((where, "bold"))
    if not cells:
        out.append_text(assemble(("  not compared (one side has no such event)", colors.DIM)))
        return out
    breach = next((c.breach for c in cells if c.breach is not None), None)
    out.append_text(assemble(("  ✖ " + breach.detail, colors.WARN) if breach else ("  ✓ within tolerance", colors.CHOSEN)))
    for c in cells:
        for t in c.tensors:
            name = f"{c.part}.{t.name}" if c.part else t.name
            line = assemble(NL, f"  {name} ", (str(list(t.shape)), colors.DIM))
            if t.exact:
                line.append_text(assemble("  ", ("equal" if not t.n_diff else f"{t.n_diff} values differ", "bold")))
            else:
                for key, label, fmt in (("cos", "cos", "{:.6f}"), ("rel_l2", "rel", "{:.2e}"), ("max_abs", "max|Δ|", "{:.2e}")):
                    style = "bold reverse" if key == metric else "bold"
                    line.append_text(assemble(f"  {label} ", (fmt.format(getattr(t, key)), style)))
                if t.kl is not None:
                    ok = "✓" if t.top1_match else f"✖ {t.top1[0]}≠{t.top1[1]}"
                    line.append_text(assemble("  KL ", (f"{t.kl:.2e}", "bold reverse" if metric == "kl" else "bold"),
                                              f"  top-10 {round(t.topk * 10)}/10  top-1 {ok}"))
            out.append_text(line)
        for name in c.only_a:
            out.append_text(assemble(NL, (f"  {name}: only in A", colors.DIM)))
        for name in c.only_b:
            out.append_text(assemble(NL, (f"  {name}: only in B", colors.DIM)))
        for name, (sa, sb) in c.shapes.items():
            out.append_text(assemble(NL, (f"  {name}: shape A {sa} vs B {sb}", colors.WARN)))
    return out


def legend(metric: str) -> Text:
    lo, hi = METRIC_RANGE[metric]
    ramp = Text(end="")
    for lv in range(0, colors.LEVELS, 4):
        ramp.append("█", style=Style(color=colors.RAMP[lv]))
    return assemble((f"{METRIC_LABEL[metric]} ", colors.DIM), (f"≤1e{int(lo)} ", colors.DIM), ramp,
                    (f" ≥1e{int(hi)}", colors.DIM), "  ", ("█", Style(color=colors.MASKED)),
                    (" not compared  ", colors.DIM), ("█", Style(color=CURSOR_COLOR)), (" cursor  ", colors.DIM),
                    ("◆", colors.WARN), (" first", colors.DIM))

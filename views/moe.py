"""The MoE routing view: which experts each token went to in one layer at one step, and how the
load spreads over the experts, in this layer and across the layers.

    experts · step 0 (prefill) · layer 1/24 · softmax · top-2 of 8 · renormalized
    load ▇▂▁▃▃▇▃▄ · busiest e0 (7), e5 (7) · idle none
    pos piece      picks, gate weight        │0       (router probabilities, one cell per expert)
    0   hello      e4 0.96  e0 0.04          │● ░ ▒ ░ ● ...
    ...
    layer                                    │0
    L0                                       │▇ ▂ ▁ ...   (tokens routed to each expert)

Read from the `moe` events only (engine/models/moe.py writes them: router_logits, probs,
experts, weights, and the routing's scalars). Both grids are line-API `ScrollView`s with an
LRU cache of row strips (the kv-cache view's pattern), so a 400-token prompt or a 60-layer model
costs only the rows on screen; the across-layers grid reads each layer's event once per step.
With more experts than columns, each column stands for a run of consecutive experts and shows
the largest of their values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from traces.base import Trace
from views import colors
from views.format import step_kind
from views.paint_style import PaintStyle
from views.pieces import piece_format
from views.safe import assemble, fit
from views.selection import Selection

PIECE_WIDTH = 10
PICK_WIDTH = 9  # `e12 0.96 `
LOAD_BARS = "▁▂▃▄▅▆▇█"
INK = "#ffffff"


@dataclass(frozen=True)
class LayerRouting:
    """One layer's routing at one step, as its moe event recorded it."""

    step: int
    layer: int
    n_expert: int
    k: int
    gating: str
    norm_w: bool
    scale: float
    positions: list[int]
    tokens: list[int | None]  # the token each row routed (None where the trace does not say)
    experts: np.ndarray  # [T, k] int, best first
    weights: np.ndarray  # [T, k]
    probs: np.ndarray  # [T, n_expert]

    @property
    def load(self) -> np.ndarray:
        return np.bincount(self.experts.ravel(), minlength=self.n_expert)


def _rows_of(trace: Trace, step: int, n_rows: int) -> tuple[list[int], list[int | None]]:
    """The positions and tokens of a step's rows: the prompt at step 0, the fed-back token after.
    (The last layer of llama.cpp's prefill keeps only the last row; its rows are the last ones.)"""
    prompt = trace.prompt_ids()
    if step == 0:
        ids: list[int | None] = list(prompt[-n_rows:]) if len(prompt) >= n_rows else [None] * n_rows
        start = max(0, len(prompt) - n_rows)
        return list(range(start, start + n_rows)), ids
    drawn = trace.generated_ids()
    token = drawn[step - 1] if step - 1 < len(drawn) else None
    return list(range(len(prompt) + step - 1, len(prompt) + step - 1 + n_rows)), [token] * n_rows


def read_routing(trace: Trace, step: int, layer: int) -> LayerRouting | None:
    event = trace.get(step, "moe", layer) if step in trace.steps else None
    if event is None or "experts" not in event.tensors:
        return None
    s, t = event.scalars, event.tensors
    experts = np.asarray(t["experts"]).astype(np.int64)
    weights = np.asarray(t["weights"], dtype=np.float32)
    n_expert = int(s.get("n_expert", 0))
    probs = t.get("probs")
    probs = np.zeros((len(experts), n_expert), np.float32) if probs is None else np.asarray(probs, dtype=np.float32)
    positions, tokens = _rows_of(trace, step, len(experts))
    return LayerRouting(step, layer, n_expert or probs.shape[-1], int(s.get("n_expert_used", experts.shape[-1])),
                        str(s.get("gating", "")), bool(s.get("norm_w", False)), float(s.get("scale", 1.0)),
                        positions, tokens, experts, weights, probs)


def layer_loads(trace: Trace, step: int, n_expert: int) -> list[tuple[int, np.ndarray | None]]:
    """(layer, tokens routed to each expert) for every layer of a step; None where no moe event."""
    out = []
    for layer in range(trace.n_layer):
        event = trace.get(step, "moe", layer) if step in trace.steps else None
        load = event.scalars.get("load") if event is not None else None
        out.append((layer, None if load is None else np.asarray(load, dtype=np.int64)[:n_expert]))
    return out


def describe(r: LayerRouting) -> str:
    """`softmax · top-2 of 8 · renormalized · ×2.5`."""
    parts = [r.gating or "?", f"top-{r.k} of {r.n_expert}"]
    if r.norm_w:
        parts.append("renormalized")
    if r.scale not in (0.0, 1.0):
        parts.append(f"×{r.scale:g}")
    return " · ".join(parts)


def load_line(load: np.ndarray) -> Text:
    """`load ▇▂▁▃ · busiest e0 (7), e5 (7) · idle e3`: this layer's load at a glance."""
    top = load.max() if load.size else 0
    spark = "".join(LOAD_BARS[min(len(LOAD_BARS) - 1, int(v * len(LOAD_BARS) / (top + 1)))] for v in load) \
        if load.size <= 64 else ""
    order = np.argsort(-load, kind="stable")
    busiest = ", ".join(f"e{e} ({load[e]})" for e in order[:3] if load[e] > 0)
    idle = [int(e) for e in np.flatnonzero(load == 0)]
    idle_text = "none" if not idle else ", ".join(f"e{e}" for e in idle[:8]) + (" …" if len(idle) > 8 else "")
    return assemble(("load ", colors.DIM), (spark + " " if spark else "", colors.ACCENT),
                     ("· busiest ", colors.DIM), busiest or "none", (" · idle ", colors.DIM), idle_text)


class HeatGrid(PaintStyle, ScrollView, can_focus=True):
    """Rows of a label and one heat cell per expert (or per run of experts), line API."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.labels: list[list[tuple[str, Style | str]]] = []  # per row: the label's parts
        self.values: np.ndarray = np.zeros((0, 0))  # [rows, n_expert], 0..1
        self.marks: list[set[int]] = []  # per row: the experts drawn with a dot (the picks)
        self.title = ""
        self.label_width = 0
        self._rows: LRUCache[tuple, Strip] = LRUCache(maxsize=512)
        self._styles: dict[tuple, Style] = {}
        self._per, self._cell = 1, 2

    def set_rows(self, title: str, label_width: int, labels, values: np.ndarray, marks: list[set[int]]) -> None:
        self.title, self.label_width, self.labels, self.values, self.marks = title, label_width, labels, values, marks
        self._rows.clear()
        self._update_geometry()
        self.scroll_to(0, 0, animate=False)
        self.refresh()

    def _update_geometry(self) -> None:
        n = self.values.shape[1] if self.values.ndim == 2 else 0
        room = max(1, self.scrollable_content_region.width - self.label_width - 2)
        cell = 2 if 2 * n <= room else 1
        per = max(1, -(-n // room)) if n > room else 1  # experts per column
        if (cell, per) != (self._cell, self._per):
            self._cell, self._per = cell, per
            self._rows.clear()
        self.virtual_size = Size(self.label_width + 1 + -(-n // per) * cell, 1 + len(self.labels))

    def on_resize(self, event: events.Resize) -> None:
        self._update_geometry()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._rows.clear()

    def _heat(self, level: int, marked: bool) -> Style:
        key = (level, marked)
        style = self._styles.get(key)
        if style is None:
            style = Style(bgcolor=colors.RAMP[level], color=INK if marked else None, bold=marked)
            self._styles[key] = style
        return style

    def _columns(self, row: int) -> tuple[np.ndarray, list[bool]]:
        v = self.values[row]
        per = self._per
        if per == 1:
            return v, [e in self.marks[row] for e in range(len(v))]
        n_col = -(-len(v) // per)
        padded = np.pad(v, (0, n_col * per - len(v)))
        cols = padded.reshape(n_col, per).max(axis=1)
        return cols, [any(e // per == c for e in self.marks[row]) for c in range(n_col)]

    def _row_strip(self, row: int) -> Strip:
        key = (row, self._cell, self._per)
        strip = self._rows.get(key)
        if strip is not None:
            return strip
        base = self.rich_style
        segments = [Segment(text, base + (Style.parse(style) if isinstance(style, str) else style))
                    for text, style in self.labels[row]]
        segments.append(Segment("│", base + Style(color=colors.DIM)))
        cols, marked = self._columns(row)
        top = len(colors.RAMP) - 1
        for value, mark in zip(cols, marked):
            level = int(round(float(np.clip(value, 0.0, 1.0)) * top))
            char = ("●" if mark else " ") + (" " if self._cell == 2 else "")
            segments.append(Segment(char if self._cell == 2 else char[0], self._heat(level, mark)))
        strip = Strip(segments)
        self._rows[key] = strip
        return strip

    def _header(self) -> Strip:
        dim = self.rich_style + Style(color=colors.DIM)
        n = self.values.shape[1] if self.values.ndim == 2 else 0
        n_col = -(-n // self._per)
        axis = [" "] * (n_col * self._cell)
        every = max(1, (8 if self._cell == 1 else 4))
        for c in range(0, n_col, every):
            for i, ch in enumerate(str(c * self._per)):
                if c * self._cell + i < len(axis):
                    axis[c * self._cell + i] = ch
        return Strip([Segment(fit(self.title, self.label_width), dim), Segment("│", dim), Segment("".join(axis), dim)])

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if not self.labels:
            return Strip.blank(width, self.rich_style)
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            strip = self._header()
        else:
            row = y - 1 + scroll_y
            if row >= len(self.labels):
                return Strip.blank(width, self.rich_style)
            strip = self._row_strip(row)
        return strip.crop(scroll_x, scroll_x + width).adjust_cell_length(width, self.rich_style)


class MoEView(Vertical):
    """Title, this layer's load, the tokens' picks over the router's probabilities, the load by layer."""

    DEFAULT_CSS = """
    MoEView { height: 1fr; }
    #moe-load { height: auto; }
    #moe-tokens { height: 1fr; scrollbar-size: 1 1; }
    #moe-layers { height: 4; scrollbar-size: 1 1; }
    HeatGrid:focus { background: $boost; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="moe-title", classes="view-title")
        yield Static(id="moe-load")
        yield HeatGrid(id="moe-tokens")
        yield HeatGrid(id="moe-layers")
        yield Static(id="moe-legend", classes="legend")

    def show(self, trace: Trace, selection: Selection) -> None:
        step, layer = selection.step, selection.layer
        event = trace.get(step, "moe", layer) if step in trace.steps else None
        key = (id(trace), step, layer, id(event), len(trace.events(step)) if step in trace.steps else 0)
        if key == self._shown:
            return
        self._shown = key
        r = read_routing(trace, step, layer)
        title = assemble(("experts", colors.ACCENT), f" · step {step} ({step_kind(step)}) · layer {layer}/{trace.n_layer}")
        tokens, layers = self.query_one("#moe-tokens", HeatGrid), self.query_one("#moe-layers", HeatGrid)
        if r is None:
            self.query_one("#moe-title", Static).update(title)
            self.query_one("#moe-load", Static).update(assemble(
                ("no moe event for this step and layer (a dense layer, not captured, or the run has not got "
                 "there yet)", colors.WARN)))
            tokens.set_rows("", 0, [], np.zeros((0, 0)), [])
            layers.set_rows("", 0, [], np.zeros((0, 0)), [])
            self.query_one("#moe-legend", Static).update("")
            return
        title.append_text(assemble((" · " + describe(r), colors.DIM)))
        self.query_one("#moe-title", Static).update(title)
        self.query_one("#moe-load", Static).update(load_line(r.load))
        self._show_tokens(trace, r, tokens)
        self._show_layers(trace, r, layers)
        self.query_one("#moe-legend", Static).update(assemble(
            ("● picked · router probability 0 ", colors.DIM),
            *[(" ", Style(bgcolor=colors.RAMP[i])) for i in range(0, len(colors.RAMP), 4)],
            (" 1 · layers: tokens routed / the busiest's", colors.DIM)))

    def _show_tokens(self, trace: Trace, r: LayerRouting, grid: HeatGrid) -> None:
        fmt = piece_format(trace)
        picks_width = PICK_WIDTH * r.k
        labels = []
        for i, (pos, tok) in enumerate(zip(r.positions, r.tokens)):
            piece = fmt.show(tok) if tok is not None else "?"
            parts: list[tuple[str, Style | str]] = [(f"{pos:<4}", colors.DIM), (fit(piece, PIECE_WIDTH) + " ", "")]
            for e, w in zip(r.experts[i], r.weights[i]):
                parts.append((fit(f"e{e} {w:.2f}", PICK_WIDTH), "bold"))
            labels.append(parts)
        width = 4 + PIECE_WIDTH + 1 + picks_width
        grid.set_rows(fit("pos piece", 4 + PIECE_WIDTH + 1) + fit("picks, gate weight", picks_width), width,
                      labels, r.probs, [set(int(e) for e in row) for row in r.experts])

    def _show_layers(self, trace: Trace, r: LayerRouting, grid: HeatGrid) -> None:
        loads = layer_loads(trace, r.step, r.n_expert)
        found = [(il, load) for il, load in loads if load is not None]
        width = 4 + PIECE_WIDTH + 1 + PICK_WIDTH * r.k
        if not found:
            grid.set_rows("", 0, [], np.zeros((0, 0)), [])
            return
        values = np.zeros((len(found), r.n_expert), np.float32)
        labels = []
        for row, (il, load) in enumerate(found):
            values[row, :len(load)] = load / max(1, load.max())
            busiest = int(np.argmax(load))
            style = "bold" if il == r.layer else colors.DIM
            labels.append([(fit(f"L{il}", 4 + PIECE_WIDTH + 1), style),
                           (fit(f"busiest e{busiest} ({load[busiest]})", PICK_WIDTH * r.k), style)])
        grid.styles.height = min(len(found), 12) + 1  # the header and up to 12 layers; scroll for more
        grid.set_rows("layer, load across the layers", width, labels, values, [set() for _ in found])

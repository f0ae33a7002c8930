"""The attention view: one layer's, one head's softmax weights as a heatmap.

`Heatmap` is a line-API `ScrollView` (toolong's `log_lines.py` pattern): `render_line(y)`
builds a `Strip` per screen line from an LRU cache of whole-row strips, and `virtual_size`
is the map's size, so a 512 × 512 map costs only the lines on screen. Each line holds two
query rows: `▀` drawn with the foreground colour of query 2i and the background colour of
query 2i+1. At a decode step (one query) the single row is drawn in full blocks.

The key axis (top) is labelled with the key tokens' pieces written downwards, the query axis
(left) with the query tokens' pieces (upper / lower half); both stay put while the map scrolls.
Colour is √(w / max w of the head), so small weights stay visible; future keys a causal query
cannot see are drawn in a separate dark colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.cache import LRUCache
from textual.containers import Vertical
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Static

from traces.base import Trace
from views import colors
from views.format import entropy, sparkline
from views.pieces import piece_format
from views.safe import NL, assemble, truncate
from views.selection import Selection

LABEL_WIDTH = 6  # cells of a query piece in the left gutter
MAX_KEY_LABEL_ROWS = 5
MASKED_LEVEL = -1
NO_ROW = -2  # the lower half of the last line when the number of queries is odd


@dataclass
class HeadMap:
    """One head's weights, quantized to colour levels, with the labels of both axes."""

    step: int
    layer: int
    head: int
    n_head: int
    n_kv: int
    weights: np.ndarray  # [T_q, T_k] float
    levels: np.ndarray  # [T_q, T_k] int, MASKED_LEVEL where the query cannot see the key
    key_labels: list[str]  # readable pieces, one per key
    key_special: list[bool]
    query_labels: list[str]  # one per query
    key_axis: list[str]  # the key labels as the axes show them: `<|im_start|>` → `im_start`
    vmax: float
    longest_key: int  # cells of the longest key-axis label

    @property
    def n_query(self) -> int:
        return self.weights.shape[0]

    @property
    def n_key(self) -> int:
        return self.weights.shape[1]

    @property
    def group(self) -> int:
        per_group = max(1, self.n_head // max(1, self.n_kv))
        return self.head // per_group


def head_map(trace: Trace, step: int, layer: int, head: int, weights: np.ndarray) -> HeadMap:
    """Build the map of one head from an `attn` event's weights [n_head, T_q, T_k]."""
    n_head, n_q, n_k = weights.shape
    w = np.asarray(weights[head], dtype=np.float64)
    vmax = float(w.max()) if w.size else 0.0
    scaled = np.sqrt(np.clip(w / vmax, 0.0, 1.0)) if vmax > 0 else np.zeros_like(w)
    levels = np.rint(scaled * (colors.LEVELS - 1)).astype(np.int16)
    # Causal mask: query i sits at position n_k - n_q + i and sees keys up to it.
    positions = np.arange(n_k - n_q, n_k)[:, None]
    levels[np.arange(n_k)[None, :] > positions] = MASKED_LEVEL

    fmt = piece_format(trace)
    ids = trace.context_ids(step)[:n_k]
    key_labels = [fmt.show(i) for i in ids] + [f"#{j}" for j in range(len(ids), n_k)]
    key_special = [fmt.is_special(i) for i in ids] + [False] * (n_k - len(ids))
    model = trace.info.get("model", {})
    n_kv = int(model.get("n_head_kv") or n_head)
    key_axis = [_undecorate(label) if special else label for label, special in zip(key_labels, key_special)]
    longest = max((cell_len(label) for label in key_axis), default=1)
    return HeadMap(step, layer, head, n_head, n_kv, w, levels, key_labels, key_special,
                   key_labels[n_k - n_q:], key_axis, vmax, longest)


def _undecorate(label: str) -> str:
    """`<|im_start|>` → `im_start`: on an axis the colour already says "special"."""
    core = label.removeprefix("<|").removesuffix("|>")
    if core == label:
        core = label.removeprefix("<").removesuffix(">")
    return core or label


def _color(level: int):
    return colors.MASKED if level == MASKED_LEVEL else colors.RAMP[level]


class Heatmap(ScrollView, can_focus=True):
    """The weights of one head, drawn with the line API."""

    class Hovered(Message):
        """The mouse is over a cell (query, key) of the map, or left it (None)."""

        def __init__(self, cell: tuple[int, int] | None) -> None:
            super().__init__()
            self.cell = cell

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.map: HeadMap | None = None
        self._rows: LRUCache[tuple[str, int, int], Strip] = LRUCache(maxsize=1024)
        self._styles: dict[tuple[int, int], Style] = {}
        self._cell_width = 1
        self._hover: tuple[int, int] | None = None

    # Geometry -----------------------------------------------------------------

    @property
    def axis_width(self) -> int:
        """Width of the sticky left column of query labels, its border included."""
        if self.map is None:
            return 0
        return (LABEL_WIDTH * 2 + 2) if self.map.n_query > 1 else LABEL_WIDTH + 1

    @property
    def label_rows(self) -> int:
        if self.map is None:
            return 0
        return max(1, min(MAX_KEY_LABEL_ROWS, self.map.longest_key, self.size.height // 3))

    @property
    def n_lines(self) -> int:
        if self.map is None:
            return 0
        return 1 if self.map.n_query == 1 else (self.map.n_query + 1) // 2

    def set_map(self, head_map: HeadMap | None) -> None:
        self.map = head_map
        self._rows.clear()
        self._hover = None
        self._update_geometry()
        self.refresh()

    def _update_geometry(self) -> None:
        if self.map is None:
            self.virtual_size = Size(0, 0)
            return
        room = max(1, self.scrollable_content_region.width - self.axis_width)
        cell = max(1, min(3, room // max(1, self.map.n_key)))
        if cell != self._cell_width:
            self._cell_width = cell
            self._rows.clear()
        self.virtual_size = Size(self.axis_width + self.map.n_key * cell, self.label_rows + self.n_lines)

    def on_resize(self, event: events.Resize) -> None:
        self._update_geometry()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._rows.clear()

    # Drawing -------------------------------------------------------------------

    def _style(self, top: int, bottom: int) -> Style:
        style = self._styles.get((top, bottom))
        if style is None:
            bg = None if bottom == NO_ROW else _color(bottom)
            style = self._styles[(top, bottom)] = Style(color=_color(top), bgcolor=bg)
        return style

    def _row_strip(self, line: int) -> Strip:
        """One whole line of the map (no gutter), from the cache."""
        key = ("row", line, self._cell_width)
        strip = self._rows.get(key)
        if strip is not None:
            return strip
        assert self.map is not None
        levels = self.map.levels
        if self.map.n_query == 1:
            top, bottom, char = levels[0], None, "█"
        else:
            top = levels[2 * line]
            bottom = levels[2 * line + 1] if 2 * line + 1 < self.map.n_query else None
            char = "▀"
        segments: list[Segment] = []
        run_style, run_len = None, 0
        for k in range(self.map.n_key):
            style = self._style(int(top[k]), NO_ROW if bottom is None else int(bottom[k]))
            if style is run_style:
                run_len += 1
                continue
            if run_style is not None:
                segments.append(Segment(char * (run_len * self._cell_width), run_style))
            run_style, run_len = style, 1
        if run_style is not None:
            segments.append(Segment(char * (run_len * self._cell_width), run_style))
        strip = Strip(segments, self.map.n_key * self._cell_width)
        self._rows[key] = strip
        return strip

    def _gutter_strip(self, line: int) -> Strip:
        assert self.map is not None
        labels = self.map.key_axis[self.map.n_key - self.map.n_query:]
        base = self.rich_style
        edge = Segment("▕", base + Style(color=colors.DIM))
        if self.map.n_query == 1:
            text = truncate(labels[0], LABEL_WIDTH)
            return Strip([Segment(" " * (LABEL_WIDTH - cell_len(text)) + text, base + Style(bold=True)), edge])
        upper = truncate(labels[2 * line], LABEL_WIDTH)
        lower = truncate(labels[2 * line + 1], LABEL_WIDTH) if 2 * line + 1 < len(labels) else ""
        return Strip([
            Segment(" " * (LABEL_WIDTH - cell_len(upper)) + upper, base + Style(bold=True)),
            Segment("/", base + Style(color=colors.DIM)),
            Segment(lower + " " * (LABEL_WIDTH - cell_len(lower)), base),
            edge,
        ])

    def _label_strip(self, row: int) -> Strip:
        """Row `row` of the key labels: each key's piece written downwards, one character per row."""
        assert self.map is not None
        key = ("label", row, self._cell_width)
        strip = self._rows.get(key)
        if strip is not None:
            return strip
        base = self.rich_style
        styles = (base + Style.parse(colors.SINK), base + Style.parse(colors.SPECIAL), base)
        cell = self._cell_width
        pad = (cell - 1) // 2
        segments = []
        for k, label in enumerate(self.map.key_axis):
            ch = label[row] if row < len(label) else " "
            if cell_len(ch) != 1:
                ch = "·"  # a wide character would break the columns
            style = styles[0] if k == 0 else styles[1] if self.map.key_special[k] else styles[2]
            segments.append(Segment(" " * pad + ch + " " * (cell - 1 - pad), style))
        strip = self._rows[key] = Strip(segments)
        return strip

    def _corner(self, row: int) -> Strip:
        width = self.axis_width
        texts = {0: "key →", self.label_rows - 1: "query ↓"}
        text = texts.get(row, "")[: width - 1]
        style = self.rich_style + Style(color=colors.DIM)
        return Strip([Segment(" " * (width - 1 - cell_len(text)) + text + " ", style)])

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        if self.map is None:
            return Strip.blank(width, self.rich_style)
        scroll_x, scroll_y = self.scroll_offset
        gutter = self.axis_width
        room = max(0, width - gutter)
        if y < self.label_rows:
            left, body = self._corner(y), self._label_strip(y)
        else:
            line = y - self.label_rows + scroll_y
            if line >= self.n_lines:
                return Strip.blank(width, self.rich_style)
            left, body = self._gutter_strip(line), self._row_strip(line)
        body = body.crop(scroll_x, scroll_x + room)
        return Strip.join([left, body]).adjust_cell_length(width, self.rich_style)

    # Mouse -----------------------------------------------------------------------

    def on_mouse_move(self, event: events.MouseMove) -> None:
        cell = self._cell_at(event.x, event.y)
        if cell != self._hover:
            self._hover = cell
            self.post_message(self.Hovered(cell))

    def on_leave(self, event: events.Leave) -> None:
        if self._hover is not None:
            self._hover = None
            self.post_message(self.Hovered(None))

    def _cell_at(self, x: int, y: int) -> tuple[int, int] | None:
        if self.map is None or x < self.axis_width or y < self.label_rows:
            return None
        scroll_x, scroll_y = self.scroll_offset
        key = (x - self.axis_width + scroll_x) // self._cell_width
        line = y - self.label_rows + scroll_y
        if not (0 <= key < self.map.n_key and 0 <= line < self.n_lines):
            return None
        return (2 * line if self.map.n_query > 1 else 0, key)


class AttentionView(Vertical):
    """Title, statistics (sink mass, entropy per head, top keys) and the heatmap of one head."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None
        self._map: HeadMap | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="attention-title", classes="view-title")
        yield Static(id="attention-stats")
        yield Heatmap(id="attention-map")
        yield Static(id="attention-readout", classes="legend")

    def show(self, trace: Trace, selection: Selection) -> None:
        step, layer = selection.step, selection.layer
        event = trace.get(step, "attn", layer)
        key = (id(trace), step, layer, selection.head, id(event))
        if key == self._shown:
            return
        self._shown = key
        heatmap = self.query_one(Heatmap)
        title = self.query_one("#attention-title", Static)
        stats = self.query_one("#attention-stats", Static)
        n_layer = trace.n_layer
        heading = assemble(("attention", colors.ACCENT), f" · layer {layer}/{n_layer}")
        weights = event.tensors.get("weights") if event is not None else None
        if weights is None or weights.ndim != 3 or 0 in weights.shape:
            self._map = None
            heatmap.set_map(None)
            title.update(heading)
            why = ("no attn event for this step and layer (not captured, or the run has not got there yet)"
                   if event is None else "this attn event carries no weights tensor [n_head, T_q, T_k]")
            stats.update(assemble((why, colors.WARN)))
            self._readout()
            return

        n_head = weights.shape[0]
        head = selection.head % n_head
        hm = self._map = head_map(trace, step, layer, head, weights)
        heading.append_text(assemble(" · ", (f"head {head}/{n_head}", "bold"), f" · kv group {hm.group}"))
        title.update(heading)

        # Per-head entropy (mean over the query rows), the sink mass, where the last query looks.
        per_head = entropy(weights.astype(np.float64), axis=-1).mean(axis=-1).tolist()
        sink = float(hm.weights[:, 0].mean())
        last = hm.weights[-1]
        top = np.argsort(-last)[:3]
        line = assemble("sink ", (f"{sink:.2f}", colors.SINK), " · entropy ", (f"{per_head[head]:.2f}", "bold"),
                        (f" nats (max {np.log(hm.n_key):.2f})", colors.DIM), " · heads ",
                        *self._head_spark(per_head, head), NL, ("last query → ", colors.DIM))
        for i, k in enumerate(top):
            if i:
                line.append_text(assemble((", ", colors.DIM)))
            line.append_text(assemble((f"k{int(k)} ", colors.DIM), (hm.key_labels[int(k)], "bold"),
                                      (f" {last[int(k)]:.2f}", colors.DIM)))
        stats.update(line)
        heatmap.set_map(hm)
        self._readout()

    @staticmethod
    def _head_spark(per_head: list[float], head: int) -> list[tuple[str, str]]:
        spark = sparkline(per_head)
        return [(spark[:head], colors.DIM), (spark[head:head + 1], colors.SINK), (spark[head + 1:], colors.DIM)]

    def on_heatmap_hovered(self, message: Heatmap.Hovered) -> None:
        self._readout(message.cell)

    def _readout(self, cell: tuple[int, int] | None = None) -> None:
        readout = self.query_one("#attention-readout", Static)
        hm = self._map
        if hm is None:
            readout.update("")
            return
        if cell is None:
            ramp = Text(end="")
            for level in range(0, len(colors.RAMP), 4):
                ramp.append("█", style=Style(color=colors.RAMP[level]))
            readout.update(assemble(("colour √(w / ", colors.DIM), (f"{hm.vmax:.2f}", colors.DIM),
                                    (") ", colors.DIM), ramp, ("  ", ""), ("█", Style(color=colors.MASKED)),
                                    (" future (masked)", colors.DIM)))
            return
        q, k = cell
        text = assemble(f"query {q} ", (hm.query_labels[q], "bold"), f" → key {k} ", (hm.key_labels[k], "bold"),
                        ": ", (f"{hm.weights[q, k]:.4f}", colors.SINK))
        if hm.n_query > 1 and q + 1 < hm.n_query:
            text.append_text(assemble((f" · query {q + 1} ", colors.DIM), (hm.query_labels[q + 1], colors.DIM),
                                      (f": {hm.weights[q + 1, k]:.4f}", colors.DIM)))
        readout.update(text)

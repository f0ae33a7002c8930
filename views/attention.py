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

Kept fast on a 512-token prefill (bench/ui.py, issue #6's ~30 ms a keypress): the per-head entropy
is computed once per event, in float32 and over the causal triangle only, so a head change reuses it;
the colour levels are quantized by blocks of rows as they are drawn; each screen line is built from
the keys on screen only and cached per (line, scroll, width); a new map repaints only the lines
that changed and lays nothing out unless a scrollbar comes or goes (`LineScrollView`); the text
above and below the map is updated without a layout when its height stays the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
from textual.strip import Strip

from traces.base import Trace
from views import colors
from views.format import sparkline
from views.pieces import piece_format
from views.safe import NL, assemble, truncate
from views.selection import Selection
from views.line_scroll import LineScrollView
from views.text_panel import TextPanel

LABEL_WIDTH = 6  # cells of a query piece in the left gutter
MAX_KEY_LABEL_ROWS = 5
MASKED_LEVEL = -1
NO_ROW = -2  # the lower half of the last line when the number of queries is odd
ENTROPY_BLOCK = 64  # query rows per block of head_entropy
LEVEL_BLOCK = 64  # query rows per block of HeadMap.level_rows
STATS_KEPT = 64  # events whose per-head entropies are kept (AttentionView._entropies)


@dataclass
class HeadMap:
    """One head's weights, quantized to colour levels as they are drawn, with the labels of both axes."""

    step: int
    layer: int
    head: int
    n_head: int
    n_kv: int
    weights: np.ndarray  # [T_q, T_k] float
    key_labels: list[str]  # readable pieces, one per key
    key_special: list[bool]
    query_labels: list[str]  # one per query
    key_axis: list[str]  # the key labels as the axes show them: `<|im_start|>` → `im_start`
    vmax: float
    longest_key: int  # cells of the longest key-axis label
    _blocks: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)  # LEVEL_BLOCK rows each

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

    def level_rows(self, q0: int, q1: int, k0: int, k1: int) -> np.ndarray:
        """Colour levels of queries q0..q1 × keys k0..k1 [int16], MASKED_LEVEL where a query cannot
        see the key. Quantized as drawn, by blocks of query rows, not for the whole map at once: a
        prefill's map is 512 × 512 and a screen shows ~60 × 100 of it (the whole map took ~3 ms of
        each layer or head change, and a call per screen line as much again in numpy's overhead)."""
        q1, k1 = min(q1, self.n_query), min(k1, self.n_key)
        b0, b1 = q0 // LEVEL_BLOCK, max(q0, q1 - 1) // LEVEL_BLOCK
        rows = [self._level_block(b) for b in range(b0, b1 + 1)]
        block = rows[0] if len(rows) == 1 else np.concatenate(rows)
        return block[q0 - b0 * LEVEL_BLOCK: q1 - b0 * LEVEL_BLOCK, k0:k1]

    def _level_block(self, b: int) -> np.ndarray:
        levels = self._blocks.get(b)
        if levels is not None:
            return levels
        q0, q1 = b * LEVEL_BLOCK, min(self.n_query, (b + 1) * LEVEL_BLOCK)
        w = self.weights[q0:q1]
        if self.vmax > 0:
            scaled = np.clip(w / self.vmax, 0.0, 1.0)  # a float32 map stays float32
            levels = np.rint(np.sqrt(scaled, out=scaled) * (colors.LEVELS - 1)).astype(np.int16)
        else:
            levels = np.zeros(w.shape, dtype=np.int16)
        # Causal mask: query i sits at position n_k - n_q + i and sees keys up to it.
        positions = np.arange(q0, q1)[:, None] + (self.n_key - self.n_query)
        levels[np.arange(self.n_key)[None, :] > positions] = MASKED_LEVEL
        self._blocks[b] = levels
        return levels

    @property
    def levels(self) -> np.ndarray:
        """The whole map's colour levels [T_q, T_k]."""
        return self.level_rows(0, self.n_query, 0, self.n_key)


@dataclass
class KeyLabels:
    """The pieces of a step's keys, as the map's axes and readout show them (the same for every
    layer and head of the step)."""

    labels: list[str]
    special: list[bool]
    axis: list[str]  # `<|im_start|>` → `im_start`
    longest: int  # cells of the longest axis label


def key_labels(trace: Trace, step: int, n_k: int) -> KeyLabels:
    fmt = piece_format(trace)
    ids = trace.context_ids(step)[:n_k]
    labels = [fmt.show(i) for i in ids] + [f"#{j}" for j in range(len(ids), n_k)]
    special = [fmt.is_special(i) for i in ids] + [False] * (n_k - len(ids))
    axis = [_undecorate(label) if sp else label for label, sp in zip(labels, special)]
    return KeyLabels(labels, special, axis, max((cell_len(label) for label in axis), default=1))


def head_map(trace: Trace, step: int, layer: int, head: int, weights: np.ndarray,
             keys: KeyLabels | None = None) -> HeadMap:
    """Build the map of one head from an `attn` event's weights [n_head, T_q, T_k]."""
    n_head, n_q, n_k = weights.shape
    w = np.asarray(weights[head])  # as stored (float32): a view, no copy of a 512 × 512 map
    vmax = float(w.max()) if w.size else 0.0
    keys = keys if keys is not None and len(keys.labels) == n_k else key_labels(trace, step, n_k)
    model = trace.info.get("model", {})
    n_kv = int(model.get("n_head_kv") or n_head)
    return HeadMap(step, layer, head, n_head, n_kv, w, keys.labels, keys.special,
                   keys.labels[n_k - n_q:], keys.axis, vmax, keys.longest)


def head_entropy(weights: np.ndarray) -> np.ndarray:
    """Each head's entropy in nats, averaged over its query rows: [n_head, T_q, T_k] → [n_head].

    float32 (the weights' own precision; a float64 copy of a prefill's [9, 512, 512] cost ~100 ms),
    and by blocks of queries over the keys they can see: past a causal query's position the
    weights are zero and contribute nothing (checked, not assumed: a block with any weight past
    it is summed whole). One head's block at a time, through one buffer: a block of all heads
    (9 × 64 × 512) outgrew the cache and took twice as long (~13 ms for a 512-token prefill)."""
    w = np.asarray(weights)
    n_head, n_q, n_k = w.shape
    total = np.zeros(n_head, dtype=np.float64)
    if w.size == 0:
        return total
    dtype = np.result_type(w.dtype, np.float32)
    tiny = np.finfo(dtype).tiny
    buffer = np.empty(min(n_q, ENTROPY_BLOCK) * n_k, dtype=dtype)
    for q0 in range(0, n_q, ENTROPY_BLOCK):
        q1 = min(n_q, q0 + ENTROPY_BLOCK)
        k1 = max(0, min(n_k, n_k - n_q + q1))  # keys up to the block's last query's position
        if k1 < n_k and w[:, q0:q1, k1:].any():
            k1 = n_k
        for head in range(n_head):
            p = w[head, q0:q1, :k1]
            terms = buffer[: p.size].reshape(p.shape)
            np.log(np.maximum(p, tiny, out=terms), out=terms)
            terms *= p  # 0 · log(tiny) = 0: zeros contribute nothing
            total[head] -= terms.sum(dtype=np.float64)
    return total / n_q


def _undecorate(label: str) -> str:
    """`<|im_start|>` → `im_start`: on an axis the colour already says "special"."""
    core = label.removeprefix("<|").removesuffix("|>")
    if core == label:
        core = label.removeprefix("<").removesuffix(">")
    return core or label


def _color(level: int):
    return colors.MASKED if level == MASKED_LEVEL else colors.RAMP[level]


class Heatmap(LineScrollView, can_focus=True):
    """The weights of one head, drawn with the line API."""

    class Hovered(Message):
        """The mouse is over a cell (query, key) of the map, or left it (None)."""

        def __init__(self, cell: tuple[int, int] | None) -> None:
            super().__init__()
            self.cell = cell

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.map: HeadMap | None = None
        # Whole screen lines, gutter and all, by (what, index, scroll x, width): a repaint that
        # is not a change (the cursor, the frame after a scroll) draws nothing again.
        self._lines: LRUCache[tuple[str, int, int, int], Strip] = LRUCache(maxsize=1024)
        # The axes' strips (key label rows, query gutters): the same for every layer and head of a
        # step, so kept while the labels are (`KeyLabels` is made once per step).
        self._axis: LRUCache[tuple[str, int, int, int], Strip] = LRUCache(maxsize=1024)
        self._axis_of: tuple | None = None
        self._styles: dict[int, Style] = {}  # by the code of `_style`
        self._cell_width = 1
        self._hover: tuple[int, int] | None = None
        self._area = Size(0, 0)  # the map's area (scrollable width, height) when last on screen
        self._label_rows = 0

    # Geometry -----------------------------------------------------------------

    @property
    def axis_width(self) -> int:
        """Width of the sticky left column of query labels, its border included."""
        if self.map is None:
            return 0
        return (LABEL_WIDTH * 2 + 2) if self.map.n_query > 1 else LABEL_WIDTH + 1

    @property
    def label_rows(self) -> int:
        """Rows of key labels above the map (set by `_update_geometry`: they follow the height)."""
        return 0 if self.map is None else self._label_rows

    @property
    def n_lines(self) -> int:
        if self.map is None:
            return 0
        return 1 if self.map.n_query == 1 else (self.map.n_query + 1) // 2

    @property
    def area(self) -> Size:
        """The map's area: its scrollable width and its height. While another view is shown the
        widget has no region (size 0), yet `show` sets the map of the view about to appear: the
        area it had when last on screen (the view comes back in the same place), or before its
        first appearance the nearest shown ancestor's, so the layout that shows it gets the
        geometry right and the Resize after it changes nothing (no second layout and frame)."""
        if self.size.width and self.size.height:
            self._area = Size(self.scrollable_content_region.width, self.size.height)
        elif not self._area:
            shown = next((node for node in self.ancestors_with_self if getattr(node, "size", None)), None)
            return Size(shown.size.width, shown.size.height) if shown is not None else Size(0, 0)
        return self._area

    def set_map(self, head_map: HeadMap | None) -> None:
        self.map = head_map
        self._lines.clear()
        axis_of = None if head_map is None else (id(head_map.key_axis), head_map.n_query, head_map.n_key)
        if axis_of != self._axis_of:
            self._axis.clear()
            self._axis_of = axis_of
        self._hover = None
        self._update_geometry()
        self.refresh_changed()

    def _update_geometry(self) -> bool:
        """Fit the cells and the label rows to the area; True when that changed what is drawn."""
        if self.map is None:
            return self.set_virtual_size(Size(0, 0))
        changed = False
        room = max(1, self.area.width - self.axis_width)
        cell = max(1, min(3, room // max(1, self.map.n_key)))
        if cell != self._cell_width:
            self._cell_width = cell
            self._lines.clear()
            self._axis.clear()
            changed = True
        label_rows = max(1, min(MAX_KEY_LABEL_ROWS, self.map.longest_key, self.area.height // 3))
        if label_rows != self._label_rows:
            self._label_rows = label_rows
            self._axis.clear()  # the corner's "query ↓" sits on the last label row
            changed = True
        size = Size(self.axis_width + self.map.n_key * cell, self.label_rows + self.n_lines)
        return self.set_virtual_size(size) or changed

    def on_resize(self, event: events.Resize) -> None:
        # The strips are cached by width: a new width draws new ones. The same geometry (the view
        # shown again where it was) needs no second frame.
        if self._update_geometry():
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._lines.clear()
        self._axis.clear()

    # Drawing -------------------------------------------------------------------

    def _style(self, code: int) -> Style:
        """The style of a cell whose upper and lower halves have the levels of `code` = top · 64 + bottom."""
        top = (code - NO_ROW) // 64  # bottom is NO_ROW (-2) … LEVELS - 1 < 62
        bottom = code - top * 64
        bg = None if bottom == NO_ROW else _color(bottom)
        style = self._styles[code] = Style(color=_color(top), bgcolor=bg)
        return style

    def _keys_on_screen(self, scroll_x: int, room: int) -> tuple[int, int]:
        """The keys whose cells meet the columns [scroll_x, scroll_x + room) of the map."""
        assert self.map is not None
        cell = self._cell_width
        return min(self.map.n_key, scroll_x // cell), min(self.map.n_key, -(-(scroll_x + room) // cell))

    def _row_strip(self, line: int, k0: int, k1: int) -> Strip:
        """Keys k0..k1 of one line of the map: a segment per run of equal colours."""
        assert self.map is not None
        rows = self.map.level_rows(2 * line, 2 * line + 2, k0, k1)  # one row at a decode step or an odd end
        if self.map.n_query == 1:
            top, bottom, char = rows[0], None, "█"
        else:
            top, bottom, char = rows[0], rows[1] if len(rows) > 1 else None, "▀"
        pairs = top.astype(np.int32) * 64 + (NO_ROW if bottom is None else bottom)  # one code per cell
        starts = np.flatnonzero(np.diff(pairs)) + 1
        bounds = [0, *starts.tolist(), len(pairs)]
        codes = pairs[bounds[:-1]].tolist() if len(pairs) else []
        styles, cell = self._styles, self._cell_width
        segments = [Segment(char * ((b - a) * cell), styles.get(code) or self._style(code))
                    for a, b, code in zip(bounds, bounds[1:], codes)]
        return Strip(segments, (k1 - k0) * cell)

    def _gutter_strip(self, line: int) -> Strip:
        assert self.map is not None
        labels = self.map.key_axis[self.map.n_key - self.map.n_query:]
        base = self.base_style
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

    def _label_strip(self, row: int, k0: int, k1: int) -> Strip:
        """Row `row` of the labels of keys k0..k1: each key's piece written downwards, one character per row."""
        assert self.map is not None
        base = self.base_style
        styles = (base + Style.parse(colors.SINK), base + Style.parse(colors.SPECIAL), base)
        cell = self._cell_width
        pad, after = " " * ((cell - 1) // 2), " " * (cell - 1 - (cell - 1) // 2)
        special = self.map.key_special
        # One segment per run of keys in the same style, not one per key: every segment costs again
        # in Textual's filters, the compositor's cuts and the terminal output (a prefill's label rows
        # were ~100 segments each, the costliest lines of the view to paint).
        segments, run, run_style = [], [], None
        for k in range(k0, k1):
            label = self.map.key_axis[k]
            ch = label[row] if row < len(label) else " "
            if not (ch.isascii() and ch.isprintable()) and cell_len(ch) != 1:
                ch = "·"  # a wide character would break the columns
            style = styles[0] if k == 0 else styles[1] if special[k] else styles[2]
            if style is not run_style and run:
                segments.append(Segment("".join(run), run_style))
                run = []
            run_style = style
            run.append(pad + ch + after)
        if run:
            segments.append(Segment("".join(run), run_style))
        return Strip(segments, (k1 - k0) * cell)

    def _corner(self, row: int) -> Strip:
        width = self.axis_width
        texts = {0: "key →", self.label_rows - 1: "query ↓"}
        text = texts.get(row, "")[: width - 1]
        style = self.base_style + Style(color=colors.DIM)
        return Strip([Segment(" " * (width - 1 - cell_len(text)) + text + " ", style)])

    def draw_line(self, y: int) -> Strip:
        width = self.line_width
        if self.map is None:
            return Strip.blank(width, self.base_style)
        scroll_x, scroll_y = self.scroll_offset
        if y < self.label_rows:
            key = ("label", y, scroll_x, width)
            strip = self._axis.get(key)
            if strip is None:
                strip = self._axis[key] = self._join(self._corner(y), self._label_strip, y, scroll_x, width)
            return strip
        line = y - self.label_rows + scroll_y
        if line >= self.n_lines:
            return Strip.blank(width, self.base_style)
        key = ("row", line, scroll_x, width)
        strip = self._lines.get(key)
        if strip is None:
            gutter = self._axis.get(("gutter", line, 0, 0))
            if gutter is None:
                gutter = self._axis[("gutter", line, 0, 0)] = self._gutter_strip(line)
            strip = self._lines[key] = self._join(gutter, self._row_strip, line, scroll_x, width)
        return strip

    def _join(self, left: Strip, draw, index: int, scroll_x: int, width: int) -> Strip:
        """One screen line: its axis part, and the map's cells in the columns on screen only (a
        prefill's line is 512 keys; 140 columns show a quarter of them)."""
        room = max(0, width - self.axis_width)
        k0, k1 = self._keys_on_screen(scroll_x, room)
        skip = scroll_x - k0 * self._cell_width
        body = draw(index, k0, k1).crop(skip, skip + room)
        line = Strip([*left, *body], left.cell_length + body.cell_length)  # Strip.join measures them again
        return line.adjust_cell_length(width, self.base_style)

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
        # Per event: its heads' entropies, with the event (so its id is not reused); oldest first.
        self._entropies: dict[int, tuple[object, list[float]]] = {}
        self._keys: tuple[tuple, KeyLabels] | None = None  # the step's key labels, by (trace, step, T_k)

    def compose(self) -> ComposeResult:
        # TextPanels: a step or head change repaints them and lays the screen out only when a height changes.
        yield TextPanel(id="attention-title", classes="view-title")
        yield TextPanel(id="attention-stats")
        yield Heatmap(id="attention-map")
        yield TextPanel(id="attention-readout", classes="legend")

    def show(self, trace: Trace, selection: Selection) -> None:
        step, layer = selection.step, selection.layer
        event = trace.get(step, "attn", layer)
        key = (id(trace), step, layer, selection.head, id(event))
        if key == self._shown:
            return
        self._shown = key
        heatmap = self.query_one(Heatmap)
        title = self.query_one("#attention-title", TextPanel)
        stats = self.query_one("#attention-stats", TextPanel)
        n_layer = trace.n_layer
        heading = assemble(("attention", colors.ACCENT), f" · layer {layer}/{n_layer}")
        weights = event.tensors.get("weights") if event is not None else None
        if weights is None or weights.ndim != 3 or 0 in weights.shape:
            self._map = None
            heatmap.set_map(None)
            title.set_text(heading)
            why = ("no attn event for this step and layer (not captured, or the run has not got there yet)"
                   if event is None else "this attn event carries no weights tensor [n_head, T_q, T_k]")
            stats.set_text(assemble((why, colors.WARN)))
            self._readout()
            return

        n_head = weights.shape[0]
        head = selection.head % n_head
        hm = self._map = head_map(trace, step, layer, head, weights, self._key_labels(trace, step, weights.shape[2]))
        heading.append_text(assemble(" · ", (f"head {head}/{n_head}", "bold"), f" · kv group {hm.group}"))
        title.set_text(heading)

        # Per-head entropy (mean over the query rows), the sink mass, where the last query looks.
        per_head = self._head_entropy(event, weights)
        sink = float(hm.weights[:, 0].mean(dtype=np.float64))
        last = hm.weights[-1].astype(np.float64)
        top = np.argsort(-last)[:3]
        line = assemble("sink ", (f"{sink:.2f}", colors.SINK), " · entropy ", (f"{per_head[head]:.2f}", "bold"),
                        (f" nats (max {np.log(hm.n_key):.2f})", colors.DIM), " · heads ",
                        *self._head_spark(per_head, head), NL, ("last query → ", colors.DIM))
        for i, k in enumerate(top):
            if i:
                line.append_text(assemble((", ", colors.DIM)))
            line.append_text(assemble((f"k{int(k)} ", colors.DIM), (hm.key_labels[int(k)], "bold"),
                                      (f" {last[int(k)]:.2f}", colors.DIM)))
        stats.set_text(line)
        heatmap.set_map(hm)
        self._readout()

    def _head_entropy(self, event, weights: np.ndarray) -> list[float]:
        """head_entropy once per event: a head change (`h`) shows the same event again."""
        hit = self._entropies.get(id(event))
        if hit is None or hit[0] is not event:
            hit = self._entropies[id(event)] = (event, head_entropy(weights).tolist())
            while len(self._entropies) > STATS_KEPT:
                del self._entropies[next(iter(self._entropies))]
        return hit[1]

    def _key_labels(self, trace: Trace, step: int, n_k: int) -> KeyLabels:
        """The step's key labels once per step: every layer and head of it has the same keys."""
        key = (id(trace), step, n_k)
        if self._keys is None or self._keys[0] != key:
            self._keys = (key, key_labels(trace, step, n_k))
        return self._keys[1]

    @staticmethod
    def _head_spark(per_head: list[float], head: int) -> list[tuple[str, str]]:
        spark = sparkline(per_head)
        return [(spark[:head], colors.DIM), (spark[head:head + 1], colors.SINK), (spark[head + 1:], colors.DIM)]

    def on_heatmap_hovered(self, message: Heatmap.Hovered) -> None:
        self._readout(message.cell)

    def _readout(self, cell: tuple[int, int] | None = None) -> None:
        readout = self.query_one("#attention-readout", TextPanel)
        hm = self._map
        if hm is None:
            readout.set_text(Text(""))
            return
        if cell is None:
            ramp = Text(end="")
            for level in range(0, len(colors.RAMP), 4):
                ramp.append("█", style=Style(color=colors.RAMP[level]))
            readout.set_text(assemble(("colour √(w / ", colors.DIM), (f"{hm.vmax:.2f}", colors.DIM),
                                    (") ", colors.DIM), ramp, ("  ", ""), ("█", Style(color=colors.MASKED)),
                                    (" future (masked)", colors.DIM)))
            return
        q, k = cell
        text = assemble(f"query {q} ", (hm.query_labels[q], "bold"), f" → key {k} ", (hm.key_labels[k], "bold"),
                        ": ", (f"{hm.weights[q, k]:.4f}", colors.SINK))
        if hm.n_query > 1 and q + 1 < hm.n_query:
            text.append_text(assemble((f" · query {q + 1} ", colors.DIM), (hm.query_labels[q + 1], colors.DIM),
                                      (f": {hm.weights[q + 1, k]:.4f}", colors.DIM)))
        readout.set_text(text)

"""The KV-cache view: one layer's paged cache at one step, block by block, from the kv_write events.

    kv cache · step 2 (decode) · layer 1/3
    blocks ▰▰▰▰▱ 4/5 · 14 tokens in 20 slots · n_ctx 64
    wrote pos 13 → block 3 · offset 1 · slot 13
    window 6 · newest query masks pos 0–7 (not evicted)
    pos   block │0
    0     b0    │■ ■ ■ ■
    4     b1    │■ ■ ■ ■
    8     b2    │■ ■ ■ ■
    12    b3    │■ ■ · ·  ◂
    free  b4    │· · · ·

One row per block of the sequence's block table, in position order (a row starts at position
row × block_size; the label is the block's id in the pool), then the pool's free blocks. Each
cell is a slot: coloured by the step that wrote it (read from every earlier kv_write event of
the layer), the selected step's slots drawn on their colour, and on a sliding-window layer the
positions the newest query no longer sees greyed out. `BlockGrid` is a line-API `ScrollView`
(views/attention.py's `LineScrollView`) with an LRU cache of row strips keyed by what a row
shows, so a 4k-token cache of 256 blocks costs only the rows on screen, and a step or a layer
change repaints only the rows that look different.
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
from textual.strip import Strip

from traces.base import Trace
from views import colors
from views.format import step_kind
from views.line_scroll import LineScrollView
from views.safe import NL, assemble, truncate
from views.selection import Selection
from views.text_panel import TextPanel

EMPTY = -1  # a slot of an allocated block no token has reached yet
UNKNOWN = -2  # written, by a step whose kv_write event was not captured
LABEL_WIDTH = 12  # `pos   block `, then the │ edge
# The step colours: the prefill, then the decode steps in turn.
PREFILL_COLOR = "#79c0ff"
DECODE_COLORS = ["#7ee787", "#ffa657", "#d2a8ff", "#ff7b72", "#f2cc60", "#56d4dd", "#e08bd8", "#a5d6ff"]
MASKED_COLOR = "#484f58"
FREE_COLOR = "#30363d"
INK = "#ffffff"  # the square on a highlighted (this step's) slot


def step_color(step: int) -> str:
    return PREFILL_COLOR if step == 0 else DECODE_COLORS[(step - 1) % len(DECODE_COLORS)]


@dataclass(frozen=True)
class CacheMap:
    """One layer's cache as the kv_write event of `step` left it, with who wrote each slot."""

    step: int
    layer: int
    block_size: int
    block_table: list[int]
    blocks_used: int  # in the whole pool (other sequences' blocks included)
    blocks_total: int
    n_cached: int
    n_ctx: int
    window: int  # 0 = global layer
    masked: tuple[int, int]  # positions [start, end) the newest query cannot see
    positions: list[int]  # written at this step
    slots: list[int]
    blocks: list[int]
    offsets: list[int]
    writer: np.ndarray  # [len(block_table) * block_size]: the step that wrote each position, EMPTY or UNKNOWN

    @property
    def free_blocks(self) -> list[int]:
        """The pool's free block ids, when this sequence is its only user (else only their count is known)."""
        n_free = self.blocks_total - self.blocks_used
        if self.blocks_used == len(self.block_table):
            return sorted(set(range(self.blocks_total)) - set(self.block_table))[:n_free]
        return [-1] * n_free


def read_cache_map(trace: Trace, step: int, layer: int) -> CacheMap | None:
    """The layer's cache after `step`, from that step's kv_write event and the earlier ones."""
    event = trace.get(step, "kv_write", layer) if step in trace.steps else None
    if event is None or "block_table" not in event.scalars:
        return None
    s = event.scalars
    bs = int(s["block_size"])
    table = [int(b) for b in s["block_table"]]
    n_cached = int(s["n_cached"])
    writer = np.full(len(table) * bs, EMPTY, dtype=np.int64)
    writer[:n_cached] = UNKNOWN
    for earlier in trace.steps:
        if earlier > step:
            break
        e = event if earlier == step else trace.get(earlier, "kv_write", layer)
        if e is not None:
            positions = [p for p in e.scalars.get("positions", []) if 0 <= p < len(writer)]
            writer[positions] = earlier
    masked = s.get("masked") or [0, 0]
    return CacheMap(step, layer, bs, table, int(s["blocks_used"]), int(s["blocks_total"]), n_cached,
                    int(s["n_ctx"]), int(s.get("window", 0)), (int(masked[0]), int(masked[1])),
                    list(s["positions"]), list(s["slots"]), list(s["blocks"]), list(s["offsets"]), writer)


def _span(values: list[int]) -> str:
    """`13`, `0–11`, or `3, 7, 9` for a list of positions or ids."""
    if not values:
        return "none"
    if len(values) == 1:
        return str(values[0])
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}–{values[-1]}"
    return ", ".join(str(v) for v in values)


NOW = -10  # a code below NOW: this step wrote the slot (NOW - step, so the code names the colour)
MASKED = -3  # written, and outside the newest query's sliding window


def slot_codes(m: CacheMap) -> np.ndarray:
    """What each slot of the block table shows, one int per slot [len(block_table), block_size]:
    the step that wrote it, EMPTY, UNKNOWN, MASKED, or NOW - step. A row's codes say all its cells
    draw from, so equal codes are an equal row (what a step or layer change repaints)."""
    codes = m.writer.copy()
    positions = np.arange(len(codes))
    now = codes == m.step
    codes[(codes >= 0) & ~now & (positions >= m.masked[0]) & (positions < m.masked[1])] = MASKED
    codes[now] = NOW - m.step
    return codes.reshape(len(m.block_table), m.block_size)


class BlockGrid(LineScrollView, can_focus=True):
    """The block table, a row per block, a cell per slot, drawn with the line API.

    Row strips are cached by what they show (label, slot codes, marker), not by row number, and a
    new map repaints only the lines that changed (`LineScrollView`): a step adds a token to one
    block and a layer change usually changes nothing, so `]` and `l` repaint a line or two instead
    of the whole grid (~15-25 ms a press on a 512-token cache)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.map: CacheMap | None = None
        self._rows: LRUCache[tuple, Strip] = LRUCache(maxsize=1024)
        self._styles: dict[tuple, Style] = {}
        self._cell = 2
        self._codes = np.zeros((0, 0), dtype=np.int64)
        self._written: set[int] = set()  # blocks this step wrote to
        self._free: list[int] = []

    @property
    def n_rows(self) -> int:
        m = self.map
        return 0 if m is None else len(m.block_table) + (m.blocks_total - m.blocks_used)

    def set_map(self, cache_map: CacheMap | None) -> None:
        self.map = cache_map
        if cache_map is not None:
            self._codes = slot_codes(cache_map)
            self._written = set(cache_map.blocks)
            self._free = cache_map.free_blocks
        self._update_geometry()
        self.refresh_changed()

    def _update_geometry(self) -> None:
        if self.map is None:
            self.set_virtual_size(Size(0, 0))
            return
        room = self.scrollable_content_region.width - LABEL_WIDTH - 1 - 2
        if not self.size.width:  # hidden (another view shown): keep the cell width it was shown with
            room = self._cell * self.map.block_size
        self._cell = 2 if self.map.block_size * 2 <= room else 1
        self.set_virtual_size(Size(LABEL_WIDTH + 1 + self.map.block_size * self._cell + 2, 1 + self.n_rows))

    def on_resize(self, event: events.Resize) -> None:
        cell = self._cell
        self._update_geometry()
        if self._cell != cell:
            self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._rows.clear()

    def _style(self, *key) -> Style:
        style = self._styles.get(key)
        if style is None:
            kind, step = key
            if kind == "now":
                style = Style(color=INK, bgcolor=step_color(step), bold=True)
            elif kind == "step":
                style = Style(color=step_color(step))
            else:
                style = Style(color={"masked": MASKED_COLOR, "free": FREE_COLOR}.get(kind, colors.DIM))
            self._styles[key] = style
        return style

    def _cell_of(self, code: int) -> tuple[str, Style]:
        if code == EMPTY:
            return "·", self._style("empty", 0)
        if code == UNKNOWN:
            return "□", self._style("unknown", 0)
        if code <= NOW:
            return "■", self._style("now", NOW - code)
        if code == MASKED:
            return "■", self._style("masked", 0)
        return "■", self._style("step", code)

    def _row_key(self, row: int) -> tuple:
        m = self.map
        assert m is not None
        if row < len(m.block_table):
            block = m.block_table[row]
            marker = m.step if block in self._written else None
            return ("block", row * m.block_size, block, marker, self._codes[row].tobytes(), self._cell)
        return ("free", self._free[row - len(m.block_table)], m.block_size, self._cell)

    def _row_strip(self, row: int) -> Strip:
        """Row `row` after the header: a block of the table, or a free block of the pool."""
        key = self._row_key(row)
        strip = self._rows.get(key)
        if strip is not None:
            return strip
        m = self.map
        assert m is not None
        base = self.base_style
        dim = base + Style(color=colors.DIM)
        edge = Segment("│", dim)
        pad = " " * (self._cell - 1)
        segments: list[Segment] = []
        if key[0] == "block":
            _, start, block, marker, _, _ = key
            codes = self._codes[row].tolist()
            label = f"{start:<6}{'b' + str(block):<6}"
            segments += [Segment(label, base + Style(bold=marker is not None)), edge]
            for offset, code in enumerate(codes):
                char, style = self._cell_of(code)
                segments.append(Segment(char, base + style))
                if pad:
                    # A highlighted run stays one bar; elsewhere the gap is blank.
                    now = code <= NOW and offset + 1 < len(codes) and codes[offset + 1] <= NOW
                    segments.append(Segment(pad, base + style if now else base))
            if marker is not None:
                segments.append(Segment(" ◂", base + Style(color=step_color(marker), bold=True)))
        else:
            free = key[1]
            label = f"{'free':<6}{('b' + str(free)) if free >= 0 else '':<6}"
            segments += [Segment(label, dim), edge]
            cell = Segment("·" + pad, base + self._style("free", 0))
            segments += [cell] * m.block_size
        strip = Strip(segments)
        self._rows[key] = strip
        return strip

    def _header(self) -> Strip:
        m = self.map
        assert m is not None
        key = ("header", m.block_size, self._cell)
        strip = self._rows.get(key)
        if strip is not None:
            return strip
        dim = self.base_style + Style(color=colors.DIM)
        axis = [" "] * (m.block_size * self._cell)
        every = 4 if self._cell == 2 else 8
        for offset in range(0, m.block_size, every):
            for i, ch in enumerate(str(offset)):
                if offset * self._cell + i < len(axis):
                    axis[offset * self._cell + i] = ch
        strip = Strip([Segment(f"{'pos':<6}{'block':<6}", dim), Segment("│", dim), Segment("".join(axis), dim)])
        self._rows[key] = strip
        return strip

    def draw_line(self, y: int) -> Strip:
        width = self.line_width
        if self.map is None:
            return Strip.blank(width, self.base_style)
        scroll_x, scroll_y = self.scroll_offset
        if y == 0:
            strip = self._header()
        else:
            row = y - 1 + scroll_y
            if row >= self.n_rows:
                return Strip.blank(width, self.base_style)
            strip = self._row_strip(row)
        return strip.crop(scroll_x, scroll_x + width).adjust_cell_length(width, self.base_style)


class KVCacheView(Vertical):
    """Title, occupancy, where this step's tokens went, the sliding window, then the block grid."""

    DEFAULT_CSS = """
    KVCacheView { height: 1fr; }
    #kv-stats { height: auto; }
    BlockGrid { height: 1fr; scrollbar-size: 1 1; }
    BlockGrid:focus { background: $boost; }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None

    def compose(self) -> ComposeResult:
        # TextPanels: a step repaints them and lays the screen out only when a height changes.
        yield TextPanel(id="kv-title", classes="view-title")
        yield TextPanel(id="kv-stats")
        yield BlockGrid(id="kv-grid")
        yield TextPanel(id="kv-legend", classes="legend")

    def show(self, trace: Trace, selection: Selection) -> None:
        step, layer = selection.step, selection.layer
        event = trace.get(step, "kv_write", layer) if step in trace.steps else None
        key = (id(trace), step, layer, id(event), len(trace.steps))
        if key == self._shown:
            return
        self._shown = key
        m = read_cache_map(trace, step, layer)
        self.query_one("#kv-title", TextPanel).set_text(assemble(
            ("kv cache", colors.ACCENT), f" · step {step} ({step_kind(step)}) · layer {layer}/{trace.n_layer}"))
        self.query_one(BlockGrid).set_map(m)
        stats = self.query_one("#kv-stats", TextPanel)
        legend = self.query_one("#kv-legend", TextPanel)
        if m is None:
            why = ("no kv_write event for this step and layer (not captured, or the run has not got there yet)"
                   if event is None else "this kv_write event has no block table (a trace from before the paged cache)")
            stats.set_text(assemble((why, colors.WARN)))
            legend.set_text(Text(""))
            return
        stats.set_text(self._stats(m))
        legend.set_text(self._legend(m))

    @staticmethod
    def _stats(m: CacheMap) -> Text:
        used = "▰" * m.blocks_used + "▱" * (m.blocks_total - m.blocks_used) if m.blocks_total <= 24 else ""
        slots = m.blocks_total * m.block_size
        text = assemble(("blocks ", colors.DIM), (used + " " if used else "", colors.ACCENT),
                        (f"{m.blocks_used}/{m.blocks_total}", "bold"),
                        (f" · {m.n_cached} tokens in {slots} slots · n_ctx {m.n_ctx}", colors.DIM))
        others = m.blocks_used - len(m.block_table)
        if others > 0:
            text.append_text(assemble((f" · {others} held by other sequences", colors.DIM)))
        wrote = assemble(NL, ("wrote pos ", colors.DIM), (_span(m.positions), step_color(m.step)))
        if len(m.positions) == 1:
            wrote.append_text(assemble((" → block ", colors.DIM), str(m.blocks[0]), (" · offset ", colors.DIM),
                                       str(m.offsets[0]), (" · slot ", colors.DIM), str(m.slots[0])))
        else:
            wrote.append_text(assemble((" → slots ", colors.DIM), _span(m.slots), (" in blocks ", colors.DIM),
                                       truncate(_span(list(dict.fromkeys(m.blocks))), 24)))
        text.append_text(wrote)
        if m.window:
            lo, hi = m.masked
            text.append_text(assemble(NL, ("window ", colors.DIM), (str(m.window), "bold"), (" · ", colors.DIM)))
            if hi > lo:
                text.append_text(assemble(("newest query masks pos ", colors.DIM), (_span(list(range(lo, hi))), "bold"),
                                          (" (not evicted)", colors.DIM)))
            else:
                text.append_text(assemble(("the newest query still sees every position", colors.DIM)))
        else:
            text.append_text(assemble(NL, ("global layer: the newest query sees all ", colors.DIM), str(m.n_cached),
                                      (" positions", colors.DIM)))
        return text

    @staticmethod
    def _legend(m: CacheMap) -> Text:
        decode = Text(end="")
        for s in range(1, min(m.step, len(DECODE_COLORS)) + 1):
            decode.append("■", style=step_color(s))
        parts = [("■", PREFILL_COLOR), (" prefill  ", colors.DIM)]
        if m.step > 0:
            parts += [decode, (" decode  ", colors.DIM)]
        parts += [("■", Style(color=INK, bgcolor=step_color(m.step))), (" this step  ", colors.DIM)]
        if m.window:
            parts += [("■", MASKED_COLOR), (" masked  ", colors.DIM)]
        parts += [("·", colors.DIM), (" empty", colors.DIM)]
        return assemble(*parts)

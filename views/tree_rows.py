"""A Tree that draws its rows itself: the same segments as Textual's Tree, at a fraction of the cost.

The navigator relabels 15-30 rows on a step (every stop's time changes), and Tree drew each at ~0.15 ms: it
assembles a rich Text of the row's guides and label and renders it, looking the widget's size,
scroll, `rich_style` (a walk over every ancestor's CSS) and component styles (a CSS query each)
up again for each row; then Textual frames the row (~0.06 ms). Here what the rows of a paint
share is looked up once (`_Paint`), a row's guides (its └ ├ │ and their styles, which change
only with the tree's shape, the cursor and the hover) are kept as segments, labels are kept
as segments per label and row, and the rows are framed here (`_frame_rows`): the same
segments Tree and Textual draw (tests/test_navigator_rows.py compares them row by row).
Where a Textual lacks what this reads (`_own_rows`), Tree and Textual draw as they do.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import Tree
from textual.widgets.tree import TreeNode

from views.paint_style import PaintStyle

TOGGLE = Style.from_meta({"toggle": True})  # what Tree marks a stop's ▶ with: a click there opens it
_NODE_STATE = ("_updates", "_hover", "_selected", "_label", "_allow_expand", "_id", "_line")  # TreeNode's, read below


@dataclass(frozen=True)
class _RowStyles:
    """The tree's component styles, which Tree looks up for each row it draws."""

    guides: tuple  # the guide styles (plain, under the hover, under the cursor), and whether each is hidden
    highlight_line: Style  # the row under the mouse
    label: Style
    highlight: Style  # the label under the mouse
    cursor: Style


@dataclass(frozen=True)
class _Paint:
    """What every row of one paint shares: where the tree is scrolled, its cursor, its styles."""

    width: int
    scroll_x: int
    scroll_y: int
    pad_width: int  # rows are drawn this wide (the widest row, at least the widget), then cropped
    base_style: Style
    hover_line: int
    cursor_line: int
    has_focus: bool
    pseudo_classes: object  # the tree's (focus, hover, ...): a row kept from another state is not this one
    guides: tuple  # show_guides, guide_depth
    console: object
    styles: _RowStyles


class TreeRows(PaintStyle):
    """Mixed in before `Tree`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._paint_components: dict | None = None  # component rule sets, looked up once per paint
        self._paint_rows: _Paint | None = None  # what every row of a paint shares, looked up once per paint
        self._frame: tuple[Segment, Segment, int] | None = None  # the border around a row: left, right, width
        self._row_styles_kept: tuple[tuple, _RowStyles] | None = None  # (pseudo-classes, style) -> the styles
        self._guides: dict[tuple, tuple[list[Segment], int]] = {}  # a row's guides, as segments, and their width
        self._line_styles: dict[tuple, Style] = {}  # (y, hover, base style) -> the row's style
        self._node_metas: dict[int, Style] = {}  # node id -> the style that names the node to a click
        self._combined: dict[tuple, Style] = {}  # the styles over a stretch of a label -> their sum
        self._label_segments: dict[tuple, tuple] = {}  # (label, node, toggle, styles) -> (label, segments, width)
        # The row drawing below reads Tree's private row state; a Textual without it draws its own rows.
        self._own_rows = (all(hasattr(self.root, name) for name in _NODE_STATE) and hasattr(self, "_line_cache")
                          and all(hasattr(Tree, name) for name in ("_tree_lines", "_render_line",
                                                                   "get_pseudo_class_state")))

    def render_styled_lines(self, crop: Region) -> list[Strip]:
        self._paint_components = {}
        try:
            self._frame_rows(crop)
            return super().render_styled_lines(crop)
        finally:
            self._paint_components = None
            self._paint_rows = None

    def _frame_rows(self, crop: Region) -> None:
        """Put the border around the rows this paint redraws, as Textual would.

        Textual frames each row the tree draws (the border's │ either side, the background, its
        filters: StylesCache.render_line), at ~60 µs a row: once the rows themselves were cheap, two
        thirds of a step's paint. Every content row gets the same frame: read it off a row Textual
        framed (its segments are the border's, then the row's, then the border's; if they are not,
        a style changes the row itself, and Textual frames every row), and frame the others alike in
        Textual's row cache, which then hands them out as if it had drawn them. The frame is read
        again when no row on screen shows it any more (a new style repaints every row)."""
        cache = self._styles_cache
        framed, dirty = getattr(cache, "_cache", None), getattr(cache, "_dirty_lines", None)
        if not self._own_rows or not isinstance(framed, dict) or not isinstance(dirty, set):
            return
        top = self.content_offset.y
        bottom = top + self.size.height
        rows = [y for y in crop.line_range if top <= y < bottom and (y in dirty or y not in framed)]
        if len(rows) < 4:  # learning the frame costs as much as Textual framing a row or two
            return
        frame = self._frame
        if frame is not None:  # still on screen, around a row this paint leaves as it is?
            left, right, width = frame
            shown = next((framed[y] for y in range(top, bottom) if y not in dirty and y in framed), None)
            if shown is None or shown.cell_length != width or next(iter(shown), None) != left \
                    or next(reversed(shown), None) != right:
                frame = None
        if frame is None:
            first = rows.pop(0)
            # Textual frames this one row (the paint already under way keeps its style and rows).
            super(PaintStyle, self).render_lines(Region(0, first, self.outer_size.width, 1))
            sample = framed.get(first)
            if sample is None:
                return
            segments, row = list(sample), list(self.render_line(first - top))
            if len(segments) != len(row) + 2 or segments[1:-1] != row:
                self._frame = None
                return
            frame = self._frame = (segments[0], segments[-1], sample.cell_length)
        left, right, width = frame
        for y in rows:
            framed[y] = Strip([left, *self.render_line(y - top), right], width)
            dirty.discard(y)

    def get_component_styles(self, *names: str):
        memo = self._paint_components
        if memo is None:
            return super().get_component_styles(*names)
        if names not in memo:
            memo[names] = super().get_component_styles(*names)
        return memo[names]

    def render_line(self, y: int) -> Strip:
        if not self._own_rows:
            return super().render_line(y)
        paint = self._paint()
        return self._render_line(y + paint.scroll_y, paint.scroll_x, paint.scroll_x + paint.width, paint.base_style)

    def _render_line(self, y: int, x1: int, x2: int, base_style: Style) -> Strip:
        if not self._own_rows:
            return super()._render_line(y, x1, x2, base_style)
        paint = self._paint()
        lines = self._tree_lines
        if y >= len(lines):
            return Strip.blank(paint.width, base_style)
        line = lines[y]
        path = line.path
        is_hover = paint.hover_line >= 0 and any(node._hover for node in path)
        key = (y, is_hover, paint.width, self._updates, paint.pseudo_classes,
               tuple(node._updates for node in path))  # as Tree keys a row: what its look depends on
        strip = self._line_cache.get(key)
        if strip is None:
            strip = self._line_cache[key] = self._draw_row(y, line, is_hover, base_style, paint)
        return strip.crop(x1, x2)

    def _draw_row(self, y: int, line, is_hover: bool, base_style: Style, paint: _Paint) -> Strip:
        """The row's segments: its guides (kept), its label (rendered), then spaces to the tree's width."""
        style_key = (y, is_hover, base_style)
        line_style = self._line_styles.get(style_key)
        if line_style is None:
            if len(self._line_styles) > 4096:
                self._line_styles.clear()
            line_style = self._line_styles[style_key] = (
                paint.styles.highlight_line if is_hover else base_style) + Style(meta={"line": y})
        guides, cells = self._row_guides(line, line_style, paint)
        segments = list(guides)

        node = line.path[-1]
        label_style = paint.styles.label
        if paint.hover_line == y:
            label_style += paint.styles.highlight
        if paint.cursor_line == y:
            label_style += paint.styles.cursor
        node_label = node._label
        icon = (self.ICON_NODE_EXPANDED if node.is_expanded else self.ICON_NODE) if node._allow_expand else ""
        # Labels are kept (_stop_label): a step seen before draws the same label objects again.
        key = (id(node_label), node._id, icon, line_style, label_style)
        kept = self._label_segments.get(key)
        if kept is None or kept[0] is not node_label:
            if len(self._label_segments) > 4096:
                self._label_segments.clear()
            kept = self._label_segments[key] = (node_label, *self._label_row(node, icon, line_style, label_style,
                                                                              paint.console))
        segments.extend(kept[1])
        cells += kept[2]

        pad = paint.pad_width - cells
        if pad:  # as Tree pads (a negative pad, which Tree never meets, appends an empty segment)
            segments.append(Segment(" " * pad, line_style))
        return Strip(segments, cells + max(0, pad))

    def _label_row(self, node: TreeNode, icon: str, line_style: Style, label_style: Style,
                   console) -> tuple[list[Segment], int]:
        """A label's segments and width. Its spans are those Tree's render_label assembles (the ▶/▼
        toggle, the node's label with the label style over it, all marked with the node's id for a
        click), drawn as rich draws them, over the row's style."""
        node_label = node._label
        text = icon + node_label.plain
        start, end = len(icon), len(text)
        if not text:
            return [], 0
        spans: list[tuple[int, int, Style | str]] = []
        if icon:
            spans.append((0, start, line_style + TOGGLE))
        if node_label.style:
            spans.append((start, end, node_label.style))
        spans.extend((start + first, start + last, style) for first, last, style in node_label.spans)
        if label_style and start < end:
            spans.append((start, end, label_style))
        meta = self._node_metas.get(node._id)
        if meta is None:
            meta = self._node_metas[node._id] = Style(meta={"node": node._id})
        spans.append((0, end, meta))
        return self._render_spans(text, line_style, spans, console), cell_len(text)

    def _render_spans(self, text: str, base: Style, spans: list, console) -> list[Segment]:
        """rich's Text.render: a segment between each two span edges, styled by the base style and
        the spans over it, combined in span order. The combined styles are kept (rich keeps them for
        one render, and its cache of style sums is shared with the whole app: most of a row's time)."""
        edges = [(0, False, 0), *((first, False, index) for index, (first, _, _) in enumerate(spans, 1)),
                 *((last, True, index) for index, (_, last, _) in enumerate(spans, 1)), (len(text), True, 0)]
        edges.sort(key=itemgetter(0, 1))
        styles = (base, *(style for _, _, style in spans))
        combined = self._combined
        if len(combined) > 8192:
            combined.clear()
        over: list[int] = []
        segments = []
        for (offset, leaving, index), (next_offset, _, _) in zip(edges, edges[1:]):
            if leaving:
                over.remove(index)
            else:
                over.append(index)
            if next_offset > offset:
                key = tuple(styles[i] for i in sorted(over))
                style = combined.get(key)
                if style is None:
                    style = combined[key] = Style.combine(console.get_style(s, default=Style.null()) for s in key)
                segments.append(Segment(text[offset:next_offset], style))
        return segments

    def _row_guides(self, line, line_style: Style, paint: _Paint) -> tuple[list[Segment], int]:
        """The guides before a row's label, as Tree draws them: one per ancestor stop (a space below
        the last stop of a phase, else │), then └ or ├, each styled by the cursor or hover above it."""
        path = line.path
        has_focus = paint.has_focus
        hover = path[0]._hover
        selected = path[0]._selected and has_focus
        last = path[-1]
        shape = []  # (0 plain | 1 hover | 2 cursor, 0 space | 1 vertical | 2 terminator | 3 cross)
        state = 0
        for node in path[1:]:
            state = 2 if selected else 1 if hover else 0
            if node is not last:
                shape.append((state, 0 if node.is_last else 1))
            hover = hover or node._hover
            selected = (selected or node._selected) and has_focus
        if len(path) > 1:
            shape.append((state, 2 if line.last else 3))
        key = (line_style, paint.styles.guides, paint.guides, tuple(shape))
        kept = self._guides.get(key)
        if kept is None:
            if len(self._guides) > 4096:
                self._guides.clear()
            (styles, hidden), (show_guides, guide_depth) = paint.styles.guides, paint.guides
            segments, cells = [], 0
            for state, kind in shape:
                style = styles[state]
                if show_guides and not hidden[state]:
                    chars = self.LINES["bold" if style.bold else "double" if style.underline2 else "default"][kind]
                else:
                    chars = "  "
                text = f"{chars[0]}{chars[1] * max(0, guide_depth - 2)} "
                segments.append(Segment(text, line_style + style))
                cells += len(text)
            kept = self._guides[key] = (segments, cells)
        return kept

    def _paint(self) -> _Paint:
        """What every row of a paint shares; kept for the length of the paint (see render_lines)."""
        if self._paint_rows is not None:
            return self._paint_rows
        width = self.size.width
        scroll_x, scroll_y = self.scroll_offset
        base_style = self.rich_style
        pseudo_classes = self.get_pseudo_class_state()
        paint = _Paint(width=width, scroll_x=scroll_x, scroll_y=scroll_y,
                       pad_width=max(self.virtual_size.width, width), base_style=base_style,
                       hover_line=self.hover_line, cursor_line=self.cursor_line, has_focus=self.has_focus,
                       pseudo_classes=pseudo_classes, guides=(self.show_guides, self.guide_depth),
                       console=self.app.console, styles=self._component_row_styles(pseudo_classes, base_style))
        if self._paint_components is not None:  # within a paint
            self._paint_rows = paint
        return paint

    def _component_row_styles(self, pseudo_classes, base_style: Style) -> _RowStyles:
        """The component styles, kept from paint to paint: looking them up again after each refresh
        (which drops Textual's own copy) was 0.4 ms a paint. They change with the CSS (a new theme:
        notify_style_update), with the tree's state (focus, hover: its pseudo-classes) and with
        the background it inherits (in its style)."""
        key = (pseudo_classes, base_style)
        kept = self._row_styles_kept
        if kept is not None and kept[0] == key:
            return kept[1]
        component = self.get_component_rich_style
        plain = component("tree--guides", partial=True)
        styles = _RowStyles(
            guides=((plain, plain + component("tree--guides-hover", partial=True),
                     plain + component("tree--guides-selected", partial=True)),
                    tuple(self.get_component_styles(name).color.a == 0
                          for name in ("tree--guides", "tree--guides-hover", "tree--guides-selected"))),
            highlight_line=component("tree--highlight-line"),
            label=component("tree--label", partial=True),
            highlight=component("tree--highlight", partial=True),
            cursor=component("tree--cursor", partial=False))
        self._row_styles_kept = (key, styles)
        return styles

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._row_styles_kept = None

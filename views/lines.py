"""A widget drawn from rich Text through Textual's line API, each line's Strip made once.

A plain `Widget.render()` returning Text is turned back into strips by Textual on every
repaint, through its general content path (markup, wrapping, styles per span): for a view of
40 coloured lines that was most of a keypress (bench/ui.py). `TextLines` takes the same
`render()` and caches one Strip per line until the widget is refreshed or resized, as toolong's
log view does with its rows.
"""

from __future__ import annotations

from bisect import bisect_right

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.geometry import Size
from textual.strip import Strip
from textual.widget import Widget

from views.geometry import NoScrollLayout
from views.paint_style import PaintStyle


class TextLines(PaintStyle, NoScrollLayout, Widget):
    """Subclasses implement `render()` and call `refresh()` when what they show changes. It returns
    the lines, cut at the widget's width, not wrapped: as a list of Text, one per line, or as one
    Text with newlines. The list spares joining the lines only to split them again (a heatmap's
    thousands of spans, ~5 ms a keypress in the residual view), and each line's own style stays
    under its spans, as its base, instead of overlapping them."""

    _strips: tuple[Size, list[Strip]] | None = None

    def refresh(self, *regions, **kwargs):
        self._strips = None  # whatever asked for a repaint may have changed the lines
        return super().refresh(*regions, **kwargs)

    def render_line(self, y: int) -> Strip:
        size = self.size
        if self._strips is None or self._strips[0] != size:
            self._strips = (size, self._render_strips(size.width))
        strips = self._strips[1]
        return strips[y] if y < len(strips) else Strip.blank(size.width, self.rich_style)

    def rendered_text(self) -> Text:
        """What `render` draws, as one Text (for tests and tools that read a view's text)."""
        rendered = self.render()
        return rendered if isinstance(rendered, Text) else Text("\n", end="").join(rendered)

    def _render_strips(self, width: int) -> list[Strip]:
        rendered = self.render()
        texts = rendered if isinstance(rendered, list) else [rendered]
        base = self.rich_style
        styles: dict = {}  # span style -> base + it: a view repeats a few styles over many spans
        out = []
        for text in texts:
            if not isinstance(text, Text):
                text = Text(str(text))
            out += self._text_strips(text, width, base, styles)
        return out

    def _text_strips(self, text: Text, width: int, base: Style, styles: dict) -> list[Strip]:
        outer, out = text.style, []
        for plain, spans in split_lines(text):
            segments = line_segments(plain, spans, outer, base, styles)
            if segments is None:  # overlapping spans: rich's general renderer
                line = Text(plain, style=outer, spans=spans, end="")
                segments = [Segment(s.text, base + s.style if s.style else base)
                            for s in line.render(self.app.console, end="") if s.text]
            out.append(Strip(segments, cell_len(plain)).adjust_cell_length(width, base))
        return out


def split_lines(text: Text) -> list[tuple[str, list[Span]]]:
    """The lines of `text.split("\n", allow_blank=True)`, each as its text and its spans, without
    rich's `divide`: that copies every span through a search and a new Text per line, a third of
    a view's paint when a heatmap made a span per cell (bench/ui.py). Each span is cut to the
    lines it covers."""
    plain = text.plain
    if "\n" not in plain:
        return [(plain, list(text.spans))]
    rows = plain.split("\n")
    starts, at = [], 0
    for row in rows:
        starts.append(at)
        at += len(row) + 1
    spans: list[list[Span]] = [[] for _ in rows]
    for span in text.spans:
        first = bisect_right(starts, span.start) - 1
        for i in range(max(first, 0), len(rows)):
            line_start = starts[i]
            if line_start >= span.end:
                break
            start, end = max(0, span.start - line_start), min(span.end - line_start, len(rows[i]))
            if end > start:
                spans[i].append(Span(start, end, span.style))
    return list(zip(rows, spans))


def line_segments(plain: str, spans: list[Span], outer, base: Style, styles: dict) -> list[Segment] | None:
    """A line's segments straight from its spans, when they do not overlap (how the views
    build their lines); None otherwise, for rich's general renderer."""
    spans = sorted(spans, key=lambda s: s.start)

    def style(span_style) -> Style:
        key = (outer, span_style)
        got = styles.get(key)
        if got is None:
            got = base
            for s in (outer, span_style):
                if s:
                    got = got + (Style.parse(s) if isinstance(s, str) else s)
            styles[key] = got
        return got

    out, pos = [], 0
    for span in spans:
        if span.start < pos:
            return None
        if span.start > pos:
            out.append(Segment(plain[pos:span.start], style(None)))
        if span.end > span.start:
            out.append(Segment(plain[span.start:span.end], style(span.style)))
        pos = max(pos, span.end)
    if pos < len(plain):
        out.append(Segment(plain[pos:], style(None)))
    return out


def cells_text(head: str, cells: list[tuple[str, Style | str]], tail: Text | None = None) -> Text:
    """`head` then each cell's text in its style, one span per run of equal styles, built directly.

    For heatmap and chart rows (hundreds of cells a keypress): `Text.append` per cell strips
    control codes from each piece and was most of such a view's drawing. The cells are the
    view's own characters (blocks, arrows), never text from a model or a trace, so there is
    nothing to strip; `head` is a label already made safe (views/safe.py)."""
    plain, spans, at = [head], [], len(head)
    run_style, run_start = None, at
    for text, style in cells:
        if style != run_style:
            if run_style and at > run_start:
                spans.append(Span(run_start, at, run_style))
            run_style, run_start = style, at
        plain.append(text)
        at += len(text)
    if run_style and at > run_start:
        spans.append(Span(run_start, at, run_style))
    line = Text("".join(plain), end="", spans=spans)
    if tail is not None:
        line.append_text(tail)
    return line

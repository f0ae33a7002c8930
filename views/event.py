"""The event view: any stop's event as numbers — its tensors summarized, its scalars listed.

Stops without a dedicated view (norms, q/k/v, rope, the FFN, the residual stream, ...)
are shown here, and so is every stop when asked for its raw event.
"""

from __future__ import annotations

import numpy as np
from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.visual import Visual, visualize

from traces.base import Trace
from traces.schema import STOP_BY_NAME
from views import colors
from views.format import duration, step_kind
from views.geometry import shown_size
from views.lines import line_segments, split_lines
from views.paint_style import PaintStyle
from views.safe import NL, assemble, escape_controls, truncate
from views.selection import Selection

MAX_SCALAR = 200  # characters of a scalar's value shown
FIRST_VALUES = 6
SUMMARIES_KEPT = 256  # tensor summaries cached (EventView._summary)


def tensor_summary(name: str, value: np.ndarray) -> Text:
    shape = "×".join(str(n) for n in value.shape) or "scalar"
    head = assemble((f"{name:<8}", "bold"), (f" {shape} {value.dtype}", colors.DIM))
    if value.size == 0:
        return head
    if value.dtype.kind in "fiub":
        # Reduced in the tensor's own dtype, accumulated in float64, over the finite values only
        # where there are others: a prefill's [512, 576] through float64 copies and nan-aware
        # reductions was ~10 ms, most of a step in this view (bench/ui.py).
        # (float16 has no fast reductions in numpy: it goes through float32)
        x = value if value.dtype.kind == "f" and value.dtype.itemsize >= 4 else value.astype(np.float32 if value.dtype.kind == "f" else np.float64)
        finite = np.isfinite(x)
        n_bad = x.size - int(np.count_nonzero(finite))
        xs = x[finite] if n_bad else x.ravel()
        if xs.size:
            stats = (f"  min {float(xs.min()):.4g}  max {float(xs.max()):.4g}  mean {xs.mean(dtype=np.float64):.4g}"
                     f"  std {xs.std(dtype=np.float64):.4g}  ‖·‖ {np.sqrt(np.square(xs, dtype=np.float64).sum()):.4g}")
        else:
            stats = "  no finite values"
        head.append_text(assemble(NL, stats))
        if n_bad:
            head.append_text(assemble((f"  {n_bad} non-finite", colors.WARN)))
        first = ", ".join(f"{float(v):.4g}" for v in x.ravel()[:FIRST_VALUES])
        head.append_text(assemble(NL, (f"  [{first}{', …' if x.size > FIRST_VALUES else ''}]", colors.DIM)))
    return head


class EventView(PaintStyle, ScrollView):
    """One event of the selected step/stop/layer, drawn through the line API.

    Its text is wrapped once per change, as a Static would wrap it, and only the lines on screen
    are painted. As two Statics in a scrolling container, every step laid the whole screen out
    again and wrapped the whole text twice (to measure it, then to draw it): a sample stop's seven
    events made that ~100 ms a keypress (bench/ui.py). Now a change lays nothing out unless the
    number of lines changed."""

    DEFAULT_CSS = "EventView { overflow-x: hidden; }"  # the text wraps: it never scrolls sideways

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None
        self._summaries: dict[tuple[int, str], tuple[object, Text]] = {}  # oldest first
        self._text = Text(end="")
        self._wrapped: dict[int, list[Strip]] = {}  # width -> the text's lines wrapped to it

    def show(self, trace: Trace, selection: Selection) -> None:
        stop = STOP_BY_NAME.get(selection.stop)
        layer = selection.event_layer
        events = [e for e in trace.find(selection.step, selection.stop) if e.layer == layer]
        key = (id(trace), selection.step, selection.stop, layer, tuple(id(e) for e in events))
        if key == self._shown:
            return
        self._shown = key
        title = assemble((stop.title if stop else selection.stop, colors.ACCENT),
                         f" · step {selection.step} ({step_kind(selection.step)})")
        if layer is not None:
            title.append_text(assemble(f" · layer {layer}/{trace.n_layer}"))
        if stop is not None:
            title.append_text(assemble((f" · {stop.code}", colors.DIM)))

        body = Text(end="")
        if stop is not None:
            body.append_text(assemble((stop.tensors, colors.DIM), NL))
        if not events:
            body.append_text(assemble(NL, ("not in this trace", colors.WARN),
                                      (" — not captured, or the run has not got there yet", colors.DIM)))
        for event in events:
            body.append_text(assemble(NL, (f"seq {event.seq}", colors.DIM), " · ", (duration(event.dur_ns), "bold")))
            if event.part:
                body.append_text(assemble(" · part ", (event.part, "bold")))
            for name, value in event.tensors.items():
                body.append_text(NL)
                body.append_text(self._summary(event, name))
            for name, value in event.scalars.items():
                shown = truncate(escape_controls(repr(value) if not isinstance(value, str) else value), MAX_SCALAR)
                body.append_text(assemble(NL, (name, "bold"), " = ", shown))
            body.append("\n")
        self._text = Text("\n", end="").join([title, body])
        self._wrapped.clear()
        self._fit()
        self.refresh()

    def _lines(self, width: int) -> list[Strip]:
        lines = self._wrapped.get(width)
        if lines is None:
            lines = self._wrapped[width] = self._wrap(width)
        return lines

    def _wrap(self, width: int) -> list[Strip]:
        """The text's lines at `width`: those that fit straight from their spans (views/lines.py), the
        few longer ones through Textual's own wrapping, as a Static's (~0.3 ms a line; a sample stop
        has 70 lines)."""
        base, outer, styles, out = self.rich_style, self._text.style, {}, []
        for plain, spans in split_lines(self._text):
            segments = line_segments(plain, spans, outer, base, styles) if cell_len(plain) <= width else None
            if segments is not None:
                out.append(Strip(segments, cell_len(plain)))
                continue
            line = Text(plain, style=outer, spans=spans, end="")
            out += Visual.to_strips(self, visualize(self, line, markup=False), width, None, self.visual_style)
        return out

    def _fit(self) -> None:
        """The scrollable size: the text wrapped to the view's width, less the scrollbar's when it
        does not fit the height (as the container of Statics laid it out)."""
        width, height = shown_size(self)  # a view opened in this message is still hidden
        if not width:
            return
        # More lines than rows before any wrapping: the scrollbar is certain, wrap once, without it.
        if self._text.plain.count("\n") + 1 > height or len(self._lines(width)) > height:
            width = max(1, width - self.styles.scrollbar_size_vertical)
        self.virtual_size = Size(width, len(self._lines(width)))

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        lines = self._lines(width)
        index = y + self.scroll_offset.y
        if index >= len(lines):
            return Strip.blank(width, self.rich_style)
        return lines[index].adjust_cell_length(width, self.rich_style)

    def _summary(self, event, name: str) -> Text:
        """tensor_summary once per event and tensor: its statistics read the whole tensor (a
        prefill's [tokens, n_embd]), and scrubbing back and forth shows the same events again."""
        key = (id(event), name)
        hit = self._summaries.get(key)
        if hit is None or hit[0] is not event:  # the event is kept with it, so its id is not reused
            hit = self._summaries[key] = (event, tensor_summary(escape_controls(name), np.asarray(event.tensors[name])))
            while len(self._summaries) > SUMMARIES_KEPT:
                del self._summaries[next(iter(self._summaries))]
        return hit[1]

"""A line-API ScrollView for maps that change under a keypress: repaint the lines that changed, lay nothing out."""

from __future__ import annotations

from rich.style import Style
from textual.geometry import Region, Size
from textual.scroll_view import ScrollView
from textual.strip import Strip


class LineScrollView(ScrollView):
    """A line-API ScrollView that a change of data repaints line by line, with no layout.

    Textual's ScrollView lays the whole screen out whenever its `virtual_size` changes (a layout
    reactive), and repaints every line on `refresh()`: each line goes again through the line
    filters, the compositor's cuts and the terminal output, though after a step most lines are what
    they were (a decode step's key labels, the blocks of a cache that gained one token). Here:
    - `set_virtual_size` sets it quietly and updates the scrollbars, which ask for a layout only
      when one appears or goes (each `]` in attention was a layout, ~27 ms);
    - subclasses draw in `draw_line(y)`; the strips last handed to Textual are kept, and
      `refresh_changed()` marks dirty only the lines whose strips differ (drawn from the
      subclass's caches, so the paint that follows draws nothing twice);
    - a layout that leaves the widget's size alone sends the scrollbars nothing (Textual compares
      our virtual size with the visible area, which always differ, and repainted them a frame
      after every view switch).
    The attention Heatmap (views/attention.py) and the KV BlockGrid (views/kv_cache.py) use it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._painted: dict[int, Strip] = {}  # content line -> the strip last handed to Textual
        self._base: Style | None = None  # base_style
        self._scrollbars_for: tuple[Size, Size] | None = None  # (size, virtual size) the scrollbars were last set for

    def draw_line(self, y: int) -> Strip:
        raise NotImplementedError

    @property
    def base_style(self) -> Style:
        """`rich_style`, kept until the styles change: it walks every ancestor's CSS (~0.2 ms a read)."""
        if self._base is None:
            self._base = self.rich_style
        return self._base

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._base = None

    @property
    def line_width(self) -> int:
        """The width of the lines drawn: `scrollable_content_region.width`, which looks the widget's
        region up on the screen (~30 µs, for every line drawn), from the size the last layout gave."""
        return self.container_size.width - self.scrollbar_size_vertical

    def render_line(self, y: int) -> Strip:
        strip = self._painted[y] = self.draw_line(y)
        return strip

    def refresh_changed(self) -> None:
        """Repaint the lines that changed; all of them while hidden or never painted."""
        width, height = self.size
        if not (width and height and self._painted):
            self.refresh()
            return
        painted, changed = self._painted, []
        for y in range(height):
            old, new = painted.get(y), self.draw_line(y)
            if new is not old and new != old:
                changed.append(y)
        start = 0
        for i, y in enumerate(changed):  # one region per run of adjacent lines
            if i + 1 == len(changed) or changed[i + 1] != y + 1:
                self.refresh(Region(0, changed[start], width, y - changed[start] + 1))
                start = i + 1

    def set_virtual_size(self, size: Size) -> bool:
        """Set `virtual_size` without a layout (unless a scrollbar appears or goes); True if it changed."""
        if size == self.virtual_size:
            return False
        if not self.container_size:  # never laid out: the first layout places it
            self.virtual_size = size
            return True
        self.set_reactive(ScrollView.virtual_size, size)
        self._scroll_update(size)
        self._scrollbars_for = (self._size, size)
        return True

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        if (size, self.virtual_size) == self._scrollbars_for:
            return False  # the scrollbars are set for this size and virtual size: nothing to repaint
        if size != self._size:
            self._painted.clear()  # Textual paints every line again
        self._scrollbars_for = (size, self.virtual_size)
        return super()._size_updated(size, virtual_size, container_size, layout)

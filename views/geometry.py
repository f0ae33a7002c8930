"""A view's size while it is hidden, and a view first shown without a second layout.

The app opens a view by switching the ContentSwitcher to it and calling its `show()` in the same
message; the screen is laid out at the next frame. Until then Textual reports the view's `size` as
zero (a hidden widget has no region), though the layout will give it the size it had when last
shown. `shown_size` is that size, so `show()` can prepare what the frame will paint instead of
preparing it at size zero and again on the `Resize` the layout posts (a second frame).

When a widget's size changes, Textual sets its `virtual_size`, a reactive that asks for a layout of
the whole screen: a view shown for the first time (from size zero) was laid out and painted twice
(bench/ui.py: ~25 ms more on the first open of each view). A widget that cannot scroll has no use
for its virtual size, so `NoScrollLayout` records it without asking for the second layout.
"""

from __future__ import annotations

from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import ContentSwitcher


def shown_size(widget: Widget) -> Size:
    """The widget's content size, or while it is hidden, the one its last layout gave it; for a
    view never shown yet, the view switcher's (a view fills it)."""
    size = widget.size
    if size.width:
        return size
    outer = widget.outer_size
    if not outer.width and isinstance(widget.parent, ContentSwitcher):
        outer = widget.parent.size
    if not outer.width:
        return size
    width, height = widget.styles.gutter.totals
    return Size(max(0, outer.width - width), max(0, outer.height - height))


class NoScrollLayout:
    """Mixed into a widget whose overflow is hidden both ways (Textual's default for a Widget)."""

    def _size_updated(self, size: Size, virtual_size: Size, container_size: Size, layout: bool = True) -> bool:
        styles = self.styles
        scrolls = styles.overflow_x != "hidden" or styles.overflow_y != "hidden"
        return super()._size_updated(size, virtual_size, container_size, layout=layout and scrolls)

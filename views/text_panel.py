"""A Static whose new text lays the screen out again only when it changes the Static's height.

`Static.update` asks for a layout of the whole screen on every call, in case the new text needs
another height: a view's title and stats lines change on every step, so every step laid out the
screen once per Static (the kv view: three layouts a step, bench/ui.py). Their height rarely
changes; `TextPanel.set_text` measures it and, when it is the same, repaints only the panel.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from views.geometry import NoScrollLayout, shown_size


class TextPanel(NoScrollLayout, Static):
    _text: Text | None = None

    def set_text(self, text: Text) -> None:
        """Show `text`: nothing to do when it is what is shown, a repaint when its height at the
        panel's width is the height shown, else a layout."""
        if self._text is not None and text == self._text:
            return
        self._text = text
        size = shown_size(self)  # a view opened in this message is still hidden
        before = self.get_content_height(size, size, size.width)  # cached since the last paint
        self.update(text, layout=False)  # drops the cached height
        if self.get_content_height(size, size, size.width) != before:
            self.refresh(layout=True)

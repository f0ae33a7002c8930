"""A widget's style, looked up once per paint instead of once per line.

Textual's `rich_style` walks every ancestor's CSS to blend the backgrounds (~0.15-0.3 ms on a
2-core machine), and a line-API widget needs it for each line it draws: in the event view that
was a third of a step's paint (bench/ui.py). It cannot change while one paint is under way, so
`render_lines`, which Textual calls once per paint with all the lines it wants, looks it up once.
"""

from __future__ import annotations

from rich.style import Style
from textual.geometry import Region
from textual.strip import Strip


class PaintStyle:
    """Mixed in before a Textual widget class."""

    _paint_style: Style | None = None

    def render_lines(self, crop: Region) -> list[Strip]:
        self._paint_style = super().rich_style
        try:
            return self.render_styled_lines(crop)
        finally:
            self._paint_style = None

    def render_styled_lines(self, crop: Region) -> list[Strip]:
        """The paint, with the style looked up: a subclass that keeps more for one paint extends this."""
        return super().render_lines(crop)

    @property
    def rich_style(self) -> Style:
        return self._paint_style if self._paint_style is not None else super().rich_style

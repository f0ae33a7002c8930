"""TextLines: the views drawn through the line API show exactly the lines rich would make of their Text."""

from rich.segment import Segment
from rich.style import Style
from rich.text import Span, Text
from textual.app import App, ComposeResult

from views.lines import TextLines

# Spans that cross lines, overlap, touch and are empty: what the views' Text.join of lines makes, and worse.
TEXT = Text("title\n\nab cd ef\nsecond line here\nlast", style="italic", spans=[
    Span(0, 5, "bold"), Span(7, 9, "red"), Span(9, 10, "blue"), Span(8, 12, "underline"),
    Span(13, 20, "green"), Span(20, 20, "red"), Span(28, 35, "reverse"), Span(33, 37, "dim"),
])


class Shown(TextLines):
    def render(self) -> Text:
        return TEXT


class OneView(App):
    def compose(self) -> ComposeResult:
        yield Shown()


def reference(text: Text, width: int, base: Style) -> list[list[tuple[str, Style]]]:
    """Each line as rich renders it after `split`, padded to the width."""
    lines = []
    for line in text.split("\n", allow_blank=True):
        segments = [(s.text, base + s.style if s.style else base) for s in line.render(App().console) if s.text]
        pad = width - line.cell_len
        lines.append(segments + ([(" " * pad, base)] if pad > 0 else []))
    return lines


def merged(segments: list[tuple[str, Style]]) -> list[tuple[str, Style]]:
    """Neighbouring segments of one style joined: the same cells, however they were cut."""
    out: list[tuple[str, Style]] = []
    for text, style in segments:
        if out and out[-1][1] == style:
            out[-1] = (out[-1][0] + text, style)
        else:
            out.append((text, style))
    return out


async def test_every_line_has_the_text_and_styles_rich_gives_it():
    app = OneView()
    async with app.run_test(size=(30, 8)):
        view = app.query_one(Shown)
        width = view.size.width
        want = reference(TEXT, width, view.rich_style)
        for y, line in enumerate(want):
            got = [(s.text, s.style) for s in view.render_line(y) if isinstance(s, Segment)]
            assert merged(got) == merged(line), y
        assert view.render_line(len(want)).text == " " * width  # below the text: blank


async def test_a_refresh_draws_the_new_text():
    app = OneView()
    async with app.run_test(size=(30, 8)):
        view = app.query_one(Shown)
        assert view.render_line(0).text.startswith("title")
        global TEXT
        before, TEXT = TEXT, Text("changed")
        try:
            view.refresh()
            assert view.render_line(0).text.startswith("changed")
        finally:
            TEXT = before

"""Show text that came from a model or a trace file, and nothing else: never markup, never a control code.

Pieces, prompts, generated text and metadata are data. A piece may be `[bold red]x[/]`
(markup, if it ever reached a markup parser) or `\\x1b[31m` (a terminal escape, if it
ever reached the terminal). Every view builds `rich.text.Text` objects through `safe`,
which never parses markup, after `escape_controls` has made control characters visible.
"""

from __future__ import annotations

from rich.cells import cell_len, set_cell_size
from rich.style import StyleType
from rich.text import Text

# C0 controls (and DEL) have visible stand-ins in Unicode's Control Pictures block: ␀ … ␟, ␡.
_C0 = {c: chr(0x2400 + c) for c in range(0x20)}
_C0[0x7F] = "\u2421"  # ␡
# C1 controls, bidi overrides/isolates and line/paragraph separators reorder or break lines
# in a terminal: show them as escapes.
_ESCAPED = [*range(0x80, 0xA0), 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0xFEFF]
_TABLE: dict[int, str] = {**_C0, **{c: f"\\u{c:04x}" if c > 0xFF else f"\\x{c:02x}" for c in _ESCAPED}}
_TABLE_KEEP_NEWLINES = {**_TABLE, 0x0A: "\u23ce\n"}  # ⏎ then a real line break


def escape_controls(value: object, keep_newlines: bool = False) -> str:
    """`value` as a string whose control characters are visible: ESC → ␛, newline → ␊ (or ⏎ + a line break)."""
    return str(value).translate(_TABLE_KEEP_NEWLINES if keep_newlines else _TABLE)


def safe(value: object, style: StyleType = "", keep_newlines: bool = False) -> Text:
    """A `Text` showing `value` literally: markup is not parsed, control characters are made visible."""
    return Text(escape_controls(value, keep_newlines), style=style, no_wrap=False, end="")


NL = Text("\n", end="")  # a line break of our own layout; "\n" inside data is escaped


def assemble(*parts: Text | tuple[object, StyleType] | str) -> Text:
    """Join parts into one `Text`; plain strings and (value, style) pairs go through `safe`."""
    out = Text(end="")
    for part in parts:
        if isinstance(part, Text):
            out.append_text(part)
        elif isinstance(part, tuple):
            value, style = part
            out.append_text(safe(value, style))
        else:
            out.append_text(safe(part))
    return out


def fit(text: str, width: int) -> str:
    """Exactly `width` cells: cut with … or padded on the right (`text` is already escaped)."""
    text = truncate(text, width)
    return text + " " * (width - cell_len(text))


def truncate(text: str, width: int) -> str:
    """At most `width` terminal cells, ending in … when cut (`text` is already escaped)."""
    if cell_len(text) <= width:
        return text
    return set_cell_size(text, max(0, width - 1)).rstrip() + "…" if width > 0 else ""

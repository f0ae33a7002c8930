"""The colours the views draw data with (layout colours live in the .tcss files).

`RAMP` is a perceptual dark-to-bright ramp (inferno's anchors, interpolated), so a weight's
colour reads as its size on a dark terminal; level 0 is still distinguishable from the
masked cells (future keys a causal query cannot see), which are drawn in `MASKED`.
"""

from __future__ import annotations

from rich.color import Color

_ANCHORS = [
    (0x1B, 0x0C, 0x41),
    (0x4A, 0x0C, 0x6B),
    (0x78, 0x1C, 0x6D),
    (0xA5, 0x2C, 0x60),
    (0xCF, 0x44, 0x46),
    (0xED, 0x69, 0x25),
    (0xFB, 0x9B, 0x06),
    (0xF7, 0xD1, 0x3D),
    (0xFC, 0xFF, 0xA4),
]
LEVELS = 32


def _ramp(levels: int) -> list[Color]:
    out = []
    for i in range(levels):
        x = i / (levels - 1) * (len(_ANCHORS) - 1)
        lo = min(int(x), len(_ANCHORS) - 2)
        t = x - lo
        a, b = _ANCHORS[lo], _ANCHORS[lo + 1]
        out.append(Color.from_rgb(*(round(a[c] + (b[c] - a[c]) * t) for c in range(3))))
    return out


RAMP: list[Color] = _ramp(LEVELS)
MASKED = Color.from_rgb(0x12, 0x12, 0x16)

# Token chips and highlights.
PROMPT_BG = "#2b3a55"
GENERATED_BG = "#1f4d35"
SPECIAL = "bold #e08bd8"
SINK = "bold #f7d13d"
CHOSEN = "bold #7ee787"
DIM = "#8b949e"
ACCENT = "bold #79c0ff"
WARN = "#ffa657"

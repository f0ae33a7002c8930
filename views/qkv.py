"""The Q·K·V view: one head's query, key and value vectors, before and after RoPE, and RoPE's angles.

Reads the layer's `qkv` event (projections q [T, n_head, hd], k and v [T, n_kv, hd]) and its
`rope` event (rotated q and k, the positions, and `theta`, the rope base of that layer, which
differs between Gemma's local and global layers; the model's `rope_theta` otherwise).

Vectors are drawn one cell per dimension (or per bucket of dimensions when the head is wider
than the view) in a diverging palette: blue negative, red positive, scaled by the largest |x|
of the head, so q before and after RoPE can be compared cell by cell.

The angle grid shows what RoPE does: pair i of a token at position p is rotated by
p · theta^(-2i/d). One row per position, one column per pair, drawn as an arrow pointing at the
angle: the first pairs spin fast (the arrows look random), the last barely move (they all
point right), which is how RoPE encodes both near and far relative positions.

A model stretched with YaRN turns its pairs at other rates: the trace info's
`model.rope_scaling.inv_freq` holds the angle per position of each pair as the engine computed
it (the fast pairs kept, the slow ones divided by the stretch factor, a ramp between), and the
grid draws those. `model.rope_dim` says how many of a head's values RoPE turns (deepseek2: the
last rope_dim of each query head and of the cached row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from rich.style import Style
from rich.text import Text

from traces.base import Trace
from views import colors
from views.format import step_kind
from views.pieces import piece_format
from views.lines import TextLines, cells_text
from views.safe import NL, assemble, fit
from views.selection import Selection

ARROWS = "→↗↑↖←↙↓↘"
LABEL_WIDTH = 8


@dataclass(frozen=True)
class HeadVectors:
    step: int
    layer: int
    head: int
    n_head: int
    kv_head: int
    rows: list[tuple[str, np.ndarray]]  # (name, vector [hd]) for the last token
    positions: list[int]
    theta: float
    rope_dim: int
    token_ids: list[int]
    inv_freq: list[float]  # radians per position, per pair: the angles' rates
    scaling: dict  # the trace info's rope_scaling (YaRN), {} for plain RoPE


def read_head(trace: Trace, step: int, layer: int, head: int) -> HeadVectors | None:
    qkv = trace.get(step, "qkv", layer)
    rope = trace.get(step, "rope", layer)
    if qkv is None and rope is None:
        return None
    model = trace.info.get("model", {})
    n_head = int(model.get("n_head") or 1)
    n_kv = int(model.get("n_head_kv") or n_head)
    source = qkv if qkv is not None and "q" in qkv.tensors else rope
    q = source.tensors.get("q") if source is not None else None
    if q is not None and q.ndim == 3:
        n_head = q.shape[1]
    head = head % max(1, n_head)
    kv_head = head // max(1, n_head // max(1, n_kv))
    rows: list[tuple[str, np.ndarray]] = []

    def add(name: str, event, key: str, index: int) -> None:
        t = event.tensors.get(key) if event is not None else None
        if t is not None and t.ndim == 3 and index < t.shape[1]:
            rows.append((name, np.asarray(t[-1, index], dtype=np.float32)))

    add("q", qkv, "q", head)
    add("q·rope", rope, "q", head)
    add("k", qkv, "k", kv_head)
    add("k·rope", rope, "k", kv_head)
    add("v", qkv, "v", kv_head)
    positions = [int(p) for p in (rope.scalars.get("positions", []) if rope is not None else [])]
    theta = float(rope.scalars.get("theta") or model.get("rope_theta") or 10000.0) if rope is not None else 0.0
    head_dim = int(model.get("head_dim") or (rows[0][1].size if rows else 0))
    rope_dim = int(model.get("rope_dim") or head_dim)
    scaling = model.get("rope_scaling") or {}
    inv_freq = [float(f) for f in scaling.get("inv_freq") or ()]
    if len(inv_freq) != rope_dim // 2:  # plain RoPE (or a trace from before inv_freq was written)
        inv_freq = [theta ** (-2.0 * i / rope_dim) for i in range(rope_dim // 2)] if theta > 0 else []
        scaling = {}
    context = trace.context_ids(step)
    ids = context[len(context) - len(positions):] if positions else []
    return HeadVectors(step, layer, head, n_head, kv_head, rows, positions, theta, rope_dim, list(ids),
                       inv_freq, scaling)


def rope_legend(h: HeadVectors) -> str:
    """How the angles are made: plain RoPE's formula, or YaRN's split of the pairs."""
    n_pairs = len(h.inv_freq)
    if not h.scaling:
        return f"  θ_i = pos·{h.theta:g}^(-2i/{h.rope_dim}), pairs 0→{n_pairs - 1}"
    ramp = [float(r) for r in h.scaling.get("ramp") or ()]
    factor = float(h.scaling.get("factor", 1))
    kept = next((i for i, r in enumerate(ramp) if r < 1), n_pairs)  # pairs 0..kept-1 turn as trained
    slowed = next((i for i, r in enumerate(ramp) if r <= 0), n_pairs)  # pairs slowed..: ÷ factor
    split = ([f"0→{kept - 1} kept"] if kept else []) + ([f"{slowed}→{n_pairs - 1} ÷{factor:g}"] if slowed < n_pairs else [])
    return f"  YaRN ×{factor:g}: pairs " + ", ".join(split)


GREY = (0x30, 0x30, 0x38)
RED, BLUE = (0xF0, 0x60, 0x50), (0x50, 0x90, 0xF0)
_STYLES: dict[tuple[int, int, int], Style] = {}  # a Style parses its colour: make each one once (≤ 2 × 256)


def _style(r: int, g: int, b: int) -> Style:
    style = _STYLES.get((r, g, b))
    if style is None:
        style = _STYLES[(r, g, b)] = Style(color=f"#{r:02x}{g:02x}{b:02x}")
    return style


def diverging(x: float) -> Style:
    """x in [-1, 1] to a blue-grey-red colour."""
    x = max(-1.0, min(1.0, x))
    t = abs(x) ** 0.5  # small values stay visible
    end = RED if x > 0 else BLUE
    return _style(*(round(GREY[c] + (end[c] - GREY[c]) * t) for c in range(3)))


def diverging_row(x: np.ndarray) -> list[Style]:
    """`diverging` of each value, at once: the same colours, a q row is up to ~100 cells a keypress."""
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    t = np.abs(x) ** 0.5
    end = np.where((x > 0)[:, None], RED, BLUE)
    rgb = np.round(np.asarray(GREY) + (end - np.asarray(GREY)) * t[:, None]).astype(int)  # half to even, as round()
    return [_style(int(r), int(g), int(b)) for r, g, b in rgb]


def vector_line(label: str, v: np.ndarray, scale: float, width: int) -> Text:
    cells = max(4, width - LABEL_WIDTH - 9)
    size = max(1, -(-v.size // cells))
    pad = (-v.size) % size
    buckets = np.pad(v, (0, pad)).reshape(-1, size)
    # a bucket shows its value of largest magnitude, sign kept
    picked = buckets[np.arange(buckets.shape[0]), np.abs(buckets).argmax(axis=1)]
    picked = picked.astype(np.float64)  # divided in double precision, as float(x) / scale was
    styles = diverging_row(picked / scale if scale else np.zeros_like(picked))
    return cells_text(fit(label, LABEL_WIDTH), [("█", style) for style in styles],
                      tail=assemble((f" ‖{float(np.linalg.norm(v)):6.2f}", colors.DIM)))


def angle_arrow(angle: float) -> str:
    return ARROWS[int(round((angle % (2 * math.pi)) / (2 * math.pi) * 8)) % 8]


class QKVView(TextLines):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._head: HeadVectors | None = None
        self._shown: tuple | None = None

    def show(self, trace: Trace, selection: Selection) -> None:
        ready = selection.step in trace.steps
        qkv = trace.get(selection.step, "qkv", selection.layer) if ready else None
        rope = trace.get(selection.step, "rope", selection.layer) if ready else None
        key = (id(trace), selection.step, selection.layer, selection.head, id(qkv), id(rope))
        if key == self._shown:
            return
        self._shown = key
        self._trace = trace
        self._head = read_head(trace, selection.step, selection.layer, selection.head) if ready else None
        self.refresh()

    def render(self) -> Text | list[Text]:
        h, trace = self._head, self._trace
        title = assemble(("q·k·v", colors.ACCENT))
        if h is None or trace is None:
            return assemble(title, NL, NL, ("no qkv or rope event for this layer at this step", colors.WARN))
        title.append_text(assemble(f" · step {h.step} ({step_kind(h.step)}) · layer {h.layer} · head {h.head}/{h.n_head}",
                                   (f" (kv {h.kv_head})", colors.DIM)))
        width, height = max(30, self.size.width), max(10, self.size.height)
        lines = [title, assemble(("last token · blue < 0 < red · ‖x‖ at the right", colors.DIM)), Text("")]
        scale = max((float(np.abs(v).max()) for _, v in h.rows), default=1.0) or 1.0
        for name, v in h.rows:
            lines.append(vector_line(name, v, scale, width))
        if not h.rows:
            lines.append(assemble(("no q/k/v tensors were captured", colors.DIM)))

        if h.positions and h.inv_freq:
            n_pairs = len(h.inv_freq)
            lines += [Text(""), assemble(("rope angles", "bold"), (rope_legend(h), colors.DIM))]
            cells = max(4, width - LABEL_WIDTH - 1)
            stride = max(1, -(-n_pairs // cells))
            pairs = list(range(0, n_pairs, stride))
            fmt = piece_format(trace)
            room = max(1, height - len(lines) - (2 if stride > 1 else 1))
            shown = list(zip(h.positions, h.token_ids or [None] * len(h.positions)))[-room:]
            inv_freq = [h.inv_freq[i] for i in pairs]
            for pos, tid in shown:
                label = f"{pos:>3} " + (fmt.show(tid) if tid is not None else "")
                line = Text(fit(label, LABEL_WIDTH) + " ", end="")
                line.append("".join(angle_arrow(pos * f) for f in inv_freq), colors.ACCENT)
                lines.append(line)
            if stride > 1:
                lines.append(assemble((f"every {stride}th pair shown", colors.DIM)))
        return lines

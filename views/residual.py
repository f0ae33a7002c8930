"""The residual-stream view: how big the hidden state is, per layer, per token and per dimension.

Reads the `embed` event (the stream before layer 0) and each layer's `residual` event (the
stream after it): tensor `out` [tokens, n_embd], or only the scalar `norm` of the last token
when the capture policy kept no tensors. Three panels for the selected step:

* the last token's residual norm across depth (embeddings, then layer 0..L-1), one column each;
* each token's norm at the selected layer;
* a compact map of the selected layer's dimensions: the dimensions are cut into as many
  buckets as there are cells, and each cell shows the largest |x| in its bucket, so the few
  "massive activation" dimensions that real models grow stand out at any width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.style import Style
from rich.text import Text

from traces.base import Trace
from views import colors
from views.charts import column_chart
from views.format import bar, step_kind
from views.pieces import piece_format
from views.lines import TextLines, cells_text
from views.safe import NL, assemble, fit
from views.selection import Selection

CHART_ROWS = 4
RAMP_STYLES = [Style(color=c) for c in colors.RAMP]
PIECE_WIDTH = 10


@dataclass(frozen=True)
class Stream:
    step: int
    layer: int
    depth_norms: list[float]  # embeddings, then one per layer (last token); 0 where not captured
    has_embed: bool
    out: np.ndarray | None  # [tokens, n_embd] at the selected layer
    token_ids: list[int]  # the tokens of `out`'s rows


def _last_norm(event) -> float:
    if event is None:
        return 0.0
    out = event.tensors.get("out")
    if out is not None and out.size:  # the last row only: a prefill's [tokens, n_embd] is not converted whole
        return float(np.linalg.norm(np.asarray(out).reshape(-1, out.shape[-1])[-1].astype(np.float64)))
    return float(event.scalars.get("norm", 0.0) or 0.0)


def read_stream(trace: Trace, step: int, layer: int) -> Stream | None:
    if step not in trace.steps:
        return None
    n_layer = max(trace.n_layer, 1)
    embed = trace.get(step, "embed")
    norms = [_last_norm(embed)] + [_last_norm(trace.get(step, "residual", il)) for il in range(n_layer)]
    event = trace.get(step, "residual", layer)
    out = event.tensors.get("out") if event is not None else None
    if out is not None:
        out = np.asarray(out, dtype=np.float32).reshape(-1, out.shape[-1])
    # The rows are this step's input tokens: the last ones of the context it ends with.
    context = trace.context_ids(step)
    n_rows = out.shape[0] if out is not None else 0
    ids = context[len(context) - n_rows:] if n_rows else []
    return Stream(step, layer, norms, embed is not None, out, list(ids))


def dim_map(out: np.ndarray, width: int) -> tuple[np.ndarray, int]:
    """max |x| per bucket of consecutive dimensions: [tokens, buckets], and the bucket size."""
    n_embd = out.shape[1]
    size = max(1, -(-n_embd // max(1, width)))
    pad = (-n_embd) % size
    a = np.abs(out)
    if pad:
        a = np.pad(a, ((0, 0), (0, pad)))
    return a.reshape(a.shape[0], -1, size).max(axis=2), size


class ResidualView(TextLines):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._stream: Stream | None = None
        self._shown: tuple | None = None

    def show(self, trace: Trace, selection: Selection) -> None:
        event = trace.get(selection.step, "residual", selection.layer) if selection.step in trace.steps else None
        key = (id(trace), selection.step, selection.layer, id(event), len(trace.steps))
        if key == self._shown:
            return
        self._shown = key
        self._trace = trace
        self._stream = read_stream(trace, selection.step, selection.layer)
        self.refresh()

    def render(self) -> Text | list[Text]:
        s, trace = self._stream, self._trace
        title = assemble(("residual stream", colors.ACCENT))
        if s is None or trace is None:
            return assemble(title, NL, NL, ("no events at this step yet", colors.WARN))
        title.append_text(assemble(f" · step {s.step} ({step_kind(s.step)}) · layer {s.layer}/{max(trace.n_layer, 1)}"))
        width, height = max(30, self.size.width), max(12, self.size.height)
        lines = [title, Text("")]

        lines.append(assemble(("norm by depth", "bold"), ("  last token · first column: embeddings", colors.DIM)))
        if any(s.depth_norms):
            lines += column_chart(s.depth_norms, width, CHART_ROWS, {s.layer + 1}, color=colors.CHOSEN)
            lines.append(assemble(("in ", colors.DIM), f"{s.depth_norms[0]:.2f}", (" → out ", colors.DIM),
                                  f"{s.depth_norms[-1]:.2f}", (f" · layer {s.layer} ", colors.DIM),
                                  (f"{s.depth_norms[s.layer + 1]:.2f}", colors.WARN)))
        else:
            lines.append(assemble(("no residual captured at this step", colors.DIM)))

        if s.out is None:
            lines += [Text(""), assemble(("this layer's residual tensor was not captured", colors.DIM))]
            return lines

        fmt = piece_format(trace)
        room = max(2, (height - len(lines) - 4) // 2)
        rows = s.out[-room:]
        ids = s.token_ids[-room:] if len(s.token_ids) >= len(rows) else [None] * len(rows)
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        top = float(norms.max()) or 1.0
        lines += [Text(""), assemble(("norm by token", "bold"), (f"  layer {s.layer}", colors.DIM))]
        bar_width = max(4, width - PIECE_WIDTH - 12)
        for tid, norm in zip(ids, norms):
            label = fmt.show(tid) if tid is not None else "·"
            lines.append(assemble((fit(label, PIECE_WIDTH), ""), (f" {norm:8.2f} ", colors.DIM),
                                  (bar(norm / top, bar_width), colors.ACCENT)))

        cells = max(8, width - PIECE_WIDTH - 1)
        buckets, size = dim_map(rows, cells)
        peak = float(buckets.max()) or 1.0
        hottest = int(np.argmax(np.abs(rows).max(axis=0)))
        lines += [Text(""), assemble(("dimensions", "bold"),
                                     (f"  max |x| per {size} · top dim {hottest}: {float(np.abs(rows[:, hottest]).max()):.1f}",
                                      colors.DIM))]
        levels = np.minimum(colors.LEVELS - 1, (np.sqrt(buckets / peak) * (colors.LEVELS - 1) + 0.5).astype(int))
        for tid, row in zip(ids, levels.tolist()):
            label = fmt.show(tid) if tid is not None else "·"
            lines.append(cells_text(fit(label, PIECE_WIDTH) + " ", [("█", RAMP_STYLES[level]) for level in row]))
        return lines

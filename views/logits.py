"""The logits view: the top-k next tokens at the selected step, with probability bars.

Reads the step's `logits` event (scalars `top_ids`, `top_probs`, `entropy`; tensor
`logits` [n_vocab] for the raw values) and its `sample` event (the token drawn), and
marks the drawn token. A drawn token outside the top-k gets its own line.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text

from traces.base import Trace
from views import colors
from views.format import bar
from views.lines import TextLines
from views.pieces import piece_format
from views.safe import NL, assemble, fit
from views.selection import Selection

PIECE_WIDTH = 14
DRAWN = " ◀ drawn"


@dataclass(frozen=True)
class TopK:
    """What the view draws for one step, computed once when the step is shown."""

    ids: list[int]
    probs: list[float]
    logits: list[float | None]  # the raw logit of each id, when the trace kept the tensor
    entropy: float | None
    chosen: int | None
    chosen_prob: float | None  # when the drawn token is outside the top-k


def top_k(trace: Trace, step: int) -> TopK | None:
    event = trace.get(step, "logits")
    if event is None:
        return None
    ids = [int(i) for i in event.scalars.get("top_ids", [])]
    probs = [float(p) for p in event.scalars.get("top_probs", [])]
    entropy = event.scalars.get("entropy")
    raw = event.tensors.get("logits")
    p_all = _softmax(raw) if raw is not None and (not ids or entropy is None) else None
    if not ids and p_all is not None:  # a trace without the scalars: derive them
        ids = [int(i) for i in np.argsort(-p_all)[:10]]
        probs = [float(p_all[i]) for i in ids]
    if entropy is None and p_all is not None:
        nz = p_all[p_all > 0]
        entropy = float(-(nz * np.log(nz)).sum())
    sample = trace.get(step, "sample")
    chosen = int(sample.scalars["token"]) if sample is not None and "token" in sample.scalars else None
    chosen_prob = None
    if chosen is not None and chosen not in ids and raw is not None and 0 <= chosen < raw.size:
        chosen_prob = float((p_all if p_all is not None else _softmax(raw))[chosen])
    logits = [float(raw[i]) if raw is not None and 0 <= i < raw.size else None for i in ids]
    if chosen_prob is not None:
        logits.append(float(raw[chosen]))
    return TopK(ids, probs, logits, None if entropy is None else float(entropy), chosen, chosen_prob)


class LogitsView(TextLines):
    """Top-k candidates of one step; redrawn to the widget's width."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._top: TopK | None = None
        self._shown: tuple | None = None
        self._lens: list[tuple[int, int, float]] = []

    def show(self, trace: Trace, selection: Selection) -> None:
        logits = trace.get(selection.step, "logits")
        sample = trace.get(selection.step, "sample")
        key = (id(trace), selection.step, id(logits), id(sample))
        if key == self._shown:
            return
        self._shown = key
        self._trace, self._top = trace, top_k(trace, selection.step)
        self._lens = lens(trace, selection.step)
        self.refresh()

    def render(self) -> Text | list[Text]:
        trace, top = self._trace, self._top
        if trace is None:
            return Text("")
        fmt = piece_format(trace)
        title = assemble(("logits", colors.ACCENT))
        if top is None:
            title.append_text(assemble(NL, NL, ("no logits event at this step", colors.WARN),
                                       (" (not captured, or the run has not got there yet)", colors.DIM)))
            return title
        if top.entropy is not None:
            title.append_text(assemble(" · entropy ", (f"{top.entropy:.2f}", "bold"), " nats"))
        if top.chosen is not None:
            title.append_text(assemble(" · drew ", (fmt.show(top.chosen), colors.CHOSEN)))
        sampler = trace.info.get("sampler")
        if isinstance(sampler, dict) and sampler.get("kind"):
            title.append_text(assemble((f" · sampler {sampler['kind']}", colors.DIM)))

        lines = [title, Text("")]
        width = max(20, self.size.width)
        show_logit = any(v is not None for v in top.logits) and width >= 66
        fixed = 3 + 8 + PIECE_WIDTH + 11 + (10 if show_logit else 0) + len(DRAWN)
        bar_width = max(4, width - fixed)
        top_p = max(top.probs) if top.probs else 1.0
        lines.append(assemble((f"{'#':>2} {'id':>7} {'piece':<{PIECE_WIDTH}}  {'p':>7}  "
                               + (f"{'logit':>8}  " if show_logit else ""), colors.DIM)))
        rows = list(zip(top.ids, top.probs))
        if top.chosen_prob is not None:
            rows.append((top.chosen, top.chosen_prob))
        for rank, ((tid, p), logit) in enumerate(zip(rows, top.logits), 1):
            is_chosen = tid == top.chosen
            piece_style = colors.SPECIAL if fmt.is_special(tid) else ("bold" if is_chosen else "")
            logit_text = ""
            if show_logit:
                logit_text = (f"{logit:8.3f}" if logit is not None else " " * 8) + "  "
            line = assemble(
                (f"{rank if rank <= len(top.ids) else '·':>2} ", colors.DIM),
                (f"{tid:>7} ", colors.DIM),
                (fit(fmt.show(tid), PIECE_WIDTH), piece_style),
                (f"  {p:7.2%}  ", "bold" if is_chosen else ""),
                (logit_text, colors.DIM),
                (bar(p / top_p if top_p > 0 else 0.0, bar_width), colors.CHOSEN if is_chosen else colors.ACCENT),
            )
            if is_chosen:
                line.append_text(assemble((DRAWN, colors.CHOSEN)))
            lines.append(line)
        if not rows:
            lines.append(assemble(("this logits event carries no top-k and no logits tensor", colors.WARN)))
        if self._lens:
            lines += self._lens_lines(fmt, width, max(3, self.size.height - len(lines) - 2))
        return lines

    def _lens_lines(self, fmt, width: int, room: int) -> list[Text]:
        """One row per layer (evenly thinned to fit, the last always kept): its top-1 and p."""
        layers = self._lens
        if len(layers) > room:
            keep = {round(i * (len(layers) - 1) / (room - 1)) for i in range(room)}
            layers = [row for i, row in enumerate(layers) if i in keep]
        out = [Text(""), assemble(("logit lens", "bold"), ("  layer → final norm → LM head",
                                                              colors.DIM))]
        bar_width = max(4, width - 6 - PIECE_WIDTH - 9)
        for layer, tid, p in layers:
            chosen = self._top is not None and tid == self._top.chosen
            out.append(assemble((f"L{layer:<3} ", colors.DIM), (fit(fmt.show(tid), PIECE_WIDTH), "bold" if chosen else ""),
                                (f" {p:6.1%}  ", colors.DIM), (bar(p, bar_width), colors.CHOSEN if chosen else colors.ACCENT)))
        return out


def lens(trace: Trace, step: int) -> list[tuple[int, int, float]]:
    """(layer, top-1 id, its p) for every layer the logit lens was captured at this step."""
    out = []
    for event in trace.find(step, "logits"):
        if event.part == "lens" and event.layer is not None and event.scalars.get("top_ids"):
            out.append((event.layer, int(event.scalars["top_ids"][0]), float(event.scalars["top_probs"][0])))
    return sorted(out)


def _softmax(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64).ravel()
    x = np.exp(x - x.max())
    return x / x.sum()

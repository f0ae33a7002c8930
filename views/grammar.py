"""The grammar view: what the grammar allowed at each step, and what was drawn from it.

Reads the step's `grammar` event (engine/grammar.py): tensor `mask` (np.packbits over the
vocabulary), scalars `allowed`, `n_vocab`, `source`, `kind`, `accepting` (the text so far is a
complete sentence, so end-of-generation is allowed) and `complete` (nothing but EOS may
follow). The allowed pieces are ranked by the step's logits when the `logits` event kept its
tensor (their probability is the model's, renormalized over what the grammar allows: what the
sampler's first stage sees); otherwise they are listed in id order. The drawn token comes from
the step's `sample` events. Below, one line per step: the allowed count, the draw, the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from rich.text import Text
from textual.widget import Widget

from traces.base import Trace
from views import colors
from views.format import bar
from views.geometry import NoScrollLayout
from views.pieces import piece_format
from views.safe import NL, assemble, truncate
from views.selection import Selection

SHOWN = 24  # allowed pieces listed for the selected step
BAR_WIDTH = 12


@dataclass(frozen=True)
class GrammarStep:
    """One step's grammar, as the view draws it."""

    step: int
    allowed: int
    n_vocab: int
    accepting: bool
    complete: bool
    drawn: int | None
    ids: list[int]  # a sample of the allowed tokens: most likely first when ranked
    probs: list[float] | None  # their probability among the allowed, when the logits were captured


def drawn_token(trace: Trace, step: int) -> int | None:
    dist = trace.get(step, "sample", part="dist")
    if dist is not None and "drawn" in dist.scalars:
        return int(dist.scalars["drawn"])
    plain = trace.get(step, "sample")
    return int(plain.scalars["token"]) if plain is not None and "token" in plain.scalars else None


def read_step(trace: Trace, step: int, shown: int = SHOWN) -> GrammarStep | None:
    event = trace.get(step, "grammar")
    if event is None:
        return None
    s = event.scalars
    n_vocab = int(s.get("n_vocab", 0))
    ids: list[int] = []
    probs = None
    if "mask" in event.tensors:
        mask = np.unpackbits(np.asarray(event.tensors["mask"], dtype=np.uint8))[:n_vocab].astype(bool)
        allowed = np.flatnonzero(mask)
        logits_event = trace.get(step, "logits")
        if logits_event is not None and "logits" in logits_event.tensors and len(allowed):
            x = np.asarray(logits_event.tensors["logits"], dtype=np.float64)[allowed]
            p = np.exp(x - x.max())
            p /= p.sum()
            order = np.argsort(-p, kind="stable")[:shown]
            ids, probs = allowed[order].tolist(), p[order].tolist()
        else:
            ids = allowed[:shown].tolist()
    return GrammarStep(step, int(s.get("allowed", 0)), n_vocab, bool(s.get("accepting")), bool(s.get("complete")),
                       drawn_token(trace, step), ids, probs)


def state_text(g: GrammarStep) -> tuple[str, str]:
    if g.complete:
        return "complete: only end-of-generation", colors.CHOSEN
    if g.accepting:
        return "may end here", colors.ACCENT
    return "must go on", colors.DIM


class GrammarView(NoScrollLayout, Widget):
    """The grammar's mask at one step, and the run's steps under it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._step = 0
        self._shown: tuple | None = None

    def show(self, trace: Trace, selection: Selection) -> None:
        key = (id(trace), selection.step, len(trace.steps))
        if key == self._shown:
            return
        self._shown = key
        self._trace, self._step = trace, selection.step
        self.refresh()

    def render(self) -> Text:
        trace = self._trace
        if trace is None:
            return Text("")
        width = max(30, self.size.width)
        fmt = piece_format(trace)
        grammar = trace.info.get("grammar") or {}
        title = assemble(("grammar", colors.ACCENT), f" · step {self._step}")
        if grammar:
            title.append_text(assemble(" · ", (str(grammar.get("source", "")), colors.CHOSEN),
                                       (f" ({grammar.get('kind', '')})", colors.DIM)))
        g = read_step(trace, self._step)
        if g is None:
            title.append_text(assemble(NL, NL, ("no grammar event at this step", colors.WARN),
                                       (" (a run without --grammar / --json-schema, or not captured)", colors.DIM)))
            return title
        lines = [title, Text("")]
        share = g.allowed / max(g.n_vocab, 1)
        lines.append(assemble("allowed ", (f"{g.allowed:,}", colors.ACCENT), f" of {g.n_vocab:,} tokens ",
                              (f"({share:.3%}) ", colors.DIM), (bar(np.log1p(g.allowed) / np.log1p(max(g.n_vocab, 1)),
                                                                   BAR_WIDTH), colors.ACCENT)))
        state, style = state_text(g)
        lines.append(assemble("state   ", (state, style)))
        if g.drawn is not None:
            lines.append(assemble("drew    ", (fmt.show(g.drawn), colors.CHOSEN), (f"  id {g.drawn}", colors.DIM)))
        lines.append(Text(""))
        how = "most likely first (the model's p among the allowed)" if g.probs is not None \
            else "in id order (this step's logits were not captured)"
        lines.append(assemble((truncate(f"allowed pieces, {how}", width), colors.DIM)))
        row = Text("")
        for i, token in enumerate(g.ids):
            cell = assemble((fmt.show(token), colors.CHOSEN if token == g.drawn else ""))
            if g.probs is not None:
                cell.append(f" {g.probs[i]:.1%}", colors.DIM)
            cell.append("   ")
            if row.cell_len + cell.cell_len > width and row.cell_len:
                lines.append(row)
                row = Text("")
            row.append_text(cell)
        if g.allowed > len(g.ids):
            row.append(f"… {g.allowed - len(g.ids):,} more", colors.DIM)
        lines.append(row)
        lines.append(Text(""))
        lines.extend(self._steps(trace, fmt, width))
        return Text("\n", end="").join(lines)

    def _steps(self, trace: Trace, fmt, width: int) -> list[Text]:
        """One line per step around the selected one: allowed count, the draw, the state."""
        lines = [assemble((truncate(f"{'step':>5} {'allowed':>9}  {'drew':<16} state", width), colors.DIM))]
        steps = [s for s in trace.steps if trace.get(s, "grammar") is not None]
        room = max(3, self.size.height - 14)
        at = steps.index(self._step) if self._step in steps else 0
        start = max(0, min(at - room // 2, len(steps) - room))
        for s in steps[start:start + room]:
            g = read_step(trace, s, shown=0)
            state, style = state_text(g)
            drew = fmt.show(g.drawn) if g.drawn is not None else "?"
            line = assemble((f"{'▶' if s == self._step else ' '}{s:>4} ", colors.ACCENT if s == self._step else ""),
                            f"{g.allowed:>9,}  ", (truncate(drew, 16).ljust(16), colors.CHOSEN), " ", (state, style))
            line.truncate(width)
            lines.append(line)
        return lines

"""The sampling view: the sampler's funnel at the selected step, stage by stage, and the draw.

Reads the step's `sample` events, one per stage (`part` = penalties, top_k, typical, top_p,
min_p, temp, dist): tensors `ids`, `probs` (softmax over the stage's survivors), scalars `n`
(survivors), `kept_mass` (their share of the model's own distribution), `active` and the
stage's setting; `dist` adds `drawn`, `p`, `u`. The run's settings come from
`info["sampler"]`. Each stage is one row: how many tokens survive it (a bar on a log scale,
so 262 144 → 40 → 1 reads as a funnel), the mass they keep, and the most likely survivors
with their probabilities; the drawn token is marked wherever it appears.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.text import Text

from traces.base import Trace
from views import colors
from views.format import bar
from views.lines import TextLines
from views.pieces import piece_format
from views.safe import NL, assemble, fit, truncate
from views.selection import Selection

STAGE_WIDTH = 10
SETTING_WIDTH = 9
FUNNEL_WIDTH = 8
PIECE_WIDTH = 8
CELL_WIDTH = PIECE_WIDTH + 1 + 3 + 1 + 4 + 1  # piece, bar, " 31%", gap


@dataclass(frozen=True)
class Stage:
    name: str
    setting: str  # "k 40", "p 0.95", "off"
    active: bool
    n: int
    kept_mass: float | None
    ids: list[int]
    probs: list[float]


@dataclass(frozen=True)
class Funnel:
    """What the view draws for one step, read once when the step is shown."""

    stages: list[Stage]
    n_vocab: int
    drawn: int | None
    p: float | None  # the drawn token's probability among the last survivors
    u: float | None  # the uniform number drawn


def _setting(name: str, s: dict) -> str:
    if not s.get("active", True):
        return "off"
    if name == "penalties":
        return f"×{s.get('repeat_penalty', 1):g}/{s.get('repeat_last_n', 0)}"
    if name == "top_k":
        return f"k {s.get('k')}"
    if name in ("typical", "top_p", "min_p"):
        return f"p {s.get('p'):g}"
    if name == "temp":
        temp = s.get("temp", 0)
        return "greedy" if temp <= 0 else f"t {temp:g}"
    return ""


def funnel(trace: Trace, step: int) -> Funnel | None:
    stages, drawn, p, u = [], None, None, None
    for event in trace.find(step, "sample"):
        if not event.part:
            drawn = int(event.scalars["token"]) if "token" in event.scalars else drawn
            continue
        s = event.scalars
        ids = event.tensors.get("ids")
        probs = event.tensors.get("probs")
        stages.append(Stage(
            event.part, _setting(event.part, s), bool(s.get("active", True)), int(s.get("n", 0)),
            s.get("kept_mass"), [] if ids is None else [int(i) for i in ids],
            [] if probs is None else [float(x) for x in probs]))
        if event.part == "dist":
            drawn = int(s["drawn"]) if "drawn" in s else drawn
            p, u = s.get("p"), s.get("u")
    if not stages and drawn is None:
        return None
    n_vocab = int(trace.info.get("model", {}).get("n_vocab") or len(trace.pieces) or 1)
    return Funnel(stages, n_vocab, drawn, p, u)


def describe_settings(sampler: dict) -> str:
    """`temp 0.8 · top-k 40 · top-p 0.95 · min-p 0.05 · seed 42`: the settings that do something."""
    if not sampler:
        return ""
    if sampler.get("temp", 0) <= 0:
        parts = ["greedy"]
    else:
        parts = [f"temp {sampler['temp']:g}"]
        if sampler.get("top_k", 0) > 0:
            parts.append(f"top-k {sampler['top_k']}")
        for key, label, off in (("typical_p", "typical", 1.0), ("top_p", "top-p", 1.0), ("min_p", "min-p", 0.0)):
            if key in sampler and sampler[key] != off:
                parts.append(f"{label} {sampler[key]:g}")
    if sampler.get("repeat_penalty", 1.0) != 1.0:
        parts.append(f"repeat ×{sampler['repeat_penalty']:g} over {sampler.get('repeat_last_n')}")
    for key, label in (("presence_penalty", "presence"), ("frequency_penalty", "frequency")):
        if sampler.get(key):
            parts.append(f"{label} {sampler[key]:g}")
    if sampler.get("temp", 0) > 0 and "seed" in sampler:
        parts.append(f"seed {sampler['seed']}")
    return " · ".join(parts)


class SamplingView(TextLines):
    """The sampler's stages at one step; redrawn to the widget's width."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._funnel: Funnel | None = None
        self._step = 0
        self._shown: tuple | None = None

    def show(self, trace: Trace, selection: Selection) -> None:
        key = (id(trace), selection.step, len(trace.find(selection.step, "sample")))
        if key == self._shown:
            return
        self._shown = key
        self._trace, self._step, self._funnel = trace, selection.step, funnel(trace, selection.step)
        self.refresh()

    def render(self) -> Text | list[Text]:
        trace, f = self._trace, self._funnel
        if trace is None:
            return Text("")
        fmt = piece_format(trace)
        title = assemble(("sampling", colors.ACCENT), f" · step {self._step}")
        if f is None:
            title.append_text(assemble(NL, NL, ("no sample event at this step", colors.WARN),
                                       (" (not captured, or the run has not got there yet)", colors.DIM)))
            return title
        if f.drawn is not None:
            title.append_text(assemble(" · drew ", (fmt.show(f.drawn), colors.CHOSEN)))
        lines = [title]
        settings = describe_settings(trace.info.get("sampler") or {})
        if settings:
            lines.append(assemble((settings, colors.DIM)))
        lines.append(Text(""))
        if not f.stages:
            lines.append(assemble(("this trace has the drawn token only, not the sampler's stages", colors.WARN)))
            return lines

        width = max(30, self.size.width)
        wide = width >= STAGE_WIDTH + SETTING_WIDTH + 9 + FUNNEL_WIDTH + 9 + CELL_WIDTH  # else: no setting, no bar
        fixed = STAGE_WIDTH + 9 + 9 + ((SETTING_WIDTH + FUNNEL_WIDTH) if wide else 0)
        n_cells = max(1, (width - fixed) // CELL_WIDTH)
        header = f"{'stage':<{STAGE_WIDTH}}" + (f"{'setting':<{SETTING_WIDTH}}" if wide else "") + f"{'kept':>8} " \
            + (" " * FUNNEL_WIDTH if wide else "") + f"{'mass':>7}  most likely survivors, p among them"
        lines.append(assemble((truncate(header, width), colors.DIM)))
        previous: Stage | None = None
        for stage in f.stages:
            row = self._row(stage, previous, f, n_cells, fmt, wide)
            row.truncate(width)
            lines.append(row)
            previous = stage
        lines.append(Text(""))
        lines.append(self._draw_line(f, fmt))
        return lines

    def _row(self, stage: Stage, previous: Stage | None, f: Funnel, n_cells: int, fmt, wide: bool) -> Text:
        dim = not stage.active
        funnel_fill = math.log1p(stage.n) / math.log1p(max(f.n_vocab, stage.n, 1))  # log scale: 262 144 → 40 → 1
        mass = "" if stage.kept_mass is None else f"{stage.kept_mass:7.1%}"
        row = assemble((fit(stage.name, STAGE_WIDTH), colors.DIM if dim else "bold"))
        if wide:
            row.append_text(assemble((fit(stage.setting, SETTING_WIDTH), colors.DIM)))
        row.append_text(assemble((f"{stage.n:>8} ", colors.DIM if dim else "")))
        if wide:
            row.append_text(assemble((fit(bar(funnel_fill, FUNNEL_WIDTH), FUNNEL_WIDTH),
                                      colors.DIM if dim else colors.ACCENT)))
        row.append_text(assemble((f"{mass:>7}  ", colors.DIM if dim else "")))
        unchanged = previous is not None and stage.n == previous.n and stage.ids == previous.ids \
            and stage.probs == previous.probs
        if unchanged and stage.name != "dist":
            row.append_text(assemble(("· as above", colors.DIM)))
            return row
        for tid, p in list(zip(stage.ids, stage.probs))[:n_cells]:
            chosen = tid == f.drawn
            row.append_text(assemble(
                (fit(fmt.show(tid), PIECE_WIDTH), colors.CHOSEN if chosen else colors.SPECIAL if fmt.is_special(tid)
                 else ""),
                " ",
                (fit(bar(p, 3), 3), colors.CHOSEN if chosen else colors.ACCENT),
                (f" {p:>4.0%} ", "bold" if chosen else colors.DIM),
            ))
        return row

    def _draw_line(self, f: Funnel, fmt) -> Text:
        if f.drawn is None:
            return assemble(("no token drawn yet", colors.DIM))
        line = assemble(("▶ drew ", colors.CHOSEN), (fmt.show(f.drawn), colors.CHOSEN),
                        (f" (id {f.drawn})", colors.DIM))
        last = f.stages[-1] if f.stages else None
        if last is not None and last.n == 1:
            line.append_text(assemble((" · the only survivor", colors.DIM)))
            return line
        if f.p is not None and last is not None:
            line.append_text(assemble(f" · p {f.p:.1%} among {last.n}"))
        if f.u is not None:
            line.append_text(assemble(" · u ", (f"{f.u:.4f}", "bold")))
            line.append_text(assemble(NL, ("  the first survivor, in the chain's order, whose running probability "
                                           "reaches u", colors.DIM)))
        return line

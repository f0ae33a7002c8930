"""The step scrubber: which step is selected, of how many, what went in and what came out.

    ◂ step 2/4 ▸ decode · ␣world → ␣is · 3.1ms  ■■■□□······

One cell per step on the right: ■ up to the selected step, □ recorded after it, · still to
come in a live run (up to `n_predict`).
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.widget import Widget

from traces.base import Trace
from views import colors
from views.format import duration, step_kind
from views.pieces import piece_format
from views.safe import assemble, truncate


def drawn_at(trace: Trace, step: int) -> int | None:
    """The token drawn at `step`, if the trace has got that far."""
    event = trace.get(step, "sample") if step >= 0 else None
    return int(event.scalars["token"]) if event is not None and "token" in event.scalars else None


class StepBar(Widget):
    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._step = 0
        self._shown: tuple | None = None

    def show(self, trace: Trace, step: int) -> None:
        key = (id(trace), step, len(trace.steps), len(trace.events(trace.steps[-1])) if trace.steps else 0)
        if key == self._shown:
            return
        self._shown = key
        self._trace, self._step = trace, step
        self.refresh()

    def render(self) -> Text:
        trace, step = self._trace, self._step
        if trace is None:
            return Text("")
        steps = trace.steps
        last = steps[-1] if steps else 0
        fmt = piece_format(trace)
        text = assemble(("◂ ", colors.DIM), ("step ", ""), (f"{step}", "bold"), f"/{last}", (" ▸", colors.DIM),
                        " ", (step_kind(step), colors.ACCENT))
        if step == 0:
            text.append_text(assemble((f" · {len(trace.prompt_ids())} prompt tokens", "")))
        elif (token := drawn_at(trace, step - 1)) is not None:
            text.append_text(assemble(" · ", (truncate(fmt.show(token), 12), "bold")))
        if (token := drawn_at(trace, step)) is not None:
            text.append_text(assemble((" → ", colors.DIM), (truncate(fmt.show(token), 12), colors.CHOSEN)))
        ns = sum(e.dur_ns for e in trace.events(step))
        if ns:
            text.append_text(assemble((f" · {duration(ns)}", colors.DIM)))

        n_predict = trace.info.get("n_predict")
        total = max(len(steps), int(n_predict) if isinstance(n_predict, int) and not trace.complete else 0)
        room = self.size.width - cell_len(text.plain) - 2
        if room >= 4 and total:
            cells = min(total, room)
            scrub = Text("  ", end="")
            for i in range(cells):
                s = i * total // cells  # the step this cell stands for
                if s <= step:
                    scrub.append("■", style=colors.ACCENT if s < step else colors.SINK)
                elif s <= last:
                    scrub.append("□", style=colors.DIM)
                else:
                    scrub.append("·", style=colors.DIM)
            text.append_text(scrub)
        return text

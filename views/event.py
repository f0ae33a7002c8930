"""The event view: any stop's event as numbers — its tensors summarized, its scalars listed.

Stops without a dedicated view (norms, q/k/v, rope, the FFN, the residual stream, ...)
are shown here, and so is every stop when asked for its raw event.
"""

from __future__ import annotations

import numpy as np
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static

from traces.base import Trace
from traces.schema import STOP_BY_NAME
from views import colors
from views.format import duration, step_kind
from views.safe import NL, assemble, escape_controls, truncate
from views.selection import Selection

MAX_SCALAR = 200  # characters of a scalar's value shown
FIRST_VALUES = 6
SUMMARIES_KEPT = 256  # tensor summaries cached (EventView._summary)


def tensor_summary(name: str, value: np.ndarray) -> Text:
    shape = "×".join(str(n) for n in value.shape) or "scalar"
    head = assemble((f"{name:<8}", "bold"), (f" {shape} {value.dtype}", colors.DIM))
    if value.size == 0:
        return head
    if value.dtype.kind in "fiub":
        x = value.astype(np.float64, copy=False)
        finite = np.isfinite(x)
        stats = (f"  min {np.nanmin(x):.4g}  max {np.nanmax(x):.4g}  mean {np.nanmean(x):.4g}"
                 f"  std {np.nanstd(x):.4g}  ‖·‖ {np.linalg.norm(x[finite]):.4g}")
        head.append_text(assemble(NL, stats))
        if not finite.all():
            head.append_text(assemble((f"  {int((~finite).sum())} non-finite", colors.WARN)))
        first = ", ".join(f"{v:.4g}" for v in x.ravel()[:FIRST_VALUES])
        head.append_text(assemble(NL, (f"  [{first}{', …' if x.size > FIRST_VALUES else ''}]", colors.DIM)))
    return head


class EventView(VerticalScroll):
    """One event of the selected step/stop/layer."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown: tuple | None = None
        self._summaries: dict[tuple[int, str], tuple[object, Text]] = {}  # oldest first

    def compose(self) -> ComposeResult:
        yield Static(id="event-title", classes="view-title")
        yield Static(id="event-body")

    def show(self, trace: Trace, selection: Selection) -> None:
        stop = STOP_BY_NAME.get(selection.stop)
        layer = selection.event_layer
        events = [e for e in trace.find(selection.step, selection.stop) if e.layer == layer]
        key = (id(trace), selection.step, selection.stop, layer, tuple(id(e) for e in events))
        if key == self._shown:
            return
        self._shown = key
        title = assemble((stop.title if stop else selection.stop, colors.ACCENT),
                         f" · step {selection.step} ({step_kind(selection.step)})")
        if layer is not None:
            title.append_text(assemble(f" · layer {layer}/{trace.n_layer}"))
        if stop is not None:
            title.append_text(assemble((f" · {stop.code}", colors.DIM)))
        self.query_one("#event-title", Static).update(title)

        body = Text(end="")
        if stop is not None:
            body.append_text(assemble((stop.tensors, colors.DIM), NL))
        if not events:
            body.append_text(assemble(NL, ("not in this trace", colors.WARN),
                                      (" — not captured, or the run has not got there yet", colors.DIM)))
        for event in events:
            body.append_text(assemble(NL, (f"seq {event.seq}", colors.DIM), " · ", (duration(event.dur_ns), "bold")))
            if event.part:
                body.append_text(assemble(" · part ", (event.part, "bold")))
            for name, value in event.tensors.items():
                body.append_text(NL)
                body.append_text(self._summary(event, name))
            for name, value in event.scalars.items():
                shown = truncate(escape_controls(repr(value) if not isinstance(value, str) else value), MAX_SCALAR)
                body.append_text(assemble(NL, (name, "bold"), " = ", shown))
            body.append("\n")
        self.query_one("#event-body", Static).update(body)

    def _summary(self, event, name: str) -> Text:
        """tensor_summary once per event and tensor: its statistics read the whole tensor (a
        prefill's [tokens, n_embd]), and scrubbing back and forth shows the same events again."""
        key = (id(event), name)
        hit = self._summaries.get(key)
        if hit is None or hit[0] is not event:  # the event is kept with it, so its id is not reused
            hit = self._summaries[key] = (event, tensor_summary(escape_controls(name), np.asarray(event.tensors[name])))
            while len(self._summaries) > SUMMARIES_KEPT:
                del self._summaries[next(iter(self._summaries))]
        return hit[1]

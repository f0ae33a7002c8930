"""The diff screen: two runs side by side, and where they part.

    make_diff_app(a, b, diff_traces(a, b))     the app the CLI and the tests share

From the top: the two traces, the first divergence and what could not be aligned; the
two token streams; which stop and metric the heatmap shows; the heatmap (layers × steps);
the metrics of the cell under the cursor; the colour legend. The screen owns the stop and
the metric and hands them to the map; the map owns its cursor and says where it moved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from traces.base import Trace
from traces.diff import TraceDiff
from traces.schema import STOP_BY_NAME
from views import colors
from views.diff import (
    METRIC_LABEL, DiffMap, TokenStreams, diff_grid, first_line, legend, metrics_for, readout, reasons_line, side_line,
)
from views.safe import NL, assemble, escape_controls


@dataclass(frozen=True)
class Pick:
    """What the screen shows: one stop's map under one metric, the cursor at (step, layer)."""

    stop: str
    metric: str = "cos"
    step: int = 0
    layer: int | None = 0


class DiffScreen(Screen[None]):
    CSS_PATH = "diff.tcss"
    BINDINGS = [
        Binding("f", "first", "first divergence", id="diff.first"),
        Binding("s", "stop(1)", "stop", id="diff.stop-next", key_display="sS",
                group=Binding.Group("stop", compact=True)),
        Binding("S", "stop(-1)", "previous stop", id="diff.stop-prev", show=False),
        Binding("m", "metric", "metric", id="diff.metric"),
        Binding("q", "app.quit", "quit", id="diff.quit"),
    ]

    def __init__(self, a: Trace, b: Trace, diff: TraceDiff) -> None:
        super().__init__()
        self.a, self.b, self.diff = a, b, diff
        self.stops = [s for s in diff.stops() if any(not t.exact for e in diff.events if e.stop == s for t in e.tensors)]
        first = diff.first
        stop = (first.stop if first is not None and first.stop in self.stops
                else "residual" if "residual" in self.stops else (self.stops[0] if self.stops else ""))
        if first is not None:
            self.pick = Pick(stop, "cos", first.step, first.layer if first.layer is not None else 0)
        else:
            self.pick = Pick(stop, "cos", diff.steps[0] if diff.steps else 0, 0)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="diff-summary")
        yield TokenStreams(id="diff-tokens")
        yield Static(id="diff-controls")
        yield DiffMap(id="diff-map")
        yield Static(id="diff-readout")
        yield Static(id="diff-legend")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(DiffMap).focus()
        self._show_map()

    def on_resize(self) -> None:
        self._show_summary()

    # Showing ------------------------------------------------------------------------------------

    def _show_summary(self) -> None:
        d = self.diff
        text = assemble(side_line("A", d.a), NL, side_line("B", d.b), NL, first_line(d), NL,
                        reasons_line(d, self.size.width))
        self.query_one("#diff-summary", Static).update(text)

    def _show_map(self) -> None:
        """Stop or metric changed: rebuild the grid, then everything that follows the cursor."""
        self._show_summary()
        diff_map, pick = self.query_one(DiffMap), self.pick
        if not pick.stop:
            diff_map.set_grid(None, 0, None, None)
            self.query_one("#diff-controls", Static).update(
                assemble(("no tensors both traces captured to compare", colors.WARN)))
            self._show_cell()
            return
        grid = diff_grid(self.diff, pick.stop, pick.metric, int(self.diff.a.get("n_layer") or 0))
        diff_map.set_grid(grid, pick.step, pick.layer, self.diff.first)
        if diff_map.at is not None:
            step, layer = diff_map.at
            self.pick = pick = replace(pick, step=step, layer=layer)
        i = self.stops.index(pick.stop)
        self.query_one("#diff-controls", Static).update(assemble(
            ("stop ", colors.DIM), ("◂ ", colors.DIM), (STOP_BY_NAME[pick.stop].title, "bold"), (" ▸", colors.DIM),
            (f" {i + 1}/{len(self.stops)}", colors.DIM), ("  metric ", colors.DIM), (METRIC_LABEL[pick.metric], "bold"),
            ("  tolerance ", colors.DIM), self.diff.tolerance.describe()))
        self.query_one("#diff-legend", Static).update(legend(pick.metric))
        self._show_cell()

    def _show_cell(self) -> None:
        pick = self.pick
        self.query_one(TokenStreams).show(self.diff, self.a, self.b, pick.step)
        text = readout(self.diff, pick.stop, pick.step, pick.layer, pick.metric) if pick.stop else assemble("")
        self.query_one("#diff-readout", Static).update(text)

    def on_diff_map_moved(self, message: DiffMap.Moved) -> None:
        self.pick = replace(self.pick, step=message.step, layer=message.layer)
        self._show_cell()

    # Actions -----------------------------------------------------------------------------------

    def action_first(self) -> None:
        first, pick = self.diff.first, self.pick
        if first is None:
            self.notify("no divergence beyond the tolerance", timeout=3)
            return
        stop = pick.stop
        if first.stop in self.stops:
            stop = first.stop
        else:  # a token or prompt difference has no map of its own: show its step on the current stop
            self.notify(f"{first.where()}: {escape_controls(first.detail)}", timeout=5)
        metric = pick.metric if pick.metric in metrics_for(stop) else "cos"
        layer = first.layer if first.layer is not None else pick.layer
        self.pick = Pick(stop, metric, first.step, layer)
        self._show_map()

    def action_stop(self, delta: int) -> None:
        if not self.stops:
            return
        pick = self.pick
        stop = self.stops[(self.stops.index(pick.stop) + delta) % len(self.stops)]
        metric = pick.metric if pick.metric in metrics_for(stop) else "cos"
        layer = pick.layer if pick.layer is not None else 0  # leaving a stop outside the layers
        self.pick = replace(pick, stop=stop, metric=metric, layer=layer)
        self._show_map()

    def action_metric(self) -> None:
        if not self.pick.stop:
            return
        choices = metrics_for(self.pick.stop)
        self.pick = replace(self.pick, metric=choices[(choices.index(self.pick.metric) + 1) % len(choices)])
        self._show_map()


class DiffApp(App[None]):
    """Hosts the diff screen; nothing else."""

    ENABLE_COMMAND_PALETTE = False

    def __init__(self, a: Trace, b: Trace, diff: TraceDiff) -> None:
        super().__init__()
        self.a, self.b, self.diff = a, b, diff
        self.title = "llm-inspect diff"
        self.sub_title = escape_controls(f"A {diff.a.get('name')} · B {diff.b.get('name')}")

    def on_mount(self) -> None:
        # Pushed, not returned from get_default_screen(): only a pushed screen loads its CSS_PATH.
        self.push_screen(DiffScreen(self.a, self.b, self.diff))


def make_diff_app(a: Trace, b: Trace, diff: TraceDiff) -> DiffApp:
    """The app factory the CLI and the tests share."""
    return DiffApp(a, b, diff)

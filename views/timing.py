"""The timing view: where a step's time went, slowest stops first, and each layer as a column.

Reads only the events' own durations (`dur_ns`, engine/hooks.py: a stop's time is the work
since the previous stop, so the stops of a step add up to the step). Two panels:

* the slowest stops of the selected step, summed over layers, each with its share of the step;
* a column chart, one column per layer, of the selected stop's time (or, when the selected
  stop is not a per-layer one, of each layer's total). A layer slower than `SLOW_FACTOR`
  times the median of its peers, by at least 1% of the step, is an outlier (the profile's rule,
  traces/timing.py): drawn in the warning colour and named below.

Next to each time, what it bought (traces/roofline.py, from the trace's info): GB/s and
GFLOP/s, and where the trace carries the device's measured limits (`llm-inspect profile`),
whether the stop is memory- or compute-bound and how near that roof it ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from rich.text import Text

from traces.base import Trace
from traces.roofline import Cost, CostModel, Limits, attainment, roof_text
from traces.timing import slow_vs_peers
from traces.schema import STOP_BY_NAME
from views import colors
from views.charts import column_chart
from views.format import bar, duration, step_kind
from views.hook_cost import hooks_text
from views.lines import TextLines
from views.safe import NL, assemble
from views.selection import Selection

SLOW_FACTOR = 2.0  # a layer this many times its peers' median is called out
TOP_STOPS = 8
CHART_ROWS = 6
RATES = 23  # cells of the GB/s, GFLOP/s and roof columns
SUMMED_KEPT = 64  # step timings kept (TimingView._summed)


@dataclass(frozen=True)
class StepTiming:
    step: int
    total_ns: int
    by_stop: list[tuple[str, int]]  # slowest first
    layer_stop: str  # what the layer chart shows: a stop name, or "all" for each layer's total
    by_layer: list[int]  # ns per layer, index = layer
    stop_costs: dict[str, Cost] = field(default_factory=dict)  # what each stop moved and computed, over layers
    layer_costs: list[Cost] = field(default_factory=list)  # the chart's, per layer
    limits: Limits | None = None

    def outliers(self, factor: float = SLOW_FACTOR) -> list[tuple[int, float]]:
        """(layer, times the median) for every outlier layer, by the profile's rule (traces/timing.py)."""
        timed = [ns for ns in self.by_layer if ns > 0]
        out = []
        for il, ns in enumerate(self.by_layer):
            ratio, outlier = slow_vs_peers(ns, timed, self.total_ns, factor)
            if outlier:
                out.append((il, ratio))
        return out


def step_timing(trace: Trace, step: int, stop: str, n_layer: int, model: CostModel | None = None) -> StepTiming | None:
    """`model`: the trace's cost model, when the caller keeps one (built from trace.info otherwise)."""
    events = trace.events(step) if step in trace.steps else []
    if not events:
        return None
    by_stop: dict[str, int] = {}
    per_layer_stop = STOP_BY_NAME.get(stop)
    chart_stop = stop if per_layer_stop is not None and per_layer_stop.per_layer else "all"
    layers = max([n_layer] + [e.layer + 1 for e in events if e.layer is not None])
    by_layer = [0] * layers
    for e in events:
        by_stop[e.stop] = by_stop.get(e.stop, 0) + e.dur_ns
        if e.layer is not None and 0 <= e.layer < layers and chart_stop in ("all", e.stop):
            by_layer[e.layer] += e.dur_ns
    ranked = sorted(by_stop.items(), key=lambda kv: -kv[1])
    stop_costs: dict[str, Cost] = {}
    layer_costs = [Cost()] * layers
    model = model or CostModel.of(trace.info)
    for (name, il), cost in (model.step_costs(events) if model else {}).items():
        stop_costs[name] = stop_costs.get(name, Cost()) + cost
        if il is not None and 0 <= il < layers and chart_stop in ("all", name):
            layer_costs[il] += cost
    return StepTiming(step, sum(by_stop.values()), ranked, chart_stop, by_layer, stop_costs, layer_costs,
                      Limits.from_info(trace.info))


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class TimingView(TextLines):
    """Timing of one step: the slowest stops and a per-layer column chart with outliers marked."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._timing: StepTiming | None = None
        self._shown: tuple | None = None
        self._hooks = None  # what the hooks cost the step shown (traces/schema.py HookCost), or None
        self._model: tuple[Trace | None, CostModel | None] = (None, None)  # (the trace, its cost model)
        # Step timings already summed, by `show`'s key: stepping back and forth sums each step once
        # (a step's costs walk all its events, ~5 ms of a keypress on a 30-layer trace, bench/ui.py).
        self._summed: dict[tuple, StepTiming | None] = {}

    def show(self, trace: Trace, selection: Selection) -> None:
        events = trace.events(selection.step) if selection.step in trace.steps else []
        hooks = trace.hook_cost(selection.step) if events else None  # a live step's comes after its events
        key = (id(trace), selection.step, selection.stop, len(events), hooks is not None)
        if key == self._shown:
            return
        self._shown = key
        self._hooks = hooks
        if self._model[0] is not trace:
            self._model = (trace, CostModel.of(trace.info))
            self._summed.clear()
        if key not in self._summed:
            while len(self._summed) >= SUMMED_KEPT:
                del self._summed[next(iter(self._summed))]
            self._summed[key] = step_timing(trace, selection.step, selection.stop, trace.n_layer, self._model[1])
        self._timing = self._summed[key]
        self.refresh()

    def render(self) -> Text | list[Text]:
        t = self._timing
        title = assemble(("timing", colors.ACCENT))
        if t is None:
            return assemble(title, NL, NL, ("no events at this step yet", colors.WARN))
        title.append_text(assemble(f" · step {t.step} ({step_kind(t.step)}) · ", (duration(t.total_ns), "bold")))
        width, height = max(30, self.size.width), max(12, self.size.height)
        lines = [title, assemble((hooks_text(self._hooks, short=True), colors.DIM)), Text("")]

        # The layer chart first: finding the slow layer is what this view is for.
        what = "each layer's total" if t.layer_stop == "all" else f"{t.layer_stop} per layer"
        hot = dict(t.outliers())
        lines.append(assemble(("by layer", "bold"), (f"  {what} · ⚠ over {SLOW_FACTOR:g}× median", colors.DIM)))
        if any(t.by_layer):
            rows = CHART_ROWS if height >= 24 else 3
            lines += column_chart(t.by_layer, width, rows, set(hot))
            peak = max(range(len(t.by_layer)), key=t.by_layer.__getitem__)
            timed = [v for v in t.by_layer if v]
            lines.append(assemble(("slowest ", colors.DIM), (f"layer {peak}", "bold"), f" {duration(t.by_layer[peak])}",
                                  (f" · median {duration(int(median(timed)))}", colors.DIM)))
            cost = t.layer_costs[peak] if peak < len(t.layer_costs) else Cost()
            att = attainment(cost, t.by_layer[peak], t.limits)
            if att is not None:
                lines.append(assemble((f"  {megabytes(cost.bytes)} · {cost.flops / 1e6:.1f} MFLOP · ", colors.DIM),
                                      f"{att.gbps:.1f} GB/s", (f" · {roof_text(att)}" if att.bound else "", colors.DIM)))
            for il, times in sorted(hot.items(), key=lambda kv: -kv[1])[:3]:
                lines.append(assemble(("⚠ ", colors.WARN), (f"layer {il}", colors.WARN),
                                      f" {duration(t.by_layer[il])} · {times:.1f}× the median"))
        else:
            lines.append(assemble(("no per-layer stops captured at this step", colors.DIM)))

        # Then as many of the slowest stops as the height leaves room for.
        room = max(3, min(TOP_STOPS, height - len(lines) - 2))
        name_width = 12
        # The header lines up with the rows: name 12 + time 10 + share 7 = 29 cells, then the rates.
        lines += [Text(""), assemble(("slowest stops", "bold"), (f"{' · all layers':<16}", colors.DIM),
                                     ("  GB/s GFLOP/s     roof" if width >= 29 + RATES else "", colors.DIM))]
        # Rates when they fit (29 + 23 cells); the bar, which only repeats the share, takes what is left.
        with_rates = width >= 29 + RATES
        bar_width = width - 29 - (RATES + 2 if with_rates else 0)
        slowest = t.by_stop[0][1] if t.by_stop else 1
        for name, ns in t.by_stop[:room]:
            share = ns / t.total_ns if t.total_ns else 0.0
            att = attainment(t.stop_costs.get(name, Cost()), ns, t.limits)
            rates = (f"{att.gbps:6.1f} {att.gflops:7.1f} {roof_text(att):>8}" if att else " " * RATES) if with_rates else ""
            lines.append(assemble(
                (f"{name:<{name_width}}", "bold"), (f"{duration(ns):>9} ", ""), (f"{share:5.1%}  ", colors.DIM),
                (rates, ""), ("  " + bar(ns / slowest if slowest else 0.0, bar_width) if bar_width >= 6 else "",
                              colors.ACCENT),
            ))
        return lines

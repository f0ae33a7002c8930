"""Where a run's time went: per stop and layer over the decode steps, slowest first, outliers marked.

A profile reads durations only (`Event.dur_ns`), so it works on any trace, a `--capture
minimal` one included. Decode steps are summarized by their median (one slow step from a
page fault or a GC pause does not move it); the prefill is reported apart, since it
processes the whole prompt at once and is not comparable to one token.

An outlier is a (stop, layer) whose median is more than `factor` times the median of the
same stop across the other layers: the layer that is slow for its kind of work. Its excess
over that median must also be at least `MIN_SHARE` of a step, or a 2 µs add that took 6 µs
once would be called out next to a matmul that lost milliseconds.

Each row also carries what its stop moved and computed (traces/roofline.py, from the trace's
info), so a rate and a fraction of the device's limits go with each time. `compare` puts two
profiles side by side: which stops got faster or slower, beyond the runs' own noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import median, quantiles

from traces.base import Trace
from traces.roofline import CostModel, Limits
from traces.schema import HookCost

MIN_SHARE = 0.01

@dataclass(frozen=True)
class Row:
    stop: str
    layer: int | None
    median_ns: int  # over the decode steps (the prefill when there are none)
    share: float  # of a step's total
    vs_peers: float  # median over the median of the same stop in the other layers (1.0 for global stops)
    outlier: bool
    bytes: int = 0  # moved and computed by the work this stop timed (median over the same steps; 0: unknown)
    flops: int = 0


@dataclass
class Profile:
    prefill_ns: int
    decode_ns: int  # the median decode step
    n_decode: int
    rows: list[Row] = field(default_factory=list)  # slowest first
    factor: float = 2.0
    limits: Limits | None = None  # the device's, measured when the run was profiled
    weights_as: str = ""  # how the engine reads its weights (the bytes counted): "float32", "GGUF blocks"
    hooks: HookCost | None = None  # what the hooks cost a profiled step (median per field); None: not measured

    @property
    def outliers(self) -> list[Row]:
        return [r for r in self.rows if r.outlier]

    def by_stop(self) -> list[Row]:
        """Each stop summed over its layers (layer None, vs_peers 1.0), slowest first: where a step goes."""
        sums: dict[str, list[int]] = {}
        for r in self.rows:
            acc = sums.setdefault(r.stop, [0, 0, 0])
            acc[0], acc[1], acc[2] = acc[0] + r.median_ns, acc[1] + r.bytes, acc[2] + r.flops
        total = self.decode_ns if self.n_decode else self.prefill_ns
        rows = [Row(stop, None, ns, ns / total if total else 0.0, 1.0, False, nbytes, flops)
                for stop, (ns, nbytes, flops) in sums.items()]
        return sorted(rows, key=lambda r: -r.median_ns)

    def to_json(self) -> dict:
        return {"prefill_ns": self.prefill_ns, "decode_ns": self.decode_ns, "n_decode": self.n_decode,
                "factor": self.factor, "weights_as": self.weights_as,
                "device_limits": self.limits.to_info() if self.limits else None,
                "hooks": self.hooks.to_json() if self.hooks else None,
                "rows": [asdict(r) for r in self.rows]}


MIN_PEERS = 3


def slow_vs_peers(ns: int, peers: list[int], step_total: int, factor: float) -> tuple[float, bool]:
    """(ns over the peers' median, whether that makes it an outlier): the one rule the profile and
    the timing view both use. With fewer than MIN_PEERS peers there is no verdict (1.0, False)."""
    if len(peers) < MIN_PEERS:
        return 1.0, False
    mid = median(peers)
    if mid <= 0:
        return 1.0, False
    ratio = ns / mid
    return ratio, ratio > factor and (ns - mid) >= MIN_SHARE * step_total


def step_samples(trace: Trace) -> tuple[dict[int, int], list[int], dict[tuple[str, int | None], list[int]]]:
    """(each step's total ns, the steps profiled, per (stop, layer) its ns at each of those steps).
    The decode steps are profiled; a one-step run, its prefill. A stop's parts (the sampler's
    stages) are one stop: summed per step."""
    steps = trace.steps
    decode = [s for s in steps if s > 0]
    use = decode or steps[:1]
    totals: dict[int, int] = {}
    samples: dict[tuple[str, int | None], list[int]] = {}
    for step in steps:
        events = trace.events(step)
        totals[step] = sum(e.dur_ns for e in events)
        if step in use:
            here: dict[tuple[str, int | None], int] = {}
            for e in events:
                here[(e.stop, e.layer)] = here.get((e.stop, e.layer), 0) + e.dur_ns
            for key, ns in here.items():
                samples.setdefault(key, []).append(ns)
    return totals, use, samples


def hook_cost(trace: Trace, steps: list[int]) -> HookCost | None:
    """The hooks' cost over `steps`, each field its median over the steps that measured it (so the
    parts need not add up exactly); None when none did (a trace recorded before it was measured)."""
    costs = [c for c in (trace.hook_cost(s) for s in steps) if c is not None]
    if not costs:
        return None
    mid = {k: median([getattr(c, k) for c in costs]) for k in HookCost.FIELDS}
    return HookCost(**{k: v if k == "boundary_ns" else int(v) for k, v in mid.items()})


def profile(trace: Trace, factor: float = 2.0) -> Profile:
    totals, use, samples = step_samples(trace)
    decode = [s for s in trace.steps if s > 0]
    medians = {key: int(median(v)) for key, v in samples.items()}
    per_stop: dict[str, list[int]] = {}
    for (stop, layer), ns in medians.items():
        if layer is not None:
            per_stop.setdefault(stop, []).append(ns)
    step_total = int(median([totals[s] for s in use])) if use else 0

    # What each stop moved and computed over the same steps (attention's grows a little each step).
    costs: dict[tuple[str, int | None], list] = {}
    model = CostModel.of(trace.info)
    if model is not None:
        for step in use:
            for key, cost in model.step_costs(trace.events(step)).items():
                costs.setdefault(key, []).append(cost)

    rows = []
    for (stop, layer), ns in medians.items():
        peers = per_stop.get(stop, []) if layer is not None else []
        ratio, outlier = slow_vs_peers(ns, peers, step_total, factor)
        cs = costs.get((stop, layer), [])
        nbytes = int(median([c.bytes for c in cs])) if cs else 0
        flops = int(median([c.flops for c in cs])) if cs else 0
        rows.append(Row(stop, layer, ns, ns / step_total if step_total else 0.0, ratio, outlier, nbytes, flops))
    rows.sort(key=lambda r: -r.median_ns)
    return Profile(totals.get(0, 0), int(median([totals[s] for s in decode])) if decode else 0, len(decode), rows,
                   factor, Limits.from_info(trace.info), model.weights_as if model else "", hook_cost(trace, use))


# -- two profiles side by side -----------------------------------------------------------------

MIN_CHANGE = 0.10  # a change under 10% is not called, however quiet the runs


@dataclass(frozen=True)
class Change:
    stop: str
    layer: int | None
    a_ns: int  # median over A's profiled steps
    b_ns: int
    ratio: float  # b over a
    noise: float  # the runs' own relative spread for this stop (the larger of A's and B's)
    verdict: str  # "faster", "slower", or "" (within noise)


@dataclass
class Comparison:
    a_step_ns: int  # the median profiled step
    b_step_ns: int
    a_prefill_ns: int
    b_prefill_ns: int
    changes: list[Change]  # biggest change in time first
    only_a: list[tuple[str, int | None]]
    only_b: list[tuple[str, int | None]]

    def to_json(self) -> dict:
        return {"a_step_ns": self.a_step_ns, "b_step_ns": self.b_step_ns, "a_prefill_ns": self.a_prefill_ns,
                "b_prefill_ns": self.b_prefill_ns, "changes": [asdict(c) for c in self.changes],
                "only_a": [list(k) for k in self.only_a], "only_b": [list(k) for k in self.only_b]}


def spread(ns: list[int]) -> float:
    """Relative run-to-run spread of one stop: the interquartile range over the median (half the
    range under 4 samples; 0 for one)."""
    mid = median(ns)
    if len(ns) < 2 or mid <= 0:
        return 0.0
    if len(ns) < 4:
        return (max(ns) - min(ns)) / 2 / mid
    q1, _, q3 = quantiles(ns, n=4)
    return (q3 - q1) / mid


def compare(a: Trace, b: Trace, min_change: float = MIN_CHANGE) -> Comparison:
    """Each (stop, layer) of two profiles: medians, B over A, and whether it changed beyond noise:
    by more than `min_change` and twice the larger spread of its samples, and by at least
    MIN_SHARE of A's step (a 2 µs stop that took 3 µs is not news)."""
    a_totals, a_use, a_samples = step_samples(a)
    b_totals, b_use, b_samples = step_samples(b)
    a_step = int(median([a_totals[s] for s in a_use])) if a_use else 0
    b_step = int(median([b_totals[s] for s in b_use])) if b_use else 0
    changes = []
    for key in a_samples.keys() & b_samples.keys():
        sa, sb = a_samples[key], b_samples[key]
        ma, mb = int(median(sa)), int(median(sb))
        ratio = mb / ma if ma > 0 else (1.0 if mb == 0 else float("inf"))
        noise = max(spread(sa), spread(sb))
        limit = max(min_change, 2 * noise)
        verdict = ""
        if abs(mb - ma) >= MIN_SHARE * a_step:
            verdict = "slower" if ratio > 1 + limit else "faster" if ratio < 1 / (1 + limit) else ""
        changes.append(Change(key[0], key[1], ma, mb, ratio, noise, verdict))
    changes.sort(key=lambda c: (-abs(c.b_ns - c.a_ns), c.stop, -1 if c.layer is None else c.layer))

    def order(keys):
        return sorted(keys, key=lambda k: (k[0], -1 if k[1] is None else k[1]))

    return Comparison(a_step, b_step, a_totals.get(0, 0), b_totals.get(0, 0), changes,
                      order(a_samples.keys() - b_samples.keys()), order(b_samples.keys() - a_samples.keys()))


"""Where a run's time went: per stop and layer over the decode steps, slowest first, outliers marked.

A profile reads durations only (`Event.dur_ns`), so it works on any trace, a `--capture
minimal` one included. Decode steps are summarized by their median (one slow step from a
page fault or a GC pause does not move it); the prefill is reported apart, since it
processes the whole prompt at once and is not comparable to one token.

An outlier is a (stop, layer) whose median is more than `factor` times the median of the
same stop across the other layers: the layer that is slow for its kind of work. Its excess
over that median must also be at least `MIN_SHARE` of a step, or a 2 µs add that took 6 µs
once would be called out next to a matmul that lost milliseconds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from statistics import median

from traces.base import Trace

MIN_SHARE = 0.01

@dataclass(frozen=True)
class Row:
    stop: str
    layer: int | None
    median_ns: int  # over the decode steps (the prefill when there are none)
    share: float  # of a step's total
    vs_peers: float  # median over the median of the same stop in the other layers (1.0 for global stops)
    outlier: bool


@dataclass
class Profile:
    prefill_ns: int
    decode_ns: int  # the median decode step
    n_decode: int
    rows: list[Row] = field(default_factory=list)  # slowest first
    factor: float = 2.0

    @property
    def outliers(self) -> list[Row]:
        return [r for r in self.rows if r.outlier]

    def to_json(self) -> dict:
        return {"prefill_ns": self.prefill_ns, "decode_ns": self.decode_ns, "n_decode": self.n_decode,
                "factor": self.factor, "rows": [asdict(r) for r in self.rows]}


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


def profile(trace: Trace, factor: float = 2.0) -> Profile:
    steps = trace.steps
    totals: dict[int, int] = {}
    samples: dict[tuple[str, int | None], list[int]] = {}
    decode = [s for s in steps if s > 0]
    use = decode or steps[:1]  # a one-step run: profile its prefill
    for step in steps:
        events = trace.events(step)
        totals[step] = sum(e.dur_ns for e in events)
        if step in use:
            for e in events:
                samples.setdefault((e.stop, e.layer), []).append(e.dur_ns)
    medians = {key: int(median(v)) for key, v in samples.items()}
    per_stop: dict[str, list[int]] = {}
    for (stop, layer), ns in medians.items():
        if layer is not None:
            per_stop.setdefault(stop, []).append(ns)
    step_total = int(median([totals[s] for s in use])) if use else 0

    rows = []
    for (stop, layer), ns in medians.items():
        peers = per_stop.get(stop, []) if layer is not None else []
        ratio, outlier = slow_vs_peers(ns, peers, step_total, factor)
        rows.append(Row(stop, layer, ns, ns / step_total if step_total else 0.0, ratio, outlier))
    rows.sort(key=lambda r: -r.median_ns)
    return Profile(totals.get(0, 0), int(median([totals[s] for s in decode])) if decode else 0, len(decode), rows, factor)

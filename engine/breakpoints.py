"""Breakpoints: where a live run should stop, written the way a person says it.

One breakpoint is one or more terms separated by spaces; all must hold:

    attn                 the attn stop, any layer, any step
    attn@3  attn@3:0     ... only in layer 3 (and only at step 0)
    logits:5             the logits stop of step 5
    entropy>4            a logits stop whose entropy (nats) is above 4
    top1<0.2             a logits stop whose most likely token has p below 0.2
    slow>5ms             any stop that took longer than 5 ms (us, ms, s)
    slow>3x              a layer's stop 3x slower than the median of the same stop in the
                         other layers (this step's so far, else the previous step's)
    token=42  token=Paris   the step that samples token id 42 / the piece "Paris"
    attn@3 slow>1ms      layer 3's attention, when it is slow

A condition on logits or on the sampled token implies its stop, so `entropy>4` alone
is enough. Timing conditions read the event's own duration (engine/hooks.py).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from statistics import median

from traces.schema import Event, check_stop

OPS = {">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
UNITS_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
# metric -> the stop whose event carries it
METRIC_STOP = {"entropy": "logits", "top1": "logits", "slow": None, "slowx": None}

_COND = re.compile(r"^(entropy|top1|slow)(>=|<=|>|<)([0-9.eE+-]+)(ns|us|ms|s|x)?$")
_WHERE = re.compile(r"^([a-z_]+)(?:@(-?\w+))?(?::(-?\w+))?$")


@dataclass(frozen=True)
class Breakpoint:
    stop: str | None = None
    layer: int | None = None
    step: int | None = None
    metric: str | None = None  # entropy | top1 | slow (ns) | slowx (times the peers' median)
    op: str = ">"
    value: float = 0.0  # for slow: nanoseconds
    token: int | str | None = None

    def matches(self, event: Event, peers: "PeerTimes | None" = None) -> bool:
        if self.stop is not None and event.stop != self.stop:
            return False
        if self.layer is not None and event.layer != self.layer:
            return False
        if self.step is not None and event.step != self.step:
            return False
        if self.token is not None:
            token = event.scalars.get("token")
            if token is None:
                return False
            want = self.token
            if isinstance(want, int) and token != want:
                return False
            if isinstance(want, str) and event.scalars.get("piece", "").strip() != want:
                return False
        if self.metric is not None:
            value = self._metric_value(event, peers)
            if value is None or not OPS[self.op](value, self.value):
                return False
        return True

    def _metric_value(self, event: Event, peers: "PeerTimes | None") -> float | None:
        if self.metric == "slowx":
            return peers.ratio(event) if peers is not None else None
        if self.metric == "slow":
            return float(event.dur_ns)
        if self.metric == "entropy":
            return event.scalars.get("entropy")
        if self.metric == "top1":
            probs = event.scalars.get("top_probs")
            return probs[0] if probs else None
        return None

    @classmethod
    def parse(cls, text: str) -> "Breakpoint":
        fields: dict = {}
        terms = text.split()
        if not terms:
            raise ValueError("empty breakpoint")
        for term in terms:
            if term.startswith("token="):
                raw = term[len("token="):]
                if not raw:
                    raise ValueError(f"bad breakpoint {text!r}: token= needs an id or a piece")
                fields["token"] = int(raw) if re.fullmatch(r"\d+", raw) else raw
                fields.setdefault("stop", "sample")
                continue
            cond = _COND.match(term)
            if cond:
                metric, op, number, unit = cond.groups()
                try:
                    value = float(number)
                except ValueError:
                    raise ValueError(f"bad breakpoint {text!r}: {number!r} is not a number") from None
                if metric == "slow" and unit == "x":
                    metric = "slowx"
                elif metric == "slow":
                    value *= UNITS_NS[unit or "ms"]
                elif unit:
                    raise ValueError(f"bad breakpoint {text!r}: {metric} takes no unit")
                fields.update(metric=metric, op=op, value=value)
                if METRIC_STOP[metric]:
                    fields.setdefault("stop", METRIC_STOP[metric])
                continue
            where = _WHERE.match(term)
            if not where:
                raise ValueError(f"bad breakpoint {text!r}: expected STOP[@LAYER][:STEP], entropy>X, top1<P, slow>Nms or token=T")
            stop, layer, step = where.groups()
            check_stop(stop)
            try:
                fields.update(stop=stop, layer=int(layer) if layer else None, step=int(step) if step else None)
            except ValueError:
                raise ValueError(f"bad breakpoint {text!r}: expected STOP[@LAYER][:STEP]") from None
        bp = cls(**fields)
        implied = METRIC_STOP.get(bp.metric or "")
        if implied and bp.stop != implied:
            raise ValueError(f"bad breakpoint {text!r}: {bp.metric} is a property of the {implied} stop")
        if bp.token is not None and bp.stop != "sample":
            raise ValueError(f"bad breakpoint {text!r}: token= is a property of the sample stop")
        return bp

    def __str__(self) -> str:
        parts = []
        where = self.stop or ""
        if self.layer is not None:
            where += f"@{self.layer}"
        if self.step is not None:
            where += f":{self.step}"
        implied = (self.metric and METRIC_STOP[self.metric] == self.stop and self.layer is None and self.step is None) or (
            self.token is not None and self.layer is None and self.step is None
        )
        if where and not implied:
            parts.append(where)
        if self.token is not None:
            parts.append(f"token={self.token}")
        if self.metric == "slow":
            parts.append(f"slow{self.op}{self.value / 1e6:g}ms")
        elif self.metric == "slowx":
            parts.append(f"slow{self.op}{self.value:g}x")
        elif self.metric:
            parts.append(f"{self.metric}{self.op}{self.value:g}")
        return " ".join(parts)


class PeerTimes:
    """How long each stop took in the layers seen so far: the peers a `slow>3x` breakpoint compares with.

    Peers are the same stop in other layers of this step; until three of them have run, the
    previous step's (a decode step is compared with decode steps only, never the prefill).
    """

    MIN_PEERS = 3

    def __init__(self) -> None:
        self._step: int | None = None
        self._now: dict[str, list[int]] = {}
        self._prev: dict[str, list[int]] = {}

    def ratio(self, event: Event) -> float | None:
        if event.layer is None:
            return None
        peers = self._now.get(event.stop, [])
        if len(peers) < self.MIN_PEERS:
            peers = peers + self._prev.get(event.stop, [])
        if len(peers) < self.MIN_PEERS:
            return None
        mid = median(peers)
        return event.dur_ns / mid if mid > 0 else None

    def add(self, event: Event) -> None:
        if event.step != self._step:
            # the prefill's per-layer times say nothing about a decode step's
            self._prev = self._now if self._step not in (None, 0) else {}
            self._now, self._step = {}, event.step
        if event.layer is not None:
            self._now.setdefault(event.stop, []).append(event.dur_ns)

"""Diff two traces: where do two runs of a model part, and by how much?

    d = diff_traces(a, b, Tolerance(cos=0.999))
    d.first              # the first event, in execution order, beyond the tolerance (or None)
    d.stop_summaries()   # the worst of each metric per stop, across layers and steps
    d.reasons            # what could not be aligned, and why, one line each

Events are paired by (step, stop, layer, part); a tensor is compared when both events
carry it with the same shape: cosine, relative L2 and max |A−B|, accumulated in float64
over chunks, so no tensor is ever copied whole. A logits tensor also gets KL(A‖B) of the
softmax, the overlap of the top-10 and whether the top-1 agrees; integer tensors (ids,
bytes) must match exactly. The sampled token of every step is compared too.

"First" means execution order: step by step, and within a step the order in which A's
engine emitted its events (entry stops, then layer by layer in the schema's stop order,
then the exit stops). A layer-major order matters: a change in layer 2's attention output
reaches layer 3's norm before layer 2's residual is ever compared in stop-major order.

Both traces are read one step at a time through the `Trace` API (`steps`, `events`), so a
multi-GB trace file is never held in memory and an in-memory trace diffs the same way.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from traces.base import Trace
from traces.schema import STOP_ORDER, Event

CHUNK = 1 << 20  # elements per float64 pass: 8 MiB of scratch whatever the tensor's size
TOP_K = 10
# Scalars that say *what* an event computed on; they must match exactly.
IDENTITY = {"text": "text", "tokenize": "ids", "batch": "ids", "sample": "token"}
METRICS = ("cos", "rel_l2", "max_abs", "kl")  # the errors TensorDiff.error knows


@dataclass(frozen=True)
class Tolerance:
    """When two aligned events count as having parted. None switches a check off."""

    cos: float | None = 0.999  # cosine below this
    rel_l2: float | None = None  # ‖A−B‖ / ‖A‖ above this
    max_abs: float | None = None  # max |A−B| above this
    kl: float | None = None  # KL(A‖B) of the logits' softmax above this (nats)
    top1: bool = True  # the logits' argmax differs
    tokens: bool = True  # the sampled token differs

    def describe(self) -> str:
        parts = [f"cos ≥ {self.cos}" if self.cos is not None else ""]
        parts += [f"rel L2 ≤ {self.rel_l2:g}" if self.rel_l2 is not None else "",
                  f"max |Δ| ≤ {self.max_abs:g}" if self.max_abs is not None else "",
                  f"KL ≤ {self.kl:g}" if self.kl is not None else "",
                  "top-1" if self.top1 else "", "tokens" if self.tokens else ""]
        return " · ".join(p for p in parts if p) or "nothing"


@dataclass
class TensorDiff:
    """One tensor of one aligned pair of events."""

    name: str
    shape: tuple[int, ...]
    exact: bool  # integer or bool dtype: compared for equality, not closeness
    cos: float
    rel_l2: float
    max_abs: float
    n_diff: int  # elements that are not equal (NaN equals NaN here)
    n_nonfinite: int  # elements where one side is inf/NaN and the other is not the same
    kl: float | None = None  # logits only, from here down
    topk: float | None = None  # |top-10(A) ∩ top-10(B)| / 10, worst row
    top1: tuple[int, int] | None = None  # (argmax A, argmax B) of the first row that differs, else of the last
    ties: int = 0  # sampler candidate ids: places where the order differs only between near-tied logits

    @property
    def top1_match(self) -> bool | None:
        return None if self.top1 is None else self.top1[0] == self.top1[1]

    def error(self, metric: str) -> float | None:
        """The metric as an error (0 = identical, larger = further apart): 1 − cos, rel L2, max |Δ|, KL."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRICS)}")
        if metric == "cos":
            return 1.0 - self.cos
        return getattr(self, metric)


@dataclass
class EventDiff:
    """One (step, stop, layer, part) both traces hold."""

    step: int
    stop: str
    layer: int | None
    part: str
    tensors: list[TensorDiff] = field(default_factory=list)
    only_a: list[str] = field(default_factory=list)  # tensors A captured and B did not
    only_b: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)  # both, different shapes
    breach: Divergence | None = None  # the first check this pair fails

    def error(self, metric: str) -> float | None:
        """The worst error of any tensor of this event under `metric`; None if none has it."""
        values = [e for t in self.tensors if (e := t.error(metric)) is not None]
        return max(values) if values else None

    def where(self) -> str:
        return _where(self.step, self.stop, self.layer, self.part)


@dataclass
class Divergence:
    step: int
    stop: str
    layer: int | None
    part: str
    kind: str  # prompt, token, values, shape, nonfinite, cos, rel_l2, max_abs, kl, top1
    tensor: str  # the tensor (or scalar) that failed, "" for none
    detail: str  # one line, for a person

    def where(self) -> str:
        return _where(self.step, self.stop, self.layer, self.part)


@dataclass(frozen=True)
class Reason:
    """Something that could not be aligned. kind: length, incomplete, prompt, tokens, model, vocab, capture, shape."""

    kind: str
    text: str


@dataclass(frozen=True)
class TokenPair:
    step: int
    a: int | None  # None: that trace has no token at this step
    b: int | None

    @property
    def match(self) -> bool:
        return self.a is not None and self.a == self.b


@dataclass
class StopSummary:
    """The worst of each metric for one stop, across every layer and step compared."""

    stop: str
    events: int = 0
    tensors: int = 0
    min_cos: float | None = None
    max_rel_l2: float | None = None
    max_abs: float | None = None
    max_kl: float | None = None
    min_topk: float | None = None
    top1_match: int = 0
    top1_total: int = 0
    values_differ: int = 0  # exact (integer) tensors that differ
    breaches: int = 0
    worst: tuple[int, int | None] | None = None  # (step, layer) of the lowest cosine


@dataclass
class TraceDiff:
    tolerance: Tolerance
    a: dict  # a short description of each side: name, model, engine, steps
    b: dict
    steps: list[int]  # the steps both hold, compared
    tokens: list[TokenPair]
    events: list[EventDiff]
    reasons: list[Reason]
    first: Divergence | None
    _cells: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._cells = defaultdict(list)
        for e in self.events:
            self._cells[(e.step, e.stop, e.layer)].append(e)

    @property
    def same(self) -> bool:
        """Nothing beyond the tolerance, and nothing left out but tensors one side did not capture."""
        return self.first is None and all(r.kind == "capture" for r in self.reasons)

    def stops(self) -> list[str]:
        """The stops with at least one compared tensor, in the schema's order."""
        names = {e.stop for e in self.events if e.tensors}
        return sorted(names, key=STOP_ORDER.__getitem__)

    def at(self, step: int, stop: str, layer: int | None) -> list[EventDiff]:
        """The aligned events at one cell of the heatmap (several when the stop has parts)."""
        return self._cells.get((step, stop, layer), [])

    def stop_summaries(self) -> list[StopSummary]:
        out: dict[str, StopSummary] = {}
        for e in self.events:
            if not e.tensors and e.breach is None and e.stop not in IDENTITY:
                continue  # nothing of this event was compared (kv_write's slots, a stream chunk)
            s = out.setdefault(e.stop, StopSummary(e.stop))
            s.events += 1
            s.breaches += e.breach is not None
            for t in e.tensors:
                s.tensors += 1
                if t.exact:
                    s.values_differ += t.n_diff > 0
                    continue
                if s.min_cos is None or t.cos < s.min_cos:
                    s.min_cos, s.worst = t.cos, (e.step, e.layer)
                s.max_rel_l2 = _max(s.max_rel_l2, t.rel_l2)
                s.max_abs = _max(s.max_abs, t.max_abs)
                if t.kl is not None:
                    s.max_kl = _max(s.max_kl, t.kl)
                    s.min_topk = t.topk if s.min_topk is None else min(s.min_topk, t.topk)
                    s.top1_total += 1
                    s.top1_match += bool(t.top1_match)
        return sorted(out.values(), key=lambda s: STOP_ORDER[s.stop])

    def to_json(self) -> dict:
        """Everything, as JSON values (non-finite numbers as the strings "inf", "-inf", "nan")."""
        def event(e: EventDiff) -> dict:
            return {"step": e.step, "stop": e.stop, "layer": e.layer, "part": e.part,
                    "tensors": [_tensor_json(t) for t in e.tensors], "only_a": e.only_a, "only_b": e.only_b,
                    "shapes": {k: {"a": sa, "b": sb} for k, (sa, sb) in e.shapes.items()},
                    "breach": asdict(e.breach) if e.breach else None}

        stops = []
        for s in self.stop_summaries():
            row = asdict(s)
            row["worst"] = None if s.worst is None else {"step": s.worst[0], "layer": s.worst[1]}
            stops.append(row)
        return _finite({
            "version": 1,
            "same": self.same,
            "tolerance": asdict(self.tolerance),
            "a": self.a,
            "b": self.b,
            "steps": self.steps,
            "reasons": [asdict(r) for r in self.reasons],
            "first_divergence": asdict(self.first) if self.first else None,
            "tokens": [{"step": t.step, "a": t.a, "b": t.b, "match": t.match} for t in self.tokens],
            "stops": stops,
            "events": [event(e) for e in self.events],
        })


# Comparing two tensors -------------------------------------------------------------------------


def compare_tensors(name: str, a: np.ndarray, b: np.ndarray, logits: bool = False) -> TensorDiff:
    """Metrics of two same-shape tensors, in float64, one chunk at a time."""
    assert a.shape == b.shape
    exact = not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(b.dtype, np.floating))
    fa, fb = a.reshape(-1), b.reshape(-1)
    dot = na = nb = nd = peak = 0.0
    n_diff = n_nonfinite = 0
    for lo in range(0, fa.size, CHUNK):
        x = fa[lo:lo + CHUNK].astype(np.float64)
        y = fb[lo:lo + CHUNK].astype(np.float64)
        same = (x == y) | (np.isnan(x) & np.isnan(y))  # inf == inf: a masked logit on both sides
        finite = np.isfinite(x) & np.isfinite(y)
        n_diff += int(np.count_nonzero(~same))
        n_nonfinite += int(np.count_nonzero(~same & ~finite))
        x, y = x[finite], y[finite]
        d = x - y
        # einsum, not `@`: OpenBLAS's threaded dot took ~12 ms per 49k-vector call on 2 cores, einsum ~30 µs
        dot += float(np.einsum("i,i->", x, y))
        na += float(np.einsum("i,i->", x, x))
        nb += float(np.einsum("i,i->", y, y))
        nd += float(np.einsum("i,i->", d, d))
        if d.size:
            peak = max(peak, float(np.abs(d).max()))
    if na == 0.0 and nb == 0.0:
        cos = 1.0
    else:
        cos = dot / math.sqrt(na * nb) if na and nb else 0.0
    rel = math.sqrt(nd / na) if na else (0.0 if nd == 0.0 else math.inf)
    out = TensorDiff(name, tuple(a.shape), exact, min(1.0, cos), rel, peak, n_diff, n_nonfinite)
    if logits and not exact and a.size:
        out.kl, out.topk, out.top1 = _logit_metrics(a, b)
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    top = x.max()
    if not np.isfinite(top):
        return np.full_like(x, -math.inf)
    return x - (top + math.log(np.exp(x - top).sum()))


def _logit_metrics(a: np.ndarray, b: np.ndarray) -> tuple[float, float, tuple[int, int]]:
    """KL(A‖B) (worst row), top-k overlap (worst row), top-1 of the first row whose argmax differs."""
    rows_a = a.reshape(-1, a.shape[-1])
    rows_b = b.reshape(-1, b.shape[-1])
    kl, overlap, first_mismatch, last = 0.0, 1.0, None, (0, 0)
    k = min(TOP_K, rows_a.shape[1])
    for x, y in zip(rows_a, rows_b):
        la, lb = _log_softmax(x), _log_softmax(y)
        pa = np.exp(la)
        live = pa > 0
        with np.errstate(invalid="ignore"):  # −inf − −inf where A has no mass: masked out below
            terms = pa[live] * (la[live] - lb[live])
        kl = max(kl, float(terms.sum()) if terms.size else 0.0)
        top_a = set(np.argpartition(-la, k - 1)[:k].tolist())
        top_b = set(np.argpartition(-lb, k - 1)[:k].tolist())
        overlap = min(overlap, len(top_a & top_b) / k)
        last = (int(np.argmax(la)), int(np.argmax(lb)))
        if first_mismatch is None and last[0] != last[1]:
            first_mismatch = last
    return max(0.0, kl), overlap, first_mismatch or last


# Aligning two traces ---------------------------------------------------------------------------


def diff_traces(a: Trace, b: Trace, tolerance: Tolerance | None = None) -> TraceDiff:
    """Align `a` and `b` step by step and compare every event both hold."""
    tol = tolerance or Tolerance()
    steps_a, steps_b = list(a.steps), list(b.steps)
    in_a, in_b = set(steps_a), set(steps_b)
    common = [s for s in steps_a if s in in_b]
    reasons = _structure_reasons(a, b, steps_a, steps_b)

    events: list[EventDiff] = []
    first: Divergence | None = None
    only: dict[str, Counter] = {"A": Counter(), "B": Counter()}  # stop -> events one side lacks
    only_where: dict[tuple[str, str], list[tuple[int, int | None]]] = defaultdict(list)
    stops_seen = {"A": set(), "B": set()}
    tensors_missing: dict[tuple[str, str, str], int] = Counter()  # (side lacking, stop, tensor)
    shapes: dict[tuple[str, str], tuple[int, tuple]] = {}
    tokens: dict[int, list[int | None]] = {}

    for step in sorted(in_a | in_b):
        ev_a = a.events(step) if step in in_a else []
        ev_b = b.events(step) if step in in_b else []
        for side, evs in (("a", ev_a), ("b", ev_b)):
            for e in evs:
                if e.stop == "sample" and e.part == "" and "token" in e.scalars:
                    tokens.setdefault(step, [None, None])[side == "b"] = int(e.scalars["token"])
        if not (ev_a and ev_b):
            continue
        stops_seen["A"].update(e.stop for e in ev_a)
        stops_seen["B"].update(e.stop for e in ev_b)
        by_key: dict[tuple, list[Event]] = defaultdict(list)
        for e in ev_b:
            by_key[e.key].append(e)
        used: Counter = Counter()
        for ea in ev_a:  # A's emission order is the execution order
            candidates = by_key.get(ea.key, [])
            n = used[ea.key]
            if n >= len(candidates):
                only["B"][ea.stop] += 1
                only_where[("B", ea.stop)].append((step, ea.layer))
                continue
            used[ea.key] += 1
            ed = _compare_events(ea, candidates[n], a, b, tol)
            for name in ed.only_a:
                tensors_missing[("B", ea.stop, name)] += 1
            for name in ed.only_b:
                tensors_missing[("A", ea.stop, name)] += 1
            for name, (sa, sb) in ed.shapes.items():
                count, example = shapes.get((ea.stop, name), (0, None))
                shapes[(ea.stop, name)] = (count + 1, example or (step, ea.layer, sa, sb))
            events.append(ed)
            if first is None and ed.breach is not None:
                first = ed.breach
        for key, evs in by_key.items():
            for e in evs[used[key]:]:
                only["A"][e.stop] += 1
                only_where[("A", e.stop)].append((step, e.layer))

    reasons += _capture_reasons(only, only_where, stops_seen, tensors_missing, a.n_layer, b.n_layer)
    n_a, n_b = len(a.prompt_ids()), len(b.prompt_ids())
    if shapes and n_a != n_b:  # every tensor with a token axis differs: one line, not one per tensor
        count = sum(c for c, _ in shapes.values())
        names = ", ".join(f"{stop}.{name}" for stop, name in shapes)
        reasons.append(Reason("shape", f"the prompts have {n_a} and {n_b} tokens: {count} tensors of "
                                       f"different shapes not compared ({names})"))
    else:
        for (stop, name), (count, (step, layer, sa, sb)) in shapes.items():
            reasons.append(Reason("shape", f"{stop}.{name}: shapes differ in {count} event{'s' * (count != 1)} "
                                           f"(A {sa} vs B {sb} at {_where(step, stop, layer, '')})"))
    pairs = [TokenPair(s, *tokens[s]) for s in sorted(tokens)]
    differ = next((p.step for p in pairs if p.a is not None and p.b is not None and p.a != p.b), None)
    if differ is not None and any(s > differ for s in common):
        reasons.append(Reason("tokens", f"tokens differ from step {differ}: later steps compare different inputs"))
    return TraceDiff(tol, _describe(a), _describe(b), common, pairs, events, reasons, first)


def _compare_events(ea: Event, eb: Event, a: Trace, b: Trace, tol: Tolerance) -> EventDiff:
    ed = EventDiff(ea.step, ea.stop, ea.layer, ea.part)
    breach = _identity_breach(ea, eb, a, b, tol)
    names_b = set(eb.tensors)
    for name in ea.tensors:
        if name not in names_b:
            ed.only_a.append(name)
            continue
        ta, tb = ea.tensors[name], eb.tensors[name]
        if ta.shape != tb.shape:
            ed.shapes[name] = (list(ta.shape), list(tb.shape))
            breach = breach or _breach(ea, "shape", name, f"{name}: shape A {list(ta.shape)} vs B {list(tb.shape)}")
            continue
        td = compare_tensors(name, ta, tb, logits=ea.stop == "logits" and name == "logits")
        if ea.stop == "sample" and name == "ids" and td.n_diff:
            _forgive_ties(td, ta, tb, ea.tensors.get("logits"), eb.tensors.get("logits"))
        ed.tensors.append(td)
        breach = breach or _tensor_breach(ea, td, a, b, tol)
    ed.only_b = [n for n in eb.tensors if n not in ea.tensors]
    ed.breach = breach
    return ed


# Two engines whose logits differ by ~1e-5 may rank two near-tied tokens either way; the
# candidate list a sampler stage shows is then the same set in another order, which is no
# divergence (the drawn token is compared on its own). A place counts as a tie when the
# logits shown there agree within this much (relative, with the same floor in absolute).
TIE = 1e-4


def _forgive_ties(td: TensorDiff, ids_a: np.ndarray, ids_b: np.ndarray, la: np.ndarray | None,
                  lb: np.ndarray | None) -> None:
    """Move the places where a sampler stage's candidate ids differ only by near-tied logits
    from `n_diff` to `ties`."""
    if la is None or lb is None or la.shape != ids_a.shape or lb.shape != ids_b.shape:
        return
    differ = ids_a != ids_b
    x, y = la.astype(np.float64), lb.astype(np.float64)
    tied = differ & (np.abs(x - y) <= TIE * np.maximum(1.0, np.abs(x)))
    td.ties = int(np.count_nonzero(tied))
    td.n_diff -= td.ties


def _identity_breach(ea: Event, eb: Event, a: Trace, b: Trace, tol: Tolerance) -> Divergence | None:
    """The scalars that say what was computed on: prompt text and ids, batch ids, the sampled token."""
    key = IDENTITY.get(ea.stop)
    if key is None or key not in ea.scalars or key not in eb.scalars:
        return None
    va, vb = ea.scalars[key], eb.scalars[key]
    if va == vb:
        return None
    if ea.stop == "sample":
        if not tol.tokens or ea.part:
            return None
        return _breach(ea, "token", key, f"token differs: A {_token(a, va)} · B {_token(b, vb)}")
    at = _first_difference(va, vb)
    what = {"text": "prompt text differs from character", "tokenize": "prompt ids differ from position",
            "batch": "batch ids differ from position"}[ea.stop]
    sizes = f" (A {len(va)}, B {len(vb)})" if isinstance(va, (list, str)) and len(va) != len(vb) else ""
    return _breach(ea, "prompt", key, f"{what} {at}{sizes}")


def _tensor_breach(e: Event, t: TensorDiff, a: Trace, b: Trace, tol: Tolerance) -> Divergence | None:
    if t.exact:
        if t.n_diff:
            return _breach(e, "values", t.name, f"{t.name}: {t.n_diff} of {math.prod(t.shape)} values differ")
        return None
    if t.n_nonfinite:
        return _breach(e, "nonfinite", t.name, f"{t.name}: {t.n_nonfinite} values are inf/NaN on one side only")
    if tol.top1 and t.top1 is not None and t.top1[0] != t.top1[1]:  # first: it says more than a cosine
        return _breach(e, "top1", t.name, f"top-1 differs: A {_token(a, t.top1[0])} · B {_token(b, t.top1[1])}")
    if tol.cos is not None and t.cos < tol.cos:
        return _breach(e, "cos", t.name, f"{t.name}: cos {t.cos:.6f} < {tol.cos}")
    if tol.rel_l2 is not None and t.rel_l2 > tol.rel_l2:
        return _breach(e, "rel_l2", t.name, f"{t.name}: rel L2 {t.rel_l2:.3g} > {tol.rel_l2:g}")
    if tol.max_abs is not None and t.max_abs > tol.max_abs:
        return _breach(e, "max_abs", t.name, f"{t.name}: max |Δ| {t.max_abs:.3g} > {tol.max_abs:g}")
    if tol.kl is not None and t.kl is not None and t.kl > tol.kl:
        return _breach(e, "kl", t.name, f"{t.name}: KL {t.kl:.3g} > {tol.kl:g}")
    return None


def _breach(e: Event, kind: str, tensor: str, detail: str) -> Divergence:
    return Divergence(e.step, e.stop, e.layer, e.part, kind, tensor, detail)


# What cannot be aligned ------------------------------------------------------------------------


def _structure_reasons(a: Trace, b: Trace, steps_a: list[int], steps_b: list[int]) -> list[Reason]:
    out = []
    ma, mb = a.info.get("model", {}), b.info.get("model", {})
    keys = ("architecture", "n_layer", "n_embd", "n_head", "n_head_kv", "n_vocab")
    changed = [k for k in keys if ma.get(k) != mb.get(k)]
    if changed:
        def shape(m: dict) -> str:
            return ", ".join(f"{k} {m.get(k)}" for k in changed)
        out.append(Reason("model", f"models differ: A {shape(ma)}; B {shape(mb)}"))
    if a.pieces != b.pieces:
        out.append(Reason("vocab", "vocabularies differ: a token id may not be the same piece in A and B"))
    if steps_a != steps_b:
        out.append(Reason("length", f"B has {len(steps_b)} steps, A {len(steps_a)}: "
                                    f"only the {len(set(steps_a) & set(steps_b))} both hold are compared"))
    for name, t in (("A", a), ("B", b)):
        if not t.complete:
            out.append(Reason("incomplete", f"{name} is incomplete (its run was cut short)"))
    pa, pb = a.prompt_ids(), b.prompt_ids()
    if pa != pb:
        out.append(Reason("prompt", f"prompt ids differ from position {_first_difference(pa, pb)} "
                                    f"(A {len(pa)} tokens, B {len(pb)})"))
    return out


def _capture_reasons(only, only_where, stops_seen, tensors_missing, n_layer_a, n_layer_b) -> list[Reason]:
    out = []
    for lacking, other in (("B", "A"), ("A", "B")):
        n_layer_lacking = n_layer_b if lacking == "B" else n_layer_a
        deeper: dict[str, list[str]] = defaultdict(list)  # layers the other model has and this one lacks -> stops
        for stop, count in sorted(only[lacking].items(), key=lambda kv: STOP_ORDER[kv[0]]):
            where = only_where[(lacking, stop)]
            if stop not in stops_seen[lacking]:
                out.append(Reason("capture", f"{stop} not captured in {lacking}"))
                continue
            layers = sorted({layer for _, layer in where if layer is not None})
            if n_layer_lacking and layers and layers[0] >= n_layer_lacking:
                deeper[_span(layers)].append(stop)
                continue
            steps = sorted({step for step, _ in where})
            text = f"{stop}: {count} event{'s' * (count != 1)} only in {other} (steps {_span(steps)}"
            out.append(Reason("capture", text + (f", layers {_span(layers)})" if layers else ")")))
        for span, stops in deeper.items():
            out.append(Reason("model", f"layers {span} of {other} have no counterpart ({lacking} has "
                                       f"{n_layer_lacking} layers): {', '.join(stops)} not compared there"))
    for (lacking, stop, name), count in tensors_missing.items():
        out.append(Reason("capture", f"{stop}.{name} not captured in {lacking} ({count} event{'s' * (count != 1)})"))
    return out


def describe_side(side: dict) -> str:
    """`a.trace · SmolLM2 · torch llamacpp float32 · 8 steps`, from TraceDiff.a or .b."""
    engine = " ".join(str(side[k]) for k in ("engine", "numerics", "dtype") if side.get(k))
    model = side.get("model") if side.get("model") != side.get("name") else None
    parts = [side.get("name"), model, engine, f"{side.get('steps')} steps"]
    if not side.get("complete", True):
        parts.append("incomplete")
    return " · ".join(str(p) for p in parts if p)


def _describe(t: Trace) -> dict:
    model, engine = t.info.get("model", {}), t.info.get("engine", {})
    return {
        "name": str(getattr(t, "path", "") or model.get("name") or "trace"),
        "model": model.get("name"),
        "n_layer": model.get("n_layer"),
        "engine": engine.get("name"),
        "numerics": engine.get("numerics"),
        "dtype": engine.get("dtype"),
        "steps": len(t.steps),
        "complete": t.complete,
    }


# Small helpers ---------------------------------------------------------------------------------


def _where(step: int, stop: str, layer: int | None, part: str) -> str:
    out = f"step {step} · {stop}"
    if layer is not None:
        out += f" · layer {layer}"
    return out + (f" · {part}" if part else "")


def _first_difference(x, y) -> int:
    """The first index at which two sequences differ (the shorter one's length if one is a prefix)."""
    if not isinstance(x, (list, str)) or not isinstance(y, (list, str)):
        return 0
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return i
    return min(len(x), len(y))


def _token(t: Trace, token_id) -> str:
    return f"{token_id} {t.piece(token_id)!r}" if isinstance(token_id, int) else repr(token_id)


def _span(values: list[int]) -> str:
    """`0–3, 5, 7–9`: sorted integers as ranges."""
    out, start, prev = [], None, None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            out.append(f"{start}" if start == prev else f"{start}–{prev}")
            start = prev = v
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}–{prev}")
    return ", ".join(out)


def _tensor_json(t: TensorDiff) -> dict:
    out = asdict(t)
    out["top1_match"] = t.top1_match
    return out


def _max(x: float | None, y: float) -> float:
    return y if x is None else max(x, y)


def _finite(value):
    """JSON has no inf or NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value

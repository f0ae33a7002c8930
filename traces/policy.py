"""The capture policy: which stops a run emits, and what the recorder keeps of each tensor.

    --capture default                          every stop; at prefill, the last rows that fit
    --capture full                             every stop, every row, every head
    --capture minimal                          logits, tokens and every stop's timing
    --capture "attn,logits@0-3;heads=0-1;dtype=f16"

A spec is terms joined by `;` (docs/TRACE_FORMAT.md, "Capture policy"):

    PRESET               minimal | default | full, first or not at all; later terms change it
    STOPS[@LAYERS]       keep these stops with their tensors (`all` = every stop); a per-layer
                         stop only at LAYERS: `3`, `0-3` (inclusive), `20-` (to the last), comma-joined
    timings              emit every other stop too, for its timing and scalars, without tensors
    heads=A-B | all      per-head tensors keep query heads A..B (k and v: the KV heads those read)
    rows=N | auto | all  tensors with a token axis keep their last N rows (queries, for attention);
                         auto (unless a preset says otherwise): as many as keep the prefill
                         within a quarter of the size budget
    dtype=auto|f32|f16   how float tensors are stored (auto: as the engine made them)

The spine -- text, tokenize, batch, sample, grammar, stop, stream -- is always emitted with its small
tensors: without it a trace has no tokens and no text, and replay has nothing to hang views on.
(grammar is emitted only by a run with --grammar/--json-schema: its mask is vocab/8 bytes a step.)

The policy sets the hook bus's filter (what is emitted at all) and shapes each tensor in the
recorder (traces/writer.py, traces/live.py), never in the engine. `step_bytes` is the size
arithmetic the defaults were chosen by; the doc's table is its output for an 8B shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from traces.schema import STOP_BY_NAME, STOPS

GiB = 1 << 30
DEFAULT_MAX_BYTES = 1 * GiB  # --max-trace-size when none is given
SPINE = ("text", "tokenize", "batch", "sample", "grammar", "stop", "stream")
PRESETS = {
    "minimal": "logits;timings",
    "default": "all;rows=auto",
    "full": "all;rows=all",
}
PREFILL_SHARE = 4  # rows=auto: the prefill may take 1/PREFILL_SHARE of the budget; decode steps get the rest
SAMPLE_SHOWN = 256  # candidates a sample stage keeps (engine/sampler.py SHOWN): ids i32, probs f32, logits f32

# Which axis of a stop's tensors runs over this step's tokens (attention: its queries), and
# which over heads. From the shapes traces/schema.py documents; a stop not listed has neither.
TOKEN_AXIS = {"embed": 0, "attn_norm": 0, "qkv": 0, "rope": 0, "mla": 0, "attn": 1,
              "attn_out": 0, "ffn_norm": 0, "moe": 0, "ffn_out": 0, "residual": 0}
HEAD_AXIS = {("qkv", "q"): 1, ("qkv", "k"): 1, ("qkv", "v"): 1,
             ("rope", "q"): 1, ("rope", "k"): 1, ("attn", "weights"): 0}
KV_TENSORS = {"k", "v"}  # their head axis counts KV heads, not query heads

Ranges = tuple[tuple[int, "int | None"], ...]  # inclusive (first, last); last None = to the end


class CaptureError(ValueError):
    """A --capture spec or --max-trace-size that cannot be used; one line."""


@dataclass(frozen=True)
class CapturePolicy:
    spec: str = ""
    stops: dict[str, Ranges | None] = field(default_factory=dict)  # kept with tensors; None = every layer
    timings: bool = False  # the other stops are emitted too, without tensors
    heads: tuple[int, int] | None = None  # inclusive query-head range; None = all
    rows: int | str | None = None  # None = all rows; "auto" until `bind` sizes it
    dtype: str = "auto"
    group: int = 0  # query heads per KV head, from the model (`bind`); 0 = read it off the event

    # -- the bus filter -------------------------------------------------------------

    def wants(self, stop: str, layer: int | None = None) -> bool:
        """HookBus.set_filter: is this stop emitted at all."""
        return self.timings or self.keeps_tensors(stop, layer)

    def keeps_tensors(self, stop: str, layer: int | None = None) -> bool:
        if stop not in self.stops:
            return False
        ranges = self.stops[stop]
        return ranges is None or layer is None or _in(layer, ranges)

    # -- the recorder -----------------------------------------------------------------

    def shape(self, stop: str, tensors: dict) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
        """The tensors as they are kept: rows, heads and dtype applied. Also, for each tensor that
        was cut, (origin, full shape): the kept block is full[origin[i] : origin[i] + shape[i]]."""
        out, cuts = {}, {}
        token_axis = TOKEN_AXIS.get(stop)
        group = self.group or _group(tensors)
        for name, arr in tensors.items():
            arr = np.asarray(arr)
            index = [slice(None)] * arr.ndim
            # e.g. attn weights [n_head, T_q, T_k]: queries on axis 1, heads on axis 0; q [T, n_head, hd]
            if isinstance(self.rows, int) and token_axis is not None and token_axis < arr.ndim:  # auto unbound: all
                n = arr.shape[token_axis]
                index[token_axis] = slice(max(0, n - self.rows), n)  # the last rows: the newest tokens
            head_axis = HEAD_AXIS.get((stop, name))
            if self.heads is not None and head_axis is not None and head_axis < arr.ndim:
                first, last = self.heads
                if name in KV_TENSORS:
                    first, last = first // group, last // group
                index[head_axis] = slice(first, min(last + 1, arr.shape[head_axis]))
            kept = arr[tuple(index)]
            if kept.shape != arr.shape:
                cuts[name] = (tuple(cut.indices(size)[0] for cut, size in zip(index, arr.shape)), arr.shape)
            else:
                kept = arr  # nothing cut: the array itself, no view to copy later
            out[name] = _as_dtype(kept, self.dtype)
        return out, cuts

    # -- binding to a model -------------------------------------------------------------

    def bind(self, model: dict, n_prompt: int, max_bytes: int | None, itemsize: int = 4) -> CapturePolicy:
        """Check layers and heads against the model; size rows=auto for this prompt and budget."""
        n_layer, n_head = int(model.get("n_layer") or 0), int(model.get("n_head") or 0)
        n_kv = int(model.get("n_head_kv") or n_head)
        for stop, ranges in self.stops.items():
            for first, last in ranges or ():
                if n_layer and max(first, last or 0) >= n_layer:
                    raise CaptureError(f"capture: {stop}@{_show_range(first, last)}: the model has "
                                       f"{n_layer} layers (0-{n_layer - 1})")
        if self.heads is not None and n_head and self.heads[1] >= n_head:
            raise CaptureError(f"capture: heads={_show_range(*self.heads)}: the model has {n_head} "
                               f"heads (0-{n_head - 1})")
        policy = replace(self, group=max(1, n_head // n_kv) if n_head and n_kv else 0)
        if self.rows == "auto":
            policy = replace(policy, rows=auto_rows(policy, model, n_prompt, max_bytes, itemsize))
        return policy

    # -- what the trace says about it ---------------------------------------------------

    def describe(self, max_bytes: int | None) -> dict:
        """The `capture` section of a trace's info."""
        return {
            "spec": self.spec,
            "stops": {s: None if r is None else [[a, b] for a, b in r] for s, r in self.stops.items()},
            "timings": self.timings,
            "heads": None if self.heads is None else list(self.heads),
            "rows": self.rows,
            "dtype": self.dtype,
            "max_bytes": max_bytes,
        }


def summary(capture: dict) -> str:
    """One line for a trace's `capture` section (as `describe` wrote it, or any other writer's)."""
    if not isinstance(capture, dict) or "stops" not in capture:
        return ", ".join(f"{k} {v}" for k, v in capture.items()) if isinstance(capture, dict) else str(capture)
    stops = capture.get("stops") or {}
    every = all(s.name in stops and stops[s.name] is None for s in STOPS)
    named = [s for s in stops if s not in SPINE]
    what = "every stop" if every else (", ".join(
        s + ("" if stops[s] is None else "@" + ",".join(_show_range(a, b) for a, b in stops[s])) for s in named)
        or "tokens only")
    parts = [f"{capture.get('spec', '?')}: {what}"]
    if capture.get("timings") and not every:
        parts.append("timings of every stop")
    rows = capture.get("rows")
    parts.append("every row" if rows is None else f"last {rows} rows at prefill")
    if capture.get("heads") is not None:
        parts.append(f"heads {_show_range(*capture['heads'])}")
    parts.append(f"dtype {capture.get('dtype', 'auto')}")
    budget = capture.get("max_bytes")
    parts.append("no size budget" if budget is None else f"budget {format_size(budget)}")
    return " · ".join(parts)


# -- parsing -------------------------------------------------------------------------------

RANGE = re.compile(r"(\d+)(?:-(\d*))?")
DTYPE_NAMES = {"auto": "auto", "f32": "f32", "float32": "f32", "f16": "f16", "float16": "f16"}


def parse(spec: str) -> CapturePolicy:
    """A policy from a --capture spec; CaptureError (one line) if it is not one."""
    terms = [t.strip() for t in spec.split(";")]
    if not spec.strip() or "" in terms:
        raise CaptureError(f"capture: empty term in {spec!r} (terms are joined by ';')")
    policy = CapturePolicy(spec=spec, stops={s: None for s in SPINE}, rows="auto")
    if terms[0] in PRESETS:
        policy = replace(_terms(policy, PRESETS[terms[0]].split(";")), spec=spec)
        terms = terms[1:]
    return _terms(policy, terms)


def _terms(policy: CapturePolicy, terms: list[str]) -> CapturePolicy:
    stops = dict(policy.stops)
    for term in terms:
        if term in PRESETS:
            raise CaptureError(f"capture: preset {term!r} must be the first term")
        if term == "timings":
            policy = replace(policy, timings=True)
        elif "=" in term:
            policy = _setting(policy, *(x.strip() for x in term.split("=", 1)))
        else:
            names, _, layers = term.partition("@")
            ranges = _layers(layers, term) if "@" in term else None
            for name in (n.strip() for n in names.split(",")):
                for stop in ([s.name for s in STOPS] if name == "all" else [_stop(name)]):
                    r = ranges if STOP_BY_NAME[stop].per_layer else None  # layers mean nothing to logits
                    if r is None or (stop in stops and stops[stop] is None):
                        stops[stop] = None  # every layer
                    else:
                        stops[stop] = stops.get(stop, ()) + r
    return replace(policy, stops=stops)


def _stop(name: str) -> str:
    if name not in STOP_BY_NAME:
        raise CaptureError(f"capture: unknown stop {name!r} (stops: {', '.join(STOP_BY_NAME)}, or all; "
                           f"presets: {', '.join(PRESETS)})")
    return name


def _layers(text: str, term: str) -> Ranges:
    out = []
    for part in text.split(","):
        m = RANGE.fullmatch(part.strip())
        if not m:
            raise CaptureError(f"capture: {term!r}: layers are N, N-M or N- joined by commas, not {part.strip()!r}")
        first = int(m[1])
        last = first if m[2] is None else (int(m[2]) if m[2] else None)
        if last is not None and last < first:
            raise CaptureError(f"capture: {term!r}: range {part.strip()} runs backwards")
        out.append((first, last))
    return tuple(out)


def _setting(policy: CapturePolicy, key: str, value: str) -> CapturePolicy:
    if key == "heads":
        if value == "all":
            return replace(policy, heads=None)
        m = RANGE.fullmatch(value)
        if not m or m[2] == "":
            raise CaptureError(f"capture: heads={value}: give a head or a range A-B, or all")
        first, last = int(m[1]), int(m[2] or m[1])
        if last < first:
            raise CaptureError(f"capture: heads={value}: range runs backwards")
        return replace(policy, heads=(first, last))
    if key == "rows":
        if value in ("all", "auto"):
            return replace(policy, rows=None if value == "all" else "auto")
        if not value.isdigit() or int(value) < 1:
            raise CaptureError(f"capture: rows={value}: give a count of at least 1, auto or all")
        return replace(policy, rows=int(value))
    if key == "dtype":
        if value in ("bf16", "bfloat16"):
            raise CaptureError("capture: dtype=bf16: numpy has no bfloat16; f16 halves the bytes, "
                               "f32 holds bfloat16 values exactly")
        if value not in DTYPE_NAMES:
            raise CaptureError(f"capture: dtype={value}: auto, f32 or f16")
        return replace(policy, dtype=DTYPE_NAMES[value])
    raise CaptureError(f"capture: unknown setting {key!r} (heads, rows, dtype)")


def _in(layer: int, ranges: Ranges) -> bool:
    return any(first <= layer and (last is None or layer <= last) for first, last in ranges)


def _show_range(first: int, last: int | None) -> str:
    return f"{first}-" if last is None else str(first) if first == last else f"{first}-{last}"


def _group(tensors: dict) -> int:
    q, k = tensors.get("q"), tensors.get("k")
    if q is not None and k is not None and q.ndim == k.ndim == 3 and k.shape[1]:
        return max(1, q.shape[1] // k.shape[1])
    return 1


def _as_dtype(arr: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "f16" and arr.dtype.kind == "f" and arr.itemsize > 2:
        return arr.astype(np.float16)  # beyond ±65504 becomes ±inf: f16 is for looking, f32 for diffing
    if dtype == "f32" and arr.dtype.kind == "f" and arr.itemsize != 4:
        return arr.astype(np.float32)
    return arr


# -- sizes ---------------------------------------------------------------------------------

SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)


def parse_size(text: str) -> int | None:
    """--max-trace-size: 2G, 500M, 1.5GiB, 4096 (bytes; units are powers of 1024), or none."""
    if text.strip().lower() in ("none", "off", "unlimited"):
        return None
    m = SIZE.fullmatch(text.strip())
    if not m:
        raise CaptureError(f"--max-trace-size {text!r}: give a size such as 2G or 500M, or none")
    n = int(float(m[1]) * 1024 ** " kmgt".index(m[2].lower() or " "))
    if n < 1 << 20:
        raise CaptureError(f"--max-trace-size {text!r}: at least 1M (the info record alone can be megabytes)")
    return n


def format_size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


def step_bytes(policy: CapturePolicy, model: dict, n_tokens: int, n_keys: int, itemsize: int = 4) -> dict[str, int]:
    """Tensor bytes one step records, per stop over all layers, for a llama-shaped model: `n_tokens`
    run this step (the prompt at prefill, 1 after), attending to `n_keys` cached positions. Gemma 3
    adds a post-norm [T, d] to attn_out and ffn_out; other stops carry scalars only."""
    d, n_layer, vocab = int(model["n_embd"]), int(model["n_layer"]), int(model["n_vocab"])
    n_head = int(model["n_head"])
    n_kv, hd = int(model.get("n_head_kv") or n_head), int(model.get("head_dim") or d // n_head)
    if policy.heads is not None:
        group = max(1, n_head // n_kv)
        first, last = policy.heads
        n_head, n_kv = last - first + 1, last // group - first // group + 1
    t = n_tokens if policy.rows in (None, "auto") else min(n_tokens, int(policy.rows))  # auto: as if unbound
    f = 2 if policy.dtype == "f16" else itemsize if policy.dtype == "auto" else 4
    per_layer = {
        "attn_norm": t * d * f,
        "qkv": t * (n_head + 2 * n_kv) * hd * f,
        "rope": t * (n_head + n_kv) * hd * f,
        "attn": n_head * t * n_keys * f,
        "attn_out": t * d * f, "ffn_norm": t * d * f, "ffn_out": t * d * f, "residual": t * d * f,
    }
    out = {stop: nbytes * sum(policy.keeps_tensors(stop, il) for il in range(n_layer))
           for stop, nbytes in per_layer.items()}
    out["embed"] = t * d * f if policy.keeps_tensors("embed") else 0
    out["logits"] = vocab * (2 if policy.dtype == "f16" else 4) if policy.keeps_tensors("logits") else 0  # always f32
    out["sample"] = 7 * min(vocab, SAMPLE_SHOWN) * 12  # six stages and the draw: the spine, always kept
    return {stop: n for stop, n in out.items() if n}


def auto_rows(policy: CapturePolicy, model: dict, n_prompt: int, max_bytes: int | None,
              itemsize: int = 4) -> int | None:
    """rows=auto: the most prefill rows whose tensors fit 1/PREFILL_SHARE of the budget (at least 1).
    None (every row) with no budget or when the whole prefill fits."""
    if max_bytes is None or not all(model.get(k) for k in ("n_embd", "n_layer", "n_vocab", "n_head")):
        return None
    allowed = max_bytes // PREFILL_SHARE

    def size(rows: int | None) -> int:
        return sum(step_bytes(replace(policy, rows=rows), model, n_prompt, n_prompt, itemsize).values())

    if size(None) <= allowed:
        return None
    lo, hi = 1, max(1, n_prompt)  # size grows with rows: the largest that fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if size(mid) <= allowed else (lo, mid - 1)
    return lo


# -- the arithmetic in docs/TRACE_FORMAT.md ---------------------------------------------------

LLAMA_8B = {"n_layer": 32, "n_head": 32, "n_head_kv": 8, "n_embd": 4096, "head_dim": 128, "n_ff": 14336,
            "n_vocab": 128256}


def size_table(model: dict = LLAMA_8B, n_ctx: int = 4096, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    """The doc's table: tensor bytes per stop for a full prefill of `n_ctx` tokens, the default
    preset's prefill, and one decode step attending to `n_ctx` keys."""
    full = parse("full")
    default = parse("default").bind(model, n_ctx, max_bytes)
    columns = [step_bytes(full, model, n_ctx, n_ctx), step_bytes(default, model, n_ctx, n_ctx),
               step_bytes(full, model, 1, n_ctx)]
    head = ["stop", f"full prefill, {n_ctx} tokens", f"default prefill (rows={default.rows})",
            f"one decode step, {n_ctx} keys"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---:|---:|"]
    for s in STOPS:
        if any(s.name in c for c in columns):
            lines.append(f"| {s.name} | " + " | ".join(format_size(c.get(s.name, 0)) for c in columns) + " |")
    lines.append("| **total** | " + " | ".join(f"**{format_size(sum(c.values()))}**" for c in columns) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(size_table())

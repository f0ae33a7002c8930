"""Exports of a trace: its timing for Perfetto / chrome://tracing, its tensors for numpy.

    write_perfetto(trace, "run.json")                    Chrome trace-event JSON
    write_npz(trace, "run.npz", [parse_select("attn@0-3:5")])
    write_npy(trace, "tensors/", selects)                one .npy per tensor

**Perfetto.** The JSON object format of Chrome's trace events: one complete event
(`"ph": "X"`) per trace event, `ts`/`dur` in µs (fractional: the trace has ns) from its
`t_start_ns`/`dur_ns`, counted from the run's first event. One process (`pid` 1) is the
run; its tracks (`tid`) are the layers (`tid` = layer), one track per phase for the
stops outside the layers (entry, exit, protocol) and a `steps` track with one slice per
step. Metadata events (`"ph": "M"`) name the process and the tracks and sort them in
execution order. An event's `args` hold its step, layer, part, its tensors' shapes and
the scalars whose JSON is short.

**numpy.** Tensors are keyed `step5.attn.L3.weights` (`step{S}.{stop}[.L{layer}][.{part}].{name}`),
with anything in a part or tensor name outside `[A-Za-z0-9_-]` replaced by `_`, so a
hostile trace cannot name a path. Written with `allow_pickle=False`: an object array
cannot go in. Both writers go step by step and tensor by tensor, so the whole trace is
never in memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from traces.base import Trace
from traces.schema import STOP_BY_NAME, Event

PID = 1
STEPS_TID = 10_000
PHASE_TID = {"entry": 10_001, "exit": 10_002, "protocol": 10_003, "production": 10_004}
MAX_ARG_CHARS = 200  # a scalar whose JSON is longer stays out of `args` (merges, vocab-sized lists)


class ExportError(ValueError):
    """A bad selection or an export that cannot be written; the message says which, in one line."""


# Perfetto / chrome://tracing --------------------------------------------------------------------


def _track(event: Event) -> int:
    if event.layer is not None:
        return event.layer
    return PHASE_TID.get(STOP_BY_NAME[event.stop].phase, PHASE_TID["protocol"])


def _args(event: Event) -> dict:
    args: dict = {"step": event.step, "seq": event.seq}
    if event.layer is not None:
        args["layer"] = event.layer
    if event.part:
        args["part"] = event.part
    if event.tensors:
        args["tensors"] = {name: _shape(event, name) for name in event.tensors}
    for key, value in event.scalars.items():
        value = _json_safe(value)
        try:
            text = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue  # not a JSON value (an in-memory trace may hold anything): leave it out
        if len(text) <= MAX_ARG_CHARS:
            args[key] = value
    return args


def _shape(event: Event, name: str) -> str:
    specs = getattr(event.tensors, "specs", None)  # a file trace knows shapes without reading the bytes
    if specs is not None:
        spec = specs[name]
        return f"{spec.dtype}{list(spec.shape)}"
    array = event.tensors[name]
    return f"{array.dtype}{list(array.shape)}"


def perfetto_events(trace: Trace) -> Iterator[dict]:
    """The trace events, one step at a time: X slices as they come, then the metadata naming the tracks."""
    t0 = None
    tracks: set[int] = set()
    for step in trace.steps:
        events = trace.events(step)
        if not events:
            continue
        if t0 is None:
            t0 = events[0].t_start_ns
        for e in events:
            tid = _track(e)
            tracks.add(tid)
            yield {"name": e.stop + (f" {e.part}" if e.part else ""), "cat": STOP_BY_NAME[e.stop].phase,
                   "ph": "X", "ts": (e.t_start_ns - t0) / 1e3, "dur": e.dur_ns / 1e3, "pid": PID, "tid": tid,
                   "args": _args(e)}
        start = min(e.t_start_ns for e in events)
        end = max(e.t_start_ns + e.dur_ns for e in events)
        tracks.add(STEPS_TID)
        yield {"name": f"step {step} " + ("prefill" if step == 0 else "decode"), "cat": "step", "ph": "X",
               "ts": (start - t0) / 1e3, "dur": (end - start) / 1e3, "pid": PID, "tid": STEPS_TID,
               "args": {"step": step, "events": len(events)}}

    model, engine = trace.info.get("model", {}), trace.info.get("engine", {})
    name = " · ".join(str(p) for p in (model.get("name"), engine.get("name"), engine.get("numerics")) if p)
    yield {"name": "process_name", "ph": "M", "pid": PID, "tid": 0, "args": {"name": name or "llm-inspect run"}}
    names = {STEPS_TID: "steps", **{tid: phase for phase, tid in PHASE_TID.items()}}
    order = {STEPS_TID: -3, PHASE_TID["entry"]: -2, PHASE_TID["exit"]: 1 << 20, PHASE_TID["protocol"]: (1 << 20) + 1,
             PHASE_TID["production"]: (1 << 20) + 2}
    for tid in sorted(tracks):
        yield {"name": "thread_name", "ph": "M", "pid": PID, "tid": tid, "args": {"name": names.get(tid, f"layer {tid}")}}
        yield {"name": "thread_sort_index", "ph": "M", "pid": PID, "tid": tid, "args": {"sort_index": order.get(tid, tid)}}


def write_perfetto(trace: Trace, path) -> int:
    """Write the JSON, one event per line as it is made; returns the number of events."""
    n = 0
    model, engine = trace.info.get("model", {}), trace.info.get("engine", {})
    other = {"model": model.get("name"), "engine": engine.get("name"), "numerics": engine.get("numerics"),
             "prompt": trace.info.get("prompt")}
    with _atomic(path, "w", encoding="utf-8") as f:
        f.write('{"displayTimeUnit": "ns", "otherData": ' + json.dumps(_json_safe(other)) + ', "traceEvents": [\n')
        for event in perfetto_events(trace):
            f.write((",\n" if n else "") + json.dumps(event, allow_nan=False))
            n += 1
        f.write("\n]}\n")
    return n


# numpy ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Select:
    """`STOP[.TENSOR][@LAYERS][:STEPS]`: `attn@0-3:5`, `qkv.k@2`, `logits:0,4-7`, `*:3`."""

    stop: str | None  # None: every stop
    tensor: str | None = None
    layers: frozenset[int] | None = None
    steps: frozenset[int] | None = None

    def matches(self, event: Event, name: str) -> bool:
        return ((self.stop is None or event.stop == self.stop)
                and (self.tensor is None or name == self.tensor)
                and (self.layers is None or event.layer in self.layers)
                and (self.steps is None or event.step in self.steps))


_SELECT = re.compile(r"^(\*|[a-z_]+)(?:\.([\w-]+))?(?:@([\d,\-]+))?(?::([\d,\-]+))?$")


def parse_select(text: str) -> Select:
    m = _SELECT.match(text.strip())
    if not m:
        raise ExportError(f"bad --select {text!r}: expected STOP[.TENSOR][@LAYERS][:STEPS], e.g. attn@0-3:5")
    stop, tensor, layers, steps = m.groups()
    if stop != "*" and stop not in STOP_BY_NAME:
        raise ExportError(f"bad --select {text!r}: unknown stop {stop!r}; known stops: {', '.join(STOP_BY_NAME)}")
    return Select(None if stop == "*" else stop, tensor, _numbers(layers, text), _numbers(steps, text))


def _numbers(spec: str | None, text: str) -> frozenset[int] | None:
    """`0-3,5` → {0, 1, 2, 3, 5}."""
    if spec is None:
        return None
    out: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ExportError(f"bad --select {text!r}: {part!r} is not a number or a range like 0-3")
        a, b = int(lo), int(hi) if sep else int(lo)
        if b < a:
            raise ExportError(f"bad --select {text!r}: range {part!r} runs backwards")
        if b - a > 1_000_000:
            raise ExportError(f"bad --select {text!r}: range {part!r} is too long")
        out.update(range(a, b + 1))
    return frozenset(out)


def tensor_key(event: Event, name: str) -> str:
    key = f"step{event.step}.{event.stop}"
    if event.layer is not None:
        key += f".L{event.layer}"
    if event.part:
        key += "." + _safe(event.part)
    return f"{key}.{_safe(name)}"


def selected_tensors(trace: Trace, selects: list[Select] | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """(key, array) for every tensor a select matches (all of them when there is none), step by step."""
    for step in trace.steps:
        seen: dict[str, int] = {}
        for event in trace.events(step):
            for name in event.tensors:
                if selects and not any(s.matches(event, name) for s in selects):
                    continue
                key = tensor_key(event, name)
                n = seen[key] = seen.get(key, 0) + 1
                array = np.asarray(event.tensors[name])
                if array.dtype.hasobject:
                    raise ExportError(f"{key}: an object array cannot be exported without pickle")
                yield (key if n == 1 else f"{key}#{n}"), array


def write_npz(trace: Trace, path, selects: list[Select] | None = None) -> tuple[int, int]:
    """An .npz (uncompressed, as np.savez writes) of the selected tensors; returns (count, bytes of data)."""
    count = nbytes = 0
    with _atomic(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, array in selected_tensors(trace, selects):
            with zf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            count += 1
            nbytes += array.nbytes
        if not count:
            raise ExportError("the selection matched no tensor in this trace")
    return count, nbytes


def write_npy(trace: Trace, directory, selects: list[Select] | None = None) -> tuple[int, int]:
    """One `KEY.npy` per selected tensor in `directory` (made if missing); returns (count, bytes of data)."""
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a directory")
    count = nbytes = 0
    for key, array in selected_tensors(trace, selects):
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / f"{key}.npy", np.ascontiguousarray(array), allow_pickle=False)
        count += 1
        nbytes += array.nbytes
    if not count:
        raise ExportError("the selection matched no tensor in this trace")
    return count, nbytes


# Helpers ------------------------------------------------------------------------------------------


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


def _json_safe(value):
    """Scalars as strict JSON: inf and NaN become strings, tuples lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class _atomic:
    """Open `path.part` for writing; rename it to `path` when the block ends cleanly, remove it otherwise."""

    def __init__(self, path, mode: str, **kwargs) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.file = open(self.part, mode, **kwargs)

    def __enter__(self):
        return self.file

    def __exit__(self, kind, value, tb) -> None:
        self.file.close()
        if kind is None:
            os.replace(self.part, self.path)
        else:
            self.part.unlink(missing_ok=True)

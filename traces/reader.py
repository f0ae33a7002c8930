"""Reading a trace file (docs/TRACE_FORMAT.md): memory-mapped, lazy, and distrustful.

Opening reads the header, the INFO record and the step index: the FOOTER when the run
closed cleanly, else one hop per step along the STEP records. That is O(steps) small
reads whatever the file's size. A step's TABLE is read, checked and decoded the first
time `events(step)` asks; a tensor's bytes are checked against their crc32 the first
time it is looked up, and what comes back is a read-only numpy view into the map.

Every length, offset, dtype and shape is checked against the file before it is used,
and nothing is allocated from a declared size. A broken header or INFO record raises
TraceError. A broken step ends the index where it is (the steps before it stay, and
`warnings` says why); a step whose table or tensor fails its check raises TraceError
when it is asked for, and the other steps read as before. OS errors (no such file, a
directory) propagate as they are.
"""

from __future__ import annotations

import json
import mmap
import os
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from traces.base import StepIndex, Trace
from traces.schema import STOP_BY_NAME, Event, HookCost
from traces.writer import (
    ALIGN, COMMIT, COMMIT_KIND, COMMIT_RECORD, DTYPES, FOOTER, FOOTER_ENTRY, FOOTER_KIND, HEADER, INFO,
    MAGIC, RECORD, STEP, STEP_KIND, STEP_RECORD, TABLE, TENSORS_DROPPED, TRAILER, TRAILER_KIND,
    TRAILER_RECORD, VERSION, Truncation,
)

MAX_JSON = 1 << 28  # an INFO or TABLE record past 256 MiB is not one our writer made
MAX_DIMS = 32
U32 = 1 << 32


class TraceError(Exception):
    """The file is not a trace this reader can trust; the message says what, in one line."""


class TensorSpec(NamedTuple):
    """Where a tensor lies in the file: enough to show its shape without reading it.

    `origin`/`full`: when the capture policy kept a block of a bigger tensor (the last rows,
    some heads), the block is full[origin[i] : origin[i] + shape[i]] along each axis."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int
    origin: tuple[int, ...] | None = None
    full: tuple[int, ...] | None = None


class _Segment(NamedTuple):
    step: int
    offset: int  # of the STEP record
    table: int  # of the TABLE record
    next: int  # where the next segment (or the footer) starts


class Tensors(Mapping):
    """An event's tensors: each a read-only view into the trace, made (and checked) on first access."""

    def __init__(self, reader: TraceReader, where: str, specs: dict[str, TensorSpec], dropped: tuple[str, ...]):
        self._reader = reader
        self._where = where
        self.specs = specs
        self.dropped = dropped  # names the writer's max_bytes budget left out
        self._views: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        view = self._views.get(name)
        if view is None:
            view = self._views[name] = self._reader._tensor(self.specs[name], self._where)
        return view

    def __contains__(self, name) -> bool:
        return name in self.specs  # Mapping's default would read the tensor to find out

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def __repr__(self) -> str:
        inner = ", ".join(f"{s.name}: {s.dtype}{list(s.shape)}" for s in self.specs.values())
        return f"Tensors({inner})"


class TraceReader(Trace):
    def __init__(self, path, verify: bool = True) -> None:
        """`verify`: check each tensor's crc32 the first time it is looked up (costs one read of it)."""
        self.path = Path(path)
        self.verify = verify
        self.warnings: list[str] = []
        self.tensors_dropped = False
        self.footer = "missing"  # "ok" (a clean close's index, used), "missing" or "broken"
        self._complete = False
        self._events: dict[int, StepIndex] = {}
        self._truncations: dict[int, Truncation] = {}  # from the tables read so far
        self._costs: dict[int, HookCost] = {}  # the tables' `hooks`, as they are read
        self._bad: dict[int, TraceError] = {}
        self._derived: dict[str, object] = {}  # generated ids, streamed text: computed once
        self._mm = None
        self._view = None
        with open(self.path, "rb") as f:
            self._size = os.fstat(f.fileno()).st_size
            if self._size < HEADER.size:
                raise TraceError(f"not a trace: {self._size} bytes, shorter than the {HEADER.size}-byte header")
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._view = memoryview(self._mm)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    # -- opening --------------------------------------------------------------------

    def _open(self) -> None:
        magic, version, flags = HEADER.unpack_from(self._mm, 0)
        if magic != MAGIC:
            raise TraceError(f"not a trace: magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise TraceError(f"trace format version {version}; this reader reads version {VERSION}")
        if flags:
            raise TraceError(f"unsupported header flags 0x{flags:x} (a newer writer?)")
        start, n = self._record(HEADER.size, INFO, "info record", check_crc=True, most=MAX_JSON)
        info = self._json(start, n, "info record")
        if not isinstance(info, dict):
            raise TraceError(f"info record holds a JSON {type(info).__name__}, not an object")
        self.info = info
        self._first = start + n
        segments = self._read_footer()
        if segments is None:
            segments = self._hop(self._first)
        self._segments = {s.step: s for s in segments}
        self._steps = [s.step for s in segments]

    def _read_footer(self) -> list[_Segment] | None:
        """The index a clean close left, or None (and why, in `warnings`, unless there is none)."""
        pos = self._size - TRAILER_RECORD
        if pos < self._first or RECORD.unpack_from(self._mm, pos)[0] != TRAILER_KIND:
            return None  # a crashed or interrupted run: no footer, which is no error
        try:
            start, _ = self._record(pos, TRAILER_KIND, "trailer", size=TRAILER.size, check_crc=True)
            footer, magic = TRAILER.unpack_from(self._mm, start)
            if magic != MAGIC or not self._first <= footer <= pos - RECORD.size:
                raise TraceError(f"trailer at offset {pos} points at {footer}, outside the file's steps")
            start, n = self._record(footer, FOOTER_KIND, "footer", check_crc=True)
            if start + n != pos:
                raise TraceError(f"footer at offset {footer} does not end where the trailer starts")
            if n < FOOTER.size:
                raise TraceError(f"footer at offset {footer}: {n} bytes, too short")
            n_steps, flags, _ = FOOTER.unpack_from(self._mm, start)
            if n != FOOTER.size + n_steps * FOOTER_ENTRY.itemsize:
                raise TraceError(f"footer claims {n_steps} steps in {n} bytes")
            entries = np.frombuffer(self._mm, FOOTER_ENTRY, n_steps, start + FOOTER.size)
            segments = [_Segment(*e) for e in entries.tolist()]
            self._check_index(segments, footer)
        except TraceError as e:
            self.warnings.append(f"{e}; finding the steps one by one instead")
            self.footer = "broken"
            return None
        self.tensors_dropped = bool(flags & TENSORS_DROPPED)
        self._complete = True
        self.footer = "ok"
        return segments

    def _check_index(self, segments: list[_Segment], end: int) -> None:
        # Contiguous segments in step order, each with room for STEP, TABLE and COMMIT.
        pos, last = self._first, -1
        for s in segments:
            if not (s.step > last and s.offset == pos and s.offset + STEP_RECORD <= s.table
                    and s.table + RECORD.size + COMMIT_RECORD <= s.next <= end):
                raise TraceError(f"footer entry for step {s.step} is inconsistent")
            pos, last = s.next, s.step
        if pos != end:
            raise TraceError("footer's last step does not end where the footer starts")

    def _hop(self, pos: int) -> list[_Segment]:
        """Walk STEP to STEP from `pos`; stop at the first step that is missing, open or broken."""
        segments: list[_Segment] = []
        last = -1
        while pos < self._size:
            if self._size - pos < RECORD.size:
                self.warnings.append(f"{self._size - pos} stray bytes at the end of the file ignored")
                break
            if RECORD.unpack_from(self._mm, pos)[0] == FOOTER_KIND:
                self.warnings.append("footer present but its trailer is unreadable")
                self.footer = "broken"
                break
            try:
                segment = self._segment_at(pos)
                if segment is not None and segment.step <= last:
                    raise TraceError(f"step {segment.step} at offset {pos} follows step {last}")
            except TraceError as e:
                self.warnings.append(f"{e}; this step and the {self._size - pos} bytes from it ignored")
                break
            if segment is None:
                self.warnings.append(f"a step began at offset {pos} but never committed (the run stopped mid-step); ignored")
                break
            segments.append(segment)
            last, pos = segment.step, segment.next
        return segments

    def _segment_at(self, pos: int) -> _Segment | None:
        """The committed segment whose STEP record is at `pos`, its frame checked; None if still open."""
        start, _ = self._record(pos, STEP_KIND, "step record", size=STEP.size, check_crc=True)
        step, table, nxt, flags, _ = STEP.unpack_from(self._mm, start)
        if table == 0 and nxt == 0:
            return None
        where = f"step {step} at offset {pos}"
        if step < 0 or not (pos + STEP_RECORD <= table and table + RECORD.size + COMMIT_RECORD <= nxt <= self._size):
            raise TraceError(f"{where}: table or next offset out of bounds")
        commit = nxt - COMMIT_RECORD
        start, _ = self._record(commit, COMMIT_KIND, f"{where}: commit record", size=COMMIT.size, check_crc=True)
        if COMMIT.unpack_from(self._mm, start) != (step, pos, table):
            raise TraceError(f"{where}: commit record does not point back at it")
        self._record(table, TABLE, f"{where}: table record", size=commit - table - RECORD.size)
        if flags & TENSORS_DROPPED:
            self.tensors_dropped = True
        return _Segment(step, pos, table, nxt)

    # -- records --------------------------------------------------------------------

    def _record(self, pos: int, kind: int, what: str, size: int | None = None, check_crc: bool = False,
                most: int | None = None):
        """(payload offset, payload length) of the record at `pos`, after checking its frame.
        `most`: refuse a longer payload before reading a byte of it (not even for its crc32)."""
        if pos < 0 or pos + RECORD.size > self._size:
            raise TraceError(f"{what} at offset {pos}: truncated")
        k, crc, n = RECORD.unpack_from(self._mm, pos)
        start = pos + RECORD.size
        if k != kind:
            raise TraceError(f"{what} at offset {pos}: record kind {k}, expected {kind}")
        if n > self._size - start:
            raise TraceError(f"{what} at offset {pos}: declares {n} bytes, past the end of the file")
        if size is not None and n != size:
            raise TraceError(f"{what} at offset {pos}: {n} bytes, expected {size}")
        if most is not None and n > most:
            raise TraceError(f"{what} at offset {pos}: {n} bytes of JSON, over the {most >> 20} MiB limit")
        if check_crc and zlib.crc32(self._view[start : start + n]) != crc:
            raise TraceError(f"{what} at offset {pos}: crc mismatch")
        return start, n

    def _json(self, start: int, n: int, what: str):
        if n > MAX_JSON:
            raise TraceError(f"{what}: {n} bytes of JSON, over the {MAX_JSON >> 20} MiB limit")
        try:
            return json.loads(self._view[start : start + n].tobytes())  # bytes: UTF-8, decoded in C
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise TraceError(f"{what}: not valid JSON ({str(e).splitlines()[0]})") from None

    # -- the Trace API --------------------------------------------------------------

    @property
    def steps(self) -> list[int]:
        return list(self._steps)

    @property
    def complete(self) -> bool:
        return self._complete

    def events(self, step: int) -> list[Event]:
        """The step's events in emission order; [] for a step the trace does not hold."""
        return list(self.index(step).events)

    def index(self, step: int) -> StepIndex:
        cached = self._events.get(step)
        if cached is None:
            if step in self._bad:
                raise self._bad[step]
            segment = self._segments.get(step)
            if segment is None:
                return StepIndex(())
            try:
                cached = self._events[step] = StepIndex(self._decode(segment))
            except TraceError as e:
                self._bad[step] = e
                self.warnings.append(str(e))
                raise
        return cached

    def hook_cost(self, step: int) -> HookCost | None:
        self.index(step)  # the step's table, read once
        return self._costs.get(step)

    @property
    def truncated_at(self) -> Truncation | None:
        """Where the size budget stopped the tensors (None if it never did): the first step whose
        STEP record says tensors were dropped, and that step's table's `truncated` entry."""
        if "truncated_at" not in self._derived:
            found = None
            if self.tensors_dropped:
                for step in self._steps:
                    offset = self._segments[step].offset + RECORD.size
                    if STEP.unpack_from(self._mm, offset)[3] & TENSORS_DROPPED:
                        self.index(step)  # its table says which event and why
                        found = self._truncations.get(step) or Truncation(step, -1, "the trace's size budget")
                        break
            self._derived["truncated_at"] = found
        return self._derived["truncated_at"]

    def generated_ids(self) -> list[int]:
        if "generated" not in self._derived:  # a file does not grow: walk the steps once
            self._derived["generated"] = super().generated_ids()
        return list(self._derived["generated"])

    def streamed_text(self) -> str:
        if "text" not in self._derived:
            self._derived["text"] = super().streamed_text()
        return self._derived["text"]

    def _decode(self, segment: _Segment) -> list[Event]:
        self._check_open()
        if self._segment_at(segment.offset) != segment:  # a footer's entry is trusted only this far
            raise TraceError(f"step {segment.step}: step record at offset {segment.offset} disagrees with the index")
        commit = segment.next - COMMIT_RECORD
        start, n = self._record(segment.table, TABLE, f"step {segment.step}: table", size=commit - segment.table - RECORD.size,
                                check_crc=True, most=MAX_JSON)
        table = self._json(start, n, f"step {segment.step}: table")
        if not isinstance(table, dict) or table.get("step") != segment.step or not isinstance(table.get("events"), list):
            raise TraceError(f"step {segment.step}: table is not {{'step': {segment.step}, 'events': [...]}}")
        data = (segment.offset + STEP_RECORD, segment.table)
        events = [self._event(segment.step, i, e, data) for i, e in enumerate(table["events"])]
        if "hooks" in table:
            try:
                self._costs[segment.step] = HookCost.from_json(table["hooks"])
            except ValueError as e:
                raise TraceError(f"step {segment.step}: {e}") from None
        truncated = table.get("truncated")
        if truncated is not None:
            where = f"step {segment.step}: truncated"
            if not isinstance(truncated, dict):
                raise TraceError(f"{where}: not a JSON object")
            self._truncations[segment.step] = Truncation(
                segment.step, _get(truncated, "seq", int, where), _get(truncated, "reason", str, where))
        return events

    def _event(self, step: int, i: int, e, data: tuple[int, int]) -> Event:
        if not isinstance(e, dict):
            raise TraceError(f"step {step}: event {i}: not a JSON object")
        stop, layer = e.get("stop"), e.get("layer")
        if type(stop) is not str or stop not in STOP_BY_NAME:
            _get(e, "stop", str, f"step {step}: event {i}")
            raise TraceError(f"step {step}: event {i}: unknown stop {stop!r}")
        if layer is not None and type(layer) is not int:
            raise TraceError(f"step {step}: event {i}: layer must be an integer or null")
        where = f"step {step} · {stop}" if layer is None else f"step {step} · {stop} · layer {layer}"
        get = e.get
        seq, part, scalars, tensors, t_start_ns, dur_ns = (
            get("seq"), get("part"), get("scalars"), get("tensors"), get("t_start_ns"), get("dur_ns"))
        # Exact type tests (type(), not isinstance: a JSON true is no count), written out because
        # a table holds thousands of events; the field-by-field check only to say which one failed.
        if not (type(seq) is int and type(part) is str and type(scalars) is dict and type(tensors) is list
                and type(t_start_ns) is int and type(dur_ns) is int):
            for key, kind in EVENT_FIELDS:
                _get(e, key, kind, where)
        specs: dict[str, TensorSpec] = {}
        for t in tensors:
            spec = _spec(t, data, where)
            if spec.name in specs:
                raise TraceError(f"{where}: tensor {spec.name!r} listed twice")
            specs[spec.name] = spec
        dropped = get("dropped", ())
        if dropped and not (type(dropped) is list and all(type(d) is str for d in dropped)):
            raise TraceError(f"{where}: 'dropped' must list tensor names")
        return Event(seq, stop, step, layer, part, Tensors(self, where, specs, tuple(dropped)), scalars,
                     t_start_ns, dur_ns)

    def _tensor(self, spec: TensorSpec, where: str) -> np.ndarray:
        self._check_open()
        dtype = DTYPES[spec.dtype]
        if spec.nbytes == 0:
            view = np.zeros(spec.shape, dtype)
            view.flags.writeable = False
            return view
        raw = np.frombuffer(self._mm, np.uint8, spec.nbytes, spec.offset)  # read-only: the map is
        if self.verify and zlib.crc32(raw) != spec.crc32:
            error = TraceError(f"{where}: tensor {spec.name!r} fails its crc32 check")
            self.warnings.append(str(error))
            raise error
        return raw.view(dtype).reshape(spec.shape)

    def verify_all(self) -> list[str]:
        """Read every step's table and every tensor, checking each; the problems found, one line each."""
        problems = []
        for step in self.steps:
            try:
                events = self.events(step)
            except TraceError as e:
                problems.append(str(e))
                continue
            for event in events:
                for name in event.tensors:
                    try:
                        event.tensors[name]
                    except TraceError as e:
                        problems.append(str(e))
        return problems

    # -- lifetime -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mm is None:
            raise ValueError("trace is closed")

    def close(self) -> None:
        """Unmap the file. Views handed out earlier keep their pages mapped until they are dropped."""
        self._events.clear()
        if self._view is not None:
            self._view.release()
            self._view = None
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                pass  # someone still holds a tensor: the map closes when the last view goes
            self._mm = None

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self._complete else "incomplete"
        return f"TraceReader({str(self.path)!r}, {len(self._steps)} steps, {state})"


def open_trace(path) -> TraceReader:
    return TraceReader(path)


# An event's fields in a table, and their JSON types.
EVENT_FIELDS = (("seq", int), ("part", str), ("scalars", dict), ("tensors", list), ("t_start_ns", int), ("dur_ns", int))


def _get(obj: dict, key: str, kind: type, where: str, default=None):
    value = obj.get(key, default)
    # type() not isinstance(): JSON true/false are bools, and a bool is no count or offset.
    if (type(value) is not kind) if kind is int else not isinstance(value, kind):
        raise TraceError(f"{where}: {key!r} must be a JSON {kind.__name__}")
    return value


def _spec(t, data: tuple[int, int], where: str) -> TensorSpec:
    """A tensor's table entry, checked: whitelisted dtype, sane shape, bytes inside its step's data."""
    if not isinstance(t, dict):
        raise TraceError(f"{where}: tensor entry is not a JSON object")
    name = _get(t, "name", str, where)
    where = f"{where}: tensor {name!r}"
    dtype = _get(t, "dtype", str, where)
    if dtype not in DTYPES:
        raise TraceError(f"{where}: dtype {dtype!r} is not one a trace may hold ({', '.join(DTYPES)})")
    shape = _get(t, "shape", list, where)
    offset, nbytes, crc = (_get(t, k, int, where) for k in ("offset", "nbytes", "crc32"))
    lo, hi = data
    if not 0 <= nbytes <= hi - lo:
        raise TraceError(f"{where}: {nbytes} bytes do not fit its step's {hi - lo} bytes of data")
    if not 0 <= crc < U32:
        raise TraceError(f"{where}: crc32 {crc} out of range")
    if len(shape) > MAX_DIMS or not all(type(d) is int and d >= 0 for d in shape):
        raise TraceError(f"{where}: shape {shape!r} is not a list of up to {MAX_DIMS} sizes")
    count = 1
    for d in shape:
        count *= d  # Python ints: a 2^62-element shape cannot overflow into a small one
    if count * DTYPES[dtype].itemsize != nbytes:
        raise TraceError(f"{where}: shape {shape} of {dtype} is not {nbytes} bytes")
    if nbytes and not (lo <= offset and offset + nbytes <= hi and offset % ALIGN == 0):
        raise TraceError(f"{where}: bytes at offset {offset} lie outside its step's data or are misaligned")
    origin, full = t.get("origin"), t.get("full")
    if origin is not None or full is not None:
        # A block of a bigger tensor: each axis's block must lie inside the full extent.
        if not (isinstance(origin, list) and isinstance(full, list) and len(origin) == len(full) == len(shape)
                and all(type(o) is int and type(f) is int and 0 <= o and o + d <= f
                        for o, d, f in zip(origin, shape, full))):
            raise TraceError(f"{where}: origin {origin!r} and full {full!r} do not frame shape {shape}")
        origin, full = tuple(origin), tuple(full)
    return TensorSpec(name, dtype, tuple(shape), offset, nbytes, crc, origin, full)

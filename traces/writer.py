"""Recording a run to disk: the append-only trace container (docs/TRACE_FORMAT.md, version 1).

    header  "LLMTRACE" | version u32 | flags u32
    INFO    the run's self-description (JSON)
    per step:
      STEP    fixed record: written zeroed when the step begins, patched in place (one
              pwrite) when it commits with where its table is and where the next step starts
      data    the step's tensor bytes, each 64-byte aligned, written as the events arrive
      TABLE   the step's events (JSON); tensors by dtype/shape/offset/nbytes/crc32
      COMMIT  fixed record pointing back at STEP and TABLE
    FOOTER  every step's offsets   } only after a clean close, so a finished trace
    TRAILER where the footer is    } opens from its last bytes alone

Every record is `kind u32 | crc32 u32 | length u64 | payload`, little-endian.

Why the STEP patch: a reader hops from STEP to STEP, so opening costs O(steps) small
reads whatever the bytes or events, and a STEP never patched (the run died mid-step)
is where the readable trace ends. Nothing written before the patch is trusted, so a
SIGKILL at any moment leaves every committed step intact and nothing else.

The format's constants live here and the reader imports them: one place says what a
version-1 file is.
"""

from __future__ import annotations

import json
import operator
import os
import struct
import zlib
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from traces.schema import Event, HookCost, check_stop

if TYPE_CHECKING:
    from traces.policy import CapturePolicy

MAGIC = b"LLMTRACE"
VERSION = 1
ALIGN = 64  # tensor data offsets: cache-line and SIMD aligned numpy views

HEADER = struct.Struct("<8sII")  # magic, version, flags (none defined: must be 0)
RECORD = struct.Struct("<IIQ")  # kind, crc32 of the payload, payload length
STEP = struct.Struct("<qQQII")  # step, table offset, next segment offset, flags, reserved
COMMIT = struct.Struct("<qQQ")  # step, STEP record offset, TABLE record offset
FOOTER = struct.Struct("<QII")  # n_steps, flags, reserved; then n_steps FOOTER_ENTRY
TRAILER = struct.Struct("<Q8s")  # FOOTER record offset, MAGIC again
FOOTER_ENTRY = np.dtype([("step", "<i8"), ("step_offset", "<u8"), ("table_offset", "<u8"), ("next_offset", "<u8")])

# Record kinds.
INFO, STEP_KIND, TABLE, COMMIT_KIND, FOOTER_KIND, TRAILER_KIND = 1, 2, 3, 4, 5, 6

STEP_RECORD = RECORD.size + STEP.size  # 48 bytes
COMMIT_RECORD = RECORD.size + COMMIT.size  # 40 bytes
TRAILER_RECORD = RECORD.size + TRAILER.size  # 32 bytes

# Flags of a STEP record and of the FOOTER.
TENSORS_DROPPED = 1  # the max_bytes budget was reached: some events lost their tensors

# The only tensor dtypes a trace stores, all little-endian. A whitelist: the reader
# builds numpy views from these names and nothing else (no object, string or record
# dtypes, so nothing in a file can make numpy do more than reinterpret bytes).
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code)
    for name, code in (
        ("float32", "<f4"), ("float16", "<f2"), ("float64", "<f8"),
        ("int64", "<i8"), ("int32", "<i4"), ("int8", "i1"),
        ("uint16", "<u2"), ("uint8", "u1"), ("bool", "?"),
    )
}

# dtype -> name, either byte order: a dict lookup, where dtype.name costs ~10 µs an event.
_NAMES = {d: n for n, d in DTYPES.items()} | {d.newbyteorder(">"): n for n, d in DTYPES.items()}
_ZEROS = bytes(ALIGN)
# Records and small tensors gather in this buffer; a tensor bigger than it goes straight
# from the array to the kernel (BufferedWriter copies only what fits in its buffer).
BUFFER = 64 << 10
# After each commit, ask the kernel to start writing the step back (posix_fadvise
# DONTNEED: asynchronous writeback, then the clean pages leave the cache). Without it the
# disk idles until the page cache fills or the final fsync, and the run's CPU work and the
# I/O happen one after the other instead of side by side (≈0.55× vs ≈0.75-0.95× the raw
# disk speed in bench/traces.py); a multi-GB trace also stops crowding the model out of RAM.
WRITEBACK = hasattr(os, "posix_fadvise")


def record(kind: int, payload: bytes) -> bytes:
    return RECORD.pack(kind, zlib.crc32(payload), len(payload)) + payload


def to_json(value, what: str) -> bytes:
    """Compact ASCII JSON (non-ASCII as \\uXXXX, so lone surrogates in vocab pieces survive).

    NaN and ±Infinity are written as Python's json writes them: a logit of -inf is data.
    """
    try:
        return _ENCODER.encode(value).encode("ascii")
    except (TypeError, ValueError) as e:
        raise TypeError(f"{what}: {e} (a trace stores numbers, strings, bools, None, lists and dicts)") from None


def _plain(value):
    # numpy scalars and small arrays reach scalars/info from engine code; store them as plain JSON.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), default=_plain)


def canonical(value, what: str) -> np.ndarray:
    """The array as the file stores it: a whitelisted dtype, little-endian, C order."""
    arr = np.asarray(value)
    name = _NAMES.get(arr.dtype)
    if name is None:
        raise TypeError(f"{what} has dtype {arr.dtype}; a trace stores only {', '.join(DTYPES)}")
    want = DTYPES[name]
    if arr.dtype != want or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=want, order="C")  # big-endian or strided: the one copy we make
    return arr


class Truncation(NamedTuple):
    """Where a trace stopped keeping tensors: the first event that lost one, and why."""

    step: int
    seq: int
    reason: str


def budget_reason(max_bytes: int) -> str:
    from traces.policy import format_size

    return f"the trace reached its size budget of {format_size(max_bytes)}"


class _Segment:
    """The step being recorded: where its STEP record is, and its events' table entries."""

    def __init__(self, step: int, offset: int) -> None:
        self.step = step
        self.offset = offset
        self.entries: list[bytes] = []  # one JSON object per event
        self.flags = 0
        self.truncated: Truncation | None = None  # set in the step where the budget was reached
        self.hooks: HookCost | None = None  # what the hooks cost the step, when the bus measured it


class TraceWriter:
    """A hook-bus listener that appends each event to a trace file as it arrives.

    Events come step by step in increasing order; a step commits at `end_step(step)`,
    when an event of a later step arrives, or at `close()`. Tensor bytes go to disk at
    once (memory never holds a whole prefill); a step is readable once committed.
    `max_bytes` bounds the file's tensor data: once the next tensor would take the file
    past it, no more tensors are written (events still are, their tables naming the
    dropped tensors), the step's table says where and why (`truncated`), and the run goes on.
    `capture` (traces/policy.py) shapes each tensor before it is written -- rows, heads,
    dtype -- and goes into the info's `capture` section.
    """

    def __init__(self, path, info: dict, fsync: bool = False, max_bytes: int | None = None,
                 capture: CapturePolicy | None = None) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self.max_bytes = max_bytes
        self.capture = capture
        self.tensors_dropped = False
        self.truncated_at: Truncation | None = None
        if capture is not None:
            info = {**info, "capture": capture.describe(max_bytes)}
        self._index: list[tuple[int, int, int, int]] = []  # (step, STEP, TABLE, next) per committed step
        self._seg: _Segment | None = None
        self._last_step = -1
        info_json = to_json(info, "info")
        if self.path.is_file() and not self.path.is_symlink():
            # A new file, not the old one truncated: a replay that has the old trace mapped
            # keeps reading it, where truncation would kill it with SIGBUS.
            self.path.unlink()
        self._file = open(self.path, "wb", buffering=BUFFER)
        self._pos = 0
        self._write(HEADER.pack(MAGIC, VERSION, 0))
        self._write(record(INFO, info_json))
        self._sync()  # a run killed before its first step still leaves a trace that opens

    # -- the listener ---------------------------------------------------------------

    def __call__(self, event: Event) -> None:
        if self._file is None:
            raise ValueError("trace writer is closed")
        step = operator.index(event.step)
        if self._seg is not None and step < self._seg.step:
            raise ValueError(f"event for step {step} arrived during step {self._seg.step}: steps must increase")
        if self._seg is None and step <= self._last_step:
            raise ValueError(f"event for step {step} arrived after step {self._last_step} committed")
        if step < 0:
            raise ValueError(f"step {step} < 0")
        # Everything that can refuse the event does so before a byte of it is written.
        where = f"step {step} · {event.stop}" + (f" · layer {event.layer}" if event.layer is not None else "")
        check_stop(event.stop)
        tensors, cuts = event.tensors, {}
        if self.capture is not None:
            keep = self.capture.keeps_tensors(event.stop, event.layer)
            tensors, cuts = self.capture.shape(event.stop, tensors) if keep and tensors else ({}, {})
        arrays = {str(k): canonical(v, f"{where}: tensor {k!r}") for k, v in tensors.items()}
        head = to_json({
            "seq": operator.index(event.seq),
            "stop": event.stop,
            "layer": None if event.layer is None else operator.index(event.layer),
            "part": str(event.part),
            "t_start_ns": operator.index(event.t_start_ns),
            "dur_ns": operator.index(event.dur_ns),
            "scalars": event.scalars,
        }, where)

        if self._seg is not None and step != self._seg.step:
            self._commit()
        if self._seg is None:
            self._begin(step)
        entries, dropped = [], []
        for name, arr in arrays.items():
            if self._over_budget(arr.nbytes):
                dropped.append(encode_basestring_ascii(name))
            else:
                entries.append(self._write_tensor(name, arr, cuts.get(name)))
        entry = ',"tensors":[%s]' % ",".join(entries)
        if dropped:
            entry += ',"dropped":[%s]' % ",".join(dropped)
            self._seg.flags |= TENSORS_DROPPED
            if self.truncated_at is None:
                self.truncated_at = self._seg.truncated = Truncation(step, event.seq, budget_reason(self.max_bytes))
        self._seg.entries.append(head[:-1] + entry.encode("ascii") + b"}")

    def step_cost(self, step: int, cost: HookCost) -> None:
        """The hook bus's report of what its hooks cost `step` (engine/hooks.py), written in the step's
        table as `hooks`. It comes after the step's events, before the next step's; a step already
        committed keeps its table (append-only), so a late report is dropped."""
        if self._seg is not None and self._seg.step == step:
            self._seg.hooks = cost

    def end_step(self, step: int) -> None:
        """Commit the step being recorded (a no-op when no event of `step` arrived)."""
        if self._seg is not None:
            if step < self._seg.step:
                raise ValueError(f"end_step({step}) during step {self._seg.step}")
            self._commit()

    def close(self, complete: bool = True) -> None:
        """Commit the open step; with `complete`, write the footer that marks a finished run."""
        if self._file is None:
            return
        try:
            if self._seg is not None:
                self._commit()
            if complete:
                self._write_footer()
                self._sync()
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)  # a run that raised did not finish

    # -- one step -------------------------------------------------------------------

    def _begin(self, step: int) -> None:
        self._seg = _Segment(step, self._pos)
        # Offsets 0 mean "not committed": a reader stops here until the patch lands.
        self._write(record(STEP_KIND, STEP.pack(step, 0, 0, 0, 0)))

    def _over_budget(self, nbytes: int) -> bool:
        if self.max_bytes is None:
            return False
        if not self.tensors_dropped and self._pos + ALIGN + nbytes > self.max_bytes:
            self.tensors_dropped = True  # from here on no tensor is written, however small
        return self.tensors_dropped

    def _write_tensor(self, name: str, arr: np.ndarray, cut: tuple | None = None) -> str:
        """Write the array's bytes 64-byte aligned; its table entry, as JSON text. `cut`: (origin,
        full shape) when the capture policy kept a block of a bigger tensor."""
        pad = -self._pos % ALIGN
        if pad:
            self._write(_ZEROS[:pad])
        offset = self._pos
        raw = memoryview(arr.reshape(-1).view(np.uint8))  # the array's own bytes: no copy
        crc = zlib.crc32(raw)
        self._write(raw)
        shape = ",".join(map(str, arr.shape))
        extra = "" if cut is None else ',"origin":[%s],"full":[%s]' % tuple(",".join(map(str, c)) for c in cut)
        return (f'{{"name":{encode_basestring_ascii(name)},"dtype":"{_NAMES[arr.dtype]}","shape":[{shape}],'
                f'"offset":{offset},"nbytes":{arr.nbytes},"crc32":{crc}{extra}}}')

    def _commit(self) -> None:
        seg, self._seg = self._seg, None
        table = b'{"step":%d,"events":[' % seg.step + b",".join(seg.entries) + b"]"
        if seg.truncated is not None:
            table += b',"truncated":' + to_json({"seq": seg.truncated.seq, "reason": seg.truncated.reason}, "truncated")
        if seg.hooks is not None:
            table += b',"hooks":' + to_json(seg.hooks.to_json(), "hooks")
        table += b"}"
        table_offset = self._pos
        self._write(record(TABLE, table))
        self._write(record(COMMIT_KIND, COMMIT.pack(seg.step, seg.offset, table_offset)))
        next_offset = self._pos
        self._sync()  # table and commit are on disk (in the page cache at least) before the patch
        patch = record(STEP_KIND, STEP.pack(seg.step, table_offset, next_offset, seg.flags, 0))
        os.pwrite(self._file.fileno(), patch, seg.offset)
        if self.fsync:
            os.fsync(self._file.fileno())
        elif WRITEBACK:
            os.posix_fadvise(self._file.fileno(), seg.offset, next_offset - seg.offset, os.POSIX_FADV_DONTNEED)
        self._index.append((seg.step, seg.offset, table_offset, next_offset))
        self._last_step = seg.step

    # -- the end of the file --------------------------------------------------------

    def _write_footer(self) -> None:
        entries = np.array(self._index, dtype=FOOTER_ENTRY) if self._index else np.empty(0, FOOTER_ENTRY)
        flags = TENSORS_DROPPED if self.tensors_dropped else 0
        footer_offset = self._pos
        self._write(record(FOOTER_KIND, FOOTER.pack(len(self._index), flags, 0) + entries.tobytes()))
        self._write(record(TRAILER_KIND, TRAILER.pack(footer_offset, MAGIC)))

    def _write(self, data) -> None:
        self._file.write(data)
        self._pos += len(data)

    def _sync(self) -> None:
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

"""The trace file: what goes in comes back, and no file, however broken, makes the reader misbehave.

"Misbehave" means: raise anything but TraceError, hand back data that differs from what
was written, or allocate from a size the file declares. A broken header or info record
is a TraceError; anything later leaves a reader holding a prefix of the steps.
"""

import json
import math
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from traces.reader import TraceError, TraceReader, open_trace
from traces.schema import Event
from traces.writer import (
    COMMIT, COMMIT_KIND, FOOTER, FOOTER_KIND, HEADER, INFO, MAGIC, STEP, STEP_KIND, TABLE, TRAILER,
    TRAILER_KIND, VERSION, TraceWriter, record,
)

ODD_STRINGS = ["", "héllo 世界 👩‍👩‍👧", "\x00\x01\x1b[31mred\x7f\n\t\r", "\ud800 lone surrogate", "\"quoted\" \\ back"]


def sample_events() -> list[Event]:
    """Three steps of events covering every dtype, odd shapes, odd scalars, layers and parts."""
    rng = np.random.default_rng(0)
    tensors = [
        {"f32": rng.standard_normal((3, 5)).astype(np.float32), "scalar": np.array(2.5, np.float32)},
        {"f16": rng.standard_normal((2, 1, 3, 2)).astype(np.float16), "empty": np.zeros((0, 7), np.int64)},
        {"f64": rng.standard_normal(4), "i64": np.array([-(2**62), 2**62], np.int64)},
        {"i32": np.arange(-6, 6, dtype=np.int32).reshape(3, 4).T},  # strided: written as C order
        {"i8": np.array([-128, 0, 127], np.int8), "u8": np.frombuffer(b"bytes\x00\xff", np.uint8)},
        {"u16": np.array([[0, 65535]], np.uint16), "bool": rng.random((2, 3, 1, 2)) > 0.5},
        {"big_endian": np.arange(5, dtype=">f4"), "empty4d": np.zeros((2, 0, 3, 1), np.float32)},
        {},
    ]
    scalars = [
        {"int": 2**62, "neg": -1, "float": 0.1, "inf": -math.inf, "nan": math.nan},
        {"strings": ODD_STRINGS, "nested": {"a": [1, [2, {"b": None}]], "t": True, "f": False}},
        {"text": ODD_STRINGS[2], "ids": list(range(50))},
        {},
    ]
    stops = [("tokenize", None, ""), ("attn_norm", 0, ""), ("qkv", 0, "k"), ("attn", 1, ""),
             ("kv_write", 29, "v"), ("sample", None, "top_k"), ("sample", None, ""), ("stream", None, "")]
    events, seq = [], 0
    for step in range(3):
        for i, (stop, layer, part) in enumerate(stops):
            events.append(Event(seq, stop, step, layer, part, tensors=tensors[(i + step) % len(tensors)],
                                scalars=scalars[(i + step) % len(scalars)], t_start_ns=10**15 + seq, dur_ns=seq * 7))
            seq += 1
    return events


def by_step(events: list[Event]) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = {}
    for e in events:
        out.setdefault(e.step, []).append(e)
    return out


def same_scalars(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_scalars(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(same_scalars(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_event(got: Event, want: Event, tensors_must_read: bool = True) -> None:
    assert (got.seq, got.stop, got.step, got.layer, got.part) == (want.seq, want.stop, want.step, want.layer, want.part)
    assert (got.t_start_ns, got.dur_ns) == (want.t_start_ns, want.dur_ns)
    assert same_scalars(got.scalars, want.scalars), (got.scalars, want.scalars)
    assert list(got.tensors) == list(want.tensors)
    for name, value in want.tensors.items():
        try:
            arr = got.tensors[name]
        except TraceError:
            if tensors_must_read:
                raise
            continue
        want_arr = np.asarray(value)
        assert arr.dtype == want_arr.dtype.newbyteorder("<") and arr.shape == want_arr.shape, name
        assert np.array_equal(arr, want_arr, equal_nan=arr.dtype.kind == "f"), name


def write(path, events, info=None, **kw) -> bytes:
    with TraceWriter(path, info if info is not None else {"model": {"n_layer": 30}}, **kw) as w:
        for e in events:
            w(e)
    return path.read_bytes()


@pytest.fixture
def events():
    return sample_events()


# -- round trip ---------------------------------------------------------------------


def test_round_trip_gives_back_every_event_in_order(tmp_path, events):
    vocab = [f"▁piece{i}" for i in range(262_144)] + ODD_STRINGS
    info = {"model": {"name": "tiny", "n_layer": 30, "n_vocab": len(vocab)}, "vocab": {"pieces": vocab, "bos": 1, "eos": [2]},
            "engine": {"name": "torch", "device": "cpu"}, "prompt": ODD_STRINGS[1], "n_predict": 3}
    write(tmp_path / "t.trace", events, info, fsync=True)
    with open_trace(tmp_path / "t.trace") as r:
        assert r.complete and r.warnings == [] and not r.tensors_dropped
        assert r.info == info and r.pieces == vocab
        assert r.steps == [0, 1, 2]
        for step, want in by_step(events).items():
            got = r.events(step)
            assert len(got) == len(want)
            for g, w in zip(got, want):
                assert_same_event(g, w)
        assert r.get(1, "qkv", 0, "k").seq == want_seq(events, 1, "qkv")
        assert r.verify_all() == []


def want_seq(events, step, stop):
    return next(e.seq for e in events if e.step == step and e.stop == stop)


def test_tensors_are_read_only_views_into_the_file(tmp_path, events):
    write(tmp_path / "t.trace", events)
    with TraceReader(tmp_path / "t.trace") as r:
        arr = r.events(0)[0].tensors["f32"]
        assert not arr.flags.writeable and not arr.flags.owndata
        assert arr.ctypes.data % 64 == 0
        with pytest.raises(ValueError):
            arr[0, 0] = 1.0
        spec = r.events(0)[0].tensors.specs["f32"]
        assert (spec.dtype, spec.shape) == ("float32", (3, 5))
    assert arr.sum() == pytest.approx(float(events[0].tensors["f32"].sum()))  # still mapped after close


def test_a_step_commits_when_the_next_begins_and_close_commits_the_last(tmp_path, events):
    path = tmp_path / "t.trace"
    w = TraceWriter(path, {})
    for e in events:
        w(e)
    with TraceReader(path) as r:  # steps 0 and 1 committed by later events; 2 still open
        assert r.steps == [0, 1] and not r.complete
    w.end_step(2)
    with TraceReader(path) as r:
        assert r.steps == [0, 1, 2] and not r.complete
    w.close()
    with TraceReader(path) as r:
        assert r.steps == [0, 1, 2] and r.complete


def test_an_interrupted_run_reads_as_incomplete(tmp_path, events):
    path = tmp_path / "t.trace"
    with pytest.raises(KeyboardInterrupt):
        with TraceWriter(path, {}) as w:
            for e in events:
                w(e)
            raise KeyboardInterrupt
    with TraceReader(path) as r:
        assert r.steps == [0, 1, 2] and not r.complete and r.warnings == []
        assert_same_event(r.events(2)[-1], events[-1])


def test_an_empty_run(tmp_path):
    write(tmp_path / "t.trace", [])
    with TraceReader(tmp_path / "t.trace") as r:
        assert r.steps == [] and r.complete and r.events(0) == []


def test_writer_refuses_what_it_cannot_store(tmp_path):
    w = TraceWriter(tmp_path / "t.trace", {})
    for bad in (np.array(["a"]), np.array([1j]), np.array([object()]), np.zeros(2, "u4"), np.zeros(1, [("a", "f4")])):
        with pytest.raises(TypeError, match="a trace stores only"):
            w(Event(0, "embed", 0, tensors={"x": bad}))
    with pytest.raises(TypeError, match="not JSON"):
        w(Event(0, "embed", 0, scalars={"x": object()}))
    with pytest.raises(ValueError, match="unknown stop"):
        w(Event(0, "no_such_stop", 0))
    w(Event(0, "embed", 3))
    with pytest.raises(ValueError, match="steps must increase"):
        w(Event(1, "embed", 2))
    w.end_step(3)
    with pytest.raises(ValueError, match="after step 3 committed"):
        w(Event(2, "embed", 3))
    w.close()
    with pytest.raises(ValueError, match="closed"):
        w(Event(3, "embed", 4))
    with TraceReader(tmp_path / "t.trace") as r:
        assert r.steps == [3] and [e.seq for e in r.events(3)] == [0]


def test_info_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="info"):
        TraceWriter(tmp_path / "t.trace", {"x": {1, 2}})


# -- the budget ---------------------------------------------------------------------


@pytest.mark.parametrize("complete", [True, False])
def test_budget_drops_tensors_and_keeps_events(tmp_path, complete):
    path = tmp_path / "t.trace"
    info = {"capture": "all"}
    header = len(HEADER.pack(MAGIC, VERSION, 0)) + len(record(INFO, json.dumps(info).encode()))
    budget = header + 48 + 4 * 1024  # room for about three 1 KiB tensors
    w = TraceWriter(path, info, max_bytes=budget)
    for step in range(4):
        for i in range(3):
            w(Event(step * 3 + i, "residual", step, i, tensors={"out": np.full(256, step * 3 + i, np.float32)}, scalars={"i": i}))
    w.close(complete=complete)
    assert w.tensors_dropped
    with TraceReader(path) as r:
        assert r.tensors_dropped and r.complete == complete
        events = [e for s in r.steps for e in r.events(s)]
        assert [e.seq for e in events] == list(range(12)) and all(e.scalars == {"i": e.layer} for e in events)
        kept = [e.seq for e in events if "out" in e.tensors]
        assert 1 <= len(kept) <= 3 and kept == list(range(len(kept)))  # once over budget, never again
        assert all(e.tensors.dropped == ("out",) and len(e.tensors) == 0 for e in events[len(kept):])
        for e in events[: len(kept)]:
            assert np.all(e.tensors["out"] == e.seq) and e.tensors.dropped == ()
            assert e.tensors.specs["out"].offset + e.tensors.specs["out"].nbytes <= budget


# -- truncation and bit flips ---------------------------------------------------------


def small_trace(tmp_path) -> tuple[bytes, list[Event], list[int]]:
    """A small complete trace, its events, and the offset at which each step's segment ends."""
    events = [Event(i, "attn_norm" if i % 2 else "logits", i // 2, i % 2 or None, tensors={"x": np.arange(4 + i, dtype=np.float32)},
                    scalars={"i": i, "s": "é"}) for i in range(8)]
    data = write(tmp_path / "orig.trace", events)
    ends = [s["next"] for s in segment_offsets(tmp_path / "orig.trace")]
    return data, events, ends


def segment_offsets(path) -> list[dict]:
    """Each step's STEP/TABLE/next offsets, read from the footer with the spec's own structs."""
    data = path.read_bytes()
    footer, magic = TRAILER.unpack_from(data, len(data) - 16)
    assert magic == MAGIC
    n, _, _ = FOOTER.unpack_from(data, footer + 16)
    entries = np.frombuffer(data, [("step", "<i8"), ("offset", "<u8"), ("table", "<u8"), ("next", "<u8")], n, footer + 32)
    return [dict(zip(entries.dtype.names, map(int, e))) for e in entries]


def check_prefix(path, events: list[Event]) -> TraceReader | None:
    """The reader's contract on a damaged file: TraceError, or a prefix of steps whose contents are right or refused.

    Returns the open reader (the caller closes it), or None after a TraceError.
    """
    want = by_step(events)
    try:
        r = TraceReader(path)
    except TraceError as e:
        assert "\n" not in str(e)
        return None
    assert r.steps == list(want)[: len(r.steps)]
    for step in r.steps:
        try:
            got = r.events(step)
        except TraceError:
            continue
        assert len(got) == len(want[step])
        for g, w in zip(got, want[step]):
            assert_same_event(g, w, tensors_must_read=False)
    return r


def test_every_truncation_opens_to_the_steps_that_fit(tmp_path):
    data, events, ends = small_trace(tmp_path)
    info_end = len(HEADER.pack(MAGIC, VERSION, 0)) + len(record(INFO, b'{"model":{"n_layer":30}}'))
    path = tmp_path / "cut.trace"
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        r = check_prefix(path, events)
        if cut < info_end:
            assert r is None, cut
            continue
        with r:
            assert not r.complete, cut
            assert len(r.steps) == sum(end <= cut for end in ends), cut  # every finished step, no more
            assert r.verify_all() == [], cut


def test_every_single_bit_flip_is_caught_or_harmless(tmp_path):
    data, events, _ = small_trace(tmp_path)
    path = tmp_path / "flip.trace"
    outcomes = {"error": 0, "fewer steps": 0, "step refused": 0, "same": 0}
    for pos in range(len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 1 << (pos % 8)
        path.write_bytes(flipped)
        r = check_prefix(path, events)
        if r is None:
            outcomes["error"] += 1
            continue
        with r:
            if len(r.steps) < 4:
                outcomes["fewer steps"] += 1
            elif r.verify_all():
                outcomes["step refused"] += 1
            else:
                outcomes["same"] += 1
    assert outcomes["error"] and outcomes["step refused"], outcomes


# -- hostile files --------------------------------------------------------------------


def header(version=VERSION, magic=MAGIC, flags=0, info=b"{}") -> bytes:
    return HEADER.pack(magic, version, flags) + record(INFO, info)


def segment(pos: int, step: int, table_fn, data_len: int = 64) -> bytes:
    """A committed step segment at `pos`: STEP, `data_len` bytes of data, the table `table_fn(data_offset)`."""
    data_offset = pos + 48 + (-(pos + 48) % 64)
    data = bytes(data_offset - pos - 48 + data_len)
    table_offset = pos + 48 + len(data)
    table = record(TABLE, json.dumps(table_fn(data_offset)).encode())
    next_offset = table_offset + len(table) + 40
    return (record(STEP_KIND, STEP.pack(step, table_offset, next_offset, 0, 0)) + data + table
            + record(COMMIT_KIND, COMMIT.pack(step, pos, table_offset)))


def one_tensor(**overrides):
    def table(data_offset):
        tensor = {"name": "x", "dtype": "float32", "shape": [4], "offset": data_offset, "nbytes": 16, "crc32": 0}
        tensor.update(overrides)
        return {"step": 0, "events": [{"seq": 0, "stop": "embed", "layer": None, "part": "", "t_start_ns": 0,
                                       "dur_ns": 0, "scalars": {}, "tensors": [tensor]}]}
    return table


def hostile_step(tmp_path, table_fn) -> TraceReader:
    head = header()
    path = tmp_path / "hostile.trace"
    path.write_bytes(head + segment(len(head), 0, table_fn))
    return TraceReader(path, verify=False)


def test_the_hand_built_segment_is_itself_valid(tmp_path):
    with hostile_step(tmp_path, one_tensor()) as r:  # so the hostile variants below fail for their own reason
        assert r.steps == [0] and r.events(0)[0].tensors["x"].tolist() == [0.0] * 4


@pytest.mark.parametrize("data, match", [
    (b"", "not a trace"),
    (b"LLMTRAC", "not a trace"),
    (header(magic=b"GGUF\x03\x00\x00\x00"), "not a trace: magic"),
    (header(version=99), "version 99"),
    (header(flags=4), "flags"),
    (HEADER.pack(MAGIC, VERSION, 0), "info record at offset 16: truncated"),
    (HEADER.pack(MAGIC, VERSION, 0) + (INFO).to_bytes(4, "little") + bytes(4) + (2**63).to_bytes(8, "little"), "past the end"),
    (HEADER.pack(MAGIC, VERSION, 0) + (2**32 - 1).to_bytes(4, "little") + bytes(12), "record kind"),
    (header(info=b"[1, 2]"), "not an object"),
    (header(info=b"{bad json"), "not valid JSON"),
    (header(info=b"\xff\xfe{}"), "not valid JSON"),
    (header(info=b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    (header(info=b'{"n": 1' + b"0" * 5000 + b"}"), "not valid JSON"),
    (header()[:-1] + b"]", "crc mismatch"),
])
def test_broken_header_or_info_is_one_trace_error(tmp_path, data, match):
    path = tmp_path / "bad.trace"
    path.write_bytes(data)
    with pytest.raises(TraceError, match=match) as info:
        TraceReader(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("overrides, match", [
    ({"dtype": "object"}, "dtype 'object'"),
    ({"dtype": "<U10"}, "dtype '<U10'"),
    ({"dtype": "|O"}, "dtype '|O'"),
    ({"shape": [2**62, 2**62], "nbytes": 16}, "not 16 bytes"),
    ({"shape": [2**31] * 32, "nbytes": 16}, "not 16 bytes"),
    ({"shape": [1] * 33}, "up to 32"),
    ({"shape": [-4], "nbytes": 16}, "shape"),
    ({"shape": "4"}, "'shape' must be"),
    ({"nbytes": 2**62, "shape": [2**60]}, "do not fit"),
    ({"offset": 2**62}, "outside"),
    ({"offset": 0}, "outside"),
    ({"offset": -64}, "outside"),
    ({"offset": True}, "'offset' must be"),
    ({"crc32": 2**40}, "crc32"),
    ({"name": 7}, "'name' must be"),
])
def test_hostile_tensor_entries_are_refused(tmp_path, overrides, match):
    with hostile_step(tmp_path, one_tensor(**overrides)) as r:
        assert r.steps == [0]
        with pytest.raises(TraceError, match=match):
            r.events(0)
        with pytest.raises(TraceError, match=match):  # and again, the same way
            r.events(0)
        assert r.warnings


@pytest.mark.parametrize("table, match", [
    ({"step": 0, "events": [{"stop": "no_such_stop"}]}, "unknown stop"),
    ({"step": 0, "events": [7]}, "not a JSON object"),
    ({"step": 1, "events": []}, "table is not"),
    ({"step": 0, "events": {"0": {}}}, "table is not"),
    ({"step": 0, "events": [{"stop": "embed", "layer": "3"}]}, "layer"),
    ({"step": 0, "events": [{"stop": "embed", "tensors": [], "seq": 1.5}]}, "'seq' must be"),
])
def test_hostile_tables_are_refused(tmp_path, table, match):
    with hostile_step(tmp_path, lambda _: table) as r:
        with pytest.raises(TraceError, match=match):
            r.events(0)


def test_offsets_past_the_end_end_the_steps_with_a_warning(tmp_path):
    head = header()
    good = segment(len(head), 0, one_tensor())
    pos = len(head) + len(good)
    lying = record(STEP_KIND, STEP.pack(1, pos + 48, 2**62, 0, 0))
    path = tmp_path / "t.trace"
    path.write_bytes(head + good + lying + bytes(200))
    with TraceReader(path) as r:
        assert r.steps == [0] and not r.complete
        assert any("out of bounds" in w for w in r.warnings)


def test_a_footer_claiming_2_to_the_40_steps_is_not_believed(tmp_path):
    head = header()
    body = head + segment(len(head), 0, one_tensor())
    footer = record(FOOTER_KIND, FOOTER.pack(2**40, 0, 0))
    path = tmp_path / "t.trace"
    path.write_bytes(body + footer + record(TRAILER_KIND, TRAILER.pack(len(body), MAGIC)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with TraceReader(path) as r:
        assert r.steps == [0] and not r.complete  # found by hopping instead
        assert any("claims 1099511627776 steps" in w for w in r.warnings)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100_000  # KiB: nothing sized from the claim


def test_a_step_whose_table_is_corrupt_is_refused_and_the_others_still_read(tmp_path, events):
    path = tmp_path / "t.trace"
    data = bytearray(write(path, events))
    table = segment_offsets(path)[1]["table"]
    data[table + 40] ^= 0x20  # inside step 1's table JSON
    path.write_bytes(data)
    with TraceReader(path) as r:
        assert r.steps == [0, 1, 2] and r.complete
        with pytest.raises(TraceError, match="step 1: table .* crc mismatch"):
            r.events(1)
        assert len(r.events(0)) == len(r.events(2)) == 8
        assert r.verify_all() and r.warnings


def test_rewriting_a_trace_that_is_open_leaves_the_reader_its_old_file(tmp_path, events):
    # The reader runs in a subprocess: if the writer truncated the mapped file in place,
    # the reader would die of SIGBUS, which must fail this test rather than kill pytest.
    path = tmp_path / "t.trace"
    write(path, events)
    code = ("import sys; from traces.reader import TraceReader; r = TraceReader(sys.argv[1]); print(r.steps, flush=True);"
            "sys.stdin.readline(); print(r.steps, r.verify_all(), flush=True)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout.readline() == "[0, 1, 2]\n"
    write(path, events[:3])  # the same name recorded again while a replay has it mapped
    out, _ = proc.communicate("go\n")
    assert proc.returncode == 0 and out == "[0, 1, 2] []\n"
    with TraceReader(path) as r:
        assert r.steps == [0]

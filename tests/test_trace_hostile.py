"""Hostile and damaged traces: the reader answers TraceError (one line) or a prefix of good steps,
never another exception, and never allocates from a size the file declares.

tests/test_trace_format.py covers single bit flips, every truncation and the basic hostile
entries on hand-built files; here: sizes of 2^40 and more measured with tracemalloc, records
past 256 MiB (sparse files), deep JSON, the capture fields (`origin`/`full`, `truncated`),
and seeded random damage to a real recording, read through every API a user has.
"""

import json
import random
import tracemalloc

import numpy as np
import pytest

from inspector.cli import main
from inspector.commands.info import summarize
from tests.tiny_models import write_tiny_llama
from traces.reader import TraceError, TraceReader
from traces.writer import (
    COMMIT, COMMIT_KIND, FOOTER, FOOTER_KIND, HEADER, INFO, MAGIC, STEP, STEP_KIND, TABLE, TRAILER, TRAILER_KIND,
    VERSION, record,
)

MiB = 1 << 20


def header(info: bytes = b"{}", version: int = VERSION) -> bytes:
    return HEADER.pack(MAGIC, version, 0) + record(INFO, info)


def segment(pos: int, step: int, table, data_len: int = 64) -> bytes:
    """A committed step at `pos`: STEP, `data_len` zero bytes from a 64-aligned offset, then `table(data_offset)`."""
    data_offset = pos + 48 + (-(pos + 48) % 64)
    data = bytes(data_offset - pos - 48 + data_len)
    table_offset = pos + 48 + len(data)
    body = record(TABLE, json.dumps(table(data_offset)).encode() if callable(table) else table)
    next_offset = table_offset + len(body) + 40
    return (record(STEP_KIND, STEP.pack(step, table_offset, next_offset, 0, 0)) + data + body
            + record(COMMIT_KIND, COMMIT.pack(step, pos, table_offset)))


def tensor_table(step=0, **overrides):
    def table(data_offset):
        tensor = {"name": "x", "dtype": "float32", "shape": [4], "offset": data_offset, "nbytes": 16, "crc32": 3971697493}  # of 16 zero bytes
        tensor.update(overrides)
        return {"step": step, "events": [{"seq": 0, "stop": "embed", "layer": None, "part": "", "t_start_ns": 0,
                                          "dur_ns": 0, "scalars": {}, "tensors": [tensor]}]}
    return table


def write_steps(path, *tables) -> None:
    data = header()
    for step, table in enumerate(tables):
        data += segment(len(data), step, table)
    path.write_bytes(data)


def peak_bytes(fn) -> int:
    """The most Python memory `fn` held at once (its result or exception discarded)."""
    tracemalloc.start()
    try:
        fn()
    except TraceError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def read_all(path) -> None:
    """Everything a user can ask of a trace; TraceError is the only acceptable failure."""
    with TraceReader(path) as r:
        for step in r.steps:
            for event in r.events(step):
                for name in event.tensors:
                    event.tensors[name].sum()


def test_the_hand_built_tensor_reads(tmp_path):
    write_steps(tmp_path / "t.trace", tensor_table())  # so each variant below fails for its own reason
    with TraceReader(tmp_path / "t.trace") as r:
        assert r.events(0)[0].tensors["x"].tolist() == [0.0] * 4 and r.verify_all() == []


# -- declared sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, match", [
    ({"shape": [1 << 20, 1 << 20], "nbytes": 1 << 42}, "do not fit"),
    ({"shape": [1 << 40], "nbytes": 16}, "is not 16 bytes"),
    ({"shape": [2**63, 2**63, 2**63], "nbytes": 16}, "is not 16 bytes"),
    ({"shape": [16], "nbytes": 64, "at": 48}, "outside its step's data"),  # 64 bytes from 48 into a 64-byte blob
    ({"shape": [32], "nbytes": 128}, "do not fit"),  # more than the whole blob
    ({"shape": [-4, -1], "nbytes": 16}, "shape"),
    ({"shape": [4], "nbytes": 16, "at": 1 << 40}, "outside"),
    ({"shape": [4], "nbytes": -16}, "do not fit"),
])
def test_huge_or_negative_sizes_allocate_nothing(tmp_path, overrides, match):
    path = tmp_path / "t.trace"
    overrides = dict(overrides)
    at = overrides.pop("at", 0)
    write_steps(path, lambda data_offset: tensor_table(**overrides, offset=data_offset + at)(data_offset))
    with TraceReader(path) as r:
        with pytest.raises(TraceError, match=match) as e:
            r.events(0)
        assert "\n" not in str(e.value)
    assert peak_bytes(lambda: read_all(path)) < MiB


def test_a_record_declaring_2_to_the_40_bytes(tmp_path):
    path = tmp_path / "t.trace"
    path.write_bytes(HEADER.pack(MAGIC, VERSION, 0) + (INFO).to_bytes(4, "little") + bytes(4) + (1 << 40).to_bytes(8, "little"))
    with pytest.raises(TraceError, match="declares 1099511627776 bytes, past the end"):
        TraceReader(path)
    assert peak_bytes(lambda: TraceReader(path)) < MiB


def test_a_step_pointing_2_to_the_62_bytes_on(tmp_path):
    head = header()
    good = segment(len(head), 0, tensor_table())
    pos = len(head) + len(good)
    path = tmp_path / "t.trace"
    path.write_bytes(head + good + record(STEP_KIND, STEP.pack(1, pos + 48, 1 << 62, 0, 0)) + bytes(100))
    with TraceReader(path) as r:
        assert r.steps == [0] and not r.complete and any("out of bounds" in w for w in r.warnings)
    assert peak_bytes(lambda: read_all(path)) < MiB


def test_a_footer_for_2_to_the_40_steps(tmp_path):
    head = header()
    body = head + segment(len(head), 0, tensor_table())
    footer = record(FOOTER_KIND, FOOTER.pack(1 << 40, 0, 0))
    path = tmp_path / "t.trace"
    path.write_bytes(body + footer + record(TRAILER_KIND, TRAILER.pack(len(body), MAGIC)))
    with TraceReader(path) as r:
        assert r.steps == [0] and r.footer == "broken"
    assert peak_bytes(lambda: read_all(path)) < MiB


@pytest.mark.parametrize("what", ["info", "table"])
def test_json_records_past_256_mib_are_refused_unread(tmp_path, what):
    """A sparse file: the record's bytes exist, so its declared length passes the file-size check,
    and the 256 MiB limit is what refuses it (before its crc32 reads a byte)."""
    path = tmp_path / "big.trace"
    n = (256 << 20) + 1
    with open(path, "wb") as f:
        if what == "info":
            f.write(HEADER.pack(MAGIC, VERSION, 0) + (INFO).to_bytes(4, "little") + bytes(4) + n.to_bytes(8, "little"))
            f.truncate(f.tell() + n)
        else:
            head = header()
            pos = len(head)
            table_offset = pos + 48
            next_offset = table_offset + 16 + n + 40
            f.write(head + record(STEP_KIND, STEP.pack(0, table_offset, next_offset, 0, 0)))
            f.write(TABLE.to_bytes(4, "little") + bytes(4) + n.to_bytes(8, "little"))
            f.seek(next_offset - 40)
            f.write(record(COMMIT_KIND, COMMIT.pack(0, pos, table_offset)))
    if what == "info":
        with pytest.raises(TraceError, match="over the 256 MiB limit"):
            TraceReader(path)
    else:
        with TraceReader(path) as r:
            assert r.steps == [0]
            with pytest.raises(TraceError, match="over the 256 MiB limit"):
                r.events(0)
    assert peak_bytes(lambda: read_all(path)) < MiB


def test_deeply_nested_table_json_is_refused_and_the_next_step_reads(tmp_path):
    deep = b'{"step": 0, "events": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = tmp_path / "t.trace"
    head = header()
    first = segment(len(head), 0, deep)
    path.write_bytes(head + first + segment(len(head) + len(first), 1, tensor_table(step=1)))
    with TraceReader(path) as r:
        with pytest.raises(TraceError, match="not valid JSON|table is not"):
            r.events(0)
        assert r.events(1)[0].tensors["x"].tolist() == [0.0] * 4


@pytest.mark.parametrize("version", [0, 2, 99, 2**32 - 1])
def test_other_versions_are_refused(tmp_path, version):
    path = tmp_path / "t.trace"
    path.write_bytes(header(version=version))
    with pytest.raises(TraceError, match=f"version {version}; this reader reads version 1"):
        TraceReader(path)


# -- the capture fields ---------------------------------------------------------------------


@pytest.mark.parametrize("cut", [
    {"origin": [0], "full": [3]},  # the block (4) is bigger than the whole
    {"origin": [1], "full": [4]},  # runs past the end
    {"origin": [-1], "full": [8]},
    {"origin": [0, 0], "full": [4, 1]},  # one entry per axis
    {"origin": [0]},  # full missing
    {"full": [4]},
    {"origin": "0", "full": [4]},
    {"origin": [True], "full": [4]},
    {"origin": [0], "full": [2**80 + 0.5]},
])
def test_a_block_that_does_not_fit_its_full_shape_is_refused(tmp_path, cut):
    write_steps(tmp_path / "t.trace", tensor_table(**cut))
    with TraceReader(tmp_path / "t.trace") as r:
        with pytest.raises(TraceError, match="do not frame shape"):
            r.events(0)


def test_a_block_that_fits_reads_with_its_origin(tmp_path):
    write_steps(tmp_path / "t.trace", tensor_table(origin=[2**62], full=[2**62 + 4]))
    with TraceReader(tmp_path / "t.trace") as r:
        spec = r.events(0)[0].tensors.specs["x"]
        assert spec.origin == (2**62,) and spec.full == (2**62 + 4,)  # numbers, never sizes to allocate


@pytest.mark.parametrize("truncated, match", [
    ([1, 2], "truncated: not a JSON object"),
    ({"seq": "3", "reason": "x"}, "'seq' must be"),
    ({"seq": 3}, "'reason' must be"),
])
def test_a_hostile_truncation_note_refuses_its_step(tmp_path, truncated, match):
    def table(data_offset):
        return {**tensor_table()(data_offset), "truncated": truncated}
    write_steps(tmp_path / "t.trace", table)
    with TraceReader(tmp_path / "t.trace") as r:
        with pytest.raises(TraceError, match=match):
            r.events(0)


def test_hostile_info_sections_do_not_break_info_or_indexing(tmp_path, capsys):
    info = {"capture": {"spec": 7, "stops": {"attn": [["a", None]]}, "rows": [], "max_bytes": "x"},
            "model": {"weights": [1, 2], "n_layer": "many", "name": "\x1b[31mred"}, "engine": "torch", "vocab": 5}
    data = header(json.dumps(info).encode())
    path = tmp_path / "t.trace"
    path.write_bytes(data + segment(len(data), 0, tensor_table()))
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "integrity" in out and "cut short after step 0" in out
    assert main(["info", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 1
    with TraceReader(path) as r:
        with pytest.raises(KeyError):
            r[0, "attn", 0]


# -- random damage to a real recording ----------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    tiny = write_tiny_llama(d / "tiny.gguf")
    path = d / "run.trace"
    assert main([str(tiny), "hello the llama", "-n", "3", "--headless", "--record", str(path),
                 "--capture", "all;heads=1-2;rows=5"]) == 0
    with TraceReader(path) as r:
        truth = {e.key: {n: np.array(e.tensors[n]) for n in e.tensors} for e in r}
    return path.read_bytes(), truth


def check_damaged(path, truth) -> str:
    """Read everything; each thing read is either refused with TraceError or exactly right."""
    try:
        r = TraceReader(path)
    except TraceError as e:
        assert "\n" not in str(e)
        return "refused"
    outcome = "intact"
    with r:
        summarize(r, str(path), verify=True)  # `llm-inspect info --verify` survives it too
        for step in r.steps:
            try:
                events = r.events(step)
            except TraceError:
                outcome = "step refused"
                continue
            for event in events:
                for name in event.tensors:
                    try:
                        got = event.tensors[name]
                    except TraceError:
                        outcome = "tensor refused"
                        continue
                    want = truth[event.key][name]
                    assert got.shape == want.shape and np.array_equal(got, want, equal_nan=True), event.describe()
    return outcome


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_is_refused_or_harmless(tmp_path, recording, seed):
    data, truth = recording
    rng = random.Random(seed)
    path = tmp_path / "damaged.trace"
    seen = set()
    for _ in range(60):
        damaged = bytearray(data)
        kind = rng.choice(["flip", "bytes", "cut", "splice"])
        if kind == "flip":
            for _ in range(rng.randint(1, 8)):
                pos = rng.randrange(len(damaged))
                damaged[pos] ^= 1 << rng.randrange(8)
        elif kind == "bytes":
            pos = rng.randrange(len(damaged) - 8)
            damaged[pos:pos + 8] = rng.choice([b"\xff" * 8, bytes(8), (1 << 62).to_bytes(8, "little")])
        elif kind == "cut":
            damaged = damaged[: rng.randrange(len(damaged))]
        else:  # a stretch of the file copied over another place
            a, b = rng.randrange(len(damaged) - 64), rng.randrange(len(damaged) - 64)
            damaged[a:a + 64] = data[b:b + 64]
        path.write_bytes(bytes(damaged))
        seen.add(check_damaged(path, truth))
    assert seen - {"intact"}, seen  # the damage was noticed somewhere

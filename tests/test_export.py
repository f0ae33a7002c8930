"""Exports: Chrome trace-event JSON for Perfetto, tensors to .npz and .npy, and `llm-inspect export`."""

import json
import zipfile
from collections import defaultdict

import numpy as np
import pytest

from inspector.cli import main
from tests.fixtures import diffs
from traces.export import ExportError, parse_select, write_npy, write_npz, write_perfetto
from traces.live import MemoryTrace
from traces.reader import open_trace
from traces.schema import Event


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    return diffs.save(diffs.trace(diffs.run(n_steps=4)), tmp_path_factory.mktemp("export") / "run.trace")


@pytest.fixture
def trace(trace_file):
    with open_trace(trace_file) as t:
        yield t


# Perfetto -------------------------------------------------------------------------------------------


def test_perfetto_json_structure(trace, tmp_path):
    out = tmp_path / "run.json"
    n = write_perfetto(trace, out)
    doc = json.loads(out.read_text())  # strict JSON
    events = doc["traceEvents"]
    assert len(events) == n and doc["displayTimeUnit"] == "ns"
    slices = [e for e in events if e["ph"] == "X"]
    meta = [e for e in events if e["ph"] == "M"]
    assert len(slices) + len(meta) == n
    n_events = sum(len(trace.events(s)) for s in trace.steps)
    assert len(slices) == n_events + len(trace.steps)  # one per event, one per step
    for e in slices:
        assert {"ph", "ts", "dur", "pid", "tid", "name"} <= set(e), e
        assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0 and e["dur"] >= 0
        assert isinstance(e["tid"], int) and e["pid"] == 1
    by_track = defaultdict(list)
    for e in slices:
        by_track[e["tid"]].append(e)
    for tid, track in by_track.items():
        ts = [e["ts"] for e in track]
        assert ts == sorted(ts), f"track {tid} is not monotone"
        for before, after in zip(track, track[1:]):  # complete events on one track must not overlap
            assert before["ts"] + before["dur"] <= after["ts"] + 1e-9
    named = {e["tid"]: e["args"]["name"] for e in meta if e["name"] == "thread_name"}
    assert set(named) == set(by_track)
    assert [named[layer] for layer in range(diffs.N_LAYER)] == [f"layer {i}" for i in range(diffs.N_LAYER)]
    assert {"steps", "entry", "exit", "protocol"} <= set(named.values())
    assert any(e["name"] == "process_name" and "toy-6L" in e["args"]["name"] for e in meta)


def test_perfetto_slices_carry_the_events_timing_and_args(trace, tmp_path):
    out = tmp_path / "run.json"
    write_perfetto(trace, out)
    slices = [e for e in json.loads(out.read_text())["traceEvents"] if e["ph"] == "X" and e["cat"] != "step"]
    events = [e for s in trace.steps for e in trace.events(s)]
    t0 = events[0].t_start_ns
    for s, e in zip(slices, events):
        assert s["name"] == e.stop and s["ts"] == (e.t_start_ns - t0) / 1e3 and s["dur"] == e.dur_ns / 1e3
        assert s["tid"] == (e.layer if e.layer is not None else s["tid"]) and s["args"]["step"] == e.step
    attn = next(s for s in slices if s["name"] == "attn" and s["args"]["step"] == 1 and s["args"]["layer"] == 2)
    assert attn["args"]["tensors"] == {"weights": "float32[2, 1, 9]"} and "sink_mass" in attn["args"]
    assert attn["tid"] == 2 and attn["cat"] == "layer"


def test_perfetto_leaves_long_scalars_out(tmp_path):
    t = MemoryTrace({"model": {"name": "m"}})
    t.append(Event(0, "tokenize", 0, scalars={"ids": list(range(1000)), "n": 3, "nan": float("nan")},
                   t_start_ns=5, dur_ns=10))
    out = tmp_path / "t.json"
    write_perfetto(t, out)
    args = json.loads(out.read_text())["traceEvents"][0]["args"]
    assert args["n"] == 3 and args["nan"] == "nan" and "ids" not in args


# numpy ----------------------------------------------------------------------------------------------


def test_npz_holds_the_selected_tensors_keyed_by_step_stop_layer(trace, tmp_path):
    out = tmp_path / "t.npz"
    count, _ = write_npz(trace, out, [parse_select("attn@0-1:2"), parse_select("qkv.k@3:0")])
    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["step0.qkv.L3.k", "step2.attn.L0.weights", "step2.attn.L1.weights"]
        assert count == 3
        np.testing.assert_array_equal(z["step2.attn.L1.weights"], trace.get(2, "attn", 1).tensors["weights"])
        assert all(z[k].dtype != object for k in z.files)
    assert not (tmp_path / "t.npz.part").exists()


def test_npz_of_everything_and_npy_per_tensor(trace, tmp_path):
    n_tensors = sum(len(e.tensors) for s in trace.steps for e in trace.events(s))
    count, nbytes = write_npz(trace, tmp_path / "all.npz")
    assert count == n_tensors and nbytes > 0
    with zipfile.ZipFile(tmp_path / "all.npz") as z:
        assert "step0.text.bytes.npy" in z.namelist() and "step3.logits.logits.npy" in z.namelist()
    count, _ = write_npy(trace, tmp_path / "npy", [parse_select("logits")])
    files = sorted(p.name for p in (tmp_path / "npy").iterdir())
    assert count == 4 and files == [f"step{s}.logits.logits.npy" for s in range(4)]
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "step3.logits.logits.npy", allow_pickle=False),
                                  trace.get(3, "logits").tensors["logits"])


def test_hostile_names_cannot_leave_the_directory_and_objects_cannot_go_in(tmp_path):
    t = MemoryTrace({})
    t.append(Event(0, "embed", 0, part="../x", tensors={"../../evil": np.zeros(2, np.float32)}))
    write_npy(t, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["step0.embed.___x.______evil.npy"]
    t.append(Event(1, "embed", 0, tensors={"out": np.array([object()], dtype=object)}))
    with pytest.raises(ExportError, match="object array"):
        write_npz(t, tmp_path / "o.npz")
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "o.npz.part").exists()


@pytest.mark.parametrize("text, message", [
    ("nonsense@1", "unknown stop 'nonsense'"),
    ("attn@x", "expected STOP[.TENSOR][@LAYERS][:STEPS]"),
    ("attn@3-1", "runs backwards"),
    ("attn:1-", "not a number or a range"),
])
def test_bad_selections(text, message):
    with pytest.raises(ExportError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_select(text)


def test_selection_syntax():
    s = parse_select("attn@0-2,5:7")
    assert s.stop == "attn" and s.layers == {0, 1, 2, 5} and s.steps == {7} and s.tensor is None
    s = parse_select("*:3")
    assert s.stop is None and s.layers is None and s.steps == {3}


# The command ----------------------------------------------------------------------------------------


def test_export_command(capsys, trace_file, tmp_path):
    out = tmp_path / "p.json"
    assert main(["export", trace_file, "--perfetto", str(out), "--npz", str(tmp_path / "a.npz"),
                 "--select", "residual@5"]) == 0
    printed = capsys.readouterr().out
    assert "trace events" in printed and "4 tensors" in printed
    assert json.loads(out.read_text())["traceEvents"]


@pytest.mark.parametrize("argv, message", [
    ([], "nothing to export"),
    (["--perfetto", "x.json", "--select", "attn"], "--select chooses tensors for --npz or --npy"),
    (["--npz", "x.npz", "--select", "attn@99"], "the selection matched no tensor"),
    (["--npz", "x.npz", "--select", "bogus"], "unknown stop 'bogus'"),
])
def test_export_command_errors(capsys, trace_file, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["export", trace_file, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-inspect: error: ") and message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind

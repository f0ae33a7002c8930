"""Diffing two traces: the metrics, the alignment, the first divergence, and `llm-inspect diff`."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from inspector.cli import main
from tests.fixtures import diffs
from traces.base import Trace
from traces.diff import Tolerance, compare_tensors, diff_traces
from traces.reader import open_trace
from traces.schema import Event


@pytest.fixture(scope="module")
def base():
    return diffs.run()


def diff_with(base, b_events, tol=None, **b_kw):
    return diff_traces(diffs.trace(base), diffs.trace(b_events, **b_kw), tol)


# The metrics ------------------------------------------------------------------------------------


def test_metrics_of_orthogonal_and_scaled_vectors():
    t = compare_tensors("x", np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32))
    assert t.cos == pytest.approx(0.0) and t.rel_l2 == pytest.approx(math.sqrt(2)) and t.max_abs == 1.0
    t = compare_tensors("x", np.array([3.0, 4.0], np.float32), np.array([6.0, 8.0], np.float32))
    assert t.cos == pytest.approx(1.0) and t.rel_l2 == pytest.approx(1.0) and t.max_abs == 4.0 and t.n_diff == 2


def test_metrics_are_chunked_without_changing_the_result(monkeypatch):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(10_001).astype(np.float32)
    b = a + rng.standard_normal(10_001).astype(np.float32) * 0.01
    whole = compare_tensors("x", a, b)
    monkeypatch.setattr("traces.diff.CHUNK", 1000)
    chunked = compare_tensors("x", a, b)
    assert chunked.cos == pytest.approx(whole.cos, abs=1e-12)
    assert chunked.rel_l2 == pytest.approx(whole.rel_l2, rel=1e-9) and chunked.max_abs == whole.max_abs
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    expected = float(a64 @ b64 / np.linalg.norm(a64) / np.linalg.norm(b64))
    assert whole.cos == pytest.approx(expected, abs=1e-12)


def test_logit_metrics_kl_topk_top1():
    rng = np.random.default_rng(1)
    a = rng.standard_normal(50).astype(np.float32)
    same = compare_tensors("logits", a, a.copy(), logits=True)
    assert same.kl == 0.0 and same.topk == 1.0 and same.top1_match
    b = a.copy()
    b[int(np.argmin(a))] = a.max() + 1.0  # the least likely token becomes the most likely
    t = compare_tensors("logits", a, b, logits=True)
    pa = np.exp(a - a.max()) / np.exp(a - a.max()).sum()
    pb = np.exp(b - b.max()) / np.exp(b - b.max()).sum()
    assert t.kl == pytest.approx(float((pa * np.log(pa / pb)).sum()), rel=1e-6)
    assert t.top1 == (int(np.argmax(a)), int(np.argmin(a))) and not t.top1_match
    assert t.topk == 0.9  # one of A's top-10 was pushed out by the new first


def test_masked_logits_agree_and_one_sided_infinities_do_not():
    a = np.array([1.0, -np.inf, 2.0], np.float32)
    t = compare_tensors("logits", a, a.copy(), logits=True)
    assert t.n_diff == 0 and t.n_nonfinite == 0 and t.kl == 0.0
    b = np.array([1.0, 0.5, 2.0], np.float32)
    t = compare_tensors("logits", a, b, logits=True)
    assert t.n_nonfinite == 1 and math.isfinite(t.cos)
    bad = diffs.trace(diffs.run(n_steps=1))
    events = [e for s in bad.steps for e in bad.events(s)]
    logits = next(e for e in events if e.stop == "logits")
    other = replace(logits, tensors={"logits": np.where(np.arange(logits.tensors["logits"].size) == 0, np.nan,
                                                              logits.tensors["logits"]).astype(np.float32)})
    d = diff_traces(bad, diffs.trace([other if e is logits else e for e in events]))
    assert d.first.stop == "logits" and d.first.kind == "nonfinite"


# Aligning and the first divergence -------------------------------------------------------------------


def test_identical_traces_have_no_divergence(base):
    d = diff_traces(diffs.trace(base), diffs.trace(diffs.run()))
    assert d.first is None and d.same and d.reasons == []
    assert d.steps == list(range(8)) and all(t.match for t in d.tokens) and len(d.tokens) == 8
    assert all(t.cos == 1.0 and t.n_diff == 0 for e in d.events for t in e.tensors)
    per_layer = [e for e in d.events if e.stop == "qkv"]
    assert len(per_layer) == 8 * diffs.N_LAYER and all(len(e.tensors) == 3 for e in per_layer)


def test_one_perturbed_tensor_is_the_first_and_only_divergence(base):
    d = diff_with(base, diffs.perturb(base, 3, "attn_out", 2, scale=0.2))
    assert (d.first.step, d.first.stop, d.first.layer, d.first.kind) == (3, "attn_out", 2, "cos")
    assert [e.where() for e in d.events if e.breach] == ["step 3 · attn_out · layer 2"]
    assert not d.same


def _with_stage(events, ids, logits):
    """`events` plus a top_k sampler stage at step 2 showing these candidates."""
    at = next(i for i, e in enumerate(events) if e.step == 2 and e.stop == "sample")
    stage = Event(0, "sample", 2, None, "top_k", {"ids": np.array(ids, np.int32),
                                                  "logits": np.array(logits, np.float32)}, {"n": len(ids)})
    out = events[:at] + [stage] + events[at:]
    return [replace(e, seq=i) for i, e in enumerate(out)]


def test_candidates_reordered_between_near_ties_are_no_divergence(base):
    # Two engines whose logits differ by ~1e-5 rank two near-tied candidates either way.
    a = _with_stage(base, [7, 4, 9, 5], [3.0, 2.500001, 2.5, 1.0])
    tied = _with_stage(base, [7, 9, 4, 5], [3.0, 2.500002, 2.5, 1.0])
    d = diff_traces(diffs.trace(a), diffs.trace(tied))
    ids = next(t for e in d.events if e.stop == "sample" and e.part == "top_k" for t in e.tensors if t.name == "ids")
    assert d.same and ids.n_diff == 0 and ids.ties == 2
    # The same swap between candidates a whole logit apart is a divergence.
    apart = _with_stage(base, [7, 9, 4, 5], [3.0, 1.5, 2.5, 1.0])
    d = diff_traces(diffs.trace(_with_stage(base, [7, 4, 9, 5], [3.0, 2.5, 1.5, 1.0])), diffs.trace(apart))
    assert not d.same and (d.first.stop, d.first.part, d.first.tensor) == ("sample", "top_k", "ids")


def test_first_divergence_is_in_execution_order_not_stop_order(base):
    # Everything computed after step 3 · layer 2's attention output parts too. In stop-major
    # order attn_norm of layer 3 would come first; it was computed later.
    d = diff_with(base, diffs.perturb(base, 3, "attn_out", 2, scale=0.2, onward=True))
    assert (d.first.step, d.first.stop, d.first.layer) == (3, "attn_out", 2)
    assert d.at(3, "attn_norm", 3)[0].breach is not None
    assert all(e.breach is None for e in d.events if e.step < 3)


def test_a_different_token_is_a_token_mismatch_at_that_step(base):
    d = diff_with(base, diffs.flip_token(base, 2, 17))
    assert [t.step for t in d.tokens if not t.match] == [2]
    assert (d.first.step, d.first.stop, d.first.kind) == (2, "logits", "top1")
    assert "B 17" in d.first.detail
    # the logits off, only the token counts
    d = diff_with(base, diffs.flip_token(base, 2, 17), Tolerance(cos=None, top1=False))
    assert (d.first.step, d.first.stop, d.first.kind) == (2, "sample", "token")
    assert any("tokens differ from step 2" in r.text for r in d.reasons)
    d = diff_with(base, diffs.flip_token(base, 2, 17), Tolerance(cos=None, top1=False, tokens=False))
    assert (d.first.step, d.first.stop, d.first.kind) == (3, "batch", "prompt")  # step 3 is fed B's token


def test_tolerance_switches(base):
    b = diffs.perturb(base, 3, "attn_out", 2, scale=0.2)
    assert diff_with(base, b, Tolerance(cos=0.5)).first is None
    d = diff_with(base, b, Tolerance(cos=None, max_abs=1e-3))
    assert (d.first.stop, d.first.kind) == ("attn_out", "max_abs")
    d = diff_with(base, diffs.perturb(base, 5, "logits", None, scale=0.05), Tolerance(cos=None, kl=1e-9))
    assert (d.first.step, d.first.stop, d.first.kind) == (5, "logits", "kl")


def test_different_lengths(base):
    d = diff_with(base, diffs.only_steps(base, 3))
    assert d.steps == [0, 1, 2] and d.first is None and not d.same
    assert [r.text for r in d.reasons] == ["B has 3 steps, A 8: only the 3 both hold are compared"]
    assert [(t.step, t.a is not None, t.b is not None) for t in d.tokens][2:4] == [(2, True, True), (3, True, False)]


def test_different_prompts(base):
    other = diffs.run(prompt_ids=[1, 3, 5, 4, 7, 8, 9, 2])
    d = diff_with(base, other)
    assert any(r.text == "prompt ids differ from position 3 (A 8 tokens, B 8)" for r in d.reasons)
    assert (d.first.step, d.first.stop, d.first.kind) == (0, "text", "prompt")
    tokenize = d.at(0, "tokenize", None)[0]
    assert tokenize.breach.detail == "prompt ids differ from position 3"
    assert tokenize.tensors[0].n_diff == 1


def test_prompts_of_different_lengths(base):
    d = diff_with(base, diffs.run(prompt_ids=diffs.PROMPT_IDS + [5, 5]))
    texts = [r.text for r in d.reasons]
    assert "prompt ids differ from position 8 (A 8 tokens, B 10)" in texts
    shape = next(r.text for r in d.reasons if r.kind == "shape")  # one line, not one per tensor
    assert shape.startswith("the prompts have 8 and 10 tokens:") and "attn.weights" in shape
    assert d.first.kind == "prompt" and d.first.detail == "prompt text differs from character 40 (A 40, B 42)"


def test_different_models_align_the_layers_they_share(base):
    d = diff_with(base, diffs.only_layers(base, 4), n_layer=4)
    assert "models differ: A n_layer 6; B n_layer 4" in [r.text for r in d.reasons]
    assert any(r.text.startswith("layers 4–5 of A have no counterpart (B has 4 layers)") for r in d.reasons)
    assert {e.layer for e in d.events if e.stop == "residual"} == {0, 1, 2, 3}
    assert d.first is None and not d.same


def test_a_stop_missing_on_one_side(base):
    d = diff_with(base, diffs.without(base, "attn"))
    assert [(r.kind, r.text) for r in d.reasons] == [("capture", "attn not captured in B")]
    assert d.same  # everything both captured agrees
    assert d.at(0, "attn", 0) == []


def test_shapes_that_differ_are_not_compared_but_reported(base):
    b = [replace(e, tensors={"out": e.tensors["out"][:, :4]}) if (e.step, e.stop, e.layer) == (1, "ffn_out", 0)
         else e for e in base]
    d = diff_with(base, b)
    event = d.at(1, "ffn_out", 0)[0]
    assert event.tensors == [] and event.shapes == {"out": ([1, 8], [1, 4])}
    assert (d.first.step, d.first.stop, d.first.kind) == (1, "ffn_out", "shape")
    assert any("ffn_out.out: shapes differ in 1 event" in r.text for r in d.reasons)


def test_stop_summaries_hold_the_worst_per_stop(base):
    d = diff_with(base, diffs.perturb(base, 3, "attn_out", 2, scale=0.2))
    rows = {s.stop: s for s in d.stop_summaries()}
    assert rows["attn_out"].min_cos < 0.999 and rows["attn_out"].worst == (3, 2) and rows["attn_out"].breaches == 1
    assert rows["residual"].min_cos == 1.0 and rows["residual"].breaches == 0
    assert rows["logits"].top1_match == rows["logits"].top1_total == 8


class StepByStep(Trace):
    """A trace that records the order its steps are read in."""

    def __init__(self, inner, log):
        self.inner, self.info, self.log = inner, inner.info, log

    @property
    def steps(self):
        return self.inner.steps

    @property
    def complete(self):
        return self.inner.complete

    def events(self, step):
        self.log.append(step)
        return self.inner.events(step)


def test_traces_are_read_one_step_at_a_time_in_order(base):
    log_a, log_b = [], []
    diff_traces(StepByStep(diffs.trace(base), log_a), StepByStep(diffs.trace(diffs.run()), log_b))
    # one events() call per step for the diff itself, plus tokenize at step 0 for the prompt check
    assert [s for s in log_a if s] == list(range(1, 8)) and [s for s in log_b if s] == list(range(1, 8))


# The command -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, base):
    d = tmp_path_factory.mktemp("diff")
    return {
        "a": diffs.save(diffs.trace(base), d / "a.trace"),
        "same": diffs.save(diffs.trace(diffs.run()), d / "same.trace"),
        "b": diffs.save(diffs.trace(diffs.perturb(base, 3, "attn_out", 2, scale=0.2), numerics="exact"),
                        d / "b.trace"),
        "short": diffs.save(diffs.trace(diffs.only_steps(base, 3)), d / "short.trace"),
    }


def run_cli(capsys, *argv):
    code = main(["diff", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_exit_codes(capsys, files, tmp_path):
    assert run_cli(capsys, files["a"], files["same"], "--headless")[0] == 0
    assert run_cli(capsys, files["a"], files["b"], "--headless")[0] == 1
    assert run_cli(capsys, files["a"], files["short"], "--json")[0] == 1
    assert run_cli(capsys, files["a"], files["b"], "--json", "--tol-cos", "0.5")[0] == 0
    code, _, err = run_cli(capsys, files["a"], str(tmp_path / "none.trace"), "--headless")
    assert code == 2 and err.startswith("llm-inspect: error: no such trace file") and len(err.splitlines()) == 1
    code, _, err = run_cli(capsys, files["a"], files["b"], "--tol-cos", "2")
    assert code == 2 and "--tol-cos 2.0 is not a cosine" in err
    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"LLMTRACE" + b"\x00" * 40)
    code, _, err = run_cli(capsys, files["a"], str(bad), "--json")
    assert code == 2 and str(bad) in err


def test_headless_table(capsys, files):
    code, out, _ = run_cli(capsys, files["a"], files["b"], "--headless")
    lines = out.splitlines()
    assert lines[0].startswith("A ") and "torch llamacpp float32 · 8 steps" in lines[0]
    assert "torch exact float32" in lines[1]
    row = next(line for line in lines if line.startswith("attn_out "))
    assert row.split()[1] == "48" and float(row.split()[2]) < 0.999 and row.endswith("step 3 · layer 2")
    assert "first divergence  step 3 · attn_out · layer 2: out: cos" in out
    assert "tokens     8/8 steps draw the same token" in out and lines[-1] == "differ"


def test_json_schema(capsys, files):
    code, out, _ = run_cli(capsys, files["a"], files["short"], "--json")
    d = json.loads(out)  # strict JSON: the CLI writes with allow_nan=False
    assert set(d) == {"version", "same", "tolerance", "a", "b", "steps", "reasons", "first_divergence", "tokens",
                      "stops", "events"}
    assert d["version"] == 1 and d["same"] is False and d["steps"] == [0, 1, 2]
    assert d["tolerance"] == {"cos": 0.999, "rel_l2": None, "max_abs": None, "kl": None, "top1": True, "tokens": True}
    assert d["a"]["steps"] == 8 and d["b"]["steps"] == 3 and d["a"]["name"].endswith("a.trace")
    assert d["reasons"] == [{"kind": "length", "text": "B has 3 steps, A 8: only the 3 both hold are compared"}]
    assert d["first_divergence"] is None
    assert d["tokens"][3] == {"step": 3, "a": d["tokens"][3]["a"], "b": None, "match": False}
    stop = next(s for s in d["stops"] if s["stop"] == "logits")
    assert {"events", "min_cos", "max_rel_l2", "max_abs", "max_kl", "min_topk", "top1_match", "worst"} <= set(stop)
    event = next(e for e in d["events"] if e["stop"] == "logits")
    tensor = event["tensors"][0]
    assert tensor["name"] == "logits" and tensor["shape"] == [len(diffs.PIECES)] and tensor["top1_match"] is True
    assert {"cos", "rel_l2", "max_abs", "kl", "topk", "top1"} <= set(tensor)

    code, out, _ = run_cli(capsys, files["a"], files["b"], "--json")
    first = json.loads(out)["first_divergence"]
    assert first == {"step": 3, "stop": "attn_out", "layer": 2, "part": "", "kind": "cos", "tensor": "out",
                     "detail": first["detail"]}


def test_trace_files_and_memory_traces_diff_alike(files, base):
    with open_trace(files["a"]) as a, open_trace(files["b"]) as b:
        on_disk = diff_traces(a, b).to_json()
    in_memory = diff_traces(diffs.trace(base), diffs.trace(diffs.perturb(base, 3, "attn_out", 2, scale=0.2),
                                                           numerics="exact")).to_json()
    for side in ("a", "b"):
        on_disk[side].pop("name"), in_memory[side].pop("name")
    assert on_disk == in_memory

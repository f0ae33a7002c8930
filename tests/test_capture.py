"""The capture policy: what `--capture` records, how it cuts tensors, and the size budget.

Recordings are real runs of a tiny GGUF model through the CLI: a cut capture must hold
exactly the slices of a full capture of the same (greedy, deterministic) run.
"""

import numpy as np
import pytest

from inspector.cli import main
from tests.fixtures import synthetic
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.policy import (
    DEFAULT_MAX_BYTES, GiB, LLAMA_8B, PREFILL_SHARE, SPINE, CaptureError, parse, parse_size, size_table, step_bytes,
)
from traces.reader import open_trace
from traces.schema import STOPS

PROMPT = "hello the llama"  # 8 tokens with the tiny vocabulary
N_PREDICT = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf")  # 2 layers, 4 heads, 2 KV heads


def record(tiny, path, *flags, n=N_PREDICT, capsys=None):
    code = main([str(tiny), PROMPT, "-n", str(n), "--headless", "--record", str(path), *flags])
    assert code == 0
    return open_trace(path)


@pytest.fixture(scope="module")
def full(tiny, tmp_path_factory):
    with record(tiny, tmp_path_factory.mktemp("t") / "full.trace", "--capture", "full") as t:
        yield t


# -- the grammar -----------------------------------------------------------------------------


def test_presets():
    minimal, default, full = parse("minimal"), parse("default"), parse("full")
    assert set(minimal.stops) == set(SPINE) | {"logits"} and minimal.timings
    assert all(default.stops[s.name] is None for s in STOPS) and default.rows == "auto"
    assert full.rows is None and full.heads is None and full.dtype == "auto"
    for p in (minimal, default, full):
        assert all(p.wants(s.name, 0) for s in STOPS)  # minimal emits the rest for their timings
    assert not minimal.keeps_tensors("attn", 0) and minimal.keeps_tensors("logits")


def test_a_spec_of_stops_layers_and_settings():
    p = parse("attn,logits@0-3;residual@5,20-;heads=0-1;dtype=f16;rows=8")
    assert p.keeps_tensors("attn", 3) and not p.keeps_tensors("attn", 4)
    assert p.keeps_tensors("logits")  # layers mean nothing to a stop outside the layer stack
    assert p.keeps_tensors("residual", 5) and p.keeps_tensors("residual", 31) and not p.keeps_tensors("residual", 6)
    assert not p.wants("qkv", 0) and not p.wants("embed")
    assert all(p.wants(s) for s in SPINE)  # the spine is always there
    assert (p.heads, p.dtype, p.rows) == ((0, 1), "f16", 8)
    later = parse("attn@0;attn@2")
    assert later.keeps_tensors("attn", 2) and not later.keeps_tensors("attn", 1)
    assert parse("attn@0;attn").keeps_tensors("attn", 17)  # every layer wins
    assert parse("default;dtype=f16;rows=all").rows is None
    assert parse("residual;timings").wants("attn", 3) and not parse("residual;timings").keeps_tensors("attn", 3)


@pytest.mark.parametrize("spec, match", [
    ("", "empty term"),
    ("attn;;logits", "empty term"),
    ("atn", "unknown stop 'atn'"),
    ("attn;full", "preset 'full' must be the first term"),
    ("attn@x", "layers are N, N-M or N-"),
    ("attn@3-1", "runs backwards"),
    ("attn@", "layers are"),
    ("heads=2-", "give a head or a range"),
    ("heads=3-1", "runs backwards"),
    ("rows=0", "at least 1"),
    ("rows=-3", "at least 1"),
    ("dtype=bf16", "numpy has no bfloat16"),
    ("dtype=int8", "auto, f32 or f16"),
    ("colour=red", "unknown setting 'colour'"),
])
def test_bad_specs_are_one_line_errors(spec, match):
    with pytest.raises(CaptureError, match=match) as e:
        parse(spec)
    assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_sizes():
    assert parse_size("2G") == 2 * GiB and parse_size("500M") == 500 << 20 and parse_size("1.5GiB") == 3 * GiB // 2
    assert parse_size("none") is None
    for bad in ("12Q", "-1G", "", "4096"):  # 4096 bytes: a typo, not a budget
        with pytest.raises(CaptureError, match="max-trace-size"):
            parse_size(bad)


def test_layers_and_heads_are_checked_against_the_model():
    model = {"n_layer": 2, "n_head": 4, "n_head_kv": 2}
    with pytest.raises(CaptureError, match="attn@5: the model has 2 layers"):
        parse("attn@5").bind(model, 8, None)
    with pytest.raises(CaptureError, match="heads=2-4: the model has 4 heads"):
        parse("default;heads=2-4").bind(model, 8, None)
    assert parse("attn@1;heads=3").bind(model, 8, None).group == 2


# -- cutting tensors ---------------------------------------------------------------------------


def test_shape_keeps_the_last_rows_and_the_kv_heads_of_the_query_heads():
    rng = np.random.default_rng(0)
    p = parse("all;heads=4-5;rows=2").bind({"n_layer": 1, "n_head": 8, "n_head_kv": 2}, 5, None)  # 4 q heads per kv
    q, k = rng.standard_normal((5, 8, 3)).astype(np.float32), rng.standard_normal((5, 2, 3)).astype(np.float32)
    kept, cuts = p.shape("qkv", {"q": q, "k": k, "v": k})
    assert np.array_equal(kept["q"], q[3:, 4:6]) and np.array_equal(kept["k"], k[3:, 1:2])
    assert cuts["q"] == ((3, 4, 0), (5, 8, 3)) and cuts["k"] == ((3, 1, 0), (5, 2, 3))
    w = rng.random((8, 5, 7)).astype(np.float32)
    kept, cuts = p.shape("attn", {"weights": w})
    assert np.array_equal(kept["weights"], w[4:6, 3:]) and cuts["weights"] == ((4, 3, 0), (8, 5, 7))
    logits = rng.standard_normal(100).astype(np.float32)
    kept, cuts = p.shape("logits", {"logits": logits})
    assert kept["logits"] is logits and cuts == {}  # nothing to cut, nothing copied
    kept, _ = parse("all;dtype=f16").shape("residual", {"out": w, "ids": np.arange(3)})
    assert kept["out"].dtype == np.float16 and kept["ids"].dtype == np.arange(3).dtype  # only floats change
    kept, _ = parse("all;dtype=f32").shape("residual", {"out": w.astype(np.float16)})
    assert kept["out"].dtype == np.float32


def test_a_cut_capture_holds_exactly_the_slices_of_a_full_one(tiny, tmp_path, full):
    spec = "attn,qkv,residual@1;heads=2-3;rows=3;dtype=f16"
    with record(tiny, tmp_path / "cut.trace", "--capture", spec) as cut:
        assert cut.generated_ids() == full.generated_ids()  # the policy changes what is kept, not the run
        assert cut.stops == ["text", "tokenize", "batch", "qkv", "attn", "residual", "sample", "stop", "stream"]
        assert cut.info["capture"]["spec"] == spec and cut.info["capture"]["heads"] == [2, 3]
        checked = 0
        for step in cut.steps:
            assert cut.get(step, "attn", 0) is None and cut.get(step, "embed") is None
            for stop in ("attn", "qkv", "residual"):
                event, whole = cut.get(step, stop, 1), full.get(step, stop, 1)
                for name, spec_ in event.tensors.specs.items():
                    want = np.asarray(whole.tensors[name])
                    origin = spec_.origin or (0,) * want.ndim
                    block = want[tuple(slice(o, o + n) for o, n in zip(origin, spec_.shape))]
                    assert np.array_equal(event.tensors[name], block.astype(np.float16)), (step, stop, name)
                    assert spec_.full in (None, want.shape)
                    checked += 1
        prefill = cut.get(0, "attn", 1).tensors
        assert prefill["weights"].shape == (2, 3, 8)  # heads 2-3, the last 3 of 8 queries, all 8 keys
        assert prefill.specs["weights"].origin == (2, 5, 0)
        assert cut.get(0, "qkv", 1).tensors["k"].shape == (3, 1, 16)  # KV head 1 serves query heads 2-3
        assert cut.get(2, "residual", 1).tensors["out"].shape == (1, 64)  # a decode step: one row, uncut
    assert checked == N_PREDICT * 5


def test_timings_emit_every_stop_without_its_tensors(tiny, tmp_path, full):
    with record(tiny, tmp_path / "min.trace", "--capture", "minimal") as t:
        assert t.stops == full.stops
        for event in t:
            kept = set(event.tensors)
            if event.stop == "logits":
                assert kept == {"logits"}
            elif event.stop not in SPINE:
                assert kept == set() and event.dur_ns >= 0
        assert np.array_equal(t[3, "logits"], full[3, "logits"])


# -- the size arithmetic -----------------------------------------------------------------------


def test_step_bytes_is_what_a_recording_holds(full):
    model, n_prompt = full.info["model"], len(full.prompt_ids())
    policy = parse("full")
    for step in (0, 2):
        n_tokens, n_keys = (n_prompt, n_prompt) if step == 0 else (1, n_prompt + step)
        want = step_bytes(policy, model, n_tokens, n_keys)
        got: dict[str, int] = {}
        for event in full.events(step):
            got[event.stop] = got.get(event.stop, 0) + sum(s.nbytes for s in event.tensors.specs.values())
        for stop, nbytes in want.items():
            if stop != "sample":  # an upper bound: how many candidates survive depends on the sampler
                assert got[stop] == nbytes, (step, stop)
        assert got["sample"] <= want["sample"]


def test_the_default_bounds_an_8b_model_at_4k_context():
    n_ctx = 4096
    full = sum(step_bytes(parse("full"), LLAMA_8B, n_ctx, n_ctx).values())
    attention = step_bytes(parse("full"), LLAMA_8B, n_ctx, n_ctx)["attn"]
    assert attention == 32 * 32 * n_ctx * n_ctx * 4 > 68e9  # why full cannot be the default
    default = parse("default").bind(LLAMA_8B, n_ctx, DEFAULT_MAX_BYTES)
    prefill = sum(step_bytes(default, LLAMA_8B, n_ctx, n_ctx).values())
    one_more = sum(step_bytes(parse(f"all;rows={default.rows + 1}"), LLAMA_8B, n_ctx, n_ctx).values())
    assert prefill <= DEFAULT_MAX_BYTES // PREFILL_SHARE < one_more  # the most rows that fit a quarter
    assert 1 <= default.rows < 64 and full > 300 * prefill
    decode = sum(step_bytes(default, LLAMA_8B, 1, n_ctx).values())
    assert decode < 21 << 20  # ~20 MiB a decode step at 4k keys
    small = {"n_layer": 30, "n_head": 9, "n_head_kv": 3, "n_embd": 576, "head_dim": 64, "n_vocab": 49152}
    assert parse("default").bind(small, 100, DEFAULT_MAX_BYTES).rows is None  # a short prompt stays whole


def test_the_docs_table_is_the_arithmetic():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "TRACE_FORMAT.md").read_text()
    assert size_table() in doc  # regenerate with `python -m traces.policy`


# -- the budget ----------------------------------------------------------------------------


def test_the_budget_stops_tensors_never_the_run(tiny, tmp_path, capsys):
    n = 200
    path = tmp_path / "budget.trace"
    with record(tiny, path, "--capture", "full", "--max-trace-size", "1M", n=n) as t:
        cut, last = t.truncated_at, t.steps[-1]
        assert cut is not None and 0 < cut.step < last and "size budget of 1 MiB" in cut.reason
        # The run went on to its own end (EOS or -n), every token recorded.
        assert t.complete and t.get(last, "stop").scalars["reason"] in ("eos", "length")
        assert t.steps == list(range(last + 1)) and len(t.generated_ids()) == last + 1
        tensor_bytes = sum(s.nbytes for e in t for s in e.tensors.specs.values())
        assert tensor_bytes <= 1 << 20
        first = next(e for e in t if e.tensors.dropped)
        assert (first.step, first.seq) == (cut.step, cut.seq)
        for event in t:
            if event.seq > cut.seq:
                assert len(event.tensors) == 0  # once over budget, never again, however small
        late = t.get(last, "logits")
        assert late.tensors.dropped == ("logits",) and "entropy" in late.scalars  # scalars stay
        with pytest.raises(KeyError, match="not kept: the trace reached its size budget"):
            t[last, "logits"]
        assert t.info["capture"]["max_bytes"] == 1 << 20
    capsys.readouterr()
    assert main(["info", str(path)]) == 0
    assert f"stopped at step {cut.step}" in capsys.readouterr().out


def test_a_live_trace_keeps_what_the_budget_allows():
    source = synthetic.trace()
    budget = 2000
    live = MemoryTrace(source.info, capture=parse("full"), max_bytes=budget)
    for event in source:
        live.append(event)
    cut = live.truncated_at
    assert cut is not None and live.nbytes <= budget and "size budget" in cut.reason
    for event in live:
        if event.seq > cut.seq:
            assert len(event.tensors) == 0
            dropped = getattr(event.tensors, "dropped", ())  # an event that had no tensors dropped none
            assert set(dropped) == set(source.get(event.step, event.stop, event.layer, event.part).tensors)
    assert live.generated_ids() == source.generated_ids() and live.streamed_text() == source.streamed_text()
    assert live.info["capture"]["max_bytes"] == budget


async def test_the_status_bar_says_where_tensors_stopped():
    from inspector.app import make_app
    from tests.fixtures.screen import screen_lines

    source = synthetic.trace()
    live = MemoryTrace(source.info, max_bytes=3000)
    for event in source:
        live.append(event)
    live.finish()
    app = make_app(live)
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.pause()
        status = screen_lines(app)[-2]
        assert f"no tensors from step {live.truncated_at.step}: the trace reached its size budget" in status


def test_cli_refuses_a_bad_capture_before_loading_the_model(capsys, tmp_path):
    for flags, match in ((["--capture", "attn@x"], "capture: 'attn@x'"), (["--max-trace-size", "lots"], "max-trace-size")):
        code = main([str(tmp_path / "no-such-model.gguf"), "hi", "--headless", *flags])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and match in err and "no such model" not in err


def test_timing_only_stops_are_not_copied_off_the_engine(tmp_path):
    """Under `minimal`, attn is emitted for its timing alone: its event reaches listeners with no tensors."""
    from engine.hooks import HookBus
    from engine.torch_engine import TorchEngine
    from tests.tiny_models import write_tiny_llama
    from traces.live import MemoryTrace
    from traces.policy import parse

    policy = parse("minimal")
    bus = HookBus()
    bus.set_filter(policy.wants)
    bus.tensor_filter = policy.keeps_tensors
    seen = []
    bus.add(seen.append)
    bus.add(MemoryTrace({}))
    engine = TorchEngine(str(write_tiny_llama(tmp_path / "m.gguf")), bus=bus, numerics="exact")
    for _ in engine.generate("hello", 2):
        pass
    attn = [e for e in seen if e.stop == "attn"]
    assert attn and all(not e.tensors for e in attn)
    assert all("logits" in e.tensors for e in seen if e.stop == "logits" and e.part == "")

"""What each stop moved and computed, and how near the device's roof: the arithmetic by hand on a
tiny model, the bound a prefill and a decode land on, and measured limits that make sense."""

import json
import math

import pytest

from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.cli import main
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.roofline import Cost, CostModel, Limits, attainment, device_limits, measure_limits
from traces.timing import profile

# write_tiny_llama's defaults: d 64, 4 heads of 16, 2 KV heads, n_ff 128, Q8_0 matrices, F32 norms.
D, N_HEAD, N_KV, HD, N_FF, N_LAYER = 64, 4, 2, 16, 128, 2
PROMPT = "hello llama hello llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf", n_layer=N_LAYER))


def timed_run(path: str, n: int = 4, prompt: str = PROMPT, dtype: str = "float32", keep=None) -> MemoryTrace:
    bus = HookBus()
    bus.tensor_filter = lambda stop, layer: False
    if keep is not None:
        bus.set_filter(keep)
    engine = TorchEngine(path, bus=bus, numerics="exact", dtype=dtype)
    trace = MemoryTrace(engine.info(prompt, n))
    bus.add(trace)
    for _ in engine.generate(prompt, n):
        pass
    trace.finish()
    return trace


def test_decode_costs_match_a_hand_count(tiny):
    trace = timed_run(tiny)
    model = CostModel(trace.info)
    step = 2
    events = trace.events(step)
    batch = next(e for e in events if e.stop == "batch")
    n_keys = batch.scalars["positions"][0] + 1  # one token attends over everything cached, itself included
    costs = model.step_costs(events)
    f32 = 4  # the torch engine reads its dequantized float32 weights, whatever the GGUF's Q8_0
    qkv_params = D * D + 2 * D * N_KV * HD
    assert costs[("qkv", 0)] == Cost(qkv_params * f32, (D + D + 2 * N_KV * HD) * f32, 2 * qkv_params)
    ffn_params = 3 * D * N_FF
    assert costs[("ffn_out", 1)] == Cost(ffn_params * f32, 2 * D * f32, 2 * ffn_params + 5 * N_FF)
    # K·Q over every key, plus the softmax; weights·V is the attn_out stop's, with the output projection
    assert costs[("attn", 0)].flops == 2 * n_keys * N_HEAD * HD + 5 * N_HEAD * n_keys
    assert costs[("attn", 0)].other_bytes == n_keys * N_KV * HD * f32 + N_HEAD * HD * f32 + N_HEAD * n_keys * f32
    assert costs[("attn_out", 0)].flops == 2 * n_keys * N_HEAD * HD + 2 * D * D
    n_vocab = trace.info["model"]["n_vocab"]
    assert costs[("logits", None)].weight_bytes == (n_vocab * D + D) * f32  # output matrix and final norm
    # A decode step reads every weight once, except the embedding table: one row of it.
    weights = trace.info["model"]["weights"]
    every = sum(math.prod(w["shape"]) for n, w in weights.items() if n != "token_embd.weight") * f32
    assert sum(c.weight_bytes for c in costs.values()) == every + D * f32


def test_an_engine_on_the_blocks_reads_the_quantized_bytes(tiny):
    info = timed_run(tiny, n=1).info
    q8 = CostModel({**info, "engine": {"name": "llama.cpp"}})  # reads the GGUF's Q8_0: 34 bytes per 32
    assert q8.weights_as == "GGUF blocks"
    qkv_params = D * D + 2 * D * N_KV * HD
    assert q8.stop_cost("qkv", 0, 1, 6).weight_bytes == qkv_params * 34 // 32


def test_a_stop_not_emitted_is_timed_by_the_next_one(tiny):
    everything = timed_run(tiny, n=2)
    no_qkv = timed_run(tiny, n=2, keep=lambda stop, layer: stop != "qkv")
    full = CostModel(everything.info).step_costs(everything.events(1))
    cut = CostModel(no_qkv.info).step_costs(no_qkv.events(1))
    assert ("qkv", 0) not in cut
    assert cut[("rope", 0)] == full[("qkv", 0)] + full[("rope", 0)]


def test_prefill_matmuls_are_compute_bound_and_decode_ones_memory_bound(tiny):
    limits = Limits("cpu", "float32", 2, 20.0, 16.0, 100.0)  # balance: 5 FLOP per byte
    long_prompt = " ".join(["hello llama"] * 20)
    trace = timed_run(tiny, n=2, prompt=long_prompt)
    model = CostModel(trace.info)
    prefill, decode = model.step_costs(trace.events(0)), model.step_costs(trace.events(1))
    for key in (("qkv", 0), ("ffn_out", 1)):
        assert prefill[key].intensity > limits.balance > decode[key].intensity
        assert attainment(prefill[key], 1_000_000, limits).bound == "compute"
        att = attainment(decode[key], 1_000_000, limits)
        assert att.bound == "memory"
        assert att.fraction == pytest.approx(decode[key].bytes / 1e6 / 20.0)


def test_measured_limits_and_fractions_are_finite_and_sensible(tiny):
    limits = measure_limits("cpu", "float32", mib=64, repeats=2)
    assert 0.5 < limits.mem_gbps < 2000 and 0.5 < limits.matmul_gflops < 1e6
    assert Limits.from_info({"device_limits": limits.to_info()}) == limits
    assert Limits.from_info({"device_limits": {"device": "cpu"}}) is None  # a foreign trace: no roof, no error
    trace = timed_run(tiny, n=4)
    trace.info["device_limits"] = limits.to_info()
    prof = profile(trace)
    assert prof.limits == limits and prof.weights_as == "float32"
    rated = [r for r in prof.rows if r.bytes]
    assert {r.stop for r in rated} >= {"qkv", "attn", "ffn_out", "logits"}
    for r in rated:
        att = attainment(Cost(0, r.bytes, r.flops), r.median_ns, limits)
        assert math.isfinite(att.fraction) and att.fraction > 0
    assert not [r for r in prof.rows if r.stop in ("sample", "stream") and r.bytes]  # no cost model there


def test_the_best_limits_seen_are_kept_per_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = device_limits("cpu", "float32")
    kept = json.loads((tmp_path / "llm-inspect" / "device_limits.json").read_text())
    (key, entry), = kept.items()
    assert "float32" in key and entry["read_gbps"] == first.read_gbps
    entry["read_gbps"] = 1e6  # a figure no busy moment will beat
    (tmp_path / "llm-inspect" / "device_limits.json").write_text(json.dumps(kept))
    assert device_limits("cpu", "float32").read_gbps == 1e6
    assert device_limits("cpu", "float32", remeasure=True).read_gbps < 1e6


def test_profile_records_the_limits_and_prints_rates(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = str(tmp_path / "p.trace")
    assert main(["profile", tiny, "hello llama", "-n", "3", "--numerics", "exact", "--headless", "--record", path]) == 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "memory-bound under" in out
    import traces

    with traces.open(path) as t:
        assert Limits.from_info(t.info) is not None
    assert main(["profile", tiny, "hello llama", "-n", "3", "--numerics", "exact", "--json", "--no-roofline"]) == 0
    js = json.loads(capsys.readouterr().out)
    assert js["device_limits"] is None
    assert any(r["stop"] == "ffn_out" and r["bytes"] > 0 and r["flops"] > 0 for r in js["rows"])


def test_a_moe_step_reads_the_experts_its_tokens_chose():
    d, ff, E, k = 64, 32, 8, 2
    f32 = {"type": "F32", "bits_per_weight": 32.0}
    weights = {f"blk.0.{n}.weight": {**f32, "shape": [d, ff, E]} for n in ("ffn_gate_exps", "ffn_up_exps")}
    weights["blk.0.ffn_down_exps.weight"] = {**f32, "shape": [ff, d, E]}
    weights["blk.0.ffn_gate_inp.weight"] = {**f32, "shape": [d, E]}
    info = {"model": {"n_layer": 1, "n_embd": d, "n_head": 4, "n_head_kv": 4, "head_dim": 16, "n_ff": ff,
                      "n_vocab": 10, "n_expert": E, "n_expert_used": k, "weights": weights},
            "engine": {"name": "torch", "dtype": "float32"}}
    model = CostModel(info)
    experts = 3 * d * ff * E * 4
    one = model.stop_cost("ffn_out", 0, 1, 1)
    assert one.weight_bytes == experts * k // E  # one token: its k experts
    assert one.flops == 2 * 3 * d * ff * k + 5 * ff
    many = model.stop_cost("ffn_out", 0, 64, 64)
    assert experts * 0.99 < many.weight_bytes <= experts  # 64 tokens touch (almost) every expert
    assert model.stop_cost("moe", 0, 1, 1) == Cost(d * E * 4, d * 4, 2 * d * E)  # the router

"""The timing view: slowest stops first, one column per layer, a slow layer called out."""

from inspector.app import make_app
from tests.fixtures.screen import screen_text
from traces.live import MemoryTrace
from traces.schema import Event
from views.timing import step_timing

N_LAYER = 12
SLOW_LAYER = 7
PER_LAYER_NS = {"attn_norm": 10_000, "qkv": 50_000, "rope": 8_000, "attn": 30_000, "attn_out": 25_000,
                "ffn_norm": 10_000, "ffn_out": 90_000, "residual": 4_000}


D, N_FF, N_VOCAB = 256, 1024, 1000


def weight_table() -> dict:
    """A llama weight table (Q8_0 matrices, F32 norms) for the roofline columns."""
    q8 = {"type": "Q8_0", "bits_per_weight": 8.5}
    table = {"token_embd.weight": {**q8, "shape": [D, N_VOCAB]}, "output.weight": {**q8, "shape": [D, N_VOCAB]},
             "output_norm.weight": {"type": "F32", "shape": [D], "bits_per_weight": 32.0}}
    for il in range(N_LAYER):
        for name, shape in (("attn_q", [D, D]), ("attn_k", [D, D // 2]), ("attn_v", [D, D // 2]),
                            ("attn_output", [D, D]), ("ffn_gate", [D, N_FF]), ("ffn_up", [D, N_FF]),
                            ("ffn_down", [N_FF, D])):
            table[f"blk.{il}.{name}.weight"] = {**q8, "shape": shape}
        for name in ("attn_norm", "ffn_norm"):
            table[f"blk.{il}.{name}.weight"] = {"type": "F32", "shape": [D], "bits_per_weight": 32.0}
    return table


def slow_layer_trace() -> MemoryTrace:
    """Two steps of a 12-layer run whose layer 7 ffn_out is 5x slower than its peers, with a weight
    table and measured device limits (as `llm-inspect profile` records them) for the rates."""
    trace = MemoryTrace({"model": {"name": "timing-12L", "architecture": "llama", "n_layer": N_LAYER, "n_embd": D,
                                   "n_head": 4, "n_head_kv": 2, "head_dim": D // 4, "n_ff": N_FF, "n_vocab": N_VOCAB,
                                   "weights": weight_table()},
                         "vocab": {"pieces": ["a", "b"]},
                         "engine": {"name": "torch", "device": "cpu", "dtype": "float32"},
                         "device_limits": {"device": "cpu", "dtype": "float32", "threads": 2, "read_gbps": 40.0,
                                           "copy_gbps": 32.0, "matmul_gflops": 100.0}})
    seq = 0

    def add(stop, step, layer=None, dur_ns=5_000, **scalars):
        nonlocal seq
        trace.append(Event(seq, stop, step, layer, scalars=scalars, t_start_ns=seq * 1000, dur_ns=dur_ns))
        seq += 1

    for step in range(2):
        add("tokenize", step, dur_ns=20_000, ids=[0, 1]) if step == 0 else None
        add("batch", step, dur_ns=2_000, ids=[0, 1] if step == 0 else [1],
            positions=[0, 1] if step == 0 else [2])
        add("embed", step, dur_ns=6_000)
        for il in range(N_LAYER):
            for stop, ns in PER_LAYER_NS.items():
                slow = 5 if (stop == "ffn_out" and il == SLOW_LAYER) else 1
                add(stop, step, il, dur_ns=ns * slow + il * 100)
        add("logits", step, dur_ns=400_000, top_ids=[0], top_probs=[1.0], entropy=0.0)
        add("sample", step, dur_ns=3_000, token=1)
    trace.finish()
    return trace


def test_slowest_stops_and_the_outlier_layer():
    t = step_timing(slow_layer_trace(), 1, "ffn_out", N_LAYER)
    assert t.by_stop[0][0] == "ffn_out"  # 12 layers of ffn_out outweigh one logits
    assert [il for il, _ in t.outliers()] == [SLOW_LAYER]
    everything = step_timing(slow_layer_trace(), 1, "logits", N_LAYER)
    assert everything.layer_stop == "all"
    assert max(range(N_LAYER), key=everything.by_layer.__getitem__) == SLOW_LAYER
    assert everything.total_ns == sum(ns for _, ns in everything.by_stop)


async def test_p_opens_the_timing_view_on_the_selected_stop():
    app = make_app(slow_layer_trace())
    async with app.run_test(size=(100, 30)) as pilot:
        app.select_stop("ffn_out", 0)
        await pilot.press("p")
        await pilot.pause()
        text = screen_text(app)
        assert "ffn_out per layer" in text
        assert f"⚠ layer {SLOW_LAYER}" in text
        assert "GB/s" in text and "mem " in text  # rates and the roof, from the info's weights and limits


def test_timing_view_snapshot(snap_compare):
    async def run_before(pilot):
        pilot.app.select_stop("ffn_out", 0)
        await pilot.press("p")
        await pilot.pause()

    assert snap_compare(make_app(slow_layer_trace()), run_before=run_before, terminal_size=(80, 24))

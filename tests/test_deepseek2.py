"""deepseek2 (multi-head latent attention) on tiny GGUFs the test writes (tests/tiny_deepseek.py),
against llama.cpp loading the same files.

Variants: `dense` (one attn_q matrix), `qlora` (attn_q_a, its norm, attn_q_b), both with split
attn_k_b / attn_v_b, which llama.cpp runs in the absorbed form; `legacy` (one attn_kv_b), which
llama.cpp runs decompressed (the naive form); `moe` and `moe_softmax`, whose layers 1-2 run
experts (engine/models/moe.py); and a YaRN-scaled file (engine/rope_yarn.py). The engine's default form is llama.cpp's choice for the file,
and on every variant the logits land within ~5e-7 of llama.cpp's (`llamacpp` numerics).
"""

import dataclasses

import numpy as np
import pytest
import torch

from engine import rope_yarn

from engine.config import ModelArgs, UnsupportedModel
from engine.hooks import HookBus
from engine.llamacpp_graph import LlamaGraph
from engine.llamacpp_reference import cosine, greedy_reference
from engine.models.deepseek2 import LatentCache
from engine.torch_engine import TorchEngine
from tests import tiny_deepseek as td
from traces.live import MemoryTrace

PROMPT = "hello the llama, hello the llama"
N_STEPS = 16
VARIANTS = {
    "dense": {},
    "qlora": {"q_lora_rank": 32},
    "legacy": {"legacy": True},
    # Layer 0 dense, layers 1-2 experts: DeepSeek-V3's routing (sigmoid, 4 groups of 2 experts with
    # 2 kept, the exp_probs_b selection bias, normalized weights times 2.5, one shared expert) ...
    "moe": {"n_layer": 3, "n_dense": 1, "q_lora_rank": 32},
    # ... and DeepSeek-V2's (softmax over the experts, no groups, no bias).
    "moe_softmax": {"n_layer": 3, "n_dense": 1, "gating": "softmax"},
}
MOE = ["moe", "moe_softmax"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("deepseek2")
    return {name: str(td.write_tiny_deepseek2(root / f"{name}.gguf", **kw)) for name, kw in VARIANTS.items()}


@pytest.fixture(scope="module")
def references(tiny):
    return {name: greedy_reference(path, PROMPT, N_STEPS) for name, path in tiny.items()}


def run(path: str, n: int, numerics: str = "llamacpp", form: str | None = None, stops=("tokenize", "logits"),
        ablate=None):
    bus = HookBus()
    engine = TorchEngine(path, numerics=numerics, bus=bus)
    if form:
        engine.model.form = form
    if ablate:
        ablate(engine)
    bus.set_filter(lambda stop, layer: stop in stops)
    trace = MemoryTrace({})
    bus.add(trace)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    return engine, trace, tokens


def logits_of(trace, n: int) -> list[np.ndarray]:
    return [trace.get(s, "logits").tensors["logits"] for s in range(n)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_tokens_and_logits_match_llama_cpp(tiny, references, variant):
    ref = references[variant]
    engine, trace, tokens = run(tiny[variant], N_STEPS)
    assert engine.model.form == ("naive" if variant == "legacy" else "absorbed")  # what llama.cpp runs
    assert trace.prompt_ids() == ref.prompt_ids
    assert tokens == ref.tokens
    cosines = [cosine(a, b) for a, b in zip(logits_of(trace, len(tokens)), ref.logits)]
    assert min(cosines) >= 0.999, cosines


@pytest.mark.parametrize("variant", ["dense", "qlora", "legacy"])
def test_absorbed_and_naive_forms_give_the_same_logits(tiny, variant):
    """W_uk folded into the query (attention over the latent) and W_uk/W_uv decompressing every
    cached latent (attention over per-head K and V) are one computation reassociated: in plain
    float32 their logits agree to 1e-5 (measured: <= 1.5e-6 on logits of magnitude ~4), and
    their greedy tokens are the same."""
    _, absorbed, tokens_a = run(tiny[variant], N_STEPS, numerics="exact", form="absorbed")
    _, naive, tokens_n = run(tiny[variant], N_STEPS, numerics="exact", form="naive")
    assert tokens_a == tokens_n
    for a, b in zip(logits_of(absorbed, len(tokens_a)), logits_of(naive, len(tokens_n))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_the_cache_holds_the_latent_and_the_mla_event_shows_the_saving(tiny):
    engine, trace, _ = run(tiny["dense"], 2, stops=("tokenize", "mla", "kv_write"))
    a = engine.args
    T = len(trace.prompt_ids())
    r, n_rot = td.KV_LORA_RANK, td.N_ROT
    mla = trace.get(0, "mla", 1)
    assert mla.tensors["latent"].shape == (T, r) and mla.tensors["k_pe"].shape == (T, n_rot)
    assert mla.tensors["q_absorbed"].shape == (T, td.N_HEAD, r + n_rot)
    s = mla.scalars
    assert s["form"] == "absorbed"
    # Per token and layer, float32 cells: the latent row against per-head K (nope + rope) and V.
    assert s["mla_bytes_per_token"] == (r + n_rot) * 4 == 256
    assert s["mha_bytes_per_token"] == td.N_HEAD * (td.QK_NOPE + n_rot + td.V_HEAD) * 4 == 768
    assert s["saving"] == 3.0
    assert s["saved_bytes_per_token"] == (768 - 256) * a.n_layer
    assert trace.get(1, "mla", 0).tensors["latent"].shape == (1, r)  # decode: one new row
    kv = trace.get(0, "kv_write", 0).scalars
    assert kv["holds"] == "mla_latent" and kv["latent_dim"] == r and kv["rope_dim"] == n_rot

    # The pool really is one row of r + n_rot per token and layer, with no second V pool.
    cache = LatentCache(a.n_layer, 64, a.n_head_kv, a.head_dim, block_size=16)
    assert cache.k.shape == (a.n_layer, 4, 16, 1, r + n_rot) and cache.v is cache.k
    per_token = cache.k.element_size() * cache.k[0, 0, 0].numel()
    assert per_token == s["mla_bytes_per_token"]


def test_the_latent_and_k_pe_are_llama_cpps(tiny):
    """The mla event's latent is llama.cpp's kv_cmpr (after attn_kv_a_norm) and its k_pe the
    rotated k_pe, node for node (eval callback), in every layer of the prefill."""
    _, trace, _ = run(tiny["dense"], 1, stops=("tokenize", "mla"))
    with LlamaGraph(tiny["dense"]) as graph:
        ids = graph.tokenize(PROMPT)
        out = graph.decode(ids, select=lambda name, op: name.startswith(("kv_cmpr-", "k_pe-")))
    nodes = {(c.name, c.op): c.array for c in out.captures}
    for il in range(2):
        mla = trace.get(0, "mla", il)
        latent = nodes[(f"kv_cmpr-{il}", "MUL")].reshape(len(ids), -1)
        k_pe = nodes[(f"k_pe-{il}", "ROPE")].reshape(len(ids), -1)
        np.testing.assert_allclose(mla.tensors["latent"], latent, rtol=0, atol=1e-6)
        np.testing.assert_allclose(mla.tensors["k_pe"], k_pe, rtol=0, atol=1e-6)


@pytest.mark.parametrize("variant", MOE)
def test_expert_picks_match_llama_cpp(tiny, variant):
    """The experts each token goes to, in every expert layer and step, are the ones llama.cpp's
    graph picks (its ffn_moe_topk-N nodes), fed the same tokens. In the prefill llama.cpp runs the
    last layer's FFN for the last token only (the one whose logits it keeps)."""
    n = 8
    engine, trace, tokens = run(tiny[variant], n, stops=("tokenize", "moe"))
    a = engine.args
    expert_layers = range(a.n_dense_lead, a.n_layer)
    assert [trace.get(0, "moe", il) is not None for il in range(a.n_layer)] == [il in expert_layers for il in range(a.n_layer)]
    with LlamaGraph(tiny[variant]) as graph:
        inputs = [trace.prompt_ids()] + [[t] for t in tokens[:-1]]
        for step, ids in enumerate(inputs):
            out = graph.decode(ids, select=lambda name, op: name.startswith("ffn_moe_topk"))
            picks = {c.name: c.array.reshape(-1, a.n_expert_used) for c in out.captures}
            for il in expert_layers:
                ours = trace.get(step, "moe", il).tensors["experts"]
                theirs = picks[f"ffn_moe_topk-{il}"]
                ours = ours[-len(theirs):]
                np.testing.assert_array_equal(np.sort(ours, axis=-1), np.sort(theirs, axis=-1),
                                              err_msg=f"step {step} layer {il}")


def no_kv_a_norm(engine):
    """The latent RMS-normed without attn_kv_a_norm's learned scale."""
    w = dict(engine.model.w)
    for il in range(engine.args.n_layer):
        name = f"blk.{il}.attn_kv_a_norm.weight"
        w[name] = torch.ones_like(w[name])
    engine.model.w = w


def rope_on_the_leading_dims(engine):
    """The query heads split the wrong way round, [rope | nope] instead of [nope | rope]: the rows
    of attn_q are reordered so that the engine's split reads them that way."""
    w = dict(engine.model.w)
    nope, n_rot, nh = engine.args.qk_nope_dim, engine.args.rope_dim, engine.args.n_head
    for il in range(engine.args.n_layer):
        name = f"blk.{il}.attn_q.weight"
        q = w[name].view(nh, nope + n_rot, -1)
        w[name] = torch.cat((q[:, nope:], q[:, :nope]), dim=1).reshape(w[name].shape)
    engine.model.w = w


def scale_by_the_cache_row(engine):
    """1/sqrt(kv_lora_rank + n_rot), the cached row's width, instead of 1/sqrt(qk_nope + n_rot)."""
    engine.args.attn_scale = float(engine.args.head_dim) ** -0.5


@pytest.mark.parametrize("ablate", [None, no_kv_a_norm, rope_on_the_leading_dims, scale_by_the_cache_row])
def test_each_mla_detail_matters(tiny, references, ablate):
    """Get one MLA detail wrong and the prefill's logits part from llama.cpp's (cosine < 0.999), so
    the parity test above would catch it; right, they agree. Plain float32 (`exact`), because the
    `llamacpp` numerics read Q8_0 matmuls from the file's own blocks, not from an edited weight."""
    _, trace, _ = run(tiny["dense"], 1, numerics="exact", ablate=ablate)
    agreement = cosine(logits_of(trace, 1)[0], references["dense"].logits[0])
    assert agreement >= 0.999 if ablate is None else agreement < 0.999


def deepseek2_metadata(**keys) -> dict:
    md = {
        "general.architecture": "deepseek2",
        "deepseek2.block_count": 2, "deepseek2.embedding_length": 64, "deepseek2.feed_forward_length": 128,
        "deepseek2.attention.head_count": 4, "deepseek2.attention.head_count_kv": 1,
        "deepseek2.attention.key_length": 64, "deepseek2.attention.value_length": 48,
        "deepseek2.attention.key_length_mla": 32, "deepseek2.attention.value_length_mla": 16,
        "deepseek2.attention.kv_lora_rank": 48, "deepseek2.attention.q_lora_rank": 0,
        "deepseek2.rope.dimension_count": 16, "deepseek2.vocab_size": 272,
    }
    md.update({f"deepseek2.{k}": v for k, v in keys.items()})
    return md


def test_model_args_read_the_mla_sizes():
    a = ModelArgs.from_metadata(deepseek2_metadata(leading_dense_block_count=1))
    assert (a.kv_lora_rank, a.qk_nope_dim, a.v_head_dim, a.rope_dim, a.n_dense_lead) == (48, 16, 16, 16, 1)
    assert (a.n_head_kv, a.head_dim) == (1, 64)  # the cache's row: latent + k_pe
    assert a.attn_scale == np.float32(1 / np.sqrt(np.float32(32)))  # 1/sqrt(nope + rope), not the row's
    assert a.describe()["kv_lora_rank"] == 48


# --- YaRN RoPE scaling (engine/rope_yarn.py) ---------------------------------------------------
# Stretched 40 times over 20 original positions, so the 18-token prompt and 16 steps run past it;
# the multiplier is DeepSeek-V2's (mscale_all_dim 0.707, stored as 0.1 times that). With 16 RoPE
# dims the ramp runs over pairs 0..2: pair 0 kept, pair 1 half, pairs 2..7 interpolated.
YARN = {"factor": 40.0, "n_ctx_orig": 20, "log_mul": 0.0707}


@pytest.fixture(scope="module")
def yarn_model(tmp_path_factory):
    path = str(td.write_tiny_deepseek2(tmp_path_factory.mktemp("yarn") / "yarn.gguf", yarn=YARN))
    return path, greedy_reference(path, PROMPT, N_STEPS)


def test_yarn_matches_llama_cpp(yarn_model):
    """A YaRN file: greedy tokens identical for 16 steps, logits at cosine >= 0.999 (measured:
    max abs difference 4.8e-7), and the rotated k_pe bit-identical to llama.cpp's ROPE node."""
    path, ref = yarn_model
    engine, trace, tokens = run(path, N_STEPS)
    assert len(ref.prompt_ids) + N_STEPS > YARN["n_ctx_orig"]  # positions past the original context
    assert engine.args.yarn is not None and engine.args.yarn.factor == 40.0
    assert tokens == ref.tokens
    cosines = [cosine(a, b) for a, b in zip(logits_of(trace, len(tokens)), ref.logits)]
    assert min(cosines) >= 0.999, cosines

    _, trace, _ = run(path, 1, stops=("tokenize", "mla"))
    with LlamaGraph(path) as graph:
        ids = graph.tokenize(PROMPT)
        out = graph.decode(ids, select=lambda name, op: name.startswith("k_pe-"))
    nodes = {(c.name, c.op): c.array for c in out.captures}
    for il in range(2):
        theirs = nodes[(f"k_pe-{il}", "ROPE")].reshape(len(ids), -1)
        np.testing.assert_array_equal(trace.get(0, "mla", il).tensors["k_pe"], theirs)
    mla = trace.get(0, "mla", 0).scalars
    assert mla["rope_scaling"] == "yarn" and mla["yarn_factor"] == 40.0
    assert mla["kq_scale"] == pytest.approx((1 + 0.1 * 0.707 * np.log(40)) ** 2 / np.sqrt(32), rel=1e-5)


def no_mscale(engine, monkeypatch):
    """The softmax scale without YaRN's mscale^2: 1/sqrt(k_head)."""
    a = engine.args
    a.attn_scale = float(np.float32(1) / np.sqrt(np.float32(a.qk_nope_dim + a.rope_dim)))


def no_ramp(engine, monkeypatch):
    """Every pair interpolated (divided by the factor), the fast ones too: linear scaling with
    YaRN's magnitude."""
    monkeypatch.setattr(rope_yarn, "ramp", lambda n_dims, low, high, ggml=True: np.zeros(n_dims // 2, np.float32))


def log_mul_as_stored(engine, monkeypatch):
    """yarn_log_multiplier taken as the file stores it (0.1 * mscale_all_dim), not divided by 0.1."""
    a = engine.args
    a.yarn = dataclasses.replace(a.yarn, log_mul=YARN["log_mul"])
    a.attn_scale = a.yarn.deepseek2_kq_scale(a.qk_nope_dim + a.rope_dim)


def no_yarn(engine, monkeypatch):
    """The file's YaRN ignored: plain RoPE and scale, what this engine did before."""
    a = engine.args
    a.yarn = None
    a.attn_scale = float(np.float32(1) / np.sqrt(np.float32(a.qk_nope_dim + a.rope_dim)))


@pytest.mark.parametrize("ablate", [None, no_mscale, no_ramp, log_mul_as_stored, no_yarn])
def test_each_yarn_detail_matters(yarn_model, ablate, monkeypatch):
    """Drop one piece of YaRN and the prefill's logits part from llama.cpp's (measured cosines
    0.94-0.99); with all of them they agree."""
    path, ref = yarn_model
    _, trace, _ = run(path, 1, ablate=ablate and (lambda engine: ablate(engine, monkeypatch)))
    agreement = cosine(logits_of(trace, 1)[0], ref.logits[0])
    assert agreement >= 0.999 if ablate is None else agreement < 0.999


def test_yarn_in_plain_float_agrees_too(yarn_model):
    """The float64 formula (`exact` numerics) lands on llama.cpp's prefill as well: the float32
    emulation is about the last bits, not the method."""
    path, ref = yarn_model
    _, trace, _ = run(path, 1, numerics="exact")
    assert cosine(logits_of(trace, 1)[0], ref.logits[0]) >= 0.999


def test_yarn_settings_of_a_deepseek_v3_file():
    """DeepSeek-V3's declared YaRN (factor 40 over 4096, mscale_all_dim 1 stored as 0.1, 64 RoPE
    dims, base 10000): the ramp runs over pairs 10..23, as HF's yarn_find_correction_range
    gives; q_pe/k_pe keep their length; the softmax scale is (1 + 0.1 ln 40)^2 / sqrt(192)."""
    md = deepseek2_metadata(**{"rope.scaling.type": "yarn", "rope.scaling.factor": 40.0,
                               "rope.scaling.original_context_length": 4096,
                               "rope.scaling.yarn_log_multiplier": 0.1, "attention.key_length_mla": 192,
                               "rope.dimension_count": 64, "attention.kv_lora_rank": 512})
    a = ModelArgs.from_metadata(md)
    assert (a.yarn.n_ctx_orig, a.yarn.log_mul) == (4096, pytest.approx(1.0))
    assert rope_yarn.corr_dims(64, 4096, 10000.0, 32.0, 1.0) == (10.0, 23.0)
    assert float(a.yarn.magnitude()) == pytest.approx(1.0, abs=1e-6)
    assert a.attn_scale == pytest.approx((1 + 0.1 * np.log(40)) ** 2 / np.sqrt(192), rel=1e-6)
    assert a.describe()["rope_scaling"]["factor"] == 40.0
    ramp = rope_yarn.ramp(64, 10.0, 23.0)
    assert ramp[10] == 1 and ramp[23] == 0 and 0 < ramp[16] < 1


@pytest.mark.parametrize("arch, kind", [("deepseek2", "linear"), ("llama", "linear"), ("gemma3", "yarn")])
def test_other_rope_scaling_is_refused_with_one_line(arch, kind):
    md = deepseek2_metadata(**{"rope.scaling.type": kind, "rope.scaling.factor": 4.0})
    md = {k.replace("deepseek2.", f"{arch}.", 1): v for k, v in md.items()}
    md["general.architecture"] = arch
    with pytest.raises(UnsupportedModel, match=f"{arch} with {kind} RoPE scaling"):
        ModelArgs.from_metadata(md)

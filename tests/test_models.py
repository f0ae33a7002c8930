"""Each architecture the torch engine runs, on a tiny GGUF the test writes (tests/tiny_models.py),
against llama.cpp loading the same file.

Numerics: the default, `llamacpp`, for the token-for-token checks. Tiny random models have
near-ties (a top-2 margin of 0.0005 in the qwen2 fixture at step 14) and plain float32
(`exact`) lands ~0.03 away from llama.cpp's logits there, because llama.cpp rounds the
activations of a Q8_0 matmul to Q8_0 first; `llamacpp` reproduces that rounding, and with it
the tokens. `exact` is held to the prefill's logits, which show whether the architecture's
arithmetic is right independently of any rounding.
"""

import numpy as np
import pytest

from engine.config import ModelArgs, UnsupportedModel
from engine.hooks import HookBus
from engine.llamacpp_reference import cosine, greedy_reference
from engine.models import model_class
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace

ARCHS = ["llama", "qwen2", "qwen3", "gemma3"]
PROMPT = "hello the llama, hello the llama"  # 18 tokens: longer than the gemma3 fixture's window
N_STEPS = 16
WINDOW = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """arch -> a tiny GGUF; gemma3 gets 6 layers, so that layer 5 is a global one."""
    root = tmp_path_factory.mktemp("models")
    return {
        arch: str(write_tiny_llama(root / f"{arch}.gguf", arch=arch, n_layer=6 if arch == "gemma3" else 2,
                                   sliding_window=WINDOW))
        for arch in ARCHS
    }


@pytest.fixture(scope="module")
def references(tiny):
    return {arch: greedy_reference(path, PROMPT, N_STEPS) for arch, path in tiny.items()}


def run(path: str, n: int, numerics: str = "llamacpp", stops=("tokenize", "logits")):
    bus = HookBus()
    engine = TorchEngine(path, numerics=numerics, bus=bus)
    bus.set_filter(lambda stop, layer: stop in stops)
    trace = MemoryTrace({})
    bus.add(trace)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    return engine, trace, tokens


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_and_logits_match_llama_cpp(tiny, references, arch):
    ref = references[arch]
    _, trace, tokens = run(tiny[arch], N_STEPS)
    assert trace.prompt_ids() == ref.prompt_ids
    assert tokens == ref.tokens
    cosines = [cosine(trace.get(s, "logits").tensors["logits"], ref.logits[s]) for s in range(N_STEPS)]
    assert min(cosines) >= 0.999, cosines


@pytest.mark.parametrize("arch", ARCHS)
def test_plain_float32_prefill_agrees_with_llama_cpp(tiny, references, arch):
    _, trace, _ = run(tiny[arch], 1, numerics="exact")
    assert cosine(trace.get(0, "logits").tensors["logits"], references[arch].logits[0]) >= 0.999


def without(engine, drop) -> None:
    """The engine's model, with the weights `drop` picks left out (as if the file lacked them)."""
    weights = engine.model.w
    engine.model.w = {name: weights[name] for name in weights if not drop(name)}


def ablate_biases(engine):
    without(engine, lambda name: name.endswith(".bias"))


def ablate_qk_norm(engine):
    without(engine, lambda name: name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")))


def ablate_window(engine):
    engine.args.sliding_window = []


@pytest.mark.parametrize("arch, ablate", [
    ("qwen2", ablate_biases), ("qwen3", ablate_qk_norm), ("gemma3", ablate_window),
])
def test_each_fixture_exercises_its_architecture(tiny, references, arch, ablate):
    """Without the feature that sets the architecture apart, the engine's logits part from
    llama.cpp's: so the fixtures are strong enough for the parity test above to catch it."""
    bus = HookBus()
    engine = TorchEngine(tiny[arch], bus=bus)
    ablate(engine)
    bus.set_filter(lambda stop, layer: stop == "logits")
    trace = MemoryTrace({})
    bus.add(trace)
    list(engine.generate(PROMPT, 1))
    assert cosine(trace.get(0, "logits").tensors["logits"], references[arch].logits[0]) < 0.999


def test_gemma3_local_layers_see_only_their_window(tiny):
    engine, trace, _ = run(tiny["gemma3"], 3, stops=("tokenize", "attn", "rope"))
    args = engine.args
    assert args.sliding_window == [WINDOW] * 5 + [0]  # llama.cpp's default: every sixth layer is global
    T = len(trace.prompt_ids())
    q, k = np.arange(T)[:, None], np.arange(T)[None, :]
    local = trace.get(0, "attn", 0)
    w = local.tensors["weights"]  # (n_head, T, T)
    assert local.scalars["window"] == WINDOW
    assert np.all(w[:, (k > q) | (q - k >= WINDOW)] == 0)  # later keys and keys a window or more back
    assert np.all(w[:, (k <= q) & (q - k < WINDOW)] > 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    glob = trace.get(0, "attn", 5).tensors["weights"]
    assert np.all(glob[:, k <= q] > 0) and trace.get(0, "attn", 5).scalars["window"] == 0
    # Decoding: the new token's query at position T+1 sees the last WINDOW keys only.
    step2 = trace.get(2, "attn", 1).tensors["weights"]  # (n_head, 1, T + 2)
    assert np.all(step2[:, 0, : T + 2 - WINDOW] == 0) and np.all(step2[:, 0, T + 2 - WINDOW:] > 0)
    # Local layers rotate with RoPE base 10 000, global ones with the file's rope.freq_base.
    assert trace.get(0, "rope", 0).scalars["theta"] == 10000.0
    assert trace.get(0, "rope", 5).scalars["theta"] == 1_000_000.0


def test_gemma3_without_a_window_is_global_and_soft_caps_its_logits(tmp_path):
    """A gemma3 file with no sliding window: llama.cpp builds its non-SWA graph, every layer
    global and the logits soft-capped (c * tanh(logits / c))."""
    path = str(write_tiny_llama(tmp_path / "gemma3-global.gguf", arch="gemma3", sliding_window=0, final_softcap=3.0))
    ref = greedy_reference(path, PROMPT, 8)
    engine, trace, tokens = run(path, 8)
    assert engine.args.sliding_window == [] and engine.args.final_softcap == 3.0
    assert tokens == ref.tokens
    logits = [trace.get(s, "logits").tensors["logits"] for s in range(8)]
    assert min(cosine(o, r) for o, r in zip(logits, ref.logits)) >= 0.999
    assert max(np.abs(lg).max() for lg in logits) <= 3.0


def test_describe_shows_what_sets_an_architecture_apart(tiny):
    gemma = TorchEngine(tiny["gemma3"]).info(PROMPT, 1)["model"]
    assert gemma["architecture"] == "gemma3" and gemma["rope_type"] == "neox"
    assert gemma["sliding_window"] == [WINDOW] * 5 + [0] and gemma["rope_theta_swa"] == 10000.0
    assert gemma["attn_scale"] == 0.25  # 1/sqrt(head_dim 16)
    llama = TorchEngine(tiny["llama"]).info(PROMPT, 1)["model"]
    assert llama["rope_type"] == "norm" and "sliding_window" not in llama


def gemma3_metadata(**keys) -> dict:
    md = {
        "general.architecture": "gemma3", "gemma3.block_count": 12, "gemma3.embedding_length": 64,
        "gemma3.attention.head_count": 4, "gemma3.feed_forward_length": 128, "gemma3.vocab_size": 10,
        "gemma3.rope.freq_base": 1_000_000.0,
    }
    return md | {f"gemma3.{k}": v for k, v in keys.items()}


def test_gemma3_window_layout_from_metadata():
    args = ModelArgs.from_metadata(gemma3_metadata(**{"attention.sliding_window": 512}))
    assert [il for il in range(12) if args.window(il) == 0] == [5, 11]
    assert args.layer_rope_theta(0) == 10000.0 and args.layer_rope_theta(5) == 1_000_000.0
    period = ModelArgs.from_metadata(gemma3_metadata(**{"attention.sliding_window": 8, "attention.sliding_window_pattern": 3}))
    assert [il for il in range(12) if period.window(il) == 0] == [2, 5, 8, 11]
    per_layer = [True, False] * 6
    explicit = ModelArgs.from_metadata(gemma3_metadata(**{
        "attention.sliding_window": 8, "attention.sliding_window_pattern": per_layer, "rope.freq_base_swa": 5000.0,
    }))
    assert explicit.sliding_window == [8 if s else 0 for s in per_layer] and explicit.layer_rope_theta(0) == 5000.0
    with pytest.raises(UnsupportedModel, match="sliding_window_pattern has 3 entries for 12 layers"):
        ModelArgs.from_metadata(gemma3_metadata(**{
            "attention.sliding_window": 8, "attention.sliding_window_pattern": [True] * 3,
        }))
    none = ModelArgs.from_metadata(gemma3_metadata(**{"final_logit_softcapping": 30.0}))
    assert none.sliding_window == [] and none.final_softcap == 30.0


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    path = write_tiny_llama(tmp_path / "mamba.gguf", arch="mamba")
    supported = r"'mamba' is not supported by the torch engine \(supported: deepseek2, gemma3, llama, qwen2, qwen2moe, qwen3, qwen3moe\)"
    with pytest.raises(UnsupportedModel, match=supported):
        TorchEngine(str(path))
    assert model_class("qwen3") is model_class("llama")

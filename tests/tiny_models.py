"""Tiny GGUF models the tests write themselves (fixed seed), which llama.cpp loads too.

The vocabulary is a real byte-level BPE: the 256 GPT-2 byte symbols, a few merges, and
special tokens, so the tokenizer, the engine and llama.cpp all run on it for real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.quants import quantize


def byte_symbols() -> list[str]:
    """GPT-2's byte-to-unicode map: printable bytes stand for themselves, the rest are shifted."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return [out[b] for b in range(256)]


MERGES = ["Ġ t", "h e", "Ġt he", "l l", "Ġ l", "Ġl l", "a m", "Ġll am", "Ġllam a", "e l", "el l", "h ell", "hell o"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    tokens = byte_symbols()
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [1] * len(tokens) + [3] * len(SPECIALS)  # NORMAL, then CONTROL
    return tokens + SPECIALS, types, MERGES


def write_tiny_llama(
    path: Path,
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 128,
    qtype: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
    arch: str = "llama",
) -> Path:
    rng = np.random.default_rng(seed)
    tokens, types, merges = tiny_vocab()
    n_vocab = len(tokens)
    head_dim = n_embd // n_head
    w = GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(qtype))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 3)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)

    def matrix(name: str, n_out: int, n_in: int, scale: float) -> None:
        data = (rng.standard_normal((n_out, n_in)) * scale).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)

    def norm(name: str, n: int) -> None:
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    matrix("token_embd.weight", n_vocab, n_embd, 1.0)
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", n_embd)
        matrix(p + "attn_q.weight", n_embd, n_embd, n_embd**-0.5)
        matrix(p + "attn_k.weight", n_head_kv * head_dim, n_embd, n_embd**-0.5)
        matrix(p + "attn_v.weight", n_head_kv * head_dim, n_embd, n_embd**-0.5)
        matrix(p + "attn_output.weight", n_embd, n_embd, n_embd**-0.5)
        norm(p + "ffn_norm.weight", n_embd)
        matrix(p + "ffn_gate.weight", n_ff, n_embd, n_embd**-0.5)
        matrix(p + "ffn_up.weight", n_ff, n_embd, n_embd**-0.5)
        matrix(p + "ffn_down.weight", n_embd, n_ff, n_ff**-0.5)
    norm("output_norm.weight", n_embd)
    matrix("output.weight", n_vocab, n_embd, n_embd**-0.5)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

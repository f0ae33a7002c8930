"""Tiny GGUF models the tests write themselves (fixed seed), which llama.cpp loads too.

The vocabulary is a real byte-level BPE: the 256 GPT-2 byte symbols, a few merges, and
special tokens, so the tokenizer, the engine and llama.cpp all run on it for real.

`arch` picks the tensors and metadata llama.cpp's loader wants for that architecture:

| arch   | beyond llama's tensors                                         | metadata                  |
|--------|----------------------------------------------------------------|---------------------------|
| llama  |                                                                |                           |
| qwen2  | attn_{q,k,v}.bias                                              |                           |
| qwen3  | attn_{q,k}_norm [head_dim]                                     |                           |
| gemma3 | attn_{q,k}_norm, post_attention_norm, post_ffw_norm; no output | attention.sliding_window  |
|        | (tied to token_embd)                                           | (0: none), final_logit_softcapping |

Each extra is drawn large enough to matter: a model that ignored it would not agree with llama.cpp.
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


class RandomTensors:
    """The seeded tensors every tiny writer adds: weights (quantized unless F32), norms near 1, biases.
    Each draws from `rng` in call order, so a writer's file is the same for the same seed."""

    def __init__(self, w: GGUFWriter, rng: np.random.Generator):
        self.w, self.rng = w, rng

    def weight(self, name: str, shape: tuple[int, ...], scale: float, qtype: GGMLQuantizationType) -> None:
        data = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == GGMLQuantizationType.F32:
            self.w.add_tensor(name, data)
        else:
            self.w.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)  # F16: quantize casts

    def norm(self, name: str, n: int, spread: float = 0.1) -> None:
        self.w.add_tensor(name, (1.0 + spread * self.rng.standard_normal(n)).astype(np.float32))

    def bias(self, name: str, n: int) -> None:
        self.w.add_tensor(name, (0.5 * self.rng.standard_normal(n)).astype(np.float32))


def add_tiny_tokenizer(w, n_vocab: int) -> None:
    """The tokenizer section every tiny model shares: tiny_vocab() as a byte-level BPE, BOS and EOS
    near the end, no BOS added (n_vocab must be tiny_vocab()'s size)."""
    tokens, types, merges = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 3)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)


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
    sliding_window: int = 4,
    final_softcap: float = 0.0,
) -> Path:
    """Write a tiny model of `arch` (see the table above). gemma3: `sliding_window` in positions
    (0 writes none: every layer global), `final_softcap` the logit soft-cap (0 writes none).
    An architecture not in the table gets llama's tensors under its own name (for the
    unsupported-architecture error)."""
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    head_dim = n_embd // n_head
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    # gemma3's global layers use this base; its sliding-window layers use 10 000.
    w.add_rope_freq_base(1_000_000.0 if arch == "gemma3" else 10000.0)
    w.add_layer_norm_rms_eps(1e-6 if arch == "gemma3" else 1e-5)
    if arch == "gemma3" and sliding_window:
        w.add_sliding_window(sliding_window)
    if arch == "gemma3" and final_softcap:
        w.add_final_logit_softcapping(final_softcap)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(qtype))
    add_tiny_tokenizer(w, n_vocab)

    rand = RandomTensors(w, rng)
    norm, bias = rand.norm, rand.bias

    def matrix(name: str, n_out: int, n_in: int, scale: float) -> None:
        rand.weight(name, (n_out, n_in), scale, qtype)

    matrix("token_embd.weight", n_vocab, n_embd, 1.0)
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", n_embd)
        matrix(p + "attn_q.weight", n_embd, n_embd, n_embd**-0.5)
        matrix(p + "attn_k.weight", n_head_kv * head_dim, n_embd, n_embd**-0.5)
        matrix(p + "attn_v.weight", n_head_kv * head_dim, n_embd, n_embd**-0.5)
        if arch == "qwen2":
            bias(p + "attn_q.bias", n_embd)
            bias(p + "attn_k.bias", n_head_kv * head_dim)
            bias(p + "attn_v.bias", n_head_kv * head_dim)
        if arch in ("qwen3", "gemma3"):
            norm(p + "attn_q_norm.weight", head_dim, 0.3)
            norm(p + "attn_k_norm.weight", head_dim, 0.3)
        matrix(p + "attn_output.weight", n_embd, n_embd, n_embd**-0.5)
        if arch == "gemma3":
            norm(p + "post_attention_norm.weight", n_embd, 0.3)
        norm(p + "ffn_norm.weight", n_embd)
        matrix(p + "ffn_gate.weight", n_ff, n_embd, n_embd**-0.5)
        matrix(p + "ffn_up.weight", n_ff, n_embd, n_embd**-0.5)
        matrix(p + "ffn_down.weight", n_embd, n_ff, n_ff**-0.5)
        if arch == "gemma3":
            norm(p + "post_ffw_norm.weight", n_embd, 0.3)
    norm("output_norm.weight", n_embd)
    if arch != "gemma3":  # gemma3 ties its output matrix to token_embd
        matrix("output.weight", n_vocab, n_embd, n_embd**-0.5)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_vocab_only(path: Path, pre: str, tokens: list[str], types: list[int], merges: list[str],
                     bos_id: int, eos_id: int) -> Path:
    """A tensor-free GGUF holding only a byte-level BPE vocabulary: llama.cpp loads it with
    vocab_only=True, so the tokenizer tests get llama.cpp's ids for any pre-tokenizer."""
    w = GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(bos_id)
    w.add_eos_token_id(eos_id)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

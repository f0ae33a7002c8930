"""Tiny mixture-of-experts GGUFs the tests write themselves (fixed seed), which llama.cpp loads too.

Same vocabulary and attention as tests/tiny_models.py; every layer's FFN is a mixture of
experts, laid out the way each architecture's converter writes it:

| kind     | arch     | experts                                      | beyond llama                           |
|----------|----------|----------------------------------------------|----------------------------------------|
| mixtral  | llama    | expert_count/expert_used_count; width n_ff   |                                        |
| qwen2moe | qwen2moe | expert_feed_forward_length; a shared expert  | attn_{q,k,v}.bias; ffn_gate_inp_shexp   |
|          |          | (expert_shared_feed_forward_length)          | (the shared expert's sigmoid gate)     |
| qwen3moe | qwen3moe | expert_feed_forward_length                   | attn_{q,k}_norm                        |

The router (ffn_gate_inp, and qwen2moe's shared gate) stays F32, as llama-quantize leaves it in
real files; the experts take `expert_qtype`, the rest `qtype`. Router weights are drawn large
enough that the top-2 margins are mostly clear but the picks still vary from token to token,
layer to layer, so every expert gets some traffic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from tests.tiny_models import RandomTensors, add_tiny_tokenizer, tiny_vocab

KINDS = {"mixtral": "llama", "qwen2moe": "qwen2moe", "qwen3moe": "qwen3moe"}


def write_tiny_moe(
    path: Path,
    kind: str = "mixtral",
    seed: int = 0,
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_ff: int = 64,
    n_expert: int = 8,
    n_expert_used: int = 2,
    n_ff_exp: int = 64,
    n_ff_shexp: int = 96,
    qtype: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
    expert_qtype: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
    router_scale: float = 3.0,
) -> Path:
    """Write a tiny MoE model of `kind` (see the table above). mixtral's experts are n_ff wide
    (llama's layout has no separate expert width); the qwens' are n_ff_exp wide."""
    if kind not in KINDS:
        raise ValueError(f"unknown tiny MoE kind {kind!r} (one of {', '.join(KINDS)})")
    arch = KINDS[kind]
    rng = np.random.default_rng(seed)
    n_vocab = len(tiny_vocab()[0])
    head_dim = n_embd // n_head
    width = n_ff if kind == "mixtral" else n_ff_exp
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{kind}")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_expert_used)
    if kind != "mixtral":
        w.add_expert_feed_forward_length(n_ff_exp)
    if kind == "qwen2moe":
        w.add_expert_shared_feed_forward_length(n_ff_shexp)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(qtype))
    add_tiny_tokenizer(w, n_vocab)

    rand = RandomTensors(w, rng)
    tensor, norm, bias = rand.weight, rand.norm, rand.bias

    F32 = GGMLQuantizationType.F32
    tensor("token_embd.weight", (n_vocab, n_embd), 1.0, qtype)
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", n_embd)
        tensor(p + "attn_q.weight", (n_embd, n_embd), n_embd**-0.5, qtype)
        tensor(p + "attn_k.weight", (n_head_kv * head_dim, n_embd), n_embd**-0.5, qtype)
        tensor(p + "attn_v.weight", (n_head_kv * head_dim, n_embd), n_embd**-0.5, qtype)
        if kind == "qwen2moe":
            bias(p + "attn_q.bias", n_embd)
            bias(p + "attn_k.bias", n_head_kv * head_dim)
            bias(p + "attn_v.bias", n_head_kv * head_dim)
        if kind == "qwen3moe":
            norm(p + "attn_q_norm.weight", head_dim, 0.3)
            norm(p + "attn_k_norm.weight", head_dim, 0.3)
        tensor(p + "attn_output.weight", (n_embd, n_embd), n_embd**-0.5, qtype)
        norm(p + "ffn_norm.weight", n_embd)
        tensor(p + "ffn_gate_inp.weight", (n_expert, n_embd), router_scale * n_embd**-0.5, F32)
        tensor(p + "ffn_gate_exps.weight", (n_expert, width, n_embd), n_embd**-0.5, expert_qtype)
        tensor(p + "ffn_up_exps.weight", (n_expert, width, n_embd), n_embd**-0.5, expert_qtype)
        tensor(p + "ffn_down_exps.weight", (n_expert, n_embd, width), width**-0.5, expert_qtype)
        if kind == "qwen2moe":
            tensor(p + "ffn_gate_inp_shexp.weight", (n_embd,), 2.0 * n_embd**-0.5, F32)
            tensor(p + "ffn_gate_shexp.weight", (n_ff_shexp, n_embd), n_embd**-0.5, qtype)
            tensor(p + "ffn_up_shexp.weight", (n_ff_shexp, n_embd), n_embd**-0.5, qtype)
            tensor(p + "ffn_down_shexp.weight", (n_embd, n_ff_shexp), n_ff_shexp**-0.5, qtype)
    norm("output_norm.weight", n_embd)
    tensor("output.weight", (n_vocab, n_embd), n_embd**-0.5, qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

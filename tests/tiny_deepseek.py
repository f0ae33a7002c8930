"""Tiny deepseek2 GGUFs (multi-head latent attention, optionally MoE) that the tests write and
llama.cpp loads, laid out the way llama.cpp's current converter writes DeepSeek-V2/V3:

| GGUF key / tensor                         | here                                          |
|-------------------------------------------|-----------------------------------------------|
| attention.head_count_kv, key_length,      | 1, kv_lora_rank + n_rot, kv_lora_rank: the    |
| value_length                              | cache's view (one latent "head" per token)    |
| attention.key_length_mla / value_length_mla | qk_nope + n_rot, v_head: the per-head sizes |
| attention.q_lora_rank                     | always written (0: one attn_q matrix)         |
| attention.kv_lora_rank, rope.dimension_count | kv_lora_rank, n_rot                        |
| attn_q, or attn_q_a + attn_q_a_norm + attn_q_b | q with or without its LoRA              |
| attn_kv_a_mqa [kv_lora_rank + n_rot, d]   | the latent and the shared RoPE key           |
| attn_kv_a_norm, attn_k_b [nh, r, nope], attn_v_b [nh, v, r] | W_uk (transposed), W_uv |
| leading_dense_block_count, expert_*       | the first layers dense, the rest MoE          |

llama.cpp requires `q_lora_rank`, `expert_feed_forward_length` and `expert_shared_count` even
for a model with no q LoRA and no experts (its loader reads them without a default), so they
are always written. attn_k_b / attn_v_b (and attn_kv_b) are F16: their rows (nope = 16,
kv_lora_rank = 48) are not whole Q8_0 blocks. `legacy=True` writes the older layout instead, one attn_kv_b
[nh * (nope + v), r] and no *_mla keys, which llama.cpp runs in the naive (decompressed) form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import ExpertGatingFuncType, GGMLQuantizationType, GGUFWriter, RopeScalingType

from tests.tiny_models import RandomTensors, add_tiny_tokenizer, tiny_vocab

N_EMBD, N_HEAD = 64, 4
KV_LORA_RANK, N_ROT, QK_NOPE, V_HEAD = 48, 16, 16, 16
N_FF = 128
N_EXPERT, N_EXPERT_USED, N_FF_EXP, N_EXPERT_SHARED = 8, 2, 32, 1
N_GROUP, N_GROUP_USED = 4, 2


def write_tiny_deepseek2(
    path: Path,
    seed: int = 0,
    n_layer: int = 2,
    q_lora_rank: int = 0,
    n_dense: int | None = None,
    gating: str = "sigmoid",
    legacy: bool = False,
    qtype: GGMLQuantizationType = GGMLQuantizationType.Q8_0,
    yarn: dict | None = None,
) -> Path:
    """A deepseek2 model; `n_dense` leading dense layers (None: all dense), the rest MoE with
    `gating` (sigmoid: DeepSeek-V3's routing with expert groups, an exp_probs_b bias, normalized
    top-k weights scaled by 2.5; softmax: DeepSeek-V2's, no bias, no groups). `yarn` declares
    YaRN RoPE scaling as DeepSeek's GGUFs do: {"factor", "n_ctx_orig", "log_mul"} written as
    rope.scaling.factor, original_context_length and yarn_log_multiplier (0.1 * mscale_all_dim,
    the converter's convention; 0 or absent: no multiplier key)."""
    rng = np.random.default_rng(seed)
    n_dense = n_layer if n_dense is None else n_dense
    n_vocab = len(tiny_vocab()[0])
    k_head = QK_NOPE + N_ROT  # a query head's width: the no-RoPE part, then the RoPE part
    w = GGUFWriter(str(path), "deepseek2")
    w.add_name("tiny-deepseek2")
    w.add_block_count(n_layer)
    w.add_context_length(256)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    if legacy:  # MHA view: per-head K and V in the cache
        w.add_head_count_kv(N_HEAD)
        w.add_key_length(k_head)
        w.add_value_length(V_HEAD)
    else:  # MQA view: the latent and k_pe are what the cache holds
        w.add_head_count_kv(1)
        w.add_key_length(KV_LORA_RANK + N_ROT)
        w.add_value_length(KV_LORA_RANK)
        w.add_key_length_mla(k_head)
        w.add_value_length_mla(V_HEAD)
    w.add_q_lora_rank(q_lora_rank)
    w.add_kv_lora_rank(KV_LORA_RANK)
    w.add_rope_dimension_count(N_ROT)
    w.add_rope_freq_base(10000.0)
    if yarn:
        w.add_rope_scaling_type(RopeScalingType.YARN)
        w.add_rope_scaling_factor(float(yarn["factor"]))
        w.add_rope_scaling_orig_ctx_len(int(yarn["n_ctx_orig"]))
        if yarn.get("log_mul"):
            w.add_rope_scaling_yarn_log_mul(float(yarn["log_mul"]))
    w.add_layer_norm_rms_eps(1e-6)
    w.add_leading_dense_block_count(n_dense)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_expert_shared_count(N_EXPERT_SHARED)
    if n_dense < n_layer:
        w.add_expert_count(N_EXPERT)
        w.add_expert_used_count(N_EXPERT_USED)
        if gating == "sigmoid":
            w.add_expert_gating_func(ExpertGatingFuncType.SIGMOID)
            w.add_expert_group_count(N_GROUP)
            w.add_expert_group_used_count(N_GROUP_USED)
            w.add_expert_weights_norm(True)
            w.add_expert_weights_scale(2.5)
        else:
            w.add_expert_gating_func(ExpertGatingFuncType.SOFTMAX)
            w.add_expert_weights_scale(1.0)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(qtype))
    add_tiny_tokenizer(w, n_vocab)

    rand = RandomTensors(w, rng)
    norm = rand.norm

    def tensor(name: str, shape: tuple[int, ...], scale: float, kind=qtype) -> None:
        rand.weight(name, shape, scale, kind)

    f16, f32 = GGMLQuantizationType.F16, GGMLQuantizationType.F32
    tensor("token_embd.weight", (n_vocab, N_EMBD), 1.0)
    for il in range(n_layer):
        p = f"blk.{il}."
        norm(p + "attn_norm.weight", N_EMBD)
        if q_lora_rank:
            tensor(p + "attn_q_a.weight", (q_lora_rank, N_EMBD), N_EMBD**-0.5)
            norm(p + "attn_q_a_norm.weight", q_lora_rank, 0.3)
            tensor(p + "attn_q_b.weight", (N_HEAD * k_head, q_lora_rank), q_lora_rank**-0.5)
        else:
            tensor(p + "attn_q.weight", (N_HEAD * k_head, N_EMBD), N_EMBD**-0.5)
        # The latent's rows are RMS-normed by attn_kv_a_norm (spread 0.3, large enough to matter);
        # k_pe's are not normed, so they are drawn at the scale a normed row would have.
        tensor(p + "attn_kv_a_mqa.weight", (KV_LORA_RANK + N_ROT, N_EMBD), N_EMBD**-0.5)
        norm(p + "attn_kv_a_norm.weight", KV_LORA_RANK, 0.3)
        if legacy:
            tensor(p + "attn_kv_b.weight", (N_HEAD * (QK_NOPE + V_HEAD), KV_LORA_RANK), KV_LORA_RANK**-0.5, f16)
        else:
            tensor(p + "attn_k_b.weight", (N_HEAD, KV_LORA_RANK, QK_NOPE), KV_LORA_RANK**-0.5, f16)
            tensor(p + "attn_v_b.weight", (N_HEAD, V_HEAD, KV_LORA_RANK), KV_LORA_RANK**-0.5, f16)
        tensor(p + "attn_output.weight", (N_EMBD, N_HEAD * V_HEAD), (N_HEAD * V_HEAD) ** -0.5)
        norm(p + "ffn_norm.weight", N_EMBD)
        if il < n_dense:
            tensor(p + "ffn_gate.weight", (N_FF, N_EMBD), N_EMBD**-0.5)
            tensor(p + "ffn_up.weight", (N_FF, N_EMBD), N_EMBD**-0.5)
            tensor(p + "ffn_down.weight", (N_EMBD, N_FF), N_FF**-0.5)
            continue
        tensor(p + "ffn_gate_inp.weight", (N_EXPERT, N_EMBD), N_EMBD**-0.5, f32)
        if gating == "sigmoid":  # the selection bias (DeepSeek-V3's e_score_correction_bias)
            w.add_tensor(p + "exp_probs_b.bias", (0.3 * rng.standard_normal(N_EXPERT)).astype(np.float32))
        tensor(p + "ffn_gate_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), N_EMBD**-0.5)
        tensor(p + "ffn_up_exps.weight", (N_EXPERT, N_FF_EXP, N_EMBD), N_EMBD**-0.5)
        tensor(p + "ffn_down_exps.weight", (N_EXPERT, N_EMBD, N_FF_EXP), N_FF_EXP**-0.5)
        n_sh = N_FF_EXP * N_EXPERT_SHARED
        tensor(p + "ffn_gate_shexp.weight", (n_sh, N_EMBD), N_EMBD**-0.5)
        tensor(p + "ffn_up_shexp.weight", (n_sh, N_EMBD), N_EMBD**-0.5)
        tensor(p + "ffn_down_shexp.weight", (N_EMBD, n_sh), n_sh**-0.5)
    norm("output_norm.weight", N_EMBD)
    tensor("output.weight", (n_vocab, N_EMBD), N_EMBD**-0.5)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

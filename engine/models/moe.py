"""A mixture-of-experts FFN, as llama.cpp's `build_moe_ffn` computes it, in one function.

    moe_ffn(num, w, prefix, h, routing, bus, step, layer) -> out [T, n_embd]
    routing = Routing.from_args(args)   # or Routing(n_expert, n_expert_used, gating="sigmoid",
                                        #   norm_w=True, scale=2.5, n_group=8, n_group_used=4)

`h` is the FFN's input (the ffn_norm output) [T, n_embd]; `w` the model's weights; `prefix` the
layer's name prefix (`blk.3.`); `routing` a `Routing` (below) with the file's expert settings.
The weights read, by GGUF name (numpy order, i.e. ggml's ne reversed):

    ffn_gate_inp.weight      [n_expert, n_embd]          the router
    exp_probs_b.bias         [n_expert]                  optional: a selection bias (DeepSeek-V3)
    ffn_{gate,up}_exps.weight [n_expert, n_ff_exp, n_embd] the experts' SwiGLU, one matrix per expert
    ffn_down_exps.weight     [n_expert, n_embd, n_ff_exp]
    ffn_{gate,up,down}_shexp.weight                      optional: shared expert(s) every token runs
    ffn_gate_inp_shexp.weight [n_embd]                   optional: qwen2moe's sigmoid gate on the shared expert

The steps, in llama.cpp's order and with its graph names (the `ffn_moe_*-N` nodes):

1. router logits = ffn_gate_inp · h                              (ffn_moe_logits)   [T, n_expert]
2. probs = softmax(logits) or sigmoid(logits)  (`gating`)        (ffn_moe_probs)
3. selection scores = probs + exp_probs_b, where the file has the bias: the bias only steers
   *which* experts are picked; their weights come from the unbiased probs.
4. expert groups (DeepSeek-V3, `n_group` > 1): the experts are split into n_group consecutive
   groups, each group scored by the sum of its two best selection scores, and only the
   `n_group_used` best groups stay in the running (the others' scores become -inf).
5. top-k: the n_expert_used best selection scores, best first    (ffn_moe_topk)     [T, k]
6. weights = probs at those experts; with `norm_w` divided by their sum (clamped below at
   6.1e-5, fp16's smallest normal, as llama.cpp does); times `scale` (expert_weights_scale)
7. each chosen expert's SwiGLU, down(silu(gate·h) * up·h), times its weight, summed over the
   k slots in slot order                                          (ffn_moe_out)
8. plus the shared expert's SwiGLU, gated by sigmoid(ffn_gate_inp_shexp · h) where there is one.

Which architecture sets what (llama.cpp's graphs): llama with experts (Mixtral): softmax,
norm_w; qwen2moe: softmax, no norm_w, shared expert with a sigmoid gate; qwen3moe: softmax,
norm_w; deepseek2: the file's `expert_gating_func` (V2 softmax, V3 sigmoid), its
`expert_weights_norm`, `expert_weights_scale`, groups and bias, and un-gated shared experts.

Numerics: the expert matmuls go through `num.expert_linear` (ggml's MUL_MAT_ID runs each expert's
rows through the same kernel as a plain matmul of that weight type, so the `llamacpp` numerics
follow it bit for bit); the softmax, SiLU and sigmoid are the numerics' too.

The `moe` event (one per layer and step): router_logits [T, n_expert], probs [T, n_expert],
experts [T, k] (int), weights [T, k], and scalars n_expert, n_expert_used, gating, load
(tokens per expert in this step), plus the routing options that were on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from engine.hooks import HookBus
from engine.numerics import Numerics

GATING = ("softmax", "sigmoid")
# ggml_clamp(weights_sum, 6.103515625e-5, INF) before norm_w's division: fp16's smallest normal.
MIN_WEIGHT_SUM = 6.103515625e-5


@dataclass(frozen=True)
class Routing:
    """How a layer picks and weighs its experts (llama.cpp's build_moe_ffn arguments)."""

    n_expert: int
    n_expert_used: int  # k
    gating: str = "softmax"  # "softmax" | "sigmoid" (expert_gating_func)
    norm_w: bool = False  # renormalize the k chosen weights to sum to 1 (expert_weights_norm)
    scale: float = 1.0  # multiply the chosen weights (expert_weights_scale; 0 means 1)
    n_group: int = 1  # expert_group_count: > 1 turns on group-limited routing
    n_group_used: int = 1  # expert_group_used_count: groups kept per token

    @classmethod
    def from_args(cls, args) -> "Routing":
        """The routing a model's ModelArgs (engine/config.py) describes."""
        return cls(n_expert=args.n_expert, n_expert_used=args.n_expert_used, gating=args.expert_gating,
                   norm_w=args.expert_weights_norm, scale=args.expert_weights_scale or 1.0,
                   n_group=max(1, args.n_expert_groups), n_group_used=max(1, args.n_group_used))

    def __post_init__(self):
        if self.gating not in GATING:
            raise ValueError(f"unknown expert gating {self.gating!r} (one of {', '.join(GATING)})")
        if not 0 < self.n_expert_used <= self.n_expert:
            raise ValueError(f"{self.n_expert_used} experts used per token out of {self.n_expert}")
        if self.n_group > 1 and (self.n_expert % self.n_group or not 0 < self.n_group_used <= self.n_group):
            raise ValueError(f"{self.n_expert} experts cannot be split into {self.n_group} groups "
                             f"with {self.n_group_used} used")


def gate(num: Numerics, logits: torch.Tensor, gating: str) -> torch.Tensor:
    """The router's probabilities over the experts [T, n_expert]."""
    if gating == "softmax":
        return num.softmax(logits)
    return num.sigmoid(logits)


def select_experts(probs: torch.Tensor, bias: torch.Tensor | None, r: Routing) -> torch.Tensor:
    """The k experts each token goes to [T, k], best first (steps 3-5 of the module doc)."""
    scores = probs if bias is None else probs + bias
    if r.n_group > 1:
        T = scores.shape[0]
        groups = scores.view(T, r.n_group, r.n_expert // r.n_group)
        # A group's score: the sum of its two best experts (DeepSeek-V3's group_limited_topk).
        top2 = groups.topk(min(2, groups.shape[-1]), dim=-1).values
        group_score = top2[..., 0] + top2[..., 1] if top2.shape[-1] == 2 else top2[..., 0]
        keep = group_score.topk(r.n_group_used, dim=-1).indices  # [T, n_group_used]
        mask = torch.ones(T, r.n_group, dtype=torch.bool, device=scores.device)
        mask.scatter_(1, keep, False)
        scores = groups.masked_fill(mask[..., None], float("-inf")).view(T, r.n_expert)
    return scores.topk(r.n_expert_used, dim=-1).indices  # ggml_argsort_top_k: descending


def expert_weights(probs: torch.Tensor, experts: torch.Tensor, r: Routing) -> torch.Tensor:
    """The chosen experts' weights [T, k] (step 6): from the unbiased probs."""
    weights = probs.gather(1, experts)
    if r.norm_w:
        # ggml's sum_rows adds in double and rounds once; then a float division.
        total = weights.double().sum(dim=-1, keepdim=True).to(weights.dtype)
        weights = weights / total.clamp(min=MIN_WEIGHT_SUM)
    if r.scale not in (0.0, 1.0):
        weights = weights * r.scale
    return weights


def run_experts(num: Numerics, w: Mapping[str, torch.Tensor], prefix: str, h: torch.Tensor,
                experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_slot weights[:, slot] * expert_{experts[:, slot]}(h), summed in slot order [T, n_embd]."""
    T, k = experts.shape
    names = [prefix + f"ffn_{part}_exps.weight" for part in ("gate", "up", "down")]
    gate_w, up_w, down_w = (w[n] for n in names)
    out = torch.zeros(T, k, h.shape[-1], dtype=h.dtype, device=h.device)  # (T, k, d): each slot's output
    for e in experts.unique().tolist():
        rows, slots = (experts == e).nonzero(as_tuple=True)  # the (token, slot) pairs routed to e
        x = h[rows]  # (n_e, d)
        g = num.expert_linear(x, gate_w, names[0], e)
        u = num.expert_linear(x, up_w, names[1], e)
        out[rows, slots] = num.expert_linear(num.swiglu(g, u), down_w, names[2], e)
    out = out * weights[..., None]  # ffn_moe_weighted
    moe_out = out[:, 0]
    for slot in range(1, k):  # ggml adds the slots one after the other
        moe_out = moe_out + out[:, slot]
    return moe_out


def shared_expert(num: Numerics, w: Mapping[str, torch.Tensor], prefix: str, h: torch.Tensor) -> torch.Tensor | None:
    """The shared expert(s) every token runs (one SwiGLU, n_shared experts wide), or None;
    gated by sigmoid(ffn_gate_inp_shexp · h) where the file has that gate (qwen2moe)."""
    name = prefix + "ffn_gate_shexp.weight"
    if name not in w:
        return None
    gate_ = num.linear(h, w[name], name)
    up = num.linear(h, w[prefix + "ffn_up_shexp.weight"], prefix + "ffn_up_shexp.weight")
    out = num.linear(num.swiglu(gate_, up), w[prefix + "ffn_down_shexp.weight"], prefix + "ffn_down_shexp.weight")
    gate_inp = prefix + "ffn_gate_inp_shexp.weight"
    if gate_inp in w:
        g = num.linear(h, w[gate_inp].view(1, -1), gate_inp)  # [T, 1]
        # llama.cpp's qwen2moe graph writes this sigmoid as silu(g) / g.
        out = out * (num.silu_scalar(g) / g)
    return out


def moe_ffn(num: Numerics, w: Mapping[str, torch.Tensor], prefix: str, h: torch.Tensor, routing: Routing,
            bus: HookBus, step: int, layer: int) -> torch.Tensor:
    """The MoE FFN of one layer: h [T, n_embd] -> [T, n_embd] (see the module doc)."""
    name = prefix + "ffn_gate_inp.weight"
    logits = num.linear(h, w[name], name)  # (T, n_expert)
    probs = gate(num, logits, routing.gating)
    bias = w.get(prefix + "exp_probs_b.bias")
    experts = select_experts(probs, bias, routing)  # (T, k)
    weights = expert_weights(probs, experts, routing)  # (T, k)
    if bus.wants("moe", layer):
        load = torch.bincount(experts.flatten(), minlength=routing.n_expert)
        bus.emit(
            "moe", step, layer,
            tensors={"router_logits": logits, "probs": probs, "experts": experts.int(), "weights": weights},
            n_expert=routing.n_expert, n_expert_used=routing.n_expert_used, gating=routing.gating,
            norm_w=routing.norm_w, scale=routing.scale, n_group=routing.n_group, n_group_used=routing.n_group_used,
            biased=bias is not None, load=load.tolist(),
        )
    out = run_experts(num, w, prefix, h, experts, weights)
    shared = shared_expert(num, w, prefix, h)
    return out if shared is None else out + shared

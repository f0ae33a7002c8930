"""The llama family, from GGUF weights: llama (SmolLM2, Llama 2/3, Mistral without sliding
window), qwen2 (llama + q/k/v biases, NeoX RoPE) and qwen3 (llama + a per-head RMSNorm of q
and k before RoPE, NeoX RoPE). What tells them apart is in the file: a bias or a QK-norm
weight is used when the GGUF has it (llama.cpp's graphs add `bq`, `attn_q_norm`, ... the same
way), and the RoPE layout comes with the architecture (ModelArgs.rope_neox). The same goes for
experts: a layer whose file has a router (`ffn_gate_inp`) runs a mixture of experts
(engine/models/moe.py) instead of the dense SwiGLU: llama with experts (Mixtral), qwen2moe, qwen3moe.

One forward pass over the layer stack, read top to bottom like llama2.c's `transformer()`;
every intermediate that has a stop is handed to the hook bus, but only when somebody
asked for it (`bus.wants`), so an unwatched run pays for none of it.

Names follow the GGUF tensor names (`attn_norm`, `attn_q`, `ffn_gate`, ...) and
llama.cpp's graph (`Qcur`, `kq`, `kqv_out`, `l_out`), so a reader can put the two side by side.

How each op does its arithmetic (plain float32, or llama.cpp's roundings and summation
order) is the numerics' business: the matmuls, RMSNorm, RoPE, K·Q, softmax, softmax·V and
SwiGLU are `self.num` methods (engine/numerics.py).
"""

from __future__ import annotations

import torch

from engine import rope_yarn
from engine.config import ModelArgs
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.models.layers import logit_lens, rope
from engine.models.moe import Routing, moe_ffn
from engine.models.step import StepInputs
from engine.numerics import Numerics


class Llama:
    def __init__(self, args: ModelArgs, weights: dict[str, torch.Tensor], numerics: Numerics, bus: HookBus | None = None):
        self.args = args
        self.w = weights
        self.num = numerics
        self.bus = bus or HookBus()
        self.lens = False  # emit the logit lens at every layer (TorchEngine(lens=True), --lens)
        # Tied embeddings: llama.cpp uses token_embd as the output matrix when output.weight is absent.
        self.output_name = "output" if "output.weight" in weights else "token_embd"
        # Mixtral-style llama, qwen2moe, qwen3moe: the expert settings every MoE layer shares.
        self.routing = Routing.from_args(args) if args.n_expert else None
        # The decode step can run with static shapes (engine/cuda_graph.py); not with experts, whose
        # picks the host reads back to run each expert's rows.
        self.static_decode = not args.n_expert

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x @ <name>.weight.T, plus <name>.bias where the file has one (qwen2's q, k, v)."""
        y = self.num.linear(x, self.w[name + ".weight"], name + ".weight")
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def linears(self, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """`linear` for several weights that read the same x, as one matmul where they are stored
        side by side (engine/weights.py): q, k, v; gate, up."""
        ys = self.num.linears(x, [self.w[n + ".weight"] for n in names], [n + ".weight" for n in names])
        biases = [self.w.get(n + ".bias") for n in names]
        return [y if b is None else y + b for y, b in zip(ys, biases)]

    def qk_norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """qwen3: RMSNorm over each head's head_dim values, where the file has the weight."""
        weight = self.w.get(name + ".weight")
        return x if weight is None else self.num.rms_norm(x, weight, self.args.rms_eps)

    def rope_cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [T, rope_dim/2] of the RoPE angles at `positions` (also the static decode's table);
        YaRN's where the file declares it (engine/rope_yarn.py)."""
        return rope_yarn.cos_sin(self.num, positions, self.args.rope_dim, self.args.rope_theta, self.args.yarn)

    def forward(self, tokens: torch.Tensor, pos: int | StepInputs, cache: KVCache, step: int) -> torch.Tensor:
        """Run `tokens` [T] at positions pos..pos+T; return the logits of the last one [n_vocab].
        `pos` may be the step's inputs already built: the static decode step (engine/cuda_graph.py)."""
        a, w, bus, num = self.args, self.w, self.bus, self.num
        T = tokens.shape[0]
        at = pos if isinstance(pos, StepInputs) else StepInputs.at(pos, T, self.rope_cos_sin, tokens.device)
        pos, positions, cos, sin, mask = at.pos, at.positions, at.cos, at.sin, at.mask

        x = w["token_embd.weight"][tokens]  # (T, d)
        if bus.wants("embed"):
            bus.emit("embed", step, tensors={"out": x}, norms=x.norm(dim=-1).tolist())

        for il in range(a.n_layer):
            p = f"blk.{il}."
            h = num.rms_norm(x, w[p + "attn_norm.weight"], a.rms_eps)
            if bus.wants("attn_norm", il):
                bus.emit("attn_norm", step, il, tensors={"out": h})

            q, k, v = self.linears(h, p + "attn_q", p + "attn_k", p + "attn_v")
            q = q.view(T, a.n_head, a.head_dim)  # (T, nh, hd)
            k = k.view(T, a.n_head_kv, a.head_dim)  # (T, nkv, hd)
            v = v.view(T, a.n_head_kv, a.head_dim)
            if bus.wants("qkv", il):
                bus.emit("qkv", step, il, tensors={"q": q, "k": k, "v": v})

            q = rope(num, self.qk_norm(q, p + "attn_q_norm"), cos, sin, a.rope_neox)
            k = rope(num, self.qk_norm(k, p + "attn_k_norm"), cos, sin, a.rope_neox)
            if bus.wants("rope", il):
                bus.emit("rope", step, il, tensors={"q": q, "k": k}, positions=positions.tolist())

            keys, values = at.write(cache, il, num.kv(k), num.kv(v))  # (n_keys, nkv, hd)
            if bus.wants("kv_write", il):
                bus.emit("kv_write", step, il, **cache.event(il, pos, T))

            # GQA: each KV head serves n_group consecutive query heads.
            keys = keys.repeat_interleave(a.n_group, dim=1)  # (n_keys, nh, hd)
            values = values.repeat_interleave(a.n_group, dim=1)
            kq = num.attn_scores(q, keys) * a.attn_scale + mask  # (nh, T, n_keys)
            weights = num.softmax(kq)
            if bus.wants("attn", il):
                bus.emit(
                    "attn", step, il, tensors={"weights": weights},
                    sink_mass=weights[:, :, 0].mean().item(),
                )
            kqv = num.attn_values(weights, values).reshape(T, a.n_head * a.head_dim)
            attn_out = self.linear(kqv, p + "attn_output")  # (T, d)
            if bus.wants("attn_out", il):
                bus.emit("attn_out", step, il, tensors={"out": attn_out})
            x = x + attn_out

            h = num.rms_norm(x, w[p + "ffn_norm.weight"], a.rms_eps)
            if bus.wants("ffn_norm", il):
                bus.emit("ffn_norm", step, il, tensors={"out": h})
            if p + "ffn_gate_inp.weight" in w:  # a router: this layer's FFN is a mixture of experts
                ffn_out = moe_ffn(num, w, p, h, self.routing, bus, step, il)
            else:  # SwiGLU: silu(gate) * up, then down.
                gate, up = self.linears(h, p + "ffn_gate", p + "ffn_up")
                ffn_out = self.linear(num.swiglu(gate, up), p + "ffn_down")
            if bus.wants("ffn_out", il):
                bus.emit("ffn_out", step, il, tensors={"out": ffn_out})
            x = x + ffn_out
            if bus.wants("residual", il):
                bus.emit("residual", step, il, tensors={"out": x}, norm=x[-1].norm().item())
            if self.lens and bus.wants("logits", il):
                logit_lens(bus, step, il, self.head(x[-1]))

        return self.head(x[-1])  # only the last token is sampled

    def head(self, x_last: torch.Tensor) -> torch.Tensor:
        """The final norm and the LM head: logits [n_vocab] for one hidden state (also the logit lens)."""
        h = self.num.rms_norm(x_last, self.w["output_norm.weight"], self.args.rms_eps)
        return self.linear(h, self.output_name)

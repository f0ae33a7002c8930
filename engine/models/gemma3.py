"""The gemma3 architecture (Gemma 3 270M ... 27B, text only), from GGUF weights.

Read beside llama.py; what Gemma 3 does differently, in the order a token meets it:

* the embedding rows are multiplied by sqrt(n_embd);
* q and k get a per-head RMSNorm (attn_q_norm, attn_k_norm) before RoPE, and RoPE is NeoX's;
* local and global layers: five of every six layers (ModelArgs.sliding_window) attend to the
  last `window` positions only and rotate with their own RoPE base (10 000, the global
  layers 1 000 000);
* queries are scaled by ModelArgs.attn_scale before K·Q (llama.cpp multiplies Qcur, then
  calls the attention with scale 1);
* the attention output and the FFN output are each RMS-normed again (post_attention_norm,
  post_ffw_norm) before they join the residual stream;
* the FFN is GeGLU: gelu(gate) * up, then down;
* the output matrix is token_embd (tied);
* a file with no window (attention.sliding_window absent or 0) is all global layers, and
  its logits are soft-capped, c * tanh(logits / c), with c = final_logit_softcapping (what
  llama.cpp's non-SWA gemma3 graph does).

Every norm is a plain x * w: Gemma's checkpoints store w - 1 (HF computes x * (1 + w)) and
the GGUF converter adds the 1 back, so the file already holds the multiplier, and llama.cpp's
gemma3 graph calls the same RMS norm as llama's. Checked, not assumed: fed llama.cpp's
inputs, our attn_norm, Qcur_normed, Kcur_normed, attn_post_norm, ffn_norm, ffn_post_norm
and result_norm of Gemma 3 270M come out bit-identical to its nodes (bench/node_parity.py).
"""

from __future__ import annotations

import math

import torch

from engine.config import ModelArgs
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.models.layers import attention_mask, logit_lens, rope
from engine.numerics import Numerics


class Gemma3:
    def __init__(self, args: ModelArgs, weights: dict[str, torch.Tensor], numerics: Numerics, bus: HookBus | None = None):
        self.args = args
        self.w = weights
        self.num = numerics
        self.bus = bus or HookBus()
        self.lens = False  # emit the logit lens at every layer (TorchEngine(lens=True), --lens)
        self.output_name = "output.weight" if "output.weight" in weights else "token_embd.weight"
        # ggml_scale(inpL, sqrtf(n_embd)) and ggml_scale(Qcur, f_attention_scale): float32 factors.
        self.embd_scale = torch.tensor(math.sqrt(args.n_embd), dtype=torch.float32)
        self.q_scale = torch.tensor(args.attn_scale, dtype=torch.float32)

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.num.linear(x, self.w[name], name)

    def linears(self, x: torch.Tensor, *names: str) -> list[torch.Tensor]:
        """Several weights that read the same x, one matmul where they are stored side by side."""
        return self.num.linears(x, [self.w[n] for n in names], list(names))

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.num.rms_norm(x, self.w[name], self.args.rms_eps)

    def forward(self, tokens: torch.Tensor, pos: int, cache: KVCache, step: int) -> torch.Tensor:
        """Run `tokens` [T] at positions pos..pos+T; return the logits of the last one [n_vocab]."""
        a, w, bus, num = self.args, self.w, self.bus, self.num
        T = tokens.shape[0]
        dev = tokens.device
        positions = torch.arange(pos, pos + T, device=dev)
        windows = [a.window(il) for il in range(a.n_layer)]
        # One mask per window size (global layers: plain causal), one cos/sin per RoPE base.
        masks = {win: attention_mask(pos, T, win, device=dev) for win in set(windows)}  # (T, pos + T)
        angles = {theta: num.rope_cos_sin(positions, a.rope_dim, theta)
                  for theta in {a.layer_rope_theta(il) for il in range(a.n_layer)}}

        x = w["token_embd.weight"][tokens] * self.embd_scale.to(dev)  # (T, d)
        if bus.wants("embed"):
            bus.emit("embed", step, tensors={"out": x}, norms=x.norm(dim=-1).tolist())

        for il in range(a.n_layer):
            p = f"blk.{il}."
            h = self.norm(x, p + "attn_norm.weight")
            if bus.wants("attn_norm", il):
                bus.emit("attn_norm", step, il, tensors={"out": h})

            q, k, v = self.linears(h, p + "attn_q.weight", p + "attn_k.weight", p + "attn_v.weight")
            q = q.view(T, a.n_head, a.head_dim)  # (T, nh, hd)
            k = k.view(T, a.n_head_kv, a.head_dim)  # (T, nkv, hd)
            v = v.view(T, a.n_head_kv, a.head_dim)
            if bus.wants("qkv", il):
                bus.emit("qkv", step, il, tensors={"q": q, "k": k, "v": v})

            # QK-norm: each head's vector RMS-normed on its own, then rotated.
            theta = a.layer_rope_theta(il)
            cos, sin = angles[theta]
            q = rope(num, self.norm(q, p + "attn_q_norm.weight"), cos, sin, neox=True)
            k = rope(num, self.norm(k, p + "attn_k_norm.weight"), cos, sin, neox=True)
            if bus.wants("rope", il):
                bus.emit("rope", step, il, tensors={"q": q, "k": k}, positions=positions.tolist(), theta=theta)

            keys, values = cache.write(il, pos, num.kv(k), num.kv(v))  # (n_keys, nkv, hd)
            if bus.wants("kv_write", il):
                bus.emit("kv_write", step, il, **cache.event(il, pos, T))

            keys = keys.repeat_interleave(a.n_group, dim=1)  # (n_keys, nh, hd)
            values = values.repeat_interleave(a.n_group, dim=1)
            # A local layer's mask hides keys `window` or more positions back.
            kq = num.attn_scores(q * self.q_scale, keys) + masks[windows[il]]  # (nh, T, n_keys)
            weights = num.softmax(kq)
            if bus.wants("attn", il):
                bus.emit(
                    "attn", step, il, tensors={"weights": weights},
                    sink_mass=weights[:, :, 0].mean().item(), window=windows[il],
                )
            kqv = num.attn_values(weights, values).reshape(T, a.n_head * a.head_dim)
            attn_out = self.linear(kqv, p + "attn_output.weight")  # (T, d)
            attn_post = self.norm(attn_out, p + "post_attention_norm.weight")
            if bus.wants("attn_out", il):
                bus.emit("attn_out", step, il, tensors={"out": attn_out, "post_norm": attn_post})
            x = x + attn_post

            h = self.norm(x, p + "ffn_norm.weight")
            if bus.wants("ffn_norm", il):
                bus.emit("ffn_norm", step, il, tensors={"out": h})
            # GeGLU: gelu(gate) * up, then down.
            gate, up = self.linears(h, p + "ffn_gate.weight", p + "ffn_up.weight")
            ffn_out = self.linear(num.geglu(gate, up), p + "ffn_down.weight")
            ffn_post = self.norm(ffn_out, p + "post_ffw_norm.weight")
            if bus.wants("ffn_out", il):
                bus.emit("ffn_out", step, il, tensors={"out": ffn_out, "post_norm": ffn_post})
            x = x + ffn_post
            if bus.wants("residual", il):
                bus.emit("residual", step, il, tensors={"out": x}, norm=x[-1].norm().item())
            if self.lens and bus.wants("logits", il):
                logit_lens(bus, step, il, self.head(x[-1]))

        return self.head(x[-1])  # only the last token is sampled

    def head(self, x_last: torch.Tensor) -> torch.Tensor:
        """The final norm, the LM head and the soft-cap: logits [n_vocab] for one hidden state (also the lens)."""
        h = self.norm(x_last, "output_norm.weight")
        logits = self.linear(h, self.output_name)  # (n_vocab,)
        if self.args.final_softcap:
            c = torch.tensor(self.args.final_softcap, dtype=torch.float32, device=x_last.device)
            logits = torch.tanh(logits * (1 / c)) * c
        return logits

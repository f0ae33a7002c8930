"""deepseek2 (DeepSeek-V2/V3, and the GGUFs laid out like them): multi-head latent attention (MLA)
and, after the first `n_dense_lead` layers, a mixture of experts.

MLA in one paragraph. Each token's hidden state h is compressed to one small latent row,
c_kv = rms_norm(attn_kv_a_mqa·h)[:kv_lora_rank], plus one RoPE key k_pe (rope_dim values)
shared by every head. Each head h would get its key and value back by decompressing the
latent, k_nope = W_uk[h]·c_kv and v = W_uv[h]·c_kv, but it never needs to: q_nope·(W_uk c) is
(W_uk^T q_nope)·c, so the query can be moved into latent space instead (the *absorbed* form),
attention runs over the latent rows directly, and W_uv is applied to the attention output once.
Either way the cache holds only [c_kv ; k_pe] per token: kv_lora_rank + rope_dim values where
multi-head attention would hold n_head * (k_head + v_head). The `mla` event shows that saving.

Both forms are here (`Deepseek2.form`): `absorbed`, what llama.cpp runs for current files
(attn_k_b / attn_v_b: it treats MLA as multi-query attention over the latent), and `naive`,
which decompresses every cached latent into per-head K and V and runs ordinary attention (what
llama.cpp runs for older files that carry one attn_kv_b). The default is llama.cpp's choice
for the file. Both read the same latent cache; tests/test_deepseek2.py holds them to the same
logits.

RoPE touches only q_pe and k_pe. DeepSeek-V2/V3 files declare YaRN (rope.scaling.type yarn,
factor 40 over 4096 positions): their angles come from engine/rope_yarn.py, and YaRN's magnitude
goes into the softmax scale (ModelArgs.attn_scale, mscale^2 / sqrt(k_head)), as in llama.cpp.

Shapes, with nh heads, r = kv_lora_rank, n_rot = rope_dim, nope = qk_nope_dim, vd = v_head_dim:
attn_k_b [nh, r, nope] (W_uk transposed per head), attn_v_b [nh, vd, r] (W_uv per head).
"""

from __future__ import annotations

import torch

from engine.config import ModelArgs, UnsupportedModel
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.models.layers import attention_mask, logit_lens, rope
from engine.models.moe import Routing, moe_ffn
from engine.numerics import Numerics, round_activation
from engine import rope_yarn

FORMS = ("absorbed", "naive")


class LatentCache(KVCache):
    """The paged KV cache (engine/kv_cache.py) holding MLA rows: one pool of [c_kv ; k_pe] per
    token and layer (n_head_kv 1, head_dim kv_lora_rank + rope_dim). The values are the first
    kv_lora_rank entries of the same rows, so there is no second pool: llama.cpp's MLA cache is
    K-only the same way."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.v, self._v_flat = self.k, self._k_flat  # V *is* K here: one pool, no copy

    def write_rows(self, layer: int, pos: int, rows: torch.Tensor) -> torch.Tensor:
        """Store rows [T, 1, r + n_rot] at pos..pos+T; return every cached row [pos + T, 1, r + n_rot]."""
        keys, _ = self.write(layer, pos, rows, rows)  # the same pool twice: the second copy rewrites the same slots
        return keys


class Deepseek2:
    cache_class = LatentCache  # what TorchEngine builds for this model

    def __init__(self, args: ModelArgs, weights: dict[str, torch.Tensor], numerics: Numerics, bus: HookBus | None = None):
        self.args = args
        self.w = weights
        self.num = numerics
        self.bus = bus or HookBus()
        self.lens = False
        self.output_name = "output" if "output.weight" in weights else "token_embd"
        # Current files split W_uk / W_uv per head; older ones have one attn_kv_b, which llama.cpp
        # runs decompressed. Its choice is the default; both forms work on either file.
        self.split_b = "blk.0.attn_k_b.weight" in weights
        self.form = "absorbed" if self.split_b else "naive"
        # Layers from n_dense_lead on run experts: routed (llama.cpp's build_moe_ffn, engine/models/moe.py)
        # plus the shared expert(s) every token goes through.
        if args.n_dense_lead < args.n_layer and not args.n_expert:
            raise UnsupportedModel(f"deepseek2 layers {args.n_dense_lead}..{args.n_layer - 1} are expert layers, "
                                   "but the file has no deepseek2.expert_count")
        self.routing = Routing.from_args(args) if args.n_expert else None

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return self.num.linear(x, self.w[name + ".weight"], name + ".weight")

    def per_head(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        """x [T, nh, n_in] times each head's own matrix, weight [nh, n_out, n_in] -> [T, nh, n_out].
        The activations are rounded to the weight's dot-product type first (F16 for attn_k_b /
        attn_v_b), as ggml's batched mul_mat does; the sums are torch's."""
        x = round_activation(x, self.num.act.get(name))
        return torch.einsum("thi,hoi->tho", x, weight)

    def b_matrices(self, il: int) -> tuple[torch.Tensor, torch.Tensor, str, str]:
        """Layer il's W_uk^T [nh, r, nope] and W_uv [nh, vd, r], and the GGUF names they come from."""
        a, p = self.args, f"blk.{il}."
        if self.split_b:
            return self.w[p + "attn_k_b.weight"], self.w[p + "attn_v_b.weight"], p + "attn_k_b.weight", p + "attn_v_b.weight"
        kv_b = self.w[p + "attn_kv_b.weight"].view(a.n_head, a.qk_nope_dim + a.v_head_dim, a.kv_lora_rank)
        name = p + "attn_kv_b.weight"
        return kv_b[:, :a.qk_nope_dim].transpose(1, 2), kv_b[:, a.qk_nope_dim:], name, name

    def cache_sizes(self, cache: KVCache) -> dict:
        """Bytes per token and layer: the latent row this cache holds, against the per-head K and V
        that multi-head attention with the same heads would hold, in the cache's element size."""
        a = self.args
        size = cache.k.element_size()
        mla = (a.kv_lora_rank + a.rope_dim) * size
        mha = a.n_head * (a.qk_nope_dim + a.rope_dim + a.v_head_dim) * size
        return {"mla_bytes_per_token": mla, "mha_bytes_per_token": mha, "saving": mha / mla,
                "saved_bytes_per_token": (mha - mla) * a.n_layer, "element_bytes": size}

    def rope_scaling(self) -> dict:
        """YaRN's settings for the mla event (none: plain RoPE): the stretch, the context it
        stretches, and what it does to q_pe / k_pe's length and to the softmax scale."""
        a, y = self.args, self.args.yarn
        if not y:
            return {"rope_scaling": "none"}
        low, high = rope_yarn.corr_dims(a.rope_dim, y.n_ctx_orig, a.rope_theta, y.beta_fast, y.beta_slow)
        return {"rope_scaling": "yarn", "yarn_factor": y.factor, "yarn_n_ctx_orig": y.n_ctx_orig,
                "yarn_log_mul": y.log_mul, "yarn_rope_magnitude": float(y.magnitude()),
                # per pair: 1 kept as trained, 0 slowed down `factor` times, between: the ramp
                "yarn_ramp": [float(v) for v in rope_yarn.ramp(a.rope_dim, low, high)]}

    def forward(self, tokens: torch.Tensor, pos: int, cache: LatentCache, step: int) -> torch.Tensor:
        """Run `tokens` [T] at positions pos..pos+T; return the logits of the last one [n_vocab]."""
        a, w, bus, num = self.args, self.w, self.bus, self.num
        if self.form not in FORMS:
            raise ValueError(f"unknown MLA form {self.form!r} (one of {', '.join(FORMS)})")
        T = tokens.shape[0]
        r, n_rot, nope = a.kv_lora_rank, a.rope_dim, a.qk_nope_dim
        positions = torch.arange(pos, pos + T, device=tokens.device)
        # With YaRN: slow pairs interpolated, fast ones kept, a ramp between (engine/rope_yarn.py)
        cos, sin = rope_yarn.cos_sin(num, positions, n_rot, a.rope_theta, a.yarn)
        mask = attention_mask(pos, T, device=tokens.device)  # (T, pos + T)

        x = w["token_embd.weight"][tokens]  # (T, d)
        if bus.wants("embed"):
            bus.emit("embed", step, tensors={"out": x}, norms=x.norm(dim=-1).tolist())

        for il in range(a.n_layer):
            p = f"blk.{il}."
            h = num.rms_norm(x, w[p + "attn_norm.weight"], a.rms_eps)
            if bus.wants("attn_norm", il):
                bus.emit("attn_norm", step, il, tensors={"out": h})

            # The query: one matrix, or DeepSeek's own low-rank pair with a norm between.
            if a.q_lora_rank:
                q = num.rms_norm(self.linear(h, p + "attn_q_a"), w[p + "attn_q_a_norm.weight"], a.rms_eps)
                q = self.linear(q, p + "attn_q_b")
            else:
                q = self.linear(h, p + "attn_q")
            q = q.view(T, a.n_head, nope + n_rot)  # (T, nh, nope + n_rot): no-RoPE part first
            # The compressed KV: the latent and one RoPE key for all heads, from one matrix.
            kv_a = self.linear(h, p + "attn_kv_a_mqa")  # (T, r + n_rot)
            if bus.wants("qkv", il):
                bus.emit("qkv", step, il, tensors={"q": q, "k": kv_a[:, None, :]})

            q_nope, q_pe = q[..., :nope], q[..., nope:]
            q_pe = rope(num, q_pe, cos, sin, a.rope_neox)  # (T, nh, n_rot)
            k_pe = rope(num, kv_a[:, None, r:], cos, sin, a.rope_neox)  # (T, 1, n_rot)
            latent = num.rms_norm(kv_a[:, :r], w[p + "attn_kv_a_norm.weight"], a.rms_eps)  # (T, r): c_kv
            row = torch.cat((latent[:, None, :], k_pe), dim=-1)  # (T, 1, r + n_rot): what the cache holds
            if bus.wants("rope", il):
                bus.emit("rope", step, il, tensors={"q": torch.cat((q_nope, q_pe), dim=-1), "k": row},
                         positions=positions.tolist())

            rows = cache.write_rows(il, pos, num.kv(row))  # (n_keys, 1, r + n_rot)
            if bus.wants("kv_write", il):
                bus.emit("kv_write", step, il, **cache.event(il, pos, T), holds="mla_latent",
                         latent_dim=r, rope_dim=n_rot)

            w_uk_t, w_uv, name_k, name_v = self.b_matrices(il)
            if self.form == "absorbed":
                # W_uk folded into the query: q_nope -> latent space, then multi-query attention
                # with one shared "head" [c_kv ; k_pe] (the cached rows as they are).
                q_lat = self.per_head(q_nope, w_uk_t, name_k)  # (T, nh, r)
                q_abs = torch.cat((q_lat, q_pe), dim=-1)  # (T, nh, r + n_rot)
                keys = rows.expand(-1, a.n_head, -1)  # (n_keys, nh, r + n_rot), no copy
                values = rows[..., :r].expand(-1, a.n_head, -1)  # (n_keys, nh, r): the latents
                queries = q_abs
            else:
                # Decompress every cached latent into per-head keys and values, then plain MHA.
                # Rounded as llama.cpp's per-head cache would hold them (it runs this form for
                # attn_kv_b files, decompressing before the cache rather than after).
                c = rows[..., :r].expand(-1, a.n_head, -1)  # (n_keys, nh, r)
                k_nope = self.per_head(c, w_uk_t.transpose(1, 2), name_k)  # (n_keys, nh, nope)
                keys = num.kv(torch.cat((k_nope, rows[..., r:].expand(-1, a.n_head, -1)), dim=-1))  # (n_keys, nh, nope + n_rot)
                values = num.kv(self.per_head(c, w_uv, name_v))  # (n_keys, nh, vd)
                queries = torch.cat((q_nope, q_pe), dim=-1)
            if bus.wants("mla", il):
                tensors = {"latent": latent, "k_pe": k_pe[:, 0]}
                if self.form == "absorbed":
                    tensors["q_absorbed"] = q_abs
                bus.emit("mla", step, il, tensors=tensors, form=self.form, kv_lora_rank=r, rope_dim=n_rot,
                         qk_nope_dim=nope, v_head_dim=a.v_head_dim, n_head=a.n_head, kq_scale=a.attn_scale,
                         **self.cache_sizes(cache), **self.rope_scaling())

            kq = num.attn_scores(queries, keys) * a.attn_scale + mask  # (nh, T, n_keys)
            weights = num.softmax(kq)
            if bus.wants("attn", il):
                bus.emit("attn", step, il, tensors={"weights": weights}, sink_mass=weights[:, :, 0].mean().item())
            kqv = num.attn_values(weights, values)  # absorbed: (T, nh, r); naive: (T, nh, vd)
            if self.form == "absorbed":
                kqv = self.per_head(kqv, w_uv, name_v)  # back out of latent space: (T, nh, vd)
            attn_out = self.linear(kqv.reshape(T, a.n_head * a.v_head_dim), p + "attn_output")  # (T, d)
            if bus.wants("attn_out", il):
                bus.emit("attn_out", step, il, tensors={"out": attn_out})
            x = x + attn_out

            h = num.rms_norm(x, w[p + "ffn_norm.weight"], a.rms_eps)
            if bus.wants("ffn_norm", il):
                bus.emit("ffn_norm", step, il, tensors={"out": h})
            if il < a.n_dense_lead:
                gate = self.linear(h, p + "ffn_gate")
                ffn_out = self.linear(num.swiglu(gate, self.linear(h, p + "ffn_up")), p + "ffn_down")
            else:  # routed experts + shared expert (emits the `moe` stop)
                ffn_out = moe_ffn(num, w, p, h, self.routing, bus, step, il)
            if bus.wants("ffn_out", il):
                bus.emit("ffn_out", step, il, tensors={"out": ffn_out})
            x = x + ffn_out
            if bus.wants("residual", il):
                bus.emit("residual", step, il, tensors={"out": x}, norm=x[-1].norm().item())
            if self.lens and bus.wants("logits", il):
                logit_lens(bus, step, il, self.head(x[-1]))

        return self.head(x[-1])

    def head(self, x_last: torch.Tensor) -> torch.Tensor:
        h = self.num.rms_norm(x_last, self.w["output_norm.weight"], self.args.rms_eps)
        return self.num.linear(h, self.w[self.output_name + ".weight"], self.output_name + ".weight")

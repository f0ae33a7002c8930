"""ModelArgs: the shape of a model, read from GGUF metadata (never guessed from a file name).

A few facts are the architecture's, not the file's, and llama.cpp hard-codes them too
(llama-model.cpp: llama_model_rope_type, the gemma3 hparams loader); they live in the
tables below, next to the keys that can override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.rope_yarn import Yarn


class UnsupportedModel(ValueError):
    """The file is a valid GGUF but describes something this engine cannot run."""


# RoPE that rotates (x[i], x[i + rope_dim/2]) instead of adjacent pairs (x[2i], x[2i+1]):
# GPT-NeoX's layout, which llama.cpp keeps for these architectures (LLAMA_ROPE_TYPE_NEOX).
NEOX_ROPE = {"qwen2", "qwen3", "gemma3", "qwen2moe", "qwen3moe"}

# Mixture of experts: whether the chosen experts' weights are renormalized to sum to 1 is the
# architecture's choice in llama.cpp's graphs (build_moe_ffn's norm_w), not a file key, except
# for deepseek2, which reads `expert_weights_norm`. Every one of these gates with a softmax.
MOE_NORM_W = {"llama": True, "qwen2moe": False, "qwen3moe": True}
# `<arch>.expert_gating_func` values (llama.cpp's LLAMA_EXPERT_GATING_FUNC_TYPE_*).
EXPERT_GATING = {1: "softmax", 2: "sigmoid"}

# Sliding-window layouts llama.cpp assumes when a file gives a window but no
# `attention.sliding_window_pattern`: every n-th layer (the last of each period) is global.
SWA_PERIOD = {"gemma3": 6}
# The RoPE base of sliding-window layers when the file has no `rope.freq_base_swa`.
ROPE_THETA_SWA = {"gemma3": 10000.0}
# Architectures whose graph rotates by YaRN's angles when the file declares `rope.scaling.type`
# yarn (engine/rope_yarn.py): the llama family (llama, qwen*) and deepseek2.
YARN_ARCHS = {"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "deepseek2"}


@dataclass
class ModelArgs:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_vocab: int
    n_ctx_train: int
    head_dim: int
    rope_dim: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    name: str = ""
    rope_neox: bool = False  # NeoX pairs (i, i + d/2) rather than adjacent ones (2i, 2i+1)
    # Per layer: 0 = global attention (every earlier position), n = the last n positions only.
    sliding_window: list[int] = field(default_factory=list)
    rope_theta_swa: float = 0.0  # RoPE base of sliding-window layers (0: none has a window)
    attn_scale: float = 0.0  # what K·Q is multiplied by; 0 = 1/sqrt(head_dim)
    final_softcap: float = 0.0  # logits = c * tanh(logits / c) when > 0 (Gemma 2 style)
    yarn: Yarn | None = None  # YaRN RoPE scaling as the file declares it (engine/rope_yarn.py; deepseek2 only)
    # deepseek2's multi-head latent attention (engine/models/deepseek2.py); kv_lora_rank 0 = none.
    # The cache holds one row of kv_lora_rank + rope_dim per token (n_head_kv 1, head_dim that).
    kv_lora_rank: int = 0  # width of the compressed KV latent c_kv
    q_lora_rank: int = 0  # 0: q = attn_q·h; else q = attn_q_b·rms_norm(attn_q_a·h)
    qk_nope_dim: int = 0  # a head's query/key width without RoPE (key_length_mla - rope_dim)
    v_head_dim: int = 0  # a head's value width (value_length_mla)
    n_dense_lead: int = 0  # leading_dense_block_count: layers below it have a dense FFN, the rest experts
    # Mixture of experts (engine/models/moe.py); n_expert 0: every layer's FFN is dense. A layer
    # runs its experts when the file has its router (blk.N.ffn_gate_inp), as in llama.cpp.
    n_expert: int = 0  # expert_count
    n_expert_used: int = 0  # expert_used_count: experts each token goes to (top-k)
    n_ff_exp: int = 0  # expert_feed_forward_length (0: n_ff, llama/Mixtral's layout)
    n_ff_shexp: int = 0  # expert_shared_feed_forward_length (shared expert width; informational)
    expert_gating: str = "softmax"  # softmax | sigmoid over the router logits
    expert_weights_norm: bool = False  # renormalize the k chosen weights (MOE_NORM_W, or the file's key)
    expert_weights_scale: float = 0.0  # multiply the chosen weights (0: no scaling)
    n_expert_groups: int = 0  # expert_group_count (DeepSeek-V3 group-limited routing; <= 1: off)
    n_group_used: int = 0  # expert_group_used_count

    def __post_init__(self):
        if not self.attn_scale:
            self.attn_scale = _inv_sqrt(self.head_dim)

    @property
    def n_group(self) -> int:
        """Query heads sharing one KV head (GQA); 1 is plain multi-head attention."""
        return self.n_head // self.n_head_kv

    def window(self, layer: int) -> int:
        """The layer's attention window in positions; 0 = global."""
        return self.sliding_window[layer] if self.sliding_window else 0

    def layer_rope_theta(self, layer: int) -> float:
        return self.rope_theta_swa if self.window(layer) else self.rope_theta

    @classmethod
    def from_metadata(cls, md: dict) -> "ModelArgs":
        arch = md.get("general.architecture")
        if not isinstance(arch, str):
            raise UnsupportedModel("GGUF has no general.architecture")

        def get(key, default=None, kind=int):
            value = md.get(f"{arch}.{key}", default)
            if value is None:
                raise UnsupportedModel(f"GGUF lacks {arch}.{key}")
            if hasattr(value, "__len__") and not isinstance(value, str):
                # Some files give per-layer arrays (e.g. head_count_kv); one value is all we support yet.
                values = {int(v) for v in value}
                if len(values) != 1:
                    raise UnsupportedModel(f"{arch}.{key} varies per layer, which this engine does not support")
                value = values.pop()
            return kind(value)

        n_embd = get("embedding_length")
        n_head = get("attention.head_count")
        n_head_kv = get("attention.head_count_kv", n_head)
        head_dim = get("attention.key_length", n_embd // n_head)
        tokens = md.get("tokenizer.ggml.tokens")
        n_vocab = get("vocab_size", len(tokens) if tokens is not None else None)
        args = cls(
            arch=arch,
            n_layer=get("block_count"),
            n_embd=n_embd,
            n_head=n_head,
            n_head_kv=n_head_kv,
            n_ff=get("feed_forward_length"),
            n_vocab=n_vocab,
            n_ctx_train=get("context_length", 2048),
            head_dim=head_dim,
            rope_dim=get("rope.dimension_count", head_dim),
            rope_theta=get("rope.freq_base", 10000.0, float),
            rms_eps=get("attention.layer_norm_rms_epsilon", 1e-5, float),
            name=str(md.get("general.name", "")),
            rope_neox=arch in NEOX_ROPE,
        )
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise UnsupportedModel(f"{n_head} query heads cannot be grouped over {n_head_kv} KV heads")
        args._rope_scaling(md)
        if arch == "gemma3":
            args._gemma3(md)
        if arch == "deepseek2":
            args._deepseek2(md)
        args._experts(md)
        return args

    def _rope_scaling(self, md: dict) -> None:
        """`rope.scaling.*`: YaRN is run for YARN_ARCHS (engine/rope_yarn.py); any other scaling
        that changes the angles (factor != 1) is refused rather than silently ignored."""
        a = self.arch
        kind = str(md.get(f"{a}.rope.scaling.type", "linear"))  # llama.cpp's default when only a factor is given
        factor = float(md.get(f"{a}.rope.scaling.factor") or md.get(f"{a}.rope.scale_linear") or 1.0)
        if kind == "none" or factor == 1.0:
            return
        if kind != "yarn" or a not in YARN_ARCHS:
            raise UnsupportedModel(f"{a} with {kind} RoPE scaling (factor {factor:g}) is not supported by the torch "
                                   f"engine (YaRN is, for {', '.join(sorted(YARN_ARCHS))})")
        from engine.rope_yarn import Yarn  # numpy/torch only for the files that need it

        self.yarn = Yarn.from_metadata(md, a, self.n_ctx_train)

    def _gemma3(self, md: dict) -> None:
        """Gemma 3's extras, as llama.cpp's gemma3 loader reads them."""
        window = int(md.get("gemma3.attention.sliding_window", 0) or 0)
        if window > 0:
            pattern = md.get("gemma3.attention.sliding_window_pattern", SWA_PERIOD["gemma3"])
            if hasattr(pattern, "__len__") and not isinstance(pattern, str):
                if len(pattern) != self.n_layer:
                    raise UnsupportedModel(f"gemma3.attention.sliding_window_pattern has {len(pattern)} entries "
                                           f"for {self.n_layer} layers")
                sliding = [bool(p) for p in pattern]
            else:
                # A period n: layers n-1, 2n-1, ... are global, the others slide.
                period = int(pattern)
                sliding = [period > 0 and il % period < period - 1 for il in range(self.n_layer)]
            self.sliding_window = [window if s else 0 for s in sliding]
            self.rope_theta_swa = float(md.get("gemma3.rope.freq_base_swa", ROPE_THETA_SWA["gemma3"]))
        else:
            # Without a window llama.cpp builds the non-SWA graph, which soft-caps the logits.
            self.final_softcap = float(md.get("gemma3.final_logit_softcapping", 0.0) or 0.0)
        # Gemma scales queries by query_pre_attn_scalar**-0.5, which is head_dim for every
        # size but 27B (62 layers), where it is n_embd / n_head; llama.cpp keys on the layer
        # count too. float32, like hparams.f_attention_scale.
        if self.n_layer == 62:
            self.attn_scale = _inv_sqrt(self.n_embd // self.n_head)

    def _deepseek2(self, md: dict) -> None:
        """deepseek2's MLA sizes, as llama.cpp's deepseek2 loader reads them. Current files give
        the per-head sizes as key_length_mla / value_length_mla and the cache's view as
        head_count_kv 1, key_length kv_lora_rank + rope_dim; older ones (one attn_kv_b matrix)
        give the per-head sizes as key_length / value_length. Either way this engine caches the
        latent, so n_head_kv and head_dim are set to that row."""
        def get(key, default=None):
            value = md.get(f"deepseek2.{key}", default)
            if value is None:
                raise UnsupportedModel(f"GGUF lacks deepseek2.{key}")
            return int(value)

        self.kv_lora_rank = get("attention.kv_lora_rank")
        self.q_lora_rank = get("attention.q_lora_rank", 0)
        k_head = get("attention.key_length_mla", 0) or get("attention.key_length")
        self.v_head_dim = get("attention.value_length_mla", 0) or get("attention.value_length")
        self.qk_nope_dim = k_head - self.rope_dim
        if self.qk_nope_dim < 1 or self.kv_lora_rank < 1:
            raise UnsupportedModel(f"deepseek2 key heads of {k_head} leave no room beside {self.rope_dim} RoPE dims")
        self.n_dense_lead = get("leading_dense_block_count", 0)
        self.n_head_kv, self.head_dim = 1, self.kv_lora_rank + self.rope_dim
        # llama.cpp's kq_scale is mscale^2 / sqrt(k_head): YaRN's magnitude goes into the softmax
        # scale (engine/rope_yarn.py), mscale = 1 without it.
        self.attn_scale = self.yarn.deepseek2_kq_scale(k_head) if self.yarn else _inv_sqrt(k_head)

    def _experts(self, md: dict) -> None:
        """The expert keys llama.cpp reads for every architecture, and the ones its MoE graphs
        take from the file (norm_w for deepseek2, the gating function, the weights' scale)."""
        a = self.arch

        def get(key, default, kind=int):
            value = md.get(f"{a}.{key}", default)
            return kind(default if value is None else value)

        self.n_expert = get("expert_count", 0)
        if self.n_expert <= 0:
            return
        self.n_expert_used = get("expert_used_count", 0)
        if not 0 < self.n_expert_used <= self.n_expert:
            raise UnsupportedModel(f"{a}.expert_used_count {self.n_expert_used} is not between 1 and "
                                   f"{a}.expert_count {self.n_expert}")
        self.n_ff_exp = get("expert_feed_forward_length", 0) or self.n_ff
        self.n_ff_shexp = get("expert_shared_feed_forward_length", 0)
        self.n_expert_groups = get("expert_group_count", 0)
        self.n_group_used = get("expert_group_used_count", 0)
        if self.n_expert_groups > 1 and (self.n_expert % self.n_expert_groups
                                         or not 0 < self.n_group_used <= self.n_expert_groups):
            raise UnsupportedModel(f"{self.n_expert} experts cannot be split into {self.n_expert_groups} "
                                   f"groups with {self.n_group_used} used")
        self.expert_weights_scale = get("expert_weights_scale", 0.0, float)
        if a in MOE_NORM_W:  # llama.cpp's graph for these fixes both, whatever the file says
            self.expert_gating, self.expert_weights_norm = "softmax", MOE_NORM_W[a]
            return
        gating = get("expert_gating_func", 1)  # none (0) is softmax, for DeepSeek V2 files without the key
        if gating not in (0, *EXPERT_GATING):
            raise UnsupportedModel(f"{a}.expert_gating_func {gating} is not supported (1 softmax, 2 sigmoid)")
        self.expert_gating = EXPERT_GATING.get(gating, "softmax")
        self.expert_weights_norm = bool(md.get(f"{a}.expert_weights_norm", False))

    def describe(self) -> dict:
        """The model section of a trace's info."""
        return {
            "name": self.name,
            "architecture": self.arch,
            "n_layer": self.n_layer,
            "n_embd": self.n_embd,
            "n_head": self.n_head,
            "n_head_kv": self.n_head_kv,
            "head_dim": self.head_dim,
            "n_ff": self.n_ff,
            "n_vocab": self.n_vocab,
            "n_ctx_train": self.n_ctx_train,
            "rope_theta": self.rope_theta,
            "rope_dim": self.rope_dim,
            "rope_type": "neox" if self.rope_neox else "norm",
            "rms_eps": self.rms_eps,
            "attn_scale": self.attn_scale,
            **({"sliding_window": list(self.sliding_window), "rope_theta_swa": self.rope_theta_swa}
               if any(self.sliding_window) else {}),
            **({"final_softcap": self.final_softcap} if self.final_softcap else {}),
            **({"rope_scaling": self.yarn.describe(self.rope_dim, self.rope_theta)} if self.yarn else {}),
            **({"kv_lora_rank": self.kv_lora_rank, "q_lora_rank": self.q_lora_rank, "qk_nope_dim": self.qk_nope_dim,
                "v_head_dim": self.v_head_dim, "n_dense_lead": self.n_dense_lead} if self.kv_lora_rank else {}),
            **({"n_expert": self.n_expert, "n_expert_used": self.n_expert_used, "n_ff_exp": self.n_ff_exp,
                "expert_gating": self.expert_gating, "expert_weights_norm": self.expert_weights_norm,
                "expert_weights_scale": self.expert_weights_scale,
                **({"n_expert_groups": self.n_expert_groups, "n_group_used": self.n_group_used}
                   if self.n_expert_groups > 1 else {})} if self.n_expert else {}),
        }


def _inv_sqrt(d: int) -> float:
    """1.0f / sqrtf(d), in float32 as llama.cpp computes its attention scales."""
    return float(np.float32(1.0) / np.sqrt(np.float32(d)))

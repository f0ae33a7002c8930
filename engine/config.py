"""ModelArgs: the shape of a model, read from GGUF metadata (never guessed from a file name).

A few facts are the architecture's, not the file's, and llama.cpp hard-codes them too
(llama-model.cpp: llama_model_rope_type, the gemma3 hparams loader); they live in the
tables below, next to the keys that can override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnsupportedModel(ValueError):
    """The file is a valid GGUF but describes something this engine cannot run."""


# RoPE that rotates (x[i], x[i + rope_dim/2]) instead of adjacent pairs (x[2i], x[2i+1]):
# GPT-NeoX's layout, which llama.cpp keeps for these architectures (LLAMA_ROPE_TYPE_NEOX).
NEOX_ROPE = {"qwen2", "qwen3", "gemma3"}

# Sliding-window layouts llama.cpp assumes when a file gives a window but no
# `attention.sliding_window_pattern`: every n-th layer (the last of each period) is global.
SWA_PERIOD = {"gemma3": 6}
# The RoPE base of sliding-window layers when the file has no `rope.freq_base_swa`.
ROPE_THETA_SWA = {"gemma3": 10000.0}


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
        if arch == "gemma3":
            args._gemma3(md)
        return args

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
            "rope_type": "neox" if self.rope_neox else "norm",
            "rms_eps": self.rms_eps,
            "attn_scale": self.attn_scale,
            **({"sliding_window": list(self.sliding_window), "rope_theta_swa": self.rope_theta_swa}
               if any(self.sliding_window) else {}),
            **({"final_softcap": self.final_softcap} if self.final_softcap else {}),
        }


def _inv_sqrt(d: int) -> float:
    """1.0f / sqrtf(d), in float32 as llama.cpp computes its attention scales."""
    return float(np.float32(1.0) / np.sqrt(np.float32(d)))

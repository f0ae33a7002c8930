"""ModelArgs: the shape of a model, read from GGUF metadata (never guessed from a file name)."""

from __future__ import annotations

from dataclasses import dataclass, field


class UnsupportedModel(ValueError):
    """The file is a valid GGUF but describes something this engine cannot run."""


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
    extra: dict = field(default_factory=dict)  # arch-specific keys, kept for the trace

    @property
    def n_group(self) -> int:
        """Query heads sharing one KV head (GQA); 1 is plain multi-head attention."""
        return self.n_head // self.n_head_kv

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
        )
        if n_head_kv <= 0 or n_head % n_head_kv:
            raise UnsupportedModel(f"{n_head} query heads cannot be grouped over {n_head_kv} KV heads")
        return args

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
            "rms_eps": self.rms_eps,
        }

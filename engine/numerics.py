"""llama.cpp's CPU numerics, reproduced so our numbers can be compared with its numbers.

ggml's CPU matmul does not multiply a quantized weight by float activations: it first
quantizes the activations to the weight type's "vec_dot_type" and takes integer dot
products. Q4_0/Q5_0/Q8_0 weights meet Q8_0 activations, Q4_1/Q5_1 meet Q8_1 (both blocks
of 32 int8 with an fp16 scale), F16 weights meet fp16 activations. The KV cache is fp16,
so K and V are rounded when stored, the query is rounded to fp16 for K·Q, and the softmax
weights are rounded to fp16 before they multiply V (flash attention off, as the
attention stop needs).

`llamacpp` numerics apply those roundings to float tensors (fake quantization: the
arithmetic stays torch's), which is what makes greedy tokens agree with llama.cpp's;
`exact` skips them and computes plain float32 from the dequantized weights.
"""

from __future__ import annotations

import torch
from gguf import GGMLQuantizationType as T

NUMERICS = ("llamacpp", "exact")

# The activation format each weight type's dot product uses (ggml-cpu type_traits vec_dot_type).
VEC_DOT_TYPE = {
    T.Q4_0: "q8_0",
    T.Q5_0: "q8_0",
    T.Q8_0: "q8_0",
    T.Q4_1: "q8_1",
    T.Q5_1: "q8_1",
    T.F16: "f16",
}


def quantize_q8(x: torch.Tensor) -> torch.Tensor:
    """Round x to what ggml's quantize_row_q8_0/q8_1 (AVX2) keep: per block of 32 along the
    last axis, d = amax/127 stored as fp16 and q = round-to-nearest-even(x * 127/amax)."""
    shape = x.shape
    blocks = x.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    d = (amax / 127).half().float()
    inv = torch.where(amax > 0, 127 / amax, torch.zeros_like(amax))
    q = torch.round(blocks * inv)
    return (q * d).reshape(shape).to(x.dtype)


def round_f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().to(x.dtype)


def round_activation(x: torch.Tensor, vec_dot_type: str | None) -> torch.Tensor:
    if vec_dot_type in ("q8_0", "q8_1"):
        return quantize_q8(x)
    if vec_dot_type == "f16":
        return round_f16(x)
    return x


class Numerics:
    """The rounding a model applies where llama.cpp would, or none (`exact`)."""

    def __init__(self, mode: str, weight_types: dict[str, T]):
        if mode not in NUMERICS:
            raise ValueError(f"unknown numerics {mode!r} (one of {', '.join(NUMERICS)})")
        self.mode = mode
        on = mode == "llamacpp"
        self.act = {name: VEC_DOT_TYPE.get(t) for name, t in weight_types.items()} if on else {}
        self.kv = round_f16 if on else _identity

    def linear(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        """x @ weight.T, with x rounded to the weight's vec_dot_type first."""
        return round_activation(x, self.act.get(name)) @ weight.T


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x

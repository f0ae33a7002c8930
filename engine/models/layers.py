"""What every architecture's forward shares: the attention mask and the two RoPE layouts.

The numerics (engine/numerics.py) rotate adjacent pairs (x[2i], x[2i+1]), llama.cpp's
"normal" RoPE. NeoX RoPE (Qwen, Gemma) rotates x[i] with x[i + d/2] by the same angle i;
moving each such pair next to each other, rotating, and moving them back is the same
arithmetic on the same numbers, so both layouts share one rotation and its roundings.
"""

from __future__ import annotations

import torch

from engine.numerics import Numerics
from engine.sampler import logits_summary


def rope(num: Numerics, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, neox: bool) -> torch.Tensor:
    """Rotate x [T, n_heads, head_dim] by the angles of cos/sin [T, rope_dim/2]."""
    if not neox:
        return num.rope(x, cos, sin)
    d = cos.shape[-1] * 2
    half = d // 2
    # (x0..x_{h-1}, x_h..x_{d-1}) -> (x0, x_h, x1, x_{h+1}, ...): NeoX pairs made adjacent.
    paired = torch.stack((x[..., :half], x[..., half:d]), dim=-1).flatten(-2)
    out = num.rope(torch.cat((paired, x[..., d:]), dim=-1), cos, sin)
    rot = out[..., :d].unflatten(-1, (half, 2))
    return torch.cat((rot[..., 0], rot[..., 1], out[..., d:]), dim=-1)


def attention_mask(pos: int, n_tokens: int, window: int = 0, device=None) -> torch.Tensor:
    """Additive mask [T, pos + T]: query i (at position pos+i) sees key j when j <= pos+i and,
    for a sliding-window layer, pos+i - j < window (llama.cpp's LLAMA_SWA_TYPE_STANDARD:
    a key `window` or more positions back is masked)."""
    q = torch.arange(pos, pos + n_tokens, device=device)[:, None]
    k = torch.arange(pos + n_tokens, device=device)[None, :]
    visible = k <= q
    if window:
        visible &= q - k < window
    mask = torch.zeros(visible.shape, device=device)
    return mask.masked_fill_(~visible, float("-inf"))


LENS_TOP = 5


def logit_lens(bus, step: int, layer: int, logits: torch.Tensor) -> None:
    """The logit lens: a layer's residual through the final norm and the LM head (`logits`), what
    the model "would say" at this depth. One vocabulary-sized matmul per layer, so it is opt-in
    (`model.lens`); the event carries the top few and the entropy, not the whole vocabulary."""
    bus.emit("logits", step, layer, part="lens", **logits_summary(logits.float(), k=LENS_TOP))

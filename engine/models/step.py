"""Where a forward pass's tokens sit: their positions, RoPE angles and attention mask, and how
their keys and values reach the cache.

Two ways to build them, one forward pass to use them:

* `StepInputs.at(pos, ...)`, the eager step: everything from the host integer `pos`; the mask
  covers the pos + T cached cells and the cache hands back exactly those keys.
* the static decode step (engine/cuda_graph.py): one token whose position is a device tensor,
  the RoPE angles gathered from a table by it, the mask over every cell of the cache, the write
  indexed by it, so no shape depends on the position and a CUDA graph can replay the step
  (gpt-fast's `decode_one_token`). `pos` is then None: nothing on the host knows it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.models.layers import attention_mask


@dataclass
class StepInputs:
    positions: torch.Tensor  # [T] on the device
    cos: torch.Tensor  # [T, rope_dim/2]
    sin: torch.Tensor
    mask: torch.Tensor  # additive, [T, n_keys]
    pos: int | None  # the first position, known to the host (the eager step); None in the static step

    @classmethod
    def at(cls, pos: int, n_tokens: int, rope_cos_sin, device) -> "StepInputs":
        """The eager step's inputs for tokens at pos..pos+n_tokens; `rope_cos_sin(positions)` -> cos, sin."""
        positions = torch.arange(pos, pos + n_tokens, device=device)
        cos, sin = rope_cos_sin(positions)
        # Causal mask over the cells this step can see: query i (at pos+i) sees keys 0..pos+i.
        return cls(positions, cos, sin, attention_mask(pos, n_tokens, device=device), pos)  # mask (T, pos + T)

    def write(self, cache, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v [T, n_kv, hd]; return the keys and values the mask's columns refer to."""
        if self.pos is not None:
            return cache.write(layer, self.pos, k, v)  # (pos + T, nkv, hd)
        return cache.write_static(layer, self.positions, k, v)  # (every cell, nkv, hd)

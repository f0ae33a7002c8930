"""The KV cache: one preallocated K and V buffer per layer, written by position (gpt-fast style).

A token's keys and values go to the cache cell of its position; attention reads cells
[0, pos + T). `slots` returns where each token went, which is what the kv_write stop shows.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, device="cpu", dtype=torch.float32):
        self.n_ctx = n_ctx
        shape = (n_layer, n_ctx, n_head_kv, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.used = 0  # cells holding a token, for the occupancy shown at kv_write

    def write(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [T, n_kv, hd] at positions pos..pos+T and return every cell up to them."""
        end = pos + k.shape[0]
        if end > self.n_ctx:
            raise ValueError(f"context full: {end} tokens do not fit in a context of {self.n_ctx}")
        self.k[layer, pos:end] = k
        self.v[layer, pos:end] = v
        self.used = max(self.used, end)
        return self.k[layer, :end], self.v[layer, :end]

    def slots(self, pos: int, n_tokens: int) -> list[int]:
        return list(range(pos, pos + n_tokens))

    def event(self, layer: int, pos: int, n_tokens: int) -> dict:
        """The kv_write stop's scalars: where this step's tokens went and how full the cache is."""
        return {"slots": self.slots(pos, n_tokens), "used": self.used, "n_ctx": self.n_ctx}

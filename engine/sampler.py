"""Sampling: turn the last position's logits into the next token, every stage observable.

This first chain is greedy (temperature 0), which is what parity with llama.cpp is
measured on. The logits stop carries the top-k and entropy either way, so the logits
view can show what the model considered, not only what it picked.
"""

from __future__ import annotations

import torch

from engine.hooks import HookBus

TOP_K_SHOWN = 10


def logits_summary(logits: torch.Tensor, k: int = TOP_K_SHOWN) -> dict:
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, k)
    entropy = -(probs * torch.log(probs.clamp_min(1e-30))).sum()
    return {
        "top_ids": top.indices.tolist(),
        "top_probs": [round(p, 6) for p in top.values.tolist()],
        "entropy": float(entropy),
    }


def greedy(logits: torch.Tensor, step: int, bus: HookBus) -> int:
    if bus.wants("logits"):
        bus.emit("logits", step, tensors={"logits": logits}, **logits_summary(logits))
    token = int(torch.argmax(logits))
    return token

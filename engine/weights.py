"""Load a model's weights from a GGUF: dequantized once, on the target device, in the target dtype."""

from __future__ import annotations

import numpy as np
import torch

from engine.gguf_file import GGUFFile
from engine.quants import block_layout, dequantize


def load_weights(gguf: GGUFFile, device="cpu", dtype=torch.float32) -> dict[str, torch.Tensor]:
    weights = {}
    for name, info in gguf.tensors.items():
        # A copy: the mmap is read-only and torch wants writable memory; it is dropped once dequantized.
        raw = torch.from_numpy(np.array(gguf.tensor_bytes(name)))
        weights[name] = dequantize(raw.to(device), info.type, info.shape, device=device, dtype=dtype, name=name)
    return weights


def weight_table(gguf: GGUFFile) -> dict[str, dict]:
    """Each weight's quant type and shape, for the trace (stop C18: which tensor is Q4_1, which F32)."""
    table = {}
    for name, info in gguf.tensors.items():
        layout = block_layout(info.type)
        table[name] = {"type": info.type.name, "shape": list(info.shape), "bits_per_weight": layout["bits_per_weight"]}
    return table

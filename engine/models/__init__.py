"""Architectures the torch engine runs, picked by `general.architecture` from the GGUF."""

from __future__ import annotations

from engine.config import UnsupportedModel
from engine.models.deepseek2 import Deepseek2
from engine.models.gemma3 import Gemma3
from engine.models.llama import Llama

# One class per family; GGUF architecture names that share a graph map to the same class
# (qwen2 and qwen3 are llama's graph plus what their files carry: biases, QK-norm).
ARCHITECTURES = {
    "llama": Llama,
    "qwen2": Llama,
    "qwen3": Llama,
    "qwen2moe": Llama,  # qwen2 + experts and a gated shared expert (engine/models/moe.py)
    "qwen3moe": Llama,  # qwen3 + experts
    "gemma3": Gemma3,
    "deepseek2": Deepseek2,
}


def model_class(arch: str):
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModel(f"architecture {arch!r} is not supported by the torch engine (supported: {supported})") from None

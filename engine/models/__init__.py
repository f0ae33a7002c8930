"""Architectures the torch engine runs, picked by `general.architecture` from the GGUF."""

from __future__ import annotations

from engine.config import UnsupportedModel
from engine.models.llama import Llama

# One class per architecture; aliases map GGUF names that share a graph.
ARCHITECTURES = {
    "llama": Llama,
}


def model_class(arch: str):
    try:
        return ARCHITECTURES[arch]
    except KeyError:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UnsupportedModel(f"architecture {arch!r} is not supported by the torch engine (supported: {supported})") from None

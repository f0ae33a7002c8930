"""YaRN RoPE scaling for the llama family (llama, qwen2, qwen3, qwen2moe, qwen3moe): tiny GGUFs
that declare `rope.scaling.type` yarn, run by the torch engine and by llama.cpp.

The files are the tiny models of tests/tiny_models.py and tests/tiny_moe.py stretched 4× past 16 original positions,
so every prompt position past the 16th lands on interpolated angles. llama.cpp is the ground
truth: the same greedy tokens, logits at cosine >= 0.999, and the rotated q and k (the rope
event, both engines) bit-identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

from engine.config import ModelArgs
from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.llamacpp_reference import cosine, greedy_reference
from engine.torch_engine import TorchEngine
from tests.tiny_models import write_tiny_llama
from tests.tiny_moe import write_tiny_moe
from traces.live import MemoryTrace

pytest.importorskip("llama_cpp")

PROMPT = "hello the llama, hello the llama, hello the llama"
N_STEPS = 12
FACTOR, N_CTX_ORIG = 4.0, 16
ARCHS = ["llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe"]


def write_tiny_yarn(path: Path, arch: str = "llama", factor: float = FACTOR, n_ctx_orig: int = N_CTX_ORIG,
                    **keys: float) -> Path:
    """write_tiny_llama's (or, for qwen2moe / qwen3moe, write_tiny_moe's) model of `arch`,
    declaring YaRN: rope.scaling.type yarn, `factor`, original_context_length `n_ctx_orig`, and
    any other `rope.scaling.<key>` given as a float (attn_factor, yarn_log_multiplier,
    yarn_beta_fast, ...). The weights are the unscaled file's, written beside it."""
    plain = path.with_name(path.stem + ".plain.gguf")
    if arch in ("qwen2moe", "qwen3moe"):
        write_tiny_moe(plain, kind=arch)
    else:
        write_tiny_llama(plain, arch=arch)
    f32, u32 = GGUFValueType.FLOAT32, GGUFValueType.UINT32
    meta = {f"{arch}.rope.scaling.type": MetadataDetails(GGUFValueType.STRING, "yarn"),
            f"{arch}.rope.scaling.factor": MetadataDetails(f32, float(factor)),
            f"{arch}.rope.scaling.original_context_length": MetadataDetails(u32, int(n_ctx_orig))}
    meta.update({f"{arch}.rope.scaling.{key}": MetadataDetails(f32, float(v)) for key, v in keys.items()})
    writer = GGUFWriter(str(path), arch=arch)
    copy_with_new_metadata(GGUFReader(str(plain)), writer, meta, [])
    return path


def ours(path: str, n: int = N_STEPS, stops=("tokenize", "logits")) -> tuple[list[int], MemoryTrace]:
    bus = HookBus()
    engine = TorchEngine(path, bus=bus, background_load=False)
    bus.set_filter(lambda stop, layer: stop in stops)
    trace = MemoryTrace(engine.info(PROMPT, n))
    bus.add(trace)
    tokens = [r.token for r in engine.generate(PROMPT, n)]
    trace.finish()
    return tokens, trace


def logits(trace: MemoryTrace, n: int) -> list[np.ndarray]:
    return [trace.get(s, "logits").tensors["logits"] for s in range(n)]


@pytest.mark.parametrize("arch", ARCHS)
def test_yarn_matches_llama_cpp(tmp_path, arch):
    """Greedy tokens identical, logits at cosine >= 0.999 at every step (measured: qwen2/qwen3
    within 1e-6; llama within 1e-6 but one step, 0.025 apart at cosine 0.99995, where a 1-ulp
    softmax difference, there without YaRN too, flips a Q8_0 activation rounding), and YaRN
    really in play: the unscaled file's logits are far from these."""
    path = str(write_tiny_yarn(tmp_path / "yarn.gguf", arch))
    ref = greedy_reference(path, PROMPT, N_STEPS)
    assert len(ref.prompt_ids) > N_CTX_ORIG  # the prompt runs past the original context
    tokens, trace = ours(path)
    assert trace.info["model"]["rope_scaling"]["factor"] == FACTOR
    assert tokens == ref.tokens
    cosines = [cosine(a, b) for a, b in zip(logits(trace, len(tokens)), ref.logits)]
    assert min(cosines) >= 0.999, cosines
    _, unscaled = ours(str(tmp_path / "yarn.plain.gguf"), 1)
    assert np.abs(logits(unscaled, 1)[0] - ref.logits[0]).max() > 0.1


def test_rotated_q_and_k_are_llama_cpps(tmp_path):
    """The rope event of both engines on a YaRN llama: q and k bit-identical at every step and
    layer (the Qcur-N / Kcur-N ROPE nodes), positions past the original context included."""
    from engine.llamacpp_engine import LlamaCppEngine

    path = str(write_tiny_yarn(tmp_path / "yarn.gguf", "llama"))
    _, a = ours(path, 3, stops=("tokenize", "batch", "rope", "logits"))
    engine = LlamaCppEngine(path, bus=HookBus(), threads=2)
    try:
        engine.bus.set_filter(lambda stop, layer: stop in ("tokenize", "batch", "rope", "logits"))
        b = MemoryTrace(engine.info(PROMPT, 3))
        engine.bus.add(b)
        for _ in engine.generate(PROMPT, 3):
            pass
        b.finish()
    finally:
        engine.close()
    for step in range(3):
        for layer in (0, 1):
            x, y = a.get(step, "rope", layer), b.get(step, "rope", layer)
            assert x.scalars["positions"] == y.scalars["positions"]
            for name in ("q", "k"):
                np.testing.assert_array_equal(x.tensors[name], y.tensors[name], err_msg=f"{step} {layer} {name}")


def test_attn_factor_scales_like_llama_cpp(tmp_path):
    """rope.scaling.attn_factor multiplies YaRN's magnitude (llama.cpp's rope_attn_factor): with
    1.3 the logits move (by ~0.9 on this model) and still match llama.cpp's."""
    path = str(write_tiny_yarn(tmp_path / "yarn.gguf", "llama", attn_factor=1.3))
    ref = greedy_reference(path, PROMPT, 4)
    tokens, trace = ours(path, 4)
    assert tokens == ref.tokens
    assert min(cosine(a, b) for a, b in zip(logits(trace, 4), ref.logits)) >= 0.999
    assert ModelArgs.from_metadata(GGUFFile(path).metadata).yarn.magnitude() == pytest.approx(1.3 * (1 + 0.1 * np.log(4)))


@pytest.mark.parametrize("key, value", [("yarn_log_multiplier", 0.1), ("yarn_beta_fast", 8.0),
                                        ("yarn_ext_factor", 0.5), ("yarn_attn_factor", 0.8)])
def test_keys_llama_cpp_does_not_read_change_nothing(tmp_path, key, value):
    """llama.cpp's llama loader reads none of these keys, so they leave its logits as they are;
    ours stay on them too (a multiplier read as deepseek2's would put them far apart)."""
    plain = str(write_tiny_yarn(tmp_path / "plain.gguf", "llama"))
    keyed = str(write_tiny_yarn(tmp_path / "keyed.gguf", "llama", **{key: value}))
    theirs = greedy_reference(keyed, PROMPT, 1).logits[0]
    np.testing.assert_array_equal(theirs, greedy_reference(plain, PROMPT, 1).logits[0])
    _, trace = ours(keyed, 1)
    assert cosine(logits(trace, 1)[0], theirs) >= 0.999
    y = ModelArgs.from_metadata(GGUFFile(keyed).metadata).yarn
    assert (y.log_mul, y.beta_fast, y.beta_slow, y.ext_factor) == (0.0, 32.0, 1.0, 1.0)

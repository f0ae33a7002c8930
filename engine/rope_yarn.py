"""YaRN RoPE scaling (Peng et al., 2023), as llama.cpp runs it: what a GGUF's `rope.scaling.*`
keys mean, and the cos/sin a model rotates its queries and keys by.

Plain RoPE turns pair i of a head by pos * theta_i, theta_i = base^(-2i/d). A model trained on
n_ctx_orig positions and stretched F times (`rope.scaling.factor`) needs its slow pairs slowed
down F times (interpolated), or positions past n_ctx_orig land on angles it never saw. YaRN
sorts the pairs by how many turns they make over n_ctx_orig positions:

    pair i:  0 .. low        low .. high             high .. d/2
             fast: > beta_fast turns,   a linear ramp        slow: < beta_slow turns,
             kept (extrapolated)        between the two      divided by F (interpolated)

and scales cos/sin by mscale = attn_factor * (1 + 0.1 ln F), which sharpens attention a little
to make up for the softer scores of interpolated pairs. The pieces, from ggml (ggml.c,
ggml-cpu/ops.cpp) and llama.cpp (llama-context.cpp, models/deepseek2.cpp):

* ggml_rope_yarn_corr_dims: low/high = floor/ceil of d * ln(n_ctx_orig / (beta * 2 pi)) / (2 ln base),
  clamped to [0, d - 1]; rope_yarn_ramp: 1 - clamp((i - low) / max(0.001, high - low), 0, 1).
* rope_yarn: theta = theta_interp * (1 - ramp) + theta_extrap * ramp (ramp times ext_factor),
  then cos/sin times attn_factor * (1 + 0.1 ln(1/freq_scale)).
* llama_context picks the attn_factor handed to ggml: get_mscale(F, 1) (or, with DeepSeek's
  `yarn_log_multiplier`, a ratio that is exactly 1 for deepseek2), divided by the very
  (1 + 0.1 ln F) ggml multiplies back in, times the file's `rope.scaling.attn_factor`.
  For a DeepSeek file the rotated k_pe / q_pe therefore keep their length.
* deepseek2 moves the magnitude into the softmax instead: kq_scale = mscale^2 / sqrt(k_head),
  mscale = attn_factor * (1 + 0.1 ln F) * (1 + 0.1 L ln F), L = `yarn_log_multiplier` / 0.1
  (the converter stores 0.1 * DeepSeek's mscale_all_dim; llama.cpp's loader divides it back).
* the llama family (llama, qwen2, qwen3 and their MoE forms) rotates q and k by the same cos/sin,
  magnitude included (1 + 0.1 ln F, times `rope.scaling.attn_factor`), with the plain
  1/sqrt(head_dim) softmax scale: mscale^2 lands in the scores through q and k.

Everything in float32, as the C code computes it, with logf/cosf/sinf from the C library
(`ggml=True`, the `llamacpp` numerics); `ggml=False` is the same formula in float64.
The keys are read as llama-cpp-python 0.3.36's loaders read them: `factor`,
`original_context_length` and `attn_factor` for every architecture, `yarn_log_multiplier` for
deepseek2 only; none of these loaders reads `yarn_beta_fast` / `yarn_beta_slow` /
`yarn_ext_factor` / `yarn_attn_factor`, so those are ggml's defaults, 32, 1, 1 (and the
computed attn_factor) whatever the file says (DeepSeek-V2/V3 ship the defaults anyway).
tests/test_llama_yarn.py holds the llama family to llama.cpp, ignored keys included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.numerics import _libm_cos_sin

f32 = np.float32


def _logf():
    """The C library's logf (llama.cpp's), or numpy's float32 log without one."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        lib.logf.argtypes, lib.logf.restype = [ctypes.c_float], ctypes.c_float
        return lambda x: f32(lib.logf(float(x)))
    except OSError:
        return lambda x: np.log(f32(x))


logf = _logf()


@dataclass(frozen=True)
class Yarn:
    """A file's YaRN settings, as llama.cpp's loader and context read them."""

    factor: float  # rope.scaling.factor: F, the context stretch (freq_scale = 1/F)
    n_ctx_orig: int  # rope.scaling.original_context_length (else the context_length)
    log_mul: float = 0.0  # DeepSeek's mscale_all_dim: rope.scaling.yarn_log_multiplier / 0.1
    attn_factor_file: float = 1.0  # rope.scaling.attn_factor (llama.cpp's hparams.rope_attn_factor)
    beta_fast: float = 32.0  # pairs turning more than this often over n_ctx_orig are kept
    beta_slow: float = 1.0  # pairs turning less than this often are interpolated
    ext_factor: float = 1.0  # how much of the ramp's extrapolation is mixed in
    arch: str = ""

    @classmethod
    def from_metadata(cls, md: dict, arch: str, n_ctx_train: int) -> "Yarn":
        def get(key, default):
            value = md.get(f"{arch}.rope.scaling.{key}")
            return default if value is None else value

        # llama.cpp's deepseek2 loader reads the multiplier (and divides it by 0.1); its llama and
        # qwen loaders read no such key, so there a file's multiplier changes nothing.
        log_mul = float(f32(get("yarn_log_multiplier", 0.0)) / f32(0.1)) if arch == "deepseek2" else 0.0
        return cls(factor=float(get("factor", 1.0)), n_ctx_orig=int(get("original_context_length", 0) or n_ctx_train),
                   log_mul=log_mul, attn_factor_file=float(get("attn_factor", 1.0)), arch=arch)

    @property
    def freq_scale(self) -> np.float32:
        return f32(1.0) / f32(self.factor)  # llama.cpp's rope_freq_scale_train

    def attn_factor(self) -> np.float32:
        """What llama_context hands ggml_rope_ext as attn_factor (cparams.yarn_attn_factor)."""
        factor = f32(1.0) / self.freq_scale

        def get_mscale(scale, mscale):
            return f32(1.0) if scale <= 1 else f32(0.1) * f32(mscale) * logf(scale) + f32(1.0)

        if self.ext_factor == 0:
            return f32(self.attn_factor_file)
        if self.log_mul != 0:
            # DeepSeek-V2's config has mscale == mscale_all_dim (0.707): llama.cpp special-cases deepseek2.
            mscale = self.log_mul if self.arch == "deepseek2" and f32(self.log_mul) != 1 else 1.0
            attn = get_mscale(factor, mscale) / get_mscale(factor, self.log_mul)
        else:
            attn = get_mscale(factor, 1.0)
        attn = attn * (f32(1.0) / (f32(1.0) + f32(0.1) * logf(factor)))  # cancels ggml's own magnitude below
        return attn * f32(self.attn_factor_file)

    def magnitude(self) -> np.float32:
        """What cos and sin end up multiplied by: attn_factor times rope_yarn's 1 + 0.1 ln(1/freq_scale)."""
        if self.ext_factor == 0:
            return self.attn_factor()
        return self.attn_factor() * (f32(1.0) + f32(0.1) * logf(f32(1.0) / self.freq_scale))

    def deepseek2_kq_scale(self, k_head: int) -> float:
        """deepseek2's softmax scale with YaRN: mscale^2 / sqrt(k_head) (models/deepseek2.cpp)."""
        ln = logf(f32(1.0) / self.freq_scale)
        attn_factor_org = self.attn_factor() * (f32(1.0) + f32(0.1) * ln)
        mscale = attn_factor_org * (f32(1.0) + f32(0.1) * f32(self.log_mul) * ln)
        return float(f32(1.0) * mscale * mscale / np.sqrt(f32(k_head)))

    def describe(self, n_dims: int, base: float) -> dict:
        """The trace info's `rope_scaling`: the settings, and what they make of each of the n_dims/2
        RoPE pairs: `ramp` (1 kept as trained, 0 slowed down `factor` times, between: mixed) and
        `inv_freq`, the angle pair i turns by per position, in radians (plain RoPE's
        base^(-2i/n_dims), YaRN-scaled): what a view draws the angles from, with no engine at hand."""
        low, high = corr_dims(n_dims, self.n_ctx_orig, base, self.beta_fast, self.beta_slow)
        r = ramp(n_dims, low, high, ggml=False)
        mix = r * self.ext_factor  # how much of each pair's trained frequency is kept
        inv_freq = float(base) ** (-np.arange(0, n_dims, 2) / n_dims) * (mix + (1 - mix) / self.factor)
        return {"type": "yarn", "factor": self.factor, "n_ctx_orig": self.n_ctx_orig, "log_mul": self.log_mul,
                "beta_fast": self.beta_fast, "beta_slow": self.beta_slow, "ext_factor": self.ext_factor,
                "attn_factor": self.attn_factor_file, "magnitude": float(self.magnitude()),
                "ramp": [float(v) for v in r],
                "inv_freq": [float(v) for v in inv_freq]}


def corr_dims(n_dims: int, n_ctx_orig: int, base: float, beta_fast: float, beta_slow: float) -> tuple[float, float]:
    """The ramp's ends (ggml_rope_yarn_corr_dims): the pair index where the pairs turn beta_fast
    times, then beta_slow times, over n_ctx_orig positions, floored/ceiled and clamped."""
    def dim(n_rot):  # pair i makes n_ctx_orig * theta_i / (2 pi) turns; solve for i, times 2
        return f32(n_dims) * logf(f32(n_ctx_orig) / (f32(n_rot) * f32(2) * f32(math.pi))) / (f32(2) * logf(f32(base)))

    return float(max(0, math.floor(dim(beta_fast)))), float(min(n_dims - 1, math.ceil(dim(beta_slow))))


def ramp(n_dims: int, low: float, high: float, ggml: bool = True) -> np.ndarray:
    """rope_yarn_ramp for each pair [n_dims/2]: 1 for the fast pairs (kept), 0 for the slow ones."""
    dt = f32 if ggml else np.float64
    i = np.arange(n_dims // 2, dtype=dt)  # ggml's i0 / 2, an integer turned float
    y = (i - dt(low)) / dt(max(f32(0.001), f32(high) - f32(low)))
    return dt(1) - np.minimum(dt(1), np.maximum(dt(0), y))


def yarn_cos_sin(positions: torch.Tensor, n_dims: int, base: float, yarn: Yarn,
                 ggml: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [T, n_dims/2] of each (position, pair) YaRN angle, magnitude included, for
    Numerics.rope / models.layers.rope to rotate by."""
    low, high = corr_dims(n_dims, yarn.n_ctx_orig, base, yarn.beta_fast, yarn.beta_slow)
    pos = positions.cpu().numpy()
    n = n_dims // 2
    if not ggml:
        theta = pos[:, None].astype(np.float64) * float(base) ** (-np.arange(0, n_dims, 2) / n_dims)
        mix = ramp(n_dims, low, high, ggml=False) * yarn.ext_factor
        theta = theta * (1.0 / yarn.factor) * (1 - mix) + theta * mix
        m = float(yarn.magnitude())
        return (torch.from_numpy(np.cos(theta) * m).to(positions.device),
                torch.from_numpy(np.sin(theta) * m).to(positions.device))
    # ggml_rope_cache_init: theta_extrap = (float)pos, times theta_scale once per pair, in float32.
    scale = f32(math.pow(f32(base), f32(-2.0) / f32(n_dims)))
    extrap = np.empty((len(pos), n), dtype=f32)
    extrap[:, 0] = pos.astype(f32)
    for i in range(1, n):  # over the n_dims/2 pairs
        extrap[:, i] = extrap[:, i - 1] * scale
    interp = yarn.freq_scale * extrap
    mix = ramp(n_dims, low, high) * f32(yarn.ext_factor)
    # theta_interp * (1 - mix) + theta_extrap * mix; the C compiler contracts the first product
    # and the sum into one fma (ggml-cpu is built with FMA), the product is exact in double.
    theta = ((interp.astype(np.float64) * (f32(1) - mix)) + (extrap * mix).astype(np.float64)).astype(f32)
    cos, sin = _libm_cos_sin(theta)
    m = yarn.magnitude()
    return torch.from_numpy(cos * m).to(positions.device), torch.from_numpy(sin * m).to(positions.device)


def cos_sin(num, positions: torch.Tensor, n_dims: int, base: float, yarn: Yarn | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's RoPE cos/sin [T, n_dims/2]: YaRN's where the file declares it, plain RoPE's
    (Numerics.rope_cos_sin) otherwise, in the numerics' precision (`num.on`: ggml's float32)."""
    if yarn is None:
        return num.rope_cos_sin(positions, n_dims, base)
    return yarn_cos_sin(positions, n_dims, base, yarn, ggml=num.on)

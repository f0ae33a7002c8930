"""ggml's quantized matmuls on the CPU (AVX2), bit for bit: integer dot products per block,
then float32 scales and accumulators rounded where ggml rounds them.

engine/numerics.py explains why the order matters; this file holds the kernels it calls for
weights it has the raw blocks of. Every kernel has the same shape:

1. the activations are quantized the way ggml quantizes them (Q8_0 per 32, Q8_K per 256);
2. the integer part of each partial sum is computed with a float matmul whose values are
   small integers, so it is exact (float32 below 2^24, float64 where sums can pass that);
3. the float part is replayed in ggml's order: each fma is an exact product in float64 plus
   the float32 accumulator, rounded to float32 (`fma_chain`), and the 8 lanes are summed
   with `hsum8`.

What each kernel reproduces (ggml-cpu, read for this build: AVX2/F16C/FMA, REPACK on):

* Q4_0/Q5_0/Q8_0 x Q8_0: ggml_vec_dot_q*_0_q8_0, and llamafile's tinyBLAS_Q0_AVX for batches
  (the same arithmetic): lane l of block b holds the integer sum of the 4 products 4l..4l+3;
  acc_l = fma(d_w*d_x, lane, acc_l) block after block; result = hsum_float_8(acc).
  d_w*d_x is exact: two fp16 values.
* Q6_K x Q8_K: ggml_vec_dot_q6_K_q8_K. Per super-block, lane l holds
  sum over the eight 32-element chunks c of sc*q*x at positions 32c+4l..32c+4l+3 (q unsigned,
  0..63), minus 32 * (sc*bsum of sub-blocks 2l and 2l+1) (the -32 offset, taken from Q8_K's
  bsums); acc_l = fma(fl(d_x*d_w), float(lane), acc_l); result = hsum_float_8(acc).
* Q4_K x Q8_K: weights with a multiple of 8 rows are repacked at load (CPU_REPACK, Q4_Kx8) and
  go through ggml_gemv/gemm_q4_K_8x8_q8_K: one accumulator per output, no lanes. Per
  super-block: iacc = sum of sc*q*x over all 256 elements, imin = sum of min*bsum over the
  8 sub-blocks; acc = fma(float(iacc), fl(d_w*d_x), acc), acc_min = fma(float(imin),
  fl(dmin_w*d_x), acc_min); result = acc - acc_min.
* Q8_K (quantize_row_q8_K_ref; the batched ggml_quantize_mat_q8_K_4x8 agrees up to a sign
  that cancels): per 256, max = the first element of largest |x| (signed), iscale = -127.f/max,
  q = round-half-even(fl(iscale*x)) (no FMA: ggml-base is built without it), d = 1.f/iscale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from engine.quants import BIT_PAIRS, BITS, NIBBLES, QK_K, _f16, _k_scale_min, _unpack

# Weight types whose integer form we hold, and the matmul kernel each one takes.
KERNELS = {T.Q4_0: "q0", T.Q5_0: "q0", T.Q8_0: "q0", T.Q6_K: "q6_K", T.Q4_K: "q4_K"}

_C127 = torch.tensor(127.0, dtype=torch.float32)
_CM127 = torch.tensor(-127.0, dtype=torch.float32)
_ONE = torch.tensor(1.0, dtype=torch.float32)

# Elements of one output computed per pass: bounds the float64 partial sums (~64 MiB).
_BUDGET = 1 << 23


# --- float32 arithmetic in ggml's order ---------------------------------------------


def hsum8(v: torch.Tensor) -> torch.Tensor:
    """hsum_float_8: the sum of 8 float lanes [..., 8] in the order the AVX2 shuffles add them."""
    r = v[..., 4:] + v[..., :4]
    return (r[..., 0] + r[..., 2]) + (r[..., 1] + r[..., 3])


def fma_chain(terms: torch.Tensor) -> torch.Tensor:
    """acc = fma(a_b, c_b, acc) for b = 0, 1, ... along axis 0, acc starting at 0: `terms`
    holds the exact products a_b*c_b in float64; each step adds one in float64 and rounds the
    sum to float32 (one rounding, as the fma does, unless the float64 sum itself had to round
    and landed on a float32 tie: far below anything seen). numpy, because this loop is all
    per-op overhead."""
    t = terms.numpy()
    acc = t[0].astype(np.float32)
    tmp = np.empty(acc.shape, dtype=np.float64)
    for b in range(1, t.shape[0]):
        np.add(acc, t[b], out=tmp)
        acc[...] = tmp
    return torch.from_numpy(acc)


# --- activations ----------------------------------------------------------------------


def quantize_q8_0(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_row_q8_0 (AVX2) per 32 along the last axis of x [n, k]: the integer quants as
    float32 [n, k/32, 32] and the fp16 scale d as float32 [n, k/32]."""
    blocks = x.float().reshape(x.shape[0], -1, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    # id = 127.f/amax, one division (torch's `127 / t` would be reciprocal(t) * 127).
    inv = torch.where(amax > 0, torch.div(_C127, amax), torch.zeros_like(amax))
    q = torch.round(blocks * inv)  # _mm256_round_ps(_MM_ROUND_NEAREST): half to even
    return q, (amax / 127).half().float()[..., 0]


def quantize_q8_K(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_row_q8_K per 256 along the last axis of x [n, k]: the integer quants as float32
    [n, k/256, 256] and the float32 scale d [n, k/256] (Q8_K keeps d in float32, not fp16)."""
    blocks = x.float().reshape(x.shape[0], -1, QK_K)
    i = blocks.abs().argmax(dim=-1, keepdim=True)  # the first of the largest |x|
    vmax = blocks.gather(-1, i)
    nz = vmax != 0
    iscale = torch.where(nz, torch.div(_CM127, torch.where(nz, vmax, _ONE)), torch.zeros_like(vmax))
    q = torch.round(blocks * iscale).clamp_(max=127)  # fl(iscale*x), then nearest_int (half to even)
    d = torch.where(nz, torch.div(_ONE, torch.where(nz, iscale, _ONE)), torch.zeros_like(iscale))
    return q, d[..., 0]


def fake_quantize_q8_K(x: torch.Tensor) -> torch.Tensor:
    """x rounded to what Q8_K keeps, q*d, in x's shape (for the vectorized modes)."""
    q, d = quantize_q8_K(x.reshape(-1, x.shape[-1]))
    return (q * d[..., None]).reshape(x.shape).to(x.dtype)


# --- weights in integer form ---------------------------------------------------------


@dataclass
class IntWeight:
    """A quantized weight [n_out, n_in] as the tensors its kernel multiplies (see `load`)."""

    qtype: T
    n_out: int
    n_in: int
    parts: dict[str, torch.Tensor]


def _blocks(raw, qtype: T, n_out: int, n_in: int) -> torch.Tensor:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    a = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    if a.size != n_out * n_in // block * size:
        raise ValueError(f"{qtype.name} weight [{n_out}, {n_in}] needs {n_out * n_in // block * size} bytes, got {a.size}")
    return torch.from_numpy(a.copy()).reshape(n_out * n_in // block, size)


def load(raw, qtype: T, n_out: int, n_in: int) -> IntWeight:
    """Raw GGUF blocks of a [n_out, n_in] weight -> its integer form, laid out for its kernel."""
    b = _blocks(raw, qtype, n_out, n_in)
    if qtype in (T.Q4_0, T.Q5_0, T.Q8_0):
        d = _f16(b[:, :2])[:, 0]
        if qtype == T.Q8_0:
            q = b[:, 2:].view(torch.int8).to(torch.float32)
        elif qtype == T.Q5_0:
            q = (_unpack(b[:, 6:], 16, NIBBLES, 0x0F) | (_unpack(b[:, 2:6], 1, BITS, 1) << 4)).to(torch.float32) - 16
        else:
            q = _unpack(b[:, 2:], 16, NIBBLES, 0x0F).to(torch.float32) - 8
        nb = n_in // 32
        # [nb*8, 4, n_out]: lane l of block b multiplies elements 4l..4l+3.
        lanes = q.reshape(n_out, nb * 8, 4).permute(1, 2, 0).contiguous()
        return IntWeight(qtype, n_out, n_in, {"q": lanes, "d": d.reshape(n_out, nb).t().contiguous()})
    nsb = n_in // QK_K
    if qtype == T.Q4_K:
        d, dmin = _f16(b[:, :2])[:, 0], _f16(b[:, 2:4])[:, 0]
        sc, mn = _k_scale_min(b[:, 4:16])  # [n*nsb, 8] each
        q = _unpack(b[:, 16:], 32, NIBBLES, 0x0F).reshape(-1, 8, 32).to(torch.float64)
        w = (q * sc.double()[..., None]).reshape(n_out, nsb, QK_K)  # sc*q, integers <= 945
        return IntWeight(qtype, n_out, n_in, {
            "w": w.permute(1, 2, 0).contiguous(),  # [nsb, 256, n_out]
            "mins": mn.double().reshape(n_out, nsb, 8).permute(1, 2, 0).contiguous(),  # [nsb, 8, n_out]
            "d": d.reshape(n_out, nsb).t().contiguous(),  # [nsb, n_out]
            "dmin": dmin.reshape(n_out, nsb).t().contiguous(),
        })
    if qtype == T.Q6_K:
        sc = b[:, 192:208].view(torch.int8).to(torch.float64)  # [n*nsb, 16], one per 16 elements
        d = _f16(b[:, 208:210])[:, 0]
        q = (_unpack(b[:, :128], 64, NIBBLES, 0x0F) | (_unpack(b[:, 128:192], 32, BIT_PAIRS, 3) << 4)).to(torch.float64)
        sc_e = sc.repeat_interleave(16, dim=1)  # [n*nsb, 256]
        wa = (q * sc_e).reshape(n_out, nsb, 8, 8, 4)  # (o, sb, chunk c, lane l, k): element 32c+4l+k
        wa = wa.permute(1, 3, 2, 4, 0).reshape(nsb * 8, 32, n_out)  # per (sb, l): the 32 elements of lane l
        wb = (-32 * sc_e).reshape(n_out, nsb, 8, 32).permute(1, 2, 3, 0).reshape(nsb * 8, 32, n_out)
        return IntWeight(qtype, n_out, n_in, {
            "w": torch.cat((wa, wb), dim=1).contiguous(),  # [nsb*8, 64, n_out]
            "d": d.reshape(n_out, nsb).t().contiguous(),  # [nsb, n_out]
        })
    raise ValueError(f"no integer kernel for {qtype.name}")


# --- the matmuls -----------------------------------------------------------------------


def matmul(x: torch.Tensor, w: IntWeight, xq=None) -> torch.Tensor:
    """x [n, n_in] (float32) @ w.T as ggml computes it -> [n, n_out]. `xq` is x's quantization
    when the caller has it already (q, k, v share one input)."""
    kernel = KERNELS[w.qtype]
    if xq is None:
        xq = (quantize_q8_0 if kernel == "q0" else quantize_q8_K)(x)
    n = x.shape[0]
    out = torch.empty(n, w.n_out, dtype=torch.float32)
    per_col = {"q0": 8, "q6_K": 8, "q4_K": 2}[kernel] * (w.n_in // (32 if kernel == "q0" else QK_K)) * n
    cols = max(8, _BUDGET // max(1, per_col))
    for c0 in range(0, w.n_out, cols):
        c1 = min(w.n_out, c0 + cols)
        out[:, c0:c1] = _KERNELS[kernel](xq, w, c0, c1)
    return out


def _q0(xq, w: IntWeight, c0: int, c1: int) -> torch.Tensor:
    q, dx = xq  # [n, nb, 32], [n, nb]
    n, nb = dx.shape
    xl = q.reshape(n, nb * 8, 4).transpose(0, 1)  # [nb*8, n, 4]
    lanes = torch.bmm(xl, w.parts["q"][:, :, c0:c1])  # integer sums of 4 products: exact
    dd = w.parts["d"][:, None, c0:c1] * dx.t()[:, :, None]  # [nb, n, m]: fp16*fp16, exact
    terms = lanes.view(nb, 8, n, c1 - c0).double().mul_(dd.double()[:, None])
    return hsum8(fma_chain(terms).movedim(0, -1))


def _q6_K(xq, w: IntWeight, c0: int, c1: int) -> torch.Tensor:
    q, dx = xq  # [n, nsb, 256], [n, nsb]
    n, nsb = dx.shape
    qd = q.double().reshape(n, nsb, 8, 8, 4)  # (row, sb, chunk, lane, k)
    xa = qd.permute(1, 3, 0, 2, 4).reshape(nsb * 8, n, 32)
    xb = q.double().reshape(n, nsb, 8, 32).permute(1, 2, 0, 3).reshape(nsb * 8, n, 32)
    lanes = torch.bmm(torch.cat((xa, xb), dim=-1), w.parts["w"][:, :, c0:c1])  # exact in float64
    lanes = lanes.float().double()  # _mm256_cvtepi32_ps: rounds past 2^24
    d = (dx.t()[:, :, None] * w.parts["d"][:, None, c0:c1]).double()  # fl(d_x * d_w): [nsb, n, m]
    terms = lanes.view(nsb, 8, n, c1 - c0).mul_(d[:, None])
    return hsum8(fma_chain(terms).movedim(0, -1))


def _q4_K(xq, w: IntWeight, c0: int, c1: int) -> torch.Tensor:
    q, dx = xq
    n = dx.shape[0]
    n4 = n - n % 4  # ggml_gemm takes the rows four at a time, ggml_gemv the rest
    parts = [_q4_K_rows(q[:n4], dx[:n4], w, c0, c1, 64)] if n4 else []
    if n4 < n:
        parts.append(_q4_K_rows(q[n4:], dx[n4:], w, c0, c1, QK_K))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _q4_K_rows(q, dx, w: IntWeight, c0: int, c1: int, step: int) -> torch.Tensor:
    """The repacked Q4_K kernels: gemv rounds into its accumulators once per super-block
    (step 256), gemm once per pair of sub-blocks (step 64)."""
    n, nsb = dx.shape
    per = QK_K // step
    wi = w.parts["w"][:, :, c0:c1].reshape(nsb * per, step, c1 - c0)  # [nsb*per, step, m]
    mins = w.parts["mins"][:, :, c0:c1].reshape(nsb * per, 8 // per, c1 - c0)
    qd = q.double().reshape(n, nsb * per, step).transpose(0, 1)  # [nsb*per, n, step]
    iacc = torch.bmm(qd, wi).float().double()  # exact integers, then _mm256_cvtepi32_ps
    bsum = qd.reshape(nsb * per, n, 8 // per, 32).sum(-1)  # Q8_K's bsums, per 32
    imin = torch.bmm(bsum, mins).float().double()
    dxt = dx.t()[:, :, None]
    scale = (w.parts["d"][:, None, c0:c1] * dxt).repeat_interleave(per, dim=0).double()  # fl(d_w*d_x)
    smin = (w.parts["dmin"][:, None, c0:c1] * dxt).repeat_interleave(per, dim=0).double()
    return fma_chain(iacc * scale) - fma_chain(imin * smin)

_KERNELS = {"q0": _q0, "q6_K": _q6_K, "q4_K": _q4_K}

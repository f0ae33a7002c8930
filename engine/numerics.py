"""llama.cpp's CPU numerics, reproduced so our numbers can be compared with its numbers.

Three modes:

* `exact`: plain float32 from the dequantized weights.
* `llamacpp` (the default): what ggml's CPU backend computes, bit for bit: every rounding it
  performs (listed below) and the order in which it sums float partial results. Every node
  of llama.cpp's graph up to the final norm comes out bit-identical (checked node by node
  through its eval callback, engine/llamacpp_graph.py), so the logits agree to ~3e-5 (the
  output matmul is the one left vectorized: nothing downstream of the logits rounds) and
  greedy tokens agree step for step (bench/parity.py). The summation order needs a loop over
  the blocks of 32 of each Q4_1 matmul and over the chunks of the attention dot products;
  on 2 cores SmolLM2-135M decodes at ~4.5-6 tok/s this way (fp32 `exact`: ~14-17), and a
  prompt goes at about the same rate per token (ggml, too, runs Q4_1 rows one vec_dot at a
  time; here that means elementwise work instead of a BLAS matmul: a 400-token prompt takes
  ~1.5 min). It keeps a second float32 copy of each Q4_1 weight (block mins subtracted).
  The bit-exact kernels apply to float32 on the CPU: Q4_1 x Q8_1 from the dequantized weight,
  and Q4_0/Q5_0/Q8_0 x Q8_0 and Q4_K/Q6_K x Q8_K from the weight's integer quants when the
  Numerics is given `blocks` (the raw GGUF bytes; engine/numerics_quant.py). Anything else
  (other weight types, no `blocks`, bf16, a GPU) gets the `llamacpp-fast` computation.
* `llamacpp-fast`: every rounding, vectorized, but torch's summation order: each op lands
  within ~1e-7 relative of llama.cpp's (~9.8 tok/s). That is not enough to follow
  llama.cpp's greedy path: see the last paragraph.

What ggml does on an AVX2/F16C/FMA CPU, read from ggml-cpu (ggml-cpu.c, arch/x86/quants.c,
vec.h/vec.cpp, ops.cpp, llamafile/sgemm.cpp) and checked tensor by tensor:

* Quantized matmuls never see float activations: ggml first quantizes them to the weight
  type's `vec_dot_type` and takes integer dot products per block of 32. Q4_0/Q5_0/Q8_0
  weights meet Q8_0 activations, Q4_1/Q5_1 meet Q8_1. Both keep d = amax/127 as fp16 and
  q = round-half-even(x * id), id = 127.f/amax divided once (quantize_row_q8_0/q8_1).
* Q8_1 carries a second number per block, s = fp16(d * sum(q)) with d the *fp32* scale, and
  vec_dot_q4_1_q8_1 adds the weight block's min times that s: sum_b d_w*d_x*isum_b + m_w*s_b.
  Multiplying fake-quantized activations by the dequantized weight (d_w*q_w + m_w) gives
  m_w*d_x16*sum(q) instead, d_x16 being the fp16-rounded d. This was the first and biggest
  difference: Qcur-0 (one token, "hello") came out 3e-4 relative away from llama.cpp's
  without the correction, 2e-7 with it. `linear` adds (s - d_x16*sum(q)) @ mins^T.
* F16 (and the fp16 KV cache) meets fp16 activations: Q is rounded to fp16 for K·Q and the
  softmax weights are rounded to fp16 before they multiply V (flash attention off).
* RMSNorm: x*x (float) summed in double, mean rounded to float, scale = 1.0f/sqrtf(mean+eps)
  (two float roundings; torch's own float32 sqrt is an ulp off now and then), (x*scale)*w.
* Softmax: ggml_v_expf (its own polynomial exp, with FMAs) on x - max, sums of 8 lanes in
  float added in double, then a multiply by (float)(1/sum). SwiGLU: x/(1+ggml_v_expf(-x))*up.
* RoPE: theta_i = pos * theta_scale^i by repeated float32 multiplication, theta_scale =
  powf(base, -2/n_dims), cosf/sinf from the C library, and the rotation compiled with FMA
  contraction: y0 = fma(x0, cos, -x1*sin), y1 = fma(x0, sin, x1*cos).

Gemma 3 270M Q4_K_M (Q5_0 attn_q/k/v and ffn_gate/up, Q8_0 some attn_v and the tied
token_embd, Q4_K attn_output and some ffn_down, Q6_K the other ffn_down), checked node by node
against llama.cpp's own inputs (tests/test_numerics.py; layers 0-3 there, all 18 layers by hand),
max abs difference per matmul node, `llamacpp-fast` -> `llamacpp` with blocks:

    node (type)          one token (decode)    batch (prefill)
    attn_q/k (Q5_0)      4.6e-5 -> 0           9.2e-5 -> 0
    ffn_gate/up (Q5_0)   2.9e-6 -> 0           2.9e-6 -> 0
    attn_v (Q8_0)        1.5e-5 -> 0           2.3e-5 -> 0
    attn_output (Q4_K)   1.1e-5 -> 0           3.1e-5 -> 0   (0.80 / 1.69 before Q8_K existed here)
    ffn_down (Q4_K)      1.9e-6 -> 0           1.9e-6 -> 0
    ffn_down (Q6_K)      3.8e-6 -> 0           2.9e-6 -> 2.9e-6 (ggml's tiled path, below)
    output (Q8_0, 262k)  1.1e-5 -> 0 (kernel; the engine keeps it vectorized: VECTORIZED_OUTPUT)
    ffn_geglu            0 (fp16 table)        0

* Q8_K (Q4_K/Q6_K's activations): per 256, d = 1/iscale kept in float32, iscale = -127.f/max
  with max the first element of largest |x| (signed), q = nearest_int(fl(iscale*x)).
* Which kernel runs (this build: llama-cpp-python 0.3.36, AVX2, REPACK and LLAMAFILE on):
  Q5_0/Q8_0 go through vec_dot (one row) or llamafile's tinyBLAS (a batch), the same
  arithmetic. Q4_K weights (rows a multiple of 8) are repacked to Q4_Kx8 at load: ggml_gemv
  (one row; also the rows of a batch left over from groups of 4) rounds into its accumulator
  once per super-block, ggml_gemm (groups of 4 rows) once per 64 elements. Q6_K is not
  repacked on AVX2: one row goes through vec_dot_q6_K_q8_K (8 lanes), but a batch goes
  through ggml's newer tiled K-quant matmul (GGML_CPU_TILED_MM, on by default), whose order
  is not reproduced here: its Q6_K nodes differ by ~1 ulp (2.9e-6 abs); with
  GGML_CPU_TILED_MM=0 set before llama.cpp loads, its batches take vec_dot and match exactly.
* GeGLU (GGML_GELU_FP16): gate <= -10 -> 0, >= 10 -> gate*up, else table[fp16(gate)]*up, the
  table being fp16(0.5f*x*(1+tanhf(SQRT_2_OVER_PI*x*fma(A*x, x, 1)))) for every fp16 x
  (equal to llama.cpp's ggml_table_gelu_f16 entry for entry). Gemma's QK-norm is the same
  rms_norm per 256-element head (bit-identical), its embedding scale an ordinary float multiply.
* Cost: the integer kernels run in float64 bmm plus a numpy fma loop over blocks; measured
  alone (quiet machine) a decode matmul takes 0.3-1.1 ms against ~0.1-0.5 ms vectorized; the
  262k-row tied output would take 0.7-1.0 s a token bit-exact against ~0.07 s, which is why
  it stays vectorized. Whole-model tok/s on this shared 2-core machine were too noisy to quote
  (load average ~6 from other jobs); measure with bench/parity.py --model gemma3.

Why the summation order matters. vec_dot_q4_1_q8_1 accumulates 8 float lanes block after
block with an fma each and adds the mins' sum last; K·Q and softmax·V go through
ggml_vec_dot_f16 (4x8 accumulators, 32 elements a step) for one token and llamafile's tinyBLAS
(one 8-lane accumulator per output, chunks of 8) for a batch of two or more tokens. Summed in
any other order the results move by ~1e-7 relative, and then a Q8 quantization downstream turns
one of those into a whole quantization step (an activation crossing a rounding boundary), which
the next layers amplify: a few layers on, hidden states differ by ~1e-3, and the logits by a
cosine of ~0.999, enough to flip near-ties in greedy decoding. llama.cpp does the same to
itself: the logits of a position computed in a batched prefill and in one-token decode differ
exactly that way (bench/parity.py, row "llama.cpp batch"), and its greedy path changes with them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from engine import numerics_quant as nq
from engine.numerics_quant import hsum8

NUMERICS = ("llamacpp", "exact", "llamacpp-fast")

# The activation format each weight type's dot product uses (ggml-cpu type_traits vec_dot_type).
VEC_DOT_TYPE = {
    T.Q4_0: "q8_0",
    T.Q5_0: "q8_0",
    T.Q8_0: "q8_0",
    T.IQ4_NL: "q8_0",
    T.Q4_1: "q8_1",
    T.Q5_1: "q8_1",
    T.F16: "f16",
    T.Q2_K: "q8_K",
    T.Q3_K: "q8_K",
    T.Q4_K: "q8_K",
    T.Q5_K: "q8_K",
    T.Q6_K: "q8_K",
}

# The output projection (tied or not) stays vectorized in `llamacpp` mode: nothing downstream
# of the logits rounds, and on Gemma 3's 262k-row Q8_0 matrix the bit-exact kernel takes
# ~0.7-1 s a token on 2 cores against ~0.07 s (the logits then differ by <= ~1e-5).
VECTORIZED_OUTPUT = ("output.weight", "token_embd.weight")

# Weight types whose blocks are d*q + m (a min per block of 32): their dot product with Q8_1
# adds m * s, s being Q8_1's fp16 block sum.
_WITH_MIN = {T.Q4_1, T.Q5_1}


_C127 = torch.tensor(127.0, dtype=torch.float32)
_ONE = torch.tensor(1.0, dtype=torch.float32)
_ONE_D = torch.tensor(1.0, dtype=torch.float64)


def _q8_blocks(x: torch.Tensor):
    """ggml's quantize_row_q8_0/q8_1 (AVX2), per block of 32 along the last axis: returns the
    float32 blocks' integer quants q (as float), the fp16-rounded d, and the fp32 d."""
    shape = x.shape
    blocks = x.float().reshape(*shape[:-1], shape[-1] // 32, 32)
    amax = blocks.abs().amax(dim=-1, keepdim=True)
    d32 = amax / 127
    # A tensor numerator: torch computes `127 / t` as reciprocal(t) * 127, two roundings, which
    # moves x*id off an exact .5 now and then; ggml divides once (id = 127.f/max).
    inv = torch.where(amax > 0, torch.div(_C127, amax), torch.zeros_like(amax))
    q = torch.round(blocks * inv)  # round half to even, like _mm256_round_ps(_MM_ROUND_NEAREST)
    return q, d32.half().float(), d32


def quantize_q8(x: torch.Tensor) -> torch.Tensor:
    """Round x to what ggml's quantize_row_q8_0/q8_1 (AVX2) keep: per block of 32 along the
    last axis, d = amax/127 stored as fp16 and q = round-to-nearest-even(x * 127/amax)."""
    q, d16, _ = _q8_blocks(x)
    return (q * d16).reshape(x.shape).to(x.dtype)


def quantize_q8_1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q8_1 fake quantization and the correction its s term needs: returns (x rounded to
    q*d16, per-block s - d16*sum(q)) with s = fp16(d32 * sum(q)) as quantize_row_q8_1 stores it."""
    q, d16, d32 = _q8_blocks(x)
    sq = q.sum(dim=-1, keepdim=True)
    s = (d32 * sq).half().float()
    delta = (s - d16 * sq).squeeze(-1)  # (..., n_blocks)
    return (q * d16).reshape(x.shape).to(x.dtype), delta.to(x.dtype)


def round_f16(x: torch.Tensor) -> torch.Tensor:
    return x.half().to(x.dtype)


def round_activation(x: torch.Tensor, vec_dot_type: str | None) -> torch.Tensor:
    if vec_dot_type in ("q8_0", "q8_1"):
        return quantize_q8(x)
    if vec_dot_type == "q8_K":
        return nq.fake_quantize_q8_K(x)
    if vec_dot_type == "f16":
        return round_f16(x)
    return x


def block_mins(weight: torch.Tensor) -> torch.Tensor:
    """The per-block min m of a dequantized Q4_1/Q5_1 weight [n_out, n_in] -> [n_out, n_in/32].

    A block dequantizes to d*q + m with q >= 0, and ggml's quantizers put q = 0 on the
    block's smallest element, so the smallest dequantized value is m itself. (An imatrix
    quantization that clamps m to 0 for an all-positive block would break that; the error
    left is then (d*q_min) times the tiny s correction, second order.)"""
    n_out, n_in = weight.shape
    return weight.reshape(n_out, n_in // 32, 32).amin(dim=-1)


class Numerics:
    """The rounding a model applies where llama.cpp would, or none (`exact`)."""

    def __init__(self, mode: str, weight_types: dict[str, T], blocks: Callable[[str], np.ndarray] | None = None):
        """`blocks(name)` returns a weight's raw GGUF bytes (GGUFFile.tensor_bytes): with it,
        `llamacpp` runs the Q4_0/Q5_0/Q8_0/Q4_K/Q6_K matmuls on their integer quants, bit for
        bit (engine/numerics_quant.py); without it those fall back to `llamacpp-fast`."""
        if mode not in NUMERICS:
            raise ValueError(f"unknown numerics {mode!r} (one of {', '.join(NUMERICS)})")
        self.mode = mode
        self.on = on = mode in ("llamacpp", "llamacpp-fast")
        # `llamacpp` also follows ggml's float summation order in the Q4_1 matmuls and in K·Q
        # and softmax·V (see the module doc): loops over blocks, ~2x slower than llamacpp-fast.
        self.bitexact = mode == "llamacpp"
        self.types = dict(weight_types)
        self._bx: dict[str, tuple] = {}  # name -> (weight, its bit-exact layout)
        self._last_bx: tuple | None = None  # (input, its Q8_1 quantization laid out for _linear_q4_1_bitexact)
        self.act = {name: VEC_DOT_TYPE.get(t) for name, t in weight_types.items()} if on else {}
        self.with_min = {name for name, t in weight_types.items() if t in _WITH_MIN} if on else set()
        self.kv = round_f16 if on else _identity
        self._mins: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> (weight, its block mins^T)
        self._last: tuple | None = None  # (input, vec_dot_type, quantized input, s correction)
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._blocks_of: dict[str, tuple] = {}  # first name -> (first, last weight, their block or None, rows)
        self._turns: tuple | None = None  # (cos, sin, dtype, cos + i sin): one step's rotations, for every layer
        self._blocks = blocks
        self._int: dict[str, tuple[torch.Tensor, nq.IntWeight]] = {}  # name -> (weight, its integer form)
        self._last_int: tuple | None = None  # (input, kernel's activation type, its quantization)
        self._experts: dict[str, tuple] = {}  # "name[e]" -> (expert stack, its slice e, name, e)

    # -- matmuls ---------------------------------------------------------------------

    def _quantized(self, x: torch.Tensor, vdt: str):
        # q, k, v share one input and so do gate and up: ggml quantizes it once too. (Held by
        # reference, so `is` cannot match a new tensor; the model never writes into its inputs.)
        last = self._last
        if last is not None and last[0] is x and last[1] == vdt:
            return last[2], last[3]
        if vdt == "q8_1":
            xq, delta = quantize_q8_1(x)
        else:
            xq, delta = round_activation(x, vdt), None
        self._last = (x, vdt, xq, delta)
        return xq, delta

    def _mins_t(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        cached = self._mins.get(name)
        if cached is None or cached[0] is not weight:
            cached = (weight, block_mins(weight).t().contiguous())
            self._mins[name] = cached
        return cached[1]

    def linear(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        """x @ weight.T, as ggml's CPU matmul computes it for the weight's type."""
        vdt = self.act.get(name)
        if vdt is None:
            if (self.bitexact and self.types.get(name) == T.F32 and x.dtype == weight.dtype == torch.float32
                    and x.device.type == "cpu" and name not in VECTORIZED_OUTPUT):
                return f32_matmul(x, weight)  # a MoE router (ffn_gate_inp), kept F32 in real files
            return x @ weight.T
        exact_ok = self.bitexact and x.dtype == torch.float32 and x.device.type == "cpu"
        if exact_ok and self.types.get(name) == T.Q4_1:
            return self._linear_q4_1_bitexact(x, weight, name)
        if exact_ok and self._blocks is not None and self.types.get(name) in nq.KERNELS and name not in VECTORIZED_OUTPUT:
            return self._linear_int(x, weight, name)
        xq, delta = self._quantized(x, vdt)
        y = xq @ weight.T
        if delta is not None and name in self.with_min:
            y = y + delta @ self._mins_t(weight, name)
        return y

    def linears(self, x: torch.Tensor, weights: list[torch.Tensor], names: list[str]) -> list[torch.Tensor]:
        """x @ w.T for several weights that read the same x (q, k, v; gate, up). In the plain numerics,
        weights stored side by side in one block (engine/weights.py SHARED_INPUT) run as one matmul:
        one pass over the input and one call instead of three, the outputs views of its columns."""
        if not self.on:
            hit = self._blocks_of.get(names[0])
            if hit is None or hit[0] is not weights[0] or hit[1] is not weights[-1]:
                hit = (weights[0], weights[-1], _one_block(weights), [w.shape[0] for w in weights])
                self._blocks_of[names[0]] = hit
            block, rows = hit[2], hit[3]
            if block is not None:
                return list((x @ block.T).split(rows, dim=-1))
        return [self.linear(x, w, name) for w, name in zip(weights, names)]

    def expert_linear(self, x: torch.Tensor, weights: torch.Tensor, name: str, expert: int) -> torch.Tensor:
        """x @ weights[expert].T for a stack of expert matrices [n_expert, n_out, n_in] (one GGUF
        tensor, `name`): ggml's MUL_MAT_ID runs each expert's rows through the same vec_dot
        as a plain matmul of the weight's type, so each expert is treated as a matrix of its own
        (`name[expert]`), its raw blocks the expert's slice of the tensor's bytes."""
        key = f"{name}[{expert}]"
        view = self._experts.get(key)
        if view is None or view[0] is not weights:
            view = (weights, weights[expert], name, expert)
            self._experts[key] = view
            if name in self.types:
                self.types[key] = self.types[name]
            if name in self.act:
                self.act[key] = self.act[name]
            if name in self.with_min:
                self.with_min.add(key)
        return self.linear(x, view[1], key)

    def _raw_blocks(self, name: str) -> np.ndarray:
        """A weight's raw GGUF bytes; an expert's slice of them for `name[expert]` keys."""
        view = self._experts.get(name)
        if view is None:
            return self._blocks(name)
        weights, _, tensor, expert = view
        raw = np.asarray(self._blocks(tensor)).reshape(-1)
        per = raw.size // weights.shape[0]
        return raw[expert * per:(expert + 1) * per]

    def _linear_int(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        """The matmul on the weight's integer quants, as ggml's kernel for its type computes it."""
        cached = self._int.get(name)
        if cached is None or cached[0] is not weight:
            n_out, n_in = weight.shape
            cached = (weight, nq.load(self._raw_blocks(name), self.types[name], n_out, n_in))
            self._int[name] = cached
        w = cached[1]
        vdt = self.act[name]
        xt = x.reshape(-1, x.shape[-1])
        last = self._last_int
        if last is not None and last[0] is x and last[1] == vdt:  # q, k, v (gate, up) share their input
            xq = last[2]
        else:
            xq = (nq.quantize_q8_0 if vdt == "q8_0" else nq.quantize_q8_K)(xt)
            self._last_int = (x, vdt, xq)
        return nq.matmul(xt, w, xq).reshape(*x.shape[:-1], w.n_out)

    def _linear_q4_1_bitexact(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        """ggml_vec_dot_q4_1_q8_1 (AVX2) for every row: per block b, the 8 lanes of
        maddubs/madd (lane l = sum of the 4 products 4l..4l+3) are accumulated with
        acc = fma(d_w*d_x, lane, acc); the mins with summs += m_w * s_x in float; the row's
        result is hsum_float_8(acc) + summs. (Every row of a batch goes through the same
        vec_dot: llamafile's sgemm has no Q4_1 kernel.)"""
        cached = self._bx.get(name)
        if cached is None or cached[0] is not weight:
            n_out, n_in = weight.shape
            mins = block_mins(weight)  # (n_out, nb)
            wc = weight.reshape(n_out, n_in // 32, 32) - mins[..., None]  # d_w*q_w, exact
            # [4, n_in/4, 1, n_out]: element k of each group of four (a lane sums 4 consecutive products).
            wc = wc.reshape(n_out, n_in // 4, 4).permute(2, 1, 0).contiguous()[:, :, None, :]
            cached = (weight, wc, mins.t().contiguous())
            self._bx[name] = cached
        _, wc, mins_t = cached
        nb, n_out = mins_t.shape
        lead = x.shape[:-1]
        last = self._last_bx
        if last is not None and last[0] is x:  # q, k, v (and gate, up) share their input
            xk, dx, s_x = last[1]
        else:
            xt = x.reshape(-1, x.shape[-1])
            q, d16, d32 = _q8_blocks(xt)  # (n, nb, 32), (n, nb, 1), (n, nb, 1)
            s_x = (d32 * q.sum(-1, keepdim=True)).half().float()[..., 0]  # (n, nb): Q8_1's s
            xk = q.reshape(q.shape[0], -1, 4).permute(2, 1, 0).contiguous()[..., None]  # (4, nb*8, n, 1)
            dx = d16[..., 0].t().contiguous().double()[:, None, :, None]  # (nb, 1, n, 1)
            self._last_bx = (x, (xk, dx, s_x))
        n = s_x.shape[0]
        ms = mins_t[:, None, :] * s_x.t()[:, :, None]  # (nb, n, n_out): m_w * s_x, exact in float
        out = torch.empty(n, n_out, dtype=torch.float32)
        rows = max(1, (1 << 22) // (wc.shape[1] * n_out))  # rows per chunk: bounds the lane tensors
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            # lane l of block b = d_w * (sum of 4 integer products): exact in float32 (<= 24 bits).
            lanes = wc[0] * xk[0, :, r0:r1]  # (nb*8, m, n_out)
            for k in range(1, 4):
                lanes.addcmul_(wc[k], xk[k, :, r0:r1])
            terms = lanes.view(nb, 8, r1 - r0, n_out).double()
            terms.mul_(dx[:, :, r0:r1])  # d_x * d_w * isum: exact in double
            # ggml's order: one block after the other, each fma rounding once to float. numpy,
            # because this loop is all per-op overhead: an add in double, a store that rounds.
            t = terms.numpy()
            acc = t[0].astype(np.float32)
            tmp = np.empty(acc.shape, dtype=np.float64)
            msn = ms[:, r0:r1].numpy()
            summs = msn[0].copy()
            for b in range(1, nb):
                np.add(acc, t[b], out=tmp)
                acc[...] = tmp
                np.add(summs, msn[b], out=summs)
            out[r0:r1] = hsum8(torch.from_numpy(acc).movedim(0, -1)) + torch.from_numpy(summs)
        return out.reshape(*lead, n_out)

    # -- attention --------------------------------------------------------------------

    def attn_scores(self, q: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """K·Q: q [T, nh, hd], keys [n_keys, nh, hd] (as stored in the cache) -> [nh, T, n_keys].
        llama.cpp's KV cache is fp16 and its F16 matmul rounds Q to fp16 too."""
        q = self.kv(q)
        if not self.bitexact or q.dtype != torch.float32:
            return torch.matmul(q.transpose(0, 1), keys.permute(1, 2, 0))  # (nh, T, hd) @ (nh, hd, n_keys)
        T, k = q.shape[0], keys.permute(1, 0, 2)[:, None, :, :]
        qh = q.permute(1, 0, 2)[:, :, None, :]
        # The products (nh, rows, n_keys, hd) are materialized, a slice of query rows at a time.
        step = _rows_per_chunk(k.numel(), T)
        return torch.cat([_f16_dot(qh[:, i:i + step] * k, T) for i in range(0, T, step)], dim=1)

    def attn_values(self, weights: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """softmax·V: weights [nh, T, n_keys], values [n_keys, nh, hd] -> [T, nh, hd], with the
        weights rounded to fp16 first (the V cache is fp16)."""
        w = self.kv(weights).to(values.dtype)
        if not self.bitexact or w.dtype != torch.float32:
            return torch.matmul(w, values.transpose(0, 1)).transpose(0, 1)  # (nh, T, n_keys) @ (nh, n_keys, hd)
        T, v = w.shape[1], values.permute(1, 2, 0)[:, None, :, :]
        wh = w[:, :, None, :]
        step = _rows_per_chunk(v.numel(), T)  # products (nh, rows, hd, n_keys), a slice at a time
        return torch.cat([_f16_dot(wh[:, i:i + step] * v, T) for i in range(0, T, step)], dim=1).permute(1, 0, 2)

    # -- the small ops ----------------------------------------------------------------

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        if not self.on:
            # squares in float32: in float16 a residual of |x| > 256 would square to inf
            return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * weight
        # ggml_compute_forward_rms_norm_f32: float squares summed in double, float mean,
        # scale = 1.0f/sqrtf(mean + eps), y = (x * scale) * w.
        # sqrtf is correctly rounded; torch's float32 sqrt is not on every CPU (its vectorized
        # kernel is an ulp off now and then), so the root is taken in double and rounded to
        # float, then 1.0f/root is a float division, as in ggml.
        xf = x.float()
        mean = ((xf * xf).double().sum(-1, keepdim=True) / x.shape[-1]).float()
        root = torch.sqrt((mean + _f32(eps)).double()).float()
        scale = torch.div(_ONE, root)
        return x * scale.to(x.dtype) * weight

    def softmax(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax over the last axis (masked entries are -inf)."""
        if not self.on:
            return torch.softmax(x, dim=-1)
        # ggml_vec_soft_max_f32 (AVX2): y = ggml_v_expf(x - max) eight lanes at a time, each
        # eight summed in float (hsum order), those sums added in double; then y *= (float)(1/sum).
        n = x.shape[-1]
        pad = -n % 8
        xs = x - x.amax(dim=-1, keepdim=True)
        e = ggml_v_expf(xs)
        ep = torch.nn.functional.pad(e, (0, pad)) if pad else e
        s8 = hsum8(ep.reshape(*ep.shape[:-1], (n + pad) // 8, 8))
        inv = torch.div(_ONE_D, s8.double().sum(dim=-1, keepdim=True)).float()
        return (e * inv).to(x.dtype)

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up."""
        if not self.on:
            return torch.nn.functional.silu(gate) * up
        # ggml_vec_swiglu_f32 (AVX2): ggml_v_silu(x) = x / (1 + ggml_v_expf(-x)), times up.
        return (gate / (1.0 + ggml_v_expf(-gate).to(gate.dtype)) * up).to(gate.dtype)

    def sigmoid(self, x: torch.Tensor) -> torch.Tensor:
        """1 / (1 + exp(-x)): a router's gating (DeepSeek-V3). ggml's sigmoid is scalar code with
        the C library's expf: 1.f / (1.f + expf(-x))."""
        if not self.on:
            return torch.sigmoid(x)
        return torch.div(_ONE, 1.0 + _libm_expf(-x.float())).to(x.dtype)

    def silu_scalar(self, x: torch.Tensor) -> torch.Tensor:
        """silu(x) = x / (1 + exp(-x)) as ggml computes it for rows shorter than 8 floats (its
        vector loop never runs; the scalar tail calls the C library's expf): qwen2moe's shared
        expert gate, one value per token."""
        if not self.on:
            return torch.nn.functional.silu(x)
        return (x.float() / (1.0 + _libm_expf(-x.float()))).to(x.dtype)

    def geglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """gelu(gate) * up, GELU in its tanh form (Gemma's FFN)."""
        if not self.on:
            return torch.nn.functional.gelu(gate, approximate="tanh") * up
        # ggml_vec_geglu_f32 (GGML_GELU_FP16): gate <= -10 gives 0, gate >= 10 gives gate*up,
        # anything between is looked up in ggml's fp16 GELU table at fp16(gate), then * up.
        g = gate.float()
        table = _gelu_f16_table().to(g.device)
        idx = g.half().view(torch.int16).long() & 0xFFFF
        y = table[idx] * up.float()
        y = torch.where(g >= 10, g * up.float(), y)
        return torch.where(g <= -10, torch.zeros_like(y), y).to(gate.dtype)

    def rope_cos_sin(self, positions: torch.Tensor, rope_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of each (position, pair) angle pos * theta^(-2i/d): [T, rope_dim/2] each."""
        n = rope_dim // 2
        if not self.on:
            inv_freq = theta ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64, device=positions.device) / rope_dim)
            angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]
            return torch.cos(angles), torch.sin(angles)
        # ggml_rope_cache_init: theta = (float)pos, then theta *= theta_scale once per pair, in
        # float32, with theta_scale = powf(freq_base, -2.0f/n_dims); then cosf/sinf of that float,
        # the C library's (glibc's cosf is within an ulp, not always the correctly rounded value).
        key = (tuple(positions.tolist()), rope_dim, theta)
        hit = self._rope.get(key)
        if hit is not None:
            return hit
        scale = np.float32(math.pow(np.float32(theta), np.float32(-2.0) / np.float32(rope_dim)))
        ang = np.empty((len(key[0]), n), dtype=np.float32)
        ang[:, 0] = np.asarray(key[0], dtype=np.float32)
        for i in range(1, n):  # a loop over the rope_dim/2 pairs, not over data blocks
            ang[:, i] = ang[:, i - 1] * scale
        cos, sin = _libm_cos_sin(ang)
        out = (torch.from_numpy(cos).to(positions.device), torch.from_numpy(sin).to(positions.device))
        if len(self._rope) > 4096:
            self._rope.clear()
        self._rope[key] = out
        return out

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate adjacent pairs (x[2i], x[2i+1]) of x [T, n_heads, head_dim] by the angles whose
        cos/sin [T, rope_dim/2] are given: llama.cpp's "normal" RoPE, which GGUF llama weights
        expect (the converter permuted Q and K so the HF rotate-half form becomes this)."""
        rope_dim = cos.shape[-1] * 2
        rot, rest = x[..., :rope_dim], x[..., rope_dim:]
        if not self.on and x.dtype == torch.float32:
            # Each pair as a complex number times cos + i sin: the same products and sums as below,
            # in ~5 ops instead of ~14 (the plain numerics promise float32, not an order of roundings).
            pairs = torch.view_as_complex(rot.reshape(*rot.shape[:-1], rope_dim // 2, 2))
            out = torch.view_as_real(pairs * self._turn(cos, sin, x.dtype)).flatten(-2)
            return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out
        x0, x1 = rot[..., 0::2], rot[..., 1::2]
        c = cos.to(x.dtype)[:, None, :]  # (T, 1, rope_dim/2)
        s = sin.to(x.dtype)[:, None, :]
        if not self.on:
            out = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)
        else:
            # ggml's rotate_pairs is compiled with FMA contraction (gnu++17 at -O3 with FMA):
            # y0 = fma(x0, cos, -(x1*sin)), y1 = fma(x0, sin, x1*cos).
            out = torch.stack((fma(x0, c, -(x1 * s)), fma(x0, s, x1 * c)), dim=-1).flatten(-2).to(x.dtype)
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


    def _turn(self, cos: torch.Tensor, sin: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """cos + i sin [T, 1, rope_dim/2], built once per step (q and k of every layer share it)."""
        hit = self._turns
        if hit is None or hit[0] is not cos or hit[1] is not sin or hit[2] != dtype:
            hit = (cos, sin, dtype, torch.complex(cos.to(dtype), sin.to(dtype))[:, None, :])
            self._turns = hit
        return hit[3]


def _one_block(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """The [sum n_out, n_in] matrix whose consecutive rows the weights are, when they are views of one
    K-major block (strides (1, S), each starting where the one before ends); else None."""
    w0 = weights[0]
    if w0.dim() != 2 or w0.stride(0) != 1:
        return None
    storage, stride, offset, rows = w0.untyped_storage().data_ptr(), w0.stride(), w0.storage_offset(), 0
    for w in weights:
        if (w.dim() != 2 or w.stride() != stride or w.shape[1] != w0.shape[1] or w.dtype != w0.dtype
                or w.untyped_storage().data_ptr() != storage or w.storage_offset() != offset + rows):
            return None
        rows += w.shape[0]
    return w0.as_strided((rows, w0.shape[1]), stride, offset)


# --- float32 arithmetic as ggml's AVX2 code performs it -----------------------------------


def fma(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add, a*b + c rounded once: the product of two floats is exact in
    double, so only the double sum rounds before the float rounding (a double rounding that
    differs from one rounding only when the double sum lands exactly on a float tie)."""
    return (a.double() * b.double() + c.double()).float()


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32).long() & 0xFFFFFFFF


def _from_bits(u: torch.Tensor) -> torch.Tensor:
    u = u & 0xFFFFFFFF
    return torch.where(u >= 1 << 31, u - (1 << 32), u).to(torch.int32).view(torch.float32)


def _c(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


_EXP = {k: _c(v) for k, v in dict(
    r=float.fromhex("0x1.8p23"), log2e=float.fromhex("0x1.715476p+0"),
    ln2_hi=float.fromhex("0x1.62e4p-1"), ln2_lo=float.fromhex("0x1.7f7d1cp-20"),
    p0=float.fromhex("0x1.0e4020p-7"), p1=float.fromhex("0x1.573e2ep-5"),
    p2=float.fromhex("0x1.555e66p-3"), p3=float.fromhex("0x1.fffdb6p-2"), p4=float.fromhex("0x1.ffffecp-1"),
).items()}


def ggml_v_expf(x: torch.Tensor) -> torch.Tensor:
    """ggml's vectorized expf (vec.h, AVX2+FMA branch; ARM's optimized-routines algorithm),
    step for step in float32, so softmax and SiLU get llama.cpp's values to the bit."""
    C = _EXP
    x = x.float()
    z = fma(x, C["log2e"], C["r"])
    n = z - C["r"]
    b = fma(-n, C["ln2_lo"], fma(-n, C["ln2_hi"], x))  # fnmadd(n, lo, fnmadd(n, hi, x))
    e = (_bits(z) << 23) & 0xFFFFFFFF
    k = _from_bits(e + 0x3F800000)
    u = b * b
    j = fma(fma(fma(C["p0"], b, C["p1"]), u, fma(C["p2"], b, C["p3"])), u, C["p4"] * b)
    fast = fma(k, j, k)
    big = n.abs() > 126
    # Both branches, always, then a select: asking `big.any()` first would read a value back to the
    # host, a wait for the device on every call on a GPU and a step no CUDA graph can capture.
    g = torch.where(n <= 0, 0x82000000, 0)
    s1 = _from_bits(g + 0x7F000000)
    s2 = _from_bits(e - g)
    slow = torch.where(n.abs() > 192, s1 * s1, fma(s2, j, s2) * s1)
    return torch.where(big, slow, fast)


def f32_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [..., k] @ weight [m, k].T for an F32 weight, summed as ggml's CPU backend sums it (AVX2).
    A batch of two or more rows goes through llamafile's tinyBLAS when k is a multiple of 8 and m
    of 4 (qwen2moe's one-row shared-expert gate is not): one
    8-lane accumulator per output, acc = fma(x[l:l+8], w[l:l+8], acc) chunk after chunk, then
    hsum. One row goes through ggml_vec_dot_f32: 4 accumulators of 8 lanes, 32 elements a step,
    reduced (a0+a2)+(a1+a3), then the 8 lanes by two hadds; the k % 32 left over are fma'd on in
    float. Each fma is an exact product in float64 plus the float32 accumulator, rounded once."""
    lead = x.shape[:-1]
    xt = x.reshape(-1, x.shape[-1])
    n, k = xt.shape
    m = weight.shape[0]
    out = torch.empty(n, m, dtype=torch.float32)
    step = _rows_per_chunk(k * 8, m, budget=1 << 21)  # outputs per pass: bounds the float64 products
    for c0 in range(0, m, step):
        w = weight[c0:c0 + step].double()
        if n >= 2 and k % 8 == 0 and m % 4 == 0:  # tinyBLAS tiles m by 4 at least, else declines
            prod = xt.double().view(n, 1, k // 8, 8) * w.view(1, -1, k // 8, 8)  # (n, m', chunks, 8): exact
            acc = prod[:, :, 0].float()
            for i in range(1, k // 8):
                acc = (acc.double() + prod[:, :, i]).float()
            out[:, c0:c0 + step] = hsum8(acc)
            continue
        body = k - k % 32
        prod = xt[:, None, :body].double() * w[None, :, :body]  # (n, m', body)
        steps = prod.view(n, -1, body // 32, 4, 8)
        acc = torch.zeros(n, w.shape[0], 4, 8, dtype=torch.float32)
        for i in range(body // 32):
            acc = (acc.double() + steps[:, :, i]).float()
        a = (acc[:, :, 0] + acc[:, :, 2]) + (acc[:, :, 1] + acc[:, :, 3])  # (n, m', 8)
        t0 = a[..., :4] + a[..., 4:]
        total = (t0[..., 0] + t0[..., 1]) + (t0[..., 2] + t0[..., 3])  # hadd(hadd(t0, t0))
        for i in range(body, k):  # the leftovers, sumf += x*y contracted to an fma
            total = (total.double() + xt[:, None, i].double() * w[None, :, i]).float()
        out[:, c0:c0 + step] = total
    return out.reshape(*lead, m)


def _rows_per_chunk(per_row: int, n_rows: int, budget: int = 1 << 23) -> int:
    return max(1, min(n_rows, budget // max(1, per_row)))


def _f16_dot(prod: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum the exact float products of an F16 x F16 dot product (last axis) in ggml's order.
    A batch of one row (decode) goes through ggml_vec_dot_f16 (AVX2): 4 accumulators of 8
    lanes, 32 elements a step, then GGML_F16_VEC_REDUCE. A batch of two or more (prefill) goes
    through llamafile's tinyBLAS: one 8-lane accumulator over chunks of 8, then hsum. Products
    of fp16 values are exact in float32, so each fma is a float addition. Zero padding (llama.cpp
    pads the KV cells it attends over to 256) adds exact zeros and changes nothing."""
    n = prod.shape[-1]
    if n_rows == 1:
        pad = -n % 32
        if pad:
            prod = torch.nn.functional.pad(prod, (0, pad))
        steps = prod.reshape(*prod.shape[:-1], -1, 4, 8)
        acc = steps[..., 0, :, :]
        for i in range(1, steps.shape[-3]):
            acc = acc + steps[..., i, :, :]
        x = (acc[..., 0, :] + acc[..., 2, :]) + (acc[..., 1, :] + acc[..., 3, :])
        t = x[..., :4] + x[..., 4:]
        return (t[..., 0] + t[..., 1]) + (t[..., 2] + t[..., 3])
    pad = -n % 8
    if pad:
        prod = torch.nn.functional.pad(prod, (0, pad))
    chunks = prod.reshape(*prod.shape[:-1], -1, 8)
    acc = chunks[..., 0, :]
    for i in range(1, chunks.shape[-2]):
        acc = acc + chunks[..., i, :]
    return hsum8(acc)


_LIBM = None


def _libm_cos_sin(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cosf/sinf of float32 angles from the C library llama.cpp calls (glibc's differ from the
    correctly rounded value by an ulp now and then); the correctly rounded values if no libm."""
    global _LIBM
    if _LIBM is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
            for fn in (lib.cosf, lib.sinf, lib.tanhf, lib.expf):
                fn.argtypes, fn.restype = [ctypes.c_float], ctypes.c_float
            _LIBM = lib
        except OSError:
            _LIBM = False
    if _LIBM is False:
        a = angles.astype(np.float64)
        return np.cos(a).astype(np.float32), np.sin(a).astype(np.float32)
    flat = angles.reshape(-1).tolist()
    cosf, sinf = _LIBM.cosf, _LIBM.sinf
    cos = np.array([cosf(a) for a in flat], dtype=np.float32).reshape(angles.shape)
    sin = np.array([sinf(a) for a in flat], dtype=np.float32).reshape(angles.shape)
    return cos, sin


_GELU_TABLE: torch.Tensor | None = None


def _gelu_f16_table() -> torch.Tensor:
    """ggml_table_gelu_f16 as float32 [65536], one entry per fp16 bit pattern: fp16 of
    0.5f*x*(1.0f + tanhf(SQRT_2_OVER_PI*x*(1.0f + GELU_COEF_A*x*x))), evaluated as ggml-cpu is
    compiled: float32, the inner 1 + (A*x)*x contracted to an fma, tanhf from the C library.
    (Checked entry by entry against the table in llama.cpp's libggml-cpu: all 63 488 finite
    entries agree; without the fma, one does not.)"""
    global _GELU_TABLE
    if _GELU_TABLE is None:
        x = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
        a, s = np.float32(0.044715), np.float32(0.79788456080286535587989211986876)
        with np.errstate(all="ignore"):
            inner = ((a * x).astype(np.float64) * x + 1.0).astype(np.float32)  # fma(A*x, x, 1)
            t = _libm_tanh((s * x) * inner)
            y = (np.float32(0.5) * x) * (np.float32(1) + t)
        _GELU_TABLE = torch.from_numpy(y.astype(np.float16).astype(np.float32))
    return _GELU_TABLE


def _libm_tanh(v: np.ndarray) -> np.ndarray:
    _libm_cos_sin(np.zeros(0, dtype=np.float32))  # loads the library once
    if _LIBM is False:
        return np.tanh(v.astype(np.float64)).astype(np.float32)
    tanhf = _LIBM.tanhf
    return np.array([tanhf(a) for a in v.tolist()], dtype=np.float32)


def _libm_expf(x: torch.Tensor) -> torch.Tensor:
    """expf from the C library, element by element (ggml's scalar sigmoid and SiLU call it);
    for the router-sized tensors that need it (T x n_expert values)."""
    _libm_cos_sin(np.zeros(0, dtype=np.float32))  # loads the library once
    v = x.detach().float().cpu().numpy()
    if _LIBM is False:
        out = np.exp(v.astype(np.float64)).astype(np.float32)
    else:
        expf = _LIBM.expf
        out = np.array([expf(a) for a in v.reshape(-1).tolist()], dtype=np.float32).reshape(v.shape)
    return torch.from_numpy(out).to(x.device)


def _f32(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float32)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x

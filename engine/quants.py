"""Dequantization of GGUF weights in torch, one class per ggml type.

Shaped like gguf-py's quants.py: a subclass registers itself with `qtype=...` and
implements one vectorized block kernel, `(n_blocks, type_size)` uint8 in,
`(n_blocks, block_size)` float32 out, on whatever device the bytes are on.

Every kernel performs the same float32 operations in the same order as gguf-py's
numpy reference (fp16 scales are widened to float32 first, then `d * q + m`, never a
fused form), so the results are bit-identical to `gguf.quants.dequantize`.
"""

from __future__ import annotations

import functools
import warnings
from typing import ClassVar

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK_K = 256  # elements per K-quant super-block

# Blocks per kernel call: bounds the float32 intermediates (~16 MiB each) on big
# tensors such as a 262k-row embedding, and lets each chunk be cast to `dtype` at once.
CHUNK_ELEMENTS = 1 << 22


class UnsupportedQuant(ValueError):
    """No dequantizer for this ggml type."""


_QUANTS: dict[GGMLQuantizationType, type[Quant]] = {}


class Quant:
    qtype: ClassVar[GGMLQuantizationType]
    block_size: ClassVar[int]
    type_size: ClassVar[int]
    fields: ClassVar[tuple[tuple[str, int], ...]]  # (name, bytes) in block order

    def __init_subclass__(cls, qtype: GGMLQuantizationType, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.qtype = qtype
        cls.block_size, cls.type_size = GGML_QUANT_SIZES[qtype]
        assert sum(n for _, n in cls.fields) == cls.type_size, qtype.name
        assert qtype not in _QUANTS
        _QUANTS[qtype] = cls

    @staticmethod
    def dequantize_blocks(blocks: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


# --- helpers -----------------------------------------------------------------


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) little-endian fp16 bytes -> (n, 1) float32, exactly as numpy widens them."""
    return b.contiguous().view(torch.float16).to(torch.float32)


@functools.lru_cache(maxsize=None)
def _shift_tensor(shifts: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(shifts, dtype=torch.uint8, device=device).reshape(1, 1, -1, 1)


def _unpack(x: torch.Tensor, run: int, shifts: tuple[int, ...], mask: int) -> torch.Tensor:
    """Bit-fields out of packed bytes, in ggml's order: for each run of `run` bytes,
    the field at shifts[0] of every byte comes first, then the field at shifts[1], ...
    (n, m) uint8 -> (n, m * len(shifts)) uint8."""
    n = x.shape[0]
    return ((x.reshape(n, -1, 1, run) >> _shift_tensor(shifts, x.device)) & mask).reshape(n, -1)


NIBBLES = (0, 4)
BIT_PAIRS = (0, 2, 4, 6)
BITS = tuple(range(8))


# --- plain floats ---------------------------------------------------------------


class F32(Quant, qtype=GGMLQuantizationType.F32):
    fields = (("f32", 4),)

    @staticmethod
    def dequantize_blocks(blocks):
        return blocks.view(torch.float32)


class F16(Quant, qtype=GGMLQuantizationType.F16):
    fields = (("f16", 2),)

    @staticmethod
    def dequantize_blocks(blocks):
        return blocks.view(torch.float16).to(torch.float32)


class BF16(Quant, qtype=GGMLQuantizationType.BF16):
    fields = (("bf16", 2),)

    @staticmethod
    def dequantize_blocks(blocks):
        # bf16 is the top half of an fp32: shift the bits up, reinterpret.
        return (blocks.view(torch.int16).to(torch.int32) << 16).view(torch.float32)


# --- 32-element blocks ------------------------------------------------------------


class Q8_0(Quant, qtype=GGMLQuantizationType.Q8_0):
    # | d f16 | qs[32] int8 |      x[j] = qs[j] * d
    fields = (("d", 2), ("qs", 32))

    @staticmethod
    def dequantize_blocks(blocks):
        d = _f16(blocks[:, :2])
        return blocks[:, 2:].view(torch.int8).to(torch.float32) * d


class Q4_0(Quant, qtype=GGMLQuantizationType.Q4_0):
    # | d f16 | qs[16]: byte i = x[i+16] << 4 | x[i] |      x = (q - 8) * d
    fields = (("d", 2), ("qs", 16))

    @staticmethod
    def dequantize_blocks(blocks):
        d = _f16(blocks[:, :2])
        q = _unpack(blocks[:, 2:], 16, NIBBLES, 0x0F).to(torch.float32) - 8
        return d * q


class Q4_1(Quant, qtype=GGMLQuantizationType.Q4_1):
    # | d f16 | m f16 | qs[16] nibbles as Q4_0 |      x = d * q + m
    fields = (("d", 2), ("m", 2), ("qs", 16))

    @staticmethod
    def dequantize_blocks(blocks):
        d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
        q = _unpack(blocks[:, 4:], 16, NIBBLES, 0x0F).to(torch.float32)
        return d * q + m


class Q5_0(Quant, qtype=GGMLQuantizationType.Q5_0):
    # | d f16 | qh[4]: little-endian u32, bit j = 5th bit of x[j] | qs[16] as Q4_0 |
    #   x = (q - 16) * d
    fields = (("d", 2), ("qh", 4), ("qs", 16))

    @staticmethod
    def dequantize_blocks(blocks):
        d = _f16(blocks[:, :2])
        q = _unpack(blocks[:, 6:], 16, NIBBLES, 0x0F) | (_unpack(blocks[:, 2:6], 1, BITS, 1) << 4)
        return d * (q.to(torch.float32) - 16)


class Q5_1(Quant, qtype=GGMLQuantizationType.Q5_1):
    # | d f16 | m f16 | qh[4] as Q5_0 | qs[16] as Q4_0 |      x = d * q + m
    fields = (("d", 2), ("m", 2), ("qh", 4), ("qs", 16))

    @staticmethod
    def dequantize_blocks(blocks):
        d, m = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
        q = _unpack(blocks[:, 8:], 16, NIBBLES, 0x0F) | (_unpack(blocks[:, 4:8], 1, BITS, 1) << 4)
        return d * q.to(torch.float32) + m


# --- K-quants: 256-element super-blocks of 16 or 8 sub-blocks --------------------
# Every product below of an fp16 scale, a 6-bit scale and a small integer is exact
# in float32; only the final add or subtract rounds, as in the reference.


class Q2_K(Quant, qtype=GGMLQuantizationType.Q2_K):
    # | scales[16]: lo nibble = scale, hi nibble = min, one pair per 16 elements |
    # | qs[64]: 2-bit q; byte i of half h holds x[128h + 32k + i % 32] at bits 2k |
    # | d f16 | dmin f16 |
    #   x = (d * scale) * q - (dmin * min)
    fields = (("scales", 16), ("qs", 64), ("d", 2), ("dmin", 2))

    @staticmethod
    def dequantize_blocks(blocks):
        n = blocks.shape[0]
        scales = blocks[:, :16]
        d, dmin = _f16(blocks[:, 80:82]), _f16(blocks[:, 82:84])
        dl = (d * (scales & 0x0F).to(torch.float32)).reshape(n, 16, 1)
        ml = (dmin * (scales >> 4).to(torch.float32)).reshape(n, 16, 1)
        q = _unpack(blocks[:, 16:80], 32, BIT_PAIRS, 3).reshape(n, 16, 16).to(torch.float32)
        return (dl * q - ml).reshape(n, QK_K)


class Q3_K(Quant, qtype=GGMLQuantizationType.Q3_K):
    # | hmask[32]: bit b of byte i = high bit of x[32b + i]; a clear bit means -4 |
    # | qs[64]: low 2 bits, as Q2_K | scales[12]: 16 six-bit scales, below | d f16 |
    #   x = d * (scale - 32) * (q_lo - 4 * !high)
    #
    # The 6-bit scales A..P (low nibbles in bytes 0-7, high 2 bits in bytes 8-11):
    #   0: IIIIAAAA   4: MMMMEEEE    8: MMIIEEAA
    #   1: JJJJBBBB   5: NNNNFFFF    9: NNJJFFBB
    #   2: KKKKCCCC   6: OOOOGGGG   10: OOKKGGCC
    #   3: LLLLDDDD   7: PPPPHHHH   11: PPLLHHDD
    fields = (("hmask", 32), ("qs", 64), ("scales", 12), ("d", 2))

    @staticmethod
    def dequantize_blocks(blocks):
        n = blocks.shape[0]
        scales = blocks[:, 96:108]
        d = _f16(blocks[:, 108:110])
        lo = _unpack(scales[:, :8], 8, NIBBLES, 0x0F)
        hi = _unpack(scales[:, 8:], 4, BIT_PAIRS, 3)
        dl = (d * ((lo | (hi << 4)).to(torch.float32) - 32)).reshape(n, 16, 1)
        ql = _unpack(blocks[:, 32:96], 32, BIT_PAIRS, 3)
        qh = _unpack(blocks[:, :32], 32, BITS, 1)
        q = ql.to(torch.float32) - ((qh ^ 1) << 2).to(torch.float32)
        return (dl * q.reshape(n, 16, 16)).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K: 12 bytes -> 8 six-bit scales and 8 six-bit mins, as float32.

    0 EEAAAAAA   4 eeaaaaaa    8 eeeeEEEE      scales A..H, mins a..h
    1 FFBBBBBB   5 ffbbbbbb    9 ffffFFFF
    2 GGCCCCCC   6 ggcccccc   10 ggggGGGG
    3 HHDDDDDD   7 hhdddddd   11 hhhhHHHH
    """
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.to(torch.float32), mn.to(torch.float32)


def _k_block_scales(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's per-32 scale d*scale and offset dmin*min, shaped (n, 8, 1)."""
    n = blocks.shape[0]
    d, dmin = _f16(blocks[:, :2]), _f16(blocks[:, 2:4])
    sc, mn = _k_scale_min(blocks[:, 4:16])
    return (d * sc).reshape(n, 8, 1), (dmin * mn).reshape(n, 8, 1)


class Q4_K(Quant, qtype=GGMLQuantizationType.Q4_K):
    # | d f16 | dmin f16 | scales[12] (see _k_scale_min) |
    # | qs[128]: each 32 bytes hold 64 elements, low nibbles first, then high |
    #   x = (d * scale) * q - (dmin * min), one scale and min per 32 elements
    fields = (("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128))

    @staticmethod
    def dequantize_blocks(blocks):
        n = blocks.shape[0]
        dl, ml = _k_block_scales(blocks)
        q = _unpack(blocks[:, 16:], 32, NIBBLES, 0x0F).reshape(n, 8, 32).to(torch.float32)
        return (dl * q - ml).reshape(n, QK_K)


class Q5_K(Quant, qtype=GGMLQuantizationType.Q5_K):
    # | d f16 | dmin f16 | scales[12] | qh[32]: bit b of byte i = 5th bit of x[32b + i] |
    # | qs[128]: low nibbles, as Q4_K |
    #   x = (d * scale) * q - (dmin * min)
    fields = (("d", 2), ("dmin", 2), ("scales", 12), ("qh", 32), ("qs", 128))

    @staticmethod
    def dequantize_blocks(blocks):
        n = blocks.shape[0]
        dl, ml = _k_block_scales(blocks)
        q = _unpack(blocks[:, 48:], 32, NIBBLES, 0x0F) | (_unpack(blocks[:, 16:48], 32, BITS, 1) << 4)
        return (dl * q.reshape(n, 8, 32).to(torch.float32) - ml).reshape(n, QK_K)


class Q6_K(Quant, qtype=GGMLQuantizationType.Q6_K):
    # | ql[128]: each 64 bytes hold 128 elements' low 4 bits, low nibbles first |
    # | qh[64]: each 32 bytes hold 128 elements' high 2 bits, at shifts 0, 2, 4, 6 |
    # | scales[16] int8, one per 16 elements | d f16 |
    #   x = (d * scale) * (q - 32)
    fields = (("ql", 128), ("qh", 64), ("scales", 16), ("d", 2))

    @staticmethod
    def dequantize_blocks(blocks):
        n = blocks.shape[0]
        scales = blocks[:, 192:208].view(torch.int8).to(torch.float32)
        dl = (_f16(blocks[:, 208:210]) * scales).reshape(n, 16, 1)
        q = _unpack(blocks[:, :128], 64, NIBBLES, 0x0F) | (_unpack(blocks[:, 128:192], 32, BIT_PAIRS, 3) << 4)
        return (dl * (q.reshape(n, 16, 16).to(torch.float32) - 32)).reshape(n, QK_K)


# --- public API ------------------------------------------------------------------


def supported_types() -> tuple[GGMLQuantizationType, ...]:
    return tuple(_QUANTS)


def block_layout(qtype: GGMLQuantizationType) -> dict:
    """Block size, bytes per block, bits per weight and (when we decode it) the fields."""
    qtype = _as_qtype(qtype)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    q = _QUANTS.get(qtype)
    return {
        "type": qtype.name,
        "block_size": block_size,
        "type_size": type_size,
        "bits_per_weight": type_size * 8 / block_size,
        "fields": list(q.fields) if q else None,
    }


def dequantize(
    raw: torch.Tensor | np.ndarray,
    qtype: GGMLQuantizationType,
    shape: tuple[int, ...],
    device="cpu",
    dtype: torch.dtype = torch.float32,
    *,
    name: str | None = None,
) -> torch.Tensor:
    """Raw GGUF tensor bytes -> a torch tensor of shape `shape[::-1]`.

    `shape` is in GGUF order (ne0 contiguous), so a weight stored as (n_in, n_out)
    comes back as [n_out, n_in], ready for F.linear.
    """
    qtype = _as_qtype(qtype, name)
    q = _QUANTS.get(qtype)
    where = f" in tensor '{name}'" if name else ""
    if q is None:
        supported = ", ".join(t.name for t in _QUANTS)
        raise UnsupportedQuant(f"no dequantizer for {qtype.name}{where} (supported: {supported})")
    n_elements = int(np.prod(shape, dtype=np.int64)) if shape else 1
    row = shape[0] if shape else 1
    if row % q.block_size:
        raise ValueError(f"{q.qtype.name} rows of {row} elements{where} are not whole blocks of {q.block_size}")
    n_blocks = n_elements // q.block_size
    blocks = _as_uint8_tensor(raw)
    if blocks.numel() != n_blocks * q.type_size:
        need = n_blocks * q.type_size
        raise ValueError(f"{q.qtype.name} shape {tuple(shape)}{where} needs {need} bytes, got {blocks.numel()}")
    blocks = blocks.reshape(n_blocks, q.type_size).to(device)

    out = torch.empty(n_blocks, q.block_size, dtype=dtype, device=device)
    step = max(1, CHUNK_ELEMENTS // q.block_size)
    for start in range(0, n_blocks, step):
        out[start : start + step] = q.dequantize_blocks(blocks[start : start + step])
    return out.reshape(tuple(shape[::-1]))


def _as_qtype(qtype, name: str | None = None) -> GGMLQuantizationType:
    try:
        return GGMLQuantizationType(qtype)
    except ValueError:
        where = f" in tensor '{name}'" if name else ""
        raise UnsupportedQuant(f"unknown ggml type {qtype!r}{where}") from None


def _as_uint8_tensor(raw: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(raw, torch.Tensor):
        return raw.reshape(-1).view(torch.uint8)
    a = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    with warnings.catch_warnings():
        # A read-only memmap view: torch warns it cannot guard writes. The kernels
        # only read their input, so share the memory rather than copy it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(a)

"""A fast, defensive GGUF reader (format v2/v3, little-endian).

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64
    n_kv ×      key: str | value_type u32 | value
    n_tensors × name: str | n_dims u32 | ne[n_dims] u64 | ggml_type u32 | offset u64
    padding to general.alignment, then the tensor data (offsets are relative to it)

    str   = length u64 | utf-8 bytes
    array = item_type u32 | count u64 | count items

Why not gguf.GGUFReader: it builds numpy objects per array element (≈3 s to open
SmolLM2, ≈14 s for Gemma 3's 262k-entry vocabulary) and believes whatever counts the
header declares, so a 2^40-element array hangs it. Here every count and length is
checked against the bytes left in the file before anything is allocated, numeric
arrays are one np.frombuffer, and the file is memory-mapped so tensor data is never
read until someone asks for it.

Every problem with the file's contents raises GGUFError with one line that says what
is wrong; OS errors (a missing file, a directory) propagate as they are.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME = 64  # GGML_MAX_NAME; llama.cpp rejects tensor names this long or longer
INT64_MAX = (1 << 63) - 1

# The fewest bytes an entry can take, to bound the declared counts before looping.
MIN_KV_BYTES = 8 + 4 + 1  # empty key, type, one u8
MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8  # empty name, n_dims = 0, type, offset

# What an architecture may declare before we call the header hostile. llama.cpp
# trusts these numbers (it sizes per-layer arrays from them and GGML_ASSERTs on the
# expert counts, aborting the process), so absurd values stop here with one line.
ARCH_LIMITS = {
    "block_count": 4096,
    "context_length": 1 << 27,
    "embedding_length": 1 << 20,
    "feed_forward_length": 1 << 24,
    "attention.head_count": 1 << 16,
    "attention.head_count_kv": 1 << 16,
    "expert_count": 512,  # LLAMA_MAX_EXPERTS
    "expert_used_count": 512,
}

_SCALAR = {
    GGUFValueType.UINT8: struct.Struct("<B"),
    GGUFValueType.INT8: struct.Struct("<b"),
    GGUFValueType.UINT16: struct.Struct("<H"),
    GGUFValueType.INT16: struct.Struct("<h"),
    GGUFValueType.UINT32: struct.Struct("<I"),
    GGUFValueType.INT32: struct.Struct("<i"),
    GGUFValueType.FLOAT32: struct.Struct("<f"),
    GGUFValueType.BOOL: struct.Struct("<?"),
    GGUFValueType.UINT64: struct.Struct("<Q"),
    GGUFValueType.INT64: struct.Struct("<q"),
    GGUFValueType.FLOAT64: struct.Struct("<d"),
}
_ARRAY_DTYPE = {
    GGUFValueType.UINT8: np.dtype("<u1"),
    GGUFValueType.INT8: np.dtype("<i1"),
    GGUFValueType.UINT16: np.dtype("<u2"),
    GGUFValueType.INT16: np.dtype("<i2"),
    GGUFValueType.UINT32: np.dtype("<u4"),
    GGUFValueType.INT32: np.dtype("<i4"),
    GGUFValueType.FLOAT32: np.dtype("<f4"),
    GGUFValueType.BOOL: np.dtype("<u1"),  # read as bytes, then != 0
    GGUFValueType.UINT64: np.dtype("<u8"),
    GGUFValueType.INT64: np.dtype("<i8"),
    GGUFValueType.FLOAT64: np.dtype("<f8"),
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class GGUFError(Exception):
    """The file is not a GGUF we can trust; the message says why, in one line."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: ne0 (contiguous), ne1, ...
    offset: int  # absolute byte offset in the file
    nbytes: int
    n_elements: int


class _Cursor:
    """Reads little-endian values from the mapped file; nothing is read unchecked."""

    def __init__(self, buf: memoryview):
        self.buf = buf
        self.size = len(buf)
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if n > self.size - self.pos:
            raise GGUFError(f"truncated: {what} at byte {self.pos} needs {n} bytes but the file has {self.size}")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_str(self, what: str) -> memoryview:
        n = self.u64(f"{what} length")
        self.need(n, what)
        s = self.buf[self.pos : self.pos + n]
        self.pos += n
        return s

    def name(self, what: str) -> str:
        """A key or tensor name: these must be valid utf-8, unlike string values."""
        at = self.pos
        try:
            return str(self.raw_str(what), "utf-8")
        except UnicodeDecodeError:
            raise GGUFError(f"{what} at byte {at} is not valid utf-8") from None

    def string(self, what: str) -> str:
        return str(self.raw_str(what), "utf-8", "replace")

    def value(self, vtype: int, key: str) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(f"metadata key {_q(key)} value")
        if vtype == GGUFValueType.ARRAY:
            return self.array(key)
        fmt = _SCALAR.get(vtype)
        if fmt is None:
            raise GGUFError(f"metadata key {_q(key)} has unknown value type {vtype}")
        self.need(fmt.size, f"metadata key {_q(key)} value")
        (v,) = fmt.unpack_from(self.buf, self.pos)
        self.pos += fmt.size
        return v

    def array(self, key: str) -> np.ndarray | list[str]:
        itype = self.u32(f"metadata key {_q(key)} array type")
        n = self.u64(f"metadata key {_q(key)} array length")
        if itype == GGUFValueType.STRING:
            return self.string_array(key, n)
        if itype == GGUFValueType.ARRAY:
            raise GGUFError(f"metadata key {_q(key)} is an array of arrays, which GGUF readers do not support")
        dtype = _ARRAY_DTYPE.get(itype)
        if dtype is None:
            raise GGUFError(f"metadata key {_q(key)} is an array of unknown value type {itype}")
        self._check_count(key, n, dtype.itemsize)
        a = np.frombuffer(self.buf, dtype=dtype, count=n, offset=self.pos).copy()
        self.pos += n * dtype.itemsize
        return a != 0 if itype == GGUFValueType.BOOL else a

    def string_array(self, key: str, n: int) -> list[str]:
        self._check_count(key, n, 8)  # each string is at least its u64 length
        # One tight pass: lengths are sequential, so this walk cannot be vectorized,
        # but it makes no object per element other than the final str.
        buf, end, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        out: list[str] = []
        append = out.append
        for i in range(n):
            if end - pos < 8:
                raise GGUFError(
                    f"truncated: metadata key {_q(key)} element {i} at byte {pos} runs past the end ({end} bytes)"
                )
            (ln,) = unpack(buf, pos)
            pos += 8
            if ln > end - pos:
                raise GGUFError(
                    f"truncated: metadata key {_q(key)} element {i} at byte {pos} declares {ln} bytes"
                    f" but the file has {end}"
                )
            append(str(buf[pos : pos + ln], "utf-8", "replace"))
            pos += ln
        self.pos = pos
        return out

    def _check_count(self, key: str, n: int, itemsize: int) -> None:
        if n * itemsize > self.size - self.pos:
            raise GGUFError(f"metadata key {_q(key)} declares {n} elements, more than the file could hold")


class GGUFFile:
    """A parsed GGUF header over a read-only memory map of the whole file."""

    def __init__(self, path):
        self.path = str(path)
        # np.memmap refuses an empty file; to us an empty file is just truncated.
        empty = os.path.getsize(self.path) == 0
        self._map = np.zeros(0, np.uint8) if empty else np.memmap(self.path, dtype=np.uint8, mode="r")
        cur = _Cursor(memoryview(self._map))

        cur.need(4, "magic")
        magic = bytes(cur.buf[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"not a GGUF file (magic {magic!r})")
        cur.pos = 4
        self.version = cur.u32("version")
        if self.version not in SUPPORTED_VERSIONS:
            if int.from_bytes(self.version.to_bytes(4, "little"), "big") in SUPPORTED_VERSIONS:
                raise GGUFError("big-endian GGUF files are not supported")
            raise GGUFError(f"unsupported GGUF version {self.version}")
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata key count")
        left = cur.size - cur.pos
        if n_kv * MIN_KV_BYTES > left:
            raise GGUFError(f"header declares {n_kv} metadata keys, more than the file could hold")
        if n_tensors * MIN_TENSOR_INFO_BYTES > left:
            raise GGUFError(f"header declares {n_tensors} tensors, more than the file could hold")

        self.metadata: dict[str, Any] = {}
        vtypes: dict[str, int] = {}
        for i in range(n_kv):
            key = cur.name(f"metadata key #{i}")
            if key in self.metadata:
                raise GGUFError(f"metadata key {_q(key)} appears twice")
            vtypes[key] = cur.u32(f"metadata key {_q(key)} type")
            self.metadata[key] = cur.value(vtypes[key], key)

        self.alignment = self._alignment(vtypes.get("general.alignment"))
        self._check_arch_limits()

        infos = [self._read_tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = -(-cur.pos // self.alignment) * self.alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, ttype, shape, rel, nbytes, n_elements in infos:
            if name in self.tensors:
                raise GGUFError(f"tensor {_q(name)} appears twice")
            if rel % self.alignment:
                raise GGUFError(
                    f"tensor {_q(name)} data offset {rel} is not a multiple of the alignment {self.alignment}"
                )
            offset = self.data_offset + rel
            if offset + nbytes > cur.size:
                raise GGUFError(
                    f"truncated: tensor {_q(name)} data ends at byte {offset + nbytes} but the file has {cur.size}"
                )
            self.tensors[name] = TensorInfo(name, ttype, shape, offset, nbytes, n_elements)

    # --- metadata -------------------------------------------------------------

    @property
    def arch(self) -> str | None:
        return self.metadata.get("general.architecture")

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_get(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    # --- tensors --------------------------------------------------------------

    def tensor_bytes(self, name: str) -> np.ndarray:
        """The tensor's raw bytes: a zero-copy, read-only uint8 view into the map."""
        t = self.tensors[name]
        return self._map[t.offset : t.offset + t.nbytes].view(np.ndarray)

    def __repr__(self) -> str:
        return (
            f"GGUFFile({self.path!r}, v{self.version}, arch={self.arch!r},"
            f" {len(self.metadata)} keys, {len(self.tensors)} tensors)"
        )

    # --- checks ---------------------------------------------------------------

    def _alignment(self, vtype: int | None) -> int:
        if vtype is None:
            return DEFAULT_ALIGNMENT
        a = self.metadata["general.alignment"]
        if vtype != GGUFValueType.UINT32 or a == 0 or a & (a - 1):
            raise GGUFError(f"general.alignment must be a power of two stored as uint32, got {_describe(a)}")
        return a

    def _check_arch_limits(self) -> None:
        arch = self.metadata.get("general.architecture")
        if arch is None:
            return
        if not isinstance(arch, str):
            raise GGUFError(f"general.architecture must be a string, got {_describe(arch)}")
        for suffix, limit in ARCH_LIMITS.items():
            key = f"{arch}.{suffix}"
            v = self.metadata.get(key)
            if v is None:
                continue
            values = v if isinstance(v, np.ndarray) else np.array([v])
            if values.dtype.kind not in "iu":
                raise GGUFError(f"metadata key {_q(key)} must be an integer, got {_describe(v)}")
            if values.size and (values.min() < 0 or values.max() > limit):
                bad = values.min() if values.min() < 0 else values.max()
                raise GGUFError(f"metadata key {_q(key)} declares {bad}, outside 0..{limit}")
        # llama.cpp asserts these (GGML_ASSERT, a process abort) in load_hparams.
        n_expert = self.arch_get("expert_count", 0)
        n_used = self.arch_get("expert_used_count", 0)
        if isinstance(n_expert, int) and isinstance(n_used, int):
            if n_used > n_expert or (n_expert > 0 and n_used == 0):
                raise GGUFError(f"{_q(arch)} declares {n_used} experts used per token out of {n_expert}")

    def _read_tensor_info(self, cur: _Cursor, i: int) -> tuple:
        name = cur.name(f"tensor #{i} name")
        if len(name.encode()) >= MAX_NAME:
            raise GGUFError(
                f"tensor #{i} name {_q(name)} is {len(name.encode())} bytes, llama.cpp allows at most {MAX_NAME - 1}"
            )
        n_dims = cur.u32(f"tensor {_q(name)} n_dims")
        if n_dims > MAX_DIMS:
            raise GGUFError(f"tensor {_q(name)} has {n_dims} dimensions, more than {MAX_DIMS}")
        shape = tuple(cur.u64(f"tensor {_q(name)} dimension {d}") for d in range(n_dims))
        n_elements = 1
        for ne in shape:
            n_elements *= ne
        if any(ne > INT64_MAX for ne in shape) or n_elements > INT64_MAX:
            raise GGUFError(f"tensor {_q(name)} has shape {shape}, whose element count overflows int64")
        raw_type = cur.u32(f"tensor {_q(name)} type")
        try:
            ttype = GGMLQuantizationType(raw_type)
        except ValueError:
            raise GGUFError(f"tensor {_q(name)} has unknown ggml type {raw_type}") from None
        block_size, type_size = GGML_QUANT_SIZES[ttype]
        row = shape[0] if shape else 1
        if row % block_size:
            raise GGUFError(
                f"tensor {_q(name)} rows have {row} elements, not a multiple of the {ttype.name} block size {block_size}"
            )
        rel = cur.u64(f"tensor {_q(name)} offset")
        return name, ttype, shape, rel, n_elements // block_size * type_size, n_elements


def _q(name: str) -> str:
    """A key or tensor name for an error message: quoted, escaped, one short line."""
    return repr(name if len(name) <= 80 else name[:80] + "...")


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.size} {value.dtype}"
    if isinstance(value, list):
        return f"an array of {len(value)} strings"
    return _q(value) if isinstance(value, str) else repr(value)

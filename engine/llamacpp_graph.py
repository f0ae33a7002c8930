"""llama.cpp's intermediate tensors, captured through the context's eval callback.

ggml's backend scheduler calls `cb_eval(tensor, ask, user_data)` for every node of the
graph: first with ask=True ("do you want this one?"), then, for the nodes we said yes
to, with ask=False once the node has been computed, when its data can be read. This
module opens a llama.cpp context with the low-level API (flash attention off, so the
graph has `kq`, `kq_soft_max` and `kqv_out` nodes), decodes batches, and hands back the
captured tensors as numpy arrays in llama.cpp's own names (`attn_norm-0`, `Qcur-0`,
`kq_soft_max-0`, `l_out-29`, `result_output`, ...). The same name can label several
nodes (`Qcur-0` is the matmul, then its reshape, then the RoPE), so each capture keeps
the op that produced it too.

    g = LlamaGraph(path)
    out = g.decode(ids, select=lambda name, op: name.startswith("Qcur-0"))
    for c in out.captures: print(c.name, c.op, c.array.shape)

Arrays come in numpy order, i.e. ggml's ne reversed: a `[n_embd, n_tokens]` ggml tensor
is `(n_tokens, n_embd)` here. F32, F16, I32 are read; other types are skipped.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10  # ggml.h of the ggml bundled with llama-cpp-python 0.3.36 (libggml 0.25.x)
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64


class ggml_tensor(ctypes.Structure):
    """struct ggml_tensor, as include/ggml.h of the bundled ggml declares it."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


# ggml_type -> numpy dtype of one element (block types are not read).
_DTYPES = {0: np.float32, 1: np.float16, 24: np.int8, 25: np.int16, 26: np.int32, 27: np.int64, 28: np.float64}
GGML_TYPE_BF16 = 30

Select = Callable[[str, str], bool]  # (tensor name, op name) -> capture it?


@dataclass
class Capture:
    name: str
    op: str  # ggml_op_desc: "MUL_MAT", "ROPE", "SOFT_MAX", "RMS_NORM", "MUL", "ADD", "GLU", "CPY", "VIEW", ...
    type: str  # "f32" / "f16" / ...
    array: np.ndarray  # numpy order (ggml ne reversed), a copy
    srcs: list[str] = field(default_factory=list)  # names of the node's inputs


@dataclass
class DecodeResult:
    logits: np.ndarray  # (n_outputs, n_vocab), one row per token whose logits were asked for
    captures: list[Capture]

    def get(self, name: str, op: str | None = None) -> np.ndarray:
        """The last capture of `name` (made by `op`, when given)."""
        for c in reversed(self.captures):
            if c.name == name and (op is None or c.op == op):
                return c.array
        raise KeyError(f"{name} ({op or 'any op'}) was not captured")

    def names(self) -> list[tuple[str, str]]:
        return [(c.name, c.op) for c in self.captures]


def _ggml_lib():
    import llama_cpp._ggml as g

    lib = g.libggml
    for fn in ("ggml_op_desc",):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    # ggml_tensor_overhead() = sizeof(struct ggml_object) (32) + sizeof(struct ggml_tensor): a
    # different ggml whose struct grew or shrank is refused rather than misread.
    if lib.ggml_tensor_overhead() != 32 + ctypes.sizeof(ggml_tensor):
        raise RuntimeError(
            f"the bundled ggml's struct ggml_tensor is not the one this module declares "
            f"({lib.ggml_tensor_overhead() - 32} bytes, not {ctypes.sizeof(ggml_tensor)})"
        )
    return lib


def read_tensor(t: ggml_tensor) -> np.ndarray | None:
    """A numpy copy of a host tensor's data, walking its nb strides (views included)."""
    bf16 = t.type == GGML_TYPE_BF16
    dtype = np.uint16 if bf16 else _DTYPES.get(t.type)
    if dtype is None or not t.data:
        return None
    ne = [int(t.ne[i]) for i in range(GGML_MAX_DIMS)]
    nb = [int(t.nb[i]) for i in range(GGML_MAX_DIMS)]
    if any(n == 0 for n in ne):
        return np.zeros(ne[::-1], dtype=dtype)
    itemsize = np.dtype(dtype).itemsize
    span = sum((n - 1) * s for n, s in zip(ne, nb)) + itemsize
    raw = (ctypes.c_char * span).from_address(t.data)
    arr = np.ndarray(shape=tuple(ne[::-1]), dtype=dtype, buffer=raw, offset=0, strides=tuple(nb[::-1]))
    if bf16:  # the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.array(arr, copy=True)


class LlamaGraph:
    """One llama.cpp model + context, opened with the eval callback installed."""

    def __init__(self, path: str, n_ctx: int = 512, n_threads: int = 2, n_batch: int = 512, n_ubatch: int = 512,
                 verbose: bool = False):
        import llama_cpp as L
        from llama_cpp._logger import set_verbose

        self.L = L
        self._ggml = _ggml_lib()
        set_verbose(verbose)  # what llama_cpp.Llama(verbose=...) does: llama.cpp's log goes through it
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

        self._select: Select | None = None
        self._captures: list[Capture] = []
        self._cb = L.ggml_backend_sched_eval_callback(self._callback)  # held: C keeps only the pointer

        cparams = L.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_DISABLED  # keeps kq / kq_soft_max in the graph
        cparams.cb_eval = self._cb
        cparams.cb_eval_user_data = None
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_ctx = n_ctx
        self.n_past = 0

    # -- tokens ------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        L = self.L
        if add_bos is None:
            add_bos = bool(L.llama_vocab_get_add_bos(self.vocab))
        data = text.encode("utf-8")
        buf = (L.llama_token * (len(data) + 8))()
        n = L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), add_bos, special)
        if n < 0:
            raise RuntimeError("tokenize failed")
        return list(buf[:n])

    # -- the callback -------------------------------------------------------------

    def _callback(self, t_ptr, ask, _user):
        try:
            t = ggml_tensor.from_address(t_ptr)
            name = t.name.decode("utf-8", "replace")
            op = self._ggml.ggml_op_desc(t_ptr).decode()
            if ask:
                return bool(self._select is not None and self._select(name, op))
            arr = read_tensor(t)
            if arr is not None:
                srcs = []
                for s in t.src:
                    if s:
                        srcs.append(ggml_tensor.from_address(s).name.decode("utf-8", "replace"))
                self._captures.append(Capture(name, op, self._ggml.ggml_type_name(t.type).decode(), arr, srcs))
        except Exception as e:  # an exception must not cross into C
            print(f"llamacpp_graph callback error: {e!r}")
        return True

    # -- decoding ------------------------------------------------------------------

    def reset(self) -> None:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def decode(self, tokens: list[int], select: Select | None = None, logits: str = "last", pos: int | None = None) -> DecodeResult:
        """Decode `tokens` at positions pos.. (default: after what was decoded so far) as one
        batch; logits="last" asks for the last token's logits only (what a generation loop
        does), "all" for every token's (what llama_cpp.Llama(logits_all=True) does)."""
        L = self.L
        n = len(tokens)
        if pos is None:
            pos = self.n_past
        batch = L.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits == "all" or i == n - 1
            self._select, self._captures = select, []
            rc = L.llama_decode(self.ctx, batch)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            n_out = n if logits == "all" else 1
            ptr = L.llama_get_logits(self.ctx)
            out = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab).copy()
            self.n_past = pos + n
            return DecodeResult(out, self._captures)
        finally:
            self._select, self._captures = None, []
            L.llama_batch_free(batch)

    def close(self) -> None:
        L = self.L
        if getattr(self, "ctx", None):
            L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            L.llama_model_free(self.model)
            self.model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def select_names(*names: str, ops: tuple[str, ...] | None = None) -> Select:
    """A selector for exact tensor names (and, optionally, only these ops)."""
    wanted = set(names)
    return lambda name, op: name in wanted and (ops is None or op in ops)


def select_layer(layer: int, ops: tuple[str, ...] | None = None) -> Select:
    """Every named node of one layer (`...-<layer>`)."""
    suffix = f"-{layer}"
    return lambda name, op: name.endswith(suffix) and (ops is None or op in ops)

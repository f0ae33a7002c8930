"""llama.cpp's intermediate tensors, captured through the context's eval callback.

ggml's backend scheduler calls `cb_eval(tensor, ask, user_data)` for every node of the
graph: first with ask=True ("do you want this one?"), then, for the nodes we said yes
to, with ask=False once the node has been computed, when its data can be read. Every
yes ends a sub-graph (the scheduler computes up to that node, synchronizes, calls back),
so asking for few nodes is what keeps a captured run fast. This module opens a llama.cpp
model and context with the low-level API, decodes batches, and routes both phases to an
*observer* (`ask(node) -> bool`, `computed(node)`): the engine's stop mapper
(engine/llamacpp_engine.py), or, for `decode(select=...)`, a recorder that hands back the
captured tensors as numpy arrays in llama.cpp's own names (`attn_norm-0`, `Qcur-0`,
`kq_soft_max-0`, `l_out-29`, `result_output`, ...). The same name can label several
nodes (`Qcur-0` is the matmul, then its reshape, then the RoPE), so each capture keeps
the op that produced it too.

    g = LlamaGraph(path)
    out = g.decode(ids, select=lambda name, op: name.startswith("Qcur-0"))
    for c in out.captures: print(c.name, c.op, c.array.shape)

Flash attention is off unless asked for (`flash_attn=True`): only without it does the graph
have `kq` and `kq_soft_max`, the attention weights.

Arrays come in numpy order, i.e. ggml's ne reversed: a `[n_embd, n_tokens]` ggml tensor
is `(1, 1, n_tokens, n_embd)` here. F32, F16, BF16, I32, I64 are read; block types are skipped.
A node is a raw address (int); `node_name`, `node_op` and `node_src` read one field of it
without building a ctypes structure, since the ask phase runs for every node of every step.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

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


_LIB = None


def _ggml_lib():
    """libggml with the signatures this module calls, checked once against our struct."""
    global _LIB
    if _LIB is not None:
        return _LIB
    import llama_cpp._ggml as g

    lib = g.libggml
    for fn in ("ggml_op_desc",):
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
        getattr(lib, fn).restype = ctypes.c_char_p
    lib.ggml_type_name.argtypes = [ctypes.c_int]
    lib.ggml_type_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    # ggml_tensor_overhead() = sizeof(struct ggml_object) (32) + sizeof(struct ggml_tensor): a
    # different ggml whose struct grew or shrank is refused rather than misread.
    if lib.ggml_tensor_overhead() != 32 + ctypes.sizeof(ggml_tensor):
        raise RuntimeError(
            f"the bundled ggml's struct ggml_tensor is not the one this module declares "
            f"({lib.ggml_tensor_overhead() - 32} bytes, not {ctypes.sizeof(ggml_tensor)})"
        )
    _LIB = lib
    return lib


# Node fields by address: one ctypes call each, no structure built.
_NAME_AT = ggml_tensor.name.offset
_OP_AT = ggml_tensor.op.offset
_SRC_AT = ggml_tensor.src.offset
_PTR = ctypes.sizeof(ctypes.c_void_p)
_OP_NAMES: dict[int, str] = {}


def node_name(node: int) -> bytes:
    return ctypes.string_at(node + _NAME_AT)


def node_op(node: int) -> str:
    """ggml_op_name of the node's op ("MUL_MAT", "ROPE", "SET_ROWS", ...; "UNARY"/"GLU" for those)."""
    op = ctypes.c_int.from_address(node + _OP_AT).value
    name = _OP_NAMES.get(op)
    if name is None:
        name = _OP_NAMES[op] = _ggml_lib().ggml_op_name(op).decode()
    return name


def node_src(node: int, i: int) -> int:
    """The address of the node's i-th input (0: none)."""
    return ctypes.c_void_p.from_address(node + _SRC_AT + i * _PTR).value or 0


def node_shape(node: int) -> tuple[int, ...]:
    """ggml's ne, in numpy order (reversed)."""
    t = ggml_tensor.from_address(node)
    return tuple(int(n) for n in reversed(t.ne))


def read_node(node: int) -> np.ndarray | None:
    """A numpy copy of the node's data."""
    return read_tensor(ggml_tensor.from_address(node))


def view_node(node: int) -> np.ndarray | None:
    """The node's data with no copy where it lies in host memory: valid only inside the callback
    that computed it (ggml reuses the memory for later nodes)."""
    return read_tensor(ggml_tensor.from_address(node), copy=False)


def read_tensor(t: ggml_tensor, copy: bool = True) -> np.ndarray | None:
    """The tensor's data as a numpy array, walking its nb strides (views included): a copy, or
    with copy=False a view of host memory. A device buffer (CUDA) is copied down first."""
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
    lib = _ggml_lib()
    if not t.buffer or lib.ggml_backend_buffer_is_host(t.buffer):
        raw = (ctypes.c_char * span).from_address(t.data)
    else:
        raw = ctypes.create_string_buffer(span)
        lib.ggml_backend_tensor_get(ctypes.addressof(t), raw, 0, span)
    arr = np.ndarray(shape=tuple(ne[::-1]), dtype=dtype, buffer=raw, offset=0, strides=tuple(nb[::-1]))
    if bf16:  # the top half of a float32
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return np.array(arr, copy=True) if copy else arr


class Observer(Protocol):
    """What the eval callback reports to. `ask` runs for every node before it is computed;
    `computed` for each node `ask` said yes to, once its data can be read."""

    def ask(self, node: int) -> bool: ...

    def computed(self, node: int) -> None: ...


class Recorder:
    """The observer behind `LlamaGraph.decode(select=...)`: copy every selected node."""

    def __init__(self, select: Select):
        self.select = select
        self.captures: list[Capture] = []
        self._lib = _ggml_lib()

    def ask(self, node: int) -> bool:
        return self.select(node_name(node).decode("utf-8", "replace"), self._lib.ggml_op_desc(node).decode())

    def computed(self, node: int) -> None:
        t = ggml_tensor.from_address(node)
        arr = read_tensor(t)
        if arr is None:
            return
        srcs = [node_name(s).decode("utf-8", "replace") for s in t.src if s]
        self.captures.append(Capture(node_name(node).decode("utf-8", "replace"), self._lib.ggml_op_desc(node).decode(),
                                     self._lib.ggml_type_name(t.type).decode(), arr, srcs))


class LlamaGraph:
    """One llama.cpp model + context, opened with the eval callback installed.

    `callback=False` opens it without one (the scheduler then computes each graph in one go:
    the baseline bench/llamacpp_capture.py measures against). `n_gpu_layers` offloads layers
    to a GPU build's device (-1: all)."""

    def __init__(self, path: str, n_ctx: int = 512, n_threads: int = 2, n_batch: int = 512, n_ubatch: int = 512,
                 verbose: bool = False, flash_attn: bool = False, callback: bool = True, n_gpu_layers: int = 0):
        import llama_cpp as L
        from llama_cpp._logger import set_verbose

        self.L = L
        self._ggml = _ggml_lib()
        set_verbose(verbose)  # what llama_cpp.Llama(verbose=...) does: llama.cpp's log goes through it
        L.llama_backend_init()
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        self.model = L.llama_model_load_from_file(path.encode(), mparams)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(self.vocab)

        self.observer: Observer | None = None
        self.error: BaseException | None = None  # raised by the observer inside the callback
        # Time inside the callback while an observer watches, and its calls, so far: the hook cost of
        # the llama.cpp engine (engine/hooks.py HookBus.callback_cost). Two clock reads a call.
        self.callback_ns = 0
        self.callback_calls = 0
        self._cb = L.ggml_backend_sched_eval_callback(self._callback)  # held: C keeps only the pointer
        self.callback = callback
        self.flash_attn = flash_attn
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.ctx = None
        self._open_context(n_batch, n_ubatch)
        self.n_past = 0

    def _open_context(self, n_batch: int, n_ubatch: int) -> None:
        L = self.L
        if self.ctx:
            L.llama_free(self.ctx)
            self.ctx = None
        cparams = L.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_ubatch
        cparams.n_threads = self.n_threads
        cparams.n_threads_batch = self.n_threads
        # Off: the graph keeps kq / kq_soft_max (the attention weights); on: one fused node.
        cparams.flash_attn_type = (L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn
                                   else L.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        if self.callback:
            cparams.cb_eval = self._cb
            cparams.cb_eval_user_data = None
        self.ctx = L.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            raise RuntimeError("llama.cpp could not create a context")
        self.n_batch, self.n_ubatch = n_batch, n_ubatch

    def fit_batch(self, n_tokens: int) -> None:
        """Make `n_tokens` one micro-batch (one graph, so each node is seen once), reopening the
        context with a larger n_ubatch if need be. The KV cache starts empty again."""
        if n_tokens > self.n_ubatch:
            size = -(-n_tokens // 256) * 256
            self._open_context(size, size)
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

    def _callback(self, node, ask, _user):
        if self.error is not None or self.observer is None:
            return not ask  # asked: no; computed: go on
        t = time.perf_counter_ns()
        try:
            if ask:
                return bool(self.observer.ask(node))
            self.observer.computed(node)
        except BaseException as e:
            # An exception must not cross into C (a RunCancelled from a paused controller, a
            # listener's error): keep it, let the graph finish unobserved, raise it after.
            self.error = e
            return False
        finally:
            self.callback_ns += time.perf_counter_ns() - t
            self.callback_calls += 1
        return True

    # -- decoding ------------------------------------------------------------------

    def reset(self) -> None:
        L = self.L
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        self.n_past = 0

    def decode(self, tokens: list[int], select: Select | None = None, logits: str = "last", pos: int | None = None) -> DecodeResult:
        """Decode `tokens` at positions pos.. (default: after what was decoded so far) as one
        batch; logits="last" asks for the last token's logits only (what a generation loop
        does), "all" for every token's (what llama_cpp.Llama(logits_all=True) does).
        `select` records the nodes it picks (in place of the observer, for this call)."""
        L = self.L
        n = len(tokens)
        if pos is None:
            pos = self.n_past
        recorder = Recorder(select) if select is not None else None
        saved = self.observer
        if recorder is not None:
            self.observer = recorder
        batch = L.llama_batch_init(n, 0, 1)
        try:
            batch.n_tokens = n
            for i, tok in enumerate(tokens):
                batch.token[i] = tok
                batch.pos[i] = pos + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = logits == "all" or i == n - 1
            self.error = None
            rc = L.llama_decode(self.ctx, batch)
            if self.error is not None:
                error, self.error = self.error, None
                raise error
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
            n_out = n if logits == "all" else 1
            ptr = L.llama_get_logits(self.ctx)
            out = np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,)).reshape(n_out, self.n_vocab).copy()
            self.n_past = pos + n
            return DecodeResult(out, recorder.captures if recorder is not None else [])
        finally:
            self.observer = saved
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

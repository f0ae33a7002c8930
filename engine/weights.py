"""A model's weights from a GGUF: dequantized once, on the target device, in the target dtype.

Dequantizing is most of what opening a model costs (SmolLM2-135M: ~1-2 s, Gemma 3 270M:
~4 s on 2 cores, most of it the 262k-row embedding), so `Weights` does it in a background
thread and the app opens at once. The thread goes in the order the forward pass reads
the weights (the embedding, then layer 0's, layer 1's, ..., then the output), so by the
time a forward needs a weight it is usually there; when it is not, the forward waits for
it, and the thread takes that weight next. Each weight is dequantized exactly once, and
what the forward gets is the same tensor `load_weights` would give (tests/test_weights.py).

How they are laid out is decode's business: on the CPU in float32 the wide matrices are stored
K-major, and each layer's q, k, v (and gate, up) side by side in one K-major block that the model
multiplies at once (`k_major`, `SHARED_INPUT`): the same values and shapes, other strides.

Also here: turning `--device` / `--dtype` into torch's objects, with a one-line error for a
name this machine cannot run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from engine.gguf_file import GGUFFile
from engine.model_file import weight_table  # noqa: F401 (torch-free; imported from here too)
from engine.quants import UnsupportedQuant, block_layout, dequantize


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class DeviceError(ValueError):
    """A device or dtype this machine cannot run the engine on."""


def device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """`cpu` / `cuda` / `cuda:N` and a DTYPES name -> torch's objects, or one line saying why not."""
    if dtype not in DTYPES:
        raise DeviceError(f"unknown dtype {dtype!r} (one of {', '.join(DTYPES)})")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise DeviceError(f"unknown device {device!r} (cpu, cuda or cuda:N)")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {device} asked for, but torch sees no CUDA device")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"no CUDA device {index} (torch sees {torch.cuda.device_count()})")
    return torch.device(device), DTYPES[dtype]


def check_weights(gguf: GGUFFile) -> None:
    """Refuse a file we could not dequantize now, before any work goes to the background:
    an unsupported type or rows that are not whole blocks fail here, with one line."""
    for name, info in gguf.tensors.items():
        layout = block_layout(info.type)
        if layout["fields"] is None:
            raise UnsupportedQuant(f"no dequantizer for {info.type.name} in tensor '{name}'")
        if info.shape and info.shape[0] % layout["block_size"]:
            raise UnsupportedQuant(f"{info.type.name} rows of {info.shape[0]} elements in tensor '{name}' "
                                   f"are not whole blocks of {layout['block_size']}")


def k_major(name: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a weight matrix is stored K-major (its transpose contiguous) rather than row-major.

    Decode is a matrix-vector product per weight, bound by how fast the weight streams from
    memory. On the CPU in float32, torch's x @ W.T runs up to twice as fast for a wide matrix
    (more outputs than inputs: the LM head, ffn_up, ffn_gate) when W.T is the contiguous one
    (SmolLM2's 49152x576 output matrix, 1 thread: 24 GB/s against 11.7 GB/s), and some 15%
    slower for a narrow or square one (ffn_down, attn_q); in bfloat16 it is several times slower
    (bench/engine.py measures the engine both ways: --layout). The values and the shape
    [n_out, n_in] are the same either way, only the strides differ. Not for deepseek2's
    attn_kv_b, which the model views per head (engine/models/deepseek2.py b_matrices)."""
    return (device.type == "cpu" and dtype == torch.float32 and len(shape) == 2 and shape[0] > shape[1]
            and not name.endswith("attn_kv_b.weight"))


# Matrices of a layer that multiply the same input: stored side by side in one K-major block, so the
# model can run each group as one matmul (Numerics.linears). Names as in the GGUF, after "blk.N.".
SHARED_INPUT = (("attn_q", "attn_k", "attn_v"), ("ffn_gate", "ffn_up"))


def weight_groups(gguf: GGUFFile, device, dtype: torch.dtype) -> dict[str, tuple[str, ...]]:
    """name -> the names dequantized with it, one tuple per unit of work: a SHARED_INPUT group stored
    in one K-major block where that layout applies (every member a matrix of the same width), else
    the name alone."""
    device = torch.device(device)
    units = {name: (name,) for name in gguf.tensors}
    for name in gguf.tensors:
        for group in SHARED_INPUT:
            suffix = group[0] + ".weight"
            if not (name.startswith("blk.") and name.endswith("." + suffix)):
                continue
            prefix = name[: -len(suffix)]
            members = tuple(prefix + m + ".weight" for m in group)
            shapes = [gguf.tensors[m].shape if m in gguf.tensors else () for m in members]  # ggml order: n_in first
            if any(len(sh) != 2 or sh[0] != shapes[0][0] for sh in shapes):
                continue
            if k_major(name, (sum(sh[1] for sh in shapes), shapes[0][0]), device, dtype):
                for m in members:
                    units[m] = members
    return units


def dequantize_weight(gguf: GGUFFile, name: str, device, dtype: torch.dtype, layout: bool = True) -> torch.Tensor:
    info = gguf.tensors[name]
    # A copy: the mmap is read-only and torch wants writable memory; it is dropped once dequantized.
    raw = torch.from_numpy(np.array(gguf.tensor_bytes(name)))
    w = dequantize(raw.to(device), info.type, info.shape, device=device, dtype=dtype, name=name)
    if layout and k_major(name, tuple(w.shape), w.device, w.dtype):
        w = w.t().contiguous().t()
    return w


def dequantize_unit(gguf: GGUFFile, names: tuple[str, ...], device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A unit of `weight_groups`: one weight, or a group side by side in one K-major block [n_in, sum n_out],
    each member the view of its rows (the same values and shape as alone; strides (1, sum n_out))."""
    if len(names) == 1:
        return {names[0]: dequantize_weight(gguf, names[0], device, dtype)}
    parts = [dequantize_weight(gguf, name, device, dtype, layout=False) for name in names]
    block = torch.empty(parts[0].shape[1], sum(len(w) for w in parts), device=device, dtype=dtype)
    out, row = {}, 0
    for name, w in zip(names, parts):
        block[:, row:row + len(w)] = w.t()
        out[name] = block.t()[row:row + len(w)]
        row += len(w)
    return out


def load_weights(gguf: GGUFFile, device="cpu", dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Every weight, dequantized now (what `Weights` computes, without the thread)."""
    weights: dict[str, torch.Tensor] = {}
    for name, unit in weight_groups(gguf, device, dtype).items():
        if name not in weights:
            weights.update(dequantize_unit(gguf, unit, device, dtype))
    return {name: weights[name] for name in gguf.tensors}


def forward_order(names: list[str], n_layer: int) -> list[str]:
    """The order a forward pass reads the weights in: the embedding, each layer's (in file
    order within the layer), then whatever is left (the output norm and matrix)."""
    first = [n for n in ("token_embd.weight",) if n in names]
    layers = []
    for il in range(n_layer):
        prefix = f"blk.{il}."  # how the models name a layer's weights
        layers += [n for n in names if n.startswith(prefix)]
    placed = set(first) | set(layers)
    return first + layers + [n for n in names if n not in placed]


class Weights(Mapping):
    """name -> weight, read by the models like a dict; a weight not dequantized yet is
    waited for. Thread-safe: the loader thread and any reader share one condition."""

    def __init__(self, gguf: GGUFFile, device="cpu", dtype=torch.float32, n_layer: int = 0,
                 background: bool = True, threads: int | None = None):
        self.gguf, self.device, self.dtype = gguf, torch.device(device), dtype
        self.order = forward_order(list(gguf.tensors), n_layer)
        self._units = weight_groups(gguf, self.device, dtype)  # name -> the names dequantized with it
        self._names = frozenset(self.order)
        self._ready: dict[str, torch.Tensor] = {}
        self._busy: set[str] = set()  # being dequantized right now
        self._wanted: list[str] = []  # a reader is waiting on these: the loader takes them first
        self._next = 0  # position in self.order
        self._error: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        # The loader keeps to the cores the app and the forward pass are not using: on a
        # 2-core machine, one. (torch's thread count is per thread, so this is the loader's
        # alone; two OpenMP teams on two cores slow each other down several times over.)
        self._threads = threads or max(1, (os.cpu_count() or 2) - 1)
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._load, name="weights", daemon=True)
            self._thread.start()

    # -- Mapping ------------------------------------------------------------------------

    def __getitem__(self, name: str) -> torch.Tensor:
        w = self._ready.get(name)
        if w is not None:
            return w
        if name not in self._names:
            raise KeyError(name)
        return self._wait(name)

    def get(self, name: str, default=None):
        return self[name] if name in self._names else default  # no KeyError raised and caught per call

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    # -- progress -------------------------------------------------------------------------

    @property
    def n_ready(self) -> int:
        return len(self._ready)

    def ready(self) -> bool:
        return len(self._ready) == len(self.order)

    def wait_all(self) -> None:
        """Block until every weight is dequantized (a benchmark's start line)."""
        for name in self.order:
            self[name]

    def close(self) -> None:
        """Stop the loader after the weight in hand; readers then dequantize what they need."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the work -------------------------------------------------------------------------

    def _wait(self, name: str) -> torch.Tensor:
        with self._cond:
            while True:
                w = self._ready.get(name)
                if w is not None:
                    return w
                if self._error is not None:
                    raise RuntimeError(f"dequantizing the weights failed: {self._error}") from self._error
                loader = self._thread is not None and self._thread.is_alive() and not self._closed
                if name not in self._busy:
                    if not loader:
                        self._busy.update(self._units[name])  # nobody else will: dequantize it here
                        break
                    if name not in self._wanted:
                        self._wanted.append(name)
                        self._cond.notify_all()
                self._cond.wait(timeout=1.0)  # the flags above are re-read on every wake-up
        return self._finish(name)

    def _finish(self, name: str) -> torch.Tensor:
        """Dequantize `name` and the names of its unit (all marked busy by the caller)."""
        unit = self._units[name]
        try:
            ws = dequantize_unit(self.gguf, unit, self.device, self.dtype)
        except BaseException as e:
            with self._cond:
                self._busy.difference_update(unit)
                self._error = e
                self._cond.notify_all()
            raise
        with self._cond:
            self._ready.update(ws)
            self._busy.difference_update(unit)
            self._cond.notify_all()
        return ws[name]

    def _claim(self) -> str | None:
        """The next weight for the loader: one a reader waits on, else the next in order."""
        with self._cond:
            if self._closed or self._error is not None:
                return None
            while self._wanted:
                name = self._wanted.pop(0)
                if name not in self._ready and name not in self._busy:
                    self._busy.update(self._units[name])
                    return name
            while self._next < len(self.order):
                name = self.order[self._next]
                self._next += 1
                if name not in self._ready and name not in self._busy:
                    self._busy.update(self._units[name])
                    return name
            return None

    def _load(self) -> None:
        torch.set_num_threads(self._threads)
        while (name := self._claim()) is not None:
            try:
                self._finish(name)
            except BaseException:
                return  # kept in self._error: the reader that needs a weight raises it
        with self._cond:
            self._cond.notify_all()  # readers waiting on a loader that stopped take over

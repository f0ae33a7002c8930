"""The decode step as one CUDA graph, for runs nobody listens to.

A decode step of a small model on a GPU is launch-bound: ~15 kernels a layer, each a few
microseconds of Python and driver time, while the GPU's share is shorter still. A CUDA graph
records the step's kernels once and replays them with one launch (gpt-fast's
`decode_one_token` under torch.compile's "reduce-overhead" does the same). A graph replays
fixed memory addresses and shapes, so the step is written with static shapes
(`StaticDecode`): the token and its position live in device buffers that each step fills,
the RoPE angles are gathered from a table by the position, the mask spans every cell of the
KV cache, and the cache is written at the position tensor (engine/models/step.py). The same
forward pass runs it (engine/models/llama.py); only its inputs are built another way.

When it runs (`decode_path`): the torch engine on CUDA, a decode step (one token), nobody
listening (`bus.enabled` is False: a graph emits no stops), numerics that ask the host nothing
in the step (`GRAPH_NUMERICS`: `exact`, `llamacpp-fast`), and an architecture that declares `static_decode` (the llama
family without experts; Gemma 3's per-layer windows and DeepSeek2's MLA cache stay eager, and
a MoE layer picks its experts on the host). `TorchEngine.decode_graph` overrides: "off" never,
"static" the static-shape step without a graph on any device and any numerics but the
bit-exact `llamacpp` (how the CPU tests check it).
A step that fails to capture (an op that waits for the host) falls back to eager for the run
and says why in `TorchEngine.graph_status`.
"""

from __future__ import annotations

import torch

from engine.kv_cache import KVCache
from engine.models.step import StepInputs

# The numerics whose decode step never reads a value back to the host, which a graph cannot
# capture (tests/test_cuda_graph.py checks): not the bit-exact `llamacpp`, whose integer kernels
# run on the CPU alone.
GRAPH_NUMERICS = ("exact", "llamacpp-fast")
MIN_CELLS = 256  # runs up to this many tokens share one graph; longer ones round up to a power of two


def graph_cells(n_tokens: int, n_ctx: int) -> int:
    """The cells a static cache gets for a run of `n_tokens`: rounded up, so runs of similar length
    share a captured graph, but never past the context. (Each step attends over all of them.)"""
    cells = MIN_CELLS
    while cells < n_tokens:
        cells *= 2
    return min(cells, n_ctx)


def decode_path(mode: str, device: torch.device, model, numerics: str, bus_enabled: bool, n_tokens: int) -> str:
    """How a step runs: "graph" (static shapes, captured), "static" (static shapes, eager) or "eager"."""
    if mode not in ("auto", "static", "off"):
        raise ValueError(f"unknown decode_graph {mode!r} (auto, static or off)")
    if (mode == "off" or n_tokens != 1 or bus_enabled or numerics == "llamacpp"
            or not getattr(model, "static_decode", False)):
        return "eager"
    if mode == "static":
        return "static"
    return "graph" if device.type == "cuda" and numerics in GRAPH_NUMERICS else "eager"


class StaticDecode:
    """One decode token with shapes that never change, run eagerly; `CudaGraphDecode` replays it."""

    def __init__(self, model, cache: KVCache):
        self.model, self.cache = model, cache
        self.n_cells = cache.make_static()
        device = cache.k.device
        self.token = torch.zeros(1, dtype=torch.long, device=device)  # the inputs' static buffers
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        self.cos_table, self.sin_table = model.rope_cos_sin(torch.arange(self.n_cells, device=device))
        self.cells = torch.arange(self.n_cells, device=device)
        self.mask = torch.zeros(1, self.n_cells, device=device)

    def restart(self) -> None:
        """A new run: the cache is empty again (its memory, which a graph refers to, stays)."""
        self.cache.free()
        self.cache.make_static()

    def inputs(self) -> StepInputs:
        """The step's inputs, every one computed on the device from `self.pos`."""
        positions = self.pos  # (1,)
        # Query at `pos` sees cells 0..pos; the cells past it (zeros, or an earlier run's) are masked.
        self.mask.zero_().masked_fill_(self.cells[None, :] > positions[:, None], float("-inf"))  # (1, n_cells)
        return StepInputs(positions, self.cos_table[positions], self.sin_table[positions], self.mask, pos=None)

    def forward(self, step: int) -> torch.Tensor:
        return self.model.forward(self.token, self.inputs(), self.cache, step)

    def __call__(self, token: int, pos: int, step: int) -> torch.Tensor:
        """Logits [n_vocab] of `token` at position `pos` (the prefill went through the same cache)."""
        if pos >= self.n_cells:
            raise ValueError(f"position {pos} is past the static cache's {self.n_cells} cells")
        self.token.fill_(token)  # a fill with a host scalar: no copy from the host, no wait
        self.pos.fill_(pos)
        logits = self.forward(step)
        self.cache.mark_written(pos + 1)
        return logits


class CudaGraphDecode(StaticDecode):
    """`StaticDecode`, captured into a CUDA graph at its first step and replayed after."""

    WARMUP = 2  # eager runs on a side stream before capture (cuBLAS picks its kernels, allocator settles)

    def __init__(self, model, cache: KVCache):
        super().__init__(model, cache)
        self.graph = None
        self.logits = None  # the graph's output buffer

    def forward(self, step: int) -> torch.Tensor:
        if self.graph is None:
            # Capturing at a real step is safe: every run (the warm-ups, the capture, the replay) writes
            # the same k, v into cell `pos`, computed from cells 0..pos-1, which none of them changes.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP):
                    super().forward(step)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.logits = super().forward(step)
            self.graph = graph
        self.graph.replay()
        return self.logits

"""The llama.cpp engine: the model runs in llama.cpp (llama-cpp-python's low-level API), and its
graph's nodes become the same events the torch engine emits, so every view, the recorder,
replay and diff work unchanged.

What differs from engine/torch_engine.py is only where the numbers come from:

* the prompt is tokenized by llama.cpp (llama_tokenize); our tokenizer runs beside it for the
  tokenize stop's splits and merges, and the event says whether the two agree;
* the layer stops come from the context's eval callback (engine/llamacpp_stops.py maps the
  nodes); they are emitted inside llama_decode, so a breakpoint pauses llama.cpp itself;
* the logits are llama.cpp's (llama_get_logits), handed to the same sampler chain.

The GGUF header is read and checked by engine/gguf_file.py before llama.cpp opens the file,
so a hostile header fails with our error, not inside C.
"""

from __future__ import annotations

import os
import time
from typing import Iterator, Sequence

import torch

from engine.hooks import HookBus
from engine.llamacpp_graph import LlamaGraph
from engine.llamacpp_stops import StopCapture
from engine.model_file import ModelFile
from engine.sampler import SamplerParams
from engine.stream import StepResult, TextStream, release
from engine.tokenizer import _quiet_llama_cpp
from engine.torch_engine import NumericalError


class LlamaCppError(ValueError):
    """llama.cpp cannot run this request (a device its build lacks, a file it will not load)."""


class _LlamaTokenizer:
    """llama_tokenize behind the interface engine.tokenizer.cross_check expects."""

    def __init__(self, graph: LlamaGraph):
        self.graph = graph

    def ids(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return self.graph.tokenize(text, add_bos=add_special, special=parse_special)


def _versions() -> dict:
    import llama_cpp

    return {
        "llama_cpp_python": llama_cpp.__version__,
        "llama_cpp": llama_cpp.llama_version().decode(),
        "system_info": llama_cpp.llama_print_system_info().decode().strip(" |"),
    }


class LlamaCppEngine(ModelFile):
    """A ModelFile (header, tokenizer, prompt stops, trace info) whose forward pass is llama.cpp's."""

    name = "llama.cpp"
    grammar = None  # handed to the sampler, as TorchEngine.grammar

    def __init__(self, path: str, n_ctx: int = 0, bus: HookBus | None = None, threads: int | None = None,
                 device: str = "cpu", attn_weights: bool = True, graph_stops: bool = True):
        """`attn_weights`: keep the attention weights in the graph, which needs flash attention off
        (with it on, llama.cpp fuses K·Q, softmax and ·V into one node and the weights never exist).
        `graph_stops=False` installs no eval callback: only the stops outside llama_decode (text,
        tokenize, batch, logits, sample, stop, stream) are seen, at llama.cpp's full speed -- the
        baseline bench/llamacpp_capture.py measures the capture against."""
        import llama_cpp

        if device not in ("cpu", "cuda"):
            raise LlamaCppError(f"unknown device {device!r} for llama.cpp (cpu, cuda)")
        if device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
            raise LlamaCppError("this llama-cpp-python was built without GPU support: rebuild it with "
                                "CMAKE_ARGS=\"-DGGML_CUDA=on\" pip install llama-cpp-python==0.3.36 (README)")
        if threads is not None and threads < 1:
            raise LlamaCppError(f"--threads must be at least 1, not {threads}")
        super().__init__(path, n_ctx=n_ctx, bus=bus)  # the header is checked here, before llama.cpp reads the file
        clock = time.perf_counter()
        self.device = device
        self.threads = threads or os.cpu_count() or 1
        self.flash_attn = not attn_weights
        try:
            with _quiet_llama_cpp():  # its loader's warnings would land under the UI
                self.graph = LlamaGraph(path, n_ctx=self.n_ctx, n_threads=self.threads, n_batch=512, n_ubatch=512,
                                        flash_attn=self.flash_attn, n_gpu_layers=-1 if device == "cuda" else 0,
                                        callback=graph_stops)
        except RuntimeError as e:
            raise LlamaCppError(str(e)) from None
        self._reference = _LlamaTokenizer(self.graph)  # ModelFile.encode's reference: llama_tokenize
        self.capture = StopCapture(self.bus, self.args, self.flash_attn, self.n_ctx, weights=self.gguf.tensors)
        self.graph.observer = self.capture
        self.load_s["llama.cpp"] = time.perf_counter() - clock

    # The prompt's ids are llama.cpp's (ModelFile.encode's reference tokenizer, whose ids win); the
    # tokenize event always carries the comparison with ours (`reference_ids`, `agrees`).
    @property
    def check_tokenizer(self) -> bool:
        return True

    @check_tokenizer.setter
    def check_tokenizer(self, value: bool) -> None:
        pass  # --check-tokenizer changes nothing here: llama.cpp always tokenizes

    def info(self, prompt: str, n_predict: int, sampler: SamplerParams | None = None,
             stop: Sequence[str] = ()) -> dict:
        """The trace's self-description (ModelFile.info) with this engine's section."""
        return super().info(prompt, n_predict, sampler, stop, engine=self.describe_engine())

    def describe_engine(self) -> dict:
        why = ("on: attention weights not captured (llama.cpp fuses the attention into one node)" if self.flash_attn
               else "off: the attention weights are captured (kq_soft_max exists only without flash attention)")
        return {
            "name": self.name,
            "device": self.device,
            "dtype": "float32",  # activations; the KV cache is f16, the weights as in the file
            "threads": self.threads,
            "numerics": "llama.cpp",
            "flash_attn": self.flash_attn,
            "flash_attn_why": why,
            "kv_cache": "f16 cells; kv_write: block_size 1, a block is a cell",
            **_versions(),
        }

    def sampler(self, params: SamplerParams):
        """llama.cpp's own sampler stages, one llama_sampler each (engine/llamacpp_sampler.py), with
        engine.sampler.Sampler's contract: the same logits and sample events, the draw."""
        from engine.llamacpp_sampler import LlamaCppSampler

        return LlamaCppSampler(params, grammar=self.grammar)

    def generate(self, prompt: str, n_predict: int = 32, sampler: SamplerParams | None = None,
                 stop: Sequence[str] = (), ids: list[int] | None = None) -> Iterator[StepResult]:
        """Prefill, then one step per token until EOS, a `stop` string or `n_predict` tokens, as
        TorchEngine.generate (`ids`: the prompt already encoded); each step is one llama_decode."""
        bus, tok, graph = self.bus, self.tokenizer, self.graph
        bus.start_step()
        ids = self.prompt_ids(prompt, n_predict, ids)
        with _quiet_llama_cpp():
            graph.fit_batch(len(ids))  # the prompt in one micro-batch: each stop once per step
        graph.reset()
        self.capture.reset()
        if self.grammar is not None:
            self.grammar.reset()  # each run starts at the grammar's root
        chain = self.sampler(sampler or SamplerParams.greedy())
        stream = TextStream(stop)
        history = list(ids)
        pos, inputs = 0, ids
        for step in range(n_predict):
            if step:
                bus.start_step()
            if bus.wants("batch"):
                bus.emit("batch", step, ids=list(inputs), positions=list(range(pos, pos + len(inputs))),
                         kind="prefill" if step == 0 else "decode")
            every_row = step == 0 and len(inputs) > 1 and self.capture.needs_all_rows()
            self.capture.begin(step, pos, len(inputs))
            # The eval callback's time outside the emits inside it is this engine's hook cost (engine/hooks.py).
            marks = (graph.callback_ns, graph.callback_calls, bus.emitted_ns)
            out = graph.decode(inputs, logits="all" if every_row else "last", pos=pos)
            bus.callback_cost(step, graph.callback_ns - marks[0] - (bus.emitted_ns - marks[2]),
                              graph.callback_calls - marks[1])
            logits = torch.from_numpy(out.logits[-1])
            if not bool(torch.isfinite(logits).all()):
                raise NumericalError(f"llama.cpp's logits at step {step} are not finite")
            pos += len(inputs)
            token = chain.sample(logits, history, step, bus)
            history.append(token)
            result = release(bus, tok, stream, step, token, last=step == n_predict - 1)
            bus.end_step()  # the step's hook cost goes to the listeners
            yield result
            if result.stop:
                return
            inputs = [token]

    def close(self) -> None:
        graph = getattr(self, "graph", None)
        if graph is not None:
            with _quiet_llama_cpp():  # llama_free reports its buffer sizes on stderr
                graph.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

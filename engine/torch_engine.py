"""The torch engine: open a GGUF, run prefill and decode, emit every stop on the hook bus.

`generate` is a generator that yields one `StepResult` per step (mlx-lm's shape), so a
caller can stop, pause or inspect between tokens; inside a step, the hook bus is where
a debugger gets in. What needs no torch (header, tokenizer, the text and tokenize stops, the
trace's info) is engine/model_file.py's `ModelFile`, which `TorchEngine` extends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from engine.cuda_graph import CudaGraphDecode, StaticDecode, decode_path, graph_cells
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.model_file import ModelFile, vocab_pieces  # noqa: F401 (vocab_pieces: engine/llamacpp_engine.py)
from engine.models import model_class
from engine.numerics import Numerics
from engine.sampler import Sampler, SamplerParams
from engine.stream import StepResult, TextStream, release  # noqa: F401 (StepResult: re-exported)

if TYPE_CHECKING:
    from engine.grammar import Grammar
from engine.weights import Weights, check_weights, device_and_dtype, load_weights


class NumericalError(ValueError):
    """The forward pass produced inf or NaN (a dtype too narrow for the model's activations)."""


class TorchEngine(ModelFile):
    name = "torch"
    kv_block_size: int = 16  # tokens per KV-cache block (engine/kv_cache.py)
    grammar: "Grammar | None" = None  # constrains the draws (engine/grammar.py); the CLI's --grammar / --json-schema
    # Decode steps nobody listens to, on CUDA, replay one CUDA graph (engine/cuda_graph.py): "auto";
    # "off": always eager; "static": the graph's static-shape step run eagerly, on any device.
    decode_graph: str = "auto"

    def __init__(
        self,
        path: str | ModelFile,
        device: str = "cpu",
        dtype: str = "float32",
        n_ctx: int = 0,
        numerics: str = "llamacpp",
        bus: HookBus | None = None,
        background_load: bool = True,
    ):
        """`path`: a .gguf, or a `ModelFile` already open (the CLI reads one while torch imports),
        whose header, tokenizer, bus and chat settings the engine takes over (`n_ctx` is then its).
        `background_load`: dequantize the weights in a thread, in the order the forward
        reads them, so the engine is ready at once (engine/weights.py); False loads them all now."""
        self.device, self.dtype = device_and_dtype(device, dtype)  # a bad name fails before the file is read
        self.dtype_name = dtype
        if isinstance(path, ModelFile):
            vars(self).update(vars(path))
            self.load_s = dict(path.load_s)
            self.bus = bus or path.bus
        else:  # an unsupported architecture is refused before anything else is read
            super().__init__(path, n_ctx=n_ctx, bus=bus, check_arch=model_class)
        cls = model_class(self.gguf.arch)
        clock = time.perf_counter()
        self.bus.on_device(self.device)  # a GPU's stops are timed by CUDA events (engine/cuda_timing.py)
        # `llamacpp` follows ggml's summation order only in float32 on the CPU; elsewhere it
        # would compute `llamacpp-fast` anyway (engine/numerics.py), so that is what runs and
        # what the trace records, beside what was asked for.
        self.numerics_requested = numerics
        if numerics == "llamacpp" and (self.device.type != "cpu" or self.dtype != torch.float32):
            numerics = "llamacpp-fast"
        # The raw blocks let `llamacpp` numerics run ggml's integer dot products (K-quants, Q5_0, Q8_0).
        self.numerics = Numerics(numerics, {name: t.type for name, t in self.gguf.tensors.items()},
                                 blocks=self.gguf.tensor_bytes)
        check_weights(self.gguf)  # an unsupported quant type fails now, not in the loader thread
        if background_load:
            weights = Weights(self.gguf, self.device, self.dtype, n_layer=self.args.n_layer)
        else:
            weights = load_weights(self.gguf, device=self.device, dtype=self.dtype)
        self.weights = weights
        self.model = cls(self.args, weights, self.numerics, self.bus)
        self._decoder: StaticDecode | None = None  # the static decode step and its cache, kept between runs
        self.graph_status = ""  # why decode steps ran eagerly on a GPU when they could have replayed a graph
        self.load_s["weights"] = time.perf_counter() - clock  # the rest of the constructor

    def info(self, prompt: str, n_predict: int, sampler: SamplerParams | None = None,
             stop: Sequence[str] = ()) -> dict:
        """The trace's self-description (ModelFile.info) with this engine's section."""
        return super().info(prompt, n_predict, sampler, stop, engine=self.describe_engine())

    def describe_engine(self) -> dict:
        """The trace info's `engine` section."""
        return {
            "name": self.name,
            "device": str(self.device),
            "dtype": self.dtype_name,
            "threads": torch.get_num_threads(),
            "numerics": self.numerics.mode,  # what ran: see the constructor
            "numerics_requested": self.numerics_requested,
            "torch": torch.__version__,
        }

    @torch.inference_mode()
    def generate(self, prompt: str, n_predict: int = 32, sampler: SamplerParams | None = None,
                 stop: Sequence[str] = (), ids: list[int] | None = None) -> Iterator[StepResult]:
        """Prefill, then one step per token until EOS, a `stop` string or `n_predict` tokens.
        `sampler` defaults to greedy (llama.cpp's chain at temperature 0). `ids`: the prompt
        already encoded, its text and tokenize stops emitted (`encode`), as the CLI does while
        torch imports; else `generate` encodes `prompt` first."""
        bus, tok = self.bus, self.tokenizer
        bus.start_step()
        ids = self.prompt_ids(prompt, n_predict, ids)
        # A paged cache whose pool holds what this run can reach (prompt + n_predict), not the whole context.
        # (A model may bring its own kind: deepseek2's holds one MLA latent row per token.)
        decoder = self.static_decoder(len(ids) + n_predict)
        if decoder is not None:  # its cache: every cell reserved, so a step can replay the same graph
            cache = decoder.cache
        else:
            cache_class = getattr(self.model, "cache_class", KVCache)
            cache = cache_class(self.args.n_layer, self.n_ctx, self.args.n_head_kv, self.args.head_dim, self.device,
                                self.dtype, block_size=self.kv_block_size, windows=self.args.sliding_window,
                                max_tokens=len(ids) + n_predict)
        if self.grammar is not None:
            self.grammar.reset()  # each run starts at the grammar's root
        chain = Sampler(sampler or SamplerParams.greedy(), grammar=self.grammar)
        stream = TextStream(stop)
        history = list(ids)  # what the penalties look back over: the prompt, then each drawn token
        pos, inputs = 0, ids
        try:
            for step in range(n_predict):
                if step:
                    bus.start_step()
                tokens = torch.tensor(inputs, dtype=torch.long, device=self.device)
                if bus.wants("batch"):
                    bus.emit("batch", step, ids=list(inputs), positions=list(range(pos, pos + len(inputs))),
                             kind="prefill" if step == 0 else "decode")
                if decoder is not None and decoder is self._decoder and self.decode_path(len(inputs)) != "eager":
                    logits = self.decode_static(decoder, inputs[0], pos, step).float()
                else:
                    logits = self.model.forward(tokens, pos, cache, step).float()
                if not bool(torch.isfinite(logits).all()):
                    raise NumericalError(
                        f"the logits at step {step} are not finite: the model overflowed {self.dtype_name}"
                        + (" (float16 tops out at 65504; try --dtype bfloat16)" if self.dtype_name == "float16" else ""))
                pos += len(inputs)
                token = chain.sample(logits, history, step, bus)
                history.append(token)
                result = release(bus, tok, stream, step, token, last=step == n_predict - 1)
                bus.end_step()  # a GPU step's events get their times (engine/hooks.py)
                yield result
                if result.stop:
                    return
                inputs = [token]
        finally:
            bus.flush()  # events a background thread still holds reach the listeners (engine/hooks.py)

    # -- the static decode step (engine/cuda_graph.py) -------------------------------------------

    def decode_path(self, n_tokens: int) -> str:
        """How a step of `n_tokens` runs now: "graph", "static" or "eager" (a listener makes it eager)."""
        return decode_path(self.decode_graph, self.device, self.model, self.numerics.mode, self.bus.enabled, n_tokens)

    def static_decoder(self, n_tokens: int) -> StaticDecode | None:
        """The static decode step for a run of `n_tokens`, its cache emptied; None when its decode steps
        run eagerly. A run that starts with a listener keeps the paged cache, whose kv_write events show
        blocks taken as positions grow; a listener that turns up later makes the steps after it eager."""
        if self.decode_path(1) == "eager":
            return None
        if self.graph_status.startswith("eager"):
            return None  # capture failed once on this engine: it would fail again
        cells = graph_cells(n_tokens, self.n_ctx)
        kind = CudaGraphDecode if self.decode_graph == "auto" else StaticDecode
        if self._decoder is None or self._decoder.n_cells != cells or type(self._decoder) is not kind:
            self._decoder = None  # the old graph and cache go before the new ones are allocated
            wait_all = getattr(self.weights, "wait_all", None)
            if wait_all:
                wait_all()  # a graph refers to every weight; the loader thread must be done
            cache = KVCache(self.args.n_layer, self.n_ctx, self.args.n_head_kv, self.args.head_dim, self.device,
                            self.dtype, block_size=self.kv_block_size, max_tokens=cells)
            self._decoder = kind(self.model, cache)
        else:
            self._decoder.restart()
        return self._decoder

    def decode_static(self, decoder: StaticDecode, token: int, pos: int, step: int) -> torch.Tensor:
        """One decode step through the static decoder; a graph that fails to capture leaves the run eager."""
        try:
            logits = decoder(token, pos, step)
        except RuntimeError as e:
            if not isinstance(decoder, CudaGraphDecode) or decoder.graph is not None:
                raise
            self.graph_status = f"eager: the decode step could not be captured ({str(e).splitlines()[0]})"
            self._decoder = None
            return self.model.forward(torch.tensor([token], device=self.device), pos, decoder.cache, step)
        self.graph_status = "graph" if isinstance(decoder, CudaGraphDecode) else "static"
        return logits

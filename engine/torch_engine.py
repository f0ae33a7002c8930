"""The torch engine: open a GGUF, run prefill and decode, emit every stop on the hook bus.

`generate` is a generator that yields one `StepResult` per step (mlx-lm's shape), so a
caller can stop, pause or inspect between tokens; inside a step, the hook bus is where
a debugger gets in.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from engine.config import ModelArgs
from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.models import model_class
from engine.numerics import Numerics
from engine.sampler import Sampler, SamplerParams
from engine.stream import TextStream
from engine.tokenizer import ReferenceTokenizer, Tokenizer, cross_check
from engine.weights import Weights, check_weights, device_and_dtype, load_weights, weight_table


@dataclass
class StepResult:
    step: int
    token: int
    text: str  # newly released text (may be "" while a UTF-8 character is incomplete)
    stop: str | None  # on the last step: "eos", "stop" (a stop string) or "length"; else None


def vocab_pieces(tok: Tokenizer) -> list[str]:
    """Every token's display text (Tokenizer.token_text) for the trace. Most pieces are whole
    UTF-8 and decode in one go; only the rest take token_text's byte-by-byte path (Gemma 3's
    262k pieces: ~0.1 s instead of ~1 s, on the way to the app's first paint)."""
    pieces = []
    for i in range(tok.n_vocab):
        try:
            pieces.append(tok.tokens[i] if tok.is_special(i) else tok.piece_bytes(i).decode())
        except UnicodeDecodeError:
            pieces.append(tok.token_text(i))
    return pieces


class NumericalError(ValueError):
    """The forward pass produced inf or NaN (a dtype too narrow for the model's activations)."""


class TorchEngine:
    name = "torch"
    # How `encode` reads the prompt. chat: None = as it is; "" = through the GGUF's chat
    # template; else a built-in template name or a .jinja path (engine/chat.py).
    # check_tokenizer: also tokenize with llama.cpp (loaded on first use); its ids win.
    chat: str | None = None
    check_tokenizer: bool = False
    kv_block_size: int = 16  # tokens per KV-cache block (engine/kv_cache.py)
    _reference: ReferenceTokenizer | None = None

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        n_ctx: int = 0,
        numerics: str = "llamacpp",
        bus: HookBus | None = None,
        background_load: bool = True,
    ):
        """`background_load`: dequantize the weights in a thread, in the order the forward
        reads them, so the engine is ready at once (engine/weights.py); False loads them all now."""
        self.path = path
        self.device, self.dtype = device_and_dtype(device, dtype)  # a bad name fails before the file is read
        self.dtype_name = dtype
        clock = time.perf_counter()
        self.load_s: dict[str, float] = {}  # seconds per phase of opening the model (bench/startup.py)
        self.gguf = GGUFFile(path)
        cls = model_class(self.gguf.arch)  # refuse an unsupported architecture before reading anything else
        self.load_s["gguf"], clock = time.perf_counter() - clock, time.perf_counter()
        self.args = ModelArgs.from_metadata(self.gguf.metadata)
        self.load_s["args"], clock = time.perf_counter() - clock, time.perf_counter()
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        self.load_s["tokenizer"], clock = time.perf_counter() - clock, time.perf_counter()
        self.bus = bus or HookBus()
        self.n_ctx = n_ctx or min(self.args.n_ctx_train, 4096)
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
        self.load_s["weights"] = time.perf_counter() - clock  # the rest of the constructor

    def info(self, prompt: str, n_predict: int, sampler: SamplerParams | None = None,
             stop: Sequence[str] = ()) -> dict:
        """The trace's self-description: enough to replay the run with no model file.

        Pass the `sampler` and `stop` that `generate` will get, with a concrete seed
        (`SamplerParams.with_seed`), so the trace records what the run used."""
        tok = self.tokenizer
        return {
            "model": {
                **self.args.describe(),
                "file": os.path.basename(self.path),
                "file_size": os.path.getsize(self.path),
                "weights": weight_table(self.gguf),
            },
            "vocab": {
                "model": self.gguf.get("tokenizer.ggml.model", ""),  # gpt2 = byte-level BPE, llama = SentencePiece
                "pieces": vocab_pieces(tok),
                "special": [i for i in range(tok.n_vocab) if tok.is_special(i)],
                "bos": tok.bos_id,
                "eos": sorted(tok.eos_ids),
            },
            "engine": {
                "name": self.name,
                "device": str(self.device),
                "dtype": self.dtype_name,
                "threads": torch.get_num_threads(),
                "numerics": self.numerics.mode,  # what ran: see the constructor
                "numerics_requested": self.numerics_requested,
                "torch": torch.__version__,
            },
            "prompt": prompt,
            "chat_template": self.chat,
            "n_predict": n_predict,
            "n_ctx": self.n_ctx,
            "sampler": {**(sampler or SamplerParams.greedy()).describe(), "stop": list(stop)},
        }

    def encode(self, prompt: str) -> list[int]:
        """The prompt's token ids. With `chat`, the prompt is one user turn rendered by the
        chat template, whose special-token text becomes special tokens. With
        `check_tokenizer`, llama.cpp tokenizes the same text; if it disagrees, its ids run."""
        from engine.chat import chat_prompt

        bus, tok = self.bus, self.tokenizer
        text = prompt if self.chat is None else chat_prompt(self.gguf.metadata, tok, prompt, self.chat or None)
        if bus.wants("text"):
            data = text.encode("utf-8")
            bus.emit("text", 0, tensors={"bytes": np.frombuffer(data, dtype=np.uint8)}, text=text, n_bytes=len(data),
                     prompt=prompt, chat=self.chat is not None, chat_template=self.chat or "")
        enc = tok.encode(text) if self.chat is None else tok.encode_chat(text)
        ids, check = enc.ids, {}
        if self.check_tokenizer:
            if self._reference is None:
                self._reference = ReferenceTokenizer(self.path)
            result = cross_check(enc, self._reference)
            ids, check = result.ids, {"reference_ids": result.reference_ids, "agrees": result.agrees}
            if not result.agrees:
                check["our_ids"] = enc.ids
        if bus.wants("tokenize"):
            bus.emit(
                "tokenize", 0,
                tensors={"ids": np.array(ids, dtype=np.int32)},
                ids=ids, pieces=[tok.tokens[i] for i in ids], splits=enc.splits,
                merges=[list(m) for m in enc.merges], **check,
            )
        return ids

    @torch.inference_mode()
    def generate(self, prompt: str, n_predict: int = 32, sampler: SamplerParams | None = None,
                 stop: Sequence[str] = ()) -> Iterator[StepResult]:
        """Prefill, then one step per token until EOS, a `stop` string or `n_predict` tokens.
        `sampler` defaults to greedy (llama.cpp's chain at temperature 0)."""
        bus, tok = self.bus, self.tokenizer
        bus.start_step()
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        if len(ids) + n_predict > self.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) plus {n_predict} to generate exceed the context of {self.n_ctx}")
        # A paged cache whose pool holds what this run can reach (prompt + n_predict), not the whole context.
        cache = KVCache(self.args.n_layer, self.n_ctx, self.args.n_head_kv, self.args.head_dim, self.device, self.dtype,
                        block_size=self.kv_block_size, windows=self.args.sliding_window, max_tokens=len(ids) + n_predict)
        chain = Sampler(sampler or SamplerParams.greedy())
        stream = TextStream(stop)
        history = list(ids)  # what the penalties look back over: the prompt, then each drawn token
        pos, inputs = 0, ids
        for step in range(n_predict):
            if step:
                bus.start_step()
            tokens = torch.tensor(inputs, dtype=torch.long, device=self.device)
            if bus.wants("batch"):
                bus.emit("batch", step, ids=list(inputs), positions=list(range(pos, pos + len(inputs))),
                         kind="prefill" if step == 0 else "decode")
            logits = self.model.forward(tokens, pos, cache, step).float()
            if not bool(torch.isfinite(logits).all()):
                raise NumericalError(
                    f"the logits at step {step} are not finite: the model overflowed {self.dtype_name}"
                    + (" (float16 tops out at 65504; try --dtype bfloat16)" if self.dtype_name == "float16" else ""))
            pos += len(inputs)
            token = chain.sample(logits, history, step, bus)
            history.append(token)
            if bus.wants("sample"):
                bus.emit("sample", step, token=token, piece=tok.token_text(token))
            eos = token in tok.eos_ids
            text = "" if eos else stream.push(tok.piece_bytes(token))
            finished = ("eos" if eos else "stop" if stream.matched is not None
                        else "length" if step == n_predict - 1 else None)
            if finished in ("eos", "length"):
                text += stream.flush()  # what was held back cannot become a stop string now
            if bus.wants("stop"):
                bus.emit("stop", step, eos=eos, reason=finished or "", matched=stream.matched or "",
                         held=stream.stops.held, partial=stream.stops.partial)
            if bus.wants("stream"):
                bus.emit("stream", step, text=text, held=stream.held.hex(), held_stop=stream.stops.held)
            yield StepResult(step, token, text, finished)
            if finished:
                return
            inputs = [token]

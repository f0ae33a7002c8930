"""The torch engine: open a GGUF, run prefill and decode, emit every stop on the hook bus.

`generate` is a generator that yields one `StepResult` per step (mlx-lm's shape), so a
caller can stop, pause or inspect between tokens; inside a step, the hook bus is where
a debugger gets in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from engine.config import ModelArgs
from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.kv_cache import KVCache
from engine.models import model_class
from engine.numerics import Numerics
from engine.sampler import greedy
from engine.stream import TextStream
from engine.tokenizer import Tokenizer
from engine.weights import load_weights, weight_table

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class StepResult:
    step: int
    token: int
    text: str  # newly released text (may be "" while a UTF-8 character is incomplete)
    stop: str | None  # "eos" or "length" on the last step, else None


class TorchEngine:
    name = "torch"

    def __init__(
        self,
        path: str,
        device: str = "cpu",
        dtype: str = "float32",
        n_ctx: int = 0,
        numerics: str = "llamacpp",
        bus: HookBus | None = None,
    ):
        self.path = path
        self.gguf = GGUFFile(path)
        cls = model_class(self.gguf.arch)  # refuse an unsupported architecture before reading anything else
        self.args = ModelArgs.from_metadata(self.gguf.metadata)
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        self.device = torch.device(device)
        self.dtype_name = dtype
        self.dtype = DTYPES[dtype]
        self.bus = bus or HookBus()
        self.n_ctx = n_ctx or min(self.args.n_ctx_train, 4096)
        self.numerics = Numerics(numerics, {name: t.type for name, t in self.gguf.tensors.items()})
        weights = load_weights(self.gguf, device=self.device, dtype=self.dtype)
        self.model = cls(self.args, weights, self.numerics, self.bus)

    def info(self, prompt: str, n_predict: int) -> dict:
        """The trace's self-description: enough to replay the run with no model file."""
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
                "pieces": [tok.token_text(i) for i in range(tok.n_vocab)],
                "special": [i for i in range(tok.n_vocab) if tok.is_special(i)],
                "bos": tok.bos_id,
                "eos": sorted(tok.eos_ids),
            },
            "engine": {
                "name": self.name,
                "device": str(self.device),
                "dtype": self.dtype_name,
                "threads": torch.get_num_threads(),
                "numerics": self.numerics.mode,
                "torch": torch.__version__,
            },
            "prompt": prompt,
            "n_predict": n_predict,
            "n_ctx": self.n_ctx,
            "sampler": {"kind": "greedy", "temp": 0.0},
        }

    def encode(self, prompt: str) -> list[int]:
        bus = self.bus
        if bus.wants("text"):
            data = prompt.encode("utf-8")
            bus.emit("text", 0, tensors={"bytes": np.frombuffer(data, dtype=np.uint8)}, text=prompt, n_bytes=len(data))
        enc = self.tokenizer.encode(prompt)
        if bus.wants("tokenize"):
            bus.emit(
                "tokenize", 0,
                tensors={"ids": np.array(enc.ids, dtype=np.int32)},
                ids=enc.ids, pieces=enc.pieces, splits=enc.splits,
                merges=[list(m) for m in enc.merges],
            )
        return enc.ids

    @torch.inference_mode()
    def generate(self, prompt: str, n_predict: int = 32) -> Iterator[StepResult]:
        bus, tok = self.bus, self.tokenizer
        bus.start_step()
        ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        if len(ids) + n_predict > self.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) plus {n_predict} to generate exceed the context of {self.n_ctx}")
        # The cache holds what this run can reach, not the whole context: no time spent zeroing unused cells.
        n_cells = len(ids) + n_predict
        cache = KVCache(self.args.n_layer, n_cells, self.args.n_head_kv, self.args.head_dim, self.device, self.dtype)
        stream = TextStream()
        pos, inputs = 0, ids
        for step in range(n_predict):
            if step:
                bus.start_step()
            tokens = torch.tensor(inputs, dtype=torch.long, device=self.device)
            if bus.wants("batch"):
                bus.emit("batch", step, ids=list(inputs), positions=list(range(pos, pos + len(inputs))),
                         kind="prefill" if step == 0 else "decode")
            logits = self.model.forward(tokens, pos, cache, step).float()
            pos += len(inputs)
            token = greedy(logits, step, bus)
            if bus.wants("sample"):
                bus.emit("sample", step, token=token, piece=tok.token_text(token))
            finished = "eos" if token in tok.eos_ids else ("length" if step == n_predict - 1 else None)
            if bus.wants("stop"):
                bus.emit("stop", step, eos=token in tok.eos_ids, reason=finished or "")
            text = "" if token in tok.eos_ids else stream.push(tok.piece_bytes(token))
            if finished:
                text += stream.flush()
            if bus.wants("stream"):
                bus.emit("stream", step, text=text, held=stream.held.hex())
            yield StepResult(step, token, text, finished)
            if finished:
                return
            inputs = [token]

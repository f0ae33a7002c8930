"""A GGUF model as far as it is known before any weight is read, with no torch imported.

The header, `ModelArgs`, the tokenizer, the prompt's text and tokenize stops (C01, C03) and
the trace's self-description come from the file alone. `TorchEngine` is a `ModelFile` plus
weights and a forward pass; the CLI opens a `ModelFile` first and paints the tokens view
while torch (~2 s on 2 cores) imports in the engine's thread (inspector/commands/run.py,
bench/startup.py).

    model = ModelFile(path)
    ids = model.encode("hello")          # emits `text` and `tokenize` on model.bus
    info = model.info("hello", 32, engine={"name": "torch", ...})
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Callable, Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES

from engine.config import ModelArgs, UnsupportedModel
from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.sampler import SamplerParams
from engine.tokenizer import BYTE_TO_CHAR, NORMAL, SPACE_MARK, ReferenceTokenizer, Tokenizer, cross_check

# What the torch engine runs, named here so the CLI can tell without importing torch that a
# file will load (tests/test_model_file.py checks them against engine.models.ARCHITECTURES and
# engine.quants). A file outside them is checked by the engine itself, before the app starts.
TORCH_ARCHITECTURES = frozenset({"llama", "qwen2", "qwen3", "qwen2moe", "qwen3moe", "gemma3", "deepseek2"})
TORCH_QUANTS = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                          "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"})


class ModelFile:
    """Header, hyperparameters and tokenizer of a GGUF; encodes prompts and describes the run."""

    # How `encode` reads the prompt. chat: None = as it is; "" = through the GGUF's chat
    # template; else a built-in template name or a .jinja path (engine/chat.py).
    # check_tokenizer: also tokenize with llama.cpp (loaded on first use); its ids win.
    chat: str | None = None
    check_tokenizer: bool = False
    _reference: ReferenceTokenizer | None = None

    def __init__(self, path: str, n_ctx: int = 0, bus: HookBus | None = None,
                 check_arch: Callable[[str], object] | None = None):
        """`check_arch(arch)` raises UnsupportedModel for an architecture the caller cannot run,
        before the hyperparameters are read (whose errors would be less to the point)."""
        self.path = path
        clock = time.perf_counter()
        self.load_s: dict[str, float] = {}  # seconds per phase of opening the model (bench/startup.py)
        self.gguf = GGUFFile(path)
        if check_arch is not None:
            check_arch(self.gguf.arch)
        self.load_s["gguf"], clock = time.perf_counter() - clock, time.perf_counter()
        self.args = ModelArgs.from_metadata(self.gguf.metadata)
        self.load_s["args"], clock = time.perf_counter() - clock, time.perf_counter()
        self.tokenizer = Tokenizer.from_metadata(self.gguf.metadata)
        self.load_s["tokenizer"] = time.perf_counter() - clock
        self.bus = bus or HookBus()
        self.n_ctx = n_ctx or min(self.args.n_ctx_train, 4096)

    def torch_can_run(self) -> bool:
        """Whether the architecture and every weight type are ones the torch engine runs."""
        return self.gguf.arch in TORCH_ARCHITECTURES and all(
            t.type.name in TORCH_QUANTS for t in self.gguf.tensors.values())

    def info(self, prompt: str, n_predict: int, sampler: SamplerParams | None = None,
             stop: Sequence[str] = (), engine: dict | None = None) -> dict:
        """The trace's self-description: enough to replay the run with no model file. `engine`
        is the engine's own section (TorchEngine.info passes it).

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
            "engine": dict(engine or {}),
            "prompt": prompt,
            "chat_template": self.chat,
            "n_predict": n_predict,
            "n_ctx": self.n_ctx,
            "sampler": {**(sampler or SamplerParams.greedy()).describe(), "stop": list(stop)},
        }

    def prompt_ids(self, prompt: str, n_predict: int, ids: list[int] | None = None) -> list[int]:
        """The ids a run starts from (`ids` when the caller encoded already, else `encode(prompt)`),
        checked the same way in every engine: not empty, and room for n_predict more in the context."""
        if ids is None:
            ids = self.encode(prompt)
        if not ids:
            raise ValueError("the prompt encodes to no tokens")
        if len(ids) + n_predict > self.n_ctx:
            raise ValueError(f"prompt ({len(ids)} tokens) plus {n_predict} to generate exceed the context of {self.n_ctx}")
        return ids

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
            # `symbols`: each split's symbols before any merge, so a view can replay `merges`.
            bus.emit(
                "tokenize", 0,
                tensors={"ids": np.array(ids, dtype=np.int32)},
                ids=ids, pieces=[tok.tokens[i] for i in ids], splits=enc.splits, symbols=enc.symbols,
                merges=[list(m) for m in enc.merges], **check,
            )
        return ids


def weight_table(gguf: GGUFFile) -> dict[str, dict]:
    """Each weight's quant type and shape, for the trace (stop C18: which tensor is Q4_1, which F32)."""
    table = {}
    for name, info in gguf.tensors.items():
        block_size, type_size = GGML_QUANT_SIZES[info.type]
        table[name] = {"type": info.type.name, "shape": list(info.shape), "bits_per_weight": type_size * 8 / block_size}
    return table


_SEP = "\x00"  # joins an SPM vocabulary for the bulk path (a token holding it is caught)
_GPT2_TO_LATIN1 = {ord(c): b for b, c in enumerate(BYTE_TO_CHAR)}  # str.translate: each symbol to its byte


def vocab_pieces(tok: Tokenizer) -> list[str]:
    """Every token's display text (Tokenizer.token_text) for the trace: special tokens as they
    are, the others as the UTF-8 text of their bytes, token_text's <0xNN> where that is no whole
    character. Done on the whole vocabulary joined into one string, then the few tokens that are
    not plain (special, byte, unused, broken UTF-8) one by one: Gemma 3's 262k pieces in ~0.05 s,
    on the way to the app's first paint."""
    n, tokens = tok.n_vocab, tok.tokens
    pieces: list[str] | None = None
    if tok.model == "llama":
        pieces = _SEP.join(tokens).replace(SPACE_MARK, " ").split(_SEP)
    else:
        joined = "".join(tokens)
        if not set(joined) - set(BYTE_TO_CHAR):  # every symbol a byte's stand-in: one byte each
            data = joined.translate(_GPT2_TO_LATIN1).encode("latin-1")
            ends = list(itertools.accumulate(map(len, tokens)))
            pieces = [data[a:b].decode("utf-8", "replace") for a, b in zip([0] + ends, ends)]
    if pieces is None or len(pieces) != n:  # an SPM token holding the separator, a gpt2 one a stray symbol
        return [tok.token_text(i) for i in range(n)]
    types = np.asarray(tok.types)
    odd = set(np.flatnonzero(types != NORMAL).tolist()) | {i for i in range(n) if tok.is_special(i)}
    if tok.model == "gpt2":
        odd.update(i for i, p in enumerate(pieces) if "\ufffd" in p)  # broken UTF-8 (or a real U+FFFD)
    for i in odd:
        pieces[i] = tok.token_text(i)
    return pieces

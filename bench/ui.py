"""How long a keypress takes in the inspector on a real 30-layer trace (issue #6: "never more than ~50 ms").

    python bench/ui.py                    # record SmolLM2 traces (a short and a ~300-token prompt), then time
    python bench/ui.py --trace /tmp/ui.trace --reps 7      # time an existing trace only
    python bench/ui.py --profile a        # also cProfile the presses of key `a`, top 25 by cumulative time

Records with the CLI (`python -m inspector.cli --headless -n 16 --record ... --numerics exact PROMPT`;
the short prompt with `--chat`: without the template SmolLM2 draws EOS at once and the trace has one step),
opens the file with `traces.open` (timed), and drives the app headless with Textual's pilot:
each press is timed from `pilot.press(key)` to `pilot.pause()` returning (the screen painted and
the process idle). `pause()` waits in 20 ms slices until one passes with the CPU idle, so the wall
figure has a ~20 ms floor and 20 ms steps; the CPU figure (process time over the same span) is
the work itself. Each key is measured in the views where it means something, alternating with
its opposite so that every press changes what is shown ([ / ], l / L, h / H, ↓ / ↑), and the view
keys at a new step each repetition, so no press is served by a view's "nothing changed" check.

The machine is noisy: the last column is the ratio to a key bound to nothing (`z`), measured in
the same run, interleaved with the others. The last lines give the median and worst over every
timed press (the issue's figures), with and without the help screen.

Where a press's time went (cProfile of a stepping session, 2 cores): Textual's compositor
re-rendering widgets, not our code. The app's `selection` repainted the whole screen on every
change (now `repaint=False`: each view refreshes what it changed); Text-rendered views go
through `views/lines.TextLines` (one Strip per line, cached until the view changes); the tokens
view updates a Static only when its text changed (each update lays out the whole screen).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import traces  # noqa: E402
from inspector.app import make_app  # noqa: E402

SHORT = "Explain the theory of relativity in simple terms."
LONG = " ".join(
    ["The theory of relativity, proposed by Albert Einstein, changed how physicists think about space, "
     "time, gravity and motion."] * 12) + " Explain it in simple terms."  # ≈ 300 tokens
SIZE = (140, 40)
VIEW_KEYS = [("t", "tokens"), ("a", "attention"), ("g", "logits"), ("r", "residual"), ("v", "qkv"),
             ("k", "kv"), ("s", "sampling"), ("e", "event"), ("p", "timing")]
# Keys that move within a view, each with the key that undoes it, and the views they are timed in.
PAIRS = [("right_square_bracket", "left_square_bracket"), ("l", "L"), ("h", "H"), ("down", "up")]
HEAD_VIEWS = {"attention", "qkv"}
IDLE = "z"  # bound to nothing: the cost of a keypress through the pipeline, and of pause()


def record(path: Path, prompt: str, chat: bool) -> None:
    cmd = [sys.executable, "-m", "inspector.cli", "--headless", "-n", "16", "--record", str(path),
           "--numerics", "exact", *(["--chat"] if chat else []), prompt]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


class Timer:
    def __init__(self, pilot, profile_key: str | None) -> None:
        self.pilot = pilot
        self.rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
        self.profile_key = profile_key
        self.profiler = cProfile.Profile() if profile_key else None

    async def press(self, key: str, view: str, measure: bool = True) -> None:
        profiling = self.profiler is not None and measure and key == self.profile_key
        wall, cpu = time.perf_counter(), time.process_time()
        if profiling:
            self.profiler.enable()
        await self.pilot.press(key)
        await self.pilot.pause()
        if profiling:
            self.profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if measure:
            self.rows.setdefault((key, view), []).append((wall * 1e3, cpu * 1e3))


async def drive(trace, reps: int, timer_args) -> Timer:
    app = make_app(trace)
    steps = trace.steps
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        timer = Timer(pilot, *timer_args)
        for _ in range(5):
            await timer.press(IDLE, "-")
        # View keys: a new step each repetition, so each press draws its view afresh.
        for rep in range(reps):
            app.selection = replace(app.selection, step=steps[(rep * 5 + 1) % len(steps)], layer=rep * 7 % 30)
            await pilot.pause()
            for key, view in VIEW_KEYS:
                await timer.press(key, view)
            await timer.press(IDLE, "-")
        # Moving keys, in each view where they mean something.
        for vkey, view in VIEW_KEYS:
            await timer.press(vkey, view, measure=False)
            app.selection = replace(app.selection, step=steps[len(steps) // 2])
            await pilot.pause()
            for forward, back in PAIRS:
                if forward == "h" and view not in HEAD_VIEWS:
                    continue
                if forward == "down":  # the navigator's cursor picks a stop, and with it a view
                    await timer.press(vkey, view, measure=False)
                for _ in range(reps):
                    await timer.press(forward, view)
                    await timer.press(back, view)
                await timer.press(IDLE, "-")
        await timer.press("question_mark", "help")
        await timer.press("escape", "help")
    return timer


def report(label: str, timer: Timer) -> None:
    idle = statistics.median(w for w, _ in timer.rows[(IDLE, "-")])
    idle_cpu = statistics.median(c for _, c in timer.rows[(IDLE, "-")])
    print(f"\n{label}: trivial key `{IDLE}` median {idle:.1f} ms wall, {idle_cpu:.1f} ms cpu")
    print(f"{'key':<22}{'view':<11}{'n':>3}{'median ms':>11}{'max ms':>9}{'cpu med':>9}{'cpu max':>9}"
          f"{'× trivial':>11}")
    for (key, view), samples in timer.rows.items():
        walls, cpus = [w for w, _ in samples], [c for _, c in samples]
        med = statistics.median(walls)
        print(f"{key:<22}{view:<11}{len(samples):>3}{med:>11.1f}{max(walls):>9.1f}"
              f"{statistics.median(cpus):>9.1f}{max(cpus):>9.1f}{med / idle:>11.2f}")
    worst = max(timer.rows.items(), key=lambda kv: max(w for w, _ in kv[1]))
    print(f"slowest single press: {worst[0][0]} in {worst[0][1]}: {max(w for w, _ in worst[1]):.1f} ms")
    # The figures: every timed press (not the idle key), and without the help screen's first open.
    for name, keep in (("all presses", lambda k: k[0] != IDLE), ("all but help", lambda k: k[1] not in ("-", "help"))):
        walls = [w for k, samples in timer.rows.items() if keep(k) for w, _ in samples]
        cpus = [c for k, samples in timer.rows.items() if keep(k) for _, c in samples]
        print(f"{name}: n {len(walls)}, wall median {statistics.median(walls):.1f} ms, worst {max(walls):.1f} ms;"
              f" cpu median {statistics.median(cpus):.1f} ms, worst {max(cpus):.1f} ms")
    if timer.profiler is not None:
        out = io.StringIO()
        pstats.Stats(timer.profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="append", type=Path, help="time this trace (repeatable); no recording")
    parser.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to record (default /tmp)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile", metavar="KEY", help="cProfile the timed presses of KEY")
    args = parser.parse_args()

    paths = args.trace
    if not paths:
        paths = [args.dir / "ui.trace", args.dir / "ui_long.trace"]
        for path, prompt, chat in zip(paths, (SHORT, LONG), (True, False)):
            t = time.perf_counter()
            record(path, prompt, chat)
            print(f"recorded {path} in {time.perf_counter() - t:.1f} s")
    for path in paths:
        t = time.perf_counter()
        trace = traces.open(path)
        opened = time.perf_counter() - t
        n_prompt = len(trace.prompt_ids())
        print(f"\n{path}: {path.stat().st_size / 2**20:.1f} MiB, {len(trace.steps)} steps, {n_prompt} prompt tokens,"
              f" {trace.n_layer} layers; traces.open {opened * 1e3:.1f} ms")
        try:
            timer = asyncio.run(drive(trace, args.reps, (args.profile,)))
        finally:
            trace.close()
        report(path.name, timer)


if __name__ == "__main__":
    main()

"""How long a keypress takes to reach the screen in the inspector on real 30-layer traces (issue #6).

    python bench/ui.py                    # record two SmolLM2 traces (a short chat, a 512-token prompt), then time
    python bench/ui.py --trace /tmp/ui_long.trace          # time an existing trace only (repeatable)
    python bench/ui.py --profile a        # also cProfile the presses of key `a`, top 30 by cumulative time

Records with the CLI (`python -m inspector.cli --headless -n 16 --record ... --numerics exact PROMPT`:
the short prompt with `--chat`, since without the template SmolLM2 draws EOS at once; the long one,
512 prompt tokens, with `--capture full`, so the prefill keeps all 512 × 512 attention weights),
opens the file with `traces.open` (timed) and drives the app headless at 140 × 40.

What is measured. A press starts when the key event is handed to the app (the driver's
`send_message`, as a terminal's input thread does) and ends when the app has done the last piece
of work that press caused: the last message handled by any widget, the last idle handler, the
screen's frame-timer callback that lays out and paints, the after-paint callbacks. The paint
includes turning the compositor's update into the escape sequences a terminal would be sent
(headless Textual skips that; the bench does it, so its cost is counted). The bench waits for
50 ms of quiet before the next press, so presses never overlap, and pauses 0.8 s after each
view's stepping, as a person reading the view would: the app runs Python's full cycle
collections in such pauses (inspector/collector.py; the last lines say whether any ran inside a
timed press, and what one costs). `ms` is that wall time; `cpu`
the process time over the same span; `1st paint` the wall time to the end of the first paint
(what the person sees first; a press that needs a second frame, such as the navigator's cursor
following the view, ends later, and Textual spaces frames 1/60 s apart). A key bound to nothing
(`z`) is pressed between the others: its time is the pipeline's own (key routing through the
screen and the focused widget), and the last column is each key's ratio to it. The machine has
two cores shared with other work: the medians are steady, the worst figures are noisy.

What is pressed, each press changing what is shown (no press is served by a "nothing changed" check):
* view keys (t a g r v k s e p) at a new step and layer each repetition;
* stepping through the whole trace in each view: `]` from the first step to the last, `[` back;
  `l` through all 30 layers, `L` back one; `h` / `H` through every head (attention, q·k·v);
  `↓` / `↑` in the navigator;
* opening the attention view (`a`, from the tokens view) at the prefill of the long trace,
  where each layer's map is 512 × 512, at five layers;
* the help screen, open and closed.
The last lines give the issue's figures: median and worst over every timed press, over the
stepping presses, and over the attention opens.

Where a press's time goes (`--profile KEY`; 2 shared cores, so compare ratios in one run): a step
repaints the lines of the view that changed, the navigator's rows (every stop's time changes), the
step bar and the stream, at ~0.1-0.3 ms of Textual's pipeline per line painted; a view switch lays
the screen out and paints the view's whole area. What made presses slow, and was fixed: layouts no
press needed (Static.update, a virtual size set on every step, a view first shown from size zero),
second and third frames after the first paint (Resize handlers redoing work, scrollbars repainted
after a layout, Textual's Footer remounting its keys), lines drawn through Textual's content path
or one `Text.append` per cell, styles looked up per line, and the cycle collector's full passes
(60-90 ms, every few dozen presses; now it runs once the person pauses, inspector/collector.py,
and its cost is printed on its own). Left: the first open of each view in a session (Textual sizes
and mounts scrollbars then: 3-4 frames), and the whole-area paint of a view switch.
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
import unicodedata
from dataclasses import replace
from pathlib import Path

from textual import events
from textual.app import App
from textual.keys import REPLACED_KEYS, _character_to_key, _get_unicode_name_from_key
from textual.message_pump import MessagePump
from textual.screen import Screen
from textual._compositor import CompositorUpdate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import traces  # noqa: E402
from inspector.app import make_app  # noqa: E402
from inspector.collector import IDLE_S  # noqa: E402

SHORT = "Explain the theory of relativity in simple terms."
SENTENCE = ("The theory of relativity, proposed by Albert Einstein, changed how physicists think about space, "
            "time, gravity and motion.")
LONG = " ".join([SENTENCE] * 22) + " Explain it in simple terms."  # 512 tokens with SmolLM2's tokenizer
SIZE = (140, 40)
QUIET_S = 0.05  # a press is over once the app has done nothing for this long
VIEW_KEYS = [("t", "tokens"), ("a", "attention"), ("g", "logits"), ("r", "residual"), ("v", "qkv"),
             ("k", "kv"), ("s", "sampling"), ("e", "event"), ("p", "timing")]
HEAD_VIEWS = {"attention", "qkv"}
PREFILL_LAYERS = (0, 7, 15, 22, 29)
IDLE = "z"  # bound to nothing: the cost of a keypress through the pipeline
PAUSE_S = IDLE_S + 0.3  # between views: long enough for the collector's pause (inspector/collector.py)


class Activity:
    """The last moment the app did any work, and when its paints ended.

    Hooks Textual's message pumps (every message, and the callbacks after idle handlers), the
    screen's frame timer and after-paint callbacks, and the app's `_display` (the paint)."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.paints: list[float] = []

    def mark(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def install(self) -> None:
        for cls, name in ((MessagePump, "_dispatch_message"), (MessagePump, "_flush_next_callbacks"),
                          (Screen, "_invoke_and_clear_callbacks")):
            setattr(cls, name, self._async_after(getattr(cls, name)))
        on_timer = Screen._on_timer_update

        def on_timer_update(screen):
            try:
                return on_timer(screen)
            finally:
                self.mark()
        Screen._on_timer_update = on_timer_update
        display = App._display

        def display_and_encode(app, screen, renderable):
            display(app, screen, renderable)
            if app.is_headless and isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)  # what a terminal would be sent
            self.mark()
            self.paints.append(self.wall)
        App._display = display_and_encode

    def _async_after(self, method):
        async def wrapped(pump, *args):
            try:
                return await method(pump, *args)
            finally:
                self.mark()
        return wrapped


def key_event(key: str) -> events.Key:
    """The event a terminal's driver posts for `key` (as Textual's own pilot builds it)."""
    if len(key) == 1 and not key.isalnum():
        key = _character_to_key(key)
    try:
        char = unicodedata.lookup(_get_unicode_name_from_key(REPLACED_KEYS.get(key, key)))
    except KeyError:
        char = key if len(key) == 1 else None
    return events.Key(key, char)


def record(path: Path, prompt: str, chat: bool, full: bool) -> None:
    cmd = [sys.executable, "-m", "inspector.cli", "--headless", "-n", "16", "--record", str(path),
           "--numerics", "exact", *(["--chat"] if chat else []),
           *(["--capture", "full", "--max-trace-size", "4G"] if full else []), prompt]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)


class Bench:
    def __init__(self, app, activity: Activity, profile_key: str | None) -> None:
        self.app, self.activity = app, activity
        # (key, where) -> [(ms to the last work, cpu ms, ms to the first paint)]
        self.rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        self.sections: dict[str, list[tuple[str, str]]] = {}
        self.profile_key = profile_key
        self.profiler = cProfile.Profile() if profile_key else None
        self.sweep_ms = 0.0
        self.sweeps_in_presses = 0  # full collections that ran inside a timed press

    async def settle(self) -> None:
        start = time.perf_counter()
        while True:
            await asyncio.sleep(0.01)
            screen = self.app.screen  # a press may open another
            quiet = time.perf_counter() - self.activity.wall > QUIET_S
            if quiet and not (screen._dirty_widgets or screen._layout_required or screen._repaint_required):
                return
            if time.perf_counter() - start > 30:
                raise RuntimeError(f"the app is still busy 30 s after a press ({self.app.selection})")

    async def press(self, key: str, where: str, section: str | None = None) -> None:
        """Press `key` and wait for it to be done; timed unless `section` is None."""
        await self.settle()
        profiling = self.profiler is not None and section is not None and key == self.profile_key
        if profiling:
            self.profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        self.activity.wall, self.activity.cpu, paints = wall, cpu, len(self.activity.paints)
        sweeps = self.app._collector.sweeps
        self.app._driver.send_message(key_event(key))
        await self.settle()
        if section is not None and self.app._collector.sweeps != sweeps:
            self.sweeps_in_presses += 1
        if profiling:
            self.profiler.disable()
        if section is None:
            return
        first = self.activity.paints[paints] if len(self.activity.paints) > paints else self.activity.wall
        sample = ((self.activity.wall - wall) * 1e3, (self.activity.cpu - cpu) * 1e3, (first - wall) * 1e3)
        self.rows.setdefault((key, where), []).append(sample)
        if (key, where) not in self.sections.setdefault(section, []):
            self.sections[section].append((key, where))

    async def select(self, **changes) -> None:
        """Move the selection without a key (not timed)."""
        self.app.selection = replace(self.app.selection, **changes)
        await self.settle()


async def drive(trace, reps: int, profile_key: str | None, activity: Activity) -> Bench:
    app = make_app(trace)
    steps, n_layer = trace.steps, trace.n_layer
    n_head = int(trace.info.get("model", {}).get("n_head") or 1)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        bench = Bench(app, activity, profile_key)
        for _ in range(3):
            await bench.press(IDLE, "-", "idle")
        # Opening each view: a new step and layer each repetition.
        for rep in range(reps):
            await bench.select(step=steps[(rep * 5 + 1) % len(steps)], layer=rep * 7 % n_layer)
            for key, view in VIEW_KEYS:
                await bench.press(key, view, "open")
            await bench.press(IDLE, "-", "idle")
        # Stepping through the whole trace, in each view.
        for vkey, view in VIEW_KEYS:
            await bench.press(vkey, view)
            await bench.select(step=steps[0], layer=0, head=0)
            for _ in steps[1:]:
                await bench.press("right_square_bracket", view, "step")
            for _ in steps[1:]:
                await bench.press("left_square_bracket", view, "step")
            for _ in range(n_layer):
                await bench.press("l", view, "step")
            await bench.press("L", view, "step")
            if view in HEAD_VIEWS:
                for _ in range(n_head):
                    await bench.press("h", view, "step")
                await bench.press("H", view, "step")
            await bench.press(vkey, view)  # the navigator's cursor on the view's stop
            for _ in range(reps):
                await bench.press("down", view, "step")
                await bench.press("up", view, "step")
            await bench.press(IDLE, "-", "idle")
            await asyncio.sleep(PAUSE_S)  # a person reads the view before the next: the app's pause
        # Opening the attention view at the prefill, where the map is every prompt token squared.
        for layer in PREFILL_LAYERS:
            await bench.press("t", "tokens")
            await bench.select(step=steps[0], layer=layer % n_layer, head=0)
            await bench.press("a", "attn@prefill", "prefill")
        await bench.press("question_mark", "help", "help")
        await bench.press("escape", "help", "help")
        # A full collection, as the app runs them in a pause (inspector/collector.py), timed on its own.
        start = time.perf_counter()
        app._collector.sweep()
        bench.sweep_ms = (time.perf_counter() - start) * 1e3
    return bench


def summary(samples: list[tuple[float, float, float]]) -> str:
    walls, cpus, firsts = zip(*samples)
    return (f"n {len(walls)}, median {statistics.median(walls):.1f} ms, worst {max(walls):.1f} ms"
            f" (cpu median {statistics.median(cpus):.1f}, worst {max(cpus):.1f};"
            f" first paint median {statistics.median(firsts):.1f})")


def report(label: str, bench: Bench) -> None:
    idle = statistics.median(w for w, _, _ in bench.rows[(IDLE, "-")])
    print(f"\n{label}: key `{IDLE}` (bound to nothing) median {idle:.2f} ms")
    print(f"{'key':<22}{'view':<14}{'n':>4}{'ms med':>8}{'ms max':>8}{'cpu med':>9}{'cpu max':>9}"
          f"{'1st paint':>11}{'× z':>8}")
    for (key, view), samples in bench.rows.items():
        walls, cpus, firsts = zip(*samples)
        med = statistics.median(walls)
        print(f"{key:<22}{view:<14}{len(samples):>4}{med:>8.1f}{max(walls):>8.1f}{statistics.median(cpus):>9.1f}"
              f"{max(cpus):>9.1f}{statistics.median(firsts):>11.1f}{med / idle:>8.1f}")
    worst = max((kv for kv in bench.rows.items() if kv[0][0] != IDLE), key=lambda kv: max(s[0] for s in kv[1]))
    print(f"slowest single press: {worst[0][0]} in {worst[0][1]}: {max(s[0] for s in worst[1]):.1f} ms")
    groups = {"every press": [k for k in bench.rows if k[0] != IDLE],
              "stepping through the trace": bench.sections.get("step", []),
              "opening each view": bench.sections.get("open", []),
              "opening attention at the prefill": bench.sections.get("prefill", [])}
    for name, keys in groups.items():
        samples = [s for k in keys for s in bench.rows[k]]
        if samples:
            print(f"{name}: {summary(samples)}")
    print(f"full collections inside a timed press: {bench.sweeps_in_presses}; one after a pause, "
          f"when none is waiting: {bench.sweep_ms:.0f} ms")
    if bench.profiler is not None:
        out = io.StringIO()
        pstats.Stats(bench.profiler, stream=out).sort_stats("cumulative").print_stats(30)
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
            record(path, prompt, chat, full=not chat)
            print(f"recorded {path} in {time.perf_counter() - t:.1f} s")
    activity = Activity()
    activity.install()
    for path in paths:
        t = time.perf_counter()
        trace = traces.open(path)
        opened = time.perf_counter() - t
        n_prompt = len(trace.prompt_ids())
        print(f"\n{path}: {path.stat().st_size / 2**20:.1f} MiB, {len(trace.steps)} steps, {n_prompt} prompt tokens,"
              f" {trace.n_layer} layers; traces.open {opened * 1e3:.1f} ms")
        try:
            bench = asyncio.run(drive(trace, args.reps, args.profile, activity))
        finally:
            trace.close()
        report(path.name, bench)


if __name__ == "__main__":
    main()

"""A recording killed with SIGKILL at any moment leaves a trace that opens and holds every finished step.

The recorder runs in a real subprocess; the page cache outlives a killed process, so what
a commit handed to the kernel is there for the reader even with fsync off.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from traces.reader import TraceReader

ROOT = Path(__file__).resolve().parent.parent
EVENTS_PER_STEP = 12
N = 65536  # floats per tensor: 256 KiB; a step (3 MiB) overflows the writer's 1 MiB buffer, so kills land mid-step

RECORDER = f"""
import sys, time
import numpy as np
from traces.schema import Event
from traces.writer import TraceWriter

w = TraceWriter(sys.argv[1], {{"model": {{"n_layer": {EVENTS_PER_STEP}}}, "prompt": "crash"}})
print("ready", flush=True)
deadline = time.monotonic() + 30  # a test that forgets to kill us must not fill the disk
step = 0
while time.monotonic() < deadline:
    for layer in range({EVENTS_PER_STEP}):
        x = np.arange({N}, dtype=np.float32) + step * 1000 + layer
        w(Event(step * {EVENTS_PER_STEP} + layer, "residual", step, layer, tensors={{"out": x}}, scalars={{"sum": float(x.sum())}}))
    w.end_step(step)
    print(step, flush=True)
    step += 1
"""


def start(path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout.readline() == "ready\n"
    return proc


def kill(proc: subprocess.Popen) -> list[int]:
    """SIGKILL the recorder; the steps it said it committed."""
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return [int(line) for line in out.split()]


def check_steps_intact(path) -> list[int]:
    with TraceReader(path) as r:
        assert not r.complete
        assert r.steps == list(range(len(r.steps)))  # a prefix 0..k: nothing skipped
        for step in r.steps:
            events = r.events(step)
            assert [e.layer for e in events] == list(range(EVENTS_PER_STEP))
            for e in events:
                want = np.arange(N, dtype=np.float32) + step * 1000 + e.layer
                assert np.array_equal(e.tensors["out"], want)
                assert e.scalars["sum"] == float(want.sum())
        assert r.verify_all() == []
        return r.steps


@pytest.fixture
def path(tmp_path):
    """The trace file, deleted afterwards: these runs write about 100 MB each."""
    path = tmp_path / "run.trace"
    yield path
    path.unlink(missing_ok=True)


def test_every_step_reported_committed_survives_sigkill(path):
    proc = start(path)
    try:
        seen = []
        while not seen or seen[-1] < 5:
            seen.append(int(proc.stdout.readline()))
    finally:
        seen += kill(proc)
    assert proc.returncode == -signal.SIGKILL
    steps = check_steps_intact(path)
    assert set(seen) <= set(steps), "a step the recorder committed is missing"


@pytest.mark.parametrize("seed", range(8))
def test_a_kill_at_a_random_moment_leaves_a_prefix_of_steps(path, seed):
    proc = start(path)
    try:
        time.sleep(random.Random(seed).uniform(0, 0.25))
    finally:
        seen = kill(proc)
    steps = check_steps_intact(path)  # opening never raises, whatever the moment
    assert set(seen) <= set(steps)


def test_a_real_run_killed_mid_generation_keeps_every_finished_step(tmp_path):
    """The whole path, not a stand-in recorder: `llm-inspect --headless --record` on a real (tiny)
    GGUF, SIGKILLed while it generates. The killed trace holds a prefix of the steps, each one
    identical to the same steps of an uninterrupted run."""
    from tests.tiny_models import write_tiny_llama
    from traces.reader import TraceError

    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "inspector.cli", str(tiny), "hello the llama", "-n", "200", "--headless",
            "--seed", "7", "--capture", "full", "--max-trace-size", "none", "--record"]  # one seed: the same draws
    whole, killed = tmp_path / "whole.trace", tmp_path / "killed.trace"
    subprocess.run(argv + [str(whole)], check=True, capture_output=True, cwd=ROOT, env=env)
    proc = subprocess.Popen(argv + [str(killed)], stdout=subprocess.DEVNULL, cwd=ROOT, env=env)
    try:
        committed = 0
        while committed < 5:  # kill once a few steps are on disk: the run is in its decode loop
            assert proc.poll() is None, "the run finished before it could be killed"
            try:
                with TraceReader(killed) as r:
                    committed = len(r.steps)
            except (TraceError, FileNotFoundError):
                pass  # not written yet
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with TraceReader(killed) as r, TraceReader(whole) as w:
        assert not r.complete and w.complete
        assert len(r.steps) >= committed and r.steps == w.steps[: len(r.steps)] and len(r.steps) < len(w.steps)
        for step in r.steps:
            got, want = r.events(step), w.events(step)
            assert [e.key for e in got] == [e.key for e in want]
            for a, b in zip(got, want):
                assert a.scalars == b.scalars and set(a.tensors) == set(b.tensors)
                assert all(np.array_equal(a.tensors[n], b.tensors[n]) for n in a.tensors), a.describe()
        assert r.verify_all() == []
        assert r.generated_ids() == w.generated_ids()[: len(r.steps)]

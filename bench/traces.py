"""How fast the trace file is: writing against the disk, opening, and reading one tensor.

    .venv/bin/python bench/traces.py [--gib 1] [--dir /tmp]

Writes a ≥1 GiB trace with the real TraceWriter (1024 steps × 8 events × 128 KiB tensors,
plus a 262k-piece vocabulary in `info`) and, in the same run, the same number of bytes
with plain 8 MiB writes (dd-style) before and after it. Both end with an fsync, so the
figure is the disk's, not the page cache's. Then: open-to-first-tensor latency (footer
index, and a footer-less trace found by hopping), random single-tensor reads (warm), and
the writer's cost per small event. Deletes what it wrote.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from traces.reader import TraceReader  # noqa: E402
from traces.schema import Event  # noqa: E402
from traces.writer import TraceWriter  # noqa: E402

STEPS = 1024
EVENTS_PER_STEP = 8
INFO = {"model": {"name": "bench", "n_layer": EVENTS_PER_STEP}, "vocab": {"pieces": [f"▁tok{i}" for i in range(262_144)]}}


def fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def raw_write(path: Path, nbytes: int) -> float:
    """Seconds to write `nbytes` in 8 MiB chunks and fsync: the disk's sequential speed."""
    chunk = np.random.default_rng(1).integers(0, 255, 8 << 20, dtype=np.uint8).tobytes()
    t = time.perf_counter()
    with open(path, "wb", buffering=0) as f:
        for _ in range(nbytes // len(chunk)):
            f.write(chunk)
        f.write(chunk[: nbytes % len(chunk)])
        os.fsync(f.fileno())
    elapsed = time.perf_counter() - t
    path.unlink()
    return elapsed


def write_trace(path: Path, tensor_floats: int, complete: bool = True) -> float:
    rng = np.random.default_rng(0)
    tensors = [rng.standard_normal(tensor_floats, dtype=np.float32) for _ in range(EVENTS_PER_STEP)]
    t = time.perf_counter()
    w = TraceWriter(path, INFO)
    seq = 0
    for step in range(STEPS):
        for layer, x in enumerate(tensors):
            w(Event(seq, "residual", step, layer, tensors={"out": x}, scalars={"norm": 1.0}, t_start_ns=seq, dur_ns=1))
            seq += 1
        w.end_step(step)
    w.close(complete=complete)
    fsynced(path)
    return time.perf_counter() - t


def open_to_first_tensor(path: Path) -> tuple[float, TraceReader]:
    t = time.perf_counter()
    r = TraceReader(path)
    float(r.events(r.steps[0])[0].tensors["out"].sum())
    return time.perf_counter() - t, r


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.2f} ms (p99 {sorted(samples)[int(len(samples) * 0.99) - 1] * 1e3:.2f} ms)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gib", type=float, default=1.0, help="tensor bytes to write (default 1)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where to write (the disk measured)")
    args = p.parse_args()
    tensor_floats = int(args.gib * (1 << 30) / (STEPS * EVENTS_PER_STEP * 4))
    work = Path(tempfile.mkdtemp(prefix="trace-bench-", dir=args.dir))
    big, hop, small = work / "big.trace", work / "hop.trace", work / "small.trace"
    try:
        write_s = write_trace(big, tensor_floats)
        size = big.stat().st_size
        raw_s = [raw_write(work / "raw.bin", size) for _ in range(2)]
        raw = size / statistics.mean(raw_s)
        print(f"trace: {STEPS} steps × {EVENTS_PER_STEP} events × {tensor_floats * 4 >> 10} KiB, {size / 2**30:.2f} GiB on disk")
        print(f"raw sequential write (8 MiB chunks + fsync): {raw / 1e6:.0f} MB/s "
              f"({' and '.join(f'{size / s / 1e6:.0f}' for s in raw_s)})")
        print(f"TraceWriter (+ fsync at the end):            {size / write_s / 1e6:.0f} MB/s"
              f" = {size / write_s / raw:.2f} × raw")

        opens = []
        for _ in range(5):
            seconds, r = open_to_first_tensor(big)
            opens.append(seconds)
            r.close()
        print(f"open-to-first-tensor, footer index ({STEPS} steps, 262k-piece info): {median_ms(opens)}")
        info_json = json.dumps(INFO, separators=(",", ":")).encode()
        parses = []
        for _ in range(5):
            t = time.perf_counter()
            json.loads(info_json)
            parses.append(time.perf_counter() - t)
        print(f"  of which json.loads of the info ({len(info_json) >> 10} KiB):          {median_ms(parses)}")

        write_trace(hop, 16, complete=False)  # same steps and events, no footer: found by hopping
        opens = []
        for _ in range(5):
            seconds, r = open_to_first_tensor(hop)
            opens.append(seconds)
            assert not r.complete and len(r.steps) == STEPS
            r.close()
        print(f"open-to-first-tensor, no footer (hop {STEPS} steps):              {median_ms(opens)}")

        rng = np.random.default_rng(2)
        with TraceReader(big) as r:
            reads = []
            for _ in range(300):
                step = int(rng.integers(STEPS))
                t = time.perf_counter()
                event = r.events(step)[int(rng.integers(EVENTS_PER_STEP))]
                float(event.tensors["out"].sum())  # crc32-checked, then read
                reads.append(time.perf_counter() - t)
            print(f"random single-tensor read ({tensor_floats * 4 >> 10} KiB, warm, first touch of its step): {median_ms(reads)}")

        n = 30 * 12 * 50
        x = np.zeros((1, 576), np.float32)
        t = time.perf_counter()
        with TraceWriter(small, INFO) as w:
            for seq in range(n):
                w(Event(seq, "attn_norm", seq // 360, seq % 30, tensors={"out": x}, scalars={"norm": 1.0}))
        per_event = (time.perf_counter() - t) / n
        print(f"writer cost per decode-sized event (one [1, 576] f32 tensor): {per_event * 1e6:.1f} µs")
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()


if __name__ == "__main__":
    main()

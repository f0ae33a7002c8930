"""`llm-inspect info TRACE`: what a trace holds and whether it is whole, fast and without torch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inspector.cli import main
from tests.tiny_models import write_tiny_llama
from traces.reader import TraceReader
from traces.schema import Event
from traces.writer import FOOTER, FOOTER_ENTRY, MAGIC, TRAILER, TraceWriter

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("info")
    tiny = write_tiny_llama(d / "tiny.gguf")
    path = d / "run.trace"
    assert main([str(tiny), "hello the llama", "-n", "4", "--headless", "--record", str(path)]) == 0
    return path


def segments(data: bytes) -> list[dict]:
    """Each step's offsets, read from the footer with the format's own structs (docs/TRACE_FORMAT.md)."""
    footer, magic = TRAILER.unpack_from(data, len(data) - TRAILER.size)
    assert magic == MAGIC
    n, _, _ = FOOTER.unpack_from(data, footer + 16)
    entries = np.frombuffer(data, FOOTER_ENTRY, n, footer + 16 + FOOTER.size)
    return [dict(zip(entries.dtype.names, map(int, e))) for e in entries]


def info(capsys, *argv):
    code = main(["info", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_complete_run(capsys, run):
    code, out, _ = info(capsys, run)
    assert code == 0
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["model"].startswith("tiny-llama · llama · 2 layers · 4/2 heads · d 64 · vocab 272 · Q8_0 ×16")
    assert rows["engine"].startswith("torch · cpu · float32")
    assert rows["prompt"] == "'hello the llama' (8 tokens)"
    assert rows["steps"].startswith("4 (0..3")
    assert "attn 8" in rows["stops"] and "embed 4" in rows["stops"] and "sample " in rows["stops"]
    assert rows["capture"].startswith("default: every stop · every row · dtype auto · budget 1 GiB")
    assert rows["tensors"] == "all kept" and rows["integrity"] == "complete · footer ok"
    assert rows["trace"].endswith(("KiB", "MiB"))


def test_json_counts_every_stop(capsys, run):
    code, out, _ = info(capsys, run, "--json", "--verify")
    s = json.loads(out)
    with TraceReader(run) as r:
        want: dict[str, int] = {}
        for event in r:
            want[event.stop] = want.get(event.stop, 0) + 1
        assert s["stops"] == want and list(s["stops"]) == r.stops  # in the order a token passes them
    assert s["size"] == os.path.getsize(run) and s["steps"] == 4 and s["truncated_at"] is None
    assert s["capture"]["spec"] == "default" and s["model"]["quant"]["Q8_0"] == 16
    assert s["integrity"] == {"complete": True, "footer": "ok", "steps_refused": [], "verify_problems": [], "warnings": []}


def test_a_run_cut_short_and_a_broken_footer(capsys, run, tmp_path):
    data = run.read_bytes()
    cut = tmp_path / "cut.trace"
    cut.write_bytes(data[: segments(data)[1]["next_offset"] + 100])  # killed 100 bytes into step 2
    code, out, _ = info(capsys, cut)
    assert code == 0 and "cut short after step 1 · footer missing" in out
    assert "warning    step 2 at offset" in out
    broken = tmp_path / "broken.trace"
    broken.write_bytes(data[:-20] + b"\x00" * 20)  # the trailer's magic gone
    code, out, _ = info(capsys, broken, "--json")
    s = json.loads(out)
    assert s["integrity"]["footer"] in ("broken", "missing") and s["steps"] == 4 and not s["integrity"]["complete"]


def test_damage_is_reported(capsys, tmp_path):
    path = tmp_path / "t.trace"
    with TraceWriter(path, {"model": {"name": "m"}}) as w:
        for step in range(3):
            w(Event(step, "residual", step, 0, tensors={"out": np.full(64, step, np.float32)}))
    data = bytearray(path.read_bytes())
    with TraceReader(path) as r:
        spec = r.events(2)[0].tensors.specs["out"]
    data[spec.offset] ^= 1  # a tensor byte of step 2
    data[segments(bytes(data))[1]["table_offset"] + 30] ^= 1  # inside step 1's table
    path.write_bytes(data)
    code, out, _ = info(capsys, path, "--verify")
    integrity = next(line for line in out.splitlines() if line.startswith("integrity"))
    assert "complete · footer ok · 1 steps refused (1) · verify: 2 problems" in integrity  # the table, the tensor
    assert "warning" in out


def test_errors_are_one_line(capsys, tmp_path):
    code, _, err = info(capsys, tmp_path / "none.trace")
    assert code == 2 and err.count("\n") == 1 and "no such trace file" in err
    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"GGUF" + bytes(100))
    code, _, err = info(capsys, bad)
    assert code == 2 and err.count("\n") == 1 and "not a trace" in err


def test_it_imports_neither_torch_nor_textual(run):
    code = ("import sys; from inspector.cli import main; code = main(['info', sys.argv[1], '--json']);"
            "assert code == 0; print(sorted(m for m in ('torch', 'textual', 'rich') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]"

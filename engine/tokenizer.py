"""A tokenizer built from a GGUF's vocabulary that records what it did (stop C03).

It produces the token ids llama.cpp produces (src/llama-vocab.cpp) and keeps the steps
on the way, so the inspector can replay them:

    text ─► special-token partition ─► pre-tokenizer splits ─► initial symbols
         ─► merges, one at a time ─► pieces ─► ids

- gpt2 (byte-level BPE): each split's UTF-8 bytes become GPT-2 byte symbols ("Ġ" for
  a space), then the adjacent pair with the lowest merge rank is merged, leftmost
  first, until no pair has a rank.
- llama (SentencePiece BPE, e.g. Gemma 3): spaces become "▁", the symbols are the
  characters, and the adjacent pair whose concatenation is the highest-scoring vocab
  entry is merged first; a character left outside the vocab becomes <0xNN> byte tokens.

Special tokens (CONTROL, USER_DEFINED, UNKNOWN) are cut out of the text first, longest
text first, as llama.cpp does; nothing is ever merged across them.

    tok = Tokenizer.from_metadata(GGUFFile(path).metadata)
    enc = tok.encode("hello, llama")
    enc.ids, enc.pieces, enc.splits, enc.merges
    enc.replay(0, 2)   # split 0's symbols after its first two merges
"""

from __future__ import annotations

import bisect
import heapq
import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

from engine.pretokenize import PreTokenizer

# tokenizer.ggml.token_type values (llama.cpp LLAMA_TOKEN_TYPE_*)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# The subset llama.cpp cuts out of the text before tokenizing it.
SPECIAL_TYPES = (CONTROL, USER_DEFINED, UNKNOWN)

# Token texts llama.cpp treats as end-of-turn / end-of-generation whatever their type
# (llama_vocab::impl::load); such a token is promoted to CONTROL.
EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
             "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>",
             "<end_of_utterance>")
EOG_TEXTS = frozenset(EOT_TEXTS + ("<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
                                   "</s>", "<|eom_id|>", "[EOS]", "<eos>", "<turn|>",
                                   "<|tool_response>", "[e~["))
# Fill-in-the-middle pad / repo / file-separator tokens also end generation.
FIM_TEXTS = {
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}

SPACE_MARK = "\u2581"  # ▁, SentencePiece's space


def _gpt2_byte_chars() -> list[str]:
    """GPT-2's byte-to-unicode alphabet: printable bytes stand for themselves, the
    other 68 are shifted to U+0100.. in byte order."""
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    out, n = [], 0
    for b in range(256):
        if b in keep:
            out.append(chr(b))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


BYTE_TO_CHAR = _gpt2_byte_chars()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}


class Merge(NamedTuple):
    """One merge: the symbols covering initial symbols [start, end) of `split` became
    one symbol `piece`. rank: BPE merge rank (the line of tokenizer.ggml.merges);
    for SPM the id of the merged token (its score decides the order); -1 when a whole
    word was taken as a vocab entry without merging (llama3's ignore_merges)."""

    split: int
    start: int
    end: int
    rank: int
    piece: str


@dataclass
class Encoding:
    text: str
    ids: list[int]
    pieces: list[str]            # the vocab strings of ids
    splits: list[str]            # chunks in order: pre-tokenizer words and special tokens
    split_special: list[bool]    # True where a split is a special token
    symbols: list[list[str]]     # each split's initial symbols (bytes or chars)
    merges: list[Merge]          # in the order they were applied
    token_split: list[int]       # the split each id came from; -1 for an added BOS/EOS

    def replay(self, split: int, n_merges: int | None = None) -> list[str]:
        """Symbols of `split` after its first n_merges merges (all when None)."""
        syms = [(i, i + 1, s) for i, s in enumerate(self.symbols[split])]
        steps = [m for m in self.merges if m.split == split]
        for m in steps[:n_merges]:
            i = next(k for k, s in enumerate(syms) if s[0] == m.start)
            j = next(k for k, s in enumerate(syms) if s[1] == m.end)
            syms[i:j + 1] = [(m.start, m.end, "".join(s[2] for s in syms[i:j + 1]))]
        return [s[2] for s in syms]


def _as_list(values: Sequence, kind: type) -> list:
    """Python numbers of `kind`: a numpy array's in one call (`tolist`), else one by one."""
    if hasattr(values, "tolist") and hasattr(values, "dtype"):
        return [kind(v) for v in values] if values.dtype.kind != ("f" if kind is float else "i") else values.tolist()
    return [kind(v) for v in values]


def _get(md: dict, key: str, default: Any = None) -> Any:
    v = md.get(key, default)
    return v.item() if hasattr(v, "item") and getattr(v, "ndim", 1) == 0 else v


class Tokenizer:
    def __init__(self, model: str, tokens: Sequence[str], types: Sequence[int], *,
                 merges: Sequence[str] = (), scores: Sequence[float] | None = None,
                 pre: str | None = None, bos_id: int | None = None,
                 eos_id: int | None = None, eot_id: int | None = None,
                 eom_id: int | None = None, fim_ids: dict[str, int | None] | None = None,
                 add_bos: bool | None = None, add_eos: bool | None = None,
                 add_space_prefix: bool | None = None):
        if model not in ("gpt2", "llama"):
            raise ValueError(f"unsupported tokenizer model {model!r} (gpt2, llama)")
        self.model = model
        # Whole-array conversions (GGUF arrays come as numpy): Gemma 3's 262k entries are on the
        # way to the app's first paint.
        self.tokens = list(tokens)
        self.types = _as_list(types, int) if types is not None else [NORMAL] * len(tokens)
        self.scores = _as_list(scores, float) if scores is not None else None
        self.token_to_id = dict(zip(self.tokens, range(len(self.tokens))))  # a repeated text: its last id, as before
        n = len(self.tokens)

        if model == "gpt2":
            self.pre = PreTokenizer(pre)
            self.ranks: dict[tuple[str, str], int] = {}
            for rank, line in enumerate(merges):
                cut = line.find(" ", 1)
                if cut >= 0:
                    self.ranks.setdefault((line[:cut], line[cut + 1:]), rank)
            default_add_bos, self.add_space_prefix = self.pre.add_bos, False
            default_bos = default_eos = 11
        else:
            if self.scores is None:
                raise ValueError("an SPM (llama) vocabulary needs tokenizer.ggml.scores")
            self.pre = None
            default_add_bos = True
            self.add_space_prefix = True if add_space_prefix is None else bool(add_space_prefix)
            default_bos, default_eos = 1, 2

        def valid(i: int | None, default: int | None = None) -> int | None:
            """An id in range; else the default (as llama.cpp does with a bad id)."""
            for j in (i, default):
                if j is not None and 0 <= int(j) < n:
                    return int(j)
            return None

        self.bos_id = valid(bos_id, default_bos)
        self.eos_id = valid(eos_id, default_eos)
        self.add_bos = default_add_bos if add_bos is None else bool(add_bos)
        self.add_eos = False if add_eos is None else bool(add_eos)

        # Token attributes as llama.cpp adjusts them: end-of-turn-looking texts are
        # promoted to CONTROL (which also decides whether they parse without `special`).
        self.control = [t == CONTROL for t in self.types]
        def first_present(texts: Sequence[str]) -> int | None:
            return next((j for t in texts if (j := self.token_to_id.get(t)) is not None), None)

        eot = valid(eot_id, first_present(EOT_TEXTS))
        eog = {i for t in EOG_TEXTS if (i := self.token_to_id.get(t)) is not None}
        for kind, texts in FIM_TEXTS.items():
            i = valid((fim_ids or {}).get(kind), first_present(texts))
            if i is not None:
                eog.add(i)
        promoted = eog | ({eot} if eot is not None else set())
        for i in promoted:
            self.control[i] = True
        self.eot_id = eot
        self.eos_ids = {i for i in (self.eos_id, eot, valid(eom_id)) if i is not None} | eog

        special = list({i for i, t in enumerate(self.types) if t in SPECIAL_TYPES} | promoted)  # CONTROL is one
        special.sort(key=lambda i: (-len(self.tokens[i].encode()), i))
        self._special_ids = special
        self._special_set = frozenset(special)
        self._cache: dict[str, tuple[list[int], list[tuple[int, int, int, str]]]] = {}

    @classmethod
    def from_metadata(cls, md: dict) -> Tokenizer:
        """Build from a dict of GGUF metadata (GGUFFile(...).metadata, or
        {k: f.contents() for k, f in gguf.GGUFReader(path).fields.items()})."""
        g = "tokenizer.ggml."
        model = _get(md, g + "model")
        if model is None:
            raise ValueError("no tokenizer.ggml.model in the metadata")
        return cls(
            str(model), md[g + "tokens"], md.get(g + "token_type"),
            merges=md.get(g + "merges") or (), scores=md.get(g + "scores"),
            pre=_get(md, g + "pre"), bos_id=_get(md, g + "bos_token_id"),
            eos_id=_get(md, g + "eos_token_id"), eot_id=_get(md, g + "eot_token_id"),
            eom_id=_get(md, g + "eom_token_id"),
            fim_ids={k: _get(md, f"{g}{k}_token_id") for k in FIM_TEXTS},
            add_bos=_get(md, g + "add_bos_token"),
            add_eos=_get(md, g + "add_eos_token"),
            add_space_prefix=_get(md, g + "add_space_prefix"))

    # --- vocabulary ----------------------------------------------------------------

    @property
    def n_vocab(self) -> int:
        return len(self.tokens)

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_set

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (special tokens as their text), as llama.cpp's
        token_to_piece(special=True)."""
        text, ttype = self.tokens[token_id], self.types[token_id]
        if self.control[token_id] or ttype in SPECIAL_TYPES:
            return text.encode()
        if ttype == BYTE:
            return bytes([int(text[3:5], 16)])
        if ttype != NORMAL:
            return b""  # UNUSED / UNDEFINED render as nothing
        if self.model == "llama":
            return text.replace(SPACE_MARK, " ").encode()
        return b"".join(bytes([CHAR_TO_BYTE[c]]) if c in CHAR_TO_BYTE else c.encode()
                        for c in text)

    def token_text(self, token_id: int) -> str:
        """A readable form for display: the decoded text, bytes that are not whole
        UTF-8 characters written <0xNN>."""
        if self.is_special(token_id):
            return self.tokens[token_id]
        data, out, i = self.piece_bytes(token_id), [], 0
        while i < len(data):
            for k in (1, 2, 3, 4):
                try:
                    out.append(data[i:i + k].decode())
                    i += k
                    break
                except UnicodeDecodeError:
                    continue
            else:
                out.append(f"<0x{data[i]:02X}>")
                i += 1
        return "".join(out)

    def decode(self, ids: Sequence[int]) -> bytes:
        return b"".join(self.piece_bytes(int(i)) for i in ids)

    # --- encoding ------------------------------------------------------------------

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Cut special tokens out of the text as llama.cpp does: one special token at a
        time, longest text first, each taking its leftmost non-overlapping occurrences in
        the text still left raw. Raw text stays str, each special token becomes its id.

        Done on positions, not on a list of fragments: each special token's occurrences
        are found once in the whole text and placed with a bisect, so a text holding
        thousands of special tokens costs occurrences x log, not specials x fragments."""
        starts, ends = [0], [len(text)]  # the raw regions [start, end), in order
        cuts: list[tuple[int, int]] = []  # (position, id)
        pairs = {text[i:i + 2] for i in range(len(text) - 1)}
        for tid in self._special_ids:
            if not parse_special and (self.control[tid] or self.types[tid] == UNKNOWN):
                continue  # only USER_DEFINED tokens are cut out without parse_special
            tok = self.tokens[tid]
            m = len(tok)
            if not m or (m > 1 and tok[:2] not in pairs):
                continue  # cheap test first: its first two characters never occur together
            p = text.find(tok)
            while p >= 0:
                i = bisect.bisect_right(starts, p) - 1
                if i >= 0 and p + m <= ends[i]:  # wholly inside raw text: take it
                    a, b = starts[i], ends[i]
                    keep = [(x, y) for x, y in ((a, p), (p + m, b)) if x < y]
                    starts[i:i + 1] = [x for x, _ in keep]
                    ends[i:i + 1] = [y for _, y in keep]
                    cuts.append((p, tid))
                    p = text.find(tok, p + m)
                else:  # overlaps a token already cut out
                    p = text.find(tok, p + 1)
        pieces = [(a, text[a:b]) for a, b in zip(starts, ends) if a < b] + cuts
        pieces.sort(key=lambda x: x[0])
        return [x for _, x in pieces]

    def encode(self, text: str, add_special: bool | None = None,
               parse_special: bool = True) -> Encoding:
        """Tokenize like llama_tokenize(text, add_special, parse_special). add_special
        None means True: BOS/EOS are then added when the vocabulary says so."""
        add_special = True if add_special is None else add_special
        enc = Encoding(text, [], [], [], [], [], [], [])
        if add_special and self.add_bos and self.bos_id is not None:
            self._emit(enc, self.bos_id, -1)
        prev_special = True
        for frag in self._partition(text, parse_special):
            if isinstance(frag, int):
                self._add_split(enc, self.tokens[frag], True, [])
                self._emit(enc, frag, len(enc.splits) - 1)
                prev_special = True
            elif self.model == "gpt2":
                for word in self.pre.split(frag):
                    self._encode_bpe_word(enc, word)
            else:
                if self.add_space_prefix and prev_special:
                    frag = " " + frag
                self._encode_spm(enc, frag.replace(" ", SPACE_MARK))
                prev_special = False
        if add_special and self.add_eos and self.eos_id is not None:
            self._emit(enc, self.eos_id, -1)
        return enc

    def _emit(self, enc: Encoding, tid: int, split: int) -> None:
        enc.ids.append(tid)
        enc.pieces.append(self.tokens[tid])
        enc.token_split.append(split)

    @staticmethod
    def _add_split(enc: Encoding, text: str, special: bool, symbols: list[str]) -> int:
        enc.splits.append(text)
        enc.split_special.append(special)
        enc.symbols.append(symbols)
        return len(enc.splits) - 1

    def _encode_bpe_word(self, enc: Encoding, word: str) -> None:
        symbols = [BYTE_TO_CHAR[b] for b in word.encode()]
        split = self._add_split(enc, word, False, symbols)
        key = "".join(symbols)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._bpe(symbols)
            if len(self._cache) < 65536:
                self._cache[key] = hit
        ids, merges = hit
        enc.merges.extend(Merge(split, *m) for m in merges)
        for tid in ids:
            self._emit(enc, tid, split)

    def _bpe(self, sym: list[str]) -> tuple[list[int], list[tuple[int, int, int, str]]]:
        """Byte-level BPE on one word (llm_tokenizer_bpe_session::tokenize)."""
        n, merges = len(sym), []
        word = "".join(sym)
        if self.pre.ignore_merges and word in self.token_to_id:
            final = [word]
            if n > 1:
                merges.append((0, n, -1, word))
        else:
            final = self._merge(sym, merges, self._bpe_pair)
        ids = []
        for s in final:
            tid = self.token_to_id.get(s)
            if tid is not None:
                ids.append(tid)
            else:  # not in the vocab: one token per byte of its text, when there is one
                ids.extend(t for b in s.encode() if b < 0x80
                           and (t := self.token_to_id.get(chr(b))) is not None)
        return ids, merges

    def _bpe_pair(self, left: str, right: str) -> tuple[float, int] | None:
        rank = self.ranks.get((left, right))
        return None if rank is None else (rank, rank)

    def _spm_pair(self, left: str, right: str) -> tuple[float, int] | None:
        tid = self.token_to_id.get(left + right)
        return None if tid is None else (-self.scores[tid], tid)

    @staticmethod
    def _merge(sym: list[str], merges: list, pair) -> list[str]:
        """Merge adjacent symbols best-first until no pair qualifies. pair(l, r) gives
        (priority, rank) or None; lower priority first, then the leftmost. Appends
        (start, end, rank, piece) to merges; returns the final symbols."""
        n = len(sym)
        text = list(sym)
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap: list = []

        def push(left: int, right: int) -> None:
            if left < 0 or right < 0:
                return
            p = pair(text[left], text[right])
            if p is not None:
                heapq.heappush(heap, (p[0], left, right, text[left] + text[right], p[1]))

        for i in range(n - 1):
            push(i, i + 1)
        while heap:
            _, left, right, joined, rank = heapq.heappop(heap)
            if not text[left] or not text[right] or text[left] + text[right] != joined:
                continue  # one side has merged since: stale
            text[left], text[right] = joined, ""
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prv[nxt[right]] = left
            merges.append((left, nxt[left] if nxt[left] >= 0 else n, rank, joined))
            push(prv[left], left)
            push(left, nxt[left])
        return [t for t in text if t]

    def _encode_spm(self, enc: Encoding, frag: str) -> None:
        """SentencePiece BPE on one fragment (llm_tokenizer_spm_session::tokenize)."""
        symbols = list(frag)
        split = self._add_split(enc, frag, False, symbols)
        merges: list = []
        final = self._merge(symbols, merges, self._spm_pair)
        enc.merges.extend(Merge(split, *m) for m in merges)
        for s in final:
            tid = self.token_to_id.get(s)
            if tid is not None:
                self._emit(enc, tid, split)
                continue
            for b in s.encode():  # byte fallback: <0xNN>, else the byte as a string
                t = self.token_to_id.get(f"<0x{b:02X}>")
                if t is None and b < 0x80:
                    t = self.token_to_id.get(chr(b))
                if t is not None:
                    self._emit(enc, t, split)

    def encode_chat(self, text: str) -> Encoding:
        """Tokenize a rendered chat template: its special-token text parsed as special
        tokens, and BOS added as the vocabulary says unless the template wrote one itself
        (a template that starts with {{ bos_token }} must not give two)."""
        enc = self.encode(text, add_special=False)
        if enc.ids[:1] == [self.bos_id]:
            return enc
        return self.encode(text, add_special=True)


class ReferenceTokenizer:
    """llama.cpp's own tokenizer for a GGUF, loaded vocab-only (≈0.2 s for SmolLM2,
    ≈0.9 s for Gemma 3's 262k pieces): the ground truth our ids are checked against."""

    def __init__(self, path: str):
        import llama_cpp

        try:
            with _quiet_llama_cpp():
                self._llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        except ValueError as e:
            raise ValueError(f"llama.cpp cannot load the vocabulary of {path}: {e}") from None

    def ids(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        with _quiet_llama_cpp():  # it warns on stderr about a doubled BOS, under the UI
            return self._llama.tokenize(text.encode(), add_bos=add_special, special=parse_special)

    def decode(self, ids: Sequence[int]) -> bytes:
        """llama_token_to_piece for each id (special tokens as their text). Not
        llama-cpp-python's detokenize: its 32-byte buffer cuts longer pieces short."""
        import ctypes

        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        out, buf = [], ctypes.create_string_buffer(256)
        for tid in ids:
            n = llama_cpp.llama_token_to_piece(vocab, int(tid), buf, len(buf), 0, True)
            if n < 0:  # the piece needs -n bytes
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(vocab, int(tid), buf, len(buf), 0, True)
            out.append(buf.raw[:n])
        return b"".join(out)


@contextmanager
def _quiet_llama_cpp():
    """llama.cpp writes warnings to stderr even with verbose=False (a vocab-only context
    "overflows" a training context of 0; a doubled BOS): a terminal UI must not get them.
    Both routes are closed: its Python logger, and file descriptor 2 itself."""
    logger = logging.getLogger("llama-cpp-python")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        logger.setLevel(level)


@dataclass
class CrossCheck:
    ids: list[int]            # what to run: ours when they agree, else llama.cpp's
    reference_ids: list[int]  # llama.cpp's
    agrees: bool


def cross_check(enc: Encoding, reference: ReferenceTokenizer, parse_special: bool = True) -> CrossCheck:
    """Tokenize enc.text with llama.cpp the way `enc` was made (BOS added or not) and
    compare; on a disagreement llama.cpp's ids win."""
    added = -1 in enc.token_split  # BOS / EOS added by encode
    ref = reference.ids(enc.text, add_special=added, parse_special=parse_special)
    agrees = ref == enc.ids
    return CrossCheck(enc.ids if agrees else ref, ref, agrees)

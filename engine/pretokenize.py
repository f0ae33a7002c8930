"""Pre-tokenizers for byte-level BPE: split text into chunks the way llama.cpp does.

llama.cpp (src/unicode.cpp, unicode_regex_split) runs a list of regexes, one after the
other; each refines the chunks the previous one left. Two regexes have hand-written
splitters there (the GPT-2 one and the llama3 one), with their own reading of
whitespace runs and digits; every other regex goes through std::regex on a "collapsed"
copy of the text in which each non-ASCII code point is replaced by one byte that
stands for its Unicode category. Both are reproduced here:

    text ─► [regex 1] ─► chunks ─► [regex 2] ─► smaller chunks ─► ... ─► words
              │ custom GPT-2 / llama3 splitter, or
              └ Python `re` over the collapsed text (same alphabet, same classes)

Unicode categories come from the stdlib `unicodedata`. llama.cpp's table (src/unicode-data.cpp)
is Unicode 15.1; Python 3.11's stdlib is 14.0, which leaves the letters, digits and
punctuation that 15.0/15.1 added unassigned: UNICODE_15_ADDITIONS puts them back (checked
against llama.cpp code point by code point, see tests/test_tokenizer_corpus.py). Code points
assigned later than 15.1 (a newer Python's stdlib) are unassigned for llama.cpp.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable

# Category flags, as in llama.cpp's unicode_cpt_flags.
NUMBER, LETTER, SEPARATOR, ACCENT_MARK, PUNCTUATION, SYMBOL, CONTROL = (
    0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80)
WHITESPACE = 0x100
_CATEGORY = {"N": NUMBER, "L": LETTER, "Z": SEPARATOR, "M": ACCENT_MARK,
             "P": PUNCTUATION, "S": SYMBOL, "C": CONTROL}

# The Unicode White_Space property: what the `regex` module (and so llama.cpp) calls \s.
# Python's str.isspace() also counts U+001C..U+001F, llama.cpp does not.
WHITESPACE_CPTS = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
     0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

# Letters (L), digits (N) and punctuation (P) assigned in Unicode 15.0 and 15.1, which the
# stdlib's 14.0 tables call unassigned: (first, last, flag). Only these three classes (and \\s,
# unchanged since 14.0) decide a split of the pre-tokenizers we support.
UNICODE_15_ADDITIONS = (
    (0x1123F, 0x11240, LETTER),     # Khojki
    (0x11B00, 0x11B09, PUNCTUATION),  # Devanagari Extended-A
    (0x11F02, 0x11F02, LETTER),     # Kawi
    (0x11F04, 0x11F10, LETTER),
    (0x11F12, 0x11F33, LETTER),
    (0x11F43, 0x11F4F, PUNCTUATION),
    (0x11F50, 0x11F59, NUMBER),
    (0x1342F, 0x1342F, LETTER),     # Egyptian hieroglyphs
    (0x13441, 0x13446, LETTER),
    (0x1B132, 0x1B132, LETTER),     # small kana
    (0x1B155, 0x1B155, LETTER),
    (0x1D2C0, 0x1D2D3, NUMBER),     # Kaktovik numerals
    (0x1DF25, 0x1DF2A, LETTER),     # Latin Extended-G
    (0x1E030, 0x1E06D, LETTER),     # Cyrillic Extended-D
    (0x1E4D0, 0x1E4EB, LETTER),     # Nag Mundari
    (0x1E4F0, 0x1E4F9, NUMBER),
    (0x2B739, 0x2B739, LETTER),     # CJK Extension B
    (0x2EBF0, 0x2EE5D, LETTER),     # CJK Extension I (15.1)
    (0x31350, 0x323AF, LETTER),     # CJK Extension H
)

_flag_cache: dict[str, int] = {}


def _category_flag(ch: str) -> int:
    cat = unicodedata.category(ch)
    if cat == "Cn":
        cp = ord(ch)
        for first, last, flag in UNICODE_15_ADDITIONS:
            if first <= cp <= last:
                return flag
    return _CATEGORY[cat[0]]


def char_flags(ch: str) -> int:
    """The category flag of one character, plus WHITESPACE when it is \\s."""
    f = _flag_cache.get(ch)
    if f is None:
        f = _category_flag(ch)
        if ord(ch) in WHITESPACE_CPTS:
            f |= WHITESPACE
        _flag_cache[ch] = f
    return f


def _contraction_len(s: str, pos: int, end: int, fold: bool) -> int:
    """Length of 's 't 're 've 'm 'll 'd at pos (0 if none); fold = case-insensitive."""
    if s[pos] != "'" or pos + 1 >= end:
        return 0
    a = s[pos + 1].lower() if fold else s[pos + 1]
    if a in "stmd" and len(a) == 1:
        return 2
    if pos + 2 < end:
        b = s[pos + 2].lower() if fold else s[pos + 2]
        if a + b in ("re", "ve", "ll"):
            return 3
    return 0


def split_gpt2(s: str) -> list[str]:
    """llama.cpp's hand-written GPT-2 splitter, for
    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

    Its whitespace rule: a run of 2+ whitespace followed by more text gives all but its
    last character (which then leads the next word); a run at the end is kept whole.
    """
    n = len(s)
    fl = [char_flags(c) for c in s] + [0]  # 0 past the end: no category at all
    out: list[str] = []
    prev = pos = 0
    L, N, W = LETTER, NUMBER, WHITESPACE
    while pos < n:
        k = _contraction_len(s, pos, n, fold=False)
        if k:
            pos += k
        else:
            sp = s[pos] == " "
            f2 = fl[pos + 1] if sp else fl[pos]
            if f2 & L:                                   # ' ?\p{L}+'
                pos += 1 if sp else 0
                while fl[pos] & L:
                    pos += 1
            elif f2 & N:                                 # ' ?\p{N}+'
                pos += 1 if sp else 0
                while fl[pos] & N:
                    pos += 1
            elif f2 and not f2 & (W | L | N):            # ' ?[^\s\p{L}\p{N}]+'
                pos += 1 if sp else 0
                while fl[pos] and not fl[pos] & (W | L | N):
                    pos += 1
            else:
                nws = 0
                while fl[pos + nws] & W:
                    nws += 1
                if nws > 1 and pos + nws < n:            # '\s+(?!\S)'
                    pos += nws - 1
                elif nws > 0:                            # '\s+'
                    pos += nws
                else:                                    # no match: one character
                    pos += 1
        if pos > prev:
            out.append(s[prev:pos])
        prev = pos
    return out


def split_llama3(s: str, max_digits: int = 3) -> list[str]:
    """llama.cpp's hand-written llama3 splitter, for
    (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|
     ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+
    """
    n = len(s)
    fl = [char_flags(c) for c in s] + [0]
    out: list[str] = []
    prev = pos = 0
    L, N, W = LETTER, NUMBER, WHITESPACE

    def cut(end: int) -> None:
        nonlocal prev
        if end > prev:
            out.append(s[prev:end])
        prev = end

    while pos < n:
        c, f = s[pos], fl[pos]
        k = _contraction_len(s, pos, n, fold=True)
        if k:
            pos += k
            cut(pos)
            continue
        if c not in "\r\n" and not f & N and (f & L or fl[pos + 1] & L):
            pos += 1                                     # '[^\r\n\p{L}\p{N}]?\p{L}+'
            while fl[pos] & L:
                pos += 1
            cut(pos)
            continue
        if f & N:                                        # '\p{N}{1,3}'
            start = pos
            while fl[pos] & N:
                pos += 1
                if pos - start >= max_digits:
                    cut(pos)
                    start = pos
            cut(pos)
            continue
        f2 = fl[pos + 1] if c == " " else f
        if f and not f2 & (W | L | N):                   # ' ?[^\s\p{L}\p{N}]+[\r\n]*'
            pos += 1 if c == " " else 0
            while fl[pos] and not fl[pos] & (W | L | N):
                pos += 1
            while pos < n and s[pos] in "\r\n":
                pos += 1
            cut(pos)
            continue
        nws, last_rn = 0, 0
        while fl[pos + nws] & W:
            if s[pos + nws] in "\r\n":
                last_rn = pos + nws + 1
            nws += 1
        if last_rn:                                      # '\s*[\r\n]+'
            pos = last_rn
        elif nws > 1 and pos + nws < n:                  # '\s+(?!\S)'
            pos += nws - 1
        elif nws:                                        # '\s+'
            pos += nws
        else:
            pos += 1
        cut(pos)
    return out


# --- everything else: std::regex over the collapsed text ------------------------------

# What llama.cpp substitutes for \p{..} in a regex, and for each non-ASCII code point in
# the text: one stand-in character per category, plus the ASCII members of the class.
_UCAT = {r"\p{N}": NUMBER, r"\p{L}": LETTER, r"\p{P}": PUNCTUATION, r"\p{M}": ACCENT_MARK,
         r"\p{S}": SYMBOL, r"\p{Lu}": LETTER, r"\p{Ll}": LETTER, r"\p{Lt}": LETTER,
         r"\p{Lm}": LETTER, r"\p{Lo}": LETTER}
_STAND_IN = {NUMBER: "\xd1", LETTER: "\xd2", PUNCTUATION: "\xd3", ACCENT_MARK: "\xd4",
             SYMBOL: "\xd5"}
_OTHER = "\xd0"  # any other non-ASCII, non-whitespace code point
_ASCII_MEMBERS = {
    NUMBER: "0-9",
    LETTER: "A-Za-z",
    PUNCTUATION: "!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    ACCENT_MARK: "",
    SYMBOL: "\\$\\+<->^`\\|",
}


def _collapse_char(ch: str) -> str:
    if ord(ch) < 128:
        return ch
    f = char_flags(ch)
    if f & WHITESPACE:
        return "\x0b"  # std::regex \s does not know non-ASCII whitespace
    return _STAND_IN.get(f & 0xFF, _OTHER)


def _collapse_regex(expr: str) -> str:
    """Rewrite \\p{..} classes for the collapsed alphabet, as llama.cpp does."""
    out, inside, i = [], False, 0
    while i < len(expr):
        ch = expr[i]
        if ch == "[" and (i == 0 or expr[i - 1] != "\\"):
            out.append("[")
            inside = True
        elif inside and ch == "]" and expr[i - 1] != "\\":
            out.append("]")
            inside = False
        elif expr.startswith("\\p{", i) and i + 3 < len(expr):
            close = expr.find("}", i + 3)
            pat = expr[i:close + 1] if 0 <= close <= i + 10 else ""
            if pat in _UCAT:
                cat = _UCAT[pat]
                body = _STAND_IN[cat] + _ASCII_MEMBERS[cat]
                out.append(body if inside else "[" + body + "]")
                i = close + 1
                continue
            out.append(ch)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


class RegexSplitter:
    """One regex applied like std::regex_iterator: matches and the gaps between them
    both become chunks."""

    def __init__(self, expr: str):
        self.expr = expr
        self.collapsed = any(k in expr for k in _UCAT)
        # ASCII semantics for \s \d \w, as std::regex in the C locale.
        self.pattern = re.compile(_collapse_regex(expr) if self.collapsed else expr, re.ASCII)

    def __call__(self, s: str) -> list[str]:
        if self.collapsed:
            t = "".join(_collapse_char(c) for c in s)
        else:
            t = "".join("\x0b" if ord(c) > 0x7F and char_flags(c) & WHITESPACE else c
                        for c in s)
        out, last = [], 0
        for m in self.pattern.finditer(t):
            a, b = m.span()
            if a > last:
                out.append(s[last:a])
            if b > a:
                out.append(s[a:b])
            last = max(last, b)
        if last < len(s):
            out.append(s[last:])
        return out


# --- the regex lists llama.cpp uses per pre-tokenizer type -----------------------------

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# name -> (type, regexes, ignore_merges, default add_bos), from llama-vocab.cpp
_TYPES = {
    "default": ([r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"], False, False),
    "gpt2": ([GPT2], False, False),
    "llama3": ([LLAMA3], True, True),
    "dbrx": ([LLAMA3], False, False),
    "qwen2": ([QWEN2], False, False),
    "smollm": ([r"\p{N}", GPT2], False, False),
    "falcon": ([r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"], False, False),
}
_ALIASES = {
    "": "default", "default": "default",
    "gpt2": "gpt2", "gpt-2": "gpt2", "phi-2": "gpt2", "mpt": "gpt2", "olmo": "gpt2",
    "jais": "gpt2", "trillion": "gpt2", "granite-docling": "gpt2", "exaone4": "gpt2",
    "llama3": "llama3", "llama-v3": "llama3", "llama-bpe": "llama3", "falcon3": "llama3",
    "falcon-h1": "llama3", "pixtral": "llama3", "midm-2.0": "llama3", "lfm2": "llama3",
    "dbrx": "dbrx", "smaug-bpe": "dbrx",
    "qwen2": "qwen2", "deepseek-r1-qwen": "qwen2", "megrez": "qwen2", "stablelm2": "qwen2",
    "hunyuan": "qwen2",
    "smollm": "smollm", "starcoder": "smollm", "refact": "smollm", "command-r": "smollm",
    "codeshell": "smollm", "exaone": "smollm", "minerva-7b": "smollm",
    "falcon": "falcon",
}
SUPPORTED_PRE = tuple(sorted(k for k in _ALIASES if k))


def _splitter(expr: str) -> Callable[[str], list[str]]:
    if expr == GPT2:
        return split_gpt2
    if expr == LLAMA3:
        return split_llama3
    return RegexSplitter(expr)


class PreTokenizer:
    """The chain of splitters for one `tokenizer.ggml.pre` name."""

    def __init__(self, name: str | None):
        key = _ALIASES.get(name or "")
        if key is None:
            raise ValueError(f"unsupported pre-tokenizer {name!r}; supported: "
                             + ", ".join(SUPPORTED_PRE))
        self.name = name or "default"
        self.kind = key
        self.regexes, self.ignore_merges, self.add_bos = _TYPES[key]
        self._steps = [_splitter(e) for e in self.regexes]

    def split(self, text: str) -> list[str]:
        chunks = [text] if text else []
        for step in self._steps:
            chunks = [piece for chunk in chunks for piece in step(chunk)]
        return chunks

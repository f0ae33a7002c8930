"""Token pieces as a person should read them.

Byte-level BPE vocabularies (GPT-2, Llama 3, SmolLM2, Qwen) store each byte as a printable
stand-in character: `Ġ` is a space, `Ċ` a newline. Shown raw, `Ġthe` hides that the token
starts with a space; decoded naively, a space is invisible and a newline breaks the line.
So a piece is mapped back to its bytes, decoded, and its whitespace drawn with markers:
space → ␣, newline → ⏎, tab → ⇥. Bytes that are not (yet) a whole UTF-8 character are
shown as `\\xf0`. Special tokens (`<|im_start|>`) are shown as they are and flagged.
"""

from __future__ import annotations

import re
import weakref
from functools import lru_cache

from traces.base import Trace
from views.safe import escape_controls

# Used when the trace does not list its special tokens (`info["vocab"]["special"]`).
_SPECIAL = re.compile(r"^(<\|[^|<>]*\|>|</?s>|<unk>|<pad>|<mask>|<bos>|<eos>|<(start|end)_of_turn>)$")
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece byte fallback
_WHITESPACE = str.maketrans({" ": "\u2423", "\n": "\u23ce", "\t": "\u21e5"})  # ␣ ⏎ ⇥


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """GPT-2's unicode-to-byte map, the inverse of its `bytes_to_unicode`."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    out = {chr(b): b for b in printable}
    shift = 0
    for b in range(256):
        if b not in out.values():
            out[chr(256 + shift)] = b
            shift += 1
    return out


def piece_bytes(piece: str, byte_level: bool) -> bytes | None:
    """The bytes a piece stands for, or None if it is not a byte-level piece."""
    if m := _BYTE_PIECE.match(piece):
        return bytes([int(m.group(1), 16)])
    if byte_level:
        table = byte_decoder()
        if all(c in table for c in piece):
            return bytes(table[c] for c in piece)
    return None


def readable(piece: str, byte_level: bool, special: bool = False) -> str:
    """The piece with its whitespace drawn and every control character visible."""
    if special:
        return escape_controls(piece)
    data = piece_bytes(piece, byte_level)
    text = data.decode("utf-8", errors="backslashreplace") if data is not None else piece.replace("\u2581", " ")
    return escape_controls(text.translate(_WHITESPACE))


class PieceFormat:
    """How one trace's vocabulary is shown; built once per trace (see `piece_format`)."""

    def __init__(self, trace: Trace) -> None:
        self._trace = weakref.ref(trace)
        pieces = trace.pieces
        self.byte_level = any("\u0120" in p or "\u010a" in p for p in pieces)  # Ġ, Ċ
        vocab = trace.info.get("vocab", {})
        listed = vocab.get("special")
        self._special_ids = {i for i in listed if isinstance(i, int)} if isinstance(listed, list) else None
        self._cache: dict[int, str] = {}

    def is_special(self, token_id: int) -> bool:
        if self._special_ids is not None:
            return token_id in self._special_ids
        trace = self._trace()
        return bool(trace and _SPECIAL.match(trace.piece(token_id)))

    def show(self, token_id: int, piece: str | None = None) -> str:
        """The token's piece, readable and escaped; `piece` stands in when the vocabulary lacks the id."""
        text = self._cache.get(token_id)
        if text is None:
            trace = self._trace()
            n_vocab = len(trace.pieces) if trace else 0
            if 0 <= token_id < n_vocab or piece is None:
                raw = trace.piece(token_id) if trace else f"<{token_id}>"
                text = self._cache[token_id] = readable(raw, self.byte_level, self.is_special(token_id))
            else:
                return readable(piece, self.byte_level, bool(_SPECIAL.match(piece)))
        return text


_FORMATS: "weakref.WeakKeyDictionary[Trace, PieceFormat]" = weakref.WeakKeyDictionary()


def piece_format(trace: Trace) -> PieceFormat:
    fmt = _FORMATS.get(trace)
    if fmt is None:
        fmt = _FORMATS[trace] = PieceFormat(trace)
    return fmt

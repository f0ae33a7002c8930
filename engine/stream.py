"""Incremental detokenization: release text to the user without ever splitting a UTF-8 character.

A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often
two or three tokens). The bytes of an unfinished character are held back until the token
that completes them arrives; the stream stop shows what was released and what is held.
"""

from __future__ import annotations


def utf8_complete_prefix(data: bytes) -> int:
    """Length of the longest prefix of `data` that does not end inside a UTF-8 character."""
    n = len(data)
    # Look back at most 3 bytes for the lead byte of the last character.
    for back in range(1, min(4, n) + 1):
        b = data[n - back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead
            continue
        need = 1 if b < 0x80 else 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        return n if back >= need else n - back
    return n  # only continuation bytes: invalid anyway, release them


class TextStream:
    def __init__(self) -> None:
        self.held = b""

    def push(self, data: bytes) -> str:
        buf = self.held + data
        cut = utf8_complete_prefix(buf)
        self.held = buf[cut:]
        return buf[:cut].decode("utf-8", errors="replace")

    def flush(self) -> str:
        out, self.held = self.held.decode("utf-8", errors="replace"), b""
        return out

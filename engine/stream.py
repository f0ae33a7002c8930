"""Incremental detokenization: release text to the user without ever splitting a UTF-8 character
or a stop string.

A byte-level BPE token can end in the middle of a multi-byte character (an emoji is often
two or three tokens). The bytes of an unfinished character are held back until the token
that completes them arrives. The decoded text then goes through the stop matcher
(engine/stop.py), which holds back an end that could still begin a stop string. The stream
stop shows what was released and what is held, of each kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from engine.stop import StopMatcher


@dataclass
class StepResult:
    step: int
    token: int
    text: str  # newly released text (may be "" while a UTF-8 character is incomplete)
    stop: str | None  # on the last step: "eos", "stop" (a stop string) or "length"; else None


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
    def __init__(self, stops: Sequence[str] = ()) -> None:
        self.held = b""  # the bytes of an unfinished UTF-8 character
        self.stops = StopMatcher(stops)

    @property
    def matched(self) -> str | None:
        """The stop string the text ran into, if it did: the generation is over."""
        return self.stops.matched

    def push(self, data: bytes) -> str:
        if self.matched is not None:
            return ""
        buf = self.held + data
        cut = utf8_complete_prefix(buf)
        self.held = buf[cut:]
        return self.stops.push(buf[:cut].decode("utf-8", errors="replace"))

    def flush(self) -> str:
        """The generation ended: release what is held, unless a stop string ended it."""
        tail, self.held = self.held.decode("utf-8", errors="replace"), b""
        if self.matched is not None:
            return ""
        return self.stops.push(tail) + self.stops.flush()


def release(bus, tok, stream: TextStream, step: int, token: int, last: bool) -> StepResult:
    """The end of a step, the same in every engine: the drawn token becomes text, EOS and the stop
    strings are matched, and the sample, stop and stream stops are emitted. `last`: the step is
    the final one -n allows. `tok` is anything with eos_ids, token_text and piece_bytes."""
    if bus.wants("sample"):
        bus.emit("sample", step, token=token, piece=tok.token_text(token))
    eos = token in tok.eos_ids
    text = "" if eos else stream.push(tok.piece_bytes(token))
    finished = "eos" if eos else "stop" if stream.matched is not None else "length" if last else None
    if finished in ("eos", "length"):
        text += stream.flush()  # what was held back cannot become a stop string now
    if bus.wants("stop"):
        bus.emit("stop", step, eos=eos, reason=finished or "", matched=stream.matched or "",
                 held=stream.stops.held, partial=stream.stops.partial)
    if bus.wants("stream"):
        bus.emit("stream", step, text=text, held=stream.held.hex(), held_stop=stream.stops.held)
    return StepResult(step, token, text, finished)

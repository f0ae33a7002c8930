"""Stop strings: end the generation when the text contains one, and never stream any part of it.

llama.cpp's server takes a list of `stop` strings. A stop string is matched on the generated
text, not on tokens, so it can span tokens ("###" may arrive as "#" then "##"). While the
end of the text could still be the start of a stop string, that end is held back: released
once a later token shows it is not a stop after all, dropped with everything after it when the
stop completes. When several stop strings match, the one that starts first wins (then the
first one listed), as in llama.cpp's server.

The matcher sees decoded text only; engine/stream.py holds back unfinished UTF-8 bytes
before they get here, so a stop string is never matched against half a character.
"""

from __future__ import annotations

from typing import Sequence


class StopStringError(ValueError):
    """A stop string that cannot be matched."""


class StopMatcher:
    def __init__(self, stops: Sequence[str] = ()) -> None:
        for s in stops:
            if not isinstance(s, str) or not s:
                raise StopStringError("--stop needs a non-empty string")
        self.stops = list(dict.fromkeys(stops))  # in the order given, each once
        self.held = ""  # the end of the text that could still begin a stop string
        self.matched: str | None = None  # the stop string found; the text ended just before it

    @property
    def partial(self) -> list[str]:
        """The stop strings the held text is the start of."""
        return [s for s in self.stops if self.held and s.startswith(self.held)]

    def push(self, text: str) -> str:
        """Add newly decoded text; return the part that can be streamed now."""
        if self.matched is not None:
            return ""  # the generation has ended; nothing after a stop string is text
        buf = self.held + text
        found = [(buf.find(s), i) for i, s in enumerate(self.stops)]
        found = [(pos, i) for pos, i in found if pos >= 0]
        if found:
            pos, i = min(found)
            self.matched, self.held = self.stops[i], ""
            return buf[:pos]
        keep = self._partial_tail(buf)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        """The generation ended some other way (EOS, length): what was held cannot become a stop now."""
        out, self.held = ("" if self.matched is not None else self.held), ""
        return out

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest end of `buf` that is the start (not the whole) of a stop string."""
        best = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), best, -1):
                if buf.endswith(s[:n]):
                    best = n
                    break
        return best

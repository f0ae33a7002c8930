"""BPE merges replayed one at a time (stop C03), for the tokens view.

The tokenize event carries each split's symbols before any merge (`symbols`: GPT-2 byte
stand-ins for a byte-level BPE vocabulary, characters with ▁ for SentencePiece) and the merges
in the order the tokenizer applied them (`merges`: [split, start, end, rank, piece], where
[start, end) counts initial symbols). Replaying the first k merges on the symbols gives what
the tokenizer held after its k-th step; the symbol that step made is the one highlighted.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from rich.cells import cell_len
from rich.text import Text

from traces.schema import Event
from views import colors
from views.pieces import byte_decoder, readable
from views.safe import assemble, escape_controls, truncate


@dataclass(frozen=True)
class MergeState:
    k: int  # merges applied
    n: int  # merges in all
    splits: list[list[str]]  # each split's symbols after k merges
    made: tuple[int, int] | None  # (split, symbol index) of what merge k made; None at k = 0
    pair: tuple[str, str] = ("", "")  # the symbols merge k joined
    rank: int = 0  # its merge rank (BPE) or merged token id (SentencePiece); -1: whole word in the vocab


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    return {b: c for c, b in byte_decoder().items()}


def initial_symbols(event: Event, byte_level: bool, special_texts: set[str]) -> list[list[str]]:
    """Each split's symbols before any merge: the event's own, or (a trace written before they
    were recorded) made again from the split texts the way the tokenizer makes them."""
    recorded = event.scalars.get("symbols")
    if isinstance(recorded, list):
        return [[str(s) for s in split] if isinstance(split, list) else [] for split in recorded]
    table = _byte_chars()
    out = []
    for text in event.scalars.get("splits", []):
        text = str(text)
        if text in special_texts:
            out.append([])  # a special token is cut out whole, never merged
        elif byte_level:
            out.append([table[b] for b in text.encode()])
        else:
            out.append(list(text))
    return out


def replay(symbols: list[list[str]], merges: list, k: int) -> MergeState:
    """The symbols after the first `k` merges."""
    n = len(merges)
    k = max(0, min(k, n))
    spans = [[(i, i + 1, s) for i, s in enumerate(split)] for split in symbols]  # (start, end, text)
    made, pair, rank = None, ("", ""), 0
    for m in merges[:k]:
        split, start, end, rank = int(m[0]), int(m[1]), int(m[2]), int(m[3])
        row = spans[split]
        i = next(j for j, s in enumerate(row) if s[0] == start)
        j = next(j for j, s in enumerate(row) if s[1] == end)
        pair = (row[i][2], "".join(s[2] for s in row[i + 1:j + 1]))
        row[i:j + 1] = [(start, end, "".join(s[2] for s in row[i:j + 1]))]
        made = (split, i)
    return MergeState(k, n, [[s[2] for s in row] for row in spans], made, pair, rank)


def merge_lines(state: MergeState, byte_level: bool, sentencepiece: bool, width: int) -> list[Text]:
    """The replay as lines: what merge k did, then every split's symbols as chips, wrapped."""
    def show(symbol: str) -> str:
        return readable(symbol, byte_level) if symbol else "∅"

    head = assemble(("BPE merges", "bold"), (f" · {state.k}/{state.n}", colors.ACCENT))
    if state.made is None:
        head.append_text(assemble((" · the symbols before any merge", colors.DIM)))
    elif state.rank < 0:
        head.append_text(assemble((" · whole word in the vocabulary: ", colors.DIM),
                                  (truncate(show(state.pair[0] + state.pair[1]), 24), colors.CHOSEN)))
    else:
        left, right = (truncate(show(s), 16) for s in state.pair)
        order = f"token {state.rank} (by score)" if sentencepiece else f"rank {state.rank}"
        head.append_text(assemble((f" · {order}: ", colors.DIM), (left, "bold"), (" + ", colors.DIM),
                                  (right, "bold"), (" → ", colors.DIM), (left + right, colors.CHOSEN)))
    lines, line, used = [head], Text(end=""), 0
    for split, symbols in enumerate(state.splits):
        for index, symbol in enumerate(symbols):
            here = state.made == (split, index)
            chip = Text(f" {escape_controls(truncate(show(symbol), 24))} ",
                        style=f"bold underline {colors.CHOSEN} on {colors.GENERATED_BG}" if here
                        else f"on {colors.PROMPT_BG}", end="")
            gap = 0 if not used else (3 if index == 0 else 1)  # a wider gap between splits
            n = cell_len(chip.plain)
            if used and used + gap + n > width:
                lines.append(line)
                line, used, gap = Text(end=""), 0, 0
            line.append(" " * gap if gap < 3 else " │ ", style=colors.DIM)
            line.append_text(chip)
            used += gap + n
    if used:
        lines.append(line)
    return lines

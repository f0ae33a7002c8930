"""The tokens view: the prompt text, then every token as a chip (piece and id).

Prompt tokens and generated tokens are told apart by colour, special tokens are flagged,
byte-level pieces are shown decoded with visible whitespace (␣ ⏎ ⇥). The token drawn at the
selected step is underlined; tokens drawn after it are dimmed, so scrubbing through the
steps replays the generation. `}` and `{` (with the view focused: tab) replay the tokenizer's
BPE merges one at a time (views/merges.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.segment import Segment
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from traces.base import Trace
from views import colors
from views.geometry import NoScrollLayout, shown_size
from views.lines import line_segments
from views.paint_style import PaintStyle
from views.merges import MergeState, initial_symbols, merge_lines, replay
from views.pieces import piece_format
from views.safe import NL, assemble, safe, truncate
from views.selection import Selection
from views.text_panel import TextPanel


@dataclass(frozen=True)
class Token:
    id: int
    text: str  # readable, escaped
    special: bool
    step: int | None  # the step that drew it; None for prompt tokens


def prompt_tokens(trace: Trace) -> list[Token]:
    fmt = piece_format(trace)
    event = trace.get(0, "tokenize")
    ids = trace.prompt_ids()
    pieces = list(event.scalars.get("pieces", [])) if event else []
    if len(pieces) != len(ids):
        pieces = [None] * len(ids)
    return [Token(i, fmt.show(i, p), fmt.is_special(i), None) for i, p in zip(ids, pieces)]


def tokenizer_check_line(trace: Trace) -> Text:
    """Where the run cross-checked its tokenizer with llama.cpp (--check-tokenizer): say
    whether they agreed, and when not, that llama.cpp's ids ran and where ours parted."""
    event = trace.get(0, "tokenize")
    if event is None or "agrees" not in event.scalars:
        return Text("")
    if event.scalars["agrees"]:
        return assemble((" · ", colors.DIM), ("✓ llama.cpp agrees", colors.CHOSEN))
    ours, ref = list(event.scalars.get("our_ids", [])), list(event.scalars.get("reference_ids", []))
    at = next((k for k, (a, b) in enumerate(zip(ours, ref)) if a != b), min(len(ours), len(ref)))
    return assemble("\n", ("✗ our tokenizer disagrees with llama.cpp", colors.SPECIAL),
                    (f" from token {at} (ours {ours[at:at + 4]}…, llama.cpp {ref[at:at + 4]}…): running llama.cpp's ids",
                     colors.DIM))


def generated_tokens(trace: Trace) -> list[Token]:
    fmt = piece_format(trace)
    out = []
    for step in trace.steps:
        for event in trace.find(step, "sample"):
            if event.part == "" and "token" in event.scalars:
                token = int(event.scalars["token"])
                piece = event.scalars.get("piece")
                out.append(Token(token, fmt.show(token, piece if isinstance(piece, str) else None),
                                 fmt.is_special(token), step))
    return out


def chip(token: Token, selected_step: int) -> Text:
    """` piece id ` on the token's background."""
    bg = colors.PROMPT_BG if token.step is None else colors.GENERATED_BG
    later = " dim" if token.step is not None and token.step > selected_step else ""
    style = f"on {bg}"
    if token.special:
        style += f" {colors.SPECIAL}"
    if token.step is not None and token.step == selected_step:
        style += " bold underline"
    # Dimmed in its own spans (not a span over both): a line of chips has no overlapping spans,
    # so views/lines.py turns it into segments directly.
    return assemble((f" {truncate(token.text, 24)} ", style + later), (f"{token.id} ", f"{colors.DIM} on {bg}{later}"))


def wrap_chips(chips: list[Text], width: int) -> list[Text]:
    """Pack chips into lines of at most `width` cells, one space apart, never splitting a chip."""
    lines: list[Text] = []
    line, used = Text(end=""), 0
    for c in chips:
        n = cell_len(c.plain)
        if used and used + 1 + n > width:
            lines.append(line)
            line, used = Text(end=""), 0
        if used:
            line.append(" ")
            used += 1
        if n > width:
            c = c[: max(1, width)]
            n = width
        line.append_text(c)
        used += n
    if used or not lines:
        lines.append(line)
    return lines


def pack_chips(widths: list[int], width: int) -> list[tuple[int, int]]:
    """Where wrap_chips breaks: each line's [start, end) of chip indices."""
    lines, start, used = [], 0, 0
    for i, n in enumerate(widths):
        n = min(n, width)
        if used and used + 1 + n > width:
            lines.append((start, i))
            start, used = i, 0
        used += n + (1 if used else 0)
    if used or not lines:
        lines.append((start, len(widths)))
    return lines


class TokenChips(PaintStyle, NoScrollLayout, Widget):
    """The chips, wrapped to the widget's width, drawn through the line API.

    A step changes only the generated tokens' chips (which is underlined, which dimmed), so each
    line's Strip is kept with the chips it was made from and a step repaints only the lines whose
    chips changed; a layout is asked for only when the number of lines does. Drawn as one Text
    through Textual's content path, a 512-token prompt's ~40 lines were painted again, and the
    screen laid out, on every step (~150 ms a step, bench/ui.py)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._chips: list[Text] = []
        self._widths: list[int] = []
        self._packed: tuple[int, list[tuple[int, int]]] | None = None  # (width, lines) of the chips set last
        self._strips: dict[int, tuple[tuple[Text, ...], Strip]] = {}  # line -> (its chips, its strip)
        self._strips_for: tuple = ()  # (width, style) the strips were made at
        self._styles: dict = {}  # span style -> the widget's style + it (views/lines.py)

    def set_chips(self, chips: list[Text]) -> None:
        """Show `chips`; chips are compared by identity (TokensView keeps one Text per token and state)."""
        width = shown_size(self).width  # the tokens view opened in this message is still hidden
        old = [self._line_chips(i, width) for i in range(len(self._lines(width)))]
        self._chips = chips
        self._widths = [cell_len(c.plain) for c in chips]
        self._packed = None
        new = self._lines(width)
        if len(new) != len(old):
            self.refresh(layout=True)  # a new height: the whole screen's layout
            return
        for y in range(len(new)):
            ones = self._line_chips(y, width)
            if len(ones) != len(old[y]) or any(a is not b for a, b in zip(ones, old[y])):
                self.refresh(Region(0, y, width, 1))

    def _lines(self, width: int) -> list[tuple[int, int]]:
        # Layout asks for the height and then renders at the same width: pack once, not per call.
        width = max(1, width)
        if self._packed is None or self._packed[0] != width:
            self._packed = (width, pack_chips(self._widths, width))
        return self._packed[1]

    def _line_chips(self, y: int, width: int) -> tuple[Text, ...]:
        start, end = self._lines(width)[y]
        return tuple(self._chips[start:end])

    def get_content_height(self, container, viewport, width: int) -> int:
        return len(self._lines(width))

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()

    def render_line(self, y: int) -> Strip:
        width, base = self.size.width, self.rich_style
        if self._strips_for != (width, base):
            self._strips_for = (width, base)
            self._strips.clear()
            self._styles.clear()
        if y >= len(self._lines(width)):
            return Strip.blank(width, base)
        chips = self._line_chips(y, width)
        hit = self._strips.get(y)
        if hit is not None and len(hit[0]) == len(chips) and all(a is b for a, b in zip(hit[0], chips)):
            return hit[1]
        line = wrap_chips(list(chips), max(1, width))[0]
        segments = line_segments(line.plain, line.spans, line.style, base, self._styles)
        if segments is None:  # overlapping spans: rich's general renderer
            segments = [Segment(s.text, base + s.style if s.style else base)
                        for s in line.render(self.app.console, end="") if s.text]
        strip = Strip(segments, cell_len(line.plain)).adjust_cell_length(width, base)
        self._strips[y] = (chips, strip)
        return strip


class TokensView(VerticalScroll):
    """Prompt text and tokens of a trace, as of the selected step."""

    DEFAULT_CSS = """
    #tokens-merges {
        margin-top: 1;
        height: auto;
    }
    """
    BINDINGS = [
        Binding("right_curly_bracket", "merge(1)", "next BPE merge", id="tokens.merge-next", key_display="}"),
        Binding("left_curly_bracket", "merge(-1)", "previous BPE merge", id="tokens.merge-prev", key_display="{"),
    ]

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._trace: Trace | None = None
        self._merge: int | None = None  # merges replayed (0: the symbols before any); None: replay off
        self._shown: tuple | None = None
        self._prompt_for: tuple | None = None  # (trace, tokenize event) the prompt chips were built from
        self._prompt: list[Token] = []
        self._prompt_chips: list[Text] = []
        self._generated_chips: dict[tuple[Token, int], Text] = {}  # (token, its step - the step shown, as -1/0/1)
        self._arrow = Text("→", style=colors.DIM)  # between the prompt and the generated chips

    def compose(self) -> ComposeResult:
        yield TextPanel(id="tokens-title", classes="view-title")
        yield TextPanel(id="tokens-prompt")
        yield TokenChips(id="tokens-chips")
        yield TextPanel(id="tokens-merges")
        yield TextPanel(id="tokens-legend", classes="legend")

    def show(self, trace: Trace, selection: Selection) -> None:
        # Cheap change check: the step shown, and how many tokens the run has drawn.
        steps = trace.steps
        key = (id(trace), selection.step, len(steps), bool(steps and trace.get(steps[-1], "sample")))
        if key == self._shown:
            return
        self._shown = key
        self._trace = trace
        step = selection.step
        # The prompt's chips do not depend on the step: build them once per tokenize event, not per
        # keypress (a 300-token prompt's chips were half of this method's time, bench/ui.py).
        tokenize = trace.get(0, "tokenize")
        if self._prompt_for != (id(trace), id(tokenize)):
            self._prompt_for = (id(trace), id(tokenize))
            self._prompt = prompt_tokens(trace)
            self._prompt_chips = [chip(t, step) for t in self._prompt]
            self._generated_chips.clear()
        prompt = self._prompt
        generated = generated_tokens(trace)
        text_event = trace.get(0, "text")
        prompt_text = text_event.scalars.get("text") if text_event else None
        if not isinstance(prompt_text, str):
            prompt_text = str(trace.info.get("prompt", ""))
        n_bytes = len(prompt_text.encode("utf-8", errors="replace"))
        if text_event is not None and "bytes" in text_event.tensors:
            n_bytes = int(text_event.tensors["bytes"].size)

        drawn = next((t for t in generated if t.step == step), None)
        title = assemble(("tokens", colors.ACCENT), (" · in ", colors.DIM))
        if step == 0:
            title.append_text(assemble(f"{len(prompt)} prompt tokens"))
        else:
            before = next((t for t in generated if t.step == step - 1), None)
            title.append_text(assemble((before.text if before else "?", "bold")))
        if drawn is not None:
            title.append_text(assemble((" · out ", colors.DIM), (drawn.text, colors.CHOSEN), (f" {drawn.id}", colors.DIM)))
        self._update("#tokens-title", title)

        heading = assemble(("prompt", "bold"), (f" · {len(prompt)} tokens · {n_bytes} bytes UTF-8", colors.DIM))
        if text_event is not None and text_event.scalars.get("chat"):
            heading.append_text(assemble((" · chat template applied to ", colors.DIM),
                                         (truncate(str(text_event.scalars.get("prompt", "")), 40), "bold")))
        heading.append_text(tokenizer_check_line(trace))
        heading.append("\n")
        heading.append_text(safe(prompt_text, keep_newlines=True))
        self._update("#tokens-prompt", heading)

        chips = list(self._prompt_chips)
        if generated:
            chips.append(self._arrow)
            chips.extend(self._generated_chip(t, step) for t in generated)
        self.query_one("#tokens-chips", TokenChips).set_chips(chips)

        self._update("#tokens-legend",
            assemble(
                ("  ", f"on {colors.PROMPT_BG}"), " prompt  ", ("  ", f"on {colors.GENERATED_BG}"), " generated  ",
                ("<|…|>", colors.SPECIAL), " special  ", ("dim", "dim"), " later", NL,
                ("␣", "bold"), " space ", ("⏎", "bold"), " newline ", ("⇥", "bold"), " tab · ",
                ("underlined", "underline"), ": drawn now", NL, ("{ }", "bold"), " replay the BPE merges (tab first)",
            )
        )
        self._show_merges()

    def _generated_chip(self, token: Token, step: int) -> Text:
        """One Text per generated token and state (drawn earlier, now, later), so TokenChips sees
        which chips a step changed by identity."""
        state = (token.step > step) - (token.step < step)
        got = self._generated_chips.get((token, state))
        if got is None:
            got = self._generated_chips[(token, state)] = chip(token, step)
        return got

    def _update(self, selector: str, text: Text) -> None:
        self.query_one(selector, TextPanel).set_text(text)

    def action_merge(self, delta: int) -> None:
        """Step the merge replay: `}` from off starts at the symbols before any merge, `{` from
        there turns it off, and from off jumps to the last merge."""
        event = self._trace.get(0, "tokenize") if self._trace is not None else None
        n = len(event.scalars.get("merges") or []) if event is not None else 0
        if self._merge is None:
            self._merge = 0 if delta > 0 else n
        elif self._merge + delta < 0:
            self._merge = None
        else:
            self._merge = min(n, self._merge + delta)
        self._show_merges()

    def merge_state(self) -> MergeState | None:
        """The replay at the current merge (the last one when replay is off); None without merges."""
        trace = self._trace
        event = trace.get(0, "tokenize") if trace is not None else None
        if event is None or not event.scalars.get("merges"):
            return None
        special = {trace.piece(i) for i in trace.info.get("vocab", {}).get("special", []) if isinstance(i, int)}
        symbols = initial_symbols(event, self._byte_level(), special)
        merges = event.scalars["merges"]
        return replay(symbols, merges, len(merges) if self._merge is None else self._merge)

    def _byte_level(self) -> bool:
        """Whether the symbols are GPT-2 byte stand-ins (the vocabulary's model says; the trace's
        pieces are already decoded text)."""
        model = self._trace.info.get("vocab", {}).get("model")
        return model == "gpt2" if model else piece_format(self._trace).byte_level

    def _show_merges(self) -> None:
        panel = self.query_one("#tokens-merges", TextPanel)
        state = self.merge_state() if self._merge is not None else None
        if panel.display != (self._merge is not None):
            panel.display = self._merge is not None
        if self._merge is None:
            return
        if state is None:
            self._update("#tokens-merges", assemble(("BPE merges", "bold"),
                                                    (" · none recorded in this trace's tokenize stop", colors.DIM)))
            return
        sentencepiece = self._trace.info.get("vocab", {}).get("model") == "llama"
        lines = merge_lines(state, self._byte_level(), sentencepiece, max(20, self.size.width - 2))
        self._update("#tokens-merges", Text("\n", end="").join(lines))

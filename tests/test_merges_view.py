"""The tokens view's BPE merge replay: the tokenizer's own merges, stepped one at a time with `}` / `{`."""

from dataclasses import replace

import pytest

from engine.hooks import HookBus
from engine.model_file import ModelFile
from engine.tokenizer import SPACE_MARK, Tokenizer
from inspector.app import make_app
from tests.fixtures.screen import screen_lines
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.schema import Event
from views.merges import initial_symbols, replay

PROMPT = "hello llama, the hello"
SMALL = (80, 24)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    """The tiny model's prompt through the engine's own encode (text and tokenize stops), with
    the stops' times fixed so the screen is the same on every run."""
    model = ModelFile(str(write_tiny_llama(tmp_path_factory.mktemp("m") / "tiny.gguf")), bus=HookBus())
    events: list[Event] = []
    model.bus.add(events.append)
    model.encode(PROMPT)
    trace = MemoryTrace(model.info(PROMPT, 4, engine={"name": "torch", "device": "cpu", "dtype": "float32"}))
    for event in events:
        trace.append(replace(event, t_start_ns=0, dur_ns=12_000))
    trace.finish()
    return model, trace


def test_replay_agrees_with_the_tokenizer_after_every_merge(tokenized):
    model, trace = tokenized
    enc = model.tokenizer.encode(PROMPT)
    event = trace.get(0, "tokenize")
    symbols = initial_symbols(event, True, set())
    merges = event.scalars["merges"]
    assert len(merges) == 9
    for k in range(len(merges) + 1):
        per_split = [sum(1 for m in merges[:k] if m[0] == split) for split in range(len(enc.splits))]
        state = replay(symbols, merges, k)
        assert state.splits == [enc.replay(split, n) for split, n in enumerate(per_split)]
        if k:
            split, index = state.made
            assert state.splits[split][index] == merges[k - 1][4] == "".join(state.pair)
    # after the last merge each split's symbols are its tokens' pieces
    assert [p for split in replay(symbols, merges, len(merges)).splits for p in split] == enc.pieces


def test_a_trace_without_symbols_gets_them_from_the_splits(tokenized):
    _, trace = tokenized
    event = trace.get(0, "tokenize")
    older = replace(event, scalars={k: v for k, v in event.scalars.items() if k != "symbols"})
    assert initial_symbols(older, True, set()) == initial_symbols(event, True, set())
    spm = Tokenizer("llama", ["<unk>", "<s>", "</s>", SPACE_MARK, "h", "i", "hi", SPACE_MARK + "hi"],
                    [2, 3, 3, 1, 1, 1, 1, 1], scores=[0, 0, 0, -1, -1, -1, -0.5, -0.2])
    enc = spm.encode("hi hi")
    event = Event(0, "tokenize", 0, scalars={"splits": enc.splits, "merges": [list(m) for m in enc.merges]})
    assert initial_symbols(event, False, set()) == enc.symbols
    assert replay(enc.symbols, event.scalars["merges"], len(enc.merges)).splits[0] == enc.pieces[1:]  # after BOS


async def test_braces_step_through_the_merges_and_back_out(tokenized):
    _, trace = tokenized
    app = make_app(trace)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.press("tab", *["right_curly_bracket"] * 5)  # the symbols, then 4 merges
        text = "\n".join(screen_lines(app))
        assert "BPE merges · 4/9 · rank 6: a + m → am" in text
        await pilot.press(*["left_curly_bracket"] * 4)
        text = "\n".join(screen_lines(app))
        assert "BPE merges · 0/9 · the symbols before any merge" in text
        assert "h   e   l   l   o" in text  # "hello" split into its bytes
        await pilot.press("left_curly_bracket")
        assert "BPE merges ·" not in "\n".join(screen_lines(app))
        await pilot.press("left_curly_bracket")  # from off, straight to the end
        assert "BPE merges · 9/9" in "\n".join(screen_lines(app))


def test_snapshot_mid_replay(snap_compare, tokenized):
    _, trace = tokenized
    assert snap_compare(make_app(trace), press=["tab", *["right_curly_bracket"] * 7], terminal_size=SMALL)


async def test_a_trace_without_merges_says_so():
    from tests.fixtures import synthetic

    app = make_app(synthetic.trace())
    async with app.run_test(size=(140, 40)) as pilot:  # the panel sits below the chat prompt's chips
        await pilot.press("tab", "right_curly_bracket")
        assert "BPE merges · none recorded in this trace's tokenize stop" in "\n".join(screen_lines(app))

"""Stop strings: caught across tokens, held back while they may still complete, never streamed."""

import itertools
import random

import pytest

from engine.hooks import HookBus
from engine.stop import StopMatcher, StopStringError
from engine.stream import TextStream
from traces.live import MemoryTrace


def stream_all(chunks: list[bytes], stops: list[str]) -> tuple[list[str], TextStream]:
    s = TextStream(stops)
    out = [s.push(c) for c in chunks]
    if s.matched is None:
        out.append(s.flush())
    return out, s


def test_a_stop_string_across_tokens_is_caught_and_not_streamed():
    out, s = stream_all([b"Hello #", b"#", b"# tail"], ["###"])
    assert out == ["Hello ", "", ""] and s.matched == "###"


def test_a_partial_match_is_held_then_released_when_it_cannot_be_a_stop():
    m = StopMatcher(["###"])
    assert m.push("a #") == "a " and m.held == "#" and m.partial == ["###"]
    assert m.push("#") == "" and m.held == "##"
    assert m.push("!") == "##!" and m.held == "" and m.partial == [] and m.matched is None


def test_held_text_is_released_when_the_run_ends_another_way():
    out, s = stream_all([b"x <", b"/e"], ["</end>"])
    assert out == ["x ", "", "</e"] and s.matched is None


def test_the_earliest_stop_wins_then_the_first_listed():
    m = StopMatcher(["lo w", "hello", "ell"])
    assert m.push("say hello world") == "say " and m.matched == "hello"
    m = StopMatcher(["ab", "abc"])
    assert m.push("xabc") == "x" and m.matched == "ab"


def test_a_held_end_may_start_several_stops():
    m = StopMatcher(["\n\n", "\nUser:"])
    assert m.push("done.\n") == "done." and m.partial == ["\n\n", "\nUser:"]
    assert m.push("Us") == "" and m.partial == ["\nUser:"]
    assert m.push("ually") == "\nUsually" and m.held == ""


def test_nothing_is_released_after_a_stop():
    s = TextStream(["END"])
    assert s.push(b"ok END more") == "ok " and s.push(b"more") == "" and s.flush() == ""


@pytest.mark.parametrize("stop", ["###", "é!", "🦙x", "\n\n"])
def test_no_tokenization_ever_leaks_a_stop_string_or_half_a_character(stop):
    """Every way of cutting the bytes into tokens: the stream is exactly the text before the stop,
    released in pieces that are each whole characters and never part of the stop string."""
    text = f"héllo 🦙 wörld #{stop[:-1]}# {stop} after"
    data = text.encode()
    expect = text[: text.index(stop)]
    rng = random.Random(0)
    cuttings = [sorted(rng.sample(range(1, len(data)), k)) for k in (1, 2, 5, 12) for _ in range(40)]
    cuttings += [list(range(1, len(data)))]  # one byte per token
    for cuts in cuttings:
        chunks = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
        out, s = stream_all(chunks, [stop])
        assert "".join(out) == expect and s.matched == stop
        assert all("\ufffd" not in piece for piece in out)
        released = ""
        for piece in out:
            released += piece
            assert expect.startswith(released)  # never anything the stop will take back


def test_bad_stop_strings_are_refused():
    with pytest.raises(StopStringError):
        StopMatcher([""])


def test_an_empty_stop_flag_exits_2(capsys):
    from inspector.cli import main

    assert main(["--headless", "-n", "1", "--stop", ""]) == 2
    assert capsys.readouterr().err == "llm-inspect: error: --stop needs a non-empty string\n"


# The engine: SmolLM2 counts " 5, 6, 7, 8" one token per character --------------------------------


@pytest.fixture(scope="module")
def counting():
    from engine.torch_engine import TorchEngine
    from inspector.common import demo_model

    bus = HookBus()
    engine = TorchEngine(demo_model(), numerics="exact", bus=bus)
    trace = MemoryTrace(engine.info("Count: 1, 2, 3, 4,", 12, stop=[", 7"]))
    bus.add(trace)
    results = list(engine.generate("Count: 1, 2, 3, 4,", 12, stop=[", 7"]))
    return engine, trace, results


def test_the_engine_stops_at_a_stop_string_spanning_three_tokens(counting):
    engine, trace, results = counting
    pieces = [engine.tokenizer.token_text(r.token) for r in results]
    assert pieces == [" ", "5", ",", " ", "6", ",", " ", "7"]  # ", 7" arrives as ",", " ", "7"
    assert [r.stop for r in results] == [None] * 7 + ["stop"]
    assert "".join(r.text for r in results) == trace.streamed_text() == " 5, 6"


def test_the_stop_and_stream_events_show_what_is_held(counting):
    _, trace, _ = counting
    stops = [trace.get(step, "stop").scalars for step in trace.steps]
    streams = [trace.get(step, "stream").scalars for step in trace.steps]
    assert [s["held"] for s in stops] == ["", "", ",", ", ", "", ",", ", ", ""]
    assert stops[3]["partial"] == [", 7"] and stops[4]["partial"] == []
    assert [s["held_stop"] for s in streams] == [s["held"] for s in stops]
    assert stops[-1]["matched"] == ", 7" and stops[-1]["reason"] == "stop" and not stops[-1]["eos"]
    assert [s["text"] for s in streams] == [" ", "5", "", "", ", 6", "", "", ""]

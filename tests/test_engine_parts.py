"""The small engine parts a person relies on without seeing: text streaming, the hook bus, the controller."""

import threading

import pytest

from engine.controller import Breakpoint, RunCancelled, RunController
from engine.hooks import HookBus
from engine.stream import TextStream, utf8_complete_prefix
from traces.schema import Event


def test_stream_never_splits_a_utf8_character():
    text = "héllo 👩‍👩‍👧 世界"
    data = text.encode()
    for cut in range(len(data) + 1):
        s = TextStream()
        out = s.push(data[:cut]) + s.push(data[cut:]) + s.flush()
        assert out == text, cut
    # byte by byte: every released chunk is valid UTF-8 on its own, and nothing is lost
    s = TextStream()
    chunks = [s.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(chunks) + s.flush() == text
    assert all("\ufffd" not in c for c in chunks)


def test_utf8_prefix_holds_back_only_the_unfinished_character():
    assert utf8_complete_prefix("a€".encode()[:-1]) == 1
    assert utf8_complete_prefix("a€".encode()) == 4
    assert utf8_complete_prefix(b"abc") == 3


def test_bus_without_listeners_wants_nothing():
    bus = HookBus()
    assert not bus.wants("attn", 3)
    seen = []
    bus.add(seen.append)
    assert bus.wants("attn", 3)
    bus.set_filter(lambda stop, layer: stop == "logits")
    assert not bus.wants("attn", 3) and bus.wants("logits")


def test_bus_events_carry_numpy_copies_and_increasing_seq():
    torch = pytest.importorskip("torch")
    bus = HookBus()
    seen: list[Event] = []
    bus.add(seen.append)
    t = torch.ones(2, 3)
    bus.emit("attn_norm", 0, 1, tensors={"out": t}, note="x")
    t += 1  # the engine reuses its buffers: the event must not change with them
    bus.emit("logits", 0)
    assert [e.seq for e in seen] == [0, 1]
    assert seen[0].tensors["out"].tolist() == [[1.0] * 3] * 2
    assert seen[0].layer == 1 and seen[0].scalars == {"note": "x"}
    with pytest.raises(ValueError, match="unknown stop"):
        bus.emit("no_such_stop", 0)


def test_breakpoint_parse():
    assert Breakpoint.parse("attn@3") == Breakpoint("attn", 3, None)
    assert Breakpoint.parse("logits:5") == Breakpoint("logits", None, 5)
    assert str(Breakpoint.parse("attn@3:0")) == "attn@3:0"
    with pytest.raises(ValueError):
        Breakpoint.parse("nonsense@1")
    with pytest.raises(ValueError):
        Breakpoint.parse("attn@x")


def _events():
    seq = 0
    for step in range(2):
        for layer in range(3):
            for stop in ("attn_norm", "attn"):
                yield Event(seq, stop, step, layer)
                seq += 1
        yield Event(seq, "logits", step)
        seq += 1


def test_controller_stops_at_breakpoint_then_steps_and_resumes():
    ctl = RunController([Breakpoint("attn", 1, 0)])
    passed: list[str] = []

    def engine():
        for e in _events():
            ctl(e)
            passed.append(e.describe())

    th = threading.Thread(target=engine)
    th.start()
    _wait(lambda: ctl.paused)
    assert ctl.paused_at.describe() == "step 0 · attn · layer 1"
    assert ctl.reason == "breakpoint attn@1:0"
    ctl.step()
    _wait(lambda: ctl.paused and ctl.paused_at.stop == "attn_norm")
    assert ctl.paused_at.layer == 2 and ctl.reason == "stepped"
    ctl.resume()
    th.join(5)
    assert not th.is_alive() and len(passed) == 14


def test_controller_cancel_ends_a_paused_run():
    ctl = RunController(start_paused=True)
    errors = []

    def engine():
        try:
            for e in _events():
                ctl(e)
        except RunCancelled:
            errors.append("cancelled")

    th = threading.Thread(target=engine)
    th.start()
    _wait(lambda: ctl.paused)
    ctl.cancel()
    th.join(5)
    assert errors == ["cancelled"]


def _wait(cond, tries=500):
    import time

    for _ in range(tries):
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")

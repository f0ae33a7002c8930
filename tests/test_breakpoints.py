"""Breakpoints a person types (--break, the UI) and the controller's step modes."""

import threading
import time

import pytest

from engine.breakpoints import Breakpoint
from engine.controller import RunController
from traces.schema import Event


def ev(stop, step=0, layer=None, dur_ms=0.0, **scalars):
    return Event(0, stop, step, layer, scalars=scalars, dur_ns=int(dur_ms * 1e6))


@pytest.mark.parametrize(
    "text, hit, miss",
    [
        ("attn@3", ev("attn", 1, 3), ev("attn", 1, 2)),
        ("logits:5", ev("logits", 5), ev("logits", 4)),
        ("entropy>4", ev("logits", 0, entropy=4.5), ev("logits", 0, entropy=3.9)),
        ("top1<0.2", ev("logits", 0, top_probs=[0.15, 0.1]), ev("logits", 0, top_probs=[0.6, 0.1])),
        ("slow>5ms", ev("ffn_out", 0, 7, dur_ms=6), ev("ffn_out", 0, 7, dur_ms=4)),
        ("slow>500us", ev("attn", 0, 1, dur_ms=0.6), ev("attn", 0, 1, dur_ms=0.4)),
        ("attn@3 slow>1ms", ev("attn", 2, 3, dur_ms=2), ev("attn", 2, 4, dur_ms=2)),
        ("token=42", ev("sample", 3, token=42, piece=" Paris"), ev("sample", 3, token=41, piece=" Rome")),
        ("token=Paris", ev("sample", 3, token=42, piece=" Paris"), ev("sample", 3, token=41, piece=" Rome")),
    ],
)
def test_breakpoint_matches_what_it_says(text, hit, miss):
    bp = Breakpoint.parse(text)
    assert bp.matches(hit)
    assert not bp.matches(miss)
    assert Breakpoint.parse(str(bp)) == bp  # what the status bar shows parses back to the same breakpoint


def test_conditions_imply_their_stop():
    assert Breakpoint.parse("entropy>4").stop == "logits"
    assert Breakpoint.parse("token=7").stop == "sample"
    assert not Breakpoint.parse("entropy>1").matches(ev("attn", 0, 0, entropy=9.0))


@pytest.mark.parametrize("text", ["", "nonsense@1", "attn@x", "entropy>lots", "entropy>3ms", "attn entropy>3", "token=", "slow>3parsecs"])
def test_bad_breakpoints_are_clear_errors(text):
    with pytest.raises(ValueError, match="breakpoint|stop"):
        Breakpoint.parse(text)


def _events():
    for step in range(3):
        for layer in range(3):
            for stop in ("attn_norm", "attn", "ffn_out"):
                yield Event(0, stop, step, layer)
        yield Event(0, "logits", step)


def _run(ctl):
    seen = []

    def engine():
        for e in _events():
            ctl(e)
            seen.append(e)

    th = threading.Thread(target=engine, daemon=True)
    th.start()
    return th, seen


def _wait_paused(ctl, after=None, tries=500):
    """The event the run is paused at, once it is paused somewhere other than `after`."""
    for _ in range(tries):
        at = ctl.paused_at
        if at is not None and at is not after:
            return at
        time.sleep(0.01)
    raise AssertionError("the run never paused")


def test_step_over_layer_and_run_to_next_token():
    ctl = RunController([Breakpoint.parse("attn@1:0")])
    th, _ = _run(ctl)
    at = _wait_paused(ctl)
    assert (at.step, at.stop, at.layer) == (0, "attn", 1)
    ctl.step_layer()
    at = _wait_paused(ctl, after=at)
    assert (at.step, at.stop, at.layer) == (0, "attn_norm", 2) and ctl.reason == "stepped over the layer"
    ctl.step_token()
    at = _wait_paused(ctl, after=at)
    assert (at.step, at.stop, at.layer) == (1, "attn_norm", 0) and ctl.reason == "ran to the next token"
    ctl.resume()
    th.join(5)
    assert not th.is_alive()


def test_run_to_end_ignores_breakpoints():
    ctl = RunController([Breakpoint.parse("attn")], start_paused=True)
    th, seen = _run(ctl)
    _wait_paused(ctl)
    ctl.run_to_end()
    th.join(5)
    assert not th.is_alive() and len(seen) == 30

"""The inspector's collector policy: no full collection inside a keypress, garbage freed in a pause."""

from __future__ import annotations

import gc
import weakref

import pytest

import inspector.collector as collector_module
from inspector.collector import GEN2_DUE, IDLE_S, MAX_DUE, Collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(collector_module, "monotonic", lambda: now[0])
    return now


@pytest.fixture
def collector(clock):
    c = Collector()
    c.start()
    yield c
    c.release()
    gc.collect()


def old_garbage() -> weakref.ref:
    """A cycle that lived long enough to reach the oldest generation, then became garbage: only a
    full collection frees it."""
    node = Node()
    gc.collect(1)  # survivors of a middle-generation collection move to the oldest
    ref = weakref.ref(node)
    del node
    return ref


def make_due(n: int) -> None:
    for _ in range(n):
        gc.collect(1)  # each counts towards the next full collection, as Python's own do


def test_python_runs_no_full_collection_while_the_app_is_up(clock):
    before = gc.get_threshold()
    c = Collector()
    c.start()
    try:
        assert gc.get_threshold()[:2] == before[:2]  # the young generations as usual
        ref = old_garbage()
        for _ in range(50):
            [Node() for _ in range(before[0] + 1)]  # enough allocations for many young collections
        assert ref() is not None
    finally:
        c.release()
    assert gc.get_threshold() == before
    gc.collect()


def test_a_due_collection_waits_for_a_pause(collector, clock):
    ref = old_garbage()
    make_due(GEN2_DUE)
    collector.on_input()
    collector.tick()
    assert ref() is not None and collector.sweeps == 0  # a key was just pressed
    clock[0] += IDLE_S
    collector.tick()
    assert ref() is None and collector.sweeps == 1
    collector.tick()
    assert collector.sweeps == 1  # nothing due any more


def test_a_pause_alone_does_not_collect(collector, clock):
    ref = old_garbage()
    clock[0] += 10 * IDLE_S
    collector.tick()
    assert ref() is not None and collector.sweeps == 0  # not due yet: as Python would not either


def test_without_a_pause_garbage_is_still_bounded(collector, clock):
    ref = old_garbage()
    make_due(MAX_DUE)
    collector.on_input()
    collector.tick()
    assert ref() is None and collector.sweeps == 1

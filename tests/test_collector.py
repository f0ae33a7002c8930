"""The inspector's collector policy: nothing collected in a keypress, garbage freed after a pause."""

from __future__ import annotations

import gc
import weakref

import pytest

import inspector.collector as collector_module
from inspector.collector import Collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cycle collector frees it


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.release()
    gc.collect()


def test_a_press_freezes_what_exists(collector):
    gc.unfreeze()
    kept = [Node() for _ in range(100)]
    collector.on_input()
    assert gc.get_freeze_count() >= len(kept)
    seen = {id(o) for o in gc.get_objects()}  # what a collection walks: frozen objects are not in it
    assert not any(id(n) in seen for n in kept)


def test_garbage_cycles_are_freed_after_a_pause(collector, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(collector_module, "monotonic", lambda: now[0])
    node = Node()
    ref = weakref.ref(node)
    collector.on_input()  # the node is frozen while alive
    del node
    gc.collect()
    assert ref() is not None  # frozen: a collection during the busy stretch does not touch it
    now[0] += collector_module.IDLE_S / 2
    collector.tick()
    assert ref() is not None and collector.sweeps == 0  # no pause yet
    now[0] += collector_module.IDLE_S
    collector.tick()
    assert ref() is None and collector.sweeps == 1
    collector.tick()
    assert collector.sweeps == 1  # nothing pressed since: no second sweep


def test_a_busy_stretch_is_bounded(collector, monkeypatch):
    monkeypatch.setattr(collector_module, "MAX_BUSY_INPUTS", 3)
    collector.on_input()
    sweeps = collector.sweeps
    refs = []
    for _ in range(5):
        nodes = [Node() for _ in range(600)]
        refs += [weakref.ref(n) for n in nodes]
        collector.on_input()  # never idle
        del nodes
    assert collector.sweeps > sweeps
    assert sum(r() is None for r in refs) >= 600  # cycles frozen before a sweep were freed by it

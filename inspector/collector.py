"""When Python's cycle collector runs: between keypresses, not in the middle of one.

A full collection walks every container object the collector tracks: the trace's index, the
widgets, and the views' caches of drawn lines (each Segment is a tuple). Left to its thresholds it
ran every few dozen presses and took 60-90 ms on a 2-core machine, the slowest thing a keypress
ever did (bench/ui.py). So:

* at each key or mouse press, what exists is frozen (`gc.freeze`, which moves the tracked objects
  out of the collector's sight at no cost): automatic collections then walk only what the
  press itself allocates, a few milliseconds at most;
* once nobody has pressed anything for `IDLE_S`, the objects are unfrozen and a full collection
  frees the cycles that became garbage meanwhile, then what is left is frozen again.

Most of that garbage is Textual's: each Strip it paints keeps caches that can hold the Strip
itself, so every line painted becomes a cycle (~700 objects a keypress, bench/ui.py). A sweep
costs about what one full collection did, but while nobody waits for the screen. Someone who
never pauses (a key held down) gets a sweep anyway after `MAX_BUSY_INPUTS` inputs without one
(a press reaches the app as one or two key events): the garbage a busy stretch holds is bounded.
Objects freed by reference counting, most of what a press drops, are freed at once either way.
"""

from __future__ import annotations

import gc
from time import monotonic

IDLE_S = 1.0
MAX_BUSY_INPUTS = 2000


class Collector:
    def __init__(self) -> None:
        self.last_input = monotonic()
        self.pending = 0  # inputs since the last full collection
        self.sweeps = 0

    def on_input(self) -> None:
        """A key or mouse press arrived: freeze what exists before handling it (`gc.freeze` only
        moves list heads; `gc.get_freeze_count` would walk every frozen object, ~9 ms)."""
        gc.freeze()
        self.last_input = monotonic()
        self.pending += 1
        if self.pending >= MAX_BUSY_INPUTS:
            self.sweep()

    def tick(self) -> None:
        """Called on an interval: sweep once the person has paused."""
        if self.pending and monotonic() - self.last_input >= IDLE_S:
            self.sweep()

    def release(self) -> None:
        """The app is closing: hand everything back to the collector."""
        gc.unfreeze()

    def sweep(self) -> None:
        self.pending = 0
        self.sweeps += 1
        gc.unfreeze()
        gc.collect()
        gc.freeze()

"""When Python's full cycle collections run: in a pause between keypresses, not inside one.

A full collection walks every container object the collector tracks: the trace's index, the
widgets, the views' caches of drawn lines (each Segment is a tuple). Left to its thresholds it
ran every few dozen presses and took 60-90 ms on a 2-core machine, the slowest thing a keypress
ever did (bench/ui.py). So:

* what exists once the app is up (modules, widgets, the trace's index) is frozen (`gc.freeze`):
  it lives as long as the app, and no collection walks it again;
* Python's own full collections are switched off (a third threshold it never reaches); the young
  generations are still collected as usual, a few milliseconds at most;
* a full collection runs once Python would have run one (`GEN2_DUE` collections of the middle
  generation since the last) and nobody has pressed anything for `IDLE_S`; or anyway, pause or
  not, once `MAX_DUE` are due, so a key held down for minutes, or a live run nobody touches,
  cannot pile garbage up without end.

Most of the garbage is Textual's: each Strip it paints keeps caches that can hold the Strip
itself, so lines painted become cycles. Objects freed by reference counting, most of what a
press drops, are freed at once either way.
"""

from __future__ import annotations

import gc
from time import monotonic

IDLE_S = 0.5
GEN2_DUE = 10  # Python's default third threshold
MAX_DUE = 100
NEVER = 1 << 30


class Collector:
    def __init__(self) -> None:
        self.last_input = monotonic()
        self.sweeps = 0
        self._thresholds: tuple[int, int, int] | None = None

    def start(self) -> None:
        """The app is up: freeze what exists, and take full collections over."""
        gc.freeze()
        if self._thresholds is None:
            self._thresholds = gc.get_threshold()
            young, middle, _ = self._thresholds
            gc.set_threshold(young, middle, NEVER)

    def on_input(self) -> None:
        """A key or mouse press arrived."""
        self.last_input = monotonic()

    def tick(self) -> None:
        """Called on an interval: a full collection when one is due and the person has paused."""
        due = gc.get_count()[2]
        if due >= MAX_DUE or (due >= GEN2_DUE and monotonic() - self.last_input >= IDLE_S):
            self.sweep()

    def sweep(self) -> None:
        self.sweeps += 1
        gc.collect()

    def release(self) -> None:
        """The app is closing: hand collections back to Python."""
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        gc.unfreeze()

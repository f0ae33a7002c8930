"""The run controller: pause, step and breakpoints, as the last listener on the hook bus.

The engine runs in its own thread and calls the controller at every stop it emits. When
the controller decides to stop there (the user pressed pause, asked to step, or a
breakpoint matched) it blocks the engine thread until the UI thread resumes or steps it.
The engine needs no knowledge of any of this: it is stopped inside `emit`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from traces.schema import Event, check_stop


@dataclass(frozen=True)
class Breakpoint:
    """Stop at a stop name, optionally only at one layer and/or one step."""

    stop: str
    layer: int | None = None
    step: int | None = None

    def matches(self, event: Event) -> bool:
        return (
            event.stop == self.stop
            and (self.layer is None or event.layer == self.layer)
            and (self.step is None or event.step == self.step)
        )

    @classmethod
    def parse(cls, text: str) -> "Breakpoint":
        """`attn`, `attn@3` (layer 3), `logits:5` (step 5), `attn@3:0`."""
        spec, _, step = text.partition(":")
        stop, _, layer = spec.partition("@")
        check_stop(stop)
        try:
            return cls(stop, int(layer) if layer else None, int(step) if step else None)
        except ValueError:
            raise ValueError(f"bad breakpoint {text!r}: expected STOP[@LAYER][:STEP]") from None

    def __str__(self) -> str:
        text = self.stop
        if self.layer is not None:
            text += f"@{self.layer}"
        if self.step is not None:
            text += f":{self.step}"
        return text


class RunController:
    def __init__(self, breakpoints: list[Breakpoint] | None = None, start_paused: bool = False) -> None:
        self.breakpoints: list[Breakpoint] = list(breakpoints or [])
        self._pause_at_next = start_paused
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False
        self._stepping = False
        self.paused_at: Event | None = None  # the event the run is stopped at, if paused
        self.reason = "running"

    # Called in the engine thread by the hook bus.
    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._cancelled:
                raise RunCancelled()
            hit = next((b for b in self.breakpoints if b.matches(event)), None)
            if not (self._pause_at_next or hit):
                return
            self.reason = f"breakpoint {hit}" if hit else ("stepped" if self._stepping else "paused")
            self._pause_at_next = self._stepping = False
            self.paused_at = event
            self._go.clear()
        self._go.wait()
        with self._lock:
            if self._cancelled:
                raise RunCancelled()
            self.paused_at = None
            if not self._pause_at_next:
                self.reason = "running"

    # Called from the UI thread.
    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def pause(self) -> None:
        """Stop at the next stop the engine reaches."""
        with self._lock:
            self._pause_at_next = True

    def resume(self) -> None:
        with self._lock:
            self._pause_at_next = self._stepping = False
            self._go.set()

    def step(self) -> None:
        """Let the engine run to the next stop and stop there."""
        with self._lock:
            self._pause_at_next = self._stepping = True
            self._go.set()

    def cancel(self) -> None:
        """End the run: the engine thread raises RunCancelled at its next stop."""
        with self._lock:
            self._cancelled = True
            self._go.set()


class RunCancelled(Exception):
    """Raised in the engine thread when the user quits a live run."""

"""The run controller: pause, step and breakpoints, as the last listener on the hook bus.

The engine runs in its own thread and calls the controller at every stop it emits. When
the controller decides to stop there (the user pressed pause, asked to step, or a
breakpoint matched) it blocks the engine thread until the UI thread resumes or steps it.
The engine needs no knowledge of any of this: it is stopped inside `emit`.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from engine.breakpoints import Breakpoint, PeerTimes
from traces.schema import Event

__all__ = ["Breakpoint", "RunCancelled", "RunController"]


class RunController:
    def __init__(self, breakpoints: list[Breakpoint] | None = None, start_paused: bool = False) -> None:
        self.breakpoints: list[Breakpoint] = list(breakpoints or [])
        # When set, the engine stops at the first event this accepts (pause, or one of the step modes).
        self._pause_when: Callable[[Event], bool] | None = (lambda e: True) if start_paused else None
        self._why = "paused"
        self._ignore_breakpoints = False  # "run to the end"
        self._go = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False
        self.paused_at: Event | None = None  # the event the run is stopped at, if paused
        self.reason = "running"
        self.peers = PeerTimes()  # for relative timing breakpoints (slow>3x)
        self.blocked_ns = 0  # time the engine thread waited here for the user (engine/hooks.py's HookCost)

    # Called in the engine thread by the hook bus.
    def __call__(self, event: Event) -> None:
        with self._lock:
            if self._cancelled:
                raise RunCancelled()
            hit = None if self._ignore_breakpoints else next(
                (b for b in self.breakpoints if b.matches(event, self.peers)), None)
            self.peers.add(event)
            stepped = self._pause_when is not None and self._pause_when(event)
            if not (stepped or hit):
                return
            self.reason = f"breakpoint {hit}" if hit and not stepped else self._why
            self._pause_when = None
            self.paused_at = event
            self._go.clear()
        waited = time.perf_counter_ns()
        self._go.wait()
        self.blocked_ns += time.perf_counter_ns() - waited  # not the hooks' cost: the bus leaves it out
        with self._lock:
            if self._cancelled:
                raise RunCancelled()
            self.paused_at = None
            if self._pause_when is None:
                self.reason = "running"

    # Called from the UI thread.
    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def _continue(self, pause_when: Callable[[Event], bool] | None, why: str) -> None:
        with self._lock:
            self._pause_when, self._why = pause_when, why
            self._ignore_breakpoints = False
            self._go.set()

    def pause(self) -> None:
        """Stop at the next stop the engine reaches."""
        with self._lock:
            self._pause_when, self._why = (lambda e: True), "paused"

    def resume(self) -> None:
        self._continue(None, "running")

    def step(self) -> None:
        """Let the engine run to the next stop and stop there."""
        self._continue(lambda e: True, "stepped")

    def step_layer(self) -> None:
        """Step over the rest of this layer: stop at the first stop of another layer or step."""
        here = self.paused_at
        if here is None:
            return self.step()
        self._continue(lambda e: e.step != here.step or e.layer != here.layer, "stepped over the layer")

    def step_token(self) -> None:
        """Run to the next token: stop at the first stop of the next step."""
        here = self.paused_at
        if here is None:
            return self.step()
        self._continue(lambda e: e.step > here.step, "ran to the next token")

    def run_to_end(self) -> None:
        """Resume and ignore every breakpoint until the run ends (or the user pauses)."""
        with self._lock:
            self._pause_when, self._ignore_breakpoints = None, True
            self._go.set()

    def cancel(self) -> None:
        """End the run: the engine thread raises RunCancelled at its next stop."""
        with self._lock:
            self._cancelled = True
            self._go.set()


class RunCancelled(Exception):
    """Raised in the engine thread when the user quits a live run."""

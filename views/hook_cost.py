"""What watching cost: the hook machinery's own time in a step, as one line of text.

The profile (inspector/commands/profile.py) prints it for the median profiled step and the
timing view (views/timing.py) for the step on screen. The figures come from the trace
(traces/schema.py HookCost, measured by engine/hooks.py): the time inside the bus's emit --
tensor copies, listeners, clock reads -- which no stop's duration includes, so a person can
tell how much of a step the inspector itself added.
"""

from __future__ import annotations

from traces.schema import HookCost
from views.format import duration

NOT_MEASURED = "hooks: not measured in this trace"


def hooks_text(cost: HookCost | None, per: str = "a step", short: bool = False) -> str:
    """`hooks: 1.2ms a step (4.1% of the step: copies 0.9ms, listeners 0.2ms, clock 10.0µs for 277 stops)`;
    `short` (a narrow view): `hooks 1.2ms (4.1%): copies 0.9ms, listeners 0.2ms, clock 10.0µs, 277 stops`."""
    if cost is None:
        return NOT_MEASURED
    share = cost.hooks_ns / cost.wall_ns if cost.wall_ns else 0.0
    parts = [f"copies {duration(cost.copy_ns)}", f"listeners {duration(cost.listener_ns)}"]
    if cost.callback_ns:
        parts.append(f"eval callback {duration(cost.callback_ns)}")
    if short:
        parts.append(f"clock {duration(cost.clock_ns)}, {cost.stops} stops")
        text = f"hooks {duration(cost.hooks_ns)} ({share:.1%}): {', '.join(parts)}"
    else:
        parts.append(f"clock {duration(cost.clock_ns)} for {cost.stops} stops")
        text = f"hooks: {duration(cost.hooks_ns)} {per} ({share:.1%} of the step: {', '.join(parts)})"
    if cost.blocked_ns:
        text += f"; {duration(cost.blocked_ns)} paused, left out"
    return text

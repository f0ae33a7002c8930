"""The event schema: the one language the engines, the recorder and the views share.

An engine emits one `Event` per stop it passes. The stop catalog below is the map the
inspector's navigator follows (DESIGN.md's 28-stop map); every stop an engine emits
must be named here, so a trace written by any engine is readable by every view.

Keys are fields, never parsed out of strings: `(step, stop, layer, part)` names an
event. `step` 0 is the prefill, then one step per generated token. `layer` is None for
stops outside the layer stack. `part` distinguishes several events of one stop in one
step (a sampler stage such as "top_k", a KV cache "k"/"v" write); it is "" otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Stop:
    name: str       # the key used in events: "attn_norm"
    code: str       # the seed essay's chapter: "C06"
    phase: str      # "entry", "layer", "exit", "protocol", "production"
    title: str      # what the navigator shows
    per_layer: bool  # emitted once per layer
    tensors: str    # what the event carries, for docs/STOPS.md and the UI's help


# Order matters: it is the order in which one token's computation passes the stops,
# and the navigator lists them in this order.
STOPS: tuple[Stop, ...] = (
    Stop("text", "C01", "entry", "text", False, "prompt text, its UTF-8 bytes, chat-template output"),
    Stop("tokenize", "C03", "entry", "tokenize", False, "ids, pieces, pre-tokenizer splits, BPE merges in rank order"),
    Stop("embed", "C04", "entry", "embeddings", False, "embedding rows [T, d], their norms"),
    Stop("batch", "C05", "entry", "batch", False, "token ids, positions, prefill vs decode"),
    Stop("attn_norm", "C06", "layer", "attn norm", True, "RMSNorm output [T, d]"),
    Stop("qkv", "C07", "layer", "q k v", True, "projections q [T, n_head, hd], k/v [T, n_kv, hd]"),
    Stop("rope", "C06", "layer", "rope", True, "rotated q and k, positions"),
    Stop("kv_write", "C08", "layer", "kv write", True, "cache slots each token went to, occupancy"),
    Stop("gqa", "C10", "layer", "gqa", True, "query head -> kv group map"),
    Stop("mla", "C11", "layer", "mla", True, "compressed KV latent"),
    Stop("attn", "C09", "layer", "attention", True, "softmax weights [n_head, T_q, T_k], sink mass"),
    Stop("attn_out", "C09", "layer", "attn out", True, "attention output after the output projection [T, d]"),
    Stop("ffn_norm", "C06", "layer", "ffn norm", True, "RMSNorm output before the FFN [T, d]"),
    Stop("moe", "C12", "layer", "experts", True, "router logits, chosen experts, gate weights"),
    Stop("ffn_out", "C12", "layer", "ffn out", True, "FFN output [T, d]"),
    Stop("residual", "C09", "layer", "residual", True, "the residual stream after the layer [T, d]"),
    Stop("logits", "C13", "exit", "logits", False, "final-norm output, logits [V] of the last token, top-k"),
    Stop("sample", "C14", "exit", "sample", False, "each sampler stage's candidates and probabilities, the draw"),
    Stop("grammar", "C24", "exit", "grammar", False, "allowed-token mask (packed bits), count"),
    Stop("stop", "C15", "exit", "stop match", False, "EOS / stop-string matching state"),
    Stop("stream", "C23", "protocol", "stream", False, "detokenized bytes, partial UTF-8 held back"),
)

STOP_BY_NAME: dict[str, Stop] = {s.name: s for s in STOPS}
STOP_ORDER: dict[str, int] = {s.name: i for i, s in enumerate(STOPS)}
PHASES: tuple[str, ...] = ("entry", "layer", "exit", "protocol")

# Scalars are small JSON values: numbers, strings, short lists of them.
Scalar = Any


@dataclass
class Event:
    """One stop passed by one step (and one layer, for per-layer stops).

    `tensors` hold numpy arrays on the CPU (the recorder decides which are kept);
    `t_start_ns`/`dur_ns` time the work done since the previous stop of the same step.
    """

    seq: int
    stop: str
    step: int
    layer: int | None = None
    part: str = ""
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    scalars: dict[str, Scalar] = field(default_factory=dict)
    t_start_ns: int = 0
    dur_ns: int = 0

    @property
    def key(self) -> tuple[int, str, int | None, str]:
        return (self.step, self.stop, self.layer, self.part)

    def to_torch(self) -> dict:
        """The tensors as torch tensors, each its own copy (a trace file's arrays are read-only views)."""
        import torch

        return {name: torch.from_numpy(np.array(value)) for name, value in self.tensors.items()}

    def describe(self) -> str:
        where = f"step {self.step} · {self.stop}"
        if self.layer is not None:
            where += f" · layer {self.layer}"
        if self.part:
            where += f" · {self.part}"
        return where


@dataclass(frozen=True)
class HookCost:
    """What the hook machinery cost one step (engine/hooks.py measures it; docs/TRACE_FORMAT.md `hooks`):
    the time inside the bus's `emit` -- the tensor copies, the listeners, the clock reads and the
    rest of building an event -- and, for the llama.cpp engine, inside its eval callback. Time a
    listener spent blocked (a controller paused at a breakpoint) is counted apart, in none of the others.
    None of it is in any stop's `dur_ns`, except the eval callback's (it runs between llama.cpp's nodes)."""

    stops: int  # events emitted in the step
    hooks_ns: int  # all of it: copy + listener + callback + clock + the rest of building the events
    copy_ns: int = 0  # copying the captured tensors off the engine's buffers
    listener_ns: int = 0  # the listeners (recorder, live trace, controller); in the engine's thread only
    callback_ns: int = 0  # llama.cpp's eval callback outside emit: asking for and reading the graph's nodes
    clock_ns: int = 0  # timing alone: stops x boundary_ns
    boundary_ns: float = 0.0  # one stop boundary's clock reads (and CUDA event records), calibrated at bus start
    blocked_ns: int = 0  # listeners waiting for the user, left out of everything above
    wall_ns: int = 0  # the step on the engine thread's clock, hooks included, blocked time excluded

    FIELDS = ("stops", "hooks_ns", "copy_ns", "listener_ns", "callback_ns", "clock_ns", "boundary_ns",
              "blocked_ns", "wall_ns")

    def to_json(self) -> dict:
        return {k: getattr(self, k) for k in self.FIELDS}

    @classmethod
    def from_json(cls, obj) -> HookCost:
        """From a table's `hooks` object; unknown keys are ignored, a wrong type raises ValueError."""
        if not isinstance(obj, dict):
            raise ValueError("hooks: not a JSON object")
        values = {}
        for k in cls.FIELDS:
            v = obj.get(k, 0)
            if type(v) not in (int, float) or v < 0 or (k != "boundary_ns" and type(v) is not int):
                raise ValueError(f"hooks: {k} is not a non-negative {'number' if k == 'boundary_ns' else 'integer'}")
            values[k] = v
        if "stops" not in obj or "hooks_ns" not in obj:
            raise ValueError("hooks: stops and hooks_ns are required")
        return cls(**values)


def check_stop(name: str) -> Stop:
    try:
        return STOP_BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stop {name!r}; known stops: {', '.join(STOP_BY_NAME)}") from None

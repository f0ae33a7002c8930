"""What the person is looking at: one step, one stop (and layer, head), in one view.

The app owns the current `Selection` and hands it down to the views ("attributes down");
a view renders `(trace, selection)` and nothing else, so live and replay are the same code.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from traces.schema import STOP_BY_NAME

# Which view shows a stop; every other stop gets the generic event view.
VIEW_FOR_STOP: dict[str, str] = {
    "text": "tokens",
    "tokenize": "tokens",
    "stream": "tokens",
    "attn": "attention",
    "gqa": "attention",
    "logits": "logits",
    "sample": "sampling",
    "qkv": "qkv",
    "rope": "qkv",
    "kv_write": "kv",
    "embed": "residual",
    "residual": "residual",
    "grammar": "grammar",
    "moe": "moe",
    "mla": "mla",
}
# The stop a view stands for when it is picked by its key.
STOP_FOR_VIEW: dict[str, str] = {
    "tokens": "tokenize", "attention": "attn", "logits": "logits", "residual": "residual", "qkv": "qkv",
    "sampling": "sample", "kv": "kv_write", "grammar": "grammar",
    "moe": "moe",
    "mla": "mla",
}
VIEWS: tuple[str, ...] = ("tokens", "attention", "logits", "qkv", "residual", "sampling", "kv", "grammar", "moe", "mla", "event", "timing")


@dataclass(frozen=True)
class Selection:
    step: int = 0
    stop: str = "tokenize"
    layer: int = 0
    head: int = 0
    view: str = "tokens"

    @property
    def event_layer(self) -> int | None:
        """The layer to look the selected stop's event up with (None for stops outside the layers)."""
        stop = STOP_BY_NAME.get(self.stop)
        return self.layer if stop is not None and stop.per_layer else None

    def with_stop(self, stop: str, layer: int | None = None) -> "Selection":
        """Select a stop (and optionally a layer); the view follows the stop."""
        return replace(self, stop=stop, layer=self.layer if layer is None else layer,
                       view=VIEW_FOR_STOP.get(stop, "event"))

    def with_view(self, view: str) -> "Selection":
        """Pick a view by its key; it brings its own stop, except the event view, which keeps the stop."""
        return replace(self, view=view, stop=STOP_FOR_VIEW.get(view, self.stop))

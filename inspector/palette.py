"""The command palette's stop finder: type `attn 3` or `ffn_out` and jump there.

Every stop the trace has, with its layers, becomes a command; Textual's fuzzy matcher
ranks them. Picking one selects that stop (and layer) at the current step.
"""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from traces.schema import STOP_BY_NAME, STOPS


class StopFinder(Provider):
    def _targets(self) -> list[tuple[str, str, int | None]]:
        app = self.app
        trace = app.trace
        n_layer = trace.n_layer
        present = {e.stop for e in trace.events(app.selection.step)} if trace.steps else set()
        out = []
        for stop in STOPS:
            if present and stop.name not in present:
                continue
            help_text = f"{stop.code} · {stop.phase}"
            if stop.per_layer and n_layer:
                out += [(f"{stop.name} · layer {il}", help_text, il) for il in range(n_layer)]
            else:
                out.append((stop.name, help_text, None))
        return out

    async def discover(self) -> Hits:
        for name, help_text, layer in self._targets():
            if layer in (None, 0):
                yield DiscoveryHit(name, partial(self._go, name.split(" · ")[0], layer), help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query.replace("@", " · layer "))
        for name, help_text, layer in self._targets():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), partial(self._go, name.split(" · ")[0], layer), help=help_text)

    def _go(self, stop: str, layer: int | None) -> None:
        assert stop in STOP_BY_NAME
        self.app.select_stop(stop, layer)

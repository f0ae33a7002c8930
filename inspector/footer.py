"""The key bar at the bottom: Textual's Footer, rebuilt only when the keys it shows change.

Footer throws away and mounts again its ~15 key widgets whenever the screen's bindings are
refreshed: when the help screen closes, on every change of a live run's status line (the app
calls `refresh_bindings` then, since what is enabled may have changed), on a view switch that
enables the head keys. On a 2-core machine that is ~40 ms and a frame of its own (bench/ui.py).
Usually the same keys are shown and at most which of them are enabled changed: that is set on
the key widgets in place, as a class, and the bar looks just as a rebuilt one would. Under the
help screen, which hides it, the bar is not rebuilt at all.
"""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer

try:  # the key widget Footer composes (a private module: where it is absent, the bar is rebuilt as Footer does)
    from textual.widgets._footer import FooterKey
except ImportError:  # pragma: no cover
    FooterKey = None


class KeyFooter(Footer):
    _keys: tuple | None = None  # what the key widgets were composed from

    def bindings_changed(self, screen: Screen) -> None:
        top = screen.app.screen
        if self._keys is not None and top is not screen and top.styles.background.a == 1:
            # Under an opaque screen (help) the bar is not seen, and the bindings are published again
            # when the screen comes back: nothing to do until then. Under a translucent one (the
            # breakpoint editor) it is seen, showing the few keys the app leaves enabled then.
            return
        active = screen.active_bindings
        keys = tuple((b.key, b.action, b.description, b.group, b.key_display)
                     for _, b, _, _ in active.values() if b.show) + (self.app.COMMAND_PALETTE_BINDING in active,)
        attached = screen.app.app_focus and self.is_attached and screen is self.screen
        if keys != self._keys or not self._set_enabled(active):
            if attached:
                self._keys = keys
            super().bindings_changed(screen)

    def _set_enabled(self, active: dict) -> bool:
        """Enable and disable the key widgets in place; False if they cannot be (nothing composed yet,
        or a Textual whose FooterKey keeps this elsewhere)."""
        enabled: dict[str, bool] = {}
        for _, binding, on, _ in active.values():
            enabled.setdefault(binding.action, on)  # Footer shows an action's first binding
        if FooterKey is None:
            return False
        widgets = list(self.query(FooterKey))
        if not widgets or not all(hasattr(w, "_disabled") for w in widgets):
            return False
        for widget in widgets:
            disabled = not enabled.get(widget.action, True)
            if widget._disabled != disabled:
                widget._disabled = disabled  # what a click checks
                widget.set_class(disabled, "-disabled")
        return True

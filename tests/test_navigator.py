"""The navigator: its cursor follows the layer keys, its layer rows show the selected step's times, and
the cursor reaches the screen with the stop it picks."""

from inspector.app import make_app
from traces.live import MemoryTrace
from traces.schema import Event
from views.navigator import Navigator

LARGE = (140, 40)


async def test_the_cursor_follows_each_layer_key(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        nav = app.query_one("#nav")
        await pilot.press("a")  # attention: its stop is closed, so the first move opens it
        await pilot.pause()
        seen = [nav.cursor_node.data]
        for key in ("l", "l", "L", "l", "l"):  # then it is open: the cursor moves at once
            await pilot.press(key)
            await pilot.pause()
            seen.append(nav.cursor_node.data)
        assert [(item.stop, item.layer) for item in seen] == [
            ("attn", 0), ("attn", 1), ("attn", 2), ("attn", 1), ("attn", 2), ("attn", 0)]
        assert app.selection.layer == 0


N_LAYER = 12


def two_step_trace() -> MemoryTrace:
    """12 layers, two steps; each layer's attention takes (step + 1) × 10 µs + layer × 1 µs."""
    trace = MemoryTrace({"model": {"name": "nav-12L", "architecture": "llama", "n_layer": N_LAYER},
                         "vocab": {"pieces": ["a", "b"]}})
    seq = 0
    for step in range(2):
        for stop, layer, ns in [("tokenize", None, 2_000), ("batch", None, 1_000)] + [
                ("attn", il, (step + 1) * 10_000 + il * 1_000) for il in range(N_LAYER)] + [("sample", None, 1_000)]:
            scalars = {"ids": [0, 1]} if stop == "tokenize" else {"token": 1} if stop == "sample" else {}
            trace.append(Event(seq, stop, step, layer, scalars=scalars, t_start_ns=seq, dur_ns=ns))
            seq += 1
    trace.finish()
    return trace


def layer_times(nav, stop: str) -> dict[int, str]:
    """What each layer row of `stop` says after its layer number."""
    rows = {}
    for node in nav.root.children:
        for child in node.children:
            if child.data is not None and child.data.stop == stop and child.data.layer is None:
                for leaf in child.children:
                    rows[leaf.data.layer] = leaf.label.plain.removeprefix(f"layer {leaf.data.layer}").strip()
    return rows


async def test_layer_rows_show_the_selected_steps_times_once_on_screen():
    app = make_app(two_step_trace())
    async with app.run_test(size=(80, 24)) as pilot:
        nav = app.query_one("#nav")
        await pilot.press("a", "right_square_bracket")  # attention opens at layer 0; then step 1
        await pilot.pause()
        top = round(nav.scroll_offset.y)
        rows = [nav.get_node_at_line(y) for y in range(top, top + nav.size.height)]
        on_screen = {node.data.layer for node in rows if node is not None and node.data is not None
                     and node.data.stop == "attn" and node.data.layer is not None}
        assert on_screen and len(on_screen) < N_LAYER  # some layer rows are below the fold
        times = layer_times(nav, "attn")
        for layer in on_screen:
            assert times[layer].startswith(f"{20 + layer}.0µs"), (layer, times[layer])
        for y in range(0, nav.max_scroll_y + 1, 5):  # the rest come into view: they show step 1's times too
            nav.scroll_to(y=y, animate=False)
            await pilot.pause()
        times = layer_times(nav, "attn")
        assert [times[layer] for layer in range(N_LAYER)] == [f"{20 + layer}.0µs" for layer in range(N_LAYER)]


async def test_the_cursor_paints_with_the_stop_it_picks(synthetic_trace, monkeypatch):
    # ↓ and ↑ move the cursor onto another stop: its row must not reach the screen before the app
    # has picked that stop (the cursor in one frame, its view in the next).
    app = make_app(synthetic_trace)
    async with app.run_test(size=LARGE) as pilot:
        nav = app.query_one("#nav")
        await pilot.pause()
        painted_with = []  # at each paint of the navigator: (the cursor's stop, layer), (the app's)
        paint = Navigator.render_lines

        def spy(self, crop):
            item, sel = self.cursor_node.data, app.selection
            if item is not None:
                painted_with.append(((item.stop, item.layer), (sel.stop, None if item.layer is None else sel.layer)))
            return paint(self, crop)

        monkeypatch.setattr(Navigator, "render_lines", spy)
        moved = 0
        for key in ("down", "down", "down", "up", "up", "down", "down", "down", "down", "down"):
            before = nav.cursor_node
            painted_with.clear()
            await pilot.press(key)
            await pilot.pause()
            if nav.cursor_node.data is None or nav.cursor_node is before:
                continue  # a phase's row: nothing to pick
            moved += 1
            assert painted_with
            for cursor, selected in painted_with:
                assert cursor == selected, f"{key}: the cursor on {cursor} was painted while {selected} was shown"
        assert moved >= 6

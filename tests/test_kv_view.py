"""The KV-cache view: the block table filling up step by step, who wrote each slot, the sliding window."""

from rich.color import Color

from inspector.app import make_app
from tests.fixtures import kv
from tests.fixtures.screen import screen_lines, screen_text
from traces.live import MemoryTrace
from views.kv_cache import EMPTY, MASKED_COLOR, UNKNOWN, BlockGrid, read_cache_map

TO_KV_WRITE = ["down"] * 10  # the navigator, from the top: entry …, layers, attn norm, q k v, rope, kv write


def test_reads_who_wrote_each_slot_and_what_the_window_masks():
    m = read_cache_map(kv.trace(), 2, 1)
    assert m.block_table == [0, 1, 2, 3] and (m.blocks_used, m.blocks_total, m.block_size) == (4, 5, 4)
    assert m.writer.tolist() == [0] * 12 + [1, 2, EMPTY, EMPTY]  # the prefill, steps 1 and 2, two slots to go
    assert (m.positions, m.slots, m.blocks, m.offsets) == ([13], [13], [3], [1])
    assert m.window == kv.WINDOW and m.masked == (0, 8)  # the query at 13 sees 8..13
    assert m.free_blocks == [4]
    assert read_cache_map(kv.trace(), 2, 0).masked == (0, 0)


def test_a_step_whose_kv_write_was_not_captured_shows_as_written_by_an_unknown_step():
    full = kv.trace()
    t = MemoryTrace(full.info)
    for step in full.steps:
        for event in full.events(step):
            if not (event.stop == "kv_write" and step == 1):
                t.append(event)
    m = read_cache_map(t, 2, 1)
    assert m.writer[11] == 0 and m.writer[12] == UNKNOWN and m.writer[13] == 2
    assert read_cache_map(t, 1, 1) is None


async def test_the_kv_write_stop_opens_the_view_and_occupancy_grows_with_the_steps():
    app = make_app(kv.trace())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*TO_KV_WRITE)
        await pilot.pause()
        assert app.selection.view == "kv" and app.selection.stop == "kv_write"
        text = screen_text(app)
        assert "kv cache · step 0 (prefill) · layer 0/3" in text
        assert "blocks ▰▰▰▱▱ 3/5 · 12 tokens in 20 slots" in text
        assert "wrote pos 0–11 → slots 0–11 in blocks 0–2" in text
        await pilot.press(*["right"] * 4)
        await pilot.pause()
        text = screen_text(app)
        assert "blocks ▰▰▰▰▱ 4/5 · 16 tokens" in text
        assert "wrote pos 15 → block 3 · offset 3 · slot 15" in text


async def test_a_sliding_window_layer_greys_out_what_the_newest_query_ignores():
    app = make_app(kv.trace())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*TO_KV_WRITE, "right", "right")
        await pilot.pause()
        grid = app.query_one(BlockGrid)
        masked = Color.parse(MASKED_COLOR)

        def greyed_rows() -> list[int]:
            rows = []
            for row in range(grid.n_rows):
                strip = grid.render_line(1 + row)
                if any(seg.style is not None and seg.style.color == masked for seg in strip):
                    rows.append(row)
            return rows

        assert greyed_rows() == []  # layer 0 is global
        await pilot.press("l")
        await pilot.pause()
        assert "window 6 · newest query masks pos 0–7 (not evicted)" in screen_text(app)
        assert greyed_rows() == [0, 1]  # positions 0..7: blocks 0 and 1


async def test_a_trace_without_kv_write_events_says_so(synthetic_trace):
    app = make_app(synthetic_trace)
    async with app.run_test(size=(100, 30)) as pilot:
        app.select_stop("kv_write", 0)
        await pilot.pause()
        assert "no kv_write event for this step and layer" in screen_text(app)


def test_kv_view_snapshot(snap_compare):
    """Step 2, layer 1 (a sliding window of 6): the prefill's blocks, two decode steps, the
    newest slot highlighted, positions 0-7 greyed out, one free block left in the pool."""
    assert snap_compare(make_app(kv.trace()), press=[*TO_KV_WRITE, "l", "right", "right"], terminal_size=(80, 24))


async def _full_repaint_lines(app, pilot, grid):
    grid.refresh()
    await pilot.pause()
    return screen_lines(app)


async def test_steps_and_layers_leave_on_screen_what_a_full_repaint_shows():
    app = make_app(kv.trace())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*TO_KV_WRITE)
        grid = app.query_one(BlockGrid)
        for key in ["right", "right", "l", "right", "left", "L", "left", "l", "l"]:
            await pilot.press(key)
            await pilot.pause()
            assert screen_lines(app) == await _full_repaint_lines(app, pilot, grid), key


async def test_a_layer_change_repaints_only_the_blocks_that_look_different():
    app = make_app(kv.trace())
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press(*TO_KV_WRITE, "right", "right")  # step 2, layer 0 (global)
        await pilot.pause()
        grid = app.query_one(BlockGrid)
        repainted = []
        refresh = grid.refresh
        grid.refresh = lambda *regions, **k: (repainted.append(regions), refresh(*regions, **k))[1]
        await pilot.press("l")  # layer 1: a window of 6 greys out positions 0-7, blocks 0 and 1
        await pilot.pause()
        lines = sorted({y for regions in repainted for region in regions for y in range(region.y, region.bottom)})
        assert lines == [1, 2]  # the rows of blocks 0 and 1 (line 0 is the slot axis)

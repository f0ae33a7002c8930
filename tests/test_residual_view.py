"""The residual-stream view on the synthetic run: norms by depth and by token, the dimension map."""

import numpy as np

from inspector.app import make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_text
from views.residual import dim_map, read_stream


def test_stream_reads_norms_by_depth_and_the_layer_tensor():
    trace = synthetic.trace()
    s = read_stream(trace, 0, 1)
    assert len(s.depth_norms) == synthetic.N_LAYER + 1 and not s.has_embed
    last = trace.get(0, "residual", 2).tensors["out"][-1]
    assert np.isclose(s.depth_norms[3], np.linalg.norm(last))
    assert s.out.shape == (len(synthetic.PROMPT_IDS), synthetic.N_EMBD)
    assert s.token_ids == synthetic.PROMPT_IDS
    decode = read_stream(trace, 2, 0)
    assert decode.token_ids == [synthetic.DRAWN[1]]  # step 2 reads the token drawn at step 1


def test_dim_map_keeps_a_massive_dimension_visible():
    x = np.full((2, 1000), 0.1, dtype=np.float32)
    x[1, 637] = 80.0
    buckets, size = dim_map(x, 20)
    assert size == 50 and buckets.shape == (2, 20)
    assert buckets[1, 637 // 50] == 80.0 and buckets[0].max() < 1


async def test_r_opens_the_view():
    app = make_app(synthetic.trace())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("r")
        await pilot.pause()
        text = screen_text(app)
        assert "residual stream · step 0 (prefill) · layer 0/3" in text
        assert "norm by token" in text and "top dim" in text


def test_residual_view_snapshot(snap_compare):
    assert snap_compare(make_app(synthetic.trace()), press=["r", "l"], terminal_size=(80, 24))

"""The logit lens: each layer's residual read through the final norm and LM head."""

import numpy as np
import pytest

from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.app import make_app
from tests.fixtures import synthetic
from tests.fixtures.screen import screen_text
from tests.tiny_models import write_tiny_llama
from traces.live import MemoryTrace
from traces.schema import Event


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_lens_at_the_last_layer_is_the_models_own_output(tmp_path, arch):
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=3, arch=arch)
    bus = HookBus()
    engine = TorchEngine(str(path), bus=bus, numerics="exact")
    engine.model.lens = True
    trace = MemoryTrace({})
    bus.add(trace)
    for _ in engine.generate("hello llama", 2):
        pass
    for step in trace.steps:
        lens = [trace.get(step, "logits", il, "lens") for il in range(3)]
        assert all(e is not None for e in lens)
        final = trace.get(step, "logits")
        assert lens[-1].scalars["top_ids"] == final.scalars["top_ids"][:len(lens[-1].scalars["top_ids"])]
        assert np.allclose(lens[-1].scalars["top_probs"], final.scalars["top_probs"][:5], atol=1e-6)


def test_lens_is_off_unless_asked(tmp_path):
    path = write_tiny_llama(tmp_path / "m.gguf", n_layer=2)
    bus = HookBus()
    engine = TorchEngine(str(path), bus=bus, numerics="exact")
    trace = MemoryTrace({})
    bus.add(trace)
    for _ in engine.generate("hello", 1):
        pass
    assert [e for e in trace.find(0, "logits") if e.part == "lens"] == []


def lens_trace() -> MemoryTrace:
    trace = synthetic.trace()
    seq = 10_000
    for step in trace.steps:
        drawn = synthetic.DRAWN[step]
        for il in range(synthetic.N_LAYER):
            top = drawn if il == synthetic.N_LAYER - 1 else 12 + il  # early layers say something else
            trace.append(Event(seq, "logits", step, il, part="lens", scalars={
                "top_ids": [top, 13], "top_probs": [0.3 + 0.2 * il, 0.1], "entropy": 2.0 - il}))
            seq += 1
    return trace


async def test_logits_view_shows_the_lens():
    app = make_app(lens_trace())
    async with app.run_test(size=(100, 40)) as pilot:
        await pilot.press("g")
        await pilot.pause()
        text = screen_text(app)
        assert "logit lens" in text
        assert "L0" in text and "L2" in text


def test_lens_snapshot(snap_compare):
    assert snap_compare(make_app(lens_trace()), press=["g"], terminal_size=(80, 30))

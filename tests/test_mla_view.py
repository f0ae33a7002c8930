"""The MLA view, on a trace recorded from a tiny YaRN-scaled deepseek2 model (tests/tiny_deepseek.py):
the form, the cache's bytes per token against multi-head attention's, the latent's norms and k_pe."""

from dataclasses import replace

import numpy as np
import pytest

from engine.hooks import HookBus
from engine.torch_engine import TorchEngine
from inspector.app import make_app
from tests.fixtures.screen import screen_text
from tests.tiny_deepseek import KV_LORA_RANK, N_HEAD, N_ROT, QK_NOPE, V_HEAD, write_tiny_deepseek2
from traces.live import MemoryTrace
from views.mla import describe_ramp, nbytes, read_cache

PROMPT = "hello the llama, hello the llama"
N_STEPS = 4
YARN = {"factor": 40.0, "n_ctx_orig": 20, "log_mul": 0.0707}


def record(path: str, form: str | None = None) -> MemoryTrace:
    """Prefill and three decode steps; the stops the view and the app's chrome read. Clock
    readings replaced by fixed ones so snapshots are stable."""
    bus = HookBus()
    engine = TorchEngine(path, bus=bus)
    if form:
        engine.model.form = form
    bus.set_filter(lambda stop, layer: stop in ("text", "tokenize", "mla", "logits", "sample", "stream"))
    recorded = MemoryTrace(engine.info(PROMPT, N_STEPS))
    bus.add(recorded)
    list(engine.generate(PROMPT, N_STEPS))
    recorded.finish()
    out = MemoryTrace(recorded.info)
    for i, event in enumerate(e for s in recorded.steps for e in recorded.events(s)):
        out.append(replace(event, seq=i, t_start_ns=1_000_000 * i, dur_ns=2_000 + 500 * (i % 7)))
    out.finish()
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(write_tiny_deepseek2(tmp_path_factory.mktemp("mla-view") / "yarn.gguf", yarn=YARN))


@pytest.fixture(scope="module")
def trace(model):
    return record(model)


def test_the_cache_is_the_latent_rows_of_every_step_so_far(trace):
    T = len(trace.prompt_ids())
    c = read_cache(trace, 2, 1)
    assert c.latent.shape == (T + 2, KV_LORA_RANK) and c.k_pe.shape == (T + 2, N_ROT)
    assert c.new_rows == 1 and c.n_run_tokens == T + N_STEPS - 1
    np.testing.assert_array_equal(c.latent[:T], trace.get(0, "mla", 1).tensors["latent"])
    np.testing.assert_array_equal(c.latent[-1], trace.get(2, "mla", 1).tensors["latent"][0])
    assert read_cache(trace, 0, 1).new_rows == T
    assert read_cache(trace, 0, 2) is None  # the model has two layers


def test_formats():
    assert nbytes(256) == "256 B" and nbytes(10.5 * 1024) == "10.5 KiB" and nbytes(3 * 1024**3) == "3.0 GiB"
    assert describe_ramp([1.0, 0.5, 0, 0], 40) == "pairs 0 kept · 1 ramp · 2-3 ÷40"


async def test_the_mla_stop_opens_the_view_with_the_sizes_and_yarn(trace):
    app = make_app(trace)
    async with app.run_test(size=(120, 40)) as pilot:
        app.select_stop("mla", 1)
        await pilot.pause()
        assert app.selection.view == "mla"
        text = screen_text(app)
        T = len(trace.prompt_ids())
        mla = (KV_LORA_RANK + N_ROT) * 4
        mha = N_HEAD * (QK_NOPE + N_ROT + V_HEAD) * 4
        assert "MLA · step 0 (prefill) · layer 1/2 · absorbed form" in text
        assert f"{mla} B" in text and f"{mha} B" in text and "3.0× less" in text
        assert f"{T} tokens × 2 layers" in text and nbytes(mla * T * 2) in text and nbytes(mha * T * 2) in text
        assert "YaRN ×40 over 20 positions · pairs 0 kept · 1 ramp · 2-7 ÷40" in text
        assert "‖latent‖ per cached token" in text and "0 kept" in text and "7 ÷40" in text
        await pilot.press("t", "w")
        await pilot.pause()
        assert app.selection.view == "mla" and app.selection.stop == "mla"


async def test_the_naive_form_and_a_model_without_mla(model, synthetic_trace):
    app = make_app(record(model, form="naive"))
    async with app.run_test(size=(120, 40)) as pilot:
        app.select_stop("mla", 0)
        await pilot.pause()
        assert "naive form" in screen_text(app) and "decompressed into per-head K and V" in screen_text(app)
    app = make_app(synthetic_trace)
    async with app.run_test(size=(100, 30)) as pilot:
        app.select_stop("mla", 0)
        await pilot.pause()
        assert "no mla event for this step and layer" in screen_text(app)


async def test_without_the_tensors_it_shows_the_sizes(trace):
    """A capture policy that kept scalars only: the sizes and RoPE line, no charts."""
    scalars_only = MemoryTrace(trace.info)
    for s in trace.steps:
        for event in trace.events(s):
            scalars_only.append(replace(event, tensors={}) if event.stop == "mla" else event)
    scalars_only.finish()
    assert read_cache(scalars_only, 1, 0).latent is None
    app = make_app(scalars_only)
    async with app.run_test(size=(120, 40)) as pilot:
        app.select_stop("mla", 0)
        await pilot.pause()
        text = screen_text(app)
        assert "3.0× less" in text and "YaRN ×40" in text and "sizes only" in text
        assert "‖latent‖" not in text


def test_mla_view_snapshot(snap_compare, trace):
    async def run_before(pilot):
        pilot.app.select_stop("mla", 1)
        await pilot.press("right", "right")  # step 2: the prompt's rows and two decoded ones
        await pilot.pause()

    assert snap_compare(make_app(trace), run_before=run_before, terminal_size=(120, 40))

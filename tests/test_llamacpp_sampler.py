"""llama.cpp's own sampler stages (engine/llamacpp_sampler.py) against our chain (engine/sampler.py):
the same events, stage by stage, and the same draws from the same seed."""

import numpy as np
import pytest
import torch

from engine.hooks import HookBus
from engine.sampler import STAGES, Sampler, SamplerParams
from traces.live import MemoryTrace

pytest.importorskip("llama_cpp")
from engine.llamacpp_sampler import LlamaCppSampler  # noqa: E402

N_VOCAB = 49_152  # SmolLM2's

SETTINGS = {
    "greedy": SamplerParams.greedy(),
    "temp, top-k, top-p, min-p": SamplerParams(temp=0.9, top_k=60, top_p=0.9, min_p=0.03, seed=7),
    "no top-k: top-p sorts the vocabulary": SamplerParams(temp=1.1, top_k=0, top_p=0.7, min_p=0.0, seed=8),
    "typical": SamplerParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.6, seed=9),
    "penalties": SamplerParams(temp=0.8, top_k=100, repeat_penalty=1.5, repeat_last_n=16, frequency_penalty=0.3,
                               presence_penalty=0.4, seed=10),
    "penalties over the whole history": SamplerParams(temp=0.8, repeat_penalty=1.3, repeat_last_n=-1, seed=11),
}


def logits_for(step: int, scale: float = 3.0) -> torch.Tensor:
    """A fixed random logits vector per step, some steps peaked, some flat."""
    rng = np.random.default_rng(100 + step)
    return torch.from_numpy((rng.standard_normal(N_VOCAB) * (scale if step % 3 else 6.0)).astype(np.float32))


def sample_events(sampler, logits, history, step=0):
    bus, trace = HookBus(), MemoryTrace({})
    bus.add(trace)
    token = sampler.sample(logits, list(history), step, bus)
    return token, {e.part: e for e in trace.events(step) if e.stop == "sample"}, trace.events(step)


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_stage_keeps_what_our_chain_keeps_with_the_same_probabilities(setting):
    p = SETTINGS[setting].with_seed()
    history = [int(t) for t in np.random.default_rng(3).integers(0, N_VOCAB, 80)]
    logits = logits_for(1)
    token, theirs, all_theirs = sample_events(LlamaCppSampler(p), logits, history)
    ours_token, ours, all_ours = sample_events(Sampler(p), logits, history)
    assert list(theirs) == list(STAGES) == list(ours)
    assert token == ours_token
    logits_event = [e for e in all_theirs if e.stop == "logits"][0]
    assert logits_event.scalars == [e for e in all_ours if e.stop == "logits"][0].scalars
    for name in STAGES:
        a, b = theirs[name], ours[name]
        for key in ("n", "n_in", "shown", "active"):
            assert a.scalars[key] == b.scalars[key], (name, key)
        assert a.scalars["kept_mass"] == pytest.approx(b.scalars["kept_mass"], abs=1e-6)
        got = dict(zip(a.tensors["ids"].tolist(), a.tensors["probs"].tolist()))
        want = dict(zip(b.tensors["ids"].tolist(), b.tensors["probs"].tolist()))
        assert set(got) == set(want), name
        assert max(abs(got[i] - want[i]) for i in got) < 1e-6, name
        if a.scalars["n"] <= a.scalars["shown"]:
            assert abs(a.tensors["probs"].sum() - 1) < 1e-5, name
        measured = ("n", "n_in", "shown", "mass", "kept_mass", "u", "p")
        settings = {k: v for k, v in b.scalars.items() if k not in measured}
        assert {k: a.scalars[k] for k in settings} == settings, name
    assert theirs["dist"].scalars["drawn"] == token
    assert theirs["dist"].scalars["p"] == pytest.approx(ours["dist"].scalars["p"], abs=1e-6)


@pytest.mark.parametrize("setting", SETTINGS)
def test_the_same_seed_draws_the_same_tokens_for_50_steps(setting):
    p = SETTINGS[setting].with_seed()
    theirs, ours = LlamaCppSampler(p), Sampler(p)
    history_a, history_b = [1, 2, 3, 2, 1], [1, 2, 3, 2, 1]
    for step in range(50):
        logits = logits_for(step, scale=1.5)
        # Each draw becomes history, so the penalties see what they saw in llama.cpp's run.
        history_a.append(theirs.sample(logits, history_a, step, HookBus()))
        history_b.append(ours.sample(logits, history_b, step, HookBus()))
    assert history_a == history_b
    if not p.is_greedy:
        assert len(set(history_a[5:])) > 10  # it really sampled


def test_penalties_change_the_draw_as_llama_cpp_applies_them():
    """Penalties are fed through llama_sampler_accept: a heavily repeated token loses its place."""
    logits = torch.zeros(N_VOCAB)
    logits[42], logits[43] = 5.0, 4.0
    on = SamplerParams(temp=0.0, repeat_penalty=2.0, repeat_last_n=8)
    assert LlamaCppSampler(SamplerParams.greedy()).sample(logits, [42] * 8, 0, HookBus()) == 42
    assert LlamaCppSampler(on).sample(logits, [42] * 8, 0, HookBus()) == 43  # 5 / 2 < 4
    assert LlamaCppSampler(on).sample(logits, [42] + [7] * 8, 0, HookBus()) == 42  # outside the last 8

"""The sampler chain: each stage against llama.cpp's own sampler on the same logits, the draw,
what the sample events carry, seeded runs of the real model, and the CLI's sampling flags."""

import ctypes

import numpy as np
import pytest
import torch

from engine.hooks import HookBus
from engine.sampler import (
    SHOWN,
    STAGES,
    MT19937,
    Candidates,
    Sampler,
    SamplerParams,
    SamplerParamsError,
    dist,
    penalties,
)
from traces.live import MemoryTrace

llama_cpp = pytest.importorskip("llama_cpp")


# llama.cpp's samplers, through llama-cpp-python's ctypes API ------------------------------------


class LlamaTokens:
    """A llama_token_data_array over (id, logit) pairs, which llama.cpp's samplers edit in place."""

    def __init__(self, ids, logits) -> None:
        self.data = (llama_cpp.llama_token_data * len(ids))()
        for i, (t, x) in enumerate(zip(ids, logits)):
            self.data[i].id, self.data[i].logit, self.data[i].p = int(t), float(x), 0.0
        self.array = llama_cpp.llama_token_data_array(self.data, len(ids), -1, False)

    def apply(self, sampler) -> None:
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self.array))

    def ids(self) -> list[int]:
        return [self.array.data[i].id for i in range(self.array.size)]

    def logits(self) -> np.ndarray:
        return np.array([self.array.data[i].logit for i in range(self.array.size)], dtype=np.float32)

    def selected(self) -> int:
        return self.array.data[self.array.selected].id


def llama_stage(name: str, p: SamplerParams, n_vocab: int, history: list[int]):
    if name == "penalties":
        s = llama_cpp.llama_sampler_init_penalties(n_vocab, p.repeat_last_n, p.repeat_penalty,
                                                   p.frequency_penalty, p.presence_penalty)
        for t in history:
            llama_cpp.llama_sampler_accept(s, int(t))
        return s
    return {
        "top_k": lambda: llama_cpp.llama_sampler_init_top_k(p.top_k),
        "typical": lambda: llama_cpp.llama_sampler_init_typical(p.typical_p, p.min_keep),
        "top_p": lambda: llama_cpp.llama_sampler_init_top_p(p.top_p, p.min_keep),
        "min_p": lambda: llama_cpp.llama_sampler_init_min_p(p.min_p, p.min_keep),
        "temp": lambda: llama_cpp.llama_sampler_init_temp(p.temp),
        "dist": lambda: llama_cpp.llama_sampler_init_dist(p.seed),
    }[name]()


def our_stage(name: str, p: SamplerParams, history: list[int]):
    """The stage as the engine's chain runs it (Sampler.stages)."""
    return {stage: run for stage, run, _, _ in Sampler(p).stages(history)}[name]


def random_logits(seed: int, n_vocab: int, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(n_vocab) * scale).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max())
    return e / e.sum()


SETTINGS = {
    "defaults": SamplerParams(seed=1),
    "every stage on": SamplerParams(temp=0.7, top_k=200, top_p=0.9, min_p=0.02, typical_p=0.95, repeat_penalty=1.3,
                                    presence_penalty=0.2, frequency_penalty=0.1, seed=2),
    "no top-k, top-p sorts": SamplerParams(temp=1.3, top_k=0, top_p=0.8, min_p=0.0, repeat_penalty=0.8, seed=3),
    "no top-k, min-p filters in id order": SamplerParams(temp=1.0, top_k=0, top_p=1.0, min_p=0.1, seed=4),
    "typical alone": SamplerParams(temp=0.9, top_k=0, top_p=1.0, min_p=0.0, typical_p=0.5, seed=5),
    "min_keep": SamplerParams(top_k=0, top_p=0.01, min_p=0.9, typical_p=0.01, min_keep=5, seed=6),
    "greedy": SamplerParams.greedy(),
}


# Each stage is llama.cpp's stage ------------------------------------------------------------------


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("logit_seed", [0, 1])
def test_each_stage_keeps_what_llama_cpp_keeps_in_its_order(setting, logit_seed):
    p = SETTINGS[setting]
    n_vocab = 3000
    raw = random_logits(logit_seed, n_vocab)
    history = [int(t) for t in np.random.default_rng(10 + logit_seed).integers(0, n_vocab, 90)]
    ours = Candidates(np.arange(n_vocab), raw)
    theirs = LlamaTokens(range(n_vocab), raw)
    for name in STAGES[:-1]:
        if name == "temp" and p.temp <= 0:
            break  # llama.cpp keeps the others at -inf; ours drops them (see the greedy test)
        sampler = llama_stage(name, p, n_vocab, history)
        theirs.apply(sampler)
        llama_cpp.llama_sampler_free(sampler)
        ours = our_stage(name, p, history)(ours)
        assert ours.ids.tolist() == theirs.ids(), name  # the same survivors, in the same order
        np.testing.assert_allclose(ours.logits, theirs.logits(), rtol=1e-6, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s != "greedy"])
def test_the_whole_chain_draws_what_llama_cpp_draws_step_after_step(setting):
    """llama.cpp's chain (penalties → top_k → typical → top_p → min_p → temp → dist) and ours, fed the
    same logits for 12 steps: the same seed gives the same tokens, the RNG carrying over."""
    p = SETTINGS[setting]
    n_vocab = 2000
    history = [int(t) for t in np.random.default_rng(7).integers(0, n_vocab, 30)]
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    for name in STAGES:
        llama_cpp.llama_sampler_chain_add(chain, llama_stage(name, p, n_vocab, history if name == "penalties" else []))
    ours = Sampler(p)
    theirs, drawn = [], []
    try:
        for step in range(12):
            raw = random_logits(100 + step, n_vocab, scale=2.0)
            if step % 4 == 1:
                raw[step] += 30  # one token left after the cuts: the draw still happens, in both
            tokens = LlamaTokens(range(n_vocab), raw)
            tokens.apply(chain)
            token = tokens.selected()
            llama_cpp.llama_sampler_accept(chain, token)
            theirs.append(token)
            drawn.append(ours.sample(torch.from_numpy(raw), history + drawn, step, HookBus()))
    finally:
        llama_cpp.llama_sampler_free(chain)
    assert drawn == theirs
    assert len(set(drawn)) > 3  # it really sampled


def test_dist_draws_llama_cpps_token_for_many_seeds():
    """Including after a step with one candidate left: llama.cpp draws a number then too."""
    raw = np.sort(random_logits(3, 64, scale=1.5))[::-1].copy()
    for seed in range(40):
        sampler = llama_cpp.llama_sampler_init_dist(seed)
        ours = MT19937(seed)
        try:
            for n in (64, 1, 64, 64, 1, 1, 64):
                tokens = LlamaTokens(range(n), raw[:n])
                tokens.apply(sampler)
                assert dist(Candidates(np.arange(n), raw[:n]), ours).token == tokens.selected(), seed
        finally:
            llama_cpp.llama_sampler_free(sampler)


def test_mt19937_is_the_standard_generator():
    g = MT19937(5489)  # std::mt19937's default seed
    assert g.next_u32() == 3499211612
    for _ in range(9998):
        g.next_u32()
    assert g.next_u32() == 4123659995  # the C++ standard's check: the 10000th value
    u = [MT19937(1).uniform() for _ in range(3)]
    assert u[0] == u[1] == u[2] and 0 <= u[0] < 1


def test_penalties_touch_only_the_last_n_tokens_of_the_history():
    raw = np.array([2.0, -2.0, 1.0, 3.0], dtype=np.float32)
    p = SamplerParams(repeat_penalty=2.0, repeat_last_n=3, frequency_penalty=0.5, presence_penalty=0.25)
    out = penalties(Candidates(np.arange(4), raw), [3, 0, 1, 0], p)  # token 3 is outside the last 3
    # positive logits are divided, negative multiplied; then 0.5 × count + 0.25
    np.testing.assert_allclose(out.logits, [2.0 / 2 - 0.5 * 2 - 0.25, -2.0 * 2 - 0.5 - 0.25, 1.0, 3.0])
    whole = penalties(Candidates(np.arange(4), raw), [3, 0, 1, 0], SamplerParams(repeat_penalty=2.0, repeat_last_n=-1))
    assert whole.logits[3] == 1.5


# What a person sees: the events -------------------------------------------------------------------


def run_events(p: SamplerParams, raw: np.ndarray, history=()) -> tuple[int, list]:
    bus, trace = HookBus(), MemoryTrace({})
    bus.add(trace)
    token = Sampler(p).sample(torch.from_numpy(raw), list(history), 0, bus)
    return token, [e for e in trace.events(0) if e.stop == "sample"]


@pytest.mark.parametrize("setting", SETTINGS)
def test_every_stage_emits_its_survivors_whose_probabilities_sum_to_1(setting):
    p = SETTINGS[setting]
    raw = random_logits(5, 3000)
    token, events = run_events(p, raw, history=range(0, 3000, 7))
    assert [e.part for e in events] == list(STAGES)
    n_prev, kept_prev = 3000, 1.0
    for e in events:
        ids, probs, logits = e.tensors["ids"], e.tensors["probs"], e.tensors["logits"]
        n = e.scalars["n"]
        assert e.scalars["n_in"] == n_prev and n <= n_prev
        assert len(ids) == min(n, SHOWN) == e.scalars["shown"]
        assert np.all(np.diff(probs) <= 0)  # most likely first
        assert abs(probs.sum() - e.scalars["mass"]) < 1e-5
        if n <= SHOWN:
            assert abs(probs.sum() - 1) < 1e-5, e.part
        np.testing.assert_allclose(probs, softmax(logits)[: len(probs)] if n <= SHOWN else probs, rtol=1e-5)
        model_probs = softmax(raw)
        if n <= SHOWN:  # the survivors' share of the model's own distribution
            assert abs(e.scalars["kept_mass"] - model_probs[ids].sum()) < 1e-9
        assert e.scalars["kept_mass"] <= kept_prev + 1e-12
        n_prev, kept_prev = n, e.scalars["kept_mass"]
    draw = events[-1].scalars
    assert draw["drawn"] == token and token in events[-1].tensors["ids"]
    assert 0 < draw["p"] <= 1 and 0 <= draw["u"] < 1


def test_event_probabilities_match_llama_cpps_survivors():
    """The probabilities an event shows are the softmax over llama.cpp's survivors at that stage."""
    p = SETTINGS["every stage on"]
    raw = random_logits(8, 3000)
    history = list(range(0, 3000, 11))
    _, events = run_events(p, raw, history)
    theirs = LlamaTokens(range(3000), raw)
    for e in events[:-1]:
        sampler = llama_stage(e.part, p, 3000, history)
        theirs.apply(sampler)
        llama_cpp.llama_sampler_free(sampler)
        expect = dict(zip(theirs.ids(), softmax(theirs.logits())))
        assert e.scalars["n"] == len(expect), e.part
        got = dict(zip(e.tensors["ids"].tolist(), e.tensors["probs"].tolist()))
        assert set(got) <= set(expect)
        assert max(abs(got[i] - expect[i]) for i in got) < 1e-6, e.part


def test_greedy_is_the_argmax():
    for seed in range(5):
        raw = random_logits(seed, 5000)
        raw[17] = raw[4000] = raw.max() + 1  # a tie: the lower id, as torch.argmax
        token, events = run_events(SamplerParams.greedy(), raw)
        assert token == int(torch.argmax(torch.from_numpy(raw))) == 17
        assert events[-1].scalars["p"] == 1.0 and events[STAGES.index("temp")].scalars["n"] == 1


def test_a_vocabulary_of_262k_keeps_a_few_hundred_per_event():
    raw = random_logits(9, 262_144)
    _, events = run_events(SamplerParams(top_k=0, seed=3), raw)
    whole = events[0]
    assert whole.scalars["n"] == 262_144 and len(whole.tensors["ids"]) == SHOWN
    assert 0 < whole.scalars["mass"] < 1
    assert whole.tensors["ids"][0] == int(np.argmax(raw))


def test_seeded_sampler_is_reproducible_and_the_seed_matters():
    raws = [torch.from_numpy(random_logits(s, 500, scale=1.0)) for s in range(20)]

    def run(seed):
        s = Sampler(SamplerParams(seed=seed))
        return [s.sample(x, [], i, HookBus()) for i, x in enumerate(raws)]

    assert run(11) == run(11)
    assert run(11) != run(12)
    assert Sampler(SamplerParams()).params.seed != -1  # a random seed is chosen, and known


# The settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad, message", [
    (dict(top_p=1.5), "--top-p must be between 0 and 1"),
    (dict(top_k=-1), "--top-k must be at least 0"),
    (dict(min_p=-0.1), "--min-p must be between 0 and 1"),
    (dict(typical_p=2.0), "--typical must be between 0 and 1"),
    (dict(temp=-1.0), "--temp must be at least 0"),
    (dict(temp=float("nan")), "--temp must be a finite number"),
    (dict(repeat_penalty=0.0), "--repeat-penalty must be above 0"),
    (dict(repeat_last_n=-2), "--repeat-last-n must be -1"),
    (dict(seed=2**32), "--seed must be -1"),
])
def test_bad_settings_say_which_and_why(bad, message):
    with pytest.raises(SamplerParamsError, match=message):
        SamplerParams(**bad)


def test_defaults_are_llama_cpps_and_the_inspectors_is_greedy():
    d = SamplerParams()
    assert (d.temp, d.top_k, d.top_p, d.min_p, d.typical_p) == (0.8, 40, 0.95, 0.05, 1.0)
    assert (d.repeat_penalty, d.repeat_last_n, d.presence_penalty, d.frequency_penalty) == (1.0, 64, 0.0, 0.0)
    g = SamplerParams.greedy().describe()
    assert g["kind"] == "greedy" and g["temp"] == 0.0 and g["chain"] == list(STAGES)


@pytest.mark.parametrize("flags", [["--top-p", "1.5"], ["--top-k", "-3"], ["--temp", "nan"], ["--seed", "-7"],
                                   ["--top-k", "many"], ["--repeat-penalty", "0"], ["--typical", "2"]])
def test_bad_sampling_flags_exit_2_with_one_line(flags, capsys):
    from inspector.cli import main

    assert main(["--headless", "-n", "1", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-inspect: error: ") and err.count("\n") == 1


def test_flags_turn_sampling_on_with_llama_cpps_defaults():
    from inspector.commands.run import parser, sampling

    params, stops = sampling(parser().parse_args([]))
    assert params.is_greedy and stops == []
    params, stops = sampling(parser().parse_args(["--top-k", "5", "--seed", "9", "--stop", "##", "--stop", "\n"]))
    assert (params.temp, params.top_k, params.top_p, params.seed) == (0.8, 5, 0.95, 9) and stops == ["##", "\n"]
    params, _ = sampling(parser().parse_args(["--temp", "0.5"]))
    assert 0 <= params.seed < 2**32 - 1  # chosen now, so the trace records it


# The real model ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2():
    from engine.torch_engine import TorchEngine
    from inspector.common import demo_model

    return TorchEngine(demo_model(), numerics="exact")


def test_seeded_runs_of_smollm2_repeat_and_differ_by_seed(smollm2):
    prompt = "Once upon a time"

    def run(seed):
        return [r.token for r in smollm2.generate(prompt, 10, sampler=SamplerParams(temp=1.0, seed=seed))]

    first = run(1234)
    assert len(first) == 10 and first == run(1234)
    assert run(4321) != first
    greedy = [r.token for r in smollm2.generate(prompt, 10)]
    assert greedy == [r.token for r in smollm2.generate(prompt, 10, sampler=SamplerParams(temp=0.0, seed=5))]


def test_the_trace_records_the_effective_settings(smollm2):
    p = SamplerParams(temp=0.6, top_k=7, seed=77)
    info = smollm2.info("hi", 3, sampler=p, stop=["\n\n"])["sampler"]
    assert info["kind"] == "dist" and info["temp"] == 0.6 and info["top_k"] == 7 and info["seed"] == 77
    assert info["top_p"] == 0.95 and info["stop"] == ["\n\n"]
    assert smollm2.info("hi", 3)["sampler"]["kind"] == "greedy"


def test_a_seed_draws_llama_cpps_tokens_on_smollm2():
    """End to end: llama.cpp's model with its sampler chain, and ours with ours, from one seed."""
    import itertools

    from engine.torch_engine import TorchEngine
    from inspector.common import demo_model

    prompt, n = "Once upon a time", 12
    engine = TorchEngine(demo_model())  # llamacpp numerics: its logits, to float rounding
    for seed in (3, 11):
        llm = llama_cpp.Llama(model_path=demo_model(), n_ctx=128, n_threads=2, seed=seed, verbose=False)
        try:
            ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            theirs = list(itertools.islice(llm.generate(ids, temp=0.8, top_k=40, top_p=0.95, min_p=0.05,
                                                        repeat_penalty=1.0), n))
        finally:
            llm.close()
        ours = [r.token for r in engine.generate(prompt, n, sampler=SamplerParams(seed=seed))]
        assert ours == theirs, seed

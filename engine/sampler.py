"""Sampling: turn the last position's logits into the next token, every stage observable.

The chain is llama.cpp's common sampler (common/common.h `common_params_sampling.samplers`),
its stages in its order, each with llama.cpp's math and names:

    penalties → top_k → typical → top_p → min_p → temp → dist

(llama.cpp's dry, top_n_sigma and xtc stages sit between these; they are off by default
and not implemented here.) A stage works on the surviving candidates, a list of (id, logit)
in an order that matters: `dist` walks it to find the drawn token, and each stage leaves
it in the order llama.cpp's does (top_k and top_p sort by logit, typical by how typical a
token is, the others keep it), so a seeded draw here is the draw llama.cpp makes.

The draw is llama.cpp's too: std::mt19937 seeded with `seed`, one
std::uniform_real_distribution<double> number u per step, and the first candidate whose
running probability sum reaches u. MT19937 is reimplemented below (CPU, plain integers), so
the same seed gives the same tokens on any device, and the same tokens llama.cpp draws from
the same logits (tests/test_sampler.py checks both). A number is drawn every step, even
when one candidate is left, as the llama.cpp that llama-cpp-python builds does (some newer
llama.cpp skips that draw, which shifts every later draw by one). Two deliberate differences:
with temperature ≤ 0 only the top candidate survives (llama.cpp keeps the others at -inf,
which the draw then cannot pick); and typical's entropy counts a probability that
underflowed to 0 as 0 (llama.cpp's arithmetic makes it NaN).

With a grammar (engine/grammar.py), llama.cpp's grammar-first path comes before the chain: only
the tokens the grammar allows go on, a `grammar` event carries the mask, and the drawn token
advances the grammar.

After each stage, when someone listens, one `sample` event with `part=<stage>` carries the
survivors: their count, and the top `SHOWN` of them by probability (softmax over the
survivors) with their logits and the probability mass those cover; `dist` adds the draw.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Callable

import numpy as np

from engine.hooks import HookBus

if TYPE_CHECKING:  # torch is imported where the logits are read: the CLI reads SamplerParams before torch loads
    import torch

    from engine.grammar import Grammar

TOP_K_SHOWN = 10  # the logits event's top-k
SHOWN = 256  # candidates a sample event keeps: a 262k vocabulary survives penalties and temp whole
STAGES = ("penalties", "top_k", "typical", "top_p", "min_p", "temp", "dist")
RANDOM_SEED = -1  # llama.cpp's --seed -1: pick one (and record it)
MAX_SEED = 0xFFFFFFFE  # 0xFFFFFFFF is llama.cpp's LLAMA_DEFAULT_SEED, "random"


class SamplerParamsError(ValueError):
    """A sampling setting out of range."""


@dataclass(frozen=True)
class SamplerParams:
    """llama.cpp's sampling settings, its names and its defaults (common_params_sampling).

    These defaults are llama.cpp's, for sampling. The inspector's own default is greedy
    (`SamplerParams.greedy()`): parity with llama.cpp is measured on greedy, and two runs of
    the same prompt should be the same run, so they can be diffed. Giving any sampling flag
    switches to these defaults, as llama-cli with that flag would run.
    """

    temp: float = 0.8  # ≤ 0: greedy
    top_k: int = 40  # 0: the whole vocabulary
    top_p: float = 0.95  # 1: off
    min_p: float = 0.05  # 0: off
    typical_p: float = 1.0  # 1: off
    repeat_penalty: float = 1.0  # 1: off
    repeat_last_n: int = 64  # 0: no penalties, -1: the whole context
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = RANDOM_SEED
    min_keep: int = 0  # stages keep at least this many (llama.cpp's default 0 behaves as 1)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise SamplerParamsError(message)

        for name in ("temp", "top_p", "min_p", "typical_p", "repeat_penalty", "presence_penalty", "frequency_penalty"):
            need(math.isfinite(getattr(self, name)), f"--{_flag(name)} must be a finite number")
        need(self.temp >= 0, f"--temp must be at least 0 (0 = greedy), not {self.temp:g}")
        need(self.top_k >= 0, f"--top-k must be at least 0 (0 = the whole vocabulary), not {self.top_k}")
        for name in ("top_p", "min_p", "typical_p"):
            value = getattr(self, name)
            need(0.0 <= value <= 1.0, f"--{_flag(name)} must be between 0 and 1, not {value:g}")
        need(self.repeat_penalty > 0, f"--repeat-penalty must be above 0 (1 = off), not {self.repeat_penalty:g}")
        need(self.repeat_last_n >= -1, f"--repeat-last-n must be -1 (the whole context), 0 (off) or more, "
                                       f"not {self.repeat_last_n}")
        need(self.seed == RANDOM_SEED or 0 <= self.seed <= MAX_SEED,
             f"--seed must be -1 (random) or between 0 and {MAX_SEED}, not {self.seed}")
        need(self.min_keep >= 0, f"min_keep must be at least 0, not {self.min_keep}")

    @classmethod
    def greedy(cls) -> "SamplerParams":
        """The inspector's default: llama.cpp's chain at temperature 0, i.e. the argmax of the logits."""
        return cls(temp=0.0)

    @property
    def is_greedy(self) -> bool:
        return self.temp <= 0

    def with_seed(self) -> "SamplerParams":
        """A concrete seed in place of -1, so the trace can record what the run used."""
        return self if self.seed != RANDOM_SEED else replace(self, seed=secrets.randbelow(MAX_SEED + 1))

    def describe(self) -> dict:
        """The effective settings, for the trace's `info["sampler"]` (the UI shows them from there)."""
        return {"kind": "greedy" if self.is_greedy else "dist", "chain": list(STAGES), **asdict(self),
                "rng": "mt19937 (llama.cpp's dist)"}


def _flag(name: str) -> str:
    return {"typical_p": "typical"}.get(name, name).replace("_", "-")


# The candidates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Candidates:
    """The surviving tokens, in the order llama.cpp's token array would hold them."""

    ids: np.ndarray  # int64 [n]
    logits: np.ndarray  # float32 [n]

    def take(self, index: np.ndarray) -> "Candidates":
        return Candidates(self.ids[index], self.logits[index])

    def __len__(self) -> int:
        return len(self.ids)


def _seq_sum(x: np.ndarray) -> np.float32:
    """A float32 sum in order, one addition at a time, as llama.cpp's loops add (np.sum is pairwise)."""
    return np.cumsum(x, dtype=np.float32)[-1]


def _probs32(logits: np.ndarray) -> np.ndarray:
    """llama.cpp's softmax: expf(l - max), summed in float in array order, then divided."""
    e = np.exp(logits - logits.max(), dtype=np.float32)
    return e / _seq_sum(e)


def _by_logit(c: Candidates, k: int | None = None) -> np.ndarray:
    """Indices of the k highest logits (all, if None), highest first; ties keep their order."""
    if k is None or k >= len(c):
        return np.argsort(-c.logits, kind="stable")
    # Only sort what can make the cut: everything at or above the k-th logit (ties included).
    kth = np.partition(c.logits, len(c) - k)[len(c) - k]
    head = np.nonzero(c.logits >= kth)[0]
    return head[np.argsort(-c.logits[head], kind="stable")][:k]


# The stages: each takes the candidates and returns the survivors ----------------------------


def penalties(c: Candidates, history: list[int], p: SamplerParams) -> Candidates:
    """Repetition penalties on the raw logits of tokens among the last `repeat_last_n` of the history.

    repeat: a positive logit is divided by the penalty, a negative one multiplied (so both
    lose); then frequency × count and presence × (count > 0) are subtracted.
    """
    n_last = len(history) if p.repeat_last_n == -1 else min(p.repeat_last_n, len(history))
    window = history[len(history) - n_last:]
    if not window or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0):
        return c
    counts = Counter(window)
    hit = np.nonzero(np.isin(c.ids, np.fromiter(counts, dtype=np.int64)))[0]
    if not len(hit):
        return c
    logits = c.logits.copy()
    x = logits[hit]
    repeat = np.float32(p.repeat_penalty)
    x = np.where(x <= 0, x * repeat, x / repeat).astype(np.float32)
    n = np.array([counts[int(t)] for t in c.ids[hit]], dtype=np.float32)
    x -= n * np.float32(p.frequency_penalty) + np.float32(1.0) * np.float32(p.presence_penalty)
    logits[hit] = x
    return Candidates(c.ids, logits)


def top_k(c: Candidates, k: int) -> Candidates:
    """The k highest logits, sorted highest first; k ≤ 0 keeps everything (and the order)."""
    if k <= 0:
        return c
    return c.take(_by_logit(c, k))


def typical(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Locally typical sampling: keep the tokens whose surprise -log p is closest to the entropy,
    in that order, until their mass exceeds p."""
    if p >= 1.0:
        return c
    c = c.take(_by_logit(c))  # llama.cpp sorts before its softmax here
    probs = _probs32(c.logits)
    with np.errstate(divide="ignore", invalid="ignore"):
        surprise = -np.log(probs)
        entropy = _seq_sum(np.where(probs > 0, probs * surprise, np.float32(0)))
    shifted = np.abs(surprise - entropy)
    order = np.argsort(shifted, kind="stable")
    cum = np.cumsum(probs[order], dtype=np.float32)
    enough = (cum > np.float32(p)) & (np.arange(len(c)) >= min_keep - 1)
    last = int(np.argmax(enough)) + 1 if enough.any() else len(c)
    return c.take(order[:last])


def top_p(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Nucleus: the smallest set of highest-probability tokens whose mass reaches p (at least min_keep)."""
    if p >= 1.0:
        return c
    probs = _probs32(c.logits)  # in the current order, as llama.cpp sums them
    k = 256
    while True:  # sort a head of the vocabulary, and more only if its mass falls short of p
        order = _by_logit(c, k)
        cum = np.cumsum(probs[order], dtype=np.float32)
        enough = (cum >= np.float32(p)) & (np.arange(1, len(order) + 1) >= min_keep)
        if enough.any():
            return c.take(order[: int(np.argmax(enough)) + 1])
        if len(order) == len(c):
            return c.take(order)
        k *= 16


def min_p(c: Candidates, p: float, min_keep: int) -> Candidates:
    """Keep tokens at least p times as likely as the most likely one: logit ≥ max + log p."""
    if p <= 0.0 or not len(c):
        return c
    floor = np.float32(c.logits.max()) + np.log(np.float32(p))
    keep = np.nonzero(c.logits >= floor)[0]  # the order is kept, as llama.cpp's filter keeps it
    if len(keep) >= max(min_keep, 1):
        return c.take(keep)
    return c.take(_by_logit(c)[: max(min_keep, len(keep), 1)])


def temperature(c: Candidates, temp: float) -> Candidates:
    """Divide the logits by the temperature; at temperature ≤ 0 keep only the top token (greedy)."""
    if temp <= 0:
        return c.take(_by_logit(c)[:1])
    return Candidates(c.ids, c.logits / np.float32(temp))


@dataclass(frozen=True)
class Draw:
    token: int
    p: float  # its probability among the survivors
    u: float  # the uniform number drawn


def dist(c: Candidates, rng: "MT19937") -> Draw:
    """llama.cpp's dist: softmax, then the first candidate (in the current order) whose running
    probability sum reaches u × the total."""
    u = rng.uniform()  # drawn even for a single candidate, so the sequence of u stays llama.cpp's
    # expf in float, sums in double: llama.cpp's arithmetic, so the same u picks the same token.
    e = np.exp((c.logits - c.logits.max()).astype(np.float64)).astype(np.float32)
    running = np.cumsum(e.astype(np.float64))
    i = min(int(np.searchsorted(running, running[-1] * u, side="left")), len(c) - 1)
    return Draw(int(c.ids[i]), float(e[i] / running[-1]), u)


# The random numbers: std::mt19937 and std::uniform_real_distribution<double> ---------------------


class MT19937:
    """The Mersenne Twister (Matsumoto & Nishimura 1998), 32-bit, seeded as std::mt19937(seed)."""

    N, M = 624, 397

    def __init__(self, seed: int) -> None:
        mt = [seed & 0xFFFFFFFF]
        for i in range(1, self.N):
            mt.append((1812433253 * (mt[-1] ^ (mt[-1] >> 30)) + i) & 0xFFFFFFFF)
        self._mt, self._i = mt, self.N

    def _twist(self) -> None:
        mt, n, m = self._mt, self.N, self.M
        for i in range(n):
            y = (mt[i] & 0x80000000) | (mt[(i + 1) % n] & 0x7FFFFFFF)
            mt[i] = mt[(i + m) % n] ^ (y >> 1) ^ (0x9908B0DF if y & 1 else 0)
        self._i = 0

    def next_u32(self) -> int:
        if self._i >= self.N:
            self._twist()
        y = self._mt[self._i]
        self._i += 1
        y ^= y >> 11
        y ^= (y << 7) & 0x9D2C5680
        y ^= (y << 15) & 0xEFC60000
        return y ^ (y >> 18)

    def uniform(self) -> float:
        """std::uniform_real_distribution<double>(0, 1): generate_canonical<double, 53> takes two
        32-bit words, low one first."""
        lo, hi = self.next_u32(), self.next_u32()
        u = (lo + hi * 2.0**32) / 2.0**64
        return u if u < 1.0 else math.nextafter(1.0, 0.0)


# The chain --------------------------------------------------------------------------------------


def logits_summary(logits: torch.Tensor, k: int = TOP_K_SHOWN) -> dict:
    """The logits event's scalars: the top-k by probability and the entropy (nats), in few passes
    over a vocabulary that may be 262k long."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    top = torch.topk(logp, k)
    probs = logp.exp()
    entropy = -(probs * logp.clamp_min(-1e30)).sum()  # a -inf logit has p = 0 and adds nothing
    return {
        "top_ids": top.indices.tolist(),
        "top_probs": [round(p, 6) for p in top.values.exp().tolist()],
        "entropy": float(entropy),
    }


def survivors(c: Candidates, model_probs: np.ndarray, shown: int = SHOWN) -> tuple[dict, dict]:
    """What a stage's event carries: the top `shown` survivors by probability (softmax over all
    survivors, so the probabilities of a whole set sum to 1) with their logits, how many survive,
    the mass the shown ones cover, and `kept_mass`: the share of the model's own distribution
    (`model_probs`, the softmax of the raw logits) that the survivors hold."""
    x = c.logits.astype(np.float64)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    order = _by_logit(c, shown)  # the most probable are the highest logits
    tensors = {"ids": c.ids[order].astype(np.int32), "probs": probs[order].astype(np.float32),
               "logits": c.logits[order].astype(np.float32)}
    kept = 1.0 if len(c) == len(model_probs) else float(model_probs[c.ids].sum())
    return tensors, {"n": len(c), "shown": len(order), "mass": float(probs[order].sum()), "kept_mass": kept}


def stage_settings(p: SamplerParams) -> dict[str, tuple[dict, bool]]:
    """Each stage before the draw: its settings as its event shows them, and whether it can change
    anything (engine/llamacpp_sampler.py emits the same)."""
    penalize = p.repeat_last_n != 0 and (p.repeat_penalty, p.frequency_penalty, p.presence_penalty) != (1, 0, 0)
    return {
        "penalties": ({"repeat_penalty": p.repeat_penalty, "repeat_last_n": p.repeat_last_n,
                       "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty}, penalize),
        "top_k": ({"k": p.top_k}, p.top_k > 0),
        "typical": ({"p": p.typical_p}, p.typical_p < 1.0),
        "top_p": ({"p": p.top_p}, p.top_p < 1.0),
        "min_p": ({"p": p.min_p}, p.min_p > 0.0),
        "temp": ({"temp": p.temp}, True),
    }


def grammar_stage(grammar: "Grammar", c: Candidates, step: int, bus: HookBus) -> Candidates:
    """llama.cpp's grammar-first path: only the tokens the grammar allows go on to the chain
    (llama.cpp sets the others' logits to -inf, which no later stage or draw can pick). The
    `grammar` event carries the mask, packed 1 bit per token (engine/grammar.py `packed`)."""
    from engine.grammar import GrammarError, packed

    allowed = grammar.mask(len(c))
    if bus.wants("grammar"):
        bus.emit("grammar", step, tensors={"mask": packed(allowed)}, **grammar.state(allowed))
    if not allowed.any():
        raise GrammarError(f"the grammar {grammar.source.name} allows no token of this vocabulary at step {step}")
    return c.take(np.flatnonzero(allowed))


class Sampler:
    """One run's sampler: the settings, the random state that carries from step to step, and the
    grammar (engine/grammar.py), if the run is constrained by one."""

    def __init__(self, params: SamplerParams, grammar: "Grammar | None" = None) -> None:
        self.params = params.with_seed()
        self.rng = MT19937(self.params.seed)
        self.grammar = grammar

    def stages(self, history: list[int]) -> list[tuple[str, Callable[[Candidates], Candidates], dict, bool]]:
        """The chain before the draw: (name, stage, its settings, whether it can change anything)."""
        p = self.params
        run = {
            "penalties": lambda c: penalties(c, history, p),
            "top_k": lambda c: top_k(c, p.top_k),
            "typical": lambda c: typical(c, p.typical_p, p.min_keep),
            "top_p": lambda c: top_p(c, p.top_p, p.min_keep),
            "min_p": lambda c: min_p(c, p.min_p, p.min_keep),
            "temp": lambda c: temperature(c, p.temp),
        }
        return [(name, run[name], settings, active) for name, (settings, active) in stage_settings(p).items()]

    def sample(self, logits: torch.Tensor, history: list[int], step: int, bus: HookBus) -> int:
        """The next token from `logits` [n_vocab]; `history` is every token so far (prompt and drawn),
        which the penalties read."""
        if bus.wants("logits"):
            bus.emit("logits", step, tensors={"logits": logits}, **logits_summary(logits))
        raw = logits.detach().float().cpu().numpy()
        c = Candidates(np.arange(len(raw), dtype=np.int64), raw)
        if self.grammar is not None:
            c = grammar_stage(self.grammar, c, step, bus)
        watch = bus.wants("sample")
        if watch:
            x = raw.astype(np.float64)
            model_probs = np.exp(x - x.max())
            model_probs /= model_probs.sum()
        summary: tuple[dict, dict] | None = None  # the last one, reused while a stage changes nothing
        for name, stage, settings, active in self.stages(history):
            out = stage(c)
            if watch:
                if summary is None or out is not c:
                    summary = survivors(out, model_probs)
                bus.emit("sample", step, part=name, tensors=summary[0], **summary[1], n_in=len(c), active=active,
                         **settings)
            c = out
        draw = dist(c, self.rng)
        if watch:
            bus.emit("sample", step, part="dist", tensors=summary[0], **summary[1], n_in=len(c), active=True,
                     drawn=draw.token, p=draw.p, u=draw.u, seed=self.params.seed)
        if self.grammar is not None:
            self.grammar.accept(draw.token)
        return draw.token

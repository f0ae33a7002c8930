"""The sampler chain computed by llama.cpp itself: each stage one llama_sampler, applied alone.

engine/sampler.py computes llama.cpp's chain in numpy; this one asks llama.cpp. Each stage
is its own llama_sampler (llama_sampler_init_penalties, _top_k, _typical, _top_p, _min_p,
_temp, then _dist, or _greedy at temperature ≤ 0), in the common chain's order, applied with
llama_sampler_apply to one llama_token_data_array over the whole vocabulary, and the
candidates are read back after every stage. So the llama.cpp engine's sample events show what
llama.cpp's own stages kept, and the contract is engine.sampler.Sampler's: the same `logits`
event, one `sample` event per stage with the same tensors and scalars, and the draw.

What "survives" a stage: the entries still in the array with a finite logit. llama.cpp marks
what a grammar or a temperature of 0 rules out with -inf rather than dropping it; such an entry
has probability 0 and no draw can pick it, which is what our chain's dropping it means.

The dist event has no `u`: llama.cpp's dist keeps its uniform number to itself (engine/sampler.py
draws the same one from the same seed, tests/test_llamacpp_sampler.py checks the tokens agree).
"""

from __future__ import annotations

import ctypes

import numpy as np

from engine.grammar import TOKEN_DATA, packed
from engine.hooks import HookBus
from engine.sampler import STAGES, Candidates, SamplerParams, logits_summary, stage_settings, survivors


class LlamaCppSampler:
    """One run's llama.cpp sampler stages; the dist stage carries its random state across steps."""

    def __init__(self, params: SamplerParams, grammar=None) -> None:
        import llama_cpp

        self.params = p = params.with_seed()
        self.grammar = grammar
        self._llama = llama_cpp
        # The stateless stages, made once; penalties are made per step from the history.
        self._stages = {
            "top_k": llama_cpp.llama_sampler_init_top_k(p.top_k),
            "typical": llama_cpp.llama_sampler_init_typical(p.typical_p, p.min_keep),
            "top_p": llama_cpp.llama_sampler_init_top_p(p.top_p, p.min_keep),
            "min_p": llama_cpp.llama_sampler_init_min_p(p.min_p, p.min_keep),
            "temp": llama_cpp.llama_sampler_init_temp(p.temp),
        }
        self._draw = (llama_cpp.llama_sampler_init_greedy() if p.is_greedy
                      else llama_cpp.llama_sampler_init_dist(p.seed))
        self._tokens = np.zeros(0, dtype=TOKEN_DATA)

    def __del__(self) -> None:
        llama_cpp = getattr(self, "_llama", None)
        if llama_cpp is None:
            return
        for sampler in [*getattr(self, "_stages", {}).values(), getattr(self, "_draw", None)]:
            if sampler:
                llama_cpp.llama_sampler_free(sampler)

    def _penalties(self, history: list[int]):
        """llama.cpp's penalties stage, fed the history's last repeat_last_n tokens (all, for -1)
        through llama_sampler_accept, as llama.cpp's chain is fed each token it decodes."""
        p, llama_cpp = self.params, self._llama
        n_last = len(history) if p.repeat_last_n == -1 else p.repeat_last_n
        sampler = llama_cpp.llama_sampler_init_penalties(len(self._tokens), n_last, p.repeat_penalty,
                                                         p.frequency_penalty, p.presence_penalty)
        for token in history[len(history) - min(n_last, len(history)):]:
            llama_cpp.llama_sampler_accept(sampler, int(token))
        return sampler

    def _candidates(self, array) -> Candidates:
        """What the array holds now, in its order (a stage may point `data` at its own buffer)."""
        n = array.size
        raw = ctypes.cast(array.data, ctypes.POINTER(ctypes.c_uint8 * (n * TOKEN_DATA.itemsize))).contents
        view = np.frombuffer(raw, dtype=TOKEN_DATA, count=n)
        keep = np.isfinite(view["logit"])
        return Candidates(view["id"][keep].astype(np.int64), view["logit"][keep].copy())

    def sample(self, logits, history: list[int], step: int, bus: HookBus) -> int:
        """The next token from `logits` [n_vocab], drawn by llama.cpp; `history` is every token so far."""
        llama_cpp = self._llama
        if bus.wants("logits"):
            bus.emit("logits", step, tensors={"logits": logits}, **logits_summary(logits))
        raw = logits.detach().float().cpu().numpy()
        if len(self._tokens) != len(raw):
            self._tokens = np.zeros(len(raw), dtype=TOKEN_DATA)
        tokens = self._tokens
        tokens["id"] = np.arange(len(raw))
        tokens["logit"] = raw
        tokens["p"] = 0.0
        array = llama_cpp.llama_token_data_array(tokens.ctypes.data_as(llama_cpp.llama_token_data_p),
                                                 len(raw), -1, False)
        ref = ctypes.byref(array)

        if self.grammar is not None:
            self.grammar.apply(ref)  # llama.cpp's grammar sampler on the whole vocabulary: -inf where disallowed
            allowed = np.zeros(len(raw), dtype=bool)
            allowed[self._candidates(array).ids] = True
            self.grammar.last_mask = allowed  # what accept() checks the draw against
            if bus.wants("grammar"):
                bus.emit("grammar", step, tensors={"mask": packed(allowed)}, **self.grammar.state(allowed))
            if not allowed.any():
                from engine.grammar import GrammarError

                raise GrammarError(f"the grammar {self.grammar.source.name} allows no token of this vocabulary "
                                   f"at step {step}")

        watch = bus.wants("sample")
        if watch:
            x = raw.astype(np.float64)
            model_probs = np.exp(x - x.max())
            model_probs /= model_probs.sum()
        c = self._candidates(array) if watch else None
        settings = stage_settings(self.params)
        summary = None
        for name in STAGES[:-1]:
            sampler = self._penalties(history) if name == "penalties" else self._stages[name]
            llama_cpp.llama_sampler_apply(sampler, ref)
            if name == "penalties":
                llama_cpp.llama_sampler_free(sampler)
            if watch:
                out = self._candidates(array)
                summary = survivors(out, model_probs)
                stage, active = settings[name]
                bus.emit("sample", step, part=name, tensors=summary[0], **summary[1], n_in=len(c), active=active,
                         **stage)
                c = out

        llama_cpp.llama_sampler_apply(self._draw, ref)
        token = int(tokens_at(array, array.selected)["id"])
        if watch:
            x = c.logits.astype(np.float64)
            probs = np.exp(x - x.max())
            p = float(probs[np.flatnonzero(c.ids == token)[0]] / probs.sum())
            bus.emit("sample", step, part="dist", tensors=summary[0], **summary[1], n_in=len(c), active=True,
                     drawn=token, p=p, seed=self.params.seed)
        if self.grammar is not None:
            self.grammar.accept(token)
        return token


def tokens_at(array, index: int) -> np.void:
    """One llama_token_data of the array, wherever its data points now."""
    entry = ctypes.cast(array.data, ctypes.POINTER(ctypes.c_uint8 * TOKEN_DATA.itemsize))[index]
    return np.frombuffer(entry, dtype=TOKEN_DATA, count=1)[0]

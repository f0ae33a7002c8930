"""Grammar-constrained decoding: which tokens a GBNF grammar (or a JSON schema) allows next.

The grammar is llama.cpp's: its GBNF parser and its grammar sampler
(llama_sampler_init_grammar through llama-cpp-python), which needs the model's vocabulary
(a `llama_vocab`: the GGUF loaded with vocab_only, ≈0.13 s for SmolLM2's 49k pieces and
≈0.6 s for Gemma 3's 262k on this 2-core machine, done on the first step, not at start-up).
A JSON schema becomes GBNF through llama-cpp-python's port of llama.cpp's converter
(llama_cpp.llama_grammar.json_schema_to_gbnf), as `llama-cli --json-schema` does.

Per step, `mask()` is the allowed-token mask over the whole vocabulary: llama.cpp's grammar
sampler applied to every token (logits 0), the tokens it leaves finite being the allowed ones.
Once the grammar can end, the end-of-generation tokens are allowed; once it must end, they
are all that is allowed. `accept(token)` advances the grammar's stacks by the drawn token.

Why the torch engine takes its mask from llama.cpp's grammar, with numbers
(`python bench/grammar.py --steps 12`, a JSON schema, one run, this 2-core machine shared at
load ≈7): the mask's median is 27 ms per step on SmolLM2's 49k vocabulary and 56 ms on Gemma 3's
262k (max 71 / 183 ms; it walks every token's bytes through the grammar's stacks), against a
torch decode step of 1.26 s and 3.6 s: 0.02x of a step for both. Even unloaded (4-11 ms and
110-215 ms measured alone) the mask is a small share of the torch engine's step, so it is not
worth a second grammar engine: the mask is llama.cpp's, the reference the issue names, by
construction, and the two engines cannot disagree on it (tests/test_grammar.py checks it step
by step against a separate llama.cpp grammar sampler). Nothing faster is installed here:
llguidance and xgrammar (token-trie matchers in Rust / C++) are on PyPI, not in the
environment, and not measured; each brings its own (lexer-based) grammar semantics to check
against llama.cpp's token by token. They would matter for the llama.cpp engine, whose decode
step (≈10 ms for SmolLM2) is nearer the mask's cost.

No file content is ever executed: a GBNF file is text handed to llama.cpp's parser, a schema
file is parsed by `json.loads`; remote `$ref`s are refused (the converter never fetches).
"""

from __future__ import annotations

import ctypes
import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

ROOT = "root"
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data, packed as C lays it out


class GrammarError(ValueError):
    """A grammar or schema that cannot be used: unreadable, invalid, or unsupported."""


@dataclass(frozen=True)
class GrammarSource:
    """The GBNF text a run is constrained by, and where it came from."""

    gbnf: str
    name: str  # the file's base name, shown in the view and the trace
    kind: str  # "gbnf" or "json-schema"
    schema: dict | None = None  # the JSON schema, when it came from one


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise GrammarError(f"no such {what} file: {path}") from None
    except UnicodeDecodeError:
        raise GrammarError(f"{path}: the {what} file is not UTF-8 text") from None
    except OSError as e:
        raise GrammarError(f"cannot read {path}: {e.strerror or e}") from None


def from_gbnf(text: str, name: str = "<gbnf>") -> GrammarSource:
    source = GrammarSource(text, name, "gbnf")
    check(source)
    return source


def from_schema(schema_text: str, name: str = "<schema>") -> GrammarSource:
    """A JSON schema as GBNF. Invalid JSON, a schema that is no object, or one the converter
    does not support is a GrammarError naming the file."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as e:
        raise GrammarError(f"{name}: not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    if not isinstance(schema, dict):
        raise GrammarError(f"{name}: a JSON schema is an object, not {type(schema).__name__}")
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise GrammarError(f"{name}: the schema nests too deeply") from None
    except (AssertionError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        # The converter reports an unsupported construct with an assert or a ValueError.
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        if why.startswith("Fetching remote schemas"):
            why = "a remote $ref (only local '#/...' references are followed; nothing is fetched)"
        raise GrammarError(f"{name}: unsupported JSON schema: {why}") from None
    source = GrammarSource(gbnf, name, "json-schema", schema)
    check(source)
    return source


def load_gbnf(path: str) -> GrammarSource:
    """`--grammar FILE`: checked now, before any model loads."""
    return from_gbnf(_read(path, "grammar"), os.path.basename(path))


def load_schema(path: str) -> GrammarSource:
    """`--json-schema FILE`: converted to GBNF and checked now, before any model loads."""
    return from_schema(_read(path, "JSON schema"), os.path.basename(path))


@contextmanager
def _llama_log():
    """Collect what llama.cpp says while a grammar is parsed, instead of letting it reach the
    terminal: its parser prints its error to stderr itself (fd 2), the rest goes through the
    log callback. Both are captured, and llama-cpp-python's callback is put back afterwards."""
    import llama_cpp
    from llama_cpp import _logger

    said: list[str] = []
    callback = llama_cpp.llama_log_callback(lambda level, text, data: said.append(text.decode("utf-8", "replace")))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
            err.seek(0)
            said[:0] = err.read().decode("utf-8", "replace").splitlines()


def _why(said: list[str]) -> str:
    """llama.cpp's reason, in one line: its parse error, else the last thing it logged."""
    lines = [line.strip() for line in said if line.strip()]
    for line in lines:
        if "error parsing grammar:" in line:
            return line.split("error parsing grammar:", 1)[1].strip()
    reasons = [line for line in lines if line != "failed to parse grammar"]
    return reasons[-1] if reasons else "llama.cpp could not parse it"


def _init_sampler(source: GrammarSource, vocab):
    """llama.cpp's grammar sampler for `source` (vocab None: parse only). NULL is a GrammarError."""
    import llama_cpp

    if not source.gbnf.strip():
        raise GrammarError(f"{source.name}: the grammar is empty")
    with _llama_log() as said:
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, source.gbnf.encode("utf-8"), ROOT.encode())
    if not sampler:
        what = "the grammar made from the schema" if source.kind == "json-schema" else "invalid grammar"
        raise GrammarError(f"{source.name}: {what}: {_why(said)}")
    return sampler


def check(source: GrammarSource) -> None:
    """Parse with llama.cpp's parser and no vocabulary: a bad grammar fails before the model loads."""
    import llama_cpp

    llama_cpp.llama_sampler_free(_init_sampler(source, None))


class VocabOnly:
    """A GGUF's vocabulary in llama.cpp (the model loaded with vocab_only: no weights)."""

    def __init__(self, path: str) -> None:
        import llama_cpp

        self._llama = llama_cpp  # for __del__, which may run while the interpreter shuts down
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with _llama_log():
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise GrammarError(f"llama.cpp cannot load the vocabulary of {path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)

    def __del__(self) -> None:
        if getattr(self, "model", None):
            self._llama.llama_model_free(self.model)


class Grammar:
    """One run's grammar state over one model's vocabulary.

    `vocab` is a llama_vocab pointer when the caller has llama.cpp's model loaded already (the
    llama.cpp engine); otherwise the model at `model_path` is loaded vocab-only on first use.
    """

    def __init__(self, source: GrammarSource, model_path: str | None = None, vocab=None) -> None:
        if vocab is None and model_path is None:
            raise ValueError("a Grammar needs the model's vocabulary: model_path or vocab")
        self.source = source
        self._model_path, self._vocab = model_path, vocab
        self._owner: VocabOnly | None = None
        self._sampler = None
        self.last_mask: np.ndarray | None = None
        import llama_cpp

        self._llama = llama_cpp  # for __del__, which may run while the interpreter shuts down

    # llama.cpp's objects, made on first use ------------------------------------------------------

    @property
    def vocab(self):
        if self._vocab is None:
            self._owner = VocabOnly(self._model_path)
            self._vocab = self._owner.vocab
        return self._vocab

    @property
    def sampler(self):
        """llama.cpp's grammar sampler: apply it to a llama_token_data_array, accept drawn tokens."""
        if self._sampler is None:
            import llama_cpp

            vocab = self.vocab
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            self.eog_ids = np.array([t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
                                    dtype=np.int64)
            self._sampler = _init_sampler(self.source, vocab)
            self._tokens = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
            self._tokens["id"] = np.arange(self.n_vocab)
        return self._sampler

    def __del__(self) -> None:
        if getattr(self, "_sampler", None):
            self._llama.llama_sampler_free(self._sampler)

    def reset(self) -> None:
        """Back to the grammar's start, for a new run (llama_sampler_reset)."""
        import llama_cpp

        if self._sampler is not None:
            llama_cpp.llama_sampler_reset(self._sampler)
        self.last_mask = None

    # The per-step work -------------------------------------------------------------------------------

    def apply(self, array) -> None:
        """llama.cpp's grammar stage on a llama_token_data_array (by reference): disallowed
        tokens' logits become -inf. The llama.cpp engine's sampler calls this on its candidates."""
        import llama_cpp

        llama_cpp.llama_sampler_apply(self.sampler, array)

    def mask(self, n: int | None = None) -> np.ndarray:
        """bool [n] (default: the vocabulary's size): which tokens the grammar allows now. Logits
        rows past llama.cpp's vocabulary (padding) are never allowed."""
        import llama_cpp

        sampler = self.sampler
        tokens = self._tokens
        tokens["logit"] = 0.0
        array = llama_cpp.llama_token_data_array(tokens.ctypes.data_as(llama_cpp.llama_token_data_p),
                                                 self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
        allowed = np.zeros(self.n_vocab if n is None else n, dtype=bool)
        m = min(len(allowed), self.n_vocab)
        allowed[:m] = np.isfinite(tokens["logit"][:m])
        self.last_mask = allowed
        return allowed

    def accept(self, token: int) -> None:
        """Advance the grammar by the drawn token. llama.cpp aborts the process on a token its
        grammar cannot take, so a token outside the last mask is refused here first."""
        import llama_cpp

        if self.last_mask is None or not (0 <= token < len(self.last_mask) and self.last_mask[token]):
            raise GrammarError(f"token {token} is not allowed by the grammar {self.source.name} here")
        llama_cpp.llama_sampler_accept(self.sampler, int(token))
        self.last_mask = None

    def state(self, allowed: np.ndarray) -> dict:
        """The grammar event's scalars for a step whose mask is `allowed`."""
        eog = self.eog_ids[self.eog_ids < len(allowed)]
        n_allowed = int(allowed.sum())
        can_end = bool(allowed[eog].any())
        return {
            "allowed": n_allowed,
            "n_vocab": len(allowed),
            "source": self.source.name,
            "kind": self.source.kind,
            "accepting": can_end,  # the text so far is a complete sentence of the grammar
            "complete": can_end and n_allowed == int(allowed[eog].sum()),  # and nothing may follow it
        }

    def describe(self) -> dict:
        """For the trace's info: the grammar a replay shows, with no model."""
        return {"source": self.source.name, "kind": self.source.kind, "gbnf": self.source.gbnf}


def packed(allowed: np.ndarray) -> np.ndarray:
    """The mask as the grammar event carries it: np.packbits, 1 bit per token, first token in the
    high bit of byte 0 (np.unpackbits(bits)[:n_vocab] gives it back)."""
    return np.packbits(allowed)

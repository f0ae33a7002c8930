"""Grammar-constrained decoding (engine/grammar.py): the output always parses and matches the schema,
the torch engine's mask is llama.cpp's at every step, and a bad grammar fails before the model loads."""

import ctypes
import json

import numpy as np
import pytest

from engine.grammar import TOKEN_DATA, Grammar, GrammarError, VocabOnly, from_gbnf, from_schema, packed
from engine.hooks import HookBus
from engine.sampler import SamplerParams
from traces.live import MemoryTrace

llama_cpp = pytest.importorskip("llama_cpp")

# Bounded, so every run terminates: enums, small integers as an enum, a short string.
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "color": {"enum": ["red", "green", "blue"]},
        "legs": {"enum": [0, 2, 4, 8]},
        "pet": {"type": "boolean"},
    },
    "required": ["name", "color", "legs", "pet"],
}
PROMPT = "Describe an animal as a JSON object."


def matches(value, schema: dict) -> bool:
    """A small JSON-schema checker for what SCHEMA uses: object/required/properties, enum,
    string with maxLength, boolean; no extra properties (the grammar allows none)."""
    if "enum" in schema:
        return any(value == e and type(value) is type(e) for e in schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict) and set(schema.get("required", [])) <= set(value) <= set(props)
                and all(matches(value[k], props[k]) for k in value))
    if kind == "string":
        return isinstance(value, str) and len(value) <= schema.get("maxLength", len(value))
    if kind == "boolean":
        return isinstance(value, bool)
    raise AssertionError(f"the checker does not know {schema}")


def test_the_checker_can_fail():
    assert matches({"name": "Rex", "color": "red", "legs": 4, "pet": True}, SCHEMA)
    for bad in ({"name": "Rex", "color": "pink", "legs": 4, "pet": True}, {"name": "R" * 13, "color": "red", "legs": 4,
                "pet": True}, {"name": "Rex", "color": "red", "legs": True, "pet": True}, {"color": "red", "legs": 4,
                "pet": True}, {"name": "Rex", "color": "red", "legs": 4, "pet": True, "x": 1}):
        assert not matches(bad, SCHEMA), bad


@pytest.fixture(scope="module")
def smollm2():
    from engine.torch_engine import TorchEngine
    from inspector.common import demo_model

    engine = TorchEngine(demo_model(), numerics="exact")
    engine.grammar = Grammar(from_schema(json.dumps(SCHEMA), "animal.json"), model_path=demo_model())
    return engine


def run(engine, seed: int, n_predict: int = 160):
    bus, trace = HookBus(), MemoryTrace({})
    bus.add(trace)
    engine.bus = engine.model.bus = bus
    steps = list(engine.generate(PROMPT, n_predict, sampler=SamplerParams(temp=1.0, seed=seed)))
    return steps, trace


def test_20_seeded_runs_at_temperature_1_all_give_json_matching_the_schema(smollm2):
    outputs = []
    for seed in range(20):
        steps, _ = run(smollm2, seed)
        assert steps[-1].stop == "eos", seed  # a complete grammar leaves only EOS
        text = "".join(s.text for s in steps)
        value = json.loads(text)
        assert matches(value, SCHEMA), (seed, text)
        outputs.append(text)
    assert len(set(outputs)) > 5  # the seeds really sampled different objects


def raw_llama_grammar(gbnf: str, path: str):
    """llama.cpp's grammar sampler built here from its C API directly (only the vocabulary is loaded
    by engine/grammar.py), applied to arbitrary logits, as llama.cpp's chain applies it."""
    model = VocabOnly(path)
    sampler = llama_cpp.llama_sampler_init_grammar(model.vocab, gbnf.encode(), b"root")
    return model, sampler, llama_cpp.llama_vocab_n_tokens(model.vocab)


def test_the_torch_engines_mask_is_llama_cpps_at_every_step(smollm2):
    from inspector.common import demo_model

    steps, trace = run(smollm2, seed=5)
    model, sampler, n_vocab = raw_llama_grammar(smollm2.grammar.source.gbnf, demo_model())
    try:
        tokens = np.zeros(n_vocab, dtype=TOKEN_DATA)
        tokens["id"] = np.arange(n_vocab)
        for s in steps:
            event = trace.get(s.step, "grammar")
            bits = np.unpackbits(np.asarray(event.tensors["mask"]))[: event.scalars["n_vocab"]].astype(bool)
            tokens["logit"] = np.random.default_rng(s.step).standard_normal(n_vocab)  # any logits: only -inf counts
            array = llama_cpp.llama_token_data_array(tokens.ctypes.data_as(llama_cpp.llama_token_data_p), n_vocab, -1,
                                                     False)
            llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
            theirs = np.isfinite(tokens["logit"])
            assert np.array_equal(bits[:n_vocab], theirs), s.step
            assert event.scalars["allowed"] == theirs.sum() and bits[s.token]
            llama_cpp.llama_sampler_accept(sampler, s.token)
        last = trace.get(steps[-1].step, "grammar").scalars
        assert last["accepting"] and steps[-1].stop == "eos"  # EOS was drawn where the grammar could end
        assert not trace.get(0, "grammar").scalars["accepting"]
    finally:
        llama_cpp.llama_sampler_free(sampler)


def test_the_llama_cpp_sampler_follows_the_same_grammar_and_draws_the_same_tokens(smollm2):
    """The llama.cpp engine's sampler applies llama.cpp's grammar stage in its chain: from the
    torch engine's logits it draws what our chain drew, with the same masks."""
    from engine.llamacpp_sampler import LlamaCppSampler
    from inspector.common import demo_model

    steps, trace = run(smollm2, seed=9)
    grammar = Grammar(smollm2.grammar.source, model_path=demo_model())
    theirs = LlamaCppSampler(SamplerParams(temp=1.0, seed=9), grammar=grammar)
    bus, replay = HookBus(), MemoryTrace({})
    bus.add(replay)
    history = []
    for s in steps:
        logits = trace.get(s.step, "logits").to_torch()["logits"]
        token = theirs.sample(logits, history, s.step, bus)
        assert token == s.token, s.step
        ours = trace.get(s.step, "grammar").tensors["mask"]
        assert np.array_equal(replay.get(s.step, "grammar").tensors["mask"], ours)
        history.append(token)


def test_a_grammar_mask_is_packed_one_bit_per_token():
    allowed = np.zeros(49_152, dtype=bool)
    allowed[[0, 7, 8, 49_151]] = True
    bits = packed(allowed)
    assert bits.dtype == np.uint8 and len(bits) == 49_152 // 8
    assert np.array_equal(np.unpackbits(bits).astype(bool), allowed)


def test_a_finished_grammar_allows_only_end_of_generation():
    from inspector.common import demo_model

    g = Grammar(from_gbnf('root ::= "yes" | "no"', "yn.gbnf"), model_path=demo_model())
    first = g.mask()
    assert first.sum() >= 2 and not g.state(first)["accepting"]
    yes = [t for t in np.flatnonzero(first) if _piece(g, t) == b"yes"]
    g.accept(yes[0])
    done = g.mask()
    assert set(np.flatnonzero(done)) == set(g.eog_ids.tolist())
    assert g.state(done)["complete"]
    with pytest.raises(GrammarError, match="not allowed"):  # refused before llama.cpp would abort
        g.accept(int(yes[0]))


def _piece(g: Grammar, token: int) -> bytes:
    buf = ctypes.create_string_buffer(64)
    n = llama_cpp.llama_token_to_piece(g.vocab, int(token), buf, len(buf), 0, True)
    return buf.raw[:n]


@pytest.mark.parametrize("text, message", [
    ("root ::= missing", "bad.gbnf: invalid grammar: Undefined rule identifier 'missing'"),
    ('root ::= root "a"', "bad.gbnf: invalid grammar: unsupported grammar, left recursion"),
    ('start ::= "a"', "bad.gbnf: invalid grammar: grammar does not contain a 'root' symbol"),
    ("  \n", "bad.gbnf: the grammar is empty"),
])
def test_invalid_gbnf_says_what_llama_cpp_found(text, message, capfd):
    with pytest.raises(GrammarError) as e:
        from_gbnf(text, "bad.gbnf")
    assert str(e.value).startswith(message)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # llama.cpp's own printing is caught, not shown


@pytest.mark.parametrize("text, message", [
    ("{", "s.json: not valid JSON"),
    ("[1, 2]", "s.json: a JSON schema is an object, not list"),
    ('{"type": "complex"}', "s.json: unsupported JSON schema: Unrecognized schema"),
    ('{"$ref": "https://example.com/s.json"}', "s.json: unsupported JSON schema: a remote $ref"),
])
def test_invalid_schema_is_one_clear_error(text, message):
    with pytest.raises(GrammarError) as e:
        from_schema(text, "s.json")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


@pytest.mark.parametrize("flag, content, message", [
    ("--grammar", "root ::= nowhere", "invalid grammar: Undefined rule identifier 'nowhere'"),
    ("--json-schema", '{"type": "object", "properties": {"a": {"type": "nope"}}}', "unsupported JSON schema"),
    ("--json-schema", "not json", "not valid JSON"),
])
def test_the_cli_refuses_a_bad_grammar_before_the_model_loads(flag, content, message, tmp_path, capsys):
    from inspector.cli import main

    bad = tmp_path / "bad.txt"
    bad.write_text(content)
    # The model does not exist: the grammar's error comes first, so nothing was loaded.
    assert main([str(tmp_path / "missing.gguf"), "hi", "--headless", flag, str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-inspect: error: bad.txt: ") and message in err and err.count("\n") == 1


def test_the_cli_refuses_both_grammar_flags(tmp_path, capsys):
    from inspector.cli import main

    g = tmp_path / "g.gbnf"
    g.write_text('root ::= "a"')
    assert main(["--headless", "--grammar", str(g), "--json-schema", str(g)]) == 2
    assert "--json-schema: not allowed with argument --grammar" in capsys.readouterr().err

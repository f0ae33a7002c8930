"""The llama.cpp engine on deepseek2 (multi-head latent attention): its `kv_cmpr-N`, `k_pe-N` and
`Qcur-N` nodes become the torch engine's `mla` event, its `q-N`, `kv_cmpr_pe-N`, `q_nope-N`,
`q_pe-N` and `Kcur-N` nodes the `qkv` and `rope` events, and the K-only latent cache's store its
`kv_write` event."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from engine.config import ModelArgs  # noqa: E402
from engine.gguf_file import GGUFFile  # noqa: E402
from engine.hooks import HookBus  # noqa: E402
from engine.llamacpp_engine import LlamaCppEngine  # noqa: E402
from engine.llamacpp_graph import LlamaGraph  # noqa: E402
from engine.llamacpp_stops import NodeMap, mla_rules  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from tests.test_llamacpp_engine import PROMPT, NodeList, run  # noqa: E402
from tests.tiny_deepseek import KV_LORA_RANK, N_HEAD, N_ROT, QK_NOPE, write_tiny_deepseek2  # noqa: E402

N_STEPS = 4
# Bytes per token and layer count the cache's element: f16 in llama.cpp, the torch engine's dtype there.
SIZED = {"mla_bytes_per_token", "mha_bytes_per_token", "saved_bytes_per_token", "element_bytes"}


def both(path):
    """The same greedy run, default capture, in each engine."""
    a = run(TorchEngine(path, bus=HookBus(), background_load=False), capture="default", n=N_STEPS)
    llama = LlamaCppEngine(path, bus=HookBus(), threads=2)
    try:
        b = run(llama, capture="default", n=N_STEPS)
    finally:
        llama.close()
    return a, b


@pytest.fixture(scope="module", params=["plain", "yarn"])
def absorbed(request, tmp_path_factory):
    yarn = {"factor": 4.0, "n_ctx_orig": 64, "log_mul": 0.1} if request.param == "yarn" else None
    path = write_tiny_deepseek2(tmp_path_factory.mktemp("mla") / "ds.gguf", n_layer=2, yarn=yarn)
    return both(str(path))


def test_mla_events_line_up_with_the_torch_engine(absorbed):
    """Every step and layer: the same mla tensors (latent, k_pe, the absorbed query) within 1e-5, the
    same scalars, the cache's sizes counted in llama.cpp's f16."""
    a, b = absorbed
    assert a.generated_ids() == b.generated_ids()
    n = 0
    for step in a.steps:
        T = len(a.get(0, "batch").scalars["ids"]) if step == 0 else 1
        ea = {e.key: e for e in a.events(step) if e.stop == "mla"}
        eb = {e.key: e for e in b.events(step) if e.stop == "mla"}
        assert ea.keys() == eb.keys() and len(ea) == 2, step
        for key, x in ea.items():
            y = eb[key]
            assert x.tensors.keys() == y.tensors.keys() == {"latent", "k_pe", "q_absorbed"}, key
            assert y.tensors["latent"].shape == (T, KV_LORA_RANK) and y.tensors["k_pe"].shape == (T, N_ROT)
            assert y.tensors["q_absorbed"].shape == (T, N_HEAD, KV_LORA_RANK + N_ROT)
            for name in ("latent", "k_pe", "q_absorbed"):
                np.testing.assert_allclose(y.tensors[name], x.tensors[name], atol=1e-5, err_msg=f"{key} {name}")
            assert {k: v for k, v in x.scalars.items() if k not in SIZED} == \
                {k: v for k, v in y.scalars.items() if k not in SIZED}, key
            assert y.scalars["form"] == "absorbed" and y.scalars["element_bytes"] == 2
            assert y.scalars["mla_bytes_per_token"] == (KV_LORA_RANK + N_ROT) * 2
            n += 1
    assert n == 2 * N_STEPS


def test_the_latent_cache_write_is_a_kv_write_event(absorbed):
    """llama.cpp's MLA cache is K-only (no V store): kv_write still comes, at the same positions,
    holding the latent rows, in distinct cells."""
    a, b = absorbed
    for step in a.steps:
        for layer in (0, 1):
            x, y = a.get(step, "kv_write", layer), b.get(step, "kv_write", layer)
            assert x is not None and y is not None, (step, layer)
            assert y.scalars["positions"] == x.scalars["positions"]
            assert y.scalars["n_cached"] == x.scalars["n_cached"]
            assert (y.scalars["holds"], y.scalars["latent_dim"], y.scalars["rope_dim"]) == ("mla_latent", KV_LORA_RANK, N_ROT)
    last = b.get(N_STEPS - 1, "kv_write", 0).scalars["block_table"]
    assert len(set(last)) == len(last) == b.get(N_STEPS - 1, "kv_write", 0).scalars["n_cached"]


def test_the_decompressed_form_has_latent_and_k_pe_but_no_absorbed_query(tmp_path):
    """An older attn_kv_b file runs naive in both engines: the same latent and k_pe, no q_absorbed."""
    a, b = both(str(write_tiny_deepseek2(tmp_path / "legacy.gguf", n_layer=1, legacy=True)))
    for step in a.steps:
        x, y = a.get(step, "mla", 0), b.get(step, "mla", 0)
        assert x.tensors.keys() == y.tensors.keys() == {"latent", "k_pe"}
        assert y.scalars["form"] == "naive"
        for name in ("latent", "k_pe"):
            np.testing.assert_allclose(y.tensors[name], x.tensors[name], atol=1e-5, err_msg=f"{step} {name}")
        assert b.get(step, "kv_write", 0).scalars["positions"] == a.get(step, "kv_write", 0).scalars["positions"]


# qkv and rope ---------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["absorbed", "naive", "q_lora"])
def test_every_deepseek2_rule_is_found_in_every_layer(tmp_path, layout):
    """The deepseek2 rows (qkv, rope, mla) are pinned to this llama-cpp-python's graph: each matches
    exactly one node (op and name) per layer, in the absorbed and the naive graph, with and without
    the query's LoRA pair (three `q-N` nodes then, one reshape)."""
    path = str(write_tiny_deepseek2(tmp_path / "ds.gguf", n_layer=2, legacy=layout == "naive",
                                    q_lora_rank=32 if layout == "q_lora" else 0))
    listing = NodeList()
    with LlamaGraph(path, n_ctx=256) as g:
        g.observer = listing
        g.decode(g.tokenize(PROMPT))
    rules = mla_rules(ModelArgs.from_metadata(GGUFFile(path).metadata), absorbed=layout != "naive")
    assert {r.stop for r in rules} == {"qkv", "rope", "mla"}
    nodes = NodeMap(rules)
    hits: dict[tuple[str, str], list] = {(r.stop, r.part): [] for r in rules}
    for name, op, _ in listing.nodes:
        for rule, layer in nodes.named(name):
            if rule.op == op:
                hits[(rule.stop, rule.part)].append(layer)
    for (stop, part), layers in hits.items():
        assert sorted(layers) == [0, 1], f"{stop}.{part}: matched in layers {layers}"


def _cosine(x, y):
    return float(np.dot(x.ravel(), y.ravel()) / np.linalg.norm(x) / np.linalg.norm(y))


def assert_qkv_rope_match(a, b):
    """Every step and layer: qkv and rope with the torch engine's tensors (names, shapes, values
    within 1e-6: they come out bit-identical) and scalars; the runs' event keys are the same."""
    for step in a.steps:
        T = len(a.get(0, "batch").scalars["ids"]) if step == 0 else 1
        assert {e.key for e in a.events(step)} == {e.key for e in b.events(step)}, step
        for layer in (0, 1):
            for stop in ("qkv", "rope"):
                x, y = a.get(step, stop, layer), b.get(step, stop, layer)
                assert y is not None, (step, stop, layer)
                assert x.tensors.keys() == y.tensors.keys() == {"q", "k"}, (step, stop, layer)
                assert y.tensors["q"].shape == (T, N_HEAD, QK_NOPE + N_ROT)
                assert y.tensors["k"].shape == (T, 1, KV_LORA_RANK + N_ROT)
                for name in ("q", "k"):
                    assert _cosine(x.tensors[name], y.tensors[name]) >= 0.99999, (step, stop, layer, name)
                    np.testing.assert_allclose(y.tensors[name], x.tensors[name], atol=1e-6,
                                               err_msg=f"{step} {stop} {layer} {name}")
                assert x.scalars == y.scalars, (step, stop, layer)
            # RoPE turns only the last rope_dim values of each row: the rest is qkv's, unchanged
            qkv, rope = b.get(step, "qkv", layer).tensors, b.get(step, "rope", layer).tensors
            np.testing.assert_array_equal(rope["q"][..., :QK_NOPE], qkv["q"][..., :QK_NOPE])
            assert not np.allclose(rope["q"][..., QK_NOPE:], qkv["q"][..., QK_NOPE:])


def test_qkv_and_rope_events_line_up_with_the_torch_engine(absorbed):
    """Absorbed MLA, plain RoPE and YaRN: the query before and after RoPE ([q_nope ; q_pe], the
    halves from q_nope-N and q_pe-N), the compressed KV (kv_cmpr_pe-N) and the cached row (Kcur-N)."""
    a, b = absorbed
    assert_qkv_rope_match(a, b)


def test_qkv_and_rope_of_the_decompressed_form(tmp_path):
    """The naive graph (attn_kv_b file, YaRN): q rotated whole in Qcur-N; the cached row is the
    normed latent (kv_cmpr-N) beside the rotated k_pe (k_pe-N), as the torch engine's."""
    yarn = {"factor": 4.0, "n_ctx_orig": 64, "log_mul": 0.1}
    a, b = both(str(write_tiny_deepseek2(tmp_path / "legacy.gguf", n_layer=2, legacy=True, yarn=yarn)))
    assert a.generated_ids() == b.generated_ids()
    assert_qkv_rope_match(a, b)

"""The llama.cpp engine on deepseek2 (multi-head latent attention): its `kv_cmpr-N`, `k_pe-N` and
`Qcur-N` nodes become the torch engine's `mla` event, and the K-only latent cache's store its
`kv_write` event."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")

from engine.hooks import HookBus  # noqa: E402
from engine.llamacpp_engine import LlamaCppEngine  # noqa: E402
from engine.torch_engine import TorchEngine  # noqa: E402
from tests.test_llamacpp_engine import run  # noqa: E402
from tests.tiny_deepseek import KV_LORA_RANK, N_HEAD, N_ROT, write_tiny_deepseek2  # noqa: E402

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

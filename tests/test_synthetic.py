"""Synthetic llama-shaped GGUFs (tests/synthetic.py): real layer shapes, random weights, files
that llama.cpp and the torch engine both run, a seed that fixes every byte, and a size guard."""

import hashlib

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from engine.config import ModelArgs
from engine.gguf_file import GGUFFile
from engine.hooks import HookBus
from engine.llamacpp_reference import cosine, greedy_reference
from engine.torch_engine import TorchEngine
from tests.synthetic import SHAPES, TooBig, shape_of, synthetic_bytes, write_synthetic
from traces.live import MemoryTrace


@pytest.fixture(scope="module")
def one_layer_1b(tmp_path_factory):
    return str(write_synthetic(tmp_path_factory.mktemp("syn") / "1b.gguf", "1b", seed=1, qtype=Q.Q8_0,
                               n_layer=1, n_vocab=1024))


def test_the_file_has_llama_3_2_1b_layer_shapes(one_layer_1b):
    gguf = GGUFFile(one_layer_1b)
    args = ModelArgs.from_metadata(gguf.metadata)
    assert (args.n_embd, args.n_head, args.n_head_kv, args.head_dim, args.n_ff) == (2048, 32, 8, 64, 8192)
    assert gguf.tensors["blk.0.ffn_down.weight"].shape == (8192, 2048)
    assert gguf.tensors["blk.0.attn_k.weight"].shape == (2048, 512)
    assert gguf.tensors["blk.0.attn_q.weight"].type == Q.Q8_0
    assert "output.weight" not in gguf.tensors  # tied, like the real 1B
    data = sum(t.nbytes for t in gguf.tensors.values())
    assert data == synthetic_bytes(shape_of("1b", 1, 1024), Q.Q8_0)
    # no two rows of the tied LM head alike: repeated rows would tie logits
    embd = gguf.tensor_bytes("token_embd.weight").reshape(1024, -1)
    assert len(np.unique(embd, axis=0)) == 1024


def test_llama_cpp_and_the_torch_engine_agree_on_it(one_layer_1b):
    ref = greedy_reference(one_layer_1b, "hello llama", 3)
    bus = HookBus()
    engine = TorchEngine(one_layer_1b, bus=bus, numerics="llamacpp-fast")
    trace = MemoryTrace({})
    bus.add(trace)
    tokens = [r.token for r in engine.generate("hello llama", 3)]
    assert len(tokens) == len(ref.tokens) == 3
    for step, want in enumerate(ref.logits):
        got = next(e for e in trace.events(step) if e.stop == "logits" and e.layer is None).tensors["logits"]
        assert cosine(got, want) > 0.999


def test_a_seed_fixes_every_byte(tmp_path):
    def digest(path):
        return hashlib.sha256(open(path, "rb").read()).hexdigest()

    a = write_synthetic(tmp_path / "a.gguf", "135m", seed=7, n_layer=1, n_vocab=512)
    b = write_synthetic(tmp_path / "b.gguf", "135m", seed=7, n_layer=1, n_vocab=512)
    c = write_synthetic(tmp_path / "c.gguf", "135m", seed=8, n_layer=1, n_vocab=512)
    assert digest(a) == digest(b) != digest(c)


def test_a_file_over_the_limit_is_refused_before_a_byte_is_written(tmp_path):
    path = tmp_path / "8b.gguf"
    with pytest.raises(TooBig, match="GiB"):
        write_synthetic(path, "8b")
    assert not path.exists()
    full = synthetic_bytes(SHAPES["8b"], Q.Q4_0)
    assert 4.0 * 2**30 < full < 4.6 * 2**30  # Llama 3.1 8B at 4.5 bits a weight, norms in f32

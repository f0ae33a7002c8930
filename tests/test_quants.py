"""Our torch dequantizers against gguf-py's numpy reference, bit for bit."""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as reference

from engine.quants import UnsupportedQuant, block_layout, dequantize, supported_types

# Byte offsets of each type's fp16 scale fields, written out here from ggml-common.h
# rather than taken from engine.quants, so a wrong layout there cannot hide.
FP16_FIELDS = {
    T.Q8_0: [0],
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
EXPECTED = [T.F32, T.F16, T.BF16, *FP16_FIELDS]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_blocks(qtype, n_blocks, seed=0):
    """Random block bytes whose fp16 scales are finite (spanning many magnitudes)."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n = n_blocks * block_size
    if qtype == T.F32:
        return (rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)).astype(np.float32).view(np.uint8)
    if qtype == T.F16:
        return rng.standard_normal(n).astype(np.float16).view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF  # exponent all ones would be inf/nan
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for off in FP16_FIELDS[qtype]:
        scale = rng.standard_normal(n_blocks) * 10.0 ** rng.integers(-6, 4, n_blocks)
        raw[:, off : off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def test_all_expected_types_are_supported():
    assert set(EXPECTED) <= set(supported_types())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("qtype", EXPECTED, ids=lambda t: t.name)
def test_matches_reference_bit_exactly(qtype, device):
    block_size, _ = GGML_QUANT_SIZES[qtype]
    shape = (block_size * 3, 40)  # GGUF order: 3 blocks per row, 40 rows
    raw = random_blocks(qtype, 3 * 40, seed=int(qtype))
    want = reference(raw.reshape(40, -1), qtype)  # numpy float32, shape (40, 3*block)
    got = dequantize(raw, qtype, shape, device=device)
    assert got.dtype == torch.float32 and tuple(got.shape) == (40, block_size * 3)
    got = got.cpu().numpy()
    # Compare bit patterns: stricter than ==, it also tells -0.0 from 0.0.
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{qtype.name}: {np.sum(got != want)} values differ"


@pytest.mark.parametrize("qtype", [T.Q4_1, T.Q6_K], ids=lambda t: t.name)
def test_torch_input_and_output_dtype(qtype):
    block_size, _ = GGML_QUANT_SIZES[qtype]
    raw = random_blocks(qtype, 8)
    want = torch.from_numpy(reference(raw.reshape(2, -1), qtype))
    got = dequantize(torch.from_numpy(raw.copy()), qtype, (block_size * 4, 2), dtype=torch.bfloat16)
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, want.to(torch.bfloat16))


def test_three_dimensional_shape_is_reversed():
    raw = random_blocks(T.Q8_0, 2 * 3 * 5)
    got = dequantize(raw, T.Q8_0, (64, 3, 5))
    assert tuple(got.shape) == (5, 3, 64)
    assert np.array_equal(got.reshape(-1, 64).numpy(), reference(raw.reshape(15, -1), T.Q8_0))


def test_unsupported_type_names_type_and_tensor():
    with pytest.raises(UnsupportedQuant, match=r"IQ2_XXS.*'blk\.7\.ffn_up\.weight'"):
        dequantize(np.zeros(66, np.uint8), T.IQ2_XXS, (256,), name="blk.7.ffn_up.weight")
    with pytest.raises(UnsupportedQuant, match=r"250.*'blk\.0\.x'"):
        dequantize(np.zeros(4, np.uint8), 250, (1,), name="blk.0.x")


def test_wrong_byte_count_or_partial_block_is_an_error():
    with pytest.raises(ValueError, match="needs 68 bytes"):
        dequantize(np.zeros(67, np.uint8), T.Q8_0, (64,))
    with pytest.raises(ValueError, match="not whole blocks"):
        dequantize(np.zeros(34, np.uint8), T.Q8_0, (16, 2))


def test_block_layout():
    assert block_layout(T.Q4_K) == {
        "type": "Q4_K",
        "block_size": 256,
        "type_size": 144,
        "bits_per_weight": 4.5,
        "fields": [("d", 2), ("dmin", 2), ("scales", 12), ("qs", 128)],
    }
    assert block_layout(T.Q8_0)["bits_per_weight"] == 8.5
    assert block_layout(T.IQ2_XXS)["fields"] is None  # known type, no decoder

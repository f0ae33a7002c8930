"""The KV cache, paged (vLLM's PagedAttention layout): a pool of fixed-size blocks, a free list, a block table.

Memory is one pool per K and V, shaped [n_layer, n_blocks, block_size, n_head_kv, head_dim].
A sequence owns blocks, not a contiguous stretch: its *block table* lists them in position
order, so position p lives in block `table[p // block_size]` at offset `p % block_size`,
and its *slot* (the row of the pool seen flat, per layer) is `block * block_size + offset`.
Every layer uses the same table; only the pool's layer index differs.

Blocks are handed out lazily by a `BlockAllocator` (a free list) as positions grow, one at a
time, so occupancy rises step by step; `free()` gives the sequence's blocks back. Attention
reads the sequence's keys in position order through its slot index (one `index_select`), which
is kept as a tensor and only extended when a block is added, so a decode step builds nothing.
When the table's blocks happen to lie one after another in the pool (one sequence on a fresh
pool: the engine's case), position order *is* pool order and the keys are returned as a view,
without the copy; bench/kv_cache.py times both ways against the contiguous cache this replaced.

Sliding-window layers (`windows[layer] = n`: a query sees the last n positions) are masked,
not evicted: this cache keeps every position of every layer and the model's attention mask
hides the keys `n` or more positions behind the query. The kv_write event says which
positions the newest query no longer sees. llama.cpp does otherwise (llama-kv-cache-iswa.cpp):
an iSWA model gets two caches, one for the global layers (n_ctx cells) and one for the
sliding layers of only about n_swa + n_ubatch cells (padded to 256); when that one looks for
free cells (find_slot), a cell whose position is masked for its sequence's latest position
(`is_masked_swa(pos_cell, seq_pos_max + 1)`, the same test the attention mask uses) counts as
free and is overwritten; its kv-cells bookkeeping (llama-kv-cells.h: each cell's position and
sequence set, per-sequence position ranges) drops the old position, so the sequence's oldest
cached position moves up. The sliding layers' memory stays bounded as the run grows past the
window, and what fell out of the window is gone; here it stays, greyed out in the view.
"""

from __future__ import annotations

from collections import deque

import torch


class CacheFull(ValueError):
    """No free block is left for the positions being written."""


class BlockAllocator:
    """A free list of block ids: `allocate` takes the next free block, `free` gives blocks back."""

    def __init__(self, n_blocks: int):
        if n_blocks < 1:
            raise ValueError(f"a KV cache needs at least one block, not {n_blocks}")
        self.n_blocks = n_blocks
        self._free = deque(range(n_blocks))  # taken from the left, freed ones return on the right
        self._used: set[int] = set()

    @property
    def n_used(self) -> int:
        return len(self._used)

    @property
    def n_free(self) -> int:
        return len(self._free)

    def allocate(self) -> int:
        if not self._free:
            raise CacheFull(f"KV cache full: all {self.n_blocks} blocks are in use")
        block = self._free.popleft()
        self._used.add(block)
        return block

    def free(self, blocks: list[int]) -> None:
        """Give `blocks` back; a block that is not allocated (freed twice, or never handed out) is an error."""
        stray = [b for b in blocks if b not in self._used]
        if stray or len(set(blocks)) != len(blocks):
            raise ValueError(f"cannot free blocks {stray or blocks}: not allocated, or listed twice")
        self._used.difference_update(blocks)
        self._free.extend(blocks)


class KVCache:
    def __init__(self, n_layer: int, n_ctx: int, n_head_kv: int, head_dim: int, device="cpu",
                 dtype=torch.float32, block_size: int = 16, windows: list[int] | None = None,
                 max_tokens: int = 0):
        """A pool of blocks holding `max_tokens` positions (0: all of `n_ctx`), rounded up to whole blocks.

        `windows`: per layer, 0 = global attention, n = the layer sees the last n positions
        (ModelArgs.sliding_window); none given = every layer global."""
        windows = list(windows) if windows else [0] * n_layer
        if len(windows) != n_layer:
            raise ValueError(f"{len(windows)} sliding windows given for {n_layer} layers")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, not {block_size}")
        capacity = max_tokens or n_ctx
        if not 0 < capacity <= n_ctx:
            raise ValueError(f"a cache of {capacity} tokens does not fit a context of {n_ctx}")
        self.n_ctx = n_ctx
        self.block_size = block_size
        self.windows = windows
        n_blocks = -(-capacity // block_size)
        # Uninitialized: a slot is only ever read after it was written.
        shape = (n_layer, n_blocks, block_size, n_head_kv, head_dim)
        self.k = torch.empty(shape, device=device, dtype=dtype)
        self.v = torch.empty(shape, device=device, dtype=dtype)
        self._k_flat = self.k.view(n_layer, n_blocks * block_size, n_head_kv, head_dim)  # [layer, slot, nkv, hd]
        self._v_flat = self.v.view(n_layer, n_blocks * block_size, n_head_kv, head_dim)
        self.allocator = BlockAllocator(n_blocks)
        self.block_table: list[int] = []  # the sequence's blocks, in position order
        self.n_cached = 0  # positions 0..n_cached hold a token
        self._in_order = True  # every block of the table is the one after its predecessor in the pool
        # The slot of each position the table covers; [:n] is the gather index of n keys.
        self._slot_index = torch.empty(n_blocks * block_size, dtype=torch.long, device=device)
        self._offsets = torch.arange(block_size, dtype=torch.long, device=device)

    def _reserve(self, end: int) -> None:
        """Allocate blocks until the table covers positions 0..end."""
        if end > self.n_ctx:
            raise CacheFull(f"context full: {end} tokens do not fit in a context of {self.n_ctx}")
        bs = self.block_size
        while len(self.block_table) * bs < end:
            if not self.allocator.n_free:
                n = self.allocator.n_blocks
                raise CacheFull(f"KV cache full: position {end - 1} needs a block, and all {n} blocks "
                                f"({n * bs} token slots) are in use")
            block = self.allocator.allocate()
            i = len(self.block_table)
            self._slot_index[i * bs:(i + 1) * bs] = block * bs + self._offsets
            self._in_order = self._in_order and (not self.block_table or block == self.block_table[-1] + 1)
            self.block_table.append(block)

    def slots(self, pos: int, n_tokens: int) -> list[int]:
        """The slot (block * block_size + offset) of positions pos..pos+n_tokens."""
        if pos < 0 or pos + n_tokens > len(self.block_table) * self.block_size:
            raise ValueError(f"positions {pos}..{pos + n_tokens} are not in the block table")
        return self._slot_index[pos:pos + n_tokens].tolist()

    def write(self, layer: int, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [T, n_kv, hd] at positions pos..pos+T; return every cached position 0..pos+T,
        in position order, gathered through the block table: [pos + T, n_kv, hd] each."""
        end = pos + k.shape[0]
        if not 0 <= pos <= self.n_cached:
            raise ValueError(f"write at position {pos} would leave a gap: positions 0..{self.n_cached} are cached")
        self._reserve(end)
        slots = self._slot_index[pos:end]
        keys, values = self._k_flat[layer], self._v_flat[layer]  # (n_slots, nkv, hd)
        keys.index_copy_(0, slots, k.to(keys.dtype))
        values.index_copy_(0, slots, v.to(values.dtype))
        self.n_cached = max(self.n_cached, end)
        if self._in_order:  # the slots of positions 0..end are consecutive: read them in place
            first = self.block_table[0] * self.block_size
            return keys[first:first + end], values[first:first + end]
        index = self._slot_index[:end]
        return keys.index_select(0, index), values.index_select(0, index)

    # -- the static decode step (engine/cuda_graph.py): shapes that never change ----------------

    def make_static(self) -> int:
        """Reserve every block now, in pool order, so a position's slot is the position itself and a
        write can be indexed by a device tensor; zero the pool, so the cells not yet written, which
        the static step reads under its mask, hold zeros (0 * an uninitialized NaN would be NaN).
        Returns the number of cells. Only a fresh cache or one freed again can be made static."""
        if self.block_table or self.allocator.n_used:
            raise ValueError("only an empty KV cache can be made static")
        self._reserve(self.allocator.n_blocks * self.block_size)
        if not self._in_order or self.block_table[0] != 0:
            raise ValueError("a static KV cache needs its blocks in pool order")
        self.k.zero_()
        self.v.zero_()
        return len(self.block_table) * self.block_size

    def write_static(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [T, n_kv, hd] at `positions` (a device tensor, = their slots in a static
        cache); return every cell [n_cells, n_kv, hd]: the same tensors whatever the position."""
        keys, values = self._k_flat[layer], self._v_flat[layer]
        keys.index_copy_(0, positions, k.to(keys.dtype))
        values.index_copy_(0, positions, v.to(values.dtype))
        return keys, values

    def mark_written(self, end: int) -> None:
        """A static step wrote positions up to `end` (the host's count, which the device write cannot update)."""
        self.n_cached = max(self.n_cached, end)

    def free(self) -> None:
        """Give the sequence's blocks back to the allocator; the cache is empty again."""
        self.allocator.free(self.block_table)
        self.block_table = []
        self.n_cached = 0
        self._in_order = True

    def masked(self, layer: int, end: int) -> tuple[int, int]:
        """Positions [start, stop) that the query at position end-1 cannot see on a sliding-window layer."""
        window = self.windows[layer]
        return (0, max(0, end - window)) if window else (0, 0)

    def event(self, layer: int, pos: int, n_tokens: int) -> dict:
        """The kv_write stop's scalars: where this step's tokens went (position, slot, block, offset),
        the block table, occupancy, and on a sliding-window layer what the newest query ignores.

        Small on purpose: per-token lists cover only this step's tokens; the table is one id per
        block; the ignored positions are a range [start, end) (they are masked, not evicted)."""
        end = pos + n_tokens
        slots = self.slots(pos, n_tokens)
        bs = self.block_size
        return {
            "positions": list(range(pos, end)),
            "slots": slots,
            "blocks": [s // bs for s in slots],
            "offsets": [s % bs for s in slots],
            "block_table": list(self.block_table),
            "blocks_used": self.allocator.n_used,
            "blocks_total": self.allocator.n_blocks,
            "n_cached": self.n_cached,
            "n_ctx": self.n_ctx,
            "block_size": bs,
            "window": self.windows[layer],
            "masked": list(self.masked(layer, end)),
        }

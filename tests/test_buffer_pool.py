"""The KV buffer pool (runtime/fused/buffer_pool.py): a freed buffer set's mapping is kept and handed out again for
the next set of exactly its size (resident pages, same memory), bounded by bytes (oldest dropped), nothing kept at
0; a bad bound names the parameter. That a pooled set's stale values are never read is tests/test_prefix_cache.py's
(a scheduler on poisoned pooled buffers answers as a cold one)."""
from __future__ import annotations

import gc

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.fused.buffer_pool import BufferPool
from onnxlm.runtime.fused.kv_buffers import KVBuffers, mapped_buffers

NAMES = ["past_key_values.0.key", "past_key_values.0.value"]


def _address(arrays: dict) -> int:
    return next(iter(arrays.values())).ctypes.data


def test_a_freed_set_is_handed_out_again_for_the_same_size():
    pool = BufferPool(64 << 20)
    a = mapped_buffers(NAMES, (1, 2, 256, 8), np.float32, pool)
    a[NAMES[0]][:] = 5.0
    where = _address(a)
    del a
    gc.collect()
    assert pool.bytes == 2 * 256 * 2 * 8 * 4
    b = mapped_buffers(NAMES, (1, 2, 256, 8), np.float32, pool)  # the same mapping, values as left
    assert _address(b) == where and float(b[NAMES[0]][0, 0, 0, 0]) == 5.0
    assert (pool.reused, pool.fresh, pool.bytes) == (1, 1, 0)
    c = mapped_buffers(NAMES, (1, 2, 512, 8), np.float32, pool)  # another size: a fresh mapping, zeros
    assert _address(c) != where and not c[NAMES[1]].any() and pool.fresh == 2


def test_grown_and_resized_sets_come_from_the_same_pool():
    pool = BufferPool(64 << 20)
    buffers = KVBuffers.fresh(NAMES, 2, 2, 4, 8, pool)
    buffers.arrays[NAMES[0]][:, :, :3] = np.arange(2 * 2 * 3 * 8, dtype=np.float32).reshape(2, 2, 3, 8)
    buffers.ensure(6)  # doubles into a new set; the old one goes back once freed
    gc.collect()
    assert buffers.pool is pool and buffers.capacity == 8 and pool.bytes == 2 * 2 * 2 * 4 * 8 * 4
    buffers.select(np.array([1]), held=3)  # fewer rows: a new set from the pool, the held positions copied
    assert buffers.pool is pool and buffers.batch == 1
    assert np.array_equal(buffers.arrays[NAMES[0]][0, :, :3], np.arange(48, 96, dtype=np.float32).reshape(2, 3, 8))


def test_the_pool_is_bounded_and_keeps_nothing_at_zero():
    size = 2 * 256 * 2 * 8 * 4
    pool = BufferPool(2 * size)
    sets = [mapped_buffers(NAMES, (1, 2, 256, 8), np.float32, pool) for _ in range(3)]
    addresses = [_address(s) for s in sets]
    for i in range(3):  # freed in order: the first one freed is the first dropped
        sets[i] = None
    gc.collect()
    assert pool.bytes == 2 * size and pool.fresh == 3
    again = [mapped_buffers(NAMES, (1, 2, 256, 8), np.float32, pool) for _ in range(3)]
    assert {_address(s) for s in again[:2]} == set(addresses[1:]) and pool.reused == 2 and pool.fresh == 4
    off = BufferPool(0)
    a = mapped_buffers(NAMES, (1, 2, 256, 8), np.float32, off)
    del a
    gc.collect()
    assert off.bytes == 0 and not off._kept
    with pytest.raises(onnxlm.ParameterError, match="max_bytes: got -1"):
        BufferPool(-1)

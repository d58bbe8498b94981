"""In-place row reorder of the fused KV buffers (runtime/fused/kv_buffers.py: reorder_plan, reorder_in_place,
KVBuffers.select), against numpy fancy indexing: every row pattern a beam step can produce (identity, duplicates,
swaps and longer cycles, cycles next to duplicates), with and without ``held``, after the buffers grew, and with
the OrtValues still bound to the reordered memory. Pure numpy + onnxruntime: no export needed."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from onnxlm.runtime.fused.kv_buffers import KVBuffers, reorder_in_place, reorder_plan

NAMES = ["past_key_values.0.key", "past_key_values.0.value"]


def _filled(batch=4, capacity=8, seed=0) -> KVBuffers:
    rng = np.random.default_rng(seed)
    return KVBuffers({n: rng.standard_normal((batch, 2, capacity, 3)).astype(np.float32) for n in NAMES})


def _all_rows(b):  # every map of b rows onto b rows (b ** b of them)
    return [np.array(r, dtype=np.int64) for r in itertools.product(range(b), repeat=b)]


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_every_row_map_equals_fancy_indexing(b):
    rng = np.random.default_rng(b)
    for rows in _all_rows(b):
        a = rng.standard_normal((b, 2, 5, 3)).astype(np.float32)
        want = a[rows]
        reorder_in_place([a], rows)
        np.testing.assert_array_equal(a, want, err_msg=f"rows {rows}")


def test_held_copies_only_the_held_positions():
    rng = np.random.default_rng(1)
    for rows in _all_rows(3):
        a = rng.standard_normal((3, 2, 6, 3)).astype(np.float32)
        before = a.copy()
        reorder_in_place([a], rows, held=4)
        np.testing.assert_array_equal(a[:, :, :4], before[rows, :, :4], err_msg=f"rows {rows}")
        np.testing.assert_array_equal(a[:, :, 4:], before[:, :, 4:], err_msg=f"rows {rows}")


def test_plan_skips_rows_in_place_and_saves_a_row_only_for_cycles():
    assert reorder_plan(np.arange(4)) == []
    assert reorder_plan(np.array([0, 0, 1, 2])) == [(3, 2), (2, 1), (1, 0)]  # a shift: no saved row
    swap = reorder_plan(np.array([1, 0, 2, 3]))
    assert sum(d < 0 for d, _ in swap) == 1 and len(swap) == 3  # a swap: one saved row, two copies


def test_select_same_batch_reorders_in_place_and_the_ort_values_see_it():
    buffers = _filled()
    arrays = dict(buffers.arrays)
    before = {n: a.copy() for n, a in arrays.items()}
    buffers.select(np.array([1, 0, 0, 2]), held=5)
    for n in NAMES:
        assert buffers.arrays[n] is arrays[n]  # same memory: the bound OrtValues stay valid
        np.testing.assert_array_equal(buffers.arrays[n][:, :, :5], before[n][[1, 0, 0, 2], :, :5])
        np.testing.assert_array_equal(buffers.values[n].numpy(), buffers.arrays[n])


def test_identity_rows_change_nothing():
    buffers = _filled()
    before = {n: a.copy() for n, a in buffers.arrays.items()}
    buffers.select(np.arange(4), held=8)
    for n in NAMES:
        np.testing.assert_array_equal(buffers.arrays[n], before[n])


def test_select_after_the_buffers_grew():
    buffers = _filled(capacity=4)
    before = {n: a.copy() for n, a in buffers.arrays.items()}
    buffers.ensure(6)  # doubles: new arrays and OrtValues
    assert buffers.capacity == 8
    buffers.select(np.array([3, 3, 0, 1]), held=4)
    for n in NAMES:
        np.testing.assert_array_equal(buffers.arrays[n][:, :, :4], before[n][[3, 3, 0, 1]])
        assert not buffers.arrays[n][:, :, 4:].any()
        np.testing.assert_array_equal(buffers.values[n].numpy(), buffers.arrays[n])


def test_select_to_another_batch_size_makes_new_buffers():
    buffers = _filled()
    before = {n: a.copy() for n, a in buffers.arrays.items()}
    buffers.select(np.array([2, 2, 0, 1, 3, 3]), held=3)
    for n in NAMES:
        got = buffers.arrays[n]
        assert got.shape == (6, 2, 8, 3)
        np.testing.assert_array_equal(got[:, :, :3], before[n][[2, 2, 0, 1, 3, 3], :, :3])
        assert not got[:, :, 3:].any()
    buffers.select(np.array([5, 0]))  # fewer rows, all positions
    np.testing.assert_array_equal(buffers.arrays[NAMES[0]][:, :, :3], before[NAMES[0]][[3, 2], :, :3])

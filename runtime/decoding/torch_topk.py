"""``torch.topk(x, k)`` (largest, sorted) on the CPU, in numpy, ties included: beam search keeps what it keeps.

torch's CPU kernel (aten/src/ATen/native/TopKImpl.h) selects with the C++ standard library: ``std::partial_sort``
of the first k where ``k * 64 <= n``, else ``std::nth_element`` at k - 1 followed by ``std::sort`` of the first
k - 1, with the comparator "NaN first, then greater". Values that differ come out in one order whatever the
algorithm; equal values (a forced token's 0 beside another's, ``-inf`` rows, transformers' ``-1e9`` fillers, which
float32 rounds to one value) come out in the order the algorithm leaves them. That order is libstdc++'s (GCC's
standard library, which torch's Linux wheels use): its heap select and heap sort, its introselect (median of three,
unguarded partition, insertion sort below 4) and its introsort (below 16, insertion sort). This module replays
those steps on indices, so its order is torch's on Linux; torch built on libc++ (macOS) may order ties otherwise.

A row whose k + 1 largest values are all distinct (and without NaN) has one answer, the sorted top k, taken with
numpy alone; only rows with a tie there replay the algorithm in Python (a heap select that skips, with numpy, the
entries no larger than the heap's least).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["torch_topk"]

_SORT_THRESHOLD = 16  # libstdc++'s _S_threshold: introsort leaves ranges this short to insertion sort
_CHUNK = 1024  # entries a heap select filters with numpy at once


def torch_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """x [r, n] float -> (values [r, k], indices [r, k] int64): ``torch.topk(x, k, dim=-1)`` on the CPU."""
    idx = np.empty((x.shape[0], k), dtype=np.int64)
    for r in range(x.shape[0]):
        idx[r] = _row(x[r], k)
    return np.take_along_axis(x, idx, axis=-1), idx


def _row(a: np.ndarray, k: int) -> np.ndarray:
    # [n] float -> [k] int64: the indices torch.topk gives
    n = a.shape[0]
    if k == 0:
        return np.empty(0, np.int64)
    untied = _untied(a, k)
    if untied is not None:
        return untied
    vals = a.tolist()
    comp = _greater(vals)
    if k * 64 <= n:
        return np.asarray(_partial_sort_top(a, vals, k, comp), np.int64)
    h = list(range(n))
    _introselect(h, 0, k - 1, n, 2 * _lg(n), comp)  # std::nth_element(first, first + k - 1, last)
    _sort(h, 0, k - 1, comp)
    return np.asarray(h[:k], np.int64)


def _untied(a: np.ndarray, k: int) -> np.ndarray | None:
    # [n] float -> [k] int64 the sorted top k when the k + 1 largest are distinct and not NaN (one answer), else None
    m = min(k + 1, a.shape[0])
    cand = _candidates(a, m)
    if cand is None:
        return None
    order = cand[np.argsort(-a[cand], kind="stable")[:m]]
    v = a[order]
    if (v[:-1] == v[1:]).any():
        return None
    return order[:k].astype(np.int64)


def _candidates(a: np.ndarray, m: int) -> np.ndarray | None:
    """[n] float -> the indices of every entry >= some t <= the m-th largest (a superset of the m largest), or None
    when ``a`` holds NaN. t: the m-th largest of every 16th entry (a subset's m-th largest is never above the
    whole's), n/16 work, leaving ~16m candidates on typical scores; the exact m-th largest where that leaves too
    many (ties, -inf rows)."""
    n = a.shape[0]
    if np.isnan(a).any():
        return None
    if n <= 4096 or 16 * m >= n:
        return np.arange(n)
    sub = a[::16]
    t = np.partition(sub, len(sub) - m)[len(sub) - m]
    cand = np.flatnonzero(a >= t)
    if not m <= len(cand) <= max(64 * m, 4096):
        cand = np.flatnonzero(a >= np.partition(a, n - m)[n - m])
    return cand


def _greater(vals: list):
    """torch's comparator for ``largest``: x before y when x is NaN and y is not, or x > y (on indices)."""
    def comp(i: int, j: int) -> bool:
        x, y = vals[i], vals[j]
        return x > y or (x != x and y == y)
    return comp


def _lg(n: int) -> int:
    return int(math.log2(n)) if n > 0 else 0  # std::__lg: floor(log2(n))


# ---------------------------------------------------------------- libstdc++'s heap (bits/stl_heap.h), on indices
def _push_heap(h: list, first: int, hole: int, top: int, value: int, comp) -> None:
    parent = (hole - 1) // 2
    while hole > top and comp(h[first + parent], value):
        h[first + hole] = h[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    h[first + hole] = value


def _adjust_heap(h: list, first: int, hole: int, length: int, value: int, comp) -> None:
    top, child = hole, hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if comp(h[first + child], h[first + child - 1]):
            child -= 1
        h[first + hole] = h[first + child]
        hole = child
    if length & 1 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        h[first + hole] = h[first + child - 1]
        hole = child - 1
    _push_heap(h, first, hole, top, value, comp)


def _make_heap(h: list, first: int, last: int, comp) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(h, first, parent, length, h[first + parent], comp)
        if parent == 0:
            return
        parent -= 1


def _pop_heap(h: list, first: int, last: int, result: int, comp) -> None:
    value = h[result]
    h[result] = h[first]
    _adjust_heap(h, first, 0, last - first, value, comp)


def _heap_select(h: list, first: int, middle: int, last: int, comp) -> None:
    _make_heap(h, first, middle, comp)
    for i in range(middle, last):
        if comp(h[i], h[first]):
            _pop_heap(h, first, middle, i, comp)


def _sort_heap(h: list, first: int, last: int, comp) -> None:
    while last - first > 1:
        last -= 1
        _pop_heap(h, first, last, last, comp)


def _partial_sort_top(a: np.ndarray, vals: list, k: int, comp) -> list:
    """std::partial_sort(first, first + k, last) of the indices 0..n-1 -> the first k. The heap select's scan
    leaves the entries past k in place but the one it swaps out, which is never read again, so only the heap is
    kept; an entry enters only when greater than the heap's least, which only grows: numpy filters each chunk."""
    h = list(range(k))
    _make_heap(h, 0, k, comp)
    nan = np.isnan(a)
    for start in range(k, a.shape[0], _CHUNK):
        least = vals[h[0]]
        chunk = a[start:start + _CHUNK]
        if least != least:  # a NaN is least: nothing is greater
            break
        hits = np.flatnonzero((chunk > least) | nan[start:start + _CHUNK])
        for j in hits.tolist():
            if comp(start + j, h[0]):
                _adjust_heap(h, 0, 0, k, start + j, comp)  # __pop_heap's heap side
    _sort_heap(h, 0, k, comp)
    return h


# ---------------------------------------------------------------- libstdc++'s introselect and introsort (stl_algo.h)
def _swap(h: list, i: int, j: int) -> None:
    h[i], h[j] = h[j], h[i]


def _move_median_to_first(h: list, result: int, a: int, b: int, c: int, comp) -> None:
    if comp(h[a], h[b]):
        if comp(h[b], h[c]):
            _swap(h, result, b)
        elif comp(h[a], h[c]):
            _swap(h, result, c)
        else:
            _swap(h, result, a)
    elif comp(h[a], h[c]):
        _swap(h, result, a)
    elif comp(h[b], h[c]):
        _swap(h, result, c)
    else:
        _swap(h, result, b)


def _unguarded_partition(h: list, first: int, last: int, pivot: int, comp) -> int:
    while True:
        while comp(h[first], h[pivot]):
            first += 1
        last -= 1
        while comp(h[pivot], h[last]):
            last -= 1
        if not first < last:
            return first
        _swap(h, first, last)
        first += 1


def _unguarded_partition_pivot(h: list, first: int, last: int, comp) -> int:
    mid = first + (last - first) // 2
    _move_median_to_first(h, first, first + 1, mid, last - 1, comp)
    return _unguarded_partition(h, first + 1, last, first, comp)


def _unguarded_linear_insert(h: list, last: int, comp) -> None:
    val = h[last]
    nxt = last - 1
    while comp(val, h[nxt]):
        h[last] = h[nxt]
        last = nxt
        nxt -= 1
    h[last] = val


def _insertion_sort(h: list, first: int, last: int, comp) -> None:
    if first == last:
        return
    for i in range(first + 1, last):
        if comp(h[i], h[first]):
            val = h[i]
            h[first + 1:i + 1] = h[first:i]
            h[first] = val
        else:
            _unguarded_linear_insert(h, i, comp)


def _introselect(h: list, first: int, nth: int, last: int, depth: int, comp) -> None:
    while last - first > 3:
        if depth == 0:
            _heap_select(h, first, nth + 1, last, comp)
            _swap(h, first, nth)
            return
        depth -= 1
        cut = _unguarded_partition_pivot(h, first, last, comp)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(h, first, last, comp)


def _introsort_loop(h: list, first: int, last: int, depth: int, comp) -> None:
    while last - first > _SORT_THRESHOLD:
        if depth == 0:
            _heap_select(h, first, last, last, comp)  # std::__partial_sort(first, last, last)
            _sort_heap(h, first, last, comp)
            return
        depth -= 1
        cut = _unguarded_partition_pivot(h, first, last, comp)
        _introsort_loop(h, cut, last, depth, comp)
        last = cut


def _sort(h: list, first: int, last: int, comp) -> None:
    if last - first <= 0:
        return
    _introsort_loop(h, first, last, 2 * _lg(last - first), comp)
    if last - first > _SORT_THRESHOLD:
        _insertion_sort(h, first, first + _SORT_THRESHOLD, comp)
        for i in range(first + _SORT_THRESHOLD, last):
            _unguarded_linear_insert(h, i, comp)
    else:
        _insertion_sort(h, first, last, comp)

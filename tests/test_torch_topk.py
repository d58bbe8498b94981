"""runtime/decoding/torch_topk.py against torch.topk itself (the CPU kernel beam search's top-k mirrors): the same
indices and values on arrays full of exact ties, -inf, -1e9 placeholders and NaN, on both of torch's paths
(``std::partial_sort`` where k * 64 <= n, ``std::nth_element`` + ``std::sort`` below), k from 1 to n."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from onnxlm.runtime.decoding.torch_topk import torch_topk

torch = pytest.importorskip("torch")
if not sys.platform.startswith("linux"):  # the order of ties is libstdc++'s (torch's Linux wheels)
    pytestmark = pytest.mark.skip(reason="torch's tie order is its C++ library's; torch_topk replays libstdc++'s")


def _want(x: np.ndarray, k: int):
    v, i = torch.topk(torch.from_numpy(x), k)
    return v.numpy(), i.numpy()


def _check(x: np.ndarray, k: int, what: str) -> None:
    want_v, want_i = _want(x, k)
    got_v, got_i = torch_topk(x, k)
    np.testing.assert_array_equal(got_i, want_i, err_msg=f"{what}: n={x.shape[-1]} k={k}")
    np.testing.assert_array_equal(got_v, want_v, err_msg=what)
    assert got_i.dtype == np.int64


def _rows(rng, n: int) -> dict:
    """[2, n] float32 score arrays of several kinds."""
    plain = rng.standard_normal((2, n)).astype(np.float32)
    few = np.full((2, n), -np.inf, np.float32)
    few[:, rng.integers(0, n, 3)] = rng.integers(0, 2, 3)
    placeholder = (np.float32(-1e9) + rng.standard_normal((2, n)) * 10).astype(np.float32)  # rounds to few values
    placeholder[0, : n // 3] = rng.standard_normal(n // 3)
    nan = plain.copy()
    nan[:, rng.random(n) < 0.1] = np.nan
    return {"plain": plain, "ties": rng.integers(0, 4, (2, n)).astype(np.float32), "few-finite": few,
            "placeholders": placeholder, "nan": nan, "all-equal": np.zeros((2, n), np.float32),
            "rounded": np.round(rng.standard_normal((2, n)), 1).astype(np.float32)}


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 16, 17, 40, 63, 64, 128, 300, 1040, 4 * 5000 + 7])
def test_the_same_indices_as_torch_topk(n):
    rng = np.random.default_rng(n)
    ks = sorted(k for k in {1, 2, 3, 8, 12, 40, n // 64 or 1, max(n // 64 - 1, 1), n if n <= 300 else 1} if k <= n)
    for name, x in _rows(rng, n).items():
        for k in ks:
            _check(x, k, name)


def test_many_small_random_tie_rows():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n = int(rng.integers(1, 200))
        k = int(rng.integers(1, n + 1))
        x = rng.integers(-2, 3, (1, n)).astype(np.float32)
        x[rng.random((1, n)) < 0.2] = -np.inf
        _check(x, k, "small")


def test_zero_k():
    v, i = torch_topk(np.zeros((2, 5), np.float32), 0)
    assert v.shape == i.shape == (2, 0)

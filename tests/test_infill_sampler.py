"""llama.cpp's infill sampler (runtime/llama_samplers.InfillProcessor) against a line-for-line port of
``llama_sampler_infill_apply`` (its O(n^2) prefix loop, float32 probabilities): the same tokens kept, on random
candidate sets over a vocabulary full of common prefixes, EOG-heavy and text-heavy, and after top-k."""
import numpy as np
import pytest

from onnxlm.runtime.errors import ParameterError
from onnxlm.runtime.llama_samplers import InfillProcessor, InfillVocab, sampler_chain

EOG, EOT = {0, 1}, 1
PIECES = [b"", b"", b"a", b"ab", b"abc", b"abd", b"b", b"ba", b" ", b" x", b" xy", b"xy", b"x", b"\xc3", b"\xc3\xa9",
          b"c", b"cd", b"cde", b"d", b"de"]


def reference(row: np.ndarray, pieces, eog, eot) -> set:
    """llama.cpp's infill step on the finite entries of row [V] -> the ids it keeps (logit not -inf afterwards)."""
    cand = [(int(i), float(row[i])) for i in np.flatnonzero(np.isfinite(row))]
    cand.sort(key=lambda c: -c[1])                                   # llama_sampler_softmax_impl: sorted, p
    ids = [c[0] for c in cand]
    logit = np.array([c[1] for c in cand], np.float32)
    p = np.exp(logit - logit.max()).astype(np.float32)
    p /= p.sum()
    is_eog = [i in eog for i in ids]
    p_eog = np.float32(sum(p[k] for k in range(len(ids)) if is_eog[k]))
    p_txt = np.float32(sum(p[k] for k in range(len(ids)) if not is_eog[k]))
    if 3 * p_eog * len(ids) > p_txt:
        return {i for i, e in zip(ids, is_eog) if e}
    dead = [False] * len(ids)
    for i0 in range(len(ids)):
        for i1 in range(len(ids)):
            if dead[i0]:
                break
            if i0 == i1 or dead[i1]:
                continue
            a, b = pieces[ids[i0]], pieces[ids[i1]]
            if len(a) > 0 and len(a) <= len(b) and b[:len(a)] == a:
                dst, src = (i1, i0) if p[i1] > p[i0] else (i0, i1)
                p[dst] += p[src]
                p[src] = 0
                dead[src] = True
    kept = [k for k in range(len(ids)) if not (p[k] < 0.2 and not is_eog[k])]
    n_non_eog = sum(1 for k in kept if not is_eog[k])
    if n_non_eog == 0:
        return {eot}
    p_sum = sum(p[k] for k in kept)
    q = {k: p[k] / p_sum for k in kept}
    kept = [k for k in kept if not (q[k] < 1.0 / (n_non_eog + 1) and not is_eog[k])]
    return {ids[k] for k in kept if not dead[k]}


@pytest.mark.parametrize("seed", range(40))
def test_infill_keeps_what_llama_cpp_keeps(seed):
    rng = np.random.default_rng(seed)
    v = len(PIECES)
    proc = InfillProcessor(InfillVocab(piece=lambda i: PIECES[i], eog=frozenset(EOG), eot=EOT))
    rows = rng.normal(0, 1 + seed % 4, (3, v)).astype(np.float32)
    rows[0, :2] -= 6                                                 # text-heavy
    rows[1, :2] += 3                                                 # EOG-heavy
    rows[2, rng.choice(v, 8, replace=False)] = -np.inf               # after an earlier step (top-k's -inf)
    out = proc(np.zeros((3, 1), np.int64), rows)
    for row, got in zip(rows, out):
        kept = set(np.flatnonzero(np.isfinite(got)).tolist())
        assert kept == reference(row, PIECES, EOG, EOT), seed
        if kept == {EOT} and got[EOT] == 1.0:                        # the end-of-turn fallback: score 1
            continue
        np.testing.assert_array_equal(got[list(kept)], row[list(kept)])  # kept tokens keep their scores


def test_nothing_but_the_end_of_turn_when_no_text_is_likely_enough():
    """Five unrelated texts of equal weight and no EOG candidate: each under 0.2 -> the end-of-turn token alone."""
    pieces = [b"", b"", b"q", b"r", b"s", b"t", b"u", b"v"]
    row = np.full(8, -np.inf, np.float32)
    row[2:8] = 0.0
    got = InfillProcessor(InfillVocab(piece=lambda i: pieces[i], eog=frozenset({0, 1}), eot=1))(None, row[None])[0]
    assert np.flatnonzero(np.isfinite(got)).tolist() == [1] and got[1] == 1.0


def test_the_chain_needs_the_vocabulary_for_infill():
    with pytest.raises(ParameterError) as err:
        sampler_chain(["top_k", "infill"])
    assert err.value.parameter == "samplers"
    vocab = InfillVocab(piece=lambda i: b"", eog=frozenset({0}), eot=0)
    assert [type(p).__name__ for p in sampler_chain(["top_k", "top_p", "infill"], vocab=vocab)] == [
        "TopKWarper", "TopPWarper", "InfillProcessor"]

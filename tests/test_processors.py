"""onnxlm.runtime.processors / generation_config against transformers' torch implementations (the reference)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as tlp  # noqa: E402

from onnxlm.runtime import processors as P  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402
from onnxlm.runtime.generation_config import GenerationConfig  # noqa: E402

CASES = [(1, 50, 0), (3, 117, 1), (4, 300, 2)]  # (batch, vocab, seed)


def make_inputs(b, v, seed, t=12, id_range=8):
    """ids [b, t] int64 drawn from a small range (so tokens and n-grams repeat), scores [b, V] float32."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, min(id_range, v), size=(b, t)).astype(np.int64)
    scores = (rng.standard_normal((b, v)) * 3).astype(np.float32)
    return ids, scores


def assert_same(ours, ref):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else np.asarray(ref)
    assert ours.dtype == np.float32
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref))
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(ours[fin], ref[fin], rtol=1e-5, atol=1e-5)


def run_both(ours, theirs, ids, scores):
    before = scores.copy()
    out = ours(ids, scores)
    np.testing.assert_array_equal(scores, before)  # inputs are not modified
    ref = theirs(torch.from_numpy(ids.copy()), torch.from_numpy(scores.copy()))
    assert_same(out, ref)
    return out


# ---------------------------------------------------------------------------------------------- single processors
@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("temperature", [0.3, 1.7])
def test_temperature(b, v, seed, temperature):
    ids, s = make_inputs(b, v, seed)
    run_both(P.TemperatureWarper(temperature), tlp.TemperatureLogitsWarper(temperature), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("k,keep", [(1, 1), (5, 1), (10, 3), (2, 4), (1000, 1)])
def test_top_k(b, v, seed, k, keep):
    ids, s = make_inputs(b, v, seed)
    run_both(P.TopKWarper(k, min_tokens_to_keep=keep), tlp.TopKLogitsWarper(k, min_tokens_to_keep=keep), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("p,keep", [(0.05, 1), (0.5, 1), (0.9, 1), (0.95, 3), (1.0, 1)])
def test_top_p(b, v, seed, p, keep):
    ids, s = make_inputs(b, v, seed)
    run_both(P.TopPWarper(p, min_tokens_to_keep=keep), tlp.TopPLogitsWarper(p, min_tokens_to_keep=keep), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("p,keep", [(0.0, 1), (0.05, 1), (0.2, 2), (0.7, 1), (1.0, 1)])
def test_min_p(b, v, seed, p, keep):
    ids, s = make_inputs(b, v, seed)
    run_both(P.MinPWarper(p, min_tokens_to_keep=keep), tlp.MinPLogitsWarper(p, min_tokens_to_keep=keep), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("mass,keep", [(0.2, 1), (0.5, 2), (0.9, 1), (0.99, 1)])
def test_typical_p(b, v, seed, mass, keep):
    ids, s = make_inputs(b, v, seed)
    run_both(P.TypicalWarper(mass, min_tokens_to_keep=keep), tlp.TypicalLogitsWarper(mass, min_tokens_to_keep=keep),
             ids, s)


def _tie_free_rows(rows: int, vocab: int, seed: int) -> np.ndarray:
    """[rows, vocab] float32 logits (std 2) with no two equal values in a row: torch.sort is not stable, so the
    order of equal logits (and which of them top-p drops at the boundary) is arbitrary in transformers."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, vocab)) * 2).astype(np.float32)
    for r in range(rows):
        while True:
            values, first, counts = np.unique(x[r], return_index=True, return_counts=True)
            if (counts == 1).all():
                break
            dup = np.isin(x[r], values[counts > 1])
            dup[first[counts > 1]] = False  # keep one of each tie, move the others
            x[r, dup] += (rng.standard_normal(int(dup.sum())) * 1e-3).astype(np.float32)
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_p_gpt2_sized_vocab_has_no_boundary_mismatch(seed):
    """100 rows of V=50257: the kept set equals transformers' in every row but those where torch's own running sum
    lies within 1e-7 (about one float32 step) of the 1 - top_p boundary: there the cut follows the rounding of torch's
    float32 softmax, whose sum runs in the order of the CPU's vector width (on an AVX-512 machine all 300 rows were
    equal; on an AVX2-only one, row 30 of seed 2 read 0.10000001 in torch and 0.09999999 here). A float32 running sum
    (what onnxlm did) drifted by ~1e-5 and kept a different token in 4 of these 300 rows; torch accumulates in
    double."""
    x = _tie_free_rows(100, 50257, seed)
    ours = np.isfinite(P.TopPWarper(0.9)(None, x))
    want = np.isfinite(tlp.TopPLogitsWarper(0.9)(None, torch.tensor(x)).numpy())
    torch_cum = torch.sort(torch.tensor(x)).values.softmax(-1).cumsum(-1).numpy()
    rows, cut = np.arange(len(x)), (torch_cum <= np.float32(0.1)).sum(1)  # tokens torch removes
    near = np.abs(torch_cum[rows, cut - 1] - 0.1) <= 1e-7
    near |= np.abs(torch_cum[rows, np.minimum(cut, x.shape[1] - 1)] - 0.1) <= 1e-7
    differ = (ours != want).any(axis=1)
    assert near.sum() <= 5 and not (differ & ~near).any(), np.nonzero(differ & ~near)[0]


def test_typical_p_cumulative_mass_like_torch():
    """Typical-p's cut (``last_ind``: how many sorted tokens stay below the mass) equals transformers' on 100 rows
    of V=50257 wherever torch's own running sum is more than 2e-6 from the mass, given the same order of the
    shifted scores. torch.sort orders ties among those scores arbitrarily, so the order is taken from torch; and
    within 2e-6 of the mass the cut is decided by the rounding of torch's float32 softmax normaliser (a vectorised
    sum, off by up to ~1e-6 relative), which no other summation order reproduces. The running sum moves by only
    ~5e-6 per token near 0.9, so about a third of these rows fall in that band: typical-p over a GPT-2-sized
    vocabulary agrees with transformers only up to that rounding. A float32 running sum (what onnxlm
    did) was off by far more and moved the cut outside the band too."""
    x = _tie_free_rows(100, 50257, 3)
    t = torch.tensor(x)
    normalized = torch.log_softmax(t, dim=-1)
    ent = -(normalized * normalized.exp()).nansum(-1, keepdim=True)
    _, order = torch.sort(torch.abs(-normalized - ent), descending=False)
    torch_cum = t.gather(-1, order).softmax(-1).cumsum(-1).numpy()
    want = (torch_cum < 0.9).sum(1)
    got = (P._cumsum_like_torch(P.softmax(np.take_along_axis(x, order.numpy(), axis=1))) < np.float32(0.9)).sum(1)
    rows = np.arange(len(x))
    near = np.abs(torch_cum[rows, np.minimum(want, x.shape[1] - 1)] - 0.9) <= 2e-6
    near |= np.abs(torch_cum[rows, np.maximum(want - 1, 0)] - 0.9) <= 2e-6
    assert near.sum() <= 50
    np.testing.assert_array_equal(got[~near], want[~near])


def test_typical_p_with_masked_tokens():
    ids, s = make_inputs(3, 60, 7)
    s[:, ::3] = -np.inf
    run_both(P.TypicalWarper(0.8), tlp.TypicalLogitsWarper(0.8), ids, s)
    run_both(P.TopPWarper(0.8), tlp.TopPLogitsWarper(0.8), ids, s)
    run_both(P.MinPWarper(0.1), tlp.MinPLogitsWarper(0.1), ids, s)
    run_both(P.TopKWarper(7), tlp.TopKLogitsWarper(7), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty(b, v, seed, penalty):
    ids, s = make_inputs(b, v, seed, id_range=v)  # wide range as well as repeats
    ids[:, -4:] = ids[:, :4]
    out = run_both(P.RepetitionPenaltyProcessor(penalty), tlp.RepetitionPenaltyLogitsProcessor(penalty), ids, s)
    assert not np.array_equal(out, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("t", [1, 2, 3, 12])
def test_no_repeat_ngram(b, v, seed, n, t):
    ids, s = make_inputs(b, v, seed, t=t, id_range=4)
    run_both(P.NoRepeatNGramProcessor(n), tlp.NoRepeatNGramLogitsProcessor(n), ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("eos", [None, 3, [3, 9]])
def test_bad_words(b, v, seed, eos):
    ids, s = make_inputs(b, v, seed, id_range=5)
    ids[0, -2:] = [1, 2]  # row 0 ends with the prefix of [1, 2, 7]
    if b > 1:
        ids[-1, -1] = 4  # last row ends with the prefix of [4, 11]
    bad = [[3], [10], [1, 2, 7], [4, 11], [9], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]
    teos = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else eos)
    out = run_both(P.NoBadWordsProcessor(bad, eos), tlp.NoBadWordsLogitsProcessor(bad, teos), ids, s)
    assert np.isneginf(out[0, 7]) and (b == 1 or np.isneginf(out[-1, 11]))


def test_bad_words_out_of_vocab():
    ids, s = make_inputs(2, 50, 0)
    with pytest.raises(ParameterError, match="bad_words_ids.*< 50"):
        P.NoBadWordsProcessor([[3], [60]])(ids, s)


@pytest.mark.parametrize("b,v,seed", CASES)
def test_suppress_tokens(b, v, seed):
    ids, s = make_inputs(b, v, seed)
    toks = [0, 5, 17, 49, 1000]  # an id beyond the vocabulary is ignored, like transformers
    run_both(P.SuppressTokensProcessor(toks), tlp.SuppressTokensLogitsProcessor(toks), ids, s)
    for t in (11, 12, 13):
        run_both(P.SuppressTokensAtBeginProcessor(toks, 12), tlp.SuppressTokensAtBeginLogitsProcessor(toks, 12),
                 ids[:, :t] if t <= 12 else np.concatenate([ids, ids[:, :1]], 1), s)


@pytest.mark.parametrize("b,v,seed", CASES)
@pytest.mark.parametrize("eos", [2, [2, 7]])
def test_min_length_and_min_new_tokens(b, v, seed, eos):
    ids, s = make_inputs(b, v, seed, t=10)
    teos = torch.tensor([eos] if isinstance(eos, int) else eos)
    for t in (4, 5, 6, 10):
        run_both(P.MinLengthProcessor(6, eos), tlp.MinLengthLogitsProcessor(6, teos), ids[:, :t], s)
        run_both(P.MinNewTokensLengthProcessor(3, 2, eos), tlp.MinNewTokensLengthLogitsProcessor(3, 2, teos),
                 ids[:, :t], s)
    out = P.MinLengthProcessor(6, eos)(ids[:, :4], s)
    assert np.isneginf(out[:, 2]).all()


@pytest.mark.parametrize("b,v,seed", CASES)
def test_forced_bos_eos(b, v, seed):
    ids, s = make_inputs(b, v, seed, t=6)
    for t in (1, 2, 4, 5, 6):
        run_both(P.ForcedBOSProcessor(4), tlp.ForcedBOSTokenLogitsProcessor(4), ids[:, :t], s)
        run_both(P.ForcedEOSProcessor(6, [1, 3]), tlp.ForcedEOSTokenLogitsProcessor(6, [1, 3]), ids[:, :t], s)
        run_both(P.ForcedEOSProcessor(6, 2), tlp.ForcedEOSTokenLogitsProcessor(6, 2), ids[:, :t], s)


def test_inf_nan_removal():
    ids, s = make_inputs(2, 20, 0)
    s[0, 1], s[0, 2], s[1, 3] = np.nan, np.inf, -np.inf
    out = P.InfNanRemoveProcessor()(ids, s)
    ref = tlp.InfNanRemoveLogitsProcessor()(torch.from_numpy(ids), torch.from_numpy(s)).numpy()
    np.testing.assert_array_equal(out, ref)


# -------------------------------------------------------------------------------- full list vs _get_logits_processor
@pytest.fixture(scope="module")
def tiny_gpt2():
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=120, n_positions=64)
    return transformers.GPT2LMHeadModel(cfg).eval()


NAME_MAP = {
    "SequenceBiasProcessor": "SequenceBiasLogitsProcessor",
    "RepetitionPenaltyProcessor": "RepetitionPenaltyLogitsProcessor",
    "NoRepeatNGramProcessor": "NoRepeatNGramLogitsProcessor",
    "NoBadWordsProcessor": "NoBadWordsLogitsProcessor",
    "MinLengthProcessor": "MinLengthLogitsProcessor",
    "MinNewTokensLengthProcessor": "MinNewTokensLengthLogitsProcessor",
    "ForcedBOSProcessor": "ForcedBOSTokenLogitsProcessor",
    "ForcedEOSProcessor": "ForcedEOSTokenLogitsProcessor",
    "SuppressTokensProcessor": "SuppressTokensLogitsProcessor",
    "SuppressTokensAtBeginProcessor": "SuppressTokensAtBeginLogitsProcessor",
    "TemperatureWarper": "TemperatureLogitsWarper",
    "TopKWarper": "TopKLogitsWarper",
    "TopPWarper": "TopPLogitsWarper",
    "MinPWarper": "MinPLogitsWarper",
    "TypicalWarper": "TypicalLogitsWarper",
}

COMBOS = [
    dict(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, no_repeat_ngram_size=2,
         bad_words_ids=[[5], [1, 2, 7], [3]], eos_token_id=3, min_new_tokens=3, max_new_tokens=8),
    dict(do_sample=True, temperature=1.0, top_k=0, min_p=0.05, typical_p=0.9, suppress_tokens=[8, 9],
         begin_suppress_tokens=[10, 11], eos_token_id=[3, 4], min_length=14, forced_eos_token_id=4,
         max_new_tokens=6),
    dict(do_sample=True, num_beams=3, top_k=2, top_p=0.5, eos_token_id=[3, 4], temperature=1.5,
         forced_bos_token_id=6, max_new_tokens=5),
    dict(do_sample=True, num_beams=2, top_k=1, eos_token_id=None, max_length=16),
    dict(do_sample=False, temperature=0.5, top_k=3, repetition_penalty=0.8, no_repeat_ngram_size=3,
         eos_token_id=2, min_new_tokens=2, max_new_tokens=4, forced_eos_token_id=2),
    dict(do_sample=True, top_k=0, sequence_bias={(5,): 3.0, (1, 2): -2.5, (9,): float("-inf"), (2, 7): 1.5},
         repetition_penalty=1.3, eos_token_id=3, max_new_tokens=6),
    dict(),
]


def reference_processors(model, params, input_length):
    """transformers' list, with the config prepared the way ``generate`` prepares it."""
    ours = GenerationConfig().replace(**params)
    min_length, max_length = ours.lengths(input_length, max_positions=model.config.n_positions)
    tc = transformers.GenerationConfig(**params)
    tc.max_length, tc.min_length = max_length, min_length
    eos = ours.eos_token_ids
    tc._eos_token_tensor = torch.tensor(eos) if eos else None
    return model._get_logits_processor(generation_config=tc, input_ids_seq_length=input_length,
                                       encoder_input_ids=torch.zeros((1, input_length), dtype=torch.long),
                                       device="cpu")


@pytest.mark.parametrize("params", COMBOS)
@pytest.mark.parametrize("b,seed", [(1, 0), (4, 1)])
def test_build_processors_matches_transformers(tiny_gpt2, params, b, seed):
    input_length = 9 if params.get("forced_bos_token_id") is None else 1
    ref_list = reference_processors(tiny_gpt2, params, input_length)
    config = GenerationConfig().replace(**params)
    ours = P.build_processors(config, input_length=input_length, vocab_size=120)
    assert [NAME_MAP[type(p).__name__] for p in ours] == [type(p).__name__ for p in ref_list]
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 12, size=(b, input_length)).astype(np.int64)
    ids[0, -2:] = [1, 2] if input_length >= 2 else ids[0, -2:]
    for _step in range(8):  # walk through the steps so length-dependent processors switch on and off
        s = (rng.standard_normal((b, 120)) * 2).astype(np.float32)
        out = run_both(ours, ref_list, ids, s)
        tok = np.where(np.isfinite(out).any(1), np.argmax(out, axis=1), 0)
        ids = np.concatenate([ids, tok[:, None].astype(np.int64)], axis=1)


def test_build_processors_order_documented():
    config = GenerationConfig(do_sample=True, temperature=0.5, top_k=5, top_p=0.9, min_p=0.1, typical_p=0.9,
                              repetition_penalty=1.2, no_repeat_ngram_size=2, bad_words_ids=[[1]], eos_token_id=2,
                              min_length=3, min_new_tokens=1, forced_bos_token_id=0, forced_eos_token_id=2,
                              suppress_tokens=[4], begin_suppress_tokens=[5])
    names = [type(p).__name__ for p in P.build_processors(config, input_length=3, max_length=10)]
    assert names == ["RepetitionPenaltyProcessor", "NoRepeatNGramProcessor", "NoBadWordsProcessor",
                     "MinLengthProcessor", "MinNewTokensLengthProcessor", "ForcedBOSProcessor", "ForcedEOSProcessor",
                     "SuppressTokensProcessor", "SuppressTokensAtBeginProcessor", "TemperatureWarper", "TopKWarper",
                     "TopPWarper", "MinPWarper", "TypicalWarper"]
    greedy = [type(p).__name__ for p in P.build_processors(config.replace(do_sample=False), input_length=3)]
    assert greedy[-1] == "SuppressTokensAtBeginProcessor"


# ----------------------------------------------------------------------------------------------- sampling helpers
def _chi_square_ok(draws, probs):
    n = draws.size
    counts = np.bincount(draws, minlength=probs.size)
    assert counts[probs == 0].sum() == 0, "drew a token of probability 0"
    support = probs > 0
    expected = probs[support] * n
    stat = float(((counts[support] - expected) ** 2 / expected).sum())
    df = max(int(support.sum()) - 1, 1)
    assert stat < df + 8 * math.sqrt(2 * df) + 10, (stat, df)


@pytest.mark.parametrize("warper", [P.TemperatureWarper(0.8), P.TopKWarper(5), P.TopPWarper(0.7)],
                         ids=["temperature", "top_k", "top_p"])
def test_sample_tokens_distribution(warper):
    rng = np.random.default_rng(1234)
    scores = (rng.standard_normal((1, 40)) * 1.5).astype(np.float32)
    processed = warper(np.zeros((1, 1), np.int64), scores)
    probs = np.exp(processed[0].astype(np.float64) - processed[0].max())
    probs /= probs.sum()
    n = 40000
    draws = P.sample_tokens(np.repeat(processed, n, axis=0), np.random.default_rng(7))
    assert draws.dtype == np.int64 and draws.shape == (n,)
    _chi_square_ok(draws, probs)


def test_sample_tokens_seeded_and_masked():
    s = np.array([[0.0, -np.inf, 1.0, -np.inf], [-np.inf, -np.inf, -np.inf, 5.0]], np.float32)
    a = P.sample_tokens(s, np.random.default_rng(3))
    b = P.sample_tokens(s, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a[0] in (0, 2) and a[1] == 3
    with pytest.raises(Exception, match="scores"):
        P.sample_tokens(np.full((1, 4), -np.inf, np.float32), np.random.default_rng(0))


def test_log_softmax_and_softmax():
    x = np.array([[1000.0, 999.0, -np.inf], [-np.inf, -np.inf, -np.inf], [0.1, 0.2, 0.3]], np.float32)
    ls = P.log_softmax(x)
    assert ls.dtype == np.float32
    ref = torch.log_softmax(torch.from_numpy(x[[0, 2]]), -1).numpy()
    assert_same(ls[[0, 2]], ref)
    assert np.isneginf(ls[1]).all()
    sm = P.softmax(x)
    np.testing.assert_allclose(sm[[0, 2]].sum(1), 1, rtol=1e-6)
    assert (sm[1] == 0).all()


# ------------------------------------------------------------------------------------------- GenerationConfig
def test_defaults_match_transformers():
    ref = transformers.GenerationConfig()
    ours = GenerationConfig()
    for name in ours.parameter_names():
        if name in ("seed", "stop"):  # onnxlm's own (stop: OpenAI's stop sequences)
            assert getattr(ours, name) is None
            continue
        assert getattr(ours, name) == getattr(ref, name), name


def test_from_dict_and_file(tmp_path):
    d = {"transformers_version": "4.57.6", "eos_token_id": [1, 2], "max_length": None, "top_k": None,
         "use_cache": True, "do_sample": True, "temperature": 0.6}
    (tmp_path / "generation_config.json").write_text(json.dumps(d))
    for c in (GenerationConfig.from_dict(d), GenerationConfig.from_file(tmp_path),
              GenerationConfig.from_file(tmp_path / "generation_config.json")):
        assert c.eos_token_ids == [1, 2] and c.max_length == 20 and c.top_k is None and c.temperature == 0.6
        assert c.extra == {"transformers_version": "4.57.6", "use_cache": True}
        c.validate()
    assert GenerationConfig(eos_token_id=5).eos_token_ids == [5] and GenerationConfig().eos_token_ids == []


def test_lengths_like_transformers():
    c = GenerationConfig()
    assert c.lengths(7) == (0, 27) and c.lengths(7, max_positions=10) == (0, 10)
    assert c.replace(max_length=20).lengths(7) == (0, 20)  # explicitly passed: total length
    assert c.replace(max_length=30).lengths(7) == (0, 30)
    assert c.replace(max_new_tokens=5, min_new_tokens=2).lengths(7) == (9, 12)
    assert c.replace(min_length=4).lengths(7) == (4, 27)


def test_replace_unknown_parameter():
    with pytest.raises(ParameterError) as e:
        GenerationConfig().replace(temprature=0.5)
    assert e.value.parameter == "temprature" and "temperature" in str(e.value)
    c = GenerationConfig().replace(top_k=3)
    assert c.top_k == 3 and GenerationConfig().top_k == 50


@pytest.mark.parametrize("params,name,allowed", [
    (dict(do_sample=True, temperature=0.0), "temperature", "> 0"),
    (dict(do_sample=True, temperature=-1.0), "temperature", "> 0"),
    (dict(do_sample=True, temperature=float("nan")), "temperature", "not NaN"),
    (dict(do_sample=False, temperature=float("nan")), "temperature", "not NaN"),
    (dict(do_sample=True, top_p=-0.1), "top_p", "[0, 1]"),
    (dict(do_sample=True, top_k=-1), "top_k", ">= 0"),
    (dict(do_sample=True, top_k=2.5), "top_k", ">= 0"),
    (dict(do_sample=True, min_p=1.5), "min_p", "[0, 1]"),
    (dict(do_sample=True, typical_p=0.0), "typical_p", "(0, 1]"),
    (dict(repetition_penalty=0.0), "repetition_penalty", "> 0"),
    (dict(repetition_penalty=1e-300), "repetition_penalty", "float32"),  # 0 in float32: every score inf
    (dict(no_repeat_ngram_size=2.5), "no_repeat_ngram_size", "an integer"),
    (dict(num_beams=0), "num_beams", ">= 1"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences", "<= num_beams"),
    (dict(num_return_sequences=2), "num_return_sequences", "1 for greedy"),
    (dict(num_return_sequences=0), "num_return_sequences", ">= 1"),
    (dict(max_new_tokens=-1), "max_new_tokens", ">= 1"),
    (dict(max_new_tokens=0), "max_new_tokens", ">= 1"),
    (dict(min_new_tokens=-1), "min_new_tokens", ">= 0"),
    (dict(length_penalty=float("nan")), "length_penalty", "not NaN"),
    (dict(length_penalty=float("inf")), "length_penalty", "finite"),
    (dict(early_stopping="always"), "early_stopping", "never"),
    (dict(eos_token_id=-1), "eos_token_id", ">= 0"),
    (dict(eos_token_id=[1, -3]), "eos_token_id", ">= 0"),
    (dict(bad_words_ids=[[1], []]), "bad_words_ids", "non-empty"),
    (dict(suppress_tokens=[-1]), "suppress_tokens", ">= 0"),
    (dict(seed=-1), "seed", ">= 0"),
    (dict(do_sample="yes"), "do_sample", "True or False"),
])
def test_validation_errors(params, name, allowed):
    with pytest.raises(ParameterError) as e:
        GenerationConfig().replace(**params).validate()
    assert e.value.parameter == name
    assert name in str(e.value) and allowed in str(e.value)
    assert repr(next(iter(params.values())) if len(params) == 1 else params[name])[:3] in str(e.value)


def test_validation_accepts():
    GenerationConfig(do_sample=False, temperature=0.0).validate()  # temperature unused without sampling
    GenerationConfig(do_sample=True, num_return_sequences=4).validate()
    GenerationConfig(num_beams=4, num_return_sequences=4, early_stopping="never").validate()
    GenerationConfig(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, pad_token_id=-1).validate()
    assert GenerationConfig(do_sample=False, temperature=0.5, top_k=3).ignored_parameters() == ["temperature",
                                                                                                 "top_k"]


def test_a_temperature_that_overflows_the_scores_is_named():
    """temperature 1e-50 is 0 in float32 (refused at once); 1e-38 sends a score of 10 past float32's range (refused
    when it does, naming temperature, not a later "no finite maximum"); +inf scores as given pass through."""
    with pytest.raises(ParameterError, match="0 in float32") as err:
        P.TemperatureWarper(1e-50)
    assert err.value.parameter == "temperature"
    ids, scores = np.zeros((1, 2), np.int64), np.array([[10.0, -3.0, 0.5]], np.float32)
    with pytest.raises(ParameterError, match="float32's range") as err:
        P.TemperatureWarper(1e-38)(ids, scores)
    assert err.value.parameter == "temperature"
    np.testing.assert_allclose(P.TemperatureWarper(1e-30)(ids, scores), scores / np.float32(1e-30))
    inf = np.array([[np.inf, 1.0]], np.float32)
    assert np.isposinf(P.TemperatureWarper(0.5)(ids, inf)[0, 0])


def test_processor_init_errors():
    for make, name in [(lambda: P.TemperatureWarper(0.0), "temperature"), (lambda: P.TopKWarper(0), "top_k"),
                       (lambda: P.TopPWarper(-0.5), "top_p"), (lambda: P.MinPWarper(-0.1), "min_p"),
                       (lambda: P.TypicalWarper(0.0), "typical_p"),
                       (lambda: P.RepetitionPenaltyProcessor(-1.0), "repetition_penalty"),
                       (lambda: P.RepetitionPenaltyProcessor(1e-300), "repetition_penalty"),
                       (lambda: P.NoRepeatNGramProcessor(0), "no_repeat_ngram_size"),
                       (lambda: P.NoBadWordsProcessor([]), "bad_words_ids"),
                       (lambda: P.SuppressTokensProcessor([-1]), "suppress_tokens"),
                       (lambda: P.TopPWarper(0.5, min_tokens_to_keep=0), "min_tokens_to_keep")]:
        with pytest.raises(ParameterError) as e:
            make()
        assert e.value.parameter == name


def test_picked_logprobs_equal_the_whole_log_softmax_picked():
    """score's log-probabilities taken PICK_CHUNK positions at a time are the whole log-softmax's, bit for bit (each
    position's log-softmax is its own), -inf logits included."""
    from onnxlm.runtime.processors import PICK_CHUNK, log_softmax, picked_logprobs
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 2 * PICK_CHUNK + 37, 50)).astype(np.float32) * 8
    logits[0, 5, :10] = -np.inf
    targets = rng.integers(0, 50, size=logits.shape[:2])
    want = np.take_along_axis(log_softmax(logits), targets[:, :, None], axis=-1)[..., 0]
    got = picked_logprobs(logits, targets)
    assert got.dtype == np.float32 and np.array_equal(got, want)

"""Beam sampling (do_sample=True with num_beams > 1), transformers' `_beam_search` with warpers and a multinomial
draw of the k candidates. numpy's RNG cannot reproduce torch's stream, so the proof is: the processed scores of
every step equal transformers' processors (with beam sampling's min_tokens_to_keep) on the same prefixes; seeded
runs are reproducible; sequences_scores agree with the per-step scores along beam_indices; and chi-square tests
of the candidate draw (its first and second draws, and the returned pair through generate on a tiny model)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig as HFGenerationConfig, T5ForConditionalGeneration

import onnxlm
from onnxlm.runtime.decoding.beam import _sample_without_replacement
from scipy_free_chi2 import chi2_sf
from torch_ref import left_padded_batch, position_ids, right_padded_batch

NB = 3
NEW = 6
CASES = [dict(temperature=0.7), dict(top_k=1), dict(top_p=0.3), dict(min_p=0.1), dict(typical_p=0.8),
         dict(repetition_penalty=1.3, temperature=1.3, top_k=20, top_p=0.9)]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_t5"])
def pair(request):
    art = request.getfixturevalue(request.param)
    cls = T5ForConditionalGeneration if request.param == "tiny_t5" else AutoModelForCausalLM
    return onnxlm.load(art.onnx_dir), cls.from_pretrained(art.hf_dir).eval()


def batch(ours, seed=0):
    rng = np.random.default_rng(seed)
    if ours.is_encoder_decoder:
        eos = ours.generation_config.eos_token_ids[0]
        return right_padded_batch(rng, [5, 3], ours.vocab_size - 4, ours.pad_id, eos)
    return left_padded_batch(rng, [5, 3], ours.vocab_size - 4, ours.pad_id)


class Recorder:
    """Wraps a decoding state; keeps, for every step's scores, the rows' ids so far, attention mask and source row."""

    def __init__(self, state, sequences, mask, src):
        self.state, self.seqs, self.mask, self.src = state, sequences, mask, src
        self.steps = [(sequences, mask, src)]

    def select(self, rows):
        self.state.select(rows)
        self.seqs, self.mask, self.src = self.seqs[rows], self.mask[rows], self.src[rows]

    def advance(self, tokens):
        self.seqs = np.concatenate([self.seqs, tokens[:, None]], axis=1)
        self.mask = np.concatenate([self.mask, np.ones((len(tokens), 1), np.int64)], axis=1)
        self.steps.append((self.seqs, self.mask, self.src))
        return self.state.advance(tokens)


def record(ours, monkeypatch) -> list:
    """Patch ours so that generate's state is recorded; -> the list the Recorder will be appended to."""
    made = []
    start = ours._start_expanded

    def wrapped(ids, mask, n, max_length, config):
        state, logits, sequences = start(ids, mask, n, max_length, config)
        rows = np.repeat(np.arange(len(ids)), n)
        made.append(Recorder(state, sequences, mask[rows], rows))
        return made[-1], logits, sequences

    monkeypatch.setattr(ours, "_start_expanded", wrapped)
    return made


@pytest.mark.parametrize("params", CASES, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_beam_sampling_processed_scores_equal_transformers(pair, params, monkeypatch):
    ours, ref = pair
    ids, mask = batch(ours)
    eos = ours.generation_config.eos_token_ids
    made = record(ours, monkeypatch)
    got = ours.generate(ids, attention_mask=mask, do_sample=True, num_beams=NB, seed=1, max_new_tokens=NEW,
                        output_scores=True, **params)
    steps = made[0].steps
    assert len(got.scores) == NEW and len(steps) >= NEW
    t0 = 1 if ours.is_encoder_decoder else ids.shape[1]
    cfg = HFGenerationConfig(do_sample=True, num_beams=NB, max_new_tokens=NEW, pad_token_id=ours.pad_id,
                             eos_token_id=eos, **params)
    cfg._eos_token_tensor = torch.tensor(eos)  # what generate sets: min_tokens_to_keep = len(eos) + 1
    procs = ref._get_logits_processor(generation_config=cfg, input_ids_seq_length=t0,
                                      encoder_input_ids=torch.tensor(ids), prefix_allowed_tokens_fn=None,
                                      logits_processor=None, device="cpu")
    for step, ours_scores in enumerate(got.scores):
        prefix, m, src = steps[step]
        with torch.no_grad():
            if ours.is_encoder_decoder:
                logits = ref(input_ids=torch.tensor(ids[src]), attention_mask=torch.tensor(mask[src]),
                             decoder_input_ids=torch.tensor(prefix)).logits[:, -1]
            else:
                logits = ref(input_ids=torch.tensor(prefix), attention_mask=torch.tensor(m),
                             position_ids=position_ids(m)).logits[:, -1]
            want = procs(torch.tensor(prefix), torch.log_softmax(logits, dim=-1)).numpy()
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(ours_scores), finite, err_msg=f"step {step}")
        assert np.abs(ours_scores[finite] - want[finite]).max() <= 1e-4, step
    # the returned rows are the recorded prefixes' continuations: sequences start with the prompt / start token
    assert got.sequences.shape[0] == len(ids)


def test_beam_sampling_reproducible_by_seed_and_consistent(pair):
    ours, _ = pair
    ids, mask = batch(ours, seed=1)
    kw = dict(do_sample=True, num_beams=NB, num_return_sequences=2, max_new_tokens=NEW, temperature=1.5,
              output_scores=True, length_penalty=1.0)
    a = ours.generate(ids, attention_mask=mask, seed=5, **kw)
    b = ours.generate(ids, attention_mask=mask, seed=5, **kw)
    np.testing.assert_array_equal(a.sequences, b.sequences)
    np.testing.assert_array_equal(a.sequences_scores, b.sequences_scores)
    draws = [ours.generate(ids, attention_mask=mask, seed=s, **kw).sequences for s in range(6, 10)]
    assert any(d.shape != a.sequences.shape or not np.array_equal(d, a.sequences) for d in draws)
    beam = ours.generate(ids, attention_mask=mask, **dict(kw, do_sample=False))
    assert beam.sequences.shape != a.sequences.shape or not np.array_equal(beam.sequences, a.sequences)
    # sequences_scores = sum of the per-step scores along beam_indices / generated length ** length_penalty
    t0 = 1 if ours.is_encoder_decoder else ids.shape[1]
    assert a.sequences.shape[0] == 2 * len(ids) and a.beam_indices.shape[0] == 2 * len(ids)
    for row in range(len(a.sequences)):
        path = a.beam_indices[row][a.beam_indices[row] >= 0]
        toks = a.sequences[row, t0:t0 + len(path)]
        total = sum(float(a.scores[s][path[s], toks[s]]) for s in range(len(path)))
        assert abs(total / len(path) - float(a.sequences_scores[row])) <= 1e-4, row


def _chi2_pvalue(counts: np.ndarray, p: np.ndarray) -> float:
    """Pearson chi-square of counts against probabilities p (cells with expected < 5 pooled)."""
    n = counts.sum()
    assert counts[p == 0].sum() == 0  # never a zero-probability outcome
    keep = p * n >= 5
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(p[keep] * n, p[~keep].sum() * n)
    obs, exp = obs[exp > 0], exp[exp > 0]
    return chi2_sf(((obs - exp) ** 2 / exp).sum(), len(obs) - 1)


def test_candidate_draw_first_and_second_marginals(tiny_gpt2):
    """On the tiny model's first-step beam scores: the 1st draw ~ softmax(acc); the 2nd draw (without
    replacement) ~ q_j = p_j * sum_{i != j} p_i / (1 - p_i)."""
    ours = onnxlm.load(tiny_gpt2.onnx_dir)
    _, logits = ours.start(np.array([[104, 105, 32]]), np.ones((1, 3), np.int64))
    lp = logits[0].astype(np.float64) / 1.5
    lp = (lp - np.log(np.exp(lp - lp.max()).sum()) - lp.max()).astype(np.float32)
    V = len(lp)
    acc = np.concatenate([lp, lp - np.float32(1e9)])[None, :]  # 2 beams; the 2nd starts at -1e9, as in the loop
    n = 20000
    draws = _sample_without_replacement(np.repeat(acc, n, axis=0), 4, np.random.default_rng(0))
    assert (draws < V).all()  # never the dead beam
    assert (np.sort(draws, axis=1)[:, 1:] != np.sort(draws, axis=1)[:, :-1]).all()  # without replacement
    p = np.exp(acc[0].astype(np.float64) - acc[0].max())
    p /= p.sum()
    q = p * ((p / (1 - p)).sum() - p / (1 - p))
    assert _chi2_pvalue(np.bincount(draws[:, 0], minlength=2 * V), p) > 1e-4
    assert _chi2_pvalue(np.bincount(draws[:, 1], minlength=2 * V), q / q.sum()) > 1e-4


def test_generate_returns_the_first_two_draws_with_the_right_distribution(tiny_gpt2):
    """num_beams=2 (k=4 candidates), top_k=4, one new token, both beams returned: the returned pair is the set of
    the first two draws, P({i, j}) = p_i p_j / (1 - p_i) + p_j p_i / (1 - p_j)."""
    ours = onnxlm.load(tiny_gpt2.onnx_dir)
    n = 3000
    res = ours.generate([[104, 105, 32]] * n, do_sample=True, seed=3, num_beams=2, num_return_sequences=2, top_k=4,
                        temperature=2.0, max_new_tokens=1, eos_token_id=[], output_scores=True)
    s = res.scores[0][0].astype(np.float64)
    p = np.exp(s - s.max())
    p /= p.sum()
    support = np.flatnonzero(p > 0)
    assert len(support) == 4
    pairs = [(i, j) for a, i in enumerate(support) for j in support[a + 1:]]
    want = np.array([p[i] * p[j] / (1 - p[i]) + p[j] * p[i] / (1 - p[j]) for i, j in pairs])
    toks = np.sort(res.sequences[:, -1].reshape(n, 2), axis=1)
    counts = np.array([np.sum((toks[:, 0] == i) & (toks[:, 1] == j)) for i, j in pairs])
    assert counts.sum() == n
    assert _chi2_pvalue(counts, want / want.sum()) > 1e-4

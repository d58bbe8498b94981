"""Unit tests of runtime/decoding/beam.py.

Reference: transformers' own ``generate(num_beams=...)`` on a tiny random GPT-2 built from a config (no network).
Our numpy ``beam_search`` drives a test-only state that replays the same torch model through the decoding state
protocol (KV cache reordered by ``select``), so both loops see the same logits and must agree token for token.
"""
from __future__ import annotations

import collections
import itertools
import subprocess
import sys

import numpy as np
import pytest

from onnxlm.runtime.decoding.beam import BeamOutput, beam_search
from onnxlm.runtime.errors import ParameterError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

MAX_NEW = 8
PAD = 0


# ------------------------------------------------------------------------------------------ reference model
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=100, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=1,
                                  eos_token_id=2, pad_token_id=PAD, initializer_range=0.3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-layer, 32-wide model: threads only add overhead
    yield transformers.GPT2LMHeadModel(cfg).eval()
    torch.set_num_threads(threads)


PROMPTS = {
    1: (np.array([[5, 17, 33, 8]]), np.array([[1, 1, 1, 1]])),
    3: (np.array([[PAD, PAD, 5, 17, 33, 8], [PAD, PAD, PAD, PAD, 40, 41], [11, 12, 13, 14, 15, 16]]),
        np.array([[0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]])),
}


def _positions(mask: torch.Tensor) -> torch.Tensor:  # as transformers' prepare_inputs_for_generation
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


class TorchReplayState:
    """The decoding state protocol over the torch model with a transformers DynamicCache."""

    def __init__(self, model, input_ids: np.ndarray, attention_mask: np.ndarray):
        self.model = model
        self.mask = torch.from_numpy(attention_mask.astype(np.int64))
        self.ids = input_ids.astype(np.int64)
        self.select_calls = 0
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(self.ids), attention_mask=self.mask,
                        position_ids=_positions(self.mask), use_cache=True)
        self.cache = out.past_key_values
        self.first_logits = out.logits[:, -1].float().numpy()

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        assert tokens.dtype == np.int64 and tokens.shape == (self.ids.shape[0],)
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        self.mask = torch.cat([self.mask, torch.ones((self.mask.shape[0], 1), dtype=torch.int64)], dim=1)
        with torch.no_grad():
            out = self.model(input_ids=torch.from_numpy(tokens[:, None].copy()), attention_mask=self.mask,
                             position_ids=_positions(self.mask)[:, -1:], past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float().numpy()

    def select(self, rows: np.ndarray) -> None:
        assert rows.dtype == np.int64 and rows.shape == (self.ids.shape[0],)
        self.select_calls += 1
        self.cache.reorder_cache(torch.from_numpy(rows))
        self.mask = self.mask[torch.from_numpy(rows)]
        self.ids = self.ids[rows]


def _torch_processors(repetition_penalty=None, no_repeat_ngram_size=None):
    """transformers' own processors wrapped as numpy callables (independent of runtime/processors.py)."""
    from transformers.generation import logits_process as lp

    procs = []
    if no_repeat_ngram_size:
        procs.append(lp.NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    if repetition_penalty:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(repetition_penalty))

    def apply(ids, scores):
        t_ids, t_scores = torch.from_numpy(ids), torch.from_numpy(scores.copy())
        for p in procs:
            t_scores = p(t_ids, t_scores)
        return t_scores.numpy()

    return apply


def _identity(ids, scores):
    return scores


def run_both(model, batch, *, num_beams, length_penalty, early_stopping, num_return_sequences, eos, pad=PAD,
             processors=_identity, ref_kwargs=None):
    ids, mask = PROMPTS[batch]
    with torch.no_grad():
        ref = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), num_beams=num_beams,
                             do_sample=False, max_new_tokens=MAX_NEW, length_penalty=length_penalty,
                             early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                             eos_token_id=eos, pad_token_id=pad, return_dict_in_generate=True, output_scores=True,
                             output_logits=True, **(ref_kwargs or {}))
    rep_ids, rep_mask = np.repeat(ids, num_beams, axis=0), np.repeat(mask, num_beams, axis=0)
    state = TorchReplayState(model, rep_ids, rep_mask)
    out = beam_search(state, rep_ids, state.first_logits, num_beams=num_beams, processors=processors,
                      eos_token_ids=list(eos or []), pad_token_id=pad, max_length=ids.shape[1] + MAX_NEW,
                      length_penalty=length_penalty, early_stopping=early_stopping,
                      num_return_sequences=num_return_sequences, output_scores=True, output_logits=True,
                      decoder_prompt_len=ids.shape[1])
    return ref, out, state


def assert_same(ref, out: BeamOutput, n_rows: int):
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    np.testing.assert_allclose(out.sequences_scores, ref.sequences_scores.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_array_equal(out.beam_indices, ref.beam_indices.numpy())
    assert out.sequences.dtype == np.int64 and out.beam_indices.dtype == np.int64
    assert out.sequences_scores.dtype == np.float32 and out.sequences_scores.shape == (n_rows,)
    assert len(out.scores) == len(ref.scores) and len(out.logits) == len(ref.logits)
    for ours, theirs in zip(out.scores, ref.scores):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-4)
    for ours, theirs in zip(out.logits, ref.logits):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=0, atol=1e-5)
    assert len(out.finish_reasons) == n_rows


@pytest.fixture(scope="module")
def eos_ids(model):
    """Tokens that unconstrained beam search emits mid-sequence, so EOS finishes beams at different steps."""
    counts = collections.Counter()
    for batch in (1, 3):
        ids, mask = PROMPTS[batch]
        with torch.no_grad():
            seqs = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), num_beams=4,
                                  num_return_sequences=4, do_sample=False, max_new_tokens=MAX_NEW,
                                  eos_token_id=None, pad_token_id=PAD).numpy()
        counts.update(seqs[:, ids.shape[1] + 1: ids.shape[1] + MAX_NEW - 2].ravel().tolist())
    return [tok for tok, _ in counts.most_common(2)]


# ----------------------------------------------------------------------------------------------- the grid
GRID = list(itertools.product([2, 4], [0.5, 1.0, 2.0], [True, False, "never"]))


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", GRID)
@pytest.mark.parametrize("batch,num_return_sequences", [(1, 1), (3, 2)])
def test_parity_grid(model, eos_ids, batch, num_beams, length_penalty, early_stopping, num_return_sequences):
    ref, out, state = run_both(model, batch, num_beams=num_beams, length_penalty=length_penalty,
                               early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                               eos=[eos_ids[0]])
    assert_same(ref, out, batch * num_return_sequences)
    assert state.select_calls == len(out.scores) - 1  # once per step, none after the last


@pytest.mark.parametrize("batch,num_return_sequences", [(1, 2), (3, 1)])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
def test_parity_two_eos_ids_and_pad_fill(model, eos_ids, batch, num_return_sequences, early_stopping):
    # two EOS ids -> 3 * num_beams candidates per step; pad id 3 (non-zero) is the fill value
    ref, out, _ = run_both(model, batch, num_beams=3, length_penalty=1.0, early_stopping=early_stopping,
                           num_return_sequences=num_return_sequences, eos=eos_ids, pad=3)
    assert_same(ref, out, batch * num_return_sequences)


class _BoostEos:
    """Adds a bias to the EOS log-probs so that many candidates finish at once (stresses the k-candidate logic,
    the finished-store merge and the per-item early-stop heuristic); usable by both transformers and numpy."""

    def __init__(self, eos, bias):
        self.eos, self.bias = list(eos), bias

    def __call__(self, ids, scores):
        scores = scores.clone() if isinstance(scores, torch.Tensor) else scores.copy()
        scores[:, self.eos] += self.bias
        return scores


@pytest.mark.parametrize("n_eos,bias", [(1, 2.0), (2, 1.0), (2, 2.5)])
@pytest.mark.parametrize("length_penalty,early_stopping", [(2.0, False), (0.5, False), (1.0, True), (2.0, "never")])
def test_parity_boosted_eos(model, eos_ids, n_eos, bias, length_penalty, early_stopping):
    boost = _BoostEos(eos_ids[:n_eos], bias)
    ref, out, _ = run_both(model, 3, num_beams=2, length_penalty=length_penalty, early_stopping=early_stopping,
                           num_return_sequences=2, eos=eos_ids[:n_eos], processors=boost,
                           ref_kwargs=dict(logits_processor=transformers.LogitsProcessorList([boost])))
    assert_same(ref, out, 6)


@pytest.mark.parametrize("batch", [1, 3])
def test_parity_without_eos(model, batch):
    ref, out, _ = run_both(model, batch, num_beams=4, length_penalty=1.0, early_stopping=False,
                           num_return_sequences=4, eos=None)
    assert_same(ref, out, batch * 4)
    assert out.finish_reasons == ["length"] * (batch * 4)


@pytest.mark.parametrize("kw", [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2),
                                dict(repetition_penalty=1.3, no_repeat_ngram_size=2)])
def test_parity_with_processors(model, eos_ids, kw):
    ref, out, _ = run_both(model, 3, num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2,
                           eos=[eos_ids[0]], processors=_torch_processors(**kw), ref_kwargs=kw)
    assert_same(ref, out, 6)


@pytest.mark.parametrize("kw", [dict(repetition_penalty=1.5), dict(no_repeat_ngram_size=2)])
def test_parity_with_runtime_processors(model, eos_ids, kw):
    procs_mod = pytest.importorskip("onnxlm.runtime.processors")
    gc_mod = pytest.importorskip("onnxlm.runtime.generation_config")
    ids = PROMPTS[3][0]
    config = gc_mod.GenerationConfig().replace(num_beams=4, max_new_tokens=MAX_NEW, **kw)
    processors = procs_mod.build_processors(config, input_length=ids.shape[1], is_encoder_decoder=False)
    ref, out, _ = run_both(model, 3, num_beams=4, length_penalty=1.0, early_stopping=False, num_return_sequences=2,
                           eos=[eos_ids[0]], processors=processors, ref_kwargs=kw)
    assert_same(ref, out, 6)


def test_eos_finishes_beams_at_different_steps(model, eos_ids):
    """Sanity of the grid: with the chosen EOS, some returned beams end on EOS early and others run to length."""
    _, out, _ = run_both(model, 3, num_beams=4, length_penalty=1.0, early_stopping="never", num_return_sequences=4,
                         eos=[eos_ids[0]])
    assert "eos" in out.finish_reasons and "length" in out.finish_reasons
    lengths = {int((row != -1).sum()) for row in out.beam_indices}
    assert len(lengths) > 1
    for row, bidx, reason in zip(out.sequences, out.beam_indices, out.finish_reasons):
        n = int((bidx != -1).sum())
        assert (row[6 + n - 1] == eos_ids[0]) == (reason == "eos")
        assert np.all(row[6 + n:] == eos_ids[0] if PAD == 0 else row[6 + n:] == PAD)  # pad 0 -> fill is eos[0]


# ------------------------------------------------------------------------------- pure-numpy fake model tests
class TableState:
    """Deterministic numpy model: logits from a fixed table indexed by (position, last token)."""

    def __init__(self, seqs: np.ndarray, vocab: int = 13, seed: int = 1):
        rng = np.random.default_rng(seed)
        self.table = (rng.standard_normal((64, vocab, vocab)) * 3).astype(np.float32)
        self.seqs = seqs.copy()
        self.history: list[tuple[str, np.ndarray]] = []

    def logits(self) -> np.ndarray:
        return self.table[self.seqs.shape[1], self.seqs[:, -1]]

    def advance(self, tokens):
        self.history.append(("advance", tokens.copy()))
        self.seqs = np.concatenate([self.seqs, tokens[:, None]], axis=1)
        return self.logits()

    def select(self, rows):
        self.history.append(("select", rows.copy()))
        self.seqs = self.seqs[rows]


@pytest.mark.parametrize("length_penalty,early_stopping", [(1.0, False), (0.5, True), (2.0, "never")])
def test_fake_model_consistency(length_penalty, early_stopping):
    nb, prompt = 3, np.array([[1, 2], [3, 4]], dtype=np.int64)
    seqs = np.repeat(prompt, nb, axis=0)
    state = TableState(seqs)
    out = beam_search(state, seqs, state.logits(), num_beams=nb, processors=None, eos_token_ids=[5],
                      pad_token_id=7, max_length=9, length_penalty=length_penalty, early_stopping=early_stopping,
                      num_return_sequences=nb, output_scores=True, decoder_prompt_len=2)
    assert out.logits is None and len(out.scores) >= 1
    # select/advance strictly alternate, one each per step after the first
    assert [h[0] for h in state.history] == ["select", "advance"] * (len(out.scores) - 1)
    # the state's own rows equal the running beams: the select rows really are flat source rows
    assert np.all(state.seqs[:, :2] == seqs)
    # transition-score identity (transformers' compute_transition_scores): the sequence score is the sum of the
    # chosen tokens' processed log-probs along beam_indices, divided by generated_length ** length_penalty
    for row, bidx, score in zip(out.sequences, out.beam_indices, out.sequences_scores):
        n = int((bidx != -1).sum())
        total = sum(float(out.scores[t][bidx[t], row[2 + t]]) for t in range(n))
        assert score == pytest.approx(total / n ** length_penalty, abs=1e-4)
        assert np.all(bidx[:n] // nb == bidx[0] // nb)  # a beam never changes batch item
    # scores sorted descending within each batch item
    s = out.sequences_scores.reshape(2, nb)
    assert np.all(np.diff(s, axis=1) <= 0)


def test_num_beams_one_is_greedy():
    seqs = np.array([[1, 2]], dtype=np.int64)
    state = TableState(seqs)
    out = beam_search(state, seqs, state.logits(), num_beams=1, processors=None, eos_token_ids=[], pad_token_id=0,
                      max_length=8, length_penalty=1.0, early_stopping=False, num_return_sequences=1)
    greedy, ref_state = seqs.copy(), TableState(seqs)
    logits = ref_state.logits()
    while greedy.shape[1] < 8:
        tok = np.argmax(logits, axis=-1)
        greedy = np.concatenate([greedy, tok[:, None]], axis=1)
        logits = ref_state.advance(tok)
    np.testing.assert_array_equal(out.sequences, greedy)
    assert out.finish_reasons == ["length"]


def test_stopping_criteria_hook():
    seqs = np.array([[1, 2]], dtype=np.int64).repeat(2, axis=0)
    state = TableState(seqs)
    out = beam_search(state, seqs, state.logits(), num_beams=2, processors=None, eos_token_ids=[12], pad_token_id=0,
                      max_length=20, length_penalty=1.0, early_stopping=True, num_return_sequences=2,
                      stopping_criteria=lambda ids: np.full(ids.shape[0], ids.shape[1] >= 5))
    assert out.sequences.shape[1] <= 5
    assert set(out.finish_reasons) <= {"stop", "eos"}


@pytest.mark.parametrize("kw,param", [
    (dict(num_beams=0), "num_beams"),
    (dict(num_return_sequences=3), "num_return_sequences"),
    (dict(early_stopping="sometimes"), "early_stopping"),
    (dict(max_length=2), "max_length"),
    (dict(decoder_prompt_len=1), "decoder_prompt_len"),
    (dict(num_beams=3), "num_beams"),  # 2 rows are not a multiple of 3
])
def test_bad_parameters(kw, param):
    seqs = np.array([[1, 2]], dtype=np.int64).repeat(2, axis=0)
    state = TableState(seqs)
    args = dict(num_beams=2, processors=None, eos_token_ids=[5], pad_token_id=0, max_length=6, length_penalty=1.0,
                early_stopping=False, num_return_sequences=1)
    args.update(kw)
    with pytest.raises(ParameterError) as info:
        beam_search(state, seqs, state.logits(), **args)
    assert info.value.parameter == param


def test_beam_module_is_torch_free():
    code = ("import sys, onnxlm.runtime.decoding.beam; "
            "bad = [m for m in ('torch', 'transformers', 'optimum', 'onnx') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)

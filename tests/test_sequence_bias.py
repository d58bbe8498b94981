"""sequence_bias (transformers' SequenceBiasLogitsProcessor; the server's logit_bias rides on it): the processor
against transformers' on random scores, its checks, its place in the processor list, ids through ``generate``
equal to transformers' ``generate(sequence_bias=...)`` (greedy and beam), and per-request bias in the continuous
batch (each request's bias acts on its rows only)."""
from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers.generation import logits_process as tlp  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime import processors as P  # noqa: E402
from onnxlm.runtime.decoding.scheduler import Request, Scheduler  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402
from onnxlm.runtime.generation_config import GenerationConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: biases over a vocabulary of 40: one-token sequences, longer ones whose prefixes occur in the ids, a ban (-inf),
#: a sequence longer than the first steps' ids, and a token biased both alone and as a sequence's last token
BIAS = {(3,): 2.5, (7,): -4.0, (11,): -math.inf, (1, 2): 3.0, (2, 5): -1.5, (4, 4, 9): 6.0, (0, 1, 2, 3, 4, 5): 1.0,
        (1, 3): 0.75, (9, 3): -math.inf}


def _inputs(seed: int, b: int = 4, t: int = 3, vocab: int = 40):
    """ids [b, t] from a small range (so the biased prefixes occur), scores [b, V] float32."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 6, size=(b, t)).astype(np.int64), (rng.standard_normal((b, vocab)) * 3).astype(np.float32)


@pytest.mark.parametrize("form", ["dict", "list"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processor_equals_transformers(seed, form):
    """Step by step (ids grow by the argmax), scores equal transformers' to 1e-6 with the same -inf pattern."""
    bias = BIAS if form == "dict" else [[list(k), v] for k, v in BIAS.items()]
    ours = P.SequenceBiasProcessor(bias)
    ref = tlp.SequenceBiasLogitsProcessor({k: float(v) for k, v in BIAS.items()})
    ids, scores = _inputs(seed)
    ids[0, -1], ids[1, -2:] = 1, [4, 4]  # rows that complete (1, 2)/(1, 3) and (4, 4, 9) at the first step
    changed = False
    for _ in range(5):
        before = scores.copy()
        got = ours(ids, scores)
        np.testing.assert_array_equal(scores, before)  # the input is not modified
        want = ref(torch.from_numpy(ids), torch.from_numpy(scores)).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        fin = np.isfinite(want)
        assert np.abs(got[fin] - want[fin]).max() <= 1e-6
        changed |= bool((got[:, [5, 9]] != scores[:, [5, 9]]).any())  # a multi-token bias acted
        ids = np.concatenate([ids, np.argmax(got, 1)[:, None]], axis=1)
        scores = np.random.default_rng(seed + 100).standard_normal(scores.shape).astype(np.float32) * 3
    assert changed


@pytest.mark.parametrize("value,fragment", [
    ({}, "{}"), ([], "[]"), (5, "5"), ("ab", "'ab'"),
    ({3: 1.0}, "key 3"), ({(): 1.0}, "key ()"), ({(-1,): 1.0}, "(-1,)"), ({(2.5,): 1.0}, "(2.5,)"),
    ({(True,): 1.0}, "(True,)"), ({(1,): float("nan")}, "nan"), ({(1,): math.inf}, "inf"),
    ({(1,): "2"}, "'2'"), ({(1,): None}, "None"), ([[[1], 2.0], [1, 2.0]], "entry [1, 2.0]"),
    ([[[1], 2.0, 3]], "entry [[1], 2.0, 3]"),
])
def test_processor_checks_its_argument(value, fragment):
    with pytest.raises(ParameterError) as e:
        P.SequenceBiasProcessor(value)
    assert e.value.parameter == "sequence_bias" and fragment in str(e.value)
    with pytest.raises(ParameterError) as e:  # the same check in GenerationConfig.validate
        GenerationConfig(sequence_bias=value).validate()
    assert e.value.parameter == "sequence_bias"


def test_out_of_vocabulary_ids():
    with pytest.raises(ParameterError, match=r"sequence_bias: token ids \[40, 77\] are out of the vocabulary"):
        P.SequenceBiasProcessor({(40,): 1.0, (2, 77): 1.0, (39,): 1.0})(*_inputs(0))
    with pytest.raises(ParameterError, match=r"token ids \[40\]"):
        GenerationConfig(sequence_bias=[[[1, 40], -1.0]]).check_vocab(40)
    GenerationConfig(sequence_bias=[[[1, 39], -1.0]]).check_vocab(40)
    with pytest.raises(ParameterError, match="bans .* every token"):
        GenerationConfig(sequence_bias={(i,): -math.inf for i in range(40)}).check_vocab(40)
    GenerationConfig(sequence_bias={(i,): -math.inf for i in range(39)}).check_vocab(40)


def test_first_in_transformers_order():
    """build_processors puts SequenceBias where transformers' _get_logits_processor does: first."""
    params = dict(sequence_bias={(3,): 1.0}, repetition_penalty=1.2, no_repeat_ngram_size=2, do_sample=True,
                  temperature=0.5, max_new_tokens=4)
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=40, n_positions=32)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    tc = transformers.GenerationConfig(**params)
    tc._eos_token_tensor = None
    ref = model._get_logits_processor(generation_config=tc, input_ids_seq_length=3,
                                      encoder_input_ids=torch.zeros((1, 3), dtype=torch.long), device="cpu")
    ours = P.build_processors(GenerationConfig().replace(**params), input_length=3, vocab_size=40)
    assert [type(p).__name__ for p in ours] == ["SequenceBiasProcessor", "RepetitionPenaltyProcessor",
                                                 "NoRepeatNGramProcessor", "TemperatureWarper", "TopKWarper"]
    assert [type(p).__name__ for p in ref][:3] == ["SequenceBiasLogitsProcessor", "RepetitionPenaltyLogitsProcessor",
                                                   "NoRepeatNGramLogitsProcessor"]


# ----------------------------------------------------------------------------------- through generate, on a model
@pytest.fixture(scope="module")
def pair(tiny_llama):
    from transformers import AutoModelForCausalLM
    return onnxlm.load(tiny_llama.onnx_dir), AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval()


def _hf(ref, ids, **kw):
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)),
                            do_sample=False, max_new_tokens=6, eos_token_id=None, pad_token_id=0, **kw).numpy()


@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam"])
def test_generate_equals_transformers(pair, num_beams):
    """Biases read off the unbiased run (its 2nd token banned, its 1st+3rd pair boosted, a token pushed up): ids
    equal transformers' generate(sequence_bias=...), and differ from the unbiased run."""
    ours, ref = pair
    ids = np.asarray([[5, 17, 42, 9, 33]], np.int64)
    free = _hf(ref, ids, num_beams=num_beams)[0, 5:]
    bias = {(int(free[1]),): -math.inf, (int(free[0]), int(free[2])): 4.0, (int(free[3]),): -2.0, (64,): 1.5}
    want = _hf(ref, ids, num_beams=num_beams, sequence_bias=bias)
    got = ours.generate(ids, max_new_tokens=6, do_sample=False, num_beams=num_beams, eos_token_id=None,
                        pad_token_id=0, sequence_bias=bias).sequences
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(want[0, 5:], free)


def test_scheduler_bias_acts_on_its_own_rows(pair):
    """Three requests in one batch, the first biased (it bans what the second, the same prompt unbiased, picks):
    each gets what generate gives it alone, so the bias touched its own rows only."""
    model = pair[0]
    prompts = [[5, 17, 42, 9, 33], [5, 17, 42, 9, 33], [8, 8, 21]]
    free = model.generate([prompts[0]], max_new_tokens=6, do_sample=False, eos_token_id=None).new_tokens[0]
    greedy = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)
    params = [dict(greedy, sequence_bias={(int(free[0]),): -100.0, (int(free[1]),): -math.inf}), greedy,
              dict(max_new_tokens=6, do_sample=True, seed=3, eos_token_id=None, num_return_sequences=2)]
    sched = Scheduler(model)
    reqs = [sched.add(Request(p, model.resolve_config(kw))) for p, kw in zip(prompts, params)]
    while sched.busy:
        sched.step()
    for req, p, kw in zip(reqs, prompts, params):
        solo = model.generate([p], **kw).new_tokens
        assert req.error is None and req.new_ids == [list(row) for row in solo]
    assert reqs[0].new_ids[0][0] != free[0] and reqs[1].new_ids[0] == list(free)

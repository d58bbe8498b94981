"""Speculative decoding (prompt lookup, a draft model): greedy ids equal plain greedy and transformers' generate with
the same arguments, on the plain and the fused layouts, with fewer forward passes than tokens; stop strings, EOS,
min/max_new_tokens and processors decided per position as the plain loop does; batches; the sampled tokens follow
the target distribution (chi-square); refusals name the parameter."""
import json
import warnings

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import onnxlm
from onnxlm.runtime.decoding.speculative import _choose
from onnxlm.runtime.errors import ParameterError
from scipy_free_chi2 import chi2_sf
from torch_ref import tail_repeating_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PERIOD = [17, 99, 142, 63, 200, 8, 77, 150, 31, 120, 54, 230]
PROMPT = [257] + PERIOD * 3 + PERIOD[:5]        # repeats: the n-gram lookups find continuations


@pytest.fixture(scope="module")
def fused_llama(tiny_llama, tmp_path_factory):
    from onnxlm.export import export_model
    return export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("spec-fused") / "onnx", progress=False,
                        kv_layout="fused", validate=False)


@pytest.fixture(scope="module")
def models(tiny_llama, tiny_gpt2, fused_llama):
    """name -> our model; 'hf-llama' / 'hf-gpt2': transformers on the same weights."""
    return {"plain": onnxlm.load(tiny_llama.onnx_dir), "fused": onnxlm.load(fused_llama),
            "gpt2": onnxlm.load(tiny_gpt2.onnx_dir), "gpt2-twin": onnxlm.load(tiny_gpt2.onnx_dir),
            "hf-llama": AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval(),
            "hf-gpt2": AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()}


@torch.no_grad()
def _hf(ref, prompt, **kw):
    """transformers' new ids, cut at max_new_tokens: its prompt lookup bounds a candidate's source index, not the
    output length, by max_length, so its last block may run past max_new_tokens (tokens beyond are the same
    model's next greedy picks)."""
    ids = torch.tensor([prompt])
    out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=256, **kw)
    return out[0, len(prompt):len(prompt) + kw["max_new_tokens"]].tolist()


@pytest.mark.parametrize("layout", ["plain", "fused"])
@pytest.mark.parametrize("kw", [dict(max_new_tokens=60), dict(max_new_tokens=37, repetition_penalty=1.3),
                                dict(max_new_tokens=50, no_repeat_ngram_size=3)], ids=["plain", "rep", "ngram"])
def test_prompt_lookup_greedy_equals_plain_and_transformers(models, layout, kw):
    ours = models[layout]
    plain = ours.generate([PROMPT], **kw)
    spec = ours.generate([PROMPT], prompt_lookup_num_tokens=6, **kw)
    assert spec.new_tokens == plain.new_tokens
    assert spec.new_tokens[0] == _hf(models["hf-llama"], PROMPT, prompt_lookup_num_tokens=6, **kw)
    stats = spec.speculation
    assert stats.accepted > 0 and stats.passes < len(spec.new_tokens[0])     # fewer passes than tokens


@pytest.mark.parametrize("layout", ["plain", "fused"])
def test_draft_model_greedy_equals_plain_and_transformers(models, layout):
    ours, kw = models[layout], dict(max_new_tokens=40, assistant_confidence_threshold=0.0)
    plain = ours.generate([PROMPT], max_new_tokens=40)
    for schedule in ("constant", "heuristic_transient"):
        spec = ours.generate([PROMPT], assistant_model=models["gpt2"], num_assistant_tokens=5,
                             num_assistant_tokens_schedule=schedule, **kw)
        assert spec.new_tokens == plain.new_tokens, schedule
        assert 0 < spec.speculation.accepted < spec.speculation.proposed              # rejections happen
    same = ours.generate([PROMPT], assistant_model=models["fused" if layout == "plain" else "plain"], **kw)
    assert same.new_tokens == plain.new_tokens and same.speculation.passes <= 3     # a twin draft: all accepted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert plain.new_tokens[0] == _hf(models["hf-llama"], PROMPT, max_new_tokens=40,
                                          assistant_model=models["hf-gpt2"])


def test_stops_and_lengths_are_decided_per_position(models):
    ours = models["plain"]
    plain = ours.generate([PROMPT], max_new_tokens=60).new_tokens[0]
    eos = plain[25]                                          # an id the run emits mid-way: an EOS inside a block
    first = plain.index(eos)
    for kw in (dict(eos_token_id=eos), dict(eos_token_id=eos, min_new_tokens=first + 3),
               dict(max_new_tokens=first + 2), dict(stop_strings=ours.tokenizer.decode(plain[first - 1:first + 1]))):
        kw = {"max_new_tokens": 60, **kw}
        want = ours.generate([PROMPT], **kw)
        got = ours.generate([PROMPT], prompt_lookup_num_tokens=8, **kw)
        assert got.new_tokens == want.new_tokens and got.finish_reasons == want.finish_reasons, kw
        assert got.text == want.text
        if "stop_strings" not in kw:                         # transformers only checks stops after a whole block
            assert got.new_tokens[0] == _hf(models["hf-llama"], PROMPT, prompt_lookup_num_tokens=8, **kw), kw


def test_stream_and_scores_come_one_per_token(models):
    ours = models["fused"]
    kw = dict(max_new_tokens=30, output_scores=True, output_logits=True)
    plain = ours.generate([PROMPT], **kw)
    spec = ours.generate([PROMPT], prompt_lookup_num_tokens=10, **kw)
    assert len(spec.scores) == len(spec.logits) == len(plain.scores) == 30
    np.testing.assert_allclose(np.stack(spec.scores), np.stack(plain.scores), atol=1e-4)
    steps = list(ours.stream([PROMPT], max_new_tokens=30, prompt_lookup_num_tokens=10))
    assert [s.token_id for s in steps] == plain.new_tokens[0] and [s.step for s in steps] == list(range(30))


@pytest.mark.parametrize("layout", ["plain", "fused"])
def test_left_padded_batch_speculates_as_far_as_its_shortest_proposal(models, layout):
    ours = models[layout]
    ids, mask = tail_repeating_batch(np.random.default_rng(4), [9, 5, 7], 250, ours.pad_id)
    plain = ours.generate(ids, attention_mask=mask, max_new_tokens=30)
    spec = ours.generate(ids, attention_mask=mask, max_new_tokens=30, prompt_lookup_num_tokens=4)
    np.testing.assert_array_equal(spec.sequences, plain.sequences)
    assert spec.speculation.accepted > 0


def _marginal_second_token(ours, prompt, first_scores, top_k=None, temperature=0.5):
    """p(t2) = sum over t1 of p(t1) p(t2 | prompt, t1), first_scores [V] processed; the conditional keeps the top_k
    logits (None: all), as the sampling run does."""
    p1 = np.exp(first_scores - first_scores.max()); p1 /= p1.sum()
    rows = np.array([prompt + [t] for t in range(len(p1))])
    logits = ours.logits(rows)[:, -1].astype(np.float64) / temperature
    if top_k:
        logits[logits < np.sort(logits, axis=1)[:, -top_k][:, None]] = -np.inf
    p2 = np.exp(logits - logits.max(1, keepdims=True)); p2 /= p2.sum(1, keepdims=True)
    return p1 @ p2


def _chi2_pvalue(counts, p, n):
    keep = p * n >= 5                                       # cells with expected count >= 5, the rest pooled
    obs, exp = np.append(counts[keep], counts[~keep].sum()), np.append(p[keep] * n, p[~keep].sum() * n)
    obs, exp = obs[exp > 0], exp[exp > 0]
    return chi2_sf(float(((obs - exp) ** 2 / exp).sum()), len(obs) - 1)


def _sampled_second_tokens(ours, prompt, calls, rows, **kw):
    """calls x generate(rows copies of prompt, seed=i) -> second new token of every row [calls*rows], the first
    step's processed scores [V], speculation totals (proposed, accepted)."""
    seconds, proposed, accepted = [], 0, 0
    for seed in range(calls):
        res = ours.generate([prompt] * rows, do_sample=True, seed=seed, max_new_tokens=4, eos_token_id=[],
                            output_scores=True, **kw)
        seconds.extend(res.sequences[:, len(prompt) + 1])
        proposed, accepted = proposed + res.speculation.proposed, accepted + res.speculation.accepted
    return np.array(seconds), res.scores[0][0].astype(np.float64), proposed, accepted


@pytest.mark.parametrize("how", ["prompt_lookup", "draft"])
def test_sampling_follows_the_target_distribution(models, how):
    """The second new token (the first one decided on a verify pass) against its exact marginal."""
    ours, top_k = models["gpt2"], 12
    kw = (dict(prompt_lookup_num_tokens=3) if how == "prompt_lookup" else
          dict(assistant_model=models["gpt2-twin"], assistant_confidence_threshold=0.0, num_assistant_tokens=3))
    calls, rows = 300, 1                                     # batch 1: a batch accepts its rows' fewest
    seconds, first, proposed, accepted = _sampled_second_tokens(ours, PROMPT, calls, rows, top_k=top_k,
                                                                temperature=0.5, **kw)
    assert 0 < accepted <= proposed                          # verify passes accepted proposals (a twin draft: all;
    # rejections and the residual draw: test_rejection_sampling_gives_the_target_distribution)
    p = _marginal_second_token(ours, PROMPT, first, top_k)
    counts = np.bincount(seconds, minlength=len(p))
    assert counts[p == 0].sum() == 0                         # never a token the processors removed
    assert _chi2_pvalue(counts, p, len(seconds)) > 1e-3


def test_rejection_sampling_gives_the_target_distribution():
    rng, n, v = np.random.default_rng(0), 40000, 12
    p = rng.dirichlet(np.ones(v) * 0.7)
    q = rng.dirichlet(np.ones(v) * 0.7)
    proposed = rng.choice(v, size=n, p=q)                    # the draft's tokens, drawn from q
    tokens, accepted = _choose(np.log(np.tile(p, (n, 1))).astype(np.float32), proposed, np.tile(q, (n, 1)), True, rng)
    assert 0 < accepted.mean() < 1
    assert _chi2_pvalue(np.bincount(tokens, minlength=v), p, n) > 1e-3


def test_refusals_name_the_parameter(models):
    ours = models["plain"]
    cases = [(dict(prompt_lookup_num_tokens=3, num_beams=2), "prompt_lookup_num_tokens"),
             (dict(assistant_model=models["gpt2"], num_beams=2), "assistant_model"),
             (dict(assistant_model=models["gpt2"], prompt_lookup_num_tokens=3), "assistant_model"),
             (dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens"),
             (dict(prompt_lookup_num_tokens=2, max_matching_ngram_size=0), "max_matching_ngram_size"),
             (dict(num_assistant_tokens=0), "num_assistant_tokens"),
             (dict(num_assistant_tokens_schedule="fast"), "num_assistant_tokens_schedule"),
             (dict(assistant_confidence_threshold=1.5), "assistant_confidence_threshold"),
             (dict(assistant_model="gpt2"), "assistant_model"),
             (dict(assistant_model=models["gpt2"], do_sample=True, num_return_sequences=2), "assistant_model"),
             (dict(prompt_lookup_num_tokens=2, regex="[ab]+", num_beams=2), "prompt_lookup_num_tokens")]
    for kw, name in cases:
        with pytest.raises(ParameterError) as err:
            ours.generate([PROMPT], max_new_tokens=5, **kw)
        assert err.value.parameter == name, kw
    with pytest.raises(ParameterError, match="assistant_model"):
        ours.generate([PROMPT, PROMPT[:5]], max_new_tokens=5, assistant_model=models["gpt2"])


LISTING = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 6}, "count": {"type": "integer"}}, "required": ["name", "count"],
    "additionalProperties": False}, "maxItems": 3}}, "required": ["items"], "additionalProperties": False}


@pytest.mark.parametrize("layout", ["plain", "fused"])
def test_constrained_speculation_gives_the_plain_constrained_tokens(models, layout):
    """Under a structured-output constraint, prompt lookup and a draft model propose the constraint's forced tokens
    (a schema's keys, quotes, braces) or their own candidates cut where the matcher refuses them
    (constrained_proposer.py); each position is still decided under the mask after the tokens decided before it, so
    the tokens, scores, finish reasons and constraint_satisfied are plain constrained decoding's (greedy, seeded
    sampling, a left-padded batch with an unconstrained row, a stop string, the length limit), in fewer passes."""
    ours = models[layout]
    prompt = ours.tokenizer.encode('[{"name":"ab","count":1},{"name":"ab","count":1}]')
    regex = r"(ab cd ){2,5}[0-9]{3}"
    draft = models["fused" if layout == "plain" else "plain"]
    cases = [(dict(max_new_tokens=60), dict(json_schema=LISTING), dict(prompt_lookup_num_tokens=6)),
             (dict(max_new_tokens=60), dict(json_schema=LISTING), dict(assistant_model=draft)),

             (dict(max_new_tokens=50, do_sample=True, seed=5, temperature=0.8, top_k=20), dict(json_schema=LISTING),
              dict(prompt_lookup_num_tokens=6)),
             (dict(max_new_tokens=30, repetition_penalty=1.3), dict(regex=regex), dict(prompt_lookup_num_tokens=6)),
             (dict(max_new_tokens=40, stop=['"count"']), dict(json_schema=LISTING), dict(prompt_lookup_num_tokens=6)),
             (dict(max_new_tokens=9), dict(json_schema=LISTING), dict(prompt_lookup_num_tokens=6))]
    for kw, ckw, skw in cases:
        plain = ours.generate([prompt], output_scores=True, **kw, **ckw)
        spec = ours.generate([prompt], output_scores=True, **kw, **ckw, **skw)
        assert spec.new_tokens == plain.new_tokens, (kw, ckw, skw)
        assert spec.text == plain.text and spec.finish_reasons == plain.finish_reasons
        assert spec.constraint_satisfied == plain.constraint_satisfied
        np.testing.assert_allclose(np.stack(spec.scores), np.stack(plain.scores), atol=1e-4)
        assert 0 < spec.speculation.passes < len(spec.new_tokens[0]) - 1, (kw, ckw, skw)  # the schema forces text
    # a sampling draft draws its proposals from the same generator, so the draws differ from a plain run's: the
    # rows still follow the constraint (the distribution: test_constrained_proposer_on_several_rows drops q)
    sampled = ours.generate([prompt], max_new_tokens=80, do_sample=True, seed=3, top_k=20, json_schema=LISTING,
                            assistant_model=draft, num_assistant_tokens=4)
    assert sampled.constraint_satisfied == [sampled.finish_reasons[0] == "eos"] and sampled.speculation.accepted
    steps = list(ours.stream([prompt], max_new_tokens=60, json_schema=LISTING, prompt_lookup_num_tokens=6))
    assert [s.token_id for s in steps] == ours.generate([prompt], max_new_tokens=60, json_schema=LISTING).new_tokens[0]
    # a left-padded batch, one row unconstrained: as far as the shortest row's proposal, cut for the constrained one
    short = ours.tokenizer.encode('{"name":"ab","count":1}')
    both = dict(max_new_tokens=40, constraints=[{"json_schema": LISTING}, None])
    plain = ours.generate([prompt, short], **both)
    spec = ours.generate([prompt, short], **both, prompt_lookup_num_tokens=6)
    assert spec.new_tokens == plain.new_tokens and spec.constraint_satisfied == plain.constraint_satisfied
    assert spec.speculation.passes > 0


def test_a_draft_cut_by_the_constraint_does_not_grow_its_schedule(models):
    """A "heuristic" draft whose every proposal the constraint refuses (its first token already): the rounds
    propose nothing and the schedule shrinks to 1 (a cut counts as not wholly accepted), not +2 a round."""
    ours, draft = models["plain"], models["fused"]
    prompt = ours.tokenizer.encode('[{"name":"ab","count":1},{"name":"ab","count":1}]')
    kw = dict(max_new_tokens=30, assistant_model=draft, num_assistant_tokens=4, assistant_confidence_threshold=0.0,
              num_assistant_tokens_schedule="heuristic")
    res = ours.generate([prompt], regex="[a-d ]{30}", **kw)
    assert res.new_tokens == ours.generate([prompt], max_new_tokens=30, regex="[a-d ]{30}").new_tokens
    assert res.speculation.proposed == 0 and draft._speculative_tokens == 1.0
    del draft._speculative_tokens


def test_batched_constraints_propose_each_rows_forced_tokens(models):
    """Every row's constraint forcing tokens: each row proposes its own, as far as the shortest row's."""
    ours = models["plain"]
    prompts = [ours.tokenizer.encode("a"), ours.tokenizer.encode("bcd")]
    both = dict(max_new_tokens=40, constraints=[{"json_schema": LISTING}, {"regex": r"(ab cd ){2,5}[0-9]{3}"}])
    plain = ours.generate(prompts, **both)
    spec = ours.generate(prompts, **both, prompt_lookup_num_tokens=4)
    assert spec.new_tokens == plain.new_tokens and spec.constraint_satisfied == plain.constraint_satisfied
    assert spec.speculation.accepted > 0


def test_constrained_proposer_on_several_rows(models):
    """ConstrainedProposer on a batch: every active row forced -> each row its own forced tokens, as far as the
    shortest; a row without a constraint -> the inner proposal, cut where a constrained row refuses; a finished row
    takes no part; catch_up is asked first; a draft's probabilities are dropped."""
    from onnxlm.runtime.constraints import ConstraintProcessor, engine_for, make_constraint
    from onnxlm.runtime.decoding.constrained_proposer import ConstrainedProposer

    ours = models["plain"]
    eos, enc = [ours.generation_config.eos_token_id], ours.tokenizer.encode
    schema = {"type": "object", "properties": {"alpha": {"type": "integer"}}, "required": ["alpha"]}
    processor = ConstraintProcessor(engine_for(ours, eos, "json_schema"),
                                    [make_constraint("json_schema", schema), make_constraint("regex", "xyz[0-9]+"),
                                     None])
    forced = [m.compute_ff_tokens() for m in processor.matchers[:2]]
    assert len(forced[0]) > 1 and len(forced[1]) > 1

    class Inner:
        def __init__(self, candidates):
            self.candidates = candidates

        def propose(self, sequences, active):  # with a draft's probabilities, which the cut proposal drops
            return self.candidates, np.full((*self.candidates.shape, 7), 1 / 7)

    caught = []
    proposer = ConstrainedProposer(Inner(np.zeros((3, 0), np.int64)), processor, model=ours, max_length=100, eos_token_ids=eos,
                                   catch_up=caught.append)
    seqs = np.zeros((3, 4), np.int64)
    got, _ = proposer.propose(seqs, np.array([True, True, False]))
    k = min(map(len, forced))
    assert caught and got.shape == (3, k) and got[:2].tolist() == [f[:k] for f in forced] and proposer.forced
    digits = enc("xyz12", add_special_tokens=False)
    inner = np.array([enc('{"alpha":', add_special_tokens=False)[:2]] * 3, np.int64)
    inner = np.concatenate([inner, np.zeros((3, 1), np.int64)], axis=1)
    proposer.inner = Inner(inner)  # the third row (unconstrained) active: nothing forced, the inner proposal cut
    got, probs = proposer.propose(seqs, np.array([True, False, True]))
    assert not proposer.forced and probs is None  # sampled positions are drawn as plain, kept where equal
    assert got.shape[1] == processor.matchers[0].validate_tokens(inner[0].tolist()) < inner.shape[1]
    assert digits and processor.matchers[1].validate_tokens(digits) == len(digits)  # nothing was consumed


@pytest.mark.parametrize("name", ["plain", "fused", "gpt2"])
def test_speculation_at_the_position_limit_equals_plain(models, name):
    """A prompt 10 positions short of max_positions, 10 new tokens: proposals stop where the positions end (they
    ran past them: onnxruntime's Gather / GroupQueryAttention failed)."""
    ours = models[name]
    for token in (210, 0, 51):
        prompt = [[token] * (ours.max_positions - 10)]
        plain = ours.generate(prompt, max_new_tokens=10)
        spec = ours.generate(prompt, max_new_tokens=10, prompt_lookup_num_tokens=10)
        assert spec.new_tokens == plain.new_tokens and spec.speculation.accepted > 0


def test_a_draft_with_fewer_positions_than_the_call_is_refused(models):
    ours, draft = models["plain"], models["gpt2"]                       # 256 positions, the draft 128
    with pytest.raises(ParameterError, match=r"draft model's context is 128 positions.*reaches 150") as err:
        ours.generate([PROMPT[:1] * 120], max_new_tokens=30, assistant_model=draft)
    assert err.value.parameter == "assistant_model"
    assert ours.generate([PROMPT[:1] * 100], max_new_tokens=28, assistant_model=draft).new_tokens == \
        ours.generate([PROMPT[:1] * 100], max_new_tokens=28).new_tokens


def test_seq2seq_is_refused():
    from types import SimpleNamespace

    from onnxlm.runtime.decoding.candidates import check_speculation
    from onnxlm.runtime.generation_config import GenerationConfig
    with pytest.raises(ParameterError, match="seq2seq"):
        check_speculation(SimpleNamespace(is_encoder_decoder=True), GenerationConfig(prompt_lookup_num_tokens=2),
                          None, rows=1)


def test_cli_flags(tiny_llama, tiny_gpt2, capsys):
    from onnxlm.cli import main
    want = onnxlm.load(tiny_llama.onnx_dir).generate("abcabcabcabc", max_new_tokens=20).text[0]
    for extra in (["--prompt-lookup", "5"], ["--assistant", str(tiny_gpt2.onnx_dir)]):
        assert main(["generate", str(tiny_llama.onnx_dir), "abcabcabcabc", "--max-new-tokens", "20", "--json",
                     *extra]) == 0
        assert json.loads(capsys.readouterr().out)["text"] == want


def test_server_prompt_lookup_answers_the_plain_ids(tiny_llama):
    pytest.importorskip("starlette", reason="the server tests need the serve extra")
    from serve_util import live_tiny, post, sse_events
    srv = live_tiny(tiny_llama.onnx_dir)
    live = next(srv)
    try:
        text = onnxlm.load(tiny_llama.onnx_dir).tokenizer.decode(PROMPT[1:])
        plain = live.model.generate(text, max_new_tokens=40)
        body = dict(model="tiny", prompt=text, max_tokens=40, temperature=0)
        alone = post(live.url, "/v1/completions", {**body, "prompt_lookup_num_tokens": 6}).json()
        assert alone["choices"][0]["text"] == plain.text[0]
        assert alone["usage"]["completion_tokens"] == len(plain.new_tokens[0])
        streamed = sse_events(live.url, "/v1/completions", {**body, "prompt_lookup_num_tokens": 6, "stream": True})
        assert "".join(e["choices"][0]["text"] for e in streamed if isinstance(e, dict) and e.get("choices")) \
            == plain.text[0]                                # a streamed request decodes in the shared batch
        chat = [{"role": "user", "content": text}]
        got = post(live.url, "/v1/chat/completions", dict(model="tiny", messages=chat, max_tokens=30, temperature=0,
                                                           prompt_lookup_num_tokens=4)).json()
        assert got["choices"][0]["message"]["content"] == live.model.chat(chat, max_new_tokens=30).text[0]
        bad = post(live.url, "/v1/completions", {**body, "prompt_lookup_num_tokens": 0})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt_lookup_num_tokens"
    finally:
        srv.close()


@pytest.mark.parametrize("banned", [False, True], ids=["plain", "no_repeat_ngram"])
def test_lookup_proposes_what_transformers_proposes(banned):
    """Candidates equal transformers' PromptLookupCandidateGenerator's, also when a processor forbids some, cut to
    the max_length - t - 1 that a verify pass of k + 1 new positions may hold (transformers proposes past it and
    trims its matches there: the same ids)."""
    from transformers import LogitsProcessorList, NoRepeatNGramLogitsProcessor
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    from onnxlm.runtime.decoding.candidates import lookup
    from onnxlm.runtime.processors import NoRepeatNGramProcessor, ProcessorList
    ours_procs = ProcessorList([NoRepeatNGramProcessor(3)]) if banned else None
    ref_procs = LogitsProcessorList([NoRepeatNGramLogitsProcessor(3)]) if banned else None
    rng = np.random.default_rng(0)
    for _ in range(200):
        row = rng.integers(0, 6, size=int(rng.integers(2, 40)))          # a small vocabulary: many matches
        num, ngram, max_length = int(rng.integers(1, 8)), int(rng.integers(1, 4)), len(row) + int(rng.integers(1, 9))
        ref = PromptLookupCandidateGenerator(eos_token_id=torch.tensor([5]), num_output_tokens=num,
                                             max_matching_ngram_size=ngram, max_length=max_length,
                                             logits_processor=ref_procs, vocab_size=6)
        want = ref.get_candidates(torch.tensor(row)[None])[0][0, len(row):max_length - 1].tolist()
        got = lookup(row, num_tokens=num, max_ngram=ngram, max_length=max_length, eos=np.array([5]),
                     processors=ours_procs, vocab_size=6)
        assert got.tolist() == want, (row.tolist(), num, ngram, max_length)

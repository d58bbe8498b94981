"""The scheduler's draft model (runtime/decoding/scheduler_draft.py; the server's --draft): a request decoding alone
gets what model.generate gives it without speculation (ids, text, finish reasons; greedy and seeded sampling; with
processors, stop strings and EOS) whether the draft guesses well (the same weights: fewer passes than tokens) or
badly (another model of the same vocabulary: proposals refused); the draft holds no state until its request
decodes alone; a request's own settings; refusals name the parameter."""
from __future__ import annotations

import types

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.decoding.scheduler import Request, Scheduler
from onnxlm.runtime.decoding.scheduler_draft import (LoneDraft, ServerDraft, conformed, top_probability,
                                                     vocabulary_mismatch)
from onnxlm.runtime.errors import ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "ab cd ef ab cd ef ab"
OTHERS = ["Hello there", "The quick brown fox jumps"]


@pytest.fixture(scope="module")
def fused(tmp_path_factory, tiny_llama):
    from onnxlm.export import export_model
    return onnxlm.load(export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("draft-fused") / "onnx",
                                    progress=False, kv_layout="fused", validate=False))


@pytest.fixture(scope="module")
def drafts(tiny_llama, tiny_gpt2):
    """'same': the target's weights in the plain layout (it guesses right); 'other': a GPT-2 of the same vocabulary."""
    return {"same": onnxlm.load(tiny_llama.onnx_dir), "other": onnxlm.load(tiny_gpt2.onnx_dir)}


def _alone(model, server_draft: ServerDraft, prompt, kw, **req) -> tuple[Request, Scheduler]:
    sched = Scheduler(model, draft=server_draft)
    ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
    r = sched.add(Request(ids, model.resolve_config(kw), **req))
    while sched.busy:
        sched.step()
    assert r.done and r.error is None
    return r, sched


CASES = [dict(max_new_tokens=40, do_sample=False, eos_token_id=None),
         dict(max_new_tokens=30, do_sample=False, repetition_penalty=1.3),
         dict(max_new_tokens=40, do_sample=False, stop=[" cd"]),
         dict(max_new_tokens=2, do_sample=False)]


@pytest.mark.parametrize("which", ["same", "other"])
@pytest.mark.parametrize("sample", [False, True], ids=["greedy", "sample"])
def test_a_request_alone_with_a_draft_gets_its_solo_tokens(fused, drafts, which, sample):
    cases = CASES if not sample else [dict(c, do_sample=True, seed=11 + i, temperature=0.7, top_k=8)
                                      for i, c in enumerate(CASES)]
    draft = ServerDraft(drafts[which], fused, p_min=0.0)
    proposed = accepted = 0
    for kw in cases:
        req, sched = _alone(fused, draft, PROMPT, kw)
        solo = fused.generate(PROMPT, **kw)
        assert req.new_ids == solo.new_tokens, kw
        assert req.final_text == solo.text
        assert [r or "length" for r in req.reasons] == solo.finish_reasons
        assert sched.speculation.passes <= len(req.new_ids[0])
        proposed, accepted = proposed + sched.speculation.proposed, accepted + sched.speculation.accepted
    assert proposed > 0
    if which == "same" and not sample:  # its own weights: every greedy proposal holds, one pass for many tokens
        assert accepted == proposed
    if which == "other":
        assert accepted < proposed  # a wrong guess is refused, and the answer is still the model's own


@pytest.mark.parametrize("which", ["same", "other"])
def test_a_constrained_request_with_a_draft_gets_its_solo_tokens(fused, drafts, which):
    """Under a JSON schema the draft proposes without the constraint, its proposals cut where the constraint
    refuses, and the schema's forced tokens are proposed in between (the draft catches up on them): the request
    gets what generate gives it with the same schema, greedy and sampled."""
    from onnxlm.runtime.constraints import make_constraint
    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 12}, "n": {"type": "integer"}},
              "required": ["word", "n"], "additionalProperties": False}
    draft = ServerDraft(drafts[which], fused, p_min=0.0)
    for kw in (dict(max_new_tokens=40, do_sample=False), dict(max_new_tokens=40, do_sample=True, seed=4, top_k=8)):
        req, sched = _alone(fused, draft, PROMPT, kw, constraint=make_constraint("json_schema", schema))
        solo = fused.generate(PROMPT, **kw, json_schema=schema)
        assert req.new_ids == solo.new_tokens and req.final_text == solo.text, kw
        assert 0 < sched.speculation.passes < len(req.new_ids[0])


def test_a_constraints_cut_keeps_the_drafts_minimum(fused, drafts, monkeypatch):
    """A draft proposal the constraint cuts below --draft-min is not checked (a plain step), as an uncut short one;
    the constraint's own forced tokens are not the draft's and may be fewer."""
    from onnxlm.runtime.constraints import make_constraint
    from onnxlm.runtime.decoding import scheduler_speculation as SS
    sizes, propose = [], SS.ConstrainedProposer.propose

    def recorded(self, sequences, active):
        got = propose(self, sequences, active)
        sizes.append((got[0].shape[1], self.forced))
        return got

    monkeypatch.setattr(SS.ConstrainedProposer, "propose", recorded)
    for kind, value in (("regex", r"[a-z ]{3,40}"), ("choices", ["the cat", "the dog", "a fox jumps over"])):
        draft = ServerDraft(drafts["other"], fused, p_min=0.0, max_tokens=8, min_tokens=4)
        req, _ = _alone(fused, draft, "the cat the dog the fox", dict(max_new_tokens=30, do_sample=False),
                        constraint=make_constraint(kind, value))
        assert req.new_ids == fused.generate("the cat the dog the fox", max_new_tokens=30, do_sample=False,
                                             **{kind: value}).new_tokens
    assert sizes and all(k == 0 or k >= 4 for k, forced in sizes if not forced), sizes


def test_a_hybrid_model_with_a_draft(tiny_lfm2, drafts):
    """LFM2's convolution states keep a bounded history to roll back into: the draft's rounds are capped there, the
    tokens are the model's own."""
    lfm2 = onnxlm.load(tiny_lfm2.onnx_dir)
    draft = ServerDraft(drafts["same"], lfm2, max_tokens=64, p_min=0.0)
    assert draft.cap and draft.cap < 64
    for kw in [dict(max_new_tokens=100, do_sample=False, eos_token_id=None), CASES[1]]:
        req, sched = _alone(lfm2, draft, PROMPT, kw)
        assert req.new_ids == lfm2.generate(PROMPT, **kw).new_tokens, kw
        assert sched.speculation.proposed <= draft.cap * sched.speculation.passes


def test_the_draft_holds_nothing_until_its_request_decodes_alone(fused, drafts):
    """Joined by others, a request decodes plainly and its draft holds no state; alone again, the draft prefills
    its ids once and speculates; every request gets its solo tokens."""
    draft = ServerDraft(drafts["same"], fused, p_min=0.0)
    sched = Scheduler(fused, draft=draft)
    params = [dict(max_new_tokens=30, do_sample=False, eos_token_id=None), dict(max_new_tokens=6, do_sample=False),
              dict(max_new_tokens=5, do_sample=True, seed=3, num_return_sequences=2)]
    prompts = [PROMPT] + OTHERS
    reqs = [Request(fused.tokenizer.encode(p), fused.resolve_config(kw)) for p, kw in zip(prompts, params)]
    for r in reqs:
        sched.add(r)
    sched.step()
    proposers = {id(r): sched._runs[id(r)].proposer for r in reqs}
    assert isinstance(proposers[id(reqs[0])], LoneDraft) and isinstance(proposers[id(reqs[1])], LoneDraft)
    assert proposers[id(reqs[2])] is None  # n = 2 rows never speculate
    assert all(p.state is None for p in proposers.values() if p is not None)
    while sched.busy:
        sched.step()
    for prompt, kw, r in zip(prompts, params, reqs):
        assert r.new_ids == fused.generate(prompt, **kw).new_tokens, kw
    assert proposers[id(reqs[0])].state is not None and sched.speculation.passes > 0  # alone at the end
    assert proposers[id(reqs[1])].state is None  # finished before it was ever alone


def test_a_requests_own_draft_settings(fused, drafts):
    """Request.draft (llama.cpp's per-request speculative.n_max / n_min / p_min) over the scheduler's."""
    draft = ServerDraft(drafts["same"], fused, p_min=0.0)
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    want = fused.generate(PROMPT, **kw).new_tokens
    r, sched = _alone(fused, draft, PROMPT, kw, draft={"max_tokens": 0})
    assert r.new_ids == want and sched.speculation.passes == 0  # n_max 0: no draft
    r, sched = _alone(fused, draft, PROMPT, kw, draft={"max_tokens": 2})
    s = sched.speculation
    assert r.new_ids == want and s.passes > 0 and s.proposed <= 2 * s.passes
    r, sched = _alone(fused, draft, PROMPT, kw, draft={"max_tokens": 4, "min_tokens": 4, "p_min": 1.0})
    assert r.new_ids == want and sched.speculation.passes == 0  # p_min 1: one-token drafts, under n_min: dropped


def test_a_prediction_falls_back_to_the_draft(fused, drafts):
    draft = ServerDraft(drafts["same"], fused, p_min=0.0)
    kw = dict(max_new_tokens=24, do_sample=False, eos_token_id=None)
    want = fused.generate(PROMPT, **kw).new_tokens
    r, sched = _alone(fused, draft, PROMPT, kw, prediction=[5, 6, 7])  # never followed: the draft proposes
    assert r.new_ids == want and sched.speculation.accepted > 0


def test_a_draft_with_a_shorter_context_does_not_speculate(fused, tiny_llama):
    short = onnxlm.load(tiny_llama.onnx_dir)
    short.max_positions = 20
    server_draft = ServerDraft(short, fused)
    assert "the draft's context is 20 tokens" in server_draft.shorter_context()
    assert ServerDraft(fused, fused).shorter_context() is None
    r, sched = _alone(fused, server_draft, PROMPT, dict(max_new_tokens=30, do_sample=False))
    assert sched.speculation.passes == 0 and r.new_ids == fused.generate(PROMPT, max_new_tokens=30,
                                                                         do_sample=False).new_tokens


def test_the_vocabulary_check_reads_token_texts(fused, tiny_llama):
    """llama.cpp's check: the same token text for every id from 5 on (a vocabulary of the same size but other
    tokens is refused, naming the first id that differs), BOS/EOS ids equal, widths at most 128 apart."""
    import json

    from tokenizers import Tokenizer

    from onnxlm.runtime.tokenizer import TextTokenizer

    other = onnxlm.load(tiny_llama.onnx_dir)
    spec = json.loads(other.tokenizer.tokenizer.to_str())
    vocab = spec["model"]["vocab"]
    renamed = next(t for t, i in vocab.items() if i == 40)
    vocab["\u2603" + renamed] = vocab.pop(renamed)
    other.tokenizer = TextTokenizer(Tokenizer.from_str(json.dumps(spec)))
    with pytest.raises(ParameterError, match="its token 40 is '\u2603"):
        ServerDraft(other, fused)
    assert vocabulary_mismatch(onnxlm.load(tiny_llama.onnx_dir), fused) is None
    wider = onnxlm.load(tiny_llama.onnx_dir)
    wider.vocab_size = fused.vocab_size + 100  # a padded vocabulary (Qwen 2.5's sizes differ so): taken
    assert vocabulary_mismatch(wider, fused) is None
    wider.manifest = dict(wider.manifest, special_tokens={**wider.manifest.get("special_tokens", {}),
                                                          "eos_token_id": 7})
    assert "eos_token_id is 7" in vocabulary_mismatch(wider, fused)


def test_conformed_scores_cut_or_pad_to_the_models_ids():
    logits = np.array([[1.0, 3.0, 2.0]], np.float32)
    assert conformed(logits, 3) is logits
    assert conformed(logits, 2).tolist() == [[1.0, 3.0]]
    padded = conformed(logits, 5)
    assert padded.shape == (1, 5) and np.isneginf(padded[0, 3:]).all() and int(np.argmax(padded)) == 1


def test_top_probability():
    scores = np.array([1.0, 2.0, -np.inf, 0.5], np.float32)
    p = np.exp(scores - scores.max())
    assert top_probability(scores) == pytest.approx(float(p.max() / p.sum()), rel=1e-6)
    assert top_probability(np.full(3, -np.inf, np.float32)) == 0.0


def test_refusals_name_the_parameter(fused, drafts, tiny_t5):
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    with pytest.raises(ParameterError, match="vocabulary has 999 ids"):
        ServerDraft(types.SimpleNamespace(start=None, vocab_size=999, is_encoder_decoder=False), fused)
    with pytest.raises(ParameterError, match="got a seq2seq model; the draft must be a decoder-only"):
        ServerDraft(t5, fused)
    with pytest.raises(ParameterError, match="draft"):
        ServerDraft(t5, fused)
    with pytest.raises(ParameterError, match="seq2seq"):
        ServerDraft(drafts["same"], t5)
    for name, kw in (("draft_max", dict(max_tokens=0)), ("draft_max", dict(max_tokens=65)),
                     ("draft_max", dict(max_tokens=True)), ("draft_min", dict(min_tokens=17)),
                     ("draft_min", dict(min_tokens=-1)), ("draft_p_min", dict(p_min=1.5)),
                     ("draft_p_min", dict(p_min=float("nan")))):
        with pytest.raises(ParameterError) as e:
            ServerDraft(drafts["same"], fused, **kw)
        assert e.value.parameter == name, kw
    with pytest.raises(ParameterError, match="not both"):
        Scheduler(fused, draft=ServerDraft(drafts["same"], fused), prompt_lookup=6)
    with pytest.raises(ParameterError, match="ServerDraft"):
        Scheduler(fused, draft=drafts["same"])

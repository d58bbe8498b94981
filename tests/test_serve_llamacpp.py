"""llama.cpp's native POST /completion (onnxlm/serve/llamacpp.py) on the tiny Llama: greedy ids equal to generate's,
llama.cpp's windowed penalties and logit biases equal to a step-by-step reference over the model's logits, its
sampler order (temperature last) against a hand-computed chain, its answer fields (stop_type, stopping_word,
tokens_cached, completion_probabilities, response_fields), the stream's events without [DONE], several prompts and
mixed prompts, and every refused field named in a 400. And the OpenAI endpoints' extras llama.cpp's and vLLM's
users send there: min_p, ignore_eos, usage.prompt_tokens_details.cached_tokens."""
from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server tests need the serve extra")

from onnxlm.runtime.llama_samplers import PenaltiesProcessor, sampler_chain  # noqa: E402
from onnxlm.runtime.processors import SequenceBiasProcessor, log_softmax, sample_tokens, softmax  # noqa: E402
from serve_util import live_tiny, post, same_or_tie, sse_events  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def live(tiny_llama):
    yield from live_tiny(tiny_llama.onnx_dir)


def complete(live, **body):
    r = post(live.url, "/completion", body)
    assert r.status_code == 200, r.text
    return r.json()


def reference(model, ids: list[int], n: int, procs: list) -> list[int]:
    """Greedy ids after ``procs`` over the model's logits, one full pass per token (no KV cache, no scheduler)."""
    seq, eos = list(ids), set(model.generation_config.eos_token_ids or [])
    for _ in range(n):
        scores = model.logits(np.asarray([seq], np.int64))[:, -1]                # [1, V]
        for p in procs:
            scores = p(np.asarray([seq], np.int64), scores)
        seq.append(int(np.argmax(scores[0])))
        if seq[-1] in eos:
            break
    return seq[len(ids):]


# ------------------------------------------------------------------------------------------------ the processors
def test_penalties_follow_llama_cpp_over_the_last_n_ids():
    ids = np.array([[5, 1, 2, 2, 3]])                                           # window of 3: 2, 2, 3
    scores = np.array([[1.0, 2.0, 3.0, -4.0, 5.0, 6.0]], np.float32)
    out = PenaltiesProcessor(3, 2.0, 0.5, 0.25)(ids, scores)
    want = scores.copy()
    want[0, 2] = 3.0 / 2 - (2 * 0.5 + 0.25)                                     # seen twice, positive: divided
    want[0, 3] = -4.0 * 2 - (1 * 0.5 + 0.25)                                    # seen once, negative: multiplied
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(PenaltiesProcessor(-1, 2.0)(ids, scores)[0, [1, 5]], [1.0, 6.0 / 2])
    np.testing.assert_array_equal(PenaltiesProcessor(0, 2.0)(ids, scores), scores)  # 0: off


def test_the_chain_runs_temperature_last_as_llama_cpp():
    """top_p 0.8 at temperature 0.5: llama.cpp's order keeps the tokens of 80 % of the untempered mass (3 here);
    transformers' order (temperature first) would keep only 2."""
    logits = np.log(np.array([[0.5, 0.25, 0.15, 0.1]], np.float32))
    chain = sampler_chain(temperature=0.5, top_k=0, top_p=0.8, min_p=0.0)
    out = logits
    for p in chain:
        out = p(None, out)
    assert np.isfinite(out[0]).tolist() == [True, True, True, False]
    np.testing.assert_allclose(softmax(out)[0, :3], softmax(logits[:, :3] / 0.5)[0], rtol=1e-6)
    hot = softmax(logits / 0.5)[0]
    assert hot[0] + hot[1] > 0.8                                                # temperature first: 2 kept
    with pytest.raises(Exception, match="samplers"):
        sampler_chain(["top_k", "dry"])


# ------------------------------------------------------------------------------------------------ the endpoint
def test_greedy_equals_generate_with_llama_cpp_fields(live):
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    want = model.generate([ids], max_new_tokens=8, do_sample=False)
    got = complete(live, prompt=PROMPT, n_predict=8, temperature=0, return_tokens=True)
    same_or_tie(model, ids, list(want.new_tokens[0]), got["content"], want.text[0], "/completion greedy")
    assert got["tokens"] == list(want.new_tokens[0])
    assert got["stop"] is True and got["tokens_evaluated"] == len(ids)
    assert got["tokens_predicted"] == len(got["tokens"])
    assert got["stop_type"] == ("eos" if want.finish_reasons[0] == "eos" else "limit")
    assert got["prompt"] == model.tokenizer.decode(ids, skip_special_tokens=False)
    assert got["generation_settings"]["n_predict"] == 8 and got["generation_settings"]["top_k"] == 40
    assert got["id_slot"] == -1 and got["model"] == "tiny" and got["timings"]["predicted_n"] == len(got["tokens"])
    again = complete(live, prompt=PROMPT, n_predict=8, temperature=0)        # the prefix cache holds the prompt
    assert again["timings"]["cache_n"] > 0 and again["content"] == got["content"]
    assert again["tokens_cached"] == len(ids) + len(got["tokens"]) - 1        # what the model holds after it
    assert complete(live, prompt=PROMPT, n_predict=0)["tokens_predicted"] == 0


def test_n_predict_0_evaluates_the_prompt_into_the_cache(live):
    """llama.cpp's n_predict 0 (llama.vim's cache warm-up): no tokens, but the prompt is evaluated, and the same
    prompt sent next finds it in the prefix cache; streamed too (only the final object)."""
    prompt = PROMPT + " warm me up, a fresh prompt of its own"
    warm = complete(live, prompt=prompt, n_predict=0, return_tokens=True, n_probs=2)
    assert (warm["tokens_predicted"], warm["tokens"], warm["content"], warm["stop_type"]) == (0, [], "", "limit")
    t = warm["timings"]
    assert warm["completion_probabilities"] == [] and t["prompt_n"] > 0
    assert t["prompt_n"] + t["cache_n"] == warm["tokens_evaluated"] and t["predicted_n"] == 0
    assert warm["tokens_cached"] == warm["tokens_evaluated"] and warm["timings"]["prompt_ms"] > 0
    after = complete(live, prompt=prompt, n_predict=2, temperature=0)
    assert after["timings"]["cache_n"] >= warm["tokens_evaluated"] - 1, after["timings"]
    events = sse_events(live.url, "/completion", {"prompt": prompt + " again", "n_predict": 0, "stream": True})
    assert len(events) == 1 and events[0]["stop"] is True and events[0]["tokens_predicted"] == 0


def test_penalties_and_biases_equal_a_step_by_step_reference(live):
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    first = complete(live, prompt=PROMPT, n_predict=1, temperature=0, return_tokens=True)["tokens"][0]
    body = {"prompt": PROMPT, "n_predict": 10, "temperature": 0, "return_tokens": True, "repeat_penalty": 1.5,
            "repeat_last_n": 6, "frequency_penalty": 0.4, "presence_penalty": 0.3, "logit_bias": [[first, -2.5], [7, False]]}
    got = complete(live, **body)["tokens"]
    procs = [SequenceBiasProcessor({(first,): -2.5, (7,): -math.inf}), PenaltiesProcessor(6, 1.5, 0.4, 0.3)]
    want = reference(model, ids, 10, procs)
    same_or_tie(model, ids, want, model.tokenizer.decode(got), model.tokenizer.decode(want), "penalties")
    plain = complete(live, prompt=PROMPT, n_predict=10, temperature=0, return_tokens=True)["tokens"]
    assert got != plain and 7 not in got                                        # they changed the answer


def test_seeded_sampling_draws_from_the_chain(live):
    """The server's draws with a seed equal a loop drawing from llama.cpp's chain with the same uniforms (one
    ``default_rng(seed).random(1)`` per token, as the scheduler draws for a one-row request)."""
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    knobs = {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.05}
    got = complete(live, prompt=PROMPT, n_predict=8, seed=7, return_tokens=True, **knobs)["tokens"]
    chain, rng, seq = sampler_chain(**knobs), np.random.default_rng(7), list(ids)
    for _ in got:
        scores = model.logits(np.asarray([seq], np.int64))[:, -1]                # [1, V]
        for p in chain:
            scores = p(np.asarray([seq], np.int64), scores)
        seq.append(int(sample_tokens(scores, rng)[0]))
    assert seq[len(ids):] == got


def test_ignore_eos_and_stop_words(live):
    model = live.model
    eos = model.generation_config.eos_token_ids[0]
    assert complete(live, prompt=PROMPT, n_predict=5, temperature=0, logit_bias={str(eos): 100})["stop_type"] == "eos"
    kept = complete(live, prompt=PROMPT, n_predict=5, temperature=0, logit_bias={str(eos): 100}, ignore_eos=True,
                    return_tokens=True)
    assert kept["stop_type"] == "limit" and len(kept["tokens"]) == 5 and eos not in kept["tokens"]
    text = complete(live, prompt=PROMPT, n_predict=12, temperature=0)["content"]
    word = text.strip()[2:4]
    cut = complete(live, prompt=PROMPT, n_predict=12, temperature=0, stop=["never there", word])
    assert cut["stop_type"] == "word" and cut["stopping_word"] == word
    assert cut["content"] == text[:text.index(word)]


def test_probabilities_and_response_fields(live):
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    got = complete(live, prompt=PROMPT, n_predict=3, temperature=0, n_probs=3, return_tokens=True)
    probs = got["completion_probabilities"]
    assert [p["id"] for p in probs] == got["tokens"] and all(len(p["top_logprobs"]) == 3 for p in probs)
    logp = log_softmax(model.logits(np.asarray([ids + got["tokens"]], np.int64))[0, len(ids) - 1:-1])
    np.testing.assert_allclose([p["logprob"] for p in probs], logp[np.arange(3), got["tokens"]], atol=1e-4)
    assert probs[0]["top_logprobs"][0]["id"] == got["tokens"][0]
    picked = complete(live, prompt=PROMPT, n_predict=2, response_fields=["content", "generation_settings/n_predict",
                                                                         "nothing/here"])
    assert set(picked) == {"content", "generation_settings/n_predict"} and picked["generation_settings/n_predict"] == 2


def test_the_stream_ends_with_the_final_object_and_no_done(live):
    whole = complete(live, prompt=PROMPT, n_predict=6, temperature=0, return_tokens=True)
    events = sse_events(live.url, "/completion", {"prompt": PROMPT, "n_predict": 6, "temperature": 0, "stream": True,
                                                  "n_probs": 1})
    assert "[DONE]" not in events
    tokens, final = events[:-1], events[-1]
    assert final["stop"] is True and final["content"] == "" and final["stop_type"] == whole["stop_type"]
    assert "".join(e["content"] for e in tokens) == whole["content"]
    assert [e["tokens"][0] for e in tokens] == whole["tokens"] and all(not e["stop"] for e in tokens)
    assert all(len(e["completion_probabilities"]) == 1 for e in tokens)


def test_several_prompts_and_mixed_prompts(live):
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    tail = model.tokenizer.encode(" jumps", add_special_tokens=False)
    both = complete(live, prompt=[PROMPT, ids], n_predict=4, temperature=0)
    assert isinstance(both, list) and [b["index"] for b in both] == [0, 1] and both[0]["content"] == both[1]["content"]
    mixed = complete(live, prompt=ids + [" jumps"], n_predict=2, temperature=0)
    assert mixed["tokens_evaluated"] == len(ids) + len(tail)                   # no BOS before a string that follows ids
    events = sse_events(live.url, "/completion", {"prompt": [PROMPT, "Hello"], "n_predict": 3, "stream": True})
    assert sorted(e["index"] for e in events if e["stop"]) == [0, 1]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x", "mirostat": 2}, "mirostat"),
    ({"prompt": "x", "dry_multiplier": 0.8}, "dry_multiplier"),
    ({"prompt": "x", "samplers": ["top_k", "bogus"]}, "samplers"),
    ({"prompt": "x", "samplers": "kq"}, "samplers"),
    ({"prompt": "x", "post_sampling_probs": True}, "post_sampling_probs"),
    ({"prompt": "x", "n_predict": -2}, "n_predict"),
    ({"prompt": "x", "seed": -5}, "seed"),
    ({"prompt": "x", "stop": ["\ud800"]}, "stop"),
    ({"prompt": "x\ud800"}, "prompt"),
    ({"prompt": [1, "\ud800"]}, "prompt"),
    ({"prompt": "x", "logit_bias": {"\ud800": 1}}, "logit_bias"),
    ({"prompt": "x", "logit_bias": {"-1": 1}}, "logit_bias"),
    ({"prompt": "x", "temperature": 1e39}, "temperature"),
    ({"prompt": "x", "repeat_penalty": 1e-50}, "repeat_penalty"),
    ({"prompt": "x", "n_indent": 1.5}, "n_indent"),
    ({"prompt": "x", "repeat_penalty": 0}, "repeat_penalty"),
    ({"prompt": "x", "logit_bias": [[10**9, 1]]}, "logit_bias"),
    ({"prompt": "x", "json_schema": {"type": "object"}, "grammar": "root ::= \"a\""}, "json_schema"),
    ({"prompt": "x", "json_schema": {"type": "intger"}}, "json_schema"),
    ({"prompt": "x", "unknown_field": 1}, "unknown_field"),
    ({"prompt": "x", "n_cmpl": 2}, "n_cmpl"),
    ({"prompt": "x", "return_progress": "yes"}, "return_progress"),
    ({"prompt": [1.5]}, "prompt"),
    ({"prompt": "x", "n_probs": 101}, "n_probs"),
    ({"prompt": "x", "input_prefix": "a"}, "input_prefix"),
])
def test_refused_fields_are_named(live, body, param):
    r = post(live.url, "/completion", body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_neutral_values_of_missing_samplers_are_accepted(live):
    got = complete(live, prompt=PROMPT, n_predict=2, mirostat=0, dry_multiplier=0, xtc_probability=0,
                   top_n_sigma=-1, cache_prompt=True, id_slot=-1, n_keep=0, samplers=["dry", "top_k", "temperature"],
                   seed=42, model="whatever", t_max_prompt_ms=500, typical_p=0, top_p=-1, min_p=2, n_cmpl=1, n=1,
                   n_cache_reuse=256, return_progress=True, sse_ping_interval=30)
    assert got["generation_settings"]["samplers"] == ["top_k", "temperature"]


def test_the_samplers_order_is_the_one_asked_for(live):
    """"pt" (top_p, then temperature) and "tp" draw from different distributions: each equals its own chain's draws;
    at temperature 0 the temperature step keeps the top token, so a penalty after it changes nothing."""
    model = live.model
    ids = model.tokenizer.encode(PROMPT)
    knobs = {"temperature": 1.7, "top_p": 0.3, "top_k": 0, "min_p": 0.0}
    got = {order: complete(live, prompt=PROMPT, n_predict=6, seed=11, samplers=order, return_tokens=True,
                           **knobs)["tokens"] for order in ("pt", "tp")}
    for order, names in (("pt", ["top_p", "temperature"]), ("tp", ["temperature", "top_p"])):
        chain, rng, seq = sampler_chain(names, **knobs), np.random.default_rng(11), list(ids)
        for _ in got[order]:
            scores = model.logits(np.asarray([seq], np.int64))[:, -1]            # [1, V]
            for p in chain:
                scores = p(np.asarray([seq], np.int64), scores)
            seq.append(int(sample_tokens(scores, rng)[0]))
        assert seq[len(ids):] == got[order], order
    assert got["pt"] != got["tp"]
    plain = complete(live, prompt=PROMPT, n_predict=6, temperature=0, return_tokens=True)["tokens"]
    late = complete(live, prompt=PROMPT, n_predict=6, temperature=0, samplers=["temperature", "penalties"],
                    repeat_penalty=3.0, return_tokens=True)["tokens"]
    assert late == plain


def test_a_bias_that_empties_a_grammar_is_refused_by_name(live):
    """llama.cpp's biases come before the grammar's mask: a bias that leaves the grammar no token is a 400 naming
    grammar, greedy or sampled (it had been an arbitrary token with the grammar broken after it)."""
    for temperature in (0, 0.8):
        r = post(live.url, "/completion", {"prompt": PROMPT, "n_predict": 4, "temperature": temperature,
                                           "grammar": 'root ::= "ab"', "logit_bias": [["a", False]]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "grammar", r.text


def test_biases_add_up_and_keys_read_as_llama_cpp_reads_them(live):
    from onnxlm.serve.llamacpp_request import bias_ids

    model = live.model
    assert bias_ids(model, [[5, 1], [5, 2], ["aa", 0.5]]) == {5: 3.0, 97: 1.0}
    assert bias_ids(model, {" 5": 1, "+6": False}) == {5: 1.0, 6: -math.inf}


def test_biases_adding_up_past_float32_are_refused_by_name(live):
    """Two biases of 3e38 for one token add up past float32's largest number: a 400 naming logit_bias before any
    work (the cast to float32 had overflowed to an infinite logit, with a RuntimeWarning)."""
    from onnxlm.serve.llamacpp_request import bias_ids

    r = post(live.url, "/completion", {"prompt": PROMPT, "n_predict": 8,
                                       "logit_bias": [[" quick", 3e38], [" quick", 3e38]]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logit_bias", r.text
    assert "float32" in r.json()["error"]["message"]
    assert bias_ids(live.model, [[5, 3e38], [5, False]]) == {5: -math.inf}  # a ban stays a ban


def test_a_users_mistake_found_in_the_engine_is_no_server_error(live, caplog):
    """A request the engine refuses (a bias that empties a grammar; scores a huge bias makes infinite) answers 400
    without counting in ``errors`` ("requests the model failed (500)") or logging an ERROR: one INFO line."""
    import logging

    import httpx

    before = httpx.get(live.url + "/metrics", timeout=5).json()["errors"]
    with caplog.at_level(logging.INFO, logger="onnxlm.serve"):
        for body in ({"grammar": 'root ::= "ab"', "logit_bias": [["a", False]], "temperature": 0},
                     {"logit_bias": [[5, 3.4e38]], "temperature": 0.5}):
            r = post(live.url, "/completion", {"prompt": PROMPT, "n_predict": 4, **body})
            assert r.status_code == 400, r.text
    assert httpx.get(live.url + "/metrics", timeout=5).json()["errors"] == before
    mine = [rec for rec in caplog.records if rec.name == "onnxlm.serve"]
    assert not [rec for rec in mine if rec.levelno >= logging.WARNING], [rec.getMessage() for rec in mine]
    assert len([rec for rec in mine if "refused" in rec.getMessage()]) == 2


def test_context_limits(live):
    model = live.model
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 250, 200)]
    cut = complete(live, prompt=ids, n_predict=100, temperature=0, ignore_eos=True, return_tokens=True)
    assert cut["truncated"] and cut["stop_type"] == "limit" and len(cut["tokens"]) == model.max_positions - 200
    capped = complete(live, prompt=PROMPT, n_predict=10**9, temperature=0, ignore_eos=True)
    assert capped["tokens_predicted"] == 128 and not capped["truncated"]       # the server's --max-tokens
    r = post(live.url, "/completion", {"prompt": ids + ids, "n_predict": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


# ------------------------------------------------------------------------------------------------ line limits
def test_line_limits_follow_llama_cpp():
    from onnxlm.serve.llamacpp_limits import LineLimits

    lim = LineLimits(n_indent=2, t_max_predict_ms=0)
    pieces = ["a", "\n", " ", " ", "b", "\n", "c"]
    ended = [lim.push(p, now=0.0) for p in pieces]
    assert ended == [False] * 6 + [True] and lim.text == "a\n  b\n"          # the unindented line cut away
    lim = LineLimits(n_indent=0, t_max_predict_ms=10)
    assert [lim.push(p, now=t) for p, t in (("x", 0.0), ("\n", 0.005), ("y", 0.02), ("\n", 0.03))] == [
        False, False, False, True]                                            # a newline after 10 ms ends it


def test_n_indent_and_t_max_predict_ms_end_the_answer(live):
    pytest.importorskip("llguidance", reason="the grammar needs the structured extra")
    lines = 'root ::= "a\\n  b\\nc\\nd"'
    got = complete(live, prompt=PROMPT, n_predict=20, temperature=0, grammar=lines, n_indent=2)
    assert got["content"] == "a\n  b\n" and got["stop_type"] == "limit"
    events = sse_events(live.url, "/completion", {"prompt": PROMPT, "n_predict": 20, "temperature": 0,
                                                  "grammar": lines, "n_indent": 2, "stream": True})
    assert events[-1]["stop"] is True and events[-1]["stop_type"] == "limit"
    many = 'root ::= "x\\n"{40}'
    whole = complete(live, prompt=PROMPT, n_predict=100, temperature=0, grammar=many)["content"]
    timed = complete(live, prompt=PROMPT, n_predict=100, temperature=0, grammar=many, t_max_predict_ms=1)
    assert timed["stop_type"] == "limit" and timed["content"].endswith("\n") and len(timed["content"]) < len(whole)


# ------------------------------------------------------------------------------------------------ /infill
@pytest.fixture(scope="module")
def fim_live(tiny_llama, tmp_path_factory):
    """The tiny Llama with FIM tokens: its byte tokens 1-6 renamed <fim_prefix>, <fim_suffix>, <fim_middle>,
    <fim_pad> (StarCoder's names), <|file_sep|>, <|fim_repo|> (Qwen's), found by their text as llama.cpp finds them."""
    import hashlib
    import json
    import shutil

    art = tmp_path_factory.mktemp("fim") / "tiny-fim"
    shutil.copytree(tiny_llama.onnx_dir, art)
    spec = json.loads((art / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    names = {v: k for k, v in vocab.items()}
    for i, text in ((1, "<fim_prefix>"), (2, "<fim_suffix>"), (3, "<fim_middle>"), (4, "<fim_pad>"),
                    (5, "<|file_sep|>"), (6, "<|fim_repo|>")):
        del vocab[names[i]]
        vocab[text] = i
    data = json.dumps(spec).encode()
    (art / "tokenizer.json").write_bytes(data)
    manifest = json.loads((art / "onnxlm.json").read_text())
    manifest["files"]["tokenizer.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / "onnxlm.json").write_text(json.dumps(manifest))
    yield from live_tiny(art)


@pytest.mark.parametrize("batch", [2048, 64])
def test_infill_builds_llama_cpp_s_fim_prompt(fim_live, live, monkeypatch, batch):
    """The FIM prompt as llama.cpp's format_infill builds it: with its 2048-token batch the 256-token context has no
    room for the extra chunks; with a 64-token batch they come first (repo name, each chunk after a file separator,
    then the current file's), the prefix keeps its last 48 tokens and the suffix its first 16 - 2 - len(prompt)."""
    from onnxlm.serve import llamacpp_infill

    monkeypatch.setattr(llamacpp_infill, "N_BATCH", batch)
    tok = fim_live.model.tokenizer
    body = {"input_prefix": "def f(x):\n    \"\"\"Twice x, plus one.\"\"\"\n    y = x * 2 + 1\n    return",
            "input_suffix": "\n\nprint(f(2))\n",
            "prompt": " x", "input_extra": [{"filename": "a.py", "text": "import os\n"}, {"text": "b"}],
            "n_predict": 4, "temperature": 0, "return_tokens": True}
    r = post(fim_live.url, "/infill", body)
    assert r.status_code == 200, r.text
    got = r.json()
    plain = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    prefix, suffix = plain(body["input_prefix"]), plain(body["input_suffix"])
    extra = []
    if batch == 64:
        extra = [6] + plain("myproject\n") + [5] + plain("a.py\n") + plain("import os\n") + [5] + plain("tmp\n") + \
            plain("b") + [5] + plain("filename\n")
        assert len(prefix) > 48 and len(suffix) > 12                          # both cut
        prefix, suffix = prefix[-48:], suffix[:16 - 2 - 2]
    want = extra + [257, 1] + prefix + plain(" x") + [2] + suffix + [3]
    assert got["tokens_evaluated"] == len(want) and got["prompt"] == tok.decode(want, skip_special_tokens=False)
    same = complete(fim_live, prompt=want, n_predict=4, temperature=0, return_tokens=True)
    assert got["tokens"] == same["tokens"]
    if batch == 64:
        return
    r = post(live.url, "/infill", {"input_prefix": "a", "input_suffix": "b"})   # no FIM tokens
    assert r.status_code == 400 and r.json()["error"]["code"] == "infill_not_supported"
    r = post(fim_live.url, "/infill", {"input_prefix": "a", "input_suffix": "b", "input_extra": [{"text": 3}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input_extra"


def test_a_token_holding_part_of_a_character_is_named_as_llama_cpp_names_it():
    """completion_probabilities' token: its bytes without the character its end leaves unfinished (llama.cpp's
    validate_utf8), other invalid bytes replaced; bytes stay whole."""
    from onnxlm.serve.llamacpp import piece_text
    emoji = "🎉".encode()
    assert piece_text(b" " + emoji[:2]) == " " and piece_text(emoji) == "🎉" and piece_text("é".encode()) == "é"
    assert piece_text(emoji[2:]) == "\ufffd\ufffd" and piece_text(b"\xf0" + "é".encode()) == ""
    assert piece_text(b"ab\xc3") == "ab" and piece_text(b"") == ""


def test_llama_cpp_s_endpoints_read_any_body_and_model_as_llama_cpp(live):
    """llama.cpp's own endpoints read a JSON body whatever its Content-Type (curl -d sends a form type) and a
    single-model server answers whatever model the body names; the OpenAI endpoints keep theirs (400, 404); POST
    /props and slot actions are 501 as llama.cpp's without --props / a save path."""
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(live.url + "/completion", content=b'{"prompt": "Hi", "n_predict": 2}', headers=form)
    assert r.status_code == 200 and r.json()["tokens_predicted"] == 2, r.text
    for path, body in (("/tokenize", {"content": "Hi", "model": "other"}), ("/detokenize", {"tokens": [72]}),
                       ("/embedding", {"content": "Hi", "model": "other"})):
        r = httpx.post(live.url + path, content=json.dumps(body).encode(), headers=form)
        assert r.status_code in (200, 400), (path, r.text)
        assert r.status_code == 200 or r.json()["error"]["code"] != "model_not_found", (path, r.text)
    r = httpx.post(live.url + "/v1/completions", content=b'{"prompt": "Hi"}', headers=form)
    assert r.status_code == 400
    assert post(live.url, "/tokenize", {"prompt": "Hi", "model": "other"}).status_code == 404  # vLLM's form
    assert post(live.url, "/tokenize", {"content": "Hi", "model": 5}).json()["error"]["param"] == "model"
    r = post(live.url, "/props", {"n_ctx": 5})
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    for action, status in (("erase", 501), ("save", 501), ("restore", 501), ("drop", 400)):
        r = post(live.url, f"/slots/0?action={action}", {"filename": "x.bin"})
        assert r.status_code == status, (action, r.text)


def test_llama_vim_s_requests_are_answered(fim_live):
    """llama.vim's two /infill requests as it sends them: the completion (samplers top_k, top_p, infill: llama.cpp's
    infill step, its kept tokens the ones runtime/llama_samplers.InfillProcessor keeps) and the cache warm-up
    (n_predict 0, response_fields [""]: llama.cpp leaves a missing name out, so {})."""
    body = {"id_slot": 0, "input_prefix": "def add(a, b):\n", "input_suffix": "\n", "prompt": "    return",
            "input_extra": [{"text": "import os\n", "time": 1, "filename": "a.py"}], "n_predict": 8, "stop": [],
            "n_indent": 4, "top_k": 40, "top_p": 0.90, "samplers": ["top_k", "top_p", "infill"], "stream": False,
            "cache_prompt": True, "t_max_prompt_ms": 500, "t_max_predict_ms": 1000, "seed": 3,
            "response_fields": ["content", "timings/prompt_n", "timings/predicted_n", "truncated", "tokens_cached"]}
    r = post(fim_live.url, "/infill", body)
    assert r.status_code == 200, r.text
    assert set(r.json()) == {"content", "timings/prompt_n", "timings/predicted_n", "truncated", "tokens_cached"}
    warm = {"id_slot": 0, "input_prefix": "", "input_suffix": "", "prompt": "", "n_predict": 0, "temperature": 0.0,
            "input_extra": [{"text": "import os\n", "time": 1, "filename": "a.py"}], "samplers": [],
            "stream": False, "cache_prompt": True, "t_max_prompt_ms": 1, "t_max_predict_ms": 1,
            "response_fields": [""]}
    r = post(fim_live.url, "/infill", warm)
    assert r.status_code == 200 and r.json() == {}, r.text
    # the infill step in the chain: every token drawn is one the step keeps after top-k and top-p
    model = fim_live.model
    got = complete(fim_live, prompt="def f(", n_predict=6, seed=5, samplers=["top_k", "top_p", "infill"],
                   top_k=40, top_p=0.9, return_tokens=True)["tokens"]
    from onnxlm.serve.llamacpp_infill import end_of_generation_ids, infill_vocab
    chain = sampler_chain(["top_k", "top_p", "infill"], top_k=40, top_p=0.9,
                          vocab=infill_vocab(model, end_of_generation_ids(model)))
    seq = model.tokenizer.encode("def f(")
    for token in got:
        scores = model.logits(np.asarray([seq], np.int64))[:, -1]
        for p in chain:
            scores = p(np.asarray([seq], np.int64), scores)
        assert np.isfinite(scores[0, token]), token
        seq.append(token)


# ------------------------------------------------------------------------------------------------ the OpenAI endpoints
def test_openai_endpoints_take_min_p_and_ignore_eos_and_count_cached_tokens(live):
    model = live.model
    eos = model.generation_config.eos_token_ids[0]
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 1.0, "seed": 3, "min_p": 0.3}
    got = post(live.url, "/v1/completions", body).json()
    solo = model.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=3, temperature=1.0, top_k=None, top_p=1.0,
                          min_p=0.3)
    assert got["choices"][0]["text"] == solo.text[0]
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] > 0           # the tests above sent this prompt
    pushed = {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logit_bias": {str(eos): 100}}
    assert post(live.url, "/v1/completions", pushed).json()["usage"]["completion_tokens"] == 1
    kept = post(live.url, "/v1/completions", {**pushed, "ignore_eos": True}).json()
    assert kept["usage"]["completion_tokens"] == 4 and kept["choices"][0]["finish_reason"] == "length"
    assert post(live.url, "/v1/completions", {**body, "min_p": 1.5}).json()["error"]["param"] == "min_p"
    assert post(live.url, "/v1/completions", {**body, "stop": ["\ud800"]}).json()["error"]["param"] == "stop"


def test_fim_end_tokens_end_generation_on_every_llama_cpp_endpoint(fim_live):
    """<fim_pad> and <|file_sep|> are among llama.cpp's end-of-generation ids: pushed up, they end a /completion at
    once (stop_type eos), and ignore_eos bans them."""
    for token in (4, 5):
        got = complete(fim_live, prompt=PROMPT, n_predict=5, temperature=0, logit_bias=[[token, 100]],
                       return_tokens=True)
        assert got["tokens"] == [token] and got["stop_type"] == "eos"
        kept = complete(fim_live, prompt=PROMPT, n_predict=5, temperature=0, logit_bias=[[token, 100]],
                        ignore_eos=True, return_tokens=True)
        assert token not in kept["tokens"] and len(kept["tokens"]) == 5


def test_llama_cpp_s_unversioned_aliases(live):
    """llama.cpp's server answers /v1/health, /models and /chat/completions as /health, /v1/models and
    /v1/chat/completions: clients written for it call those."""
    assert httpx.get(live.url + "/v1/health").json()["status"] == "ok"
    assert httpx.get(live.url + "/models").json() == httpx.get(live.url + "/v1/models").json()
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0}
    a, b = post(live.url, "/chat/completions", body).json(), post(live.url, "/v1/chat/completions", body).json()
    assert a["object"] == "chat.completion" and a["choices"][0]["message"] == b["choices"][0]["message"]

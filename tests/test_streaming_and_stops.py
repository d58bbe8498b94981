"""Stop conditions (several EOS ids, stop strings) and streaming (text increments == final text, multi-byte safe)."""
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

import onnxlm
from onnxlm.runtime.streaming import IncrementalText


@pytest.fixture(scope="module", params=["tiny_gpt2", "tiny_t5"])
def model(request):
    return onnxlm.load(request.getfixturevalue(request.param).onnx_dir)


PROMPTS = ["Hello world", "The alligator ate"]


def free_run(model, **kw):
    return model.generate(PROMPTS, max_new_tokens=16, eos_token_id=[], **kw)


def test_several_eos_ids_each_row_stops_at_its_own(model):
    """Two EOS ids, each emitted by one row only: each row stops at its own, at a different step."""
    free = free_run(model)
    a, b = free.new_tokens
    # the first pair (id emitted by row a at step i, id emitted by row b at step j > i) that the other row never
    # emits before: the rows then stop at different steps, each on its own id
    pair = next(((a[i], b[j]) for i in range(1, 8) for j in range(i + 1, 12)
                 if a[i] != b[j] and a[i] not in a[:i] and b[j] not in b[:j] and a[i] not in b[:j + 1]
                 and b[j] not in a[:i + 1]), None)
    assert pair is not None, f"no pair of separating ids in {a} / {b}"
    eos_a, eos_b = pair
    got = model.generate(PROMPTS, max_new_tokens=16, eos_token_id=[eos_a, eos_b])
    assert got.finish_reasons == ["eos", "eos"]
    assert got.new_tokens[0] == a[:a.index(eos_a) + 1] and got.new_tokens[1] == b[:b.index(eos_b) + 1]
    assert len(got.new_tokens[0]) < len(got.new_tokens[1])


def test_several_eos_ids_equal_transformers(tiny_gpt2):
    ours = onnxlm.load(tiny_gpt2.onnx_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    ids, mask = ours.prepare_inputs(PROMPTS)
    free = ours.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    eos = sorted({free.new_tokens[0][4], free.new_tokens[1][2]})
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos)
    with torch.no_grad():
        want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=12,
                            do_sample=False, eos_token_id=eos, pad_token_id=ours.pad_id).numpy()
    np.testing.assert_array_equal(got.sequences, want)


def test_stop_string_cuts_text_and_reports_stop(model):
    free = free_run(model)
    text = free.text[0]
    stop = text[4:6]
    cut = text[:text.find(stop)]
    got = model.generate(PROMPTS[:1], max_new_tokens=16, eos_token_id=[], stop_strings=[stop, "\x00never"])
    assert got.text == [cut]
    assert got.finish_reasons == ["stop"]
    assert len(got.new_tokens[0]) < 16
    streamed = "".join(s.text for s in model.stream(PROMPTS[:1], max_new_tokens=16, eos_token_id=[], stop_strings=stop))
    assert streamed == cut


def test_stream_text_equals_final_text_greedy_and_sampling(model):
    for kw in (dict(), dict(do_sample=True, seed=3, top_k=20)):
        final = model.generate(PROMPTS, max_new_tokens=12, **kw)
        steps = list(model.stream(PROMPTS, max_new_tokens=12, **kw))
        for row in range(len(PROMPTS)):
            mine = [s for s in steps if s.batch_index == row]
            assert "".join(s.text for s in mine) == final.text[row]
            assert [s.token_id for s in mine] == final.new_tokens[row]
            assert mine[-1].is_last and mine[-1].finish_reason == final.finish_reasons[row]


def test_streamer_callback_sees_every_token(model):
    seen = []
    res = model.generate(PROMPTS[0], max_new_tokens=7, eos_token_id=[], streamer=seen.append)
    assert [s.token_id for s in seen] == res.new_tokens[0] and "".join(s.text for s in seen) == res.text[0]


def test_closing_the_stream_stops_the_compute(tiny_gpt2):
    model = onnxlm.load(tiny_gpt2.onnx_dir)
    calls = {"n": 0}
    real_run = model.decoder.run

    def counting_run(*a, **k):
        calls["n"] += 1
        return real_run(*a, **k)
    model.decoder.run = counting_run
    stream = model.stream("Hello", max_new_tokens=50, eos_token_id=[])
    for i, _ in enumerate(stream):
        if i == 2:
            break
    stream.close()
    assert calls["n"] <= 3  # prefill + two steps, not 50


def test_multibyte_characters_are_never_split(model):
    text = "héllo 世界 🎉 ok"
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # byte-level: multi-byte characters span several tokens
    inc = IncrementalText(model.tokenizer.tokenizer)
    pieces = [inc.push(i) for i in ids]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == text
    assert "" in pieces  # some bytes were held back until their character was complete


def test_stop_strings_hold_back_only_a_text_that_could_begin_one(model):
    """With stop strings a piece of text streams with its own token unless the text's end could begin a stop string
    (llama.cpp's partial-stop check): after each token the text returned so far is the whole text but its longest
    end that begins "zzz" or "ab!"; the joined stream and finish() give the cut text."""
    text = "I am ready? yes z and zz, a ab zzz"
    stops = ["zzz", "ab!"]
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    plain, held = IncrementalText(model.tokenizer.tokenizer), IncrementalText(model.tokenizer.tokenizer, stops=stops)
    whole, sent = "", ""
    for i in ids:
        whole += plain.push(i)
        sent += held.push(i)
        end = max((k for s in stops for k in range(1, len(s) + 1) if whole.endswith(s[:k])), default=0)
        assert sent == whole[:len(whole) - end], (whole, sent)
    cut = text[:text.find("zzz")]
    assert sent + held.finish(cut) == cut and whole == text


def test_next_token_distribution_is_softmax_of_logits(tiny_gpt2):
    model = onnxlm.load(tiny_gpt2.onnx_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    dist = model.next_token_distribution("See you", top_k=10)
    ids = model.tokenizer.encode("See you")
    with torch.no_grad():
        probs = torch.softmax(ref(torch.tensor([ids])).logits[0, -1], -1).numpy()
    order = np.argsort(-probs)[:10]
    assert dist.token_ids == order.tolist()
    assert np.abs(np.array(dist.probs) - probs[order]).max() <= 1e-5
    assert dist.probs == sorted(dist.probs, reverse=True)
    assert "rank" in dist.table() and repr(dist).startswith("TokenDistribution(")


def test_stop_string_in_beam_search(model):
    free = model.generate(PROMPTS[:1], max_new_tokens=12, eos_token_id=[], num_beams=3)
    text = free.text[0]
    stop = text[3:5]
    got = model.generate(PROMPTS[:1], max_new_tokens=12, eos_token_id=[], num_beams=3, num_return_sequences=3,
                         stop_strings=stop)
    assert all(stop not in t for t in got.text)
    assert "stop" in got.finish_reasons  # hypotheses that hit the stop string compete as finished beams


# ---------------------------------------------------------------------------------------------------- stop strings
# transformers' StopStringCriteria: token strings (special tokens included) of the last max(len(stop)) tokens,
# prompt tail included, a match must end in the last token. These prompts + suppress_tokens make the tiny GPT-2
# write a special token ("<unk> ", "<s>"... then "</s>") and "\n" right after a prompt that ends with "\n".
STOP_PROMPTS = ["Hello world", "The alligator ate", "Q: hi\n"]
KEEP = [ord(c) for c in "ab \n"]
SUPPRESS = [i for i in range(256) if i not in KEEP]  # only "a", "b", " ", "\n" and the 4 special tokens remain
STOPS = [" \n", "</s>", "\n\n"]  # row 0: spaces then "\n"; row 1: the special token </s>; row 2: prompt tail "\n"


@pytest.fixture(scope="module")
def gpt2_pair(tiny_gpt2):
    from transformers import PreTrainedTokenizerFast
    ours = onnxlm.load(tiny_gpt2.onnx_dir)
    ref = AutoModelForCausalLM.from_pretrained(tiny_gpt2.hf_dir).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_gpt2.onnx_dir / "tokenizer.json"))
    return ours, ref, tok


def hf_generate(ref, tok, ids, mask, **kw):
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            tokenizer=tok, pad_token_id=256, **kw).numpy()


@pytest.mark.parametrize("eos", [None, 258])
def test_stop_strings_equal_transformers_greedy(gpt2_pair, eos):
    ours, ref, tok = gpt2_pair
    ids, mask = ours.prepare_inputs(STOP_PROMPTS)
    assert (mask == 0).any()  # left padded
    kw = dict(max_new_tokens=16, eos_token_id=eos, suppress_tokens=SUPPRESS)
    free = ours.generate(ids, attention_mask=mask, **{**kw, "eos_token_id": None})
    got = ours.generate(ids, attention_mask=mask, stop_strings=STOPS, **kw)
    want = hf_generate(ref, tok, ids, mask, stop_strings=STOPS, **kw)
    np.testing.assert_array_equal(got.sequences, want)
    # the scenario: a special token in row 1, a match that starts in the prompt in row 2 (first new token "\n")
    assert 258 in free.new_tokens[1] and free.new_tokens[2][0] == ord("\n")
    assert got.finish_reasons == ["stop", "stop" if eos is None else "eos", "stop"]
    assert got.new_tokens[2] == [ord("\n")]
    assert got.new_tokens[1][-1] == 258
    # text: the new text cut where the match starts, "" when it starts in the prompt
    assert got.text == [free.text[0][:free.text[0].find(" \n")], "", ""]
    t0 = ids.shape[1]
    if eos is None:  # no EOS criterion: finished rows keep their tokens (transformers), no pad
        assert (got.sequences[2, t0 + 1:] == ord("\n")).all()
    else:
        assert (got.sequences[2, t0 + 1:] == 256).all()
    steps = list(ours.stream(ids, attention_mask=mask, stop_strings=STOPS, **kw))
    for row in range(3):
        assert "".join(s.text for s in steps if s.batch_index == row) == got.text[row]


@pytest.mark.parametrize("eos", [None, 258])
def test_stop_strings_equal_transformers_beam(gpt2_pair, eos):
    ours, ref, tok = gpt2_pair
    ids, mask = ours.prepare_inputs(STOP_PROMPTS)
    kw = dict(max_new_tokens=10, eos_token_id=eos, suppress_tokens=SUPPRESS, num_beams=3, num_return_sequences=2)
    got = ours.generate(ids, attention_mask=mask, stop_strings=STOPS, **kw)
    want = hf_generate(ref, tok, ids, mask, stop_strings=STOPS, **kw)
    np.testing.assert_array_equal(got.sequences, want)
    assert "stop" in got.finish_reasons
    for row, reason in enumerate(got.finish_reasons):
        if reason == "stop":  # the returned text ends before the stop string
            assert not any(s in got.text[row] for s in STOPS)


def test_stop_string_window_cost_is_bounded(gpt2_pair, monkeypatch):
    """Per step and row, the stop check reads the token strings of the last max(len(stop)) ids only, and
    streaming never re-decodes the row (DecodeStream): the cost does not grow with the row."""
    ours, _, _ = gpt2_pair
    decoded = []
    real_decode = ours.tokenizer.decode
    monkeypatch.setattr(ours.tokenizer, "decode", lambda ids, **k: decoded.append(len(ids)) or real_decode(ids, **k))
    stop = "\x00never"
    n = 60
    steps = list(ours.stream(STOP_PROMPTS, max_new_tokens=n, eos_token_id=None, stop_strings=stop))
    assert len(steps) == n * len(STOP_PROMPTS)
    matcher = ours._stop_check(ours.resolve_config(dict(stop_strings=stop)))
    assert matcher.window == len(stop)
    assert matcher.lookups <= n * len(STOP_PROMPTS) * len(stop)  # bounded per step, whatever the row length
    # only the final text of each row is decoded whole (after the prompt's last ids: streaming.decode_after, which
    # also decodes those few alone, as the stream's start does)
    assert sum(1 for k in decoded if k >= n) <= len(STOP_PROMPTS)
    assert len(decoded) <= 3 * len(STOP_PROMPTS)


def test_stop_strings_need_a_tokenizer(tiny_gpt2, tmp_path):
    import json
    import shutil
    from onnxlm.runtime.errors import ParameterError
    dst = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_gpt2.onnx_dir, dst)
    (dst / "tokenizer.json").unlink()
    manifest = json.loads((dst / "onnxlm.json").read_text())
    del manifest["files"]["tokenizer.json"]
    (dst / "onnxlm.json").write_text(json.dumps(manifest))
    model = onnxlm.load(dst)
    with pytest.raises(ParameterError, match="stop_strings.*tokenizer") as err:
        model.generate([[5, 6, 7]], max_new_tokens=3, stop_strings=["x"])
    assert err.value.parameter == "stop_strings"
    with pytest.raises(ParameterError, match="stop_strings"):
        model.generate([[5, 6, 7]], max_new_tokens=3, stop_strings=["x"], num_beams=2)
    with pytest.raises(ParameterError, match="stop_strings"):
        next(model.stream([[5, 6, 7]], max_new_tokens=3, stop_strings=["x"]))
    assert model.generate([[5, 6, 7]], max_new_tokens=3).sequences.shape == (1, 6)


def test_no_eos_finished_rows_keep_sampled_tokens(gpt2_pair):
    """transformers pads finished rows only when there is an EOS criterion: with none, a row that stopped on a
    stop string keeps its sampled tokens in `sequences` (its text and new_tokens still end at the stop)."""
    ours, ref, tok = gpt2_pair
    ids, mask = ours.prepare_inputs(STOP_PROMPTS[:2])
    kw = dict(max_new_tokens=12, eos_token_id=None, suppress_tokens=SUPPRESS)
    free = ours.generate(ids, attention_mask=mask, **kw)
    assert free.new_tokens[0][0] == 259 and 259 not in free.new_tokens[1]  # "<unk>" first in row 0 only
    got = ours.generate(ids, attention_mask=mask, stop_strings="<unk>", **kw)
    want = hf_generate(ref, tok, ids, mask, stop_strings="<unk>", **kw)
    np.testing.assert_array_equal(got.sequences, want)
    assert got.finish_reasons == ["stop", "length"]
    np.testing.assert_array_equal(got.sequences, free.sequences)  # row 0 kept its tokens after the stop
    assert got.new_tokens[0] == [259] and got.text[0] == ""


def test_incremental_text_falls_back_when_decode_stream_fails(model):
    """A decoder DecodeStream refuses (its output is not prefix-stable) falls back to re-decoding the row."""
    text = "héllo 世界 🎉 ok"
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    inc = IncrementalText(model.tokenizer.tokenizer, stops=["ok?"])  # the trailing "ok" is held back
    real = inc.stream

    class Failing:
        n = 0

        def step(self, tok, i):
            Failing.n += 1
            if Failing.n > 3:
                raise Exception("InvalidPrefix")
            return real.step(tok, i)
    inc.stream = Failing()
    pieces = [inc.push(i) for i in ids]
    assert inc.fallback and all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + inc.finish(text) == text and "".join(pieces) == text[:-2]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_stop_strings_equal_transformers_seq2seq(tiny_t5, num_beams):
    """T5: the decoder start token "<pad>" is the prompt tail the stop strings see (transformers' criteria run on
    the decoder ids). transformers' T5 generate rejects `tokenizer=`, so its criterion is passed directly."""
    from transformers import PreTrainedTokenizerFast
    from transformers.generation.stopping_criteria import StoppingCriteriaList, StopStringCriteria
    ours = onnxlm.load(tiny_t5.onnx_dir)
    ref = T5ForConditionalGeneration.from_pretrained(tiny_t5.hf_dir).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tiny_t5.onnx_dir / "tokenizer.json"))
    ids, mask = ours.prepare_inputs(STOP_PROMPTS)
    kw = dict(max_new_tokens=12, eos_token_id=None, suppress_tokens=SUPPRESS, num_beams=num_beams)
    for stops in (["<pad>a", "<s><s>"], ["<pad>"]):
        got = ours.generate(ids, attention_mask=mask, stop_strings=stops, **kw)
        with torch.no_grad():
            want = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                                stopping_criteria=StoppingCriteriaList([StopStringCriteria(tok, stops)]), **kw).numpy()
        np.testing.assert_array_equal(got.sequences, want)
        assert "stop" in got.finish_reasons
    first = ours.generate(ids[:1], attention_mask=mask[:1], stop_strings="<pad>a", **{**kw, "num_beams": 1})
    assert first.new_tokens[0][:1] == [ord("a")] and first.finish_reasons == ["stop"] and first.text == [""]

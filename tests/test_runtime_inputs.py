"""Inputs and parameters of `generate` as transformers takes them (a review's findings): a call's own
decoder_start_token_id on a seq2seq model, the attention mask transformers infers for a padded id array given
without one, an assistant message with tool_calls and no content, numpy booleans; and what is refused, typed and
named: token ids that are not integers (never rounded), a max_length beyond the model's positions."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.errors import InputError, ParameterError

torch = pytest.importorskip("torch", reason="the references are transformers models (the 'export' extra)")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    return onnxlm.load(tiny_llama.onnx_dir), \
        AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir, attn_implementation="eager").eval()


@torch.no_grad()
def test_a_calls_decoder_start_token_id_is_the_decoders_first_id(tiny_t5):
    from transformers import AutoModelForSeq2SeqLM

    ours, ref = onnxlm.load(tiny_t5.onnx_dir), AutoModelForSeq2SeqLM.from_pretrained(tiny_t5.hf_dir).eval()
    src = [[40, 41, 42, 43, 258], [50, 51, 52, 258, 0]]
    mask = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    for kw in ({}, {"decoder_start_token_id": 5}, {"decoder_start_token_id": 5, "num_beams": 3}):
        got = ours.generate(np.array(src), attention_mask=np.array(mask), max_new_tokens=6, **kw)
        want = ref.generate(torch.tensor(src), attention_mask=torch.tensor(mask), max_new_tokens=6, **kw)
        assert got.sequences.tolist() == want.tolist(), kw
    first = [s.token_id for s in ours.stream([src[0]], max_new_tokens=2, decoder_start_token_id=5)]
    assert first == ours.generate([src[0]], max_new_tokens=2, decoder_start_token_id=5).new_tokens[0]


@torch.no_grad()
def test_a_padded_id_array_without_a_mask_is_masked_as_transformers_masks_it(llama):
    ours, ref = llama
    ids = np.array([[256, 256, 257, 50, 51], [257, 60, 61, 62, 63]])  # left padded with pad id 256, no mask
    want = ref.generate(torch.tensor(ids), max_new_tokens=6, do_sample=False).numpy().tolist()
    assert ours.generate(ids, max_new_tokens=6).sequences.tolist() == want
    assert ours.generate(ids, attention_mask=(ids != 256).astype(np.int64), max_new_tokens=6).sequences.tolist() == want
    # pad == EOS: transformers infers nothing (an EOS in the ids is a token); nor do we
    same = ours.generate(ids, max_new_tokens=4, pad_token_id=256, eos_token_id=256).sequences
    ref_same = ref.generate(torch.tensor(ids), max_new_tokens=4, pad_token_id=256, eos_token_id=256, do_sample=False)
    assert same.tolist() == ref_same.numpy().tolist()


@pytest.mark.parametrize("inputs", [np.array([[40.7, 41.2, 42.9]]), [[40.7, 41.2], [50.5]], [[True, False, True]],
                                    [[1, "a"]], [40.5, 41.0], np.zeros((1, 2, 3), np.int64), [[1, [2]]]],
                         ids=["float-array", "float-rows", "bools", "str", "float-list", "3d", "nested"])
def test_ids_that_are_not_integers_are_refused_not_rounded(llama, inputs):
    ours, _ = llama
    with pytest.raises(InputError, match=r"^inputs: "):
        ours.generate(inputs, max_new_tokens=2)
    if not isinstance(inputs, np.ndarray) or inputs.ndim == 2:
        with pytest.raises(InputError):
            ours.score(inputs)


def test_ragged_rows_with_a_mask_are_an_input_error(llama):
    with pytest.raises(InputError, match=r"^input_ids: expected a \[batch, length\] array"):
        llama[0].generate([[1, 2], [3]], attention_mask=[[1, 1], [1]], max_new_tokens=2)


def test_max_length_beyond_the_positions_names_max_length(llama):
    ours = llama[0]
    with pytest.raises(ParameterError, match=r"max_length <= 256") as err:
        ours.generate([[1, 2, 3]], max_length=300)
    assert err.value.parameter == "max_length"
    with pytest.raises(ParameterError) as err:
        ours.generate([[1, 2, 3]], max_new_tokens=300)
    assert err.value.parameter == "max_new_tokens"


def test_numpy_booleans_are_booleans(llama):
    ours = llama[0]
    res = ours.generate([[1, 2, 3]], max_new_tokens=3, do_sample=np.bool_(False), output_scores=np.bool_(True))
    assert res.sequences.tolist() == ours.generate([[1, 2, 3]], max_new_tokens=3).sequences.tolist()
    assert len(res.scores) == 3


def test_an_assistant_message_with_tool_calls_and_no_content_renders_as_transformers(tiny_qwen2_tools):
    from transformers import AutoTokenizer

    ours, tok = onnxlm.load(tiny_qwen2_tools.onnx_dir), AutoTokenizer.from_pretrained(tiny_qwen2_tools.hf_dir)
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "w", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    call = [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    for assistant in ({"role": "assistant", "tool_calls": call}, {"role": "assistant", "content": None,
                                                                   "tool_calls": call}):
        messages = [{"role": "user", "content": "Weather in Paris?"}, assistant, {"role": "tool", "content": "sunny"}]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, tools=tools)
        assert ours.render_chat(messages, tools=tools) == want
    with pytest.raises(InputError, match=r"messages\[1\]: missing the 'content' key"):
        ours.render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": []}])


# A review's findings (2026-12-07): what a call gets wrong is refused, typed and named, never answered arbitrarily.

def test_every_token_masked_is_refused_never_an_arbitrary_token(llama):
    """Greedy and beam search (sampled or not) over a row whose generation parameters mask every token
    (``suppress_tokens`` leaves only the EOS, which ``min_new_tokens`` bans): an InputError, as sampling always gave;
    an argmax over all -inf would have answered token 0 (or a beam search no tokens, "length")."""
    ours = llama[0]
    every_but_eos = [i for i in range(ours.vocab_size) if i != 258]
    for kw in ({}, {"num_beams": 2}, {"do_sample": True, "seed": 0}, {"num_beams": 2, "do_sample": True, "seed": 0}):
        with pytest.raises(InputError, match="no finite"):
            ours.generate([[1, 2, 3]], max_new_tokens=3, min_new_tokens=2, suppress_tokens=every_but_eos, **kw)
    done = ours.generate([[1, 2, 3]], max_new_tokens=3, suppress_tokens=every_but_eos)  # the EOS allowed: it ends
    assert done.new_tokens == [[258]] and done.finish_reasons == ["eos"]


def test_length_penalty_none_is_no_penalty(llama):
    ours = llama[0]
    for kw in ({"num_beams": 2}, {"num_beams": 2, "do_sample": True, "seed": 1}):
        got = ours.generate([[1, 2, 3]], max_new_tokens=4, length_penalty=None, **kw)
        want = ours.generate([[1, 2, 3]], max_new_tokens=4, length_penalty=1.0, **kw)
        assert got.sequences.tolist() == want.sequences.tolist()
        np.testing.assert_array_equal(got.sequences_scores, want.sequences_scores)


def test_next_token_distribution_takes_one_prompt(llama):
    ours = llama[0]
    with pytest.raises(ParameterError, match="got 2 prompts; allowed: one prompt") as err:
        ours.next_token_distribution([[1, 2], [3, 4, 5]])
    assert err.value.parameter == "text"
    one = ours.next_token_distribution([[3, 4, 5]], top_k=3)
    logits = ours.logits([[3, 4, 5]])[0, -1]
    assert one.token_ids == np.argsort(-logits, kind="stable")[:3].tolist()


@pytest.mark.parametrize("inputs", [[2**70], [[1, 2**64 + 3]], np.array([[1, 2**63 + 5]], dtype=np.uint64)],
                         ids=["flat", "rows", "uint64"])
def test_ids_past_int64_are_out_of_range_not_an_overflow(llama, inputs):
    with pytest.raises(InputError, match=r"^input_ids: token id \d+ is out of range; allowed: 0 <= id < "):
        llama[0].generate(inputs, max_new_tokens=2)
    with pytest.raises(InputError, match=r"^input_ids: token id \d+ is out of range"):
        llama[0].score(inputs)


def test_a_streamer_that_is_not_callable_is_refused_before_any_run(llama, monkeypatch):
    ours = llama[0]
    monkeypatch.setattr(ours, "start", lambda *a, **k: pytest.fail("a pass ran before the streamer was checked"))
    with pytest.raises(ParameterError, match="allowed: a callable") as err:
        ours.generate([[1, 2, 3]], max_new_tokens=2, streamer=5)
    assert err.value.parameter == "streamer"


@pytest.mark.parametrize("answer", [[True, False], None, "yes", [1, 0, 0], np.zeros((3, 2), bool)],
                         ids=["short", "none", "str", "ints", "2d"])
def test_a_stopping_criterion_answering_other_than_bools_is_refused(llama, answer):
    with pytest.raises(ParameterError, match=r"(?s)^stopping_criteria: .*allowed: True/False, or 3 bools"):
        llama[0].generate([[1, 2], [3, 4], [5, 6]], max_new_tokens=2, stopping_criteria=lambda ids, s: answer)


def test_a_stopping_criterions_bools_stop_their_rows(llama):
    ours, prompts = llama[0], [[1, 2], [3, 4], [5, 6]]
    for answer, reasons in ((lambda ids: True, ["stop"] * 3), (lambda ids: np.bool_(False), ["length"] * 3),
                            (lambda ids: ids[:, 0] == 3, ["length", "stop", "length"]),  # [n] bools of the rows
                            (lambda ids: list(ids[:, 0] == 3), ["length", "stop", "length"])):  # asked (active ones)
        got = ours.generate(prompts, max_new_tokens=2, eos_token_id=None,
                            stopping_criteria=lambda ids, s, answer=answer: answer(ids))
        assert got.finish_reasons == reasons


def test_chats_own_arguments_are_no_template_variables(llama):
    """The rendering's own names (its variables, its arguments, a method's and jinja2's ``self``) and non-names are
    a ParameterError naming chat_template_kwargs, not a TypeError from the call (``messages``, ``self``) nor a
    silently changed prompt (``add_generation_prompt``)."""
    for name in ("messages", "tokenize", "self", "add_generation_prompt", "continue_final_message", "bos_token",
                 "not a name", 3):
        with pytest.raises(ParameterError, match="template variable") as err:
            llama[0].chat([{"role": "user", "content": "x"}], chat_template_kwargs={name: []}, max_new_tokens=2)
        assert err.value.parameter == "chat_template_kwargs"


@pytest.mark.parametrize("flag", ["prepend_bos", "append_eos"])
def test_scores_flags_are_booleans(llama, flag):
    with pytest.raises(ParameterError, match=f"^{flag}: got 'no'; allowed: True or False"):
        llama[0].score([[1, 2, 3]], **{flag: "no"})


def test_a_top_k_of_the_wrong_type_is_refused_in_greedy_decoding_too(llama):
    with pytest.raises(ParameterError, match="^top_k: got 'a'"):
        llama[0].generate([[1, 2, 3]], max_new_tokens=2, top_k="a")
    assert llama[0].generate([[1, 2, 3]], max_new_tokens=2, top_k=-1).new_tokens  # its range: when sampling only


def test_a_prompt_that_fills_the_positions_names_the_prompt(llama):
    with pytest.raises(ParameterError, match=r"^inputs: the prompt has 256 tokens and already fills") as err:
        llama[0].generate([[1] * 256], max_new_tokens=1)
    assert "at most 0" not in str(err.value)


# ------------------------------------------------------------- a fuzz review's findings: typed, named refusals
P = [1, 5, 9, 12]


@pytest.mark.parametrize("kw, name", [
    (dict(num_beams=2, length_penalty=1000), "length_penalty"),       # 3 ** 1000: past float64 (an OverflowError)
    (dict(num_beams=2, length_penalty=1e308), "length_penalty"),
    (dict(num_beams=2**62), "num_beams"),                              # rows no run could hold
    (dict(num_return_sequences=2**70, do_sample=True), "num_return_sequences"),
    (dict(do_sample=True, temperature=float("inf")), "temperature"),  # the documented rule: inf refused
    (dict(temperature=float("inf")), "temperature"),
    (dict(forced_eos_token_id=[]), "forced_eos_token_id"),            # nothing to force (transformers refuses it)
    (dict(sequence_bias={(1,): 1e39}), "sequence_bias"),              # +inf on float32 scores
    (dict(do_sample=True, temperature=10**400), "temperature"),       # past float's range: no OverflowError
    (dict(length_penalty=10**400), "length_penalty"),
])
def test_values_past_what_a_run_can_take_are_named(llama, kw, name):
    model, _ = llama
    with pytest.raises(ParameterError) as info:
        model.generate(P, max_new_tokens=3, **kw)
    assert info.value.parameter == name


def test_a_huge_prompt_lookup_is_capped_not_an_overflow(llama):
    model, _ = llama
    ids = [1, 5, 9, 1, 5, 9, 1, 5]
    got = model.generate(ids, prompt_lookup_num_tokens=2**63, max_new_tokens=3, do_sample=False).new_tokens
    assert got == model.generate(ids, max_new_tokens=3, do_sample=False).new_tokens


def test_start_and_bos_ids_outside_the_vocabulary_are_named(tiny_t5):
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    for name in ("decoder_start_token_id", "bos_token_id"):
        with pytest.raises(ParameterError) as info:
            t5.generate(P, max_new_tokens=2, **{name: t5.vocab_size})
        assert info.value.parameter == name
    with pytest.raises(InputError, match=r"^targets: token id 1000000 is out of range"):
        t5.score(P, targets=[[10**6]])
    with pytest.raises(InputError, match=r"^decoder_input_ids: token id 1000000 is out of range"):
        t5.logits([P], [[0, 10**6]])


def test_a_ragged_or_inferred_empty_mask_names_what_the_caller_gave(llama):
    model, _ = llama
    with pytest.raises(InputError, match=r"^attention_mask: expected a \[batch, length\] array"):
        model.generate([[1, 2], [3, 4]], attention_mask=[[1, 1], [1]])
    with pytest.raises(InputError, match=r"^attention_mask: expected"):
        model.logits([[1, 2], [3, 4]], [[1, 1], [1]])
    pad = model.generation_config.pad_token_id
    if pad is not None and pad not in model.generation_config.eos_token_ids:
        with pytest.raises(InputError, match=r"^input_ids: row 0 is all pad_token_id"):
            model.generate(np.array([[pad, pad], [1, 2]]), max_new_tokens=2)


def test_load_and_threads_refuse_what_is_no_path_or_thread_count(tiny_llama, monkeypatch):
    for path in (None, 5, b"/x"):
        with pytest.raises(ParameterError) as info:
            onnxlm.load(path)
        assert info.value.parameter == "path"
    for threads in (2**31, 2**70, 0, True):
        with pytest.raises(ParameterError) as info:
            onnxlm.load(tiny_llama.onnx_dir, threads=threads)
        assert info.value.parameter == "threads"
    monkeypatch.setenv("ONNXLM_THREADS", "99999999999999999999")
    with pytest.raises(ParameterError) as info:
        onnxlm.load(tiny_llama.onnx_dir)
    assert info.value.parameter == "ONNXLM_THREADS"
    monkeypatch.delenv("ONNXLM_THREADS")
    model = onnxlm.load(tiny_llama.onnx_dir, threads=np.int64(1))  # numpy integers are integers
    assert len(model.next_token_distribution(P, top_k=np.int64(3)).token_ids) == 3


def test_the_tokenizers_methods_take_token_ids_only(llama):
    model, _ = llama
    tok = model.tokenizer
    import array
    import collections
    want = tok.decode([1, 2])
    for ids in (np.array([1, 2]), [np.int64(1), 2], (1, 2), range(1, 3), collections.deque([1, 2]),
                array.array("q", [1, 2]), (i for i in (1, 2)), [np.array(1), np.array(2)], torch.tensor([1, 2])):
        assert tok.decode(ids) == want, ids
    assert tok.decode([]) == "" and tok.id_to_token(np.array(1)) == tok.id_to_token(1)
    for bad in ([1.7, 2.9], "12", [True], [[1]], 5, [-1], [2**40], None, torch.tensor([True, False]),
                [torch.tensor(True)], torch.tensor([[5]]), bytearray(b"ab"), memoryview(b"ab"), {1, 2}):
        with pytest.raises(InputError, match=r"^ids: "):
            tok.decode(bad)
    for bad in (-1, "a", 2.0):
        with pytest.raises(InputError, match=r"^token_id: "):
            tok.id_to_token(bad)
    with pytest.raises(InputError, match=r"^token: expected str"):
        tok.token_to_id(5)
    for kw in (dict(add_special_tokens="no"), dict(split_special_tokens=1)):
        with pytest.raises(ParameterError):
            tok.encode("x", **kw)


def test_an_edited_manifest_or_config_is_a_model_file_error(tiny_llama, tmp_path):
    import json
    import shutil

    from onnxlm.runtime.errors import ManifestError, ModelFileError
    for edit, error in ((lambda m, c: m.pop("graphs"), ManifestError),
                        (lambda m, c: m.update(max_positions="x"), ManifestError),
                        (lambda m, c: c.clear(), ModelFileError)):
        d = tmp_path / f"edited-{error.__name__}-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_llama.onnx_dir, d)
        manifest, config = json.loads((d / "onnxlm.json").read_text()), {}
        edit(manifest, config)
        (d / "onnxlm.json").write_text(json.dumps(manifest))
        if error is ModelFileError:
            (d / "config.json").write_text("[]")
        with pytest.raises(error):
            onnxlm.load(d, verify=False)


def test_stream_checks_its_parameters_at_the_call_and_render_chat_its_flag(llama):
    """A bad parameter of stream is refused when stream is called, before any iteration (the model runs as it is
    iterated); render_chat's tokenize is a bool, as score's and embed's flags."""
    model, _ = llama
    with pytest.raises(ParameterError) as info:
        model.stream(P, temperature="x", do_sample=True)
    assert info.value.parameter == "temperature"
    with pytest.raises(InputError):
        model.stream([[1, 2], [3, 4]], attention_mask=[[1, 1], [1]])
    steps = model.stream(P, max_new_tokens=2)
    assert [s.token_id for s in steps] == model.generate(P, max_new_tokens=2).new_tokens[0]
    with pytest.raises(ParameterError) as info:
        model.render_chat([{"role": "user", "content": "hi"}], tokenize="no")
    assert info.value.parameter == "tokenize"

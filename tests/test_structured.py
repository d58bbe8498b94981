"""Structured generation (json_schema / regex / choices / grammar) on the tiny Llama (byte-level tokenizer.json).

Parity: onnxlm's constrained greedy and beam search give the same ids as transformers' generate on the same weights
with a reference logits processor that applies llguidance's mask, rebuilt from scratch at every step from the row's
tokens (no state: it checks onnxlm's matcher bookkeeping, beam forks included).  Validity: sampling, beam sampling,
per-row constraints and streaming always give output that matches.  Bad input raises ParameterError naming the
parameter.  The real-model checks (SmolLM2, 20 prompts, jsonschema) are in tests/test_smollm2.py.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

if os.environ.get("CI") != "true":  # CI installs the 'structured' extra: there a missing engine is a failure
    pytest.importorskip("llguidance", reason="structured generation needs the 'structured' extra (llguidance)")
import llguidance  # noqa: E402
import llguidance.numpy  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.runtime.constraints import ConstraintProcessor, response_format_to_params  # noqa: E402
from onnxlm.runtime.errors import ParameterError  # noqa: E402

EOS, PAD = 258, 256
SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "yy"]}, "n": {"type": "integer", "minimum": 0,
                                                                               "maximum": 99},
                                            "ok": {"type": "boolean"}},
          "required": ["a", "n", "ok"], "additionalProperties": False}
DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
CHOICES = ["red", "green", "blue"]
LARK = 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,2}/'
PROMPTS = ["Hello", "The weather today", "A", "Numbers: 1 2 3"]


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return onnxlm.load(tiny_llama.onnx_dir)


@pytest.fixture(scope="module")
def ref(tiny_llama):
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval()


def ref_grammar(kind: str, value) -> str:
    """The llguidance grammar of a constraint, built here without onnxlm's code."""
    m = llguidance.LLMatcher
    if kind == "json_schema":
        return m.grammar_from_json_schema(json.dumps(value), defaults={"whitespace_flexible": False})
    if kind == "regex":
        return m.grammar_from_regex(value)
    if kind == "choices":
        return m.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in value))
    return m.grammar_from_lark(value)


def hf_generate(ref, tiny_llama, ids, mask, grammars, **kw):
    import torch
    from transformers import LogitsProcessorList
    from torch_ref import llguidance_mask_processor
    proc = llguidance_mask_processor((tiny_llama.onnx_dir / "tokenizer.json").read_text(), 260, EOS, grammars,
                                     ids.shape[1], kw.get("num_beams", 1))
    with torch.no_grad():
        return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                            eos_token_id=EOS, pad_token_id=PAD, logits_processor=LogitsProcessorList([proc]),
                            return_dict_in_generate=True, output_scores=True, **kw)


def matches(kind: str, value, text: str) -> bool:
    """Does text match the whole constraint?"""
    if kind == "json_schema":
        import jsonschema
        try:
            jsonschema.validate(json.loads(text), value)
        except (ValueError, jsonschema.ValidationError):
            return False
        return True
    if kind == "regex":
        return re.fullmatch(value, text) is not None
    if kind == "choices":
        return text in value
    return re.fullmatch(r"\(\d{1,2}(,\d{1,2})*\)", text) is not None


ROWS = [("json_schema", SCHEMA), ("regex", DATE), ("choices", CHOICES), None]


# ---------------------------------------------------------------------------------------------- parity
def test_greedy_per_row_constraints_equal_transformers_with_the_same_mask(tiny, ref, tiny_llama):
    """Left-padded batch of 4, a different constraint per row (one row free): ids identical to transformers'
    greedy generate with llguidance's mask; each row ends on EOS once its constraint is complete."""
    ids, mask = tiny.prepare_inputs(PROMPTS)
    assert len(set(mask.sum(1).tolist())) > 1  # really left padded
    got = tiny.generate(ids, attention_mask=mask, max_new_tokens=30,
                        constraints=[None if r is None else {r[0]: r[1]} for r in ROWS])
    want = hf_generate(ref, tiny_llama, ids, mask, [None if r is None else ref_grammar(*r) for r in ROWS],
                       max_new_tokens=30)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    for row, spec in enumerate(ROWS[:3]):
        assert got.finish_reasons[row] == "eos", (row, got.text[row])
        assert got.constraint_satisfied[row] is True
        assert matches(*spec, got.text[row]), (spec, got.text[row])
    assert got.constraint_satisfied[3] is None


def test_greedy_grammar_equals_transformers_with_the_same_mask(tiny, ref, tiny_llama):
    ids, mask = tiny.prepare_inputs(PROMPTS[:2])
    got = tiny.generate(ids, attention_mask=mask, max_new_tokens=25, grammar=LARK)
    want = hf_generate(ref, tiny_llama, ids, mask, [ref_grammar("grammar", LARK)] * 2, max_new_tokens=25)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    for text, reason, ok in zip(got.text, got.finish_reasons, got.constraint_satisfied):
        assert ok is (reason == "eos") or reason == "length"
        if reason == "eos":
            assert matches("grammar", LARK, text), text


@pytest.mark.parametrize("nb,r", [(3, 2), (4, 1)])
def test_beam_search_under_constraints_equals_transformers(tiny, ref, tiny_llama, nb, r):
    """Beam search forks and reorders the matchers with the KV cache: same ids, beam indices and scores as
    transformers' beam search with the stateless reference mask."""
    ids, mask = tiny.prepare_inputs(PROMPTS[:3])
    rows = [("json_schema", SCHEMA), ("regex", DATE), ("choices", CHOICES)]
    got = tiny.generate(ids, attention_mask=mask, max_new_tokens=24, num_beams=nb, num_return_sequences=r,
                        constraints=[{k: v} for k, v in rows])
    want = hf_generate(ref, tiny_llama, ids, mask, [ref_grammar(*s) for s in rows], max_new_tokens=24,
                       num_beams=nb, num_return_sequences=r)
    np.testing.assert_array_equal(got.sequences, want.sequences.numpy())
    np.testing.assert_array_equal(got.beam_indices, want.beam_indices.numpy())
    assert np.abs(got.sequences_scores - want.sequences_scores.numpy()).max() <= 1e-4
    for j, text in enumerate(got.text):
        spec = rows[j // r]
        assert got.constraint_satisfied[j] is matches(*spec, text), (spec, text)
        if got.finish_reasons[j] == "eos":
            assert matches(*spec, text), (spec, text)


# ---------------------------------------------------------------------------------------------- validity
@pytest.mark.parametrize("kw", [dict(do_sample=True, top_k=20, temperature=1.3),
                                dict(do_sample=True, top_p=0.9, num_return_sequences=3),
                                dict(do_sample=True, num_beams=3, num_return_sequences=2)],
                         ids=["sample", "top_p-n3", "beam-sample"])
def test_sampling_under_constraints_is_valid(tiny, kw):
    """Sampled rows (warpers after the mask: top_k never leaves a row without an allowed token) always match;
    a row ended by EOS matches the whole constraint, a row cut by length says so."""
    n = kw.get("num_return_sequences", 1)
    for seed in range(3):
        res = tiny.generate(PROMPTS[:3], max_new_tokens=40, seed=seed,
                            constraints=[{k: v} for k, v in ROWS[:3]], **kw)
        for j, text in enumerate(res.text):
            spec = ROWS[j // n]
            assert res.constraint_satisfied[j] is matches(*spec, text), (spec, text, res.finish_reasons[j])
            if res.finish_reasons[j] == "eos":
                assert matches(*spec, text), (spec, text)
            else:
                assert res.finish_reasons[j] == "length"


def test_stream_equals_generate_under_constraint(tiny):
    steps = list(tiny.stream(PROMPTS[:2], json_schema=SCHEMA, max_new_tokens=40))
    res = tiny.generate(PROMPTS[:2], json_schema=SCHEMA, max_new_tokens=40)
    for row in range(2):
        mine = [s for s in steps if s.batch_index == row]
        assert "".join(s.text for s in mine) == res.text[row]
        assert [s.token_id for s in mine] == res.new_tokens[row]
        assert mine[-1].is_last and mine[-1].finish_reason == res.finish_reasons[row]


def test_json_string_schema_and_dict_schema_agree(tiny):
    a = tiny.generate("Hello", json_schema=SCHEMA, max_new_tokens=40)
    b = tiny.generate("Hello", json_schema=json.dumps(SCHEMA), max_new_tokens=40)
    assert a.new_tokens == b.new_tokens and matches("json_schema", SCHEMA, a.text[0])
    assert ":" in a.text[0] and " " not in a.text[0]  # compact JSON: no free whitespace


def test_an_object_listing_properties_takes_no_other_keys_unless_it_says_so(tiny):
    """As llama.cpp's converter and xgrammar's strict mode read a schema: properties listed -> no other keys
    (nested too: items, anyOf, $defs, Pydantic's $ref with a description, recursive models), unless
    additionalProperties says otherwise; a bare {"type": "object"} is any object; a schema that merges descriptions
    anywhere (allOf, $ref siblings, alternatives beside an object's keywords) is read as given."""
    from onnxlm.runtime.constraints import closed_objects, engine_for, make_constraint

    engine = engine_for(tiny, [EOS], "json_schema")

    def ok(schema, text):
        return engine.satisfied(make_constraint("json_schema", schema), tiny.tokenizer.encode(
            text, add_special_tokens=False))

    a = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert ok(a, '{"a":1}') and not ok(a, '{"a":1,"b":2}')
    assert ok({**a, "additionalProperties": True}, '{"a":1,"b":2}')
    assert ok({**a, "additionalProperties": {"type": "string"}}, '{"a":1,"b":"x"}')
    assert ok({"type": "object"}, '{"b":2}')
    nested = {"type": "array", "items": {"anyOf": [{"$ref": "#/$defs/p"}, {"type": "null"}]},
              "$defs": {"p": {"type": "object", "properties": {"q": {"type": "object", "properties": {
                  "r": {"type": "integer"}}}}}}}
    assert ok(nested, '[{"q":{"r":1}},null]') and not ok(nested, '[{"q":{"r":1,"s":2}}]')
    assert not ok(nested, '[{"q":{},"t":1}]')
    both = {"allOf": [{"properties": {"a": {"type": "integer"}}}, {"properties": {"b": {"type": "integer"}}}]}
    assert closed_objects(both) == both
    # keys that come from elsewhere stay allowed (a review's cases): inheritance by allOf + $ref, $ref siblings,
    # a listing object's alternatives, required keys it does not list, a $ref'd base merged in a property
    base = {"Base": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}
    merged = [({"$defs": base, "allOf": [{"$ref": "#/$defs/Base"}, {"properties": {"b": {"type": "string"}},
                                                                     "required": ["b"]}]}, '{"a":1,"b":"x"}'),
              ({"$defs": base, "$ref": "#/$defs/Base", "properties": {"b": {"type": "string"}}, "required": ["b"]},
               '{"a":1,"b":"x"}'),
              ({"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"],
                "anyOf": [{"properties": {"x": {"type": "integer"}}, "required": ["x"]},
                          {"properties": {"y": {"type": "integer"}}, "required": ["y"]}]}, '{"kind":"k","x":1}'),
              ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]}, '{"a":1,"b":2}'),
              ({"$defs": base, "type": "object", "properties": {"p": {"allOf": [
                  {"$ref": "#/$defs/Base"}, {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]}},
                "required": ["p"]}, '{"p":{"a":1,"b":2}}')]
    for schema, text in merged:
        assert ok(schema, text), schema
    assert ok(merged[-1][0], '{"p":{"a":1,"b":2},"q":3}')  # a schema that merges anywhere is read as given: open
    for schema, _ in merged:
        assert closed_objects(schema) == schema
    # Pydantic's shapes are closed: a nested model behind a $ref with its field's description, a recursive model
    child = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    pyd = {"$defs": {"Child": child}, "type": "object", "required": ["c"],
           "properties": {"c": {"$ref": "#/$defs/Child", "description": "the child"}}}
    assert ok(pyd, '{"c":{"a":1}}') and not ok(pyd, '{"c":{"a":1,"z":2}}') and not ok(pyd, '{"c":{"a":1},"z":2}')
    node = {"$defs": {"Node": {"type": "object", "properties": {"v": {"type": "integer"}, "kids": {
        "type": "array", "items": {"$ref": "#/$defs/Node"}}}, "required": ["v"]}}, "$ref": "#/$defs/Node"}
    assert ok(node, '{"v":1,"kids":[{"v":2}]}') and not ok(node, '{"v":1,"kids":[{"v":2,"w":3}]}')
    either = {"required": ["a", "b"], "anyOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}
    assert closed_objects(either) == either and ok(either, '{"a":1,"b":2}')
    assert closed_objects({"properties": {"x": {}}, "unevaluatedProperties": False}) == {
        "properties": {"x": {}}, "unevaluatedProperties": False}
    res = tiny.generate(PROMPTS[:2], json_schema=a, max_new_tokens=30)
    for text, sat in zip(res.text, res.constraint_satisfied):
        assert not sat or set(json.loads(text)) == {"a"}


def test_too_few_tokens_is_length_and_incomplete(tiny):
    res = tiny.generate(PROMPTS[:2], json_schema=SCHEMA, max_new_tokens=4)
    assert res.finish_reasons == ["length", "length"]
    assert res.constraint_satisfied == [False, False]
    for text in res.text:
        with pytest.raises(ValueError):
            json.loads(text)


def test_a_row_ended_by_a_stop_string_is_no_conflict_for_the_rest_of_the_batch(tiny):
    """Row 0's choice is complete and cut by a stop string; min_new_tokens then blocks the EOS its constraint
    forces. The row is finished, so that is no conflict: row 1 goes on, as row 0 does alone."""
    rows = [{"choices": ["green"]}, {"regex": "[a-z ]{1,40}"}]
    res = tiny.generate(PROMPTS[:2], constraints=rows, stop=["green"], min_new_tokens=6, max_new_tokens=8)
    alone = tiny.generate(PROMPTS[:1], choices=["green"], stop=["green"], min_new_tokens=6, max_new_tokens=8)
    assert res.finish_reasons == ["stop", "length"] and alone.finish_reasons == ["stop"]
    assert res.text[0] == alone.text[0] == "" and len(res.new_tokens[1]) == 8
    assert re.fullmatch("[a-z ]{1,40}", res.text[1])
    with pytest.raises(ParameterError, match="min_new_tokens"):  # a live row's conflict is still refused
        tiny.generate(PROMPTS[:2], constraints=rows, min_new_tokens=6, max_new_tokens=8)


@pytest.mark.parametrize("kw", [{}, {"num_beams": 2}], ids=["greedy", "beam"])
def test_a_row_a_stop_string_cut_is_judged_by_the_text_it_returns(tiny, kw):
    """constraint_satisfied of a row a stop string ended is whether its returned (cut) text matches, not its
    tokens past the cut: "green" cut at "een" returns "gr" (False); "red" or "red cat" cut at " cat" returns
    "red", a whole match (True)."""
    res = tiny.generate(PROMPTS[:1], choices=["green"], stop=["een"], max_new_tokens=8, **kw)
    assert res.finish_reasons == ["stop"] and res.text == ["gr"] and res.constraint_satisfied == [False]
    res = tiny.generate(PROMPTS[:1], regex="red cat", stop_strings=[" cat"], max_new_tokens=12, **kw)
    assert res.finish_reasons == ["stop"] and res.text == ["red"] and res.constraint_satisfied == [False]
    # min_new_tokens bans the EOS after "red" (3 byte tokens): the row goes on to " cat", cut back to a whole match
    res = tiny.generate(PROMPTS[:1], regex="red( cat)?", stop=[" cat"], max_new_tokens=12, min_new_tokens=4, **kw)
    assert res.finish_reasons == ["stop"] and res.text == ["red"] and res.constraint_satisfied == [True]


def test_unconstrained_generation_is_unchanged(tiny):
    plain = tiny.generate(PROMPTS, max_new_tokens=12)
    none_rows = tiny.generate(PROMPTS, max_new_tokens=12, constraints=[None] * 4, json_schema=None)
    np.testing.assert_array_equal(plain.sequences, none_rows.sequences)
    assert plain.constraint_satisfied is None and none_rows.constraint_satisfied is None


def test_mask_sits_after_the_processors_and_before_the_warpers(tiny):
    """The documented order: transformers' processors, then the constraint mask, then the warpers."""
    from onnxlm.runtime.constraints import engine_for, make_constraint
    from onnxlm.runtime.processors import (RepetitionPenaltyProcessor, TemperatureWarper, TopKWarper,
                                           build_processors)
    config = tiny.resolve_config(dict(do_sample=True, top_k=5, temperature=0.5, repetition_penalty=1.2))
    proc = ConstraintProcessor(engine_for(tiny, [EOS], "regex"), [make_constraint("regex", DATE)])
    procs = build_processors(config, input_length=3, logits_processor=[proc])
    assert [type(p) for p in procs] == [RepetitionPenaltyProcessor, ConstraintProcessor, TemperatureWarper,
                                        TopKWarper]


def test_compilation_is_cached_per_schema_and_engine_per_model(tiny):
    from onnxlm.runtime.constraints import engine_for, make_constraint
    engine = engine_for(tiny, [EOS], "json_schema")
    assert engine_for(tiny, [EOS], "json_schema") is engine
    c = make_constraint("json_schema", SCHEMA)
    first = engine.compile(c)
    assert engine.compile(make_constraint("json_schema", json.dumps(SCHEMA))) is first
    assert engine.compile(make_constraint("regex", DATE)) is not first
    m1, m2 = engine.matcher(c), engine.matcher(c)
    assert m1 is not m2 and m1 is not first  # rows never share matcher state


def test_processor_select_forks_matchers(tiny):
    """select duplicates a row's matcher (a copy, not the same object) and the copies advance independently."""
    from onnxlm.runtime.constraints import engine_for, make_constraint
    proc = ConstraintProcessor(engine_for(tiny, [EOS], "choices"), [make_constraint("choices", ["ab", "ac"]), None])
    proc.select(np.array([0, 0, 1]))
    assert proc.matchers[0] is not proc.matchers[1] and proc.matchers[2] is None
    proc.advance(np.array([ord("a"), ord("a"), 5]))
    proc.advance(np.array([ord("b"), ord("c"), 5]))
    scores = proc(np.zeros((3, 1), np.int64), np.zeros((3, 260), np.float32))
    assert np.isfinite(scores[0]).sum() == 1 and np.isfinite(scores[0, EOS])  # complete: only EOS
    assert np.isfinite(scores[1, EOS]) and np.isfinite(scores[2]).all()


def test_seq2seq_under_constraints(tiny_t5):
    """T5 (encoder-decoder): the decoder's new tokens follow the constraint too, greedy and beam."""
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    for kw in (dict(), dict(num_beams=3)):
        res = t5.generate(["translate: house", "hello there"], max_new_tokens=30,
                          constraints=[{"regex": DATE}, {"choices": CHOICES}], **kw)
        assert res.finish_reasons == ["eos", "eos"] and res.constraint_satisfied == [True, True]
        assert re.fullmatch(DATE, res.text[0]) and res.text[1] in CHOICES, res.text


# ---------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw,parameter,words", [
    (dict(json_schema={"type": "no-such-type"}), "json_schema", "invalid JSON schema"),
    (dict(json_schema="{not json"), "json_schema", "not valid JSON"),
    (dict(json_schema=[1, 2]), "json_schema", "must be a dict"),
    (dict(regex="(("), "regex", "invalid regex"),
    (dict(regex=""), "regex", "non-empty"),
    (dict(choices="red"), "choices", "list of non-empty strings"),
    (dict(choices=["a", ""]), "choices", "list of non-empty strings"),
    (dict(grammar='start: a\na: a "x"'), "grammar", "cannot match any text"),
    (dict(grammar="start: ( "), "grammar", "invalid grammar"),
    (dict(json_schema=SCHEMA, regex=DATE), "regex", "only one constraint"),
    (dict(regex=DATE, constraints=[None]), "constraints", "not both"),
    (dict(constraints=[{"regex": DATE}, None]), "constraints", "one entry per prompt"),
    (dict(constraints=[{"regex": DATE, "choices": ["a"]}]), "constraints", "exactly one"),
    (dict(constraints=[{"regexp": DATE}]), "constraints", "unknown key"),
    (dict(constraints=["[0-9]"]), "constraints", "each entry is a dict"),
    (dict(choices=["ab"], min_new_tokens=5), "choices", "blocked by other generation parameters"),
    (dict(regex=DATE, eos_token_id=[]), "eos_token_id", "no eos_token_id"),
])
def test_bad_constraints_raise_parameter_error(tiny, kw, parameter, words):
    with pytest.raises(ParameterError, match=re.escape(words)) as info:
        tiny.generate("Hello", max_new_tokens=8, **kw)
    assert info.value.parameter == parameter


def test_bad_constraint_is_refused_before_any_run(tiny, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model ran although the constraint is invalid")
    monkeypatch.setattr(tiny, "start", boom)
    with pytest.raises(ParameterError):
        tiny.generate("Hello", regex="((")
    with pytest.raises(ParameterError):
        list(tiny.stream("Hello", json_schema={"type": "no-such-type"}))


def test_without_the_extra_the_error_names_it(tiny_llama):
    """llguidance not importable: every constraint parameter raises ParameterError naming onnxlm[structured]."""
    import subprocess
    code = ("import sys; sys.modules['llguidance'] = None\n"
            "import onnxlm\nfrom onnxlm.runtime.errors import ParameterError\n"
            f"m = onnxlm.load({str(tiny_llama.onnx_dir)!r})\n"
            "assert m.generate('Hi', max_new_tokens=2).text is not None\n"  # unconstrained runs without it
            "for kw in ({'json_schema': {}}, {'regex': 'a'}, {'choices': ['a']}, {'grammar': 'start: \"a\"'}):\n"
            "    try:\n        m.generate('Hi', **kw)\n    except ParameterError as e:\n"
            "        assert e.parameter == list(kw)[0] and 'onnxlm[structured]' in str(e), e\n"
            "    else:\n        raise SystemExit('no error')\nprint('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_an_llguidance_older_than_the_floor_is_named(tiny_llama, monkeypatch):
    """llguidance before MIN_LLGUIDANCE (1.6 takes one EOS id, not several: a TypeError mid-call): a ParameterError
    naming the parameter, the version found and the one needed; pyproject asks for that version."""
    from onnxlm.runtime import constraints

    least = ".".join(map(str, constraints.MIN_LLGUIDANCE))
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'structured = \["llguidance>=([\d.]+),<2"\]', pyproject)[1] == least
    monkeypatch.setattr(llguidance, "__version__", "1.6.1", raising=False)
    with pytest.raises(ParameterError, match=rf"regex: structured generation needs llguidance >= {re.escape(least)}; "
                                             r"1\.6\.1 is installed"):
        onnxlm.load(tiny_llama.onnx_dir).generate("Hi", regex="a+", max_new_tokens=2)


# ---------------------------------------------------------------------------------------------- server helper
def test_response_format_to_params():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert response_format_to_params({"type": "json_schema", "json_schema": {"name": "x", "schema": schema,
                                                                             "strict": True}}) == {"json_schema": schema}
    assert response_format_to_params({"type": "json_object"}) == {"json_schema": {"type": "object"}}
    assert response_format_to_params({"type": "text"}) == {} and response_format_to_params(None) == {}


@pytest.mark.parametrize("fmt,words", [
    ("json", "must be an object"),
    ({"type": "xml"}, "not supported"),
    ({"type": "json_schema"}, 'needs a "json_schema" object'),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, "name must be a non-empty string"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "must be a JSON Schema object"),
    ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes"}}, "strict must be"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "no-such-type"}}}, "invalid json_schema"),
])
def test_bad_response_format_names_response_format(fmt, words):
    with pytest.raises(ParameterError, match=re.escape(words)) as info:
        response_format_to_params(fmt)
    assert info.value.parameter == "response_format"


def test_response_format_output_feeds_generate(tiny):
    params = response_format_to_params({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}})
    res = tiny.generate("Hello", max_new_tokens=40, **params)
    assert matches("json_schema", SCHEMA, res.text[0]) and res.constraint_satisfied == [True]


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_constraint_flags(tiny, tiny_llama, tmp_path, capsys):
    from onnxlm.cli import main
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    grammar_file = tmp_path / "g.lark"
    grammar_file.write_text(LARK)
    cases = [(["--json-schema", schema_file], dict(json_schema=SCHEMA)), (["--regex", DATE], dict(regex=DATE)),
             (["--choices", "red,green,blue"], dict(choices=CHOICES)), (["--grammar", grammar_file], dict(grammar=LARK))]
    for flags, kw in cases:
        assert main([str(a) for a in ["generate", tiny_llama.onnx_dir, "Hello", "--max-new-tokens", 30, "--json",
                                      *flags]]) == 0
        rec = json.loads(capsys.readouterr().out.strip())
        want = tiny.generate("Hello", max_new_tokens=30, **kw)
        assert rec["text"] == want.text[0] and rec["constraint_satisfied"] is want.constraint_satisfied[0] is True
    assert main([str(a) for a in ["generate", tiny_llama.onnx_dir, "Hello", "--max-new-tokens", 3,
                                  "--json-schema", schema_file]]) == 0
    assert "incomplete" in capsys.readouterr().err
    assert main(["generate", str(tiny_llama.onnx_dir), "Hello", "--regex", "(("]) == 1
    assert "regex: invalid regex" in capsys.readouterr().err
    assert main(["chat", str(tiny_llama.onnx_dir), "Pick one", "--choices", "red,green,blue", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip())
    assert rec["text"] in CHOICES and rec["constraint_satisfied"] is True
    assert main(["generate", str(tiny_llama.onnx_dir), "Hello", "--regex", DATE, "--stream"]) == 0
    assert re.fullmatch(DATE, capsys.readouterr().out.strip())

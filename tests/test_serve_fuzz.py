"""A standing fuzz test of the server (hypothesis): a few hundred request bodies on /v1/completions,
/v1/chat/completions, llama.cpp's /completion, /tokenize, /detokenize and /apply-template, and the embedding endpoints
(/v1/embeddings, llama.cpp's /embedding, on the tiny Llama's fused twin) with hostile values in any field (NaN, +-inf,
2^63, -1, huge strings, lone surrogates, wrong types, nested junk, unknown roles, logit_bias and tools included)
never get a 5xx; every 4xx carries OpenAI's error body; streams carry no server error; ``/health`` is 200 and
nothing is left in flight afterwards.

Bounded: ``max_examples`` per endpoint and a per-example deadline; derandomized (the same bodies every run, so CI
is stable). ``ONNXLM_FUZZ_RANDOM=1`` draws new bodies (and ``ONNXLM_FUZZ_EXAMPLES=N`` more of them) to hunt."""
from __future__ import annotations

import json
import math
import os

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz test needs the test extra (hypothesis)")
httpx = pytest.importorskip("httpx", reason="the server tests need the test extra")
pytest.importorskip("starlette", reason="the server tests need the serve extra")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from serve_util import live_tiny, nested_schema, wait_health, wait_idle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RANDOM = os.environ.get("ONNXLM_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("ONNXLM_FUZZ_EXAMPLES", "150"))

# -------------------------------------------------------------------------------------------------- hostile values
SPECIAL = [math.nan, math.inf, -math.inf, 2**63, 2**63 - 1, -2**63, 2**64, 10**30, -1, 0, 1, 2, 0.5, -0.0, 1e308,
           5e-324, True, False, None, "", "\ud800", "\udfff x", "a\x00b", "x" * 100_000, "\U0001d518", "-1", "NaN",
           "1e999", [], {}, [None], {"": None}]
scalar = st.one_of(st.sampled_from(SPECIAL), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                   st.text(max_size=12))
junk = st.recursive(scalar, lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8)

ROLES = ["system", "user", "assistant", "tool", "developer", "wizard", "", "USER", "\ud800", 3, None, ["user"]]
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": st.one_of(st.text(max_size=30), junk)}),
    st.fixed_dictionaries({"role": st.sampled_from(ROLES),
                           "content": st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url",
                                                                                                  3]),
                                                                      "text": st.one_of(st.text(max_size=10), junk)}),
                                               max_size=3)}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": st.one_of(st.none(), st.text(max_size=5)),
                           "tool_calls": junk}),
    st.fixed_dictionaries({"role": st.just("tool"), "content": st.text(max_size=5), "tool_call_id": junk}),
    junk)
bias_key = st.one_of(st.integers(min_value=0, max_value=300).map(str), st.sampled_from(
    ["-1", "abc", "1e3", "1.0", " 5", "9" * 30, "\ud800", "", "0x10", "\u0665"]))
logit_bias = st.one_of(st.dictionaries(bias_key, st.one_of(st.floats(min_value=-120, max_value=120), scalar),
                                       max_size=6), junk)


schema = st.one_of(junk, st.just({"type": "object", "properties": {"a": {"type": "integer"}}}),
                   st.just({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}),
                   st.integers(1, 400).map(nested_schema),
                   st.sampled_from([{"$ref": "#"}, {"enum": list(range(5000))}, {"type": "string", "pattern": "["},
                                    {"type": "array", "minItems": 2**63}, {"type": "number", "multipleOf": 0},
                                    {"type": "string", "pattern": "(" * 300 + ")" * 300}]))
tool = st.one_of(junk, st.fixed_dictionaries({"type": st.sampled_from(["function", "code", 3]),
                                              "function": st.one_of(junk, st.fixed_dictionaries(
                                                  {"name": st.one_of(st.text(max_size=8), junk),
                                                   "parameters": schema}))}))
response_format = st.one_of(junk, st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object",
                                                                                  "json_schema", "yaml", 1]),
                                                         "json_schema": st.one_of(junk, st.fixed_dictionaries(
                                                             {"name": st.text(max_size=5), "schema": schema}))}))

def either(valid):
    """Half near-valid values (so bodies get past the first field and reach the engine), half hostile ones."""
    return st.one_of(valid, junk)


finite = st.floats(allow_nan=False, allow_infinity=False)
#: fields and what to put there (shapes near the valid ones, or anything hostile)
FIELDS = {
    "model": either(st.just("tiny")), "max_tokens": either(st.integers(0, 4)),
    "temperature": either(st.floats(0, 2) | st.sampled_from([5e-324, 1e-30, 1e-8])),
    "top_p": either(st.floats(0, 1)), "n": either(st.integers(1, 3)),
    "stop": either(st.lists(st.text(max_size=4), max_size=5) | st.text(max_size=3)),
    "seed": either(st.integers(0, 2**63 - 1)), "stream": either(st.booleans()),
    "stream_options": either(st.fixed_dictionaries({"include_usage": st.booleans()})),
    "presence_penalty": either(st.floats(-2, 2)), "frequency_penalty": either(st.floats(-2, 2)),
    "top_k": either(st.integers(0, 300)), "repetition_penalty": either(st.floats(1e-3, 10) | finite),
    "num_beams": either(st.integers(1, 3)), "user": either(st.text(max_size=5)), "logit_bias": logit_bias,
    "response_format": response_format,
    "grammar": either(st.sampled_from(['root ::= "a" | "b"', "start: /[0-9]+/", "root ::= (", "root ::= x", "",
                                       'root ::= "a"* ', "%llguidance {}\nstart: %json {}"]) | st.text(max_size=20)),
}
#: fields this server may not know (yet): an unknown argument is refused first, so they come in a quarter of bodies
RARE_FIELDS = {
    "tools": st.one_of(st.lists(tool, max_size=3), junk),
    "tool_choice": st.one_of(st.sampled_from(["none", "auto", "required", "any"]), junk,
                             st.fixed_dictionaries({"type": st.just("function"), "function": junk})),
    "parallel_tool_calls": either(st.booleans()), "functions": junk, "no_such_field": junk,
}
COMPLETION_FIELDS = {"prompt": st.one_of(st.text(max_size=40), st.lists(st.integers(-3, 300), max_size=6), junk),
                     "echo": either(st.booleans()), "suffix": junk, "best_of": either(st.integers(1, 3)),
                     "logprobs": either(st.integers(0, 6))}
CHAT_FIELDS = {"messages": st.one_of(st.lists(message, min_size=1, max_size=4), junk),
               "logprobs": either(st.booleans()), "top_logprobs": either(st.integers(0, 21)),
               "max_completion_tokens": either(st.integers(0, 4)),
               "chat_template_kwargs": either(st.dictionaries(
                   st.sampled_from(["enable_thinking", "tools", "bos_token", "raise_exception", "range", "x y", ""]),
                   st.one_of(st.booleans(), st.integers(-2, 2), st.text(max_size=3), st.none()), max_size=3)),
               "reasoning_format": either(st.sampled_from(["auto", "deepseek", "none", "think"])),
               # OpenAI's predicted outputs: the text proposes tokens; the answer is the model's whatever it says
               "prediction": either(st.fixed_dictionaries({"type": st.sampled_from(["content", "text"]),
                                                           "content": st.one_of(st.text(max_size=30), junk)}) | junk),
               "prompt_lookup_num_tokens": either(st.integers(0, 65))}


def bodies(chat: bool):
    """A valid small body (max_tokens 2, greedy) with 1-4 fields replaced or added, and in a quarter of the
    bodies one of the rarer fields too."""
    fields = {**FIELDS, **(CHAT_FIELDS if chat else COMPLETION_FIELDS)}
    base = ({"messages": [{"role": "user", "content": "hi"}]} if chat else {"prompt": "Hello"})
    names = st.lists(st.sampled_from(sorted(fields)), min_size=1, max_size=4, unique=True)
    rare = st.sampled_from([None] * (3 * len(RARE_FIELDS)) + sorted(RARE_FIELDS))

    def fill(picked):
        chosen, extra_name = picked
        strategies = {k: fields[k] for k in chosen}
        if extra_name is not None:
            strategies[extra_name] = RARE_FIELDS[extra_name]
        return st.fixed_dictionaries(strategies).map(lambda extra: {**base, "max_tokens": 2, "temperature": 0,
                                                                    **extra})
    return st.tuples(names, rare).flatmap(fill)


@pytest.fixture(scope="module")
def live(tiny_llama):
    yield from live_tiny(tiny_llama.onnx_dir)


@pytest.fixture(scope="module")
def http(live):
    with httpx.Client(base_url=live.url, timeout=60) as c:
        yield c


def _check(r: httpx.Response, body) -> None:
    """No 5xx; a 4xx has OpenAI's error body; a 200 is a JSON answer or a stream without a server error."""
    what = f"{r.status_code} for {json.dumps(body, allow_nan=True)[:400]}: {r.text[:400]}"
    assert r.status_code < 500, what
    if r.status_code >= 400:
        err = r.json()["error"]
        assert isinstance(err, dict) and isinstance(err["message"], str) and err["message"], what
        assert err["type"] != "server_error", what
        return
    assert r.status_code == 200, what
    if r.url.path == "/completion":  # llama.cpp's: no [DONE]; each prompt's answer ends with stop: true
        if r.headers["content-type"].startswith("text/event-stream"):
            events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
            assert events and all(e.get("error", {}).get("type") != "server_error" for e in events), what
            assert events[-1].get("stop") is True or "error" in events[-1] or "response_fields" in body, what
        else:
            answer = r.json()
            assert all(isinstance(a, dict) for a in (answer if isinstance(answer, list) else [answer])), what
        return
    if r.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        assert data and data[-1] == "[DONE]", what
        for d in data[:-1]:
            event = json.loads(d)
            assert event.get("error", {}).get("type") != "server_error", what
    elif r.url.path in ("/tokenize", "/detokenize", "/apply-template"):  # ids (or llama.cpp's pieces), or a text
        answer = r.json()
        assert isinstance(answer.get("tokens"), list) or isinstance(answer.get("prompt"), str), what
    elif r.url.path == "/v1/embeddings":  # OpenAI's list of vectors (floats or base64)
        data = r.json()["data"]
        assert data and all(isinstance(d["embedding"], (list, str)) and d["embedding"] for d in data), what
    elif r.url.path == "/embedding":  # llama.cpp's: [{"index", "embedding": [[...]]}]
        answer = r.json()
        assert answer and all(len(a["embedding"]) == 1 and a["embedding"][0] for a in answer), what
    else:
        assert r.json()["choices"], what


SETTINGS = settings(max_examples=EXAMPLES, deadline=5000, derandomize=not RANDOM, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_hostile_bodies_never_get_a_5xx(live, http, path):
    chat = "chat" in path

    @SETTINGS
    @given(body=bodies(chat))
    def one(body):
        raw = json.dumps(body, allow_nan=True)  # NaN / Infinity literals, lone surrogates as \ud800 escapes
        _check(http.post(path, content=raw, headers={"Content-Type": "application/json"}), body)

    one()
    assert wait_health(live.url)["status"] == "ok"
    wait_idle(live.url)


TOKENIZE_FIELDS = {
    "prompt": st.one_of(st.text(max_size=40), junk), "messages": CHAT_FIELDS["messages"],
    "content": st.one_of(st.text(max_size=40), junk), "add_special_tokens": either(st.booleans()),
    "return_token_strs": either(st.booleans()), "add_generation_prompt": either(st.booleans()),
    "add_special": either(st.booleans()), "parse_special": either(st.booleans()),
    "with_pieces": either(st.booleans()), "tools": RARE_FIELDS["tools"],
    "chat_template_kwargs": CHAT_FIELDS["chat_template_kwargs"], "model": FIELDS["model"],
    "tokens": st.one_of(st.lists(st.integers(-3, 300), max_size=8), junk), "no_such_field": junk,
}


#: path -> (the valid bodies fuzzed from, the fields replaced or added)
TOKENIZE_PATHS = {
    "/tokenize": ([{"prompt": "Hello"}, {"messages": [{"role": "user", "content": "hi"}]}, {"content": "Hello"}],
                  sorted(TOKENIZE_FIELDS)),
    "/detokenize": ([{"tokens": [72, 101]}], ["tokens", "model", "no_such_field"]),
    "/apply-template": ([{"messages": [{"role": "user", "content": "hi"}]}],
                        ["messages", "tools", "chat_template_kwargs", "model", "prompt", "no_such_field"]),
}


def replaced(bases: list[dict], fields: list[str], values: dict, most: int):
    """A valid body of ``bases`` with 1-``most`` of ``fields`` (drawn from ``values``) replaced or added."""
    names = st.lists(st.sampled_from(fields), min_size=1, max_size=most, unique=True)
    return st.tuples(st.sampled_from(bases), names).flatmap(
        lambda picked: st.fixed_dictionaries({k: values[k] for k in picked[1]}).map(
            lambda extra: {**picked[0], **extra}))


def post_each(http, path: str, bodies) -> list[int]:
    """Each body ``bodies`` draws (a quarter of EXAMPLES) posted to ``path`` and checked (``_check``) -> the
    statuses."""
    statuses = []

    @settings(SETTINGS, max_examples=max(EXAMPLES // 4, 1))
    @given(body=bodies)
    def one(body):
        r = http.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"})
        statuses.append(r.status_code)
        _check(r, body)

    one()
    return statuses


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize", "/apply-template"])
def test_hostile_tokenize_bodies_never_get_a_5xx(live, http, path):
    """A valid body of ``path`` with 1-2 of its fields replaced or added."""
    statuses = post_each(http, path, replaced(*TOKENIZE_PATHS[path], TOKENIZE_FIELDS, 2))
    assert wait_health(live.url)["status"] == "ok"
    assert 200 in statuses and 400 in statuses, statuses  # bodies that pass, and bodies refused


NATIVE_FIELDS = {
    "prompt": st.one_of(st.text(max_size=40), st.sampled_from(["\ud800", "a\udfff"]),
                        st.lists(st.one_of(st.integers(-3, 300), st.text(max_size=6), st.just("\ud800")), max_size=6),
                        junk),
    "n_predict": either(st.integers(-2, 4)), "max_tokens": either(st.integers(-1, 4)),
    "temperature": either(st.floats(-1, 2)), "top_k": either(st.integers(-1, 300)), "top_p": either(st.floats(-1, 2)),
    "min_p": either(st.floats(-1, 2)), "typical_p": either(st.floats(-1, 2)), "min_keep": either(st.integers(-1, 5)),
    "repeat_penalty": either(st.floats(-1, 3)), "repeat_last_n": either(st.integers(-2, 70)),
    "presence_penalty": either(finite), "frequency_penalty": either(finite), "seed": either(st.integers(-2, 2**33)),
    "stop": FIELDS["stop"], "n_probs": either(st.integers(-1, 21)), "stream": either(st.booleans()),
    "n_indent": either(st.integers(-1, 8)), "t_max_predict_ms": either(st.integers(-1, 50)),
    "logit_bias": st.one_of(logit_bias, st.dictionaries(st.sampled_from(["\u00b2", "\ud800", " 5", "-1", "+7", "5 "]),
                                                        finite, max_size=3),
                            st.lists(st.tuples(st.one_of(st.integers(-1, 300), st.text(max_size=4)),
                                                           st.one_of(finite, st.just(False), junk)).map(list),
                                                 max_size=4)),
    "samplers": either(st.lists(st.sampled_from(["top_k", "top_p", "min_p", "typ_p", "temperature", "penalties",
                                                 "dry", "xtc", "infill", "temp", "x"]), max_size=6)
                       | st.text(alphabet="kypmtedxsiq", max_size=6)),
    "ignore_eos": either(st.booleans()), "return_tokens": either(st.booleans()),
    "response_fields": either(st.lists(st.sampled_from(["content", "timings/prompt_n", "x/y", ""]), max_size=3)),
    "json_schema": schema, "grammar": FIELDS["grammar"], "response_format": response_format,
    "mirostat": either(st.integers(0, 2)), "dry_multiplier": either(st.floats(0, 1)),
    "post_sampling_probs": either(st.booleans()), "cache_prompt": either(st.booleans()), "no_such_field": junk,
}


def test_hostile_native_completion_bodies_never_get_a_5xx(live, http):
    """llama.cpp's /completion: a valid body (2 tokens) with 1-3 of its fields replaced or added."""
    statuses = post_each(http, "/completion", replaced([{"prompt": "Hello", "n_predict": 2}], sorted(NATIVE_FIELDS),
                                                       NATIVE_FIELDS, 3))
    assert wait_health(live.url)["status"] == "ok"
    wait_idle(live.url)
    assert 200 in statuses and 400 in statuses, statuses


EMBEDDING_FIELDS = {
    "input": st.one_of(st.text(max_size=40), st.lists(st.text(max_size=8), max_size=4),
                       st.lists(st.integers(-3, 300), max_size=6),
                       st.lists(st.lists(st.integers(-3, 300), max_size=4), max_size=3), junk),
    "content": st.one_of(st.text(max_size=40),
                         st.lists(st.one_of(st.integers(-3, 300), st.text(max_size=6), st.just("\ud800")), max_size=6),
                         st.lists(st.one_of(st.text(max_size=8), st.lists(st.integers(-3, 300), max_size=4)),
                                  max_size=3), junk),
    "encoding_format": either(st.sampled_from(["float", "base64", "hex"])), "dimensions": either(st.integers(-1, 70)),
    "embd_normalize": either(st.integers(-2, 4)), "user": FIELDS["user"], "model": FIELDS["model"],
    "no_such_field": junk,
}
#: path -> (the valid bodies fuzzed from, the fields replaced or added)
EMBEDDING_PATHS = {
    "/v1/embeddings": ([{"input": "Hello"}, {"input": ["a", "bc"]}, {"input": [[5, 6], [7]]}],
                       ["input", "encoding_format", "dimensions", "user", "model", "content", "embd_normalize",
                        "no_such_field"]),
    "/embedding": ([{"content": "Hello"}, {"content": [5, "a"]}, {"input": ["a", [5, 6]]}],
                   ["content", "input", "embd_normalize", "encoding_format", "model", "dimensions", "no_such_field"]),
}


@pytest.fixture(scope="module")
def live_fused(tmp_path_factory, tiny_llama):
    """A server of the tiny Llama's fused twin (its graph gives the hidden states the embedding endpoints pool)."""
    from test_serve_embeddings import fused_tiny_llama

    yield from live_tiny(fused_tiny_llama(tmp_path_factory, tiny_llama), max_rows=4, max_queue=8)


@pytest.mark.parametrize("path", sorted(EMBEDDING_PATHS))
def test_hostile_embedding_bodies_never_get_a_5xx(live_fused, path):
    """A valid embedding body with 1-3 of its fields replaced or added."""
    with httpx.Client(base_url=live_fused.url, timeout=60) as http:
        statuses = post_each(http, path, replaced(*EMBEDDING_PATHS[path], EMBEDDING_FIELDS, 3))
    assert wait_health(live_fused.url)["status"] == "ok"
    wait_idle(live_fused.url)
    assert 200 in statuses and 400 in statuses, statuses

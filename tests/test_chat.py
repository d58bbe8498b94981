"""runtime.chat.render_chat: the jinja2 environment and message validation (no model needed)."""
from __future__ import annotations

import pytest

from onnxlm.runtime.chat import render_chat
from onnxlm.runtime.errors import InputError

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_chatml_render():
    msgs = [{"role": "user", "content": "hi"}]
    assert render_chat(CHATML, msgs) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat(CHATML, msgs, add_generation_prompt=False) == "<|im_start|>user\nhi<|im_end|>\n"


def test_environment_features():
    t = (
        "{{ bos_token }}{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "  {% generation %}{{ m | tojson }}{% endgeneration %}\n"
        "{% endfor %}{{ eos_token }}{{ extra_var }}"
    )
    out = render_chat(
        t, [{"role": "skip", "content": "x"}, {"role": "user", "content": "<é>"}],
        bos_token="<s>", eos_token="</s>", extra_var="!",
    )
    # trim_blocks/lstrip_blocks remove the block lines; tojson does not HTML-escape nor ASCII-escape
    assert out == '<s>{"role": "user", "content": "<é>"}</s>!'


def test_raise_exception_becomes_input_error():
    t = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}"
    with pytest.raises(InputError, match="first message must be system"):
        render_chat(t, [{"role": "user", "content": "hi"}])


def test_sandbox():
    with pytest.raises(InputError):
        render_chat("{{ messages.__class__.__mro__ }}{% set x = messages.append(1) %}", [{"role": "u", "content": "c"}])


@pytest.mark.parametrize(
    "messages, match",
    [
        ("hello", "expected a list"),
        ([], "empty"),
        (["hi"], r"messages\[0\]: expected a dict"),
        ([{"content": "x"}], "missing the 'role'"),
        ([{"role": "user"}], "missing the 'content'"),
        ([{"role": "user", "content": None}], r"\['content'\]: expected a str"),
        ([{"role": "user", "content": "ok"}, {"role": 3, "content": "x"}], r"messages\[1\]\['role'\]"),
    ],
)
def test_message_validation(messages, match):
    with pytest.raises(InputError, match=match):
        render_chat(CHATML, messages)


def test_bad_template():
    with pytest.raises(InputError, match="not a valid jinja2"):
        render_chat("{% for %}", [{"role": "user", "content": "x"}])
    with pytest.raises(InputError, match="non-empty"):
        render_chat("", [{"role": "user", "content": "x"}])

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


@pytest.mark.parametrize("name", ["chatml", "qwen3.jinja", "llama3-tools.jinja", "mistral-nemo-tools.jinja"])
def test_continue_final_message_equals_transformers(name, tiny_llama):
    """continue_final_message: the prompt ends right after the last (assistant) message's content, as transformers'
    apply_chat_template(..., continue_final_message=True) cuts it; contents the template strips are found stripped;
    a content the template does not write is an InputError."""
    from pathlib import Path

    from transformers import AutoTokenizer
    template = CHATML if name == "chatml" else (Path(__file__).parent / "data" / "chat_templates" / name).read_text()
    tok = AutoTokenizer.from_pretrained(tiny_llama.hf_dir)
    tok.chat_template = template
    for content in ("My favourite fruit is", "  Sure, here it is:\n "):
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."},
                {"role": "assistant", "content": content}]
        want = tok.apply_chat_template(msgs, tokenize=False, continue_final_message=True)
        got = render_chat(template, msgs, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "",
                          continue_final_message=True)
        assert got == want, (name, content)
        assert got.rstrip().endswith(content.strip())
    with pytest.raises(InputError, match="continue_final_message"):
        render_chat("{% for m in messages %}{{ m.role }}{% endfor %}", msgs, continue_final_message=True)
    # a short content that also occurs in the template's own text after it ("<" of "<|im_end|>", "im"): the prompt
    # still ends right after the content (transformers' last occurrence would cut inside the closing tag)
    def ending(content):
        msgs[-1]["content"] = content
        return render_chat(template, msgs, bos_token=tok.bos_token or "", eos_token=tok.eos_token or "",
                           continue_final_message=True)
    for short in ("<", "im", "s>"):
        assert ending(short) == ending("Q")[:-1] + short, (name, short)


def test_raise_exception_becomes_input_error():
    t = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}"
    with pytest.raises(InputError, match="first message must be system"):
        render_chat(t, [{"role": "user", "content": "hi"}])


@pytest.mark.parametrize("variables, error", [({"n": 0}, "ZeroDivisionError"), ({"n": "a"}, "TypeError"),
                                               ({"n": 1, "raise_exception": 1}, "TypeError"),
                                               ({"n": 1, "word": "abc"}, "ValueError")])
def test_a_failing_expression_is_an_input_error(variables, error):
    """The template's own expressions on its messages and variables (chat_template_kwargs come from a request) may
    fail in Python: an InputError naming the error (the server's 400), never the exception itself (a 500)."""
    t = "{{ messages[0]['content'] }}{{ 1 / n }}{{ word.index('z') if word is defined else '' }}" \
        "{{ raise_exception('x') if n == 1 and raise_exception is not callable else '' }}"
    with pytest.raises(InputError, match=f"rendering failed: {error}"):
        render_chat(t, [{"role": "user", "content": "hi"}], **variables)


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


# ---------------------------------------------------------------------------------------------------- with a model
BOS_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def bos_llama(tiny_llama, tmp_path_factory):
    """The tiny Llama (its tokenizer prepends <s>) with a chat template that writes {{ bos_token }} itself, as
    Llama-2/3, Mistral and TinyLlama templates do."""
    import json
    import shutil
    dst = tmp_path_factory.mktemp("bos-llama") / "onnx"
    shutil.copytree(tiny_llama.onnx_dir, dst)
    (dst / "chat_template.jinja").write_text(BOS_TEMPLATE, encoding="utf-8")
    manifest = json.loads((dst / "onnxlm.json").read_text())
    manifest["files"].pop("chat_template.jinja", None)
    (dst / "onnxlm.json").write_text(json.dumps(manifest))
    return dst


def test_chat_template_bos_is_not_doubled(bos_llama, tiny_llama):
    """chat() encodes the rendered template without special tokens, as transformers' apply_chat_template."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import onnxlm
    model = onnxlm.load(bos_llama)
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    tok = AutoTokenizer.from_pretrained(tiny_llama.hf_dir)
    tok.chat_template = BOS_TEMPLATE
    want_ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True)
    ids = model.render_chat(msgs, tokenize=True)
    assert ids == list(want_ids)
    assert ids.count(257) == 1 and ids[0] == 257  # exactly one <s>
    res = model.chat(msgs, max_new_tokens=8, eos_token_id=None)
    ref = AutoModelForCausalLM.from_pretrained(tiny_llama.hf_dir).eval()
    with torch.no_grad():
        x = torch.tensor([want_ids])
        want = ref.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=8, do_sample=False,
                            eos_token_id=None, pad_token_id=256).numpy()
    np.testing.assert_array_equal(res.sequences, want)


def test_cli_chat_and_generate_chat_use_the_template_bos_once(bos_llama, capsys):
    import json

    import onnxlm
    from onnxlm.cli import main
    model = onnxlm.load(bos_llama)
    expected = model.chat([{"role": "user", "content": "hi"}], max_new_tokens=6)
    doubled = model.generate([[257] + model.render_chat([{"role": "user", "content": "hi"}], tokenize=True)],
                             max_new_tokens=6)
    assert doubled.new_tokens[0] != expected.new_tokens[0]  # so the check below tells one BOS from two
    assert main(["generate", str(bos_llama), "hi", "--chat", "--max-new-tokens", "6", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["token_ids"] == expected.new_tokens[0] and rec["text"] == expected.text[0]
    assert main(["generate", str(bos_llama), "hi", "--chat", "--max-new-tokens", "6", "--stream"]) == 0
    assert capsys.readouterr().out == expected.text[0] + "\n"
    assert main(["chat", str(bos_llama), "hi", "--max-new-tokens", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == expected.new_tokens[0]

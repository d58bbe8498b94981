"""A thinking model's reasoning apart from its answer (onnxlm/runtime/reasoning.py): the split of a whole reply, the
same split streamed piece by piece over any cut of the text, whether a prompt leaves the block open, and which
``reasoning_format`` splits."""
from __future__ import annotations

import random

import pytest

from onnxlm.runtime.errors import ParameterError
from onnxlm.runtime.reasoning import ReasoningStream, opened, split, wanted

CASES = [  # reply, begins inside the block -> (reasoning, content)
    ("<think>\nhmm, let me see\n</think>\n\nParis.", False, ("hmm, let me see", "Paris.")),
    ("Paris.", False, (None, "Paris.")),
    ("  <think>a</think>b", False, ("a", "b")),
    ("<think>\n\n</think>\n\nHi", False, ("", "Hi")),
    ("<think>cut off </thi", False, ("cut off </thi", "")),
    ("no think <think>x</think>", False, (None, "no think <think>x</think>")),
    ("<thi", False, (None, "<thi")),
    ("x</think>y", False, (None, "x</think>y")),
    ("x</think>y", True, ("x", "y")),
    ("\n line1\n\n line2 \n</think>  \n\n answer \n", True, ("line1\n\n line2", "answer \n")),
    ("all reasoning, cut", True, ("all reasoning, cut", "")),
]


@pytest.mark.parametrize("text,inside,want", CASES)
def test_split_and_the_stream_agree_over_any_cut(text, inside, want):
    assert split(text, inside) == want
    rng = random.Random(len(text))
    for _ in range(100):
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        stream, parts = ReasoningStream(inside), []
        for a, b in zip([0] + cuts, cuts + [len(text)]):
            parts += stream.feed(text[a:b])
        parts += stream.finish()
        got = ("".join(t for k, t in parts if k == "reasoning"), "".join(t for k, t in parts if k == "content"))
        assert got == (want[0] or "", want[1]), (text, cuts)


def test_an_open_block_and_the_formats():
    assert opened("<|im_start|>assistant\n<think>\n") and not opened("<think>\n\n</think>\n\n") and not opened("x")
    assert wanted("auto", "... '<think>' ...") and not wanted("auto", "no tags") and wanted("deepseek", "")
    assert not wanted("none", "<think>") and not wanted("auto", None)
    with pytest.raises(ParameterError, match="reasoning_format: got 'think'; allowed: auto, deepseek, none"):
        wanted("think", "<think>")


def test_a_long_open_block_in_a_prefill_is_found(tiny_llama):
    """prompt_opens reads further back than the last 8 tokens until a tag shows: a prefill the reply continues
    (continue_final_message) may hold a long open <think> block; a closed one, or none, is not open."""
    from onnxlm.runtime.reasoning import prompt_opens
    from onnxlm.runtime.tokenizer import TextTokenizer
    tok = TextTokenizer.from_file(tiny_llama.onnx_dir / "tokenizer.json").tokenizer
    ids = lambda text: tok.encode(text, add_special_tokens=False).ids  # noqa: E731
    thought = " and so on, thinking at length about the question" * 20
    assert len(ids(thought)) > 64 and prompt_opens(tok, ids("user: hi\nassistant: <think>" + thought))
    assert not prompt_opens(tok, ids("user: hi\nassistant: <think>" + thought + "</think> The answer" + thought))
    assert not prompt_opens(tok, ids("user: hi\nassistant:" + thought)) and prompt_opens(tok, ids("<think>\n"))

"""runtime/decoding/stopping.py against transformers' StopStringCriteria on small trained tokenizers (byte-level BPE
like GPT-2/SmolLM2, Metaspace BPE like Llama/T5): same matches on random rows, and the text cut at the match."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.generation.stopping_criteria import StopStringCriteria

from onnxlm.runtime.decoding.stopping import StopStringMatcher

CORPUS = ["Hello world, the cat sat on the mat.", "Q: hi\n\nA: hello there!", "caf\u00e9 \u4e16\u754c \U0001f389 ok",
          "The stop sign stops the stopper.", "one, two, three\n\nfour five six",
          "the quick brown fox jumps over the lazy dog"] * 20
SPECIALS = ["<s>", "</s>", "<|im_end|>"]


def _trained(kind: str) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if kind == "byte-level":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                        initial_alphabet=alphabet, show_progress=False))
    return tok


@pytest.fixture(scope="module", params=["byte-level", "metaspace"])
def tokenizer(request) -> Tokenizer:
    return _trained(request.param)


def _rows(tok: Tokenizer, rng: random.Random, n: int, text: str) -> list[list[int]]:
    """Random short rows: pieces of `text` (half of them ending at a random point) or of the corpus, sometimes with
    a special token or a random id inserted."""
    V = tok.get_vocab_size()
    rows = []
    for _ in range(n):
        src = text if rng.random() < 0.6 else rng.choice(CORPUS)
        a = rng.randrange(len(src))
        ids = tok.encode(src[a:a + rng.randrange(1, 12)], add_special_tokens=False).ids or [0]
        if rng.random() < 0.3:
            ids.insert(rng.randrange(len(ids) + 1), tok.token_to_id(rng.choice(SPECIALS)))
        if rng.random() < 0.2:
            ids.insert(rng.randrange(len(ids)), rng.randrange(V))
        rows.append(ids)
    return rows


def test_matcher_equals_transformers(tokenizer):
    hf = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    rng = random.Random(0)
    positives = 0
    for trial in range(20):
        text = rng.choice(CORPUS)
        stops = []
        for _ in range(rng.randrange(1, 4)):
            a = rng.randrange(len(text))
            stops.append(text[a:a + rng.randrange(1, 5)] if rng.random() < 0.8 else rng.choice(SPECIALS))
        want_fn, ours = StopStringCriteria(hf, stops), StopStringMatcher(tokenizer, stops)
        for row in _rows(tokenizer, rng, 60, text):
            want = bool(want_fn(torch.tensor([row]), None)[0])
            assert (ours.find(row) is not None) == want, (row, tokenizer.decode(row, skip_special_tokens=False), stops)
            assert bool(ours(np.array([row]))[0]) == want
            positives += want
    assert positives > 30  # the rows do hit stop strings, not only miss them


def test_cut_is_the_new_text_before_the_match(tokenizer):
    """Rows ending in a match: the cut text is the decoded new text up to where the match starts (in the token
    strings of prompt + new ids), clipped at 0 when it starts in the prompt. The decoded text may lack the leading
    space of the token strings (Metaspace strips it) and joins split UTF-8 characters: those rows are left out."""
    rng = random.Random(1)
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    checked = clipped = 0
    for text in CORPUS[:6]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        for _ in range(40):
            t = rng.randrange(2, len(ids) + 1)
            t0 = rng.randrange(1, t)
            row = ids[:t]
            probe = StopStringMatcher(tokenizer, ["x"])
            strings = [probe.token_string(i) for i in row]
            joined, last_start = "".join(strings), len("".join(strings[:-1]))
            p0 = len("".join(strings[:t0]))  # where the new ids start in the token strings
            new_text = decode(row[t0:])
            lead = len(joined) - p0 - len(new_text)  # characters the decoder drops at the start (0 or 1)
            if "\ufffd" in joined or lead not in (0, 1) or joined[p0 + lead:] != new_text or not strings[-1]:
                continue
            end = rng.randrange(last_start + 1, len(joined) + 1)  # a stop string that ends in the last token
            stop = joined[max(0, end - rng.randrange(1, 6)):end]
            start = joined.find(stop, max(0, last_start - len(stop) + 1))
            got = StopStringMatcher(tokenizer, [stop]).cut(decode, row, t0, set())
            assert got == new_text[:max(0, start - p0 - lead)], (row, t0, stop)
            checked += 1
            clipped += start < p0
    assert checked > 50 and 0 < clipped < checked

"""UGM (SentencePiece Unigram, ``tokenizer.ggml.model = "t5"``) tokenizers built from GGUF metadata give llama.cpp's
ids, every id of every corpus text (export/gguf_ugm.py).

The reference ids (tests/data/gguf_ugm/<vocab>.ids.json) come from llama.cpp (llama-cpp-python 0.3.36) via
tests/data/gguf_ugm/make_reference_ids.py over corpus.json; the vocabularies (T5-small's, as llama.cpp's converter
writes it for T5 and for XLM-RoBERTa models such as bge-m3) are tests/data/gguf_ugm/ugm_vocabs.py's. Modes as in
tests/test_gguf_tokenizers.py: ``special`` (BOS/EOS as the GGUF says, special-token strings parsed),
``special_no_add`` (no BOS/EOS) and ``plain`` (special-token strings are text).
"""
from __future__ import annotations

import importlib.util
import json
import pathlib
import sys
import warnings

import pytest

if importlib.util.find_spec("gguf") is None:
    pytest.skip("the 'gguf' package (export extra) is not installed", allow_module_level=True)

DATA = pathlib.Path(__file__).parent / "data" / "gguf_ugm"
sys.path.insert(0, str(DATA))
import ugm_vocabs  # noqa: E402

from skips import missing  # noqa: E402
from onnxlm.export.gguf_ugm import (build_ugm_tokenizer, charsmap_lookup, charsmap_pre_replacements,  # noqa: E402
                                    ugm_special_tokens, ugm_vocab, unknown_score_caveats)
from onnxlm.runtime.errors import ExportError  # noqa: E402
from onnxlm.runtime.tokenizer import TextTokenizer  # noqa: E402

TEXTS = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))["texts"]
MODES = ("special", "special_no_add", "plain")
# texts whose ids differ from llama.cpp's for a reason export/gguf_ugm.py documents: tokenizers' Precompiled maps a
# grapheme under 6 bytes by its shortest key ("Ａ" -> "A") and drops the rest, llama.cpp takes the longest ("Ａ\u0301")
KNOWN_DIFFERENCES = {"Known difference: \uff21\u0301 (full-width A + combining acute)"}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_ugm")


@pytest.fixture(scope="module", params=ugm_vocabs.VOCABS)
def built(request, tok_dir):
    """(name, reference record, TextTokenizer, the raw tokenizers.Tokenizer built) per vocabulary."""
    name = request.param
    try:
        meta = ugm_vocabs.vocab_metadata(name)
    except FileNotFoundError as e:
        missing(f"the T5-small tokenizer files are not there ({e})")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a proven vocabulary builds without a caveat
        raw = build_ugm_tokenizer(meta)
    path = tok_dir / f"{name}.tokenizer.json"
    raw.save(str(path))
    record = json.loads((DATA / f"{name}.ids.json").read_text(encoding="utf-8"))
    return name, record, TextTokenizer.from_file(path), raw


def test_corpus_is_broad():
    assert len(TEXTS) >= 60 and len(set(TEXTS)) == len(TEXTS)
    assert "" in TEXTS
    for needle in ("</s>", "<pad>", "<extra_id_0>", "\u2581", "\u200d", "\u65e5\u672c", "\t", "   ", "\n\n", "\r\n",
                   "\uff21", "\uff76\uff9e", "e\u0301", "\U0001f600", "12345"):
        assert any(needle in t for t in TEXTS), needle


def test_reference_matches_the_corpus_and_sources(built):
    name, record, _, _ = built
    assert record["vocab"] == name and record["n_texts"] == len(TEXTS)
    assert all(len(record["ids"][m]) == len(TEXTS) for m in MODES) and len(record["detokenized"]) == len(TEXTS)
    try:
        shas = ugm_vocabs.source_sha256()
    except FileNotFoundError as e:
        missing(f"the T5-small tokenizer files are not there ({e})")
    assert record["source_sha256"] == shas, f"{name}: the vocabulary files changed; rerun make_reference_ids.py"


@pytest.mark.parametrize("mode", MODES)
def test_every_id_equals_llama_cpp(built, mode):
    name, record, text_tok, _ = built
    if mode == "special":
        ours = [text_tok.encode(t) for t in TEXTS]
    elif mode == "special_no_add":
        ours = [text_tok.encode(t, add_special_tokens=False) for t in TEXTS]
    else:
        ours = [text_tok.encode(t, split_special_tokens=True) for t in TEXTS]
    bad = [(t, o, r) for t, o, r in zip(TEXTS, ours, record["ids"][mode]) if o != r and t not in KNOWN_DIFFERENCES]
    assert not bad, f"{name}/{mode}: {len(bad)} of {len(TEXTS)} texts differ from llama.cpp, first: {bad[0]!r}"


def test_known_differences_still_differ(built):
    """The documented difference is real (if tokenizers' Precompiled changes, this says so)."""
    _, record, text_tok, _ = built
    for t in KNOWN_DIFFERENCES:
        assert text_tok.encode(t) != record["ids"]["special"][TEXTS.index(t)]


def test_bos_eos_as_llama_cpp_adds_them(built):
    """T5: EOS appended (add_eos_token from the converter; UGM's default too), no BOS; XLM-R (bge-m3): both."""
    name, record, text_tok, raw = built
    bos_eos = {"xlmr": ([0], [2])}.get(name, ([], [1]))
    assert record["ids"]["special"][TEXTS.index("")] == bos_eos[0] + bos_eos[1]
    assert text_tok.encode("Hello world") == bos_eos[0] + text_tok.encode("Hello world", add_special_tokens=False) \
        + bos_eos[1]


def test_scores_survive_tokenizer_json(built):
    """tokenizer.json reads its scores back exactly (they are scaled to integers): a run of dashes, an exact tie of
    "---" + "-" orders, breaks as llama.cpp's (first text: the saved file, as the runtime loads it)."""
    from tokenizers import Tokenizer

    _, record, text_tok, raw = built
    again = Tokenizer.from_str(raw.to_str())
    assert json.loads(again.to_str())["model"] == json.loads(raw.to_str())["model"]
    t = "-" * 40
    assert text_tok.encode(t) == record["ids"]["special"][TEXTS.index(t)]


def test_decode_equals_llama_cpps_detokenize(built):
    """Our decode of llama.cpp's ids is llama.cpp's detokenize (control tokens dropped), and gives the text back where
    that does. Set aside: ids that start with a control or unknown token, after which llama.cpp keeps the leading
    space it otherwise drops (add_space_prefix); tokenizers' decoder never sees the dropped token."""
    name, record, text_tok, raw = built
    specials = {i for i, t in raw.get_added_tokens_decoder().items() if t.special}
    compared = back = 0
    for t, ids, detok in zip(TEXTS, record["ids"]["special_no_add"], record["detokenized"]):
        if ids and ids[0] in specials:
            continue
        compared += 1
        assert text_tok.decode(ids) == detok, (name, t)
        if detok == t:
            back += 1
            assert text_tok.decode(text_tok.encode(t, add_special_tokens=False)) == t
    assert compared >= len(TEXTS) - 5 and back >= 10, (compared, back)


def test_special_tokens_are_special(built):
    name, _, text_tok, raw = built
    added = raw.get_added_tokens_decoder()
    expected = {"<pad>", "</s>", "<unk>"} | ({"<s>", "<mask>"} if name == "xlmr" else set())
    assert expected <= {t.content for t in added.values() if t.special}
    extra = {t.content for t in added.values() if not t.special}
    assert extra == ({f"<extra_id_{k}>" for k in range(100)} if name == "t5-extra-ids" else set())


# ------------------------------------------------------------------------------------------------ unit tests

def test_ugm_special_tokens_defaults():
    """llama.cpp's UGM defaults where the keys are absent: eos 1, unk 2, pad 0, no bos; add_bos false, add_eos true."""
    meta = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["<pad>", "</s>", "<unk>", "a"]}
    sp = ugm_special_tokens(meta)
    assert (sp["eos_token"], sp["unk_token"], sp["pad_token"], sp["bos_token"]) == ("</s>", "<unk>", "<pad>", None)
    assert sp["add_bos_token"] is False and sp["add_eos_token"] is True
    with pytest.raises(ExportError, match="tokenizer.ggml.eos_token_id"):
        ugm_special_tokens({**meta, "tokenizer.ggml.eos_token_id": 9})


def _toy(**over):
    meta = {"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["<pad>", "</s>", "<unk>", "\u2581", "a", "b",
                                                                    "\u2581a", "ab", "<x>"],
            "tokenizer.ggml.scores": [0.0, 0.0, 0.0, -2.0, -3.0, -3.0, -2.5, -4.0, 0.0],
            "tokenizer.ggml.token_type": [3, 3, 2, 1, 1, 1, 1, 1, 3],
            "tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.remove_extra_whitespaces": True}
    meta.update(over)
    return meta


@pytest.mark.parametrize("key,value,needle", [
    ("tokenizer.ggml.scores", [0.0], "tokenizer.ggml.scores"),
    ("tokenizer.ggml.token_type", [1, 1], "tokenizer.ggml.token_type"),
    ("tokenizer.ggml.tokens", ["a", "a", "b"], "duplicated"),
    ("tokenizer.ggml.add_space_prefix", "yes", "tokenizer.ggml.add_space_prefix"),
    ("tokenizer.ggml.remove_extra_whitespaces", "no", "tokenizer.ggml.remove_extra_whitespaces"),
    ("tokenizer.ggml.precompiled_charsmap", [1, 0], "tokenizer.ggml.precompiled_charsmap"),
    ("tokenizer.ggml.precompiled_charsmap", [200, 0, 0, 0, 1, 2, 3], "tokenizer.ggml.precompiled_charsmap"),
    ("tokenizer.ggml.unknown_token_id", 99, "tokenizer.ggml.unknown_token_id"),
])
def test_metadata_errors_name_the_key(key, value, needle):
    meta = _toy(**{key: value})
    if key == "tokenizer.ggml.tokens":
        meta.update({"tokenizer.ggml.scores": [0.0] * 3, "tokenizer.ggml.token_type": [1] * 3})
    with pytest.raises(ExportError, match=needle):
        build_ugm_tokenizer(meta)


def test_toy_whole_string_viterbi_and_control_tokens():
    tok = build_ugm_tokenizer(_toy())
    # "▁a▁ab": one Viterbi over the whole string: "▁a" "▁a" "b" (-8.0) beats "▁a" "▁" "ab" (-8.5)
    assert tok.encode(" a  ab ", add_special_tokens=False).tokens == ["\u2581a", "\u2581a", "b"]
    assert tok.encode("a<x>b", add_special_tokens=False).ids == [6, 8, 3, 5]  # <x> cut out, "b" a new fragment
    tok.encode_special_tokens = True  # "<x>" as text: "<" and "x" have no token: one unknown, no control token
    assert 8 not in tok.encode("a<x>b", add_special_tokens=False).ids


def test_toy_unknown_score_caveat_warns():
    """A code point inside a longer token without a token of its own: tokenizers' unknown score is not llama.cpp's."""
    meta = _toy(**{"tokenizer.ggml.tokens": ["<pad>", "</s>", "<unk>", "\u2581", "a", "b", "\u2581a", "ab", "ac"],
                   "tokenizer.ggml.token_type": [3, 3, 2, 1, 1, 1, 1, 1, 1]})
    assert unknown_score_caveats(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]) == ["c"]
    with pytest.warns(UserWarning, match="tokenizer.ggml.tokens"):
        build_ugm_tokenizer(meta)


def test_ugm_vocab_keeps_control_tokens_out_of_reach():
    tokens, types = ["<pad>", "</s>", "<unk>", "\u2581", "a", "[PAD5]", "<u>"], [3, 3, 2, 1, 1, 5, 4]
    vocab, marked = ugm_vocab(tokens, [0.0, 0.0, 0.0, -2.0, -3.0, -10000.0, -1000.0], types)
    assert [t for t, _ in vocab] == tokens and marked == ["<"]  # "<" is no token: the control tokens are marked
    assert vocab[5][1] == -10000.0 and vocab[6][1] == 0.0  # UNUSED keeps its score, USER_DEFINED scores 0
    assert vocab[4][1] == -3.0 and [s for _, s in vocab[:3]] == [6 * -4.0] * 3  # (longest + 1) * (min NORMAL - 1)


def test_t5_charsmap_decodes_and_pre_replacements():
    try:
        blob = bytes(ugm_vocabs.vocab_metadata("t5")["tokenizer.ggml.precompiled_charsmap"])
    except FileNotFoundError as e:
        missing(f"the T5-small tokenizer files are not there ({e})")
    assert charsmap_lookup(blob, "\uff21".encode()) == b"A" and charsmap_lookup(blob, b"\t") == b" "
    assert charsmap_lookup(blob, "\u2581".encode()) == b" " and charsmap_lookup(blob, b"a") is None
    assert charsmap_lookup(blob, "\u00e9\u0301".encode()) is None
    assert charsmap_lookup(blob, "\U0001f149\u0301".encode()) == "\u0179".encode()  # 🅉 + acute: a 2-code-point key
    pre = dict(charsmap_pre_replacements(blob))
    assert pre["\r\n"] == "  " and pre["\uff76\uff9e"] == "\u30ac"

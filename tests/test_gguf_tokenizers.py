"""Tokenizers built from GGUF metadata give llama.cpp's ids, every id of every corpus text.

The reference ids (tests/data/gguf_tokenizers/<vocab>.ids.json) come from llama.cpp (llama-cpp-python) via
tests/data/gguf_tokenizers/make_reference_ids.py over corpus.json; the vocabularies are tests/gguf_vocabs.py's.
Three modes per text, as llama.cpp's ``tokenize(text, add_bos, special)``:

* ``special`` (add_bos=True, special=True): the runtime's ``TextTokenizer.encode(text)`` on the artifact's
  tokenizer.json (the path ``generate``/``encode`` use: BOS/EOS as the GGUF says, special-token strings parsed);
* ``special_no_add`` (add_bos=False, special=True): ``TextTokenizer.encode(text, add_special_tokens=False)`` (the
  path of a rendered chat template);
* ``plain`` (add_bos=True, special=False): ``TextTokenizer.encode(text, split_special_tokens=True)`` (tokenizers'
  ``encode_special_tokens``: control tokens are text; user-defined ones, such as Gemma's runs of spaces, still are
  tokens; the path of ``onnxlm tokenize --no-parse-special`` and the server's ``parse_special: false``).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import pathlib
import warnings

import numpy as np
import pytest

if importlib.util.find_spec("gguf") is None:
    pytest.skip("the 'gguf' package (export extra) is not installed", allow_module_level=True)

import gguf_vocabs  # noqa: E402  (tests/ is on the path)

from skips import missing  # noqa: E402
from onnxlm.export.gguf import build_tokenizer_from_gguf, read_gguf_metadata  # noqa: E402
from onnxlm.runtime.tokenizer import TextTokenizer  # noqa: E402

DATA = pathlib.Path(__file__).parent / "data" / "gguf_tokenizers"
TEXTS = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))["texts"]
# vocabulary -> (tokenizer.ggml.model, tokenizer.ggml.pre) it proves
PROVEN = {
    "smollm2": ("gpt2", "smollm"),
    "smollm2-default": ("gpt2", "default"),
    "smollm2-gpt-2": ("gpt2", "gpt-2"),
    "llama3": ("gpt2", "llama-bpe"),
    "llama3-dbrx": ("gpt2", "dbrx"),
    "llama3-deepseek-coder": ("gpt2", "deepseek-coder"),
    "qwen2": ("gpt2", "qwen2"),
    "qwen2-qwen35": ("gpt2", "qwen35"),
    "qwen2-falcon": ("gpt2", "falcon"),
    "tekken": ("gpt2", "tekken"),
    "llama3-gpt-4o": ("gpt2", "gpt-4o"),
    "smollm2-trillion": ("gpt2", "trillion"),
    "smollm2-granite-docling": ("gpt2", "granite-docling"),
    "smollm2-a.x-4.0": ("gpt2", "a.x-4.0"),
    "smollm2-mellum": ("gpt2", "mellum"),
    "smollm2-exaone4": ("gpt2", "exaone4"),
    "smollm2-minerva-7b": ("gpt2", "minerva-7b"),
    "llama3-midm-2.0": ("gpt2", "midm-2.0"),
    "llama3-lfm2": ("gpt2", "lfm2"),
    "llama3-deepseek-llm": ("gpt2", "deepseek-llm"),
    "qwen2-megrez": ("gpt2", "megrez"),
    "qwen2-seed-coder": ("gpt2", "seed-coder"),
    "qwen2-viking": ("gpt2", "viking"),
    "llama3-kanana2": ("gpt2", "kanana2"),
    "gemma3": ("llama", "default"),
    "gemma3-prefix": ("llama", "default"),
    "mistral": ("llama", "default"),
    "mistral-v3": ("llama", "default"),
    "phi3": ("llama", "default"),
}
MODES = ("special", "special_no_add", "plain")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gguf_vocabs")


@pytest.fixture(scope="module", params=sorted(PROVEN))
def built(request, vocab_dir):
    """(name, reference record, TextTokenizer, the raw tokenizers.Tokenizer built) per vocabulary."""
    name = request.param
    try:  # real files through read_gguf_metadata; the written ones as the dict llama.cpp got as a GGUF file
        meta = gguf_vocabs.vocab_metadata(name)
    except (FileNotFoundError, ImportError, importlib.metadata.PackageNotFoundError) as e:
        missing(f"vocabulary {name!r} is not installed ({e}); scripts/setup.sh installs it")
    assert (meta["tokenizer.ggml.model"], meta.get("tokenizer.ggml.pre", "default")) == PROVEN[name]
    tok_file = vocab_dir / f"{name}.tokenizer.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a proven vocabulary builds without a caveat (score ties, ...)
        raw = build_tokenizer_from_gguf(meta)
    raw.save(str(tok_file))
    text_tok = TextTokenizer.from_file(tok_file)  # the artifact's path: through tokenizer.json, as the runtime loads it
    record = json.loads((DATA / f"{name}.ids.json").read_text(encoding="utf-8"))
    return name, record, text_tok, raw


def test_corpus_is_broad():
    assert len(TEXTS) >= 50 and len(set(TEXTS)) == len(TEXTS)
    assert "" in TEXTS
    for needle in ("<start_of_turn>", "<|im_start|>", "<|begin_of_text|>", "\u200d", "日本", "\t", "  ", "\n\n"):
        assert any(needle in t for t in TEXTS), needle


def test_reference_matches_the_corpus_and_sources(built):
    name, record, _, _ = built
    assert record["vocab"] == name
    assert record["n_texts"] == len(TEXTS)
    assert all(len(record["ids"][m]) == len(TEXTS) for m in MODES)
    import hashlib

    base = gguf_vocabs.VOCABS[name][0]
    shas = [hashlib.sha256(p.read_bytes()).hexdigest() for p in gguf_vocabs.source_files(base)]
    assert record["source_sha256"] == shas, f"{name}: the vocabulary files changed; rerun make_reference_ids.py"


def _mismatches(ours, ref, texts):
    return [(t, o, r) for t, o, r in zip(texts, ours, ref) if o != r]


def _unicode_space_after_rstrip(raw):
    """Phi-3's known difference: llama.cpp strips only ASCII whitespace (C isspace) right of a token, tokenizers'
    rstrip every Unicode space, so a non-ASCII space there (NBSP, U+3000, ...) is a token for llama.cpp only."""
    import re

    stripped = [t.content for t in raw.get_added_tokens_decoder().values() if t.rstrip]
    pattern = re.compile("(?:" + "|".join(map(re.escape, stripped)) + r")[ \t\n\v\f\r]*(?=[^\x00-\x7f])\s")
    return lambda text: bool(stripped) and pattern.search(text) is not None


# vocabulary -> texts where ids may differ from llama.cpp's, for a reason the builder documents
KNOWN_DIFFERENCES = {"phi3": _unicode_space_after_rstrip}


@pytest.mark.parametrize("mode", MODES)
def test_every_id_equals_llama_cpp(built, mode):
    name, record, text_tok, raw = built
    if mode == "special":
        ours = [text_tok.encode(t) for t in TEXTS]
    elif mode == "special_no_add":
        ours = [text_tok.encode(t, add_special_tokens=False) for t in TEXTS]
    else:
        ours = [text_tok.encode(t, split_special_tokens=True) for t in TEXTS]
    bad = _mismatches(ours, record["ids"][mode], TEXTS)
    if name in KNOWN_DIFFERENCES:
        known = KNOWN_DIFFERENCES[name](raw)
        assert sum(map(known, TEXTS)) <= 2, "the known difference should set aside a text or two, not the corpus"
        bad = [b for b in bad if not known(b[0])]
    assert not bad, f"{name}/{mode}: {len(bad)} of {len(TEXTS)} texts differ from llama.cpp, first: {bad[0]!r}"


def test_decode_round_trips(built):
    """Decoding our ids gives the text back, for texts without special strings. With add_space_prefix llama.cpp puts
    a space before every text fragment (also after Gemma's newline tokens), so there everything but spaces does."""
    name, _, text_tok, _ = built
    prefix = bool(gguf_vocabs.VOCABS[name][1].get("tokenizer.ggml.add_space_prefix"))
    drop = (lambda s: s.replace(" ", "")) if prefix else (lambda s: s)  # noqa: E731
    for t in TEXTS:
        if "<" in t or "\u0000" in t:
            continue
        assert drop(text_tok.decode(text_tok.encode(t), skip_special_tokens=True)) == drop(t), (name, t)


def test_unknown_pre_type_is_refused_by_name():
    from onnxlm.export.gguf_pretok import PRE_TYPES
    from onnxlm.runtime.errors import ExportError

    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such-pre", "tokenizer.ggml.tokens": ["a", "b"],
            "tokenizer.ggml.merges": []}
    with pytest.raises(ExportError, match="no-such-pre") as info:
        build_tokenizer_from_gguf(meta)
    for name in ("default", "smollm", "llama-bpe", "qwen2"):
        assert name in str(info.value) and name in PRE_TYPES


def test_unknown_tokenizer_model_is_refused_by_name():
    from onnxlm.runtime.errors import ExportError

    with pytest.raises(ExportError, match="'rwkv'.*'gpt2'.*'llama'.*'bert'"):
        build_tokenizer_from_gguf({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})


def test_tokenizer_only_gguf_round_trips(tmp_path):
    """The written GGUF (what llama.cpp read for the reference ids) holds exactly the metadata the tests build from."""
    try:
        meta = gguf_vocabs.vocab_metadata("smollm2-gpt-2")
    except (FileNotFoundError, importlib.metadata.PackageNotFoundError) as e:
        missing(f"the SmolLM2 GGUF is not installed ({e}); scripts/setup.sh installs it")
    back = read_gguf_metadata(gguf_vocabs.vocab_gguf("smollm2-gpt-2", tmp_path))
    assert {k: v for k, v in back.items() if k.startswith("tokenizer.")} == meta


@pytest.mark.parametrize("key,value,needle", [
    ("tokenizer.ggml.scores", [0.0], "tokenizer.ggml.scores"),
    ("tokenizer.ggml.token_type", [1, 1], "tokenizer.ggml.token_type"),
    ("tokenizer.ggml.tokens", ["a", "a", "b"], "duplicated"),
    ("tokenizer.ggml.add_space_prefix", "yes", "tokenizer.ggml.add_space_prefix"),
])
def test_spm_metadata_errors_name_the_key(key, value, needle):
    from onnxlm.runtime.errors import ExportError

    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "a", "b"],
            "tokenizer.ggml.scores": [0.0, -1.0, -2.0], "tokenizer.ggml.token_type": [2, 1, 1],
            "tokenizer.ggml.unknown_token_id": 0}
    meta[key] = value
    with pytest.raises(ExportError, match=needle):
        build_tokenizer_from_gguf(meta)


def test_spm_merges_follow_scores():
    """SPM merges the best-scored pair first: with "ab" scored above "bc", "abc" is "ab" + "c", and the reverse."""
    from onnxlm.export.gguf_tokenizer import spm_merges

    tokens = ["a", "b", "c", "ab", "bc"]
    assert spm_merges(tokens, [0, 0, 0, -1.0, -2.0]) == [("a", "b"), ("b", "c")]
    assert spm_merges(tokens, [0, 0, 0, -2.0, -1.0]) == [("b", "c"), ("a", "b")]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>"] + tokens,
            "tokenizer.ggml.scores": [0.0, 0, 0, 0, -2.0, -1.0], "tokenizer.ggml.token_type": [2, 1, 1, 1, 1, 1],
            "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_space_prefix": False,
            "tokenizer.ggml.add_bos_token": False}
    assert build_tokenizer_from_gguf(meta).encode("abc").tokens == ["a", "bc"]


def _toy_spm(scores, types=None):
    tokens = ["<unk>", "a", "b", "c", "ab", "bc"]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types or [2, 1, 1, 1, 1, 1], "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False}
    if scores is not None:
        meta["tokenizer.ggml.scores"] = scores
    return meta


@pytest.mark.parametrize("scores", [[0.0, 0, 0, 0, -5.0, -5.0], None], ids=["tied", "absent"])
def test_spm_score_ties_warn(scores):
    """Equal scores: llama.cpp merges the leftmost pair first, a BPE rank orders them by token (checked with
    llama-cpp-python 0.3.36 on such a vocabulary as a GGUF, with "bc" before "ab": "abc" is "ab" + "c" there,
    "a" + "bc" here); the builder says so, naming the key. Absent scores are all 0.0, so all tie."""
    with pytest.warns(UserWarning, match="tokenizer.ggml.scores"):
        build_tokenizer_from_gguf(_toy_spm(scores))


def test_spm_score_ties_ignore_user_defined_tokens():
    """A USER_DEFINED token is cut out of the text before merging (Gemma's runs of newlines, all 0.0): no caveat."""
    from onnxlm.export.gguf_tokenizer import spm_merges, spm_score_ties
    from onnxlm.runtime.errors import ExportNotice

    tokens, scores = ["<unk>", "a", "b", "c", "ab", "bc"], [0.0, 0, 0, 0, -5.0, -5.0]
    merges = spm_merges(tokens, scores)
    assert spm_score_ties(merges, tokens, scores, [2, 1, 1, 1, 1, 1]) == ["ab", "bc"]
    assert spm_score_ties(merges, tokens, scores, [2, 1, 1, 1, 4, 1]) == []
    # runs of one character only (Mistral's "▁▁" ... all -1e9): no caveat
    runs = ["<unk>", "a", "aa", "aaa", "aaaa", "b"]
    assert spm_score_ties(spm_merges(runs, [0.0, 0, -9.0, -9.0, -9.0, 0]), runs, [0.0, 0, -9.0, -9.0, -9.0, 0],
                          [2, 1, 1, 1, 1, 1]) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ExportNotice)  # the toy names no EOS: said apart, not a caveat
        build_tokenizer_from_gguf(_toy_spm([0.0, 0, 0, 0, -5.0, -5.0], [2, 1, 1, 1, 4, 1]))


def test_overlapping_added_tokens():
    """A later-starting token at least as long as the one it overlaps; runs of one character aside."""
    from onnxlm.export.gguf_added_overlap import overlapping_added_tokens

    assert overlapping_added_tokens(["ab", "bcd"]) == [("ab", "bcd")]
    assert overlapping_added_tokens(["ab", "bc"]) == [("ab", "bc")]  # equal lengths: llama.cpp's order is unstable
    assert overlapping_added_tokens(["abc", "bc", "abcd"]) == []  # contained or shorter: both cut alike
    assert overlapping_added_tokens(["\n", "\n\n", "\n\n\n", "  ", "   "]) == []


def test_overlapping_added_tokens_warn():
    """llama-cpp-python 0.3.36 on this vocabulary as a GGUF: "<x>yz" is "<" + "x>yz" (longest token first), here
    "<x>" + "y" + "z" (leftmost first); the builder says so, naming the key."""
    tokens = ["<unk>", "<", "x", ">", "y", "z", "<x>", "x>yz"]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0, -1.0, -2.0, -3.0, -4.0, -5.0, 0.0, 0.0],
            "tokenizer.ggml.token_type": [2, 1, 1, 1, 1, 1, 4, 4], "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.add_space_prefix": False, "tokenizer.ggml.add_bos_token": False}
    with pytest.warns(UserWarning, match="tokenizer.ggml.tokens"):
        tok = build_tokenizer_from_gguf(meta)
    assert tok.encode("<x>yz").tokens == ["<x>", "y", "z"]


@pytest.mark.parametrize("name, mode", [("smollm2", "special"), ("smollm2", "plain"), ("smollm2", "special_no_add")])
def test_onnxlm_tokenize_on_a_gguf_file_gives_llama_cpps_ids(name, mode, vocab_dir, monkeypatch, tmp_path, capsys):
    """`onnxlm tokenize FILE.gguf TEXT... --ids` (the vocabulary built from the file's metadata; nothing exported)
    in one of llama.cpp's modes, on the corpus texts a command line carries as arguments (one line, not empty;
    options after the texts and after ``--``)."""
    from onnxlm.cli import main

    try:
        path = gguf_vocabs.vocab_gguf(name, vocab_dir)
    except (FileNotFoundError, ImportError, importlib.metadata.PackageNotFoundError) as e:
        missing(f"vocabulary {name!r} is not installed ({e}); scripts/setup.sh installs it")
    monkeypatch.setenv("ONNXLM_CACHE", str(tmp_path))  # no cached artifact: built from the metadata
    record = json.loads((DATA / f"{name}.ids.json").read_text(encoding="utf-8"))
    picked = [k for k, t in enumerate(TEXTS) if t.strip() and "\n" not in t and "\r" not in t]
    assert len(picked) >= 30
    flags = {"special": [], "special_no_add": ["--no-special-tokens"], "plain": ["--no-parse-special"]}[mode]
    assert main(["tokenize", str(path), "--ids", *flags, "--", *[TEXTS[k] for k in picked]]) == 0
    ours = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert ours == [record["ids"][mode][k] for k in picked]
    assert not any(tmp_path.iterdir())  # nothing exported, nothing cached


class _SlowTokenizer:
    """A tokenizers.Tokenizer whose encode lets other threads run first (the flag it reads is set by then)."""

    def __init__(self, raw):
        object.__setattr__(self, "_raw", raw)

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def __setattr__(self, name, value):
        setattr(self._raw, name, value)

    def encode(self, *args, **kwargs):
        import time

        time.sleep(0.001)  # the other threads take their turn here: without the lock, one sets the flag now
        return self._raw.encode(*args, **kwargs)


def test_split_special_tokens_holds_for_its_own_call_under_threads():
    """``split_special_tokens`` sets a flag of the shared tokenizers object for one call; calls from other threads
    at the same time (the server encodes in worker threads) never see it."""
    import threading

    try:
        raw = build_tokenizer_from_gguf(gguf_vocabs.vocab_metadata("smollm2"))
    except (FileNotFoundError, ImportError, importlib.metadata.PackageNotFoundError) as e:
        missing(f"vocabulary 'smollm2' is not installed ({e}); scripts/setup.sh installs it")
    tok = TextTokenizer(_SlowTokenizer(raw))
    text = "<|im_start|>user\nHi there<|im_end|>" * 4
    parsed, split = tok.encode(text), tok.encode(text, split_special_tokens=True)
    assert parsed != split and tok.token_to_id("<|im_start|>") in parsed
    wrong = []

    def run(flag, want):
        for _ in range(40):
            if tok.encode(text, split_special_tokens=flag) != want:
                wrong.append(flag)
            if list(tok.encoding(text, split_special_tokens=flag).ids) != want:
                wrong.append(flag)

    threads = [threading.Thread(target=run, args=a) for a in ((False, parsed), (True, split), (False, parsed))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong and raw.encode_special_tokens is False


def test_added_tokens_decode_to_their_plain_text():
    """A byte-level vocabulary's control and user-defined tokens are plain text in a GGUF (llama.cpp's converter
    writes transformers' added tokens as they are) and llama.cpp prints them as they are: 'Größe' and a token with a
    space decode to their text, not through the byte-level alphabet ('Gr��e'); an ordinary token whose byte-level
    text holds the same characters ('xé': the byte 0xE9, half a character) still decodes as bytes; the decoder
    survives tokenizer.json; an added text that is also an ordinary token's text keeps the ordinary reading."""
    from tokenizers import Tokenizer
    from tokenizers.decoders import DecodeStream
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = sorted(ByteLevel.alphabet())
    added = ["Größe", "x y", "<｜User｜>", "é"]  # 'é' is also the alphabet's character for the byte 0xE9
    tokens = alphabet + ["xé"] + added
    types = [1] * (len(alphabet) + 1) + [4, 4, 3, 4]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "default", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": ["x é"], "tokenizer.ggml.eos_token_id": 0}
    tok = build_tokenizer_from_gguf(meta)
    again = Tokenizer.from_str(tok.to_str())
    ids = {t: tokens.index(t) for t in tokens}
    for t in (tok, again):
        for text in ("Größe", "x y", "<｜User｜>"):
            assert t.decode([ids[text]], skip_special_tokens=False) == text
        assert t.decode([ids["Größe"], ids["<｜User｜>"]], skip_special_tokens=True) == "Größe"
        assert t.decode([ids["xé"]]) == "x\ufffd"  # an ordinary token: its byte-level text as bytes
        assert t.decode([ids["é"]]) == t.decode([alphabet.index("é")])  # one text, one reading
        assert t.encode("die Größe").tokens[-1] == "Größe"
    stream = DecodeStream(skip_special_tokens=True)
    assert "".join(stream.step(again, i) or "" for i in again.encode("a Größe, x y").ids) == "a Größe, x y"


def test_a_continuation_keeps_the_space_a_sentencepiece_decoder_strips(vocab_dir):
    """A SentencePiece decoder strips the space of a text's first word ('▁world' alone decodes to 'world', as
    llama.cpp's whole-text detokenize does), so new ids decoded alone lost the space a continuation begins with:
    'hello' + 'world', and a --choices ' world' answer read 'world'. The new text is what the ids add after the
    prompt's last ids (streaming.decode_after), as llama.cpp's stream and vLLM give it: in the final text, the
    stream, a stop string's check and cut (Mistral's real vocabulary)."""
    from types import SimpleNamespace

    from onnxlm.runtime.decoding.stopping import NewTextStopMatcher
    from onnxlm.runtime.generation_config import GenerationConfig
    from onnxlm.runtime.model import LanguageModel
    from onnxlm.runtime.streaming import IncrementalText, decode_after

    try:
        meta = gguf_vocabs.vocab_metadata("mistral")
    except (FileNotFoundError, ImportError, importlib.metadata.PackageNotFoundError) as e:
        missing(f"vocabulary 'mistral' is not installed ({e}); scripts/setup.sh installs it")
    raw = build_tokenizer_from_gguf(meta)
    raw.save(str(vocab_dir / "mistral-continuation.tokenizer.json"))
    tok = TextTokenizer.from_file(vocab_dir / "mistral-continuation.tokenizer.json")
    prompt = tok.encode("Say hello")  # BOS first
    new = tok.encode("world, and then some", add_special_tokens=False)
    assert tok.decode(new) == "world, and then some"  # alone: the strip
    assert decode_after(tok, prompt, new) == " world, and then some"
    assert decode_after(tok, prompt[:1], new) == "world, and then some"  # after a BOS alone: a text's start
    stream = IncrementalText(raw, context=prompt)
    assert "".join(stream.push(i) for i in new) == " world, and then some"
    row = np.array([prompt + new])
    first = len(prompt) + 1  # the stop string at the very start of the new text, found with its first token
    assert NewTextStopMatcher(raw, [" world"], t0=len(prompt))(row[:, :first]).tolist() == [True]
    assert NewTextStopMatcher(raw, ["hello"], t0=len(prompt))(row).tolist() == [False]  # the prompt's: never
    fake = SimpleNamespace(tokenizer=tok, _stop_check=lambda c, t0=None: NewTextStopMatcher(raw, c.stop_list(), t0))
    fake._text = lambda *a: LanguageModel._text(fake, *a)
    config = GenerationConfig().replace(eos_token_id=[], stop=[", and"])
    assert LanguageModel._finish_text(fake, new, config, "stop", prompt) == " world"
    assert LanguageModel._finish_text(fake, new, config, "length", prompt) == " world, and then some"
    # the server's token names (logprobs' tokens, top_logprobs' keys, chat's bytes): as in the text, '▁world' is
    # ' world', no longer the same name as 'world'
    from onnxlm.serve.choices import token_str_bytes
    word, plain = tok.token_to_id("▁world"), tok.token_to_id("world")
    assert token_str_bytes(SimpleNamespace(tokenizer=tok), word) == (" world", list(b" world"))
    if plain is not None:
        assert token_str_bytes(SimpleNamespace(tokenizer=tok), plain)[0] == "world"

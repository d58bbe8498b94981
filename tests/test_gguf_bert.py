"""BERT-family GGUF embedding models (``general.architecture = "bert"``): the tokenizer (export/gguf_wpm.py) gives
llama.cpp's ids, the export (export/gguf_bert.py, export/encoder_export.py) gives transformers' BertModel's hidden
states, and the runtime (runtime/encoder_embedder.py) embeds as ``LanguageModel.embed`` does.

The tiny model and its GGUF files: tests/gguf_bert.py (seed 0; F32 and Q8_0). llama.cpp's ids and vectors for them:
tests/data/gguf_bert/reference.json, written by tests/data/gguf_bert/make_reference.py with llama-cpp-python (never
in CI)."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the BERT GGUF tests export (the 'export' extra: gguf, torch)", allow_module_level=True)

import onnxlm  # noqa: E402
from gguf_bert import DATA, check_ids_equal_llama_cpp, tiny_bert, write_tiny_bert_gguf  # noqa: E402
from onnxlm.runtime.embedding import pool_masked  # noqa: E402

REFERENCE = json.loads((DATA / "reference.json").read_text(encoding="utf-8"))
MODES = ("special", "plain", "special_no_add")
TEXTS = ["Hello world, how are you?", "a", "The stock market fell today, sharply and without warning.",
         "Café naïve 日本語", "[CLS] spelled out [SEP]"]


@pytest.fixture(scope="session")
def bert_files(tmp_path_factory):
    """{"f32", "q8_0", "cls"}: the tiny BERT's GGUF files (the last: F32 with bert.pooling_type = cls)."""
    d = tmp_path_factory.mktemp("gguf_bert")
    files = {"f32": d / "tiny-bert-f32.gguf", "q8_0": d / "tiny-bert-q8_0.gguf", "cls": d / "tiny-bert-cls.gguf"}
    shas = {"f32": write_tiny_bert_gguf(files["f32"]), "q8_0": write_tiny_bert_gguf(files["q8_0"], block_type="Q8_0"),
            "cls": write_tiny_bert_gguf(files["cls"], pooling="cls")}
    return files, shas


@pytest.fixture(scope="session")
def exported(bert_files, tmp_path_factory):
    """{"f32", "q8_0", "cls"}: each file exported (validated against PyTorch) and loaded."""
    from onnxlm.export import export_model

    files, _ = bert_files
    d = tmp_path_factory.mktemp("gguf_bert_onnx")
    return {k: onnxlm.load(export_model(path, d / k, progress=False)) for k, path in files.items()}


@pytest.fixture(scope="session")
def reference_model():
    return tiny_bert()


def _hidden(model, ids: list[int]) -> np.ndarray:
    # [t] ids -> [t, D] transformers' last_hidden_state of the one row
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()


# ---------------------------------------------------------------------------------------------------- tokenizer

def test_corpus_is_broad():
    texts = REFERENCE["texts"]
    assert len(texts) >= 50 and len(set(texts)) == len(texts) and "" in texts
    for needle in ("[CLS]", "[SEP]", "\u00e9", "日本", "😀", "\t", "  ", "def ", "12345", "!!!"):
        assert any(needle in t for t in texts), needle


def test_written_files_are_the_reference_files(bert_files):
    _, shas = bert_files
    assert REFERENCE["sha256"] == {"f32": shas["f32"], "q8_0": shas["q8_0"]}, \
        "the tiny BERT GGUF changed: rerun tests/data/gguf_bert/make_reference.py"


@pytest.fixture(scope="module")
def wpm(bert_files, tmp_path_factory):
    """The WPM tokenizer built from the F32 file, through tokenizer.json as the runtime loads it."""
    from onnxlm.export.gguf import build_tokenizer_from_gguf, read_gguf_metadata
    from onnxlm.runtime.tokenizer import TextTokenizer

    path = tmp_path_factory.mktemp("wpm") / "tokenizer.json"
    build_tokenizer_from_gguf(read_gguf_metadata(bert_files[0]["f32"])).save(str(path))
    return TextTokenizer.from_file(path)


@pytest.mark.parametrize("mode", MODES)
def test_every_id_equals_llama_cpp(wpm, mode):
    check_ids_equal_llama_cpp(wpm, REFERENCE, mode)


def test_special_ids_and_defaults(wpm):
    """[CLS] first and [SEP] last with special tokens (llama.cpp's add_special), none without; the empty text is
    [CLS] [SEP]; a WordPiece word without a token is one [UNK]."""
    assert wpm.encode("") == [2, 3] and wpm.encode("", add_special_tokens=False) == []
    assert wpm.encode("[CLS]", add_special_tokens=False) == [2]
    vocab = wpm.tokenizer.get_vocab()
    absent = next(c for c in "\u03e1\u2c65\u0b95\u13a0" if c not in vocab and "\u2581" + c not in vocab)
    assert wpm.encode(f"{absent}{absent}x", add_special_tokens=False) == [1]


def test_unknown_tokenizer_model_message_names_bert():
    from onnxlm.export.gguf import build_tokenizer_from_gguf
    from onnxlm.runtime.errors import ExportError

    with pytest.raises(ExportError, match="WordPiece \\('bert'\\)"):
        build_tokenizer_from_gguf({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})


# ------------------------------------------------------------------------------------------------ export, embed

def test_manifest_says_embedding_and_pooling(exported):
    m = exported["f32"]
    assert type(m).__name__ == "EncoderEmbedder" and m.manifest["kind"] == "embedding"
    assert m.manifest["pooling"] == "mean" and exported["cls"].default_pooling == "cls"
    assert m.manifest["validation"]["max_abs_diff"] <= 1e-4
    assert m.max_positions == 128 and m.vocab_size == 3000
    assert repr(m).startswith("EncoderEmbedder(path=") and "pooling='mean'" in repr(m)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_embed_equals_transformers(exported, reference_model, pooling):
    """A batch of different lengths, unnormalised and normalised: transformers' BertModel on the same weights,
    pooled over each row's [CLS] ... [SEP] (<= 1e-4)."""
    m = exported["f32"]
    got = m.embed(TEXTS, pooling=pooling, normalize=False, batch_size=4)
    rows = [m.tokenizer.encode(t) for t in TEXTS]
    assert got.token_counts == [len(r) for r in rows] and all(r[0] == 2 and r[-1] == 3 for r in rows)
    want = np.stack([(_hidden(reference_model, r).mean(0) if pooling == "mean" else _hidden(reference_model, r)[0])
                     for r in rows])
    assert np.abs(got.embeddings - want).max() <= 1e-4
    unit = m.embed(TEXTS, pooling=pooling).embeddings
    assert np.abs(unit - want / np.linalg.norm(want, axis=1, keepdims=True)).max() <= 1e-5


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_either_side_gives_the_rows_own_states(exported, reference_model, side):
    from onnxlm.runtime.tokenizer import pad_batch

    m = exported["f32"]
    rows = [m.tokenizer.encode(t) for t in TEXTS]
    ids, mask = pad_batch(rows, m.pad_id, side=side)
    hidden = m.last_hidden_state(ids, mask)
    for pooling in ("mean", "cls", "last"):
        got = pool_masked(hidden, mask, pooling)
        for i, r in enumerate(rows):
            h = _hidden(reference_model, r)
            want = {"mean": h.mean(0), "cls": h[0], "last": h[-1]}[pooling]
            assert np.abs(got[i] - want).max() <= 1e-4, (side, pooling, i)


def test_q8_0_file_exports_its_dequantised_weights(exported, bert_files):
    """The Q8_0 file: gguf-py's dequantised weights, exported and validated; its vectors are transformers' on those
    weights (<= 1e-4), and near the F32 model's."""
    from onnxlm.export.gguf_bert import load_bert_gguf

    ref = load_bert_gguf(bert_files[0]["q8_0"]).model
    m = exported["q8_0"]
    got = m.embed(TEXTS, normalize=False)
    want = np.stack([_hidden(ref, m.tokenizer.encode(t)).mean(0) for t in TEXTS])
    assert np.abs(got.embeddings - want).max() <= 1e-4
    f32 = exported["f32"].embed(TEXTS).embeddings
    assert (np.sum(f32 * m.embed(TEXTS).embeddings, axis=1) > 0.99).all()


@pytest.mark.parametrize("name", ["f32-mean", "f32-cls", "q8_0-mean"])
def test_vectors_near_llama_cpp(exported, name):
    """llama-cpp-python's create_embedding tokenizes without special-token parsing (its "[CLS]" text is text):
    the same ids here."""
    variant, pooling = name.split("-")
    m = exported[variant]
    rows = [m.tokenizer.encode(t, split_special_tokens=True) for t in REFERENCE["embed_texts"]]
    got = m.embed(rows, pooling=pooling).embeddings
    ref = np.array(REFERENCE["embeddings"][name], dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    cos = np.sum(got * ref, axis=1)
    assert (cos > 0.999).all(), cos


def test_bad_inputs_and_parameters_are_typed(exported):
    m = exported["f32"]
    with pytest.raises(onnxlm.InputError, match=r"^inputs\[1\]: the prompt is empty"):
        m.embed(["a", ""])
    with pytest.raises(onnxlm.InputError, match=r"^inputs\[1\]: .*allows at most 128"):
        m.embed(["a", "word " * 200])
    with pytest.raises(onnxlm.InputError, match="out of range"):
        m.embed([[2, 5, 3000]])
    with pytest.raises(onnxlm.InputError, match="mix of types"):
        m.embed(["a", [1, 2]])
    with pytest.raises(onnxlm.ParameterError, match="pooling: got 'max'"):
        m.embed("a", pooling="max")
    with pytest.raises(onnxlm.ParameterError, match="batch_size: got 0"):
        m.embed("a", batch_size=0)
    with pytest.raises(onnxlm.ParameterError, match="normalize: got 'no'"):
        m.embed("a", normalize="no")


@pytest.mark.parametrize("call", ["generate", "stream", "chat", "score"])
def test_generating_is_refused_by_name(exported, call):
    with pytest.raises(onnxlm.ModelFileError, match=f"{call} needs a language model; .* it only embeds"):
        getattr(exported["f32"], call)("hi")


def test_export_refuses_decoder_settings(bert_files, tmp_path):
    from onnxlm.export import export_model
    from onnxlm.runtime.errors import ExportError

    with pytest.raises(ExportError, match="quantize='gguf': .* embedding encoder"):
        export_model(bert_files[0]["q8_0"], tmp_path / "q", quantize="gguf", progress=False)
    assert not (tmp_path / "q").exists()


def test_cli_embed_and_info(exported, bert_files, capsys):
    from cli_util import run_cli

    m = exported["f32"]
    code, out, err = run_cli(capsys, "embed", str(m.path), "Hello world", "a cat", "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    want = m.embed(["Hello world", "a cat"]).embeddings
    assert np.abs(np.array([r["embedding"] for r in lines]) - want).max() <= 1e-6
    code, out, err = run_cli(capsys, "info", str(m.path))
    assert code == 0 and "embedding" in out and "only embeds" in out, out + err
    code, out, err = run_cli(capsys, "info", str(bert_files[0]["f32"]))
    assert code == 0 and "bert" in out, out + err
    assert "dequantised to fp32 (an embedding encoder exports in fp32 only" in out


def test_what_real_files_hold_exports_as_llama_cpp_reads_it(tmp_path, reference_model, capsys):
    """pooling_type 3 (last) and 0 (none: the runtime's mean, not called the model's own), a classifier head beside
    an embedding pooling (left out, as llama.cpp uses it for rank only), a one-row token-type table stored 1-D
    (llama.cpp's quantizer writes XLM-RoBERTa's so); a reranker (pooling_type 4) exports with its head, one without
    the head is refused."""
    import torch
    from cli_util import run_cli

    from onnxlm.export import export_model
    from onnxlm.runtime.errors import ExportError

    D = reference_model.config.hidden_size
    head = {"cls.weight": np.ones((D, D)), "cls.bias": np.zeros(D), "cls.output.weight": np.ones((1, D)),
            "cls.output.bias": np.zeros(1)}
    files = {"last": dict(pooling="last"), "none": dict(pooling="none"), "head": dict(extra_tensors=head),
             "one-type": dict(one_token_type=True), "rank": dict(pooling="rank", extra_tensors=head)}
    paths = {}
    for name, kw in files.items():
        paths[name] = tmp_path / f"{name}.gguf"
        write_tiny_bert_gguf(paths[name], **kw)
    ids = [2, 40, 41, 42, 3]
    with torch.no_grad():
        want = reference_model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    last = onnxlm.load(export_model(paths["last"], tmp_path / "last", progress=False))
    assert last.manifest["pooling"] == "last" and last.default_pooling == "last"
    got = last.embed([ids], normalize=False).embeddings[0]
    assert np.abs(got - want[-1]).max() <= 1e-4
    none = onnxlm.load(export_model(paths["none"], tmp_path / "none", progress=False))
    assert none.manifest.get("pooling") is None and none.default_pooling == "mean"
    code, out, err = run_cli(capsys, "info", str(none.path))
    assert code == 0 and "mean pooling (the default)" in out, out + err
    head_model = onnxlm.load(export_model(paths["head"], tmp_path / "head", progress=False))
    assert np.abs(head_model.embed([ids], normalize=False).embeddings[0] - want.mean(axis=0)).max() <= 1e-4
    one = onnxlm.load(export_model(paths["one-type"], tmp_path / "one-type", progress=False))
    with torch.no_grad():
        single = tiny_bert(type_vocab_size=1)(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
    assert np.abs(one.embed([ids], normalize=False).embeddings[0] - single.mean(axis=0)).max() <= 1e-4
    rank = onnxlm.load(export_model(paths["rank"], tmp_path / "rank", progress=False))  # tests/test_rerank.py
    assert rank.manifest["pooling"] == "rank" and rank.is_reranker
    with pytest.raises(ExportError, match="without its classifier head"):  # a rank file without cls.* is refused
        export_model(_headless_rank(tmp_path), tmp_path / "rank-none", progress=False)
    code, out, err = run_cli(capsys, "info", str(paths["rank"]))
    assert code == 0 and "onnxlm exports it as a reranker" in out, out


def _headless_rank(tmp_path):
    path = tmp_path / "rank-headless.gguf"
    write_tiny_bert_gguf(path, pooling="rank")
    return path


def test_generating_commands_refuse_an_embedding_model_in_one_line(exported, capsys, tmp_path):
    from cli_util import run_cli

    path = str(exported["f32"].path)
    for argv in (["chat", path, "hello"], ["bench", path], ["generate", path, "hi"], ["score", path, "hi"]):
        code, out, err = run_cli(capsys, *argv)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and "it only embeds" in lines[0], (argv, err)
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"prompt": "hi"}\n')
    code, out, err = run_cli(capsys, "generate", path, "--input", str(rows), "--output", str(tmp_path / "o.parquet"))
    assert code == 1 and "it only embeds" in err and not (tmp_path / "o.parquet").exists(), err


def test_serve_embeds_and_refuses_generation(exported):
    """``onnxlm serve`` on an embedding encoder: /v1/embeddings and llama.cpp's /embedding give ``embed``'s vectors;
    every generating endpoint answers 400 generation_not_supported (never a 5xx); /v1/models says
    completions false, embeddings true."""
    pytest.importorskip("starlette")
    import httpx
    from serve_util import post, start, wait_health

    m = exported["f32"]
    srv = start(lambda: onnxlm.load(m.path))
    try:
        wait_health(srv.url)
        got = post(srv.url, "/v1/embeddings", {"input": ["Hello world", "a cat"]}).json()
        vectors = np.array([d["embedding"] for d in got["data"]], np.float32)
        assert np.abs(vectors - m.embed(["Hello world", "a cat"]).embeddings).max() <= 1e-6
        native = post(srv.url, "/embedding", {"content": "Hello world"}).json()
        assert np.abs(np.array(native[0]["embedding"][0]) - vectors[0]).max() <= 1e-6
        body = {"prompt": "hi", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}], "input": "hi",
                "model": "tiny"}
        for path in ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages", "/completion",
                     "/infill"):
            r = post(srv.url, path, body)
            assert r.status_code == 400 and "only embeds" in r.text, (path, r.status_code, r.text)
        assert post(srv.url, "/v1/completions", body).json()["error"]["code"] == "generation_not_supported"
        card = httpx.get(srv.url + "/v1/models").json()["data"][0]
        assert card["capabilities"] == {"completions": False, "chat": False, "embeddings": True, "rerank": False}
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

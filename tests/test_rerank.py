"""Rerankers as llama.cpp serves them (/rerank): a ``bert`` GGUF with ``bert.pooling_type = 4`` (rank) and its
classifier head (``cls.weight``/``cls.bias``, tanh, ``cls.output.weight``/``cls.output.bias``).

A tiny seeded transformers ``XLMRobertaForSequenceClassification`` (num_labels 1: bge-reranker-v2-m3's layout) is
written as llama.cpp's converter writes it (tests/test_gguf_xlmr.py's writer: the position table cut at
pad_token_id + 1, one token type, tests/data/gguf_ugm's ``xlmr`` vocabulary, plus ``add_sep_token`` true, which
gguf-py's SpecialVocab writes for XLM-R's RobertaProcessing; ``classifier.dense`` -> ``cls``, ``classifier.out_proj``
-> ``cls.output``), exported, and ``rerank`` compared with transformers' logits on the same pair ids
(``<s> query </s></s> document </s>``, llama.cpp's ``format_prompt_rerank``) to 1e-4; the server's /rerank answers
``rerank``'s scores in llama.cpp's shapes. A tiny BERT rank file (tests/gguf_bert.py) checks the WordPiece pair
(``[CLS] q [SEP] d [SEP]`` with the flags an ms-marco cross-encoder's converter writes) and the head on its own.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the rerank tests export (the 'export' extra: gguf, torch)", allow_module_level=True)

import onnxlm  # noqa: E402
from gguf_bert import perturbed, tiny_bert, write_tiny_bert_gguf, write_xlmr_gguf  # noqa: E402
from skips import missing  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "data" / "gguf_ugm"))
import ugm_vocabs  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONFIG = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, type_vocab_size=1,
              max_position_embeddings=66, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
              num_labels=1, initializer_range=0.3)
QUERY = "What is the capital of France?"
DOCS = ["Paris is the capital of France.", "a", "Le café est très bon, n'est-ce pas ?", "日本語のテキストです。",
        "Berlin is the capital of Germany, and it has many museums and parks.", "</s> not a separator"]


def write_xlmr_reranker(path: Path):
    """-> transformers' XLMRobertaForSequenceClassification (seed 0, LayerNorms and biases perturbed, head scaled so
    the scores spread), written to ``path`` as llama.cpp's converter writes bge-reranker-v2-m3."""
    import gguf
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    try:
        meta = ugm_vocabs.vocab_metadata("xlmr")
    except FileNotFoundError as e:
        missing(f"the T5-small tokenizer files are not there ({e})")
    meta["tokenizer.ggml.add_sep_token"] = True  # gguf-py SpecialVocab for RobertaProcessing: bos, eos and sep
    torch.manual_seed(0)
    model = XLMRobertaForSequenceClassification(
        XLMRobertaConfig(vocab_size=len(meta["tokenizer.ggml.tokens"]), **CONFIG)).eval()
    perturbed(model)
    with torch.no_grad():
        model.classifier.dense.weight.mul_(3.0)
        model.classifier.out_proj.weight.mul_(3.0)
    write_xlmr_gguf(path, model, meta, int(gguf.PoolingType.RANK))
    return model


@pytest.fixture(scope="module")
def reference_and_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf_rerank") / "tiny-xlmr-reranker.gguf"
    return write_xlmr_reranker(path), path


@pytest.fixture(scope="module")
def reranker(reference_and_file, tmp_path_factory):
    from onnxlm.export import export_model

    return onnxlm.load(export_model(reference_and_file[1], tmp_path_factory.mktemp("rerank_onnx") / "m",
                                    progress=False))


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    from onnxlm.export import export_model

    d = tmp_path_factory.mktemp("rerank_embedder")
    write_tiny_bert_gguf(d / "e.gguf")
    return onnxlm.load(export_model(d / "e.gguf", d / "onnx", progress=False))


def _logit(model, ids) -> float:
    import torch

    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


def test_the_manifest_and_graph_say_rank(reranker):
    m = reranker.manifest
    assert m["pooling"] == "rank" and m["rank"]["n_labels"] == 1
    assert m["graphs"]["encoder"]["outputs"] == ["last_hidden_state", "rank_scores"]
    assert m["rank"]["pair"] == {"prefix": [0], "middle": [2, 2], "suffix": [2]}
    assert reranker.is_reranker and "pooling='rank'" in repr(reranker)


def test_pair_ids_are_llama_cpps(reranker):
    """``<s> query </s></s> document </s>``; a special token's spelling in the text is text (parse_special false)."""
    q = reranker.tokenizer.encode(QUERY, add_special_tokens=False)
    d = reranker.tokenizer.encode(DOCS[0], add_special_tokens=False)
    assert reranker.pair_ids(QUERY, DOCS[0]) == [0, *q, 2, 2, *d, 2]
    tricky = reranker.pair_ids("q", DOCS[-1])
    assert tricky.count(2) == 3  # the document's "</s>" is not the EOS


def test_rerank_scores_equal_transformers_logits(reranker, reference_and_file):
    model, _ = reference_and_file
    got = reranker.rerank(QUERY, DOCS, batch_size=2)  # batches of different lengths
    assert sorted(r.index for r in got) == list(range(len(DOCS)))
    worst = 0.0
    for r in got:
        want = _logit(model, reranker.pair_ids(QUERY, DOCS[r.index]))
        worst = max(worst, abs(r.score - want))
    assert worst <= 1e-4, worst
    scores = [r.score for r in got]
    assert scores == sorted(scores, reverse=True) and max(scores) - min(scores) > 1e-2  # the spread is real


def test_top_n_and_the_result_type(reranker):
    full = reranker.rerank(QUERY, DOCS)
    assert reranker.rerank(QUERY, DOCS, top_n=2) == full[:2]
    assert reranker.rerank(QUERY, DOCS, top_n=0) == []
    assert reranker.rerank(QUERY, DOCS, top_n=99) == full
    index, score = full[0]
    assert repr(full[0]).startswith(f"Ranked(index={index}, score=")
    alone = reranker.rerank(QUERY, [DOCS[index]])
    assert abs(alone[0].score - score) <= 1e-5 and alone[0].index == 0


def test_refusals(reranker, embedder, tmp_path):
    from onnxlm.export import export_model
    from onnxlm.runtime.encoder_embedder import RerankerError
    from onnxlm.runtime.errors import ExportError, InputError, ParameterError

    with pytest.raises(RerankerError, match="is a reranker"):
        reranker.embed(["hello"])
    with pytest.raises(RerankerError, match="rerank needs a reranker"):
        embedder.rerank("q", ["d"])
    for kw, name in ((dict(query=1, documents=["d"]), "query"), (dict(query="q", documents="d"), "documents"),
                     (dict(query="q", documents=[]), "documents"), (dict(query="q", documents=["d", 3]), "documents"),
                     (dict(query="q", documents=["d"], top_n=-1), "top_n")):
        with pytest.raises(ParameterError, match=f"^{name}"):
            reranker.rerank(**kw)
    with pytest.raises(InputError, match=r"documents\[1\]"):
        reranker.rerank("q", ["d", "word " * 80])
    for query in ("word " * 80, "\ud800"):  # the query's own faults name the query, not the first document
        with pytest.raises(InputError, match=r"^query: "):
            reranker.rerank(query, ["d"])
    write_tiny_bert_gguf(tmp_path / "headless.gguf", pooling="rank")
    with pytest.raises(ExportError, match="without its classifier head"):
        export_model(tmp_path / "headless.gguf", tmp_path / "headless", progress=False)


def test_a_bert_reranker_pairs_as_an_ms_marco_file_says(tmp_path):
    """WordPiece: the converter writes add_bos, add_eos (EOS = [SEP]) and add_sep false for BERT's
    ``[CLS] $A [SEP] $B [SEP]`` -> ``[CLS] q [SEP] d [SEP]``; the head on the [CLS] state with token type 0
    (llama.cpp's BERT graph adds type 0's row everywhere), as numpy computes it."""
    import torch

    from onnxlm.export import export_model

    rng = np.random.default_rng(1)
    D = 64
    head = {"cls.weight": rng.standard_normal((D, D)) * 0.3, "cls.bias": rng.standard_normal(D) * 0.1,
            "cls.output.weight": rng.standard_normal((1, D)), "cls.output.bias": rng.standard_normal(1)}
    flags = {"tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_eos_token": True,
             "tokenizer.ggml.add_sep_token": False}
    write_tiny_bert_gguf(tmp_path / "r.gguf", pooling="rank", extra_tensors=head, metadata=flags)
    m = onnxlm.load(export_model(tmp_path / "r.gguf", tmp_path / "onnx", progress=False))
    cls_id, sep_id = m.manifest["special_tokens"]["bos_token_id"], m.manifest["special_tokens"]["sep_token_id"]
    ids = m.pair_ids("the cat", "a dog runs")
    q, d = (m.tokenizer.encode(t, add_special_tokens=False) for t in ("the cat", "a dog runs"))
    assert ids == [cls_id, *q, sep_id, *d, sep_id]
    with torch.no_grad():
        h = tiny_bert()(input_ids=torch.tensor([ids])).last_hidden_state[0, 0].numpy().astype(np.float64)
    dense = np.tanh(head["cls.weight"] @ h + head["cls.bias"])
    want = dense @ head["cls.output.weight"][0] + head["cls.output.bias"][0]
    assert abs(m.rerank("the cat", ["a dog runs"])[0].score - want) <= 1e-4


def test_ids_and_scores_equal_llama_cpps(reranker, reference_and_file):
    """llama-cpp-python 0.3.36's ids and RANK scores for the same file (tests/data/gguf_rerank/
    make_llama_cpp_scores.py): the ids equal; the scores to 1e-2 (llama.cpp's GELU is ggml's tanh approximation,
    transformers' and the export's the erf one: measured 5.4e-3 at most here) and in the same order."""
    import hashlib
    import json

    data = json.loads((Path(__file__).resolve().parent / "data" / "gguf_rerank" / "llama_cpp_scores.json")
                      .read_text(encoding="utf-8"))
    if hashlib.sha256(reference_and_file[1].read_bytes()).hexdigest() != data["gguf_sha256"]:
        pytest.skip("this torch writes another tiny reranker than the one llama.cpp's scores were made from")
    assert data["query"] == QUERY and data["documents"] == DOCS
    got = {r.index: r.score for r in reranker.rerank(QUERY, DOCS)}
    for i, pair in enumerate(data["pairs"]):
        assert reranker.pair_ids(QUERY, DOCS[i]) == pair["ids"], i
        assert abs(got[i] - pair["score"]) <= 1e-2, (i, got[i], pair["score"])
    want_order = sorted(range(len(DOCS)), key=lambda i: -data["pairs"][i]["score"])
    assert [r.index for r in reranker.rerank(QUERY, DOCS)] == want_order


# the server: llama.cpp's /rerank

httpx = pytest.importorskip("httpx", reason="the server tests need the test extra")


@pytest.fixture(scope="module")
def live(reranker):
    pytest.importorskip("starlette", reason="the server tests need the serve extra")
    from serve_util import live_tiny

    yield from live_tiny(reranker.path, max_rows=2, max_queue=4, max_tokens=8)


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/reranking"])
def test_the_endpoint_answers_rerank(live, reranker, path):
    from serve_util import post

    r = post(live.url, path, {"query": QUERY, "documents": DOCS, "top_n": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "tiny"
    tokens = sum(len(reranker.pair_ids(QUERY, d)) for d in DOCS)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    want = reranker.rerank(QUERY, DOCS, top_n=4)
    assert [x["index"] for x in body["results"]] == [w.index for w in want]
    assert all(set(x) == {"index", "relevance_score"} for x in body["results"])
    assert max(abs(x["relevance_score"] - w.score) for x, w in zip(body["results"], want)) <= 1e-5


def test_tei_form_answers_a_list_with_texts(live, reranker):
    from serve_util import post

    r = post(live.url, "/rerank", {"query": QUERY, "texts": DOCS[:3], "return_text": True})
    assert r.status_code == 200, r.text
    want = reranker.rerank(QUERY, DOCS[:3])
    assert [(x["index"], x["text"]) for x in r.json()] == [(w.index, DOCS[w.index]) for w in want]
    assert max(abs(x["score"] - w.score) for x, w in zip(r.json(), want)) <= 1e-5


def test_metrics_count_rerank_requests_and_tokens(live, reranker):
    import httpx
    from serve_util import post, wait_idle

    before = wait_idle(live.url)
    assert post(live.url, "/rerank", {"query": QUERY, "documents": DOCS[:2]}).status_code == 200
    assert post(live.url, "/v1/rerank", {"query": QUERY, "texts": DOCS[2:3]}).status_code == 200
    assert post(live.url, "/rerank", {"query": "q", "documents": []}).status_code == 400  # refused: not counted
    after = wait_idle(live.url)
    tokens = sum(len(reranker.pair_ids(QUERY, d)) for d in DOCS[:3])
    assert after["rerank_requests"] - before["rerank_requests"] == 2
    assert after["rerank_tokens"] - before["rerank_tokens"] == tokens
    text = httpx.get(live.url + "/metrics", params={"format": "prometheus"}).text
    assert f"onnxlm_rerank_requests_total {after['rerank_requests']}\n" in text
    assert "# TYPE onnxlm_rerank_tokens_total counter" in text


BAD = [({"documents": ["d"]}, "query"), ({"query": 3, "documents": ["d"]}, "query"),
       ({"query": "q"}, "documents"), ({"query": "q", "texts": [1]}, "texts"), ({"query": "q", "documents": []}, "documents"),
       ({"query": "q", "documents": "d"}, "documents"), ({"query": "q", "documents": ["d", 1]}, "documents"),
       ({"query": "q", "documents": ["d"], "top_n": -1}, "top_n"),
       ({"query": "q", "documents": ["d"], "top_n": "2"}, "top_n"),
       ({"query": "q", "texts": ["d"], "return_text": "yes"}, "return_text"),
       ({"query": "q", "documents": ["d"], "temperature": 1}, "temperature"),
       ({"query": "q", "documents": ["word " * 80]}, "documents")]


@pytest.mark.parametrize("body,param", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_body_is_a_400_naming_the_field(live, body, param):
    from serve_util import post

    r = post(live.url, "/rerank", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_embeddings_on_a_reranker_and_rerank_on_an_embedder_are_refused(live, embedder):
    from serve_util import post, start, wait_health

    r = post(live.url, "/v1/embeddings", {"input": "hello"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "embeddings_not_supported", r.text
    srv = start(lambda: onnxlm.load(embedder.path), max_rows=2, max_queue=2, max_tokens=8)
    try:
        wait_health(srv.url)
        r = post(srv.url, "/v1/rerank", {"query": "q", "documents": ["d"]})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "rerank_not_supported" and r.json()["error"]["param"] == "model"
    finally:
        srv.stop()


def test_models_card_and_info_say_it_is_a_reranker(live, reranker, reference_and_file, capsys):
    import httpx
    from cli_util import run_cli

    card = httpx.get(live.url + "/v1/models").json()["data"][0]
    assert card["capabilities"] == {"completions": False, "chat": False, "embeddings": False, "rerank": True}
    code, out, err = run_cli(capsys, "info", str(reranker.path))
    assert code == 0 and "embeddings      no: a reranker" in out, out + err
    code, out, err = run_cli(capsys, "info", str(reference_and_file[1]))
    assert code == 0 and "onnxlm exports it as a reranker" in out, out + err


def test_what_a_reranker_cannot_do_points_to_rerank(live, reranker, tiny_llama, capsys, tmp_path):
    """generate / chat / score on a reranker say it reranks (not "use embed", which refuses it too), in the CLI, the
    jobs, the server and Python; rerank on a language model is a RerankerError, one error line in the CLI."""
    from cli_util import run_cli
    from serve_util import post

    from onnxlm.runtime.encoder_embedder import RerankerError

    for argv in (["generate", str(reranker.path), "hi"], ["score", str(reranker.path), "hi"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and len(err.strip().splitlines()) == 1 and "a reranker" in err, (argv, err)
        assert "use onnxlm rerank" in err and "embed" not in err, err
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi"}\n')
    code, out, err = run_cli(capsys, "score", str(reranker.path), "--input", tmp_path / "in.jsonl", "--output",
                             tmp_path / "o.parquet")
    assert code == 1 and "use onnxlm rerank" in err and not (tmp_path / "o.parquet").exists(), err
    r = post(live.url, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    assert r.status_code == 400 and "/rerank" in r.json()["error"]["message"], r.text
    with pytest.raises(onnxlm.ModelFileError, match="a reranker .*rerank"):
        reranker.generate("hi")
    lm = onnxlm.load(tiny_llama.onnx_dir)
    with pytest.raises(RerankerError, match="rerank needs a reranker.*a language model"):
        lm.rerank("q", ["d"])
    code, out, err = run_cli(capsys, "rerank", str(tiny_llama.onnx_dir), "q", "d")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "rerank needs a reranker" in err, err
    code, out, err = run_cli(capsys, "rerank", str(reranker.path), "q", "d", "--top-n", "0")
    assert code == 2 and "--top-n" in err, err


def test_the_rerank_command(reranker, embedder, capsys, tmp_path):
    """``onnxlm rerank MODEL QUERY DOC...``: the documents best first with rerank's scores, --json, --top-n, --file;
    an embedding model or no documents is one error line."""
    import json

    from cli_util import run_cli

    docs = ["a panda is a bear", "hi there", "pandas eat bamboo all day"]
    want = reranker.rerank("what is a panda?", docs)
    code, out, err = run_cli(capsys, "rerank", str(reranker.path), "what is a panda?", *docs, "--json")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["index"], d["document"]) for d in lines] == [(r.index, docs[r.index]) for r in want]
    assert max(abs(d["score"] - r.score) for d, r in zip(lines, want)) <= 1e-6
    (tmp_path / "docs.txt").write_text("\n".join(docs) + "\n")
    code, out, err = run_cli(capsys, "rerank", str(reranker.path), "what is a panda?", "--file", tmp_path / "docs.txt",
                             "--top-n", 1)
    assert code == 0 and len(out.splitlines()) == 1 and repr(docs[want[0].index]) in out, out + err
    code, out, err = run_cli(capsys, "rerank", str(embedder.path), "q", "d")
    assert code == 1 and len(err.strip().splitlines()) == 1 and "reranker" in err, err
    code, out, err = run_cli(capsys, "rerank", str(reranker.path), "q", "--file", tmp_path / "empty.txt")
    assert code in (1, 2) and err.strip(), err

"""``embed`` (runtime/embedding.py): what each parameter does and refuses, where an artifact's pooling comes from,
which artifacts cannot embed. Parity with transformers' hidden states for every fused family is in
tests/test_fused_layouts.py; GGUF exports and their pooling metadata in tests/test_gguf_quant.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.embedding import normalized, pool

pytest.importorskip("torch", reason="embedding tests export tiny models (the 'export' extra)")


@pytest.fixture(scope="module")
def fused_llama(tiny_llama, tmp_path_factory):
    from onnxlm.export import export_model

    return onnxlm.load(export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("emb") / "fused", progress=False,
                                    validate=False))


def test_pool_and_normalized_by_hand():
    """Right-packed rows: mean over a row's own positions only, cls its first, last its last; llama.cpp's norms."""
    hidden = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)  # row 1 holds 2 tokens, then padding
    lengths = np.array([3, 2])
    np.testing.assert_array_equal(pool(hidden, lengths, "mean"), [[2, 3], [7, 8]])
    np.testing.assert_array_equal(pool(hidden, lengths, "cls"), [[0, 1], [6, 7]])
    np.testing.assert_array_equal(pool(hidden, lengths, "last"), [[4, 5], [8, 9]])
    v = np.array([[3.0, -4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(normalized(v, 2), [[0.6, -0.8], [0, 0]])
    np.testing.assert_allclose(normalized(v, 1), [[3 / 7, -4 / 7], [0, 0]])
    np.testing.assert_allclose(normalized(v, 0), [[3 * 32760 / 4, -32760], [0, 0]], rtol=1e-6)
    np.testing.assert_allclose(normalized(v, 3), v / (27 + 64) ** (1 / 3), rtol=1e-6)
    np.testing.assert_array_equal(normalized(v, -1), v)


def test_text_rows_order_and_batches(fused_llama):
    """Texts are encoded as generate encodes a prompt; the vectors come back in the given order whatever the batch
    size (rows run sorted by length); the result says what it holds."""
    m = fused_llama
    texts = ["hello there, a longer text than the others", "hi", "a middle one"]
    one = m.embed(texts, batch_size=1)
    many = m.embed(texts, batch_size=16)
    np.testing.assert_allclose(one.embeddings, many.embeddings, atol=1e-5)
    assert one.token_counts == [len(m.tokenizer.encode(t)) for t in texts]
    for i, t in enumerate(texts):
        np.testing.assert_allclose(m.embed(t).embeddings[0], many.embeddings[i], atol=1e-5)
    np.testing.assert_allclose(m.embed([m.tokenizer.encode(t) for t in texts]).embeddings, many.embeddings, atol=1e-5)
    assert repr(many) == f"EmbeddingResult(n=3, dim={m.config['hidden_size']}, pooling='mean', normalize=True, " \
                         f"tokens={sum(many.token_counts)})"
    assert isinstance(many, onnxlm.EmbeddingResult) and many.embeddings.dtype == np.float32


@pytest.mark.parametrize("kw,match", [(dict(pooling="max"), r"pooling: got 'max'; allowed: 'mean', 'cls', 'last'"),
                                      (dict(normalize="yes"), "normalize: got 'yes'; allowed: True or False"),
                                      (dict(batch_size=0), "batch_size: got 0; allowed: an integer >= 1"),
                                      (dict(batch_size=True), "batch_size: got True")])
def test_bad_parameters_are_refused_by_name(fused_llama, kw, match):
    with pytest.raises(onnxlm.ParameterError, match=match):
        fused_llama.embed("hi", **kw)


def test_bad_inputs_are_refused(fused_llama):
    m = fused_llama
    with pytest.raises(onnxlm.InputError, match="empty"):
        m.embed("")
    with pytest.raises(onnxlm.InputError, match="out of range"):
        m.embed([[1, 2, m.vocab_size]])
    with pytest.raises(onnxlm.InputError, match="max_positions"):
        m.embed([[3] * (m.max_positions + 1)])


def test_a_plain_graph_cannot_embed_and_says_why(tiny_llama):
    with pytest.raises(onnxlm.ModelFileError, match="fused graph .* causal-lm on the plain layout"):
        onnxlm.load(tiny_llama.onnx_dir).embed("hi")


def test_an_artifact_exported_before_embeddings_says_export_again(fused_llama, tmp_path):
    """A fused graph without the last_hidden_state output (an earlier onnxlm's) -> ModelFileError naming the fix."""
    import onnx

    art = tmp_path / "old"
    shutil.copytree(fused_llama.path, art)
    graph = onnx.load(str(art / "model.onnx"), load_external_data=False)
    keep = [o for o in graph.graph.output if o.name != "last_hidden_state"]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    onnx.save(graph, str(art / "model.onnx"))
    manifest = json.loads((art / "onnxlm.json").read_text())
    manifest["files"].pop("model.onnx")  # no checksum to trip over: the graph is the point
    (art / "onnxlm.json").write_text(json.dumps(manifest))
    old = onnxlm.load(art)
    assert old.generate([5, 6], max_new_tokens=2).sequences.shape == (1, 4)  # it still generates
    with pytest.raises(onnxlm.ModelFileError, match="no last_hidden_state .* export it again"):
        old.embed("hi")


def test_a_sentence_transformers_folder_names_its_pooling(tiny_llama, tmp_path):
    """A transformers folder with sentence-transformers' 1_Pooling/config.json: its one pooling mode is the
    manifest's ``pooling``; several or none: none named."""
    from onnxlm.export import export_model

    hf = tmp_path / "hf"
    shutil.copytree(tiny_llama.hf_dir, hf)
    (hf / "1_Pooling").mkdir()
    (hf / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 64, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_lasttoken": True}))
    model = onnxlm.load(export_model(hf, tmp_path / "onnx", progress=False, validate=False))
    assert model.manifest["pooling"] == "last" and model.embed("hi there").pooling == "last"
    from onnxlm.export.loader import sentence_transformers_pooling

    (hf / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                              "pooling_mode_cls_token": True}))
    assert sentence_transformers_pooling(hf) is None

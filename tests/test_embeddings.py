"""``embed`` (runtime/embedding.py): what each parameter does and refuses, where an artifact's pooling comes from,
which artifacts cannot embed. Parity with transformers' hidden states for every fused family is in
tests/test_fused_layouts.py; GGUF exports and their pooling metadata in tests/test_gguf_quant.py."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.embedding import MAX_BATCH_TOKENS, batches, normalized, pool

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


def test_batches_hold_a_token_budget_and_keep_a_long_row_apart():
    """Rows of similar length together, at most batch_size rows and MAX_BATCH_TOKENS padded positions a batch: 15
    short texts beside one of 2,048 tokens are one batch and one alone (in one batch of 16 they took 42 s and 3.7 GB
    on SmolLM2, each alone 4 s); every row exactly once."""
    lengths = [9, 7, MAX_BATCH_TOKENS, 5, 6, 8, 7, 9, 5, 6, 7, 8, 9, 5, 6, 7]
    got = batches(lengths, 16)
    assert got == [[i for i in sorted(range(16), key=lambda i: lengths[i]) if i != 2], [2]]
    many = [300] * 40 + [MAX_BATCH_TOKENS + 1]
    got = batches(many, 16)
    assert sorted(i for b in got for i in b) == list(range(41))
    assert all(len(b) * max(many[i] for i in b) <= MAX_BATCH_TOKENS or len(b) == 1 for b in got)
    per = MAX_BATCH_TOKENS // 300
    assert [len(b) for b in got] == [per] * (40 // per) + ([40 % per] if 40 % per else []) + [1]
    assert batches([3, 1, 2], 2) == [[1, 2], [0]]


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
    """A list's refused item is named by its index (among 500 texts the bad one must be found)."""
    m = fused_llama
    with pytest.raises(onnxlm.InputError, match="empty"):
        m.embed("")
    with pytest.raises(onnxlm.InputError, match=r"^inputs\[2\]: the prompt is empty"):
        m.embed(["a", "b", ""])
    with pytest.raises(onnxlm.InputError, match=r"^inputs\[1\]: the input has .*allows at most .*--truncate"):
        m.embed(["a", "word " * (m.max_positions + 1), "c"])
    with pytest.raises(onnxlm.InputError, match=r"^inputs\[1\]: token id .* out of range"):
        m.embed([[1, 2], [3, m.vocab_size]])
    with pytest.raises(onnxlm.InputError, match="mix of types"):
        m.embed(["a", [1, 2]])
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


def test_a_qwen3_embedding_shaped_gguf_embeds_as_its_metadata_says(tmp_path):
    """A GGUF as Qwen3-Embedding's (qwen3, ``pooling_type`` 3 = last, ``tokenizer.ggml.add_eos_token``): the
    artifact's tokenizer appends the EOS, embed's default is the last token's state (the EOS's), and that vector is
    transformers' hidden_states[-1] there, on the dequantised weights."""
    import torch

    from gguf_writers import write_tiny_gguf
    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf

    path = tmp_path / "tiny-qwen3-embedding.gguf"
    write_tiny_gguf(path, "qwen3-head-dim", metadata={"qwen3.pooling_type": 3, "tokenizer.ggml.add_eos_token": True})
    model = onnxlm.load(export_model(path, tmp_path / "onnx", progress=False, validate=False))
    assert model.manifest["pooling"] == "last" and model.default_pooling == "last"
    eos = model.generation_config.eos_token_ids[0]
    texts = ["the tiny text", "t"]
    got = model.embed(texts, normalize=False)
    ids = [model.tokenizer.encode(t) for t in texts]
    assert all(row[-1] == eos for row in ids) and got.token_counts == [len(r) for r in ids]
    ref = load_gguf(path).model
    with torch.no_grad():
        want = np.stack([ref(torch.tensor([r]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
                         for r in ids])
    assert np.abs(got.embeddings - want).max() <= 1e-4


def test_truncate_cuts_a_long_text_and_keeps_the_appended_eos(tmp_path):
    """``truncate=True``: a text past the context is cut to it, its first tokens and the EOS the tokenizer appends
    kept last (the state last pooling reads), equal to transformers' on those ids; without it the text is refused.
    ``embedding.truncated`` by hand."""
    import torch

    from gguf_writers import write_tiny_gguf
    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf
    from onnxlm.runtime.embedding import appended_ids, truncated

    assert truncated([1, 2, 3, 4, 9], 3, [9]) == [1, 2, 9] and truncated([1, 2, 3, 4], 3, [9]) == [1, 2, 3]
    assert truncated([1, 2], 3, [9]) == [1, 2] and truncated([1, 2, 3, 9], 1, [9]) == [1]
    path = tmp_path / "tiny-qwen3-embedding.gguf"
    write_tiny_gguf(path, "qwen3-head-dim", metadata={"qwen3.pooling_type": 3, "tokenizer.ggml.add_eos_token": True})
    model = onnxlm.load(export_model(path, tmp_path / "onnx", progress=False, validate=False))
    eos = model.generation_config.eos_token_ids[0]
    assert appended_ids(model.tokenizer) == [eos]
    limit = model.max_positions
    text = "tiny words again " * limit
    ids = model.tokenizer.encode(text)
    assert len(ids) > limit
    with pytest.raises(onnxlm.InputError, match=f"at most {limit}"):
        model.embed([text])
    got = model.embed(["short", text], normalize=False, truncate=True)
    cut = ids[:limit - 1] + [eos]
    assert got.token_counts[1] == limit
    ref = load_gguf(path).model
    with torch.no_grad():
        want = ref(torch.tensor([cut]), output_hidden_states=True).hidden_states[-1][0, -1].numpy()
    assert np.abs(got.embeddings[1] - want).max() <= 1e-4
    with pytest.raises(onnxlm.ParameterError, match="truncate: got 'yes'"):
        model.embed("a", truncate="yes")

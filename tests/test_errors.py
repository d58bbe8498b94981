"""The error table: every bad input gives a typed exception naming the parameter or file and what is allowed;
the CLI turns each into one readable line (no traceback) and exit status 1. Nothing hangs (timeouts) and nothing
is left half-written."""
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import onnxlm
from onnxlm.runtime.errors import InputError, ManifestError, ModelFileError, ParameterError, ProviderError

# (case id, generate/load kwargs, exception type, words the message must contain, CLI flags)
PARAMETER_CASES = [
    ("temperature-negative", dict(do_sample=True, temperature=-1.0), ParameterError, ["temperature", "> 0"],
     ["--do-sample", "--temperature", "-1"]),
    ("temperature-zero-sampling", dict(do_sample=True, temperature=0.0), ParameterError, ["temperature", "> 0"],
     ["--do-sample", "--temperature", "0"]),
    ("temperature-nan", dict(do_sample=True, temperature=math.nan), ParameterError, ["temperature", "nan"],
     ["--do-sample", "--temperature", "nan"]),
    ("top_p-negative", dict(do_sample=True, top_p=-0.5), ParameterError, ["top_p", "[0, 1]"],
     ["--do-sample", "--top-p", "-0.5"]),
    ("top_k-negative", dict(do_sample=True, top_k=-1), ParameterError, ["top_k", ">= 0"], ["--do-sample", "--top-k", "-1"]),
    ("nrs-above-beams", dict(num_beams=2, num_return_sequences=3), ParameterError, ["num_return_sequences", "num_beams"],
     ["--num-beams", "2", "--num-return-sequences", "3"]),
    ("max_new_tokens-negative", dict(max_new_tokens=-1), ParameterError, ["max_new_tokens"], ["--max-new-tokens", "-1"]),
    ("unknown-parameter", dict(temprature=0.5), ParameterError, ["temprature", "temperature"], None),
    ("eos-out-of-vocab", dict(eos_token_id=10**6), ParameterError, ["eos_token_id", "< 260"], ["--eos-token-id", "1000000"]),
]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return onnxlm.load(tiny_gpt2.onnx_dir)


def run_cli(*argv, stdin=None):
    proc = subprocess.run([sys.executable, "-m", "onnxlm", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, input=stdin)
    return proc


def assert_one_line_error(proc, *words):
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("onnxlm: error:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), (w, lines[0])


@pytest.mark.parametrize("case", PARAMETER_CASES, ids=[c[0] for c in PARAMETER_CASES])
def test_bad_generation_parameters(gpt2, tiny_gpt2, case):
    _, kwargs, exc, words, flags = case
    with pytest.raises(exc) as info:
        gpt2.generate("hello", **kwargs)
    for w in words:
        assert w.lower() in str(info.value).lower(), (w, str(info.value))
    if flags is not None:  # the CLI names the parameter by its flag (--top-p for top_p)
        assert_one_line_error(run_cli("generate", tiny_gpt2.onnx_dir, "hello", *flags),
                              "--" + words[0].replace("_", "-"))


def test_empty_prompt(gpt2, tiny_gpt2):
    with pytest.raises(InputError, match="empty"):
        gpt2.generate("")
    with pytest.raises(InputError, match="inputs"):
        gpt2.generate([])
    with pytest.raises(InputError, match="inputs"):
        gpt2.score([[]])
    assert_one_line_error(run_cli("generate", tiny_gpt2.onnx_dir, ""), "empty")


def test_prompt_longer_than_max_positions(gpt2, tiny_gpt2):
    long_text = "x" * (gpt2.max_positions + 1)  # byte-level: one token per character
    with pytest.raises(InputError, match=r"max_positions") as info:
        gpt2.generate(long_text)
    assert str(gpt2.max_positions) in str(info.value)
    with pytest.raises(ParameterError, match="max_new_tokens"):
        gpt2.generate("x" * (gpt2.max_positions - 2), max_new_tokens=10)
    assert_one_line_error(run_cli("generate", tiny_gpt2.onnx_dir, long_text), "max_positions")


def test_token_id_out_of_vocabulary(gpt2):
    with pytest.raises(InputError, match=r"input_ids.*< 260"):
        gpt2.generate([1, 2, 260])
    with pytest.raises(InputError, match=r"input_ids.*< 260"):
        gpt2.score([[1, -1, 2]])


def test_missing_model_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ModelFileError, match="does not exist") as info:
        onnxlm.load(missing)
    assert str(missing) in str(info.value)
    assert_one_line_error(run_cli("generate", missing, "hi"), str(missing))


@pytest.fixture
def artifact_copy(tiny_gpt2, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(tiny_gpt2.onnx_dir, dst)
    return dst


def test_missing_onnx_file(artifact_copy):
    (artifact_copy / "model.onnx").unlink()
    with pytest.raises(ModelFileError, match="model.onnx"):
        onnxlm.load(artifact_copy)
    assert_one_line_error(run_cli("info", artifact_copy), "model.onnx")


def test_truncated_onnx_file(artifact_copy):
    path = artifact_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="truncated"):
        onnxlm.load(artifact_copy)
    with pytest.raises(ModelFileError, match="model.onnx"):  # without the checksum, onnxruntime's failure is typed too
        onnxlm.load(artifact_copy, verify=False)
    assert_one_line_error(run_cli("generate", artifact_copy, "hi"), "model.onnx")


def test_sha256_mismatch(artifact_copy):
    path = artifact_copy / "model.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, different bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256"):
        onnxlm.load(artifact_copy)
    assert_one_line_error(run_cli("generate", artifact_copy, "hi"), "sha256")


def test_a_corrupt_tokenizer_is_a_checksum_mismatch_first(artifact_copy):
    """A tokenizer.json garbled in place is reported as the artifact's checksum mismatch, naming the file, before
    its parse error; without the check, as the parse error it is. (Hashing the files on a thread beside the
    tokenizer's parse was measured and not kept: Gemma 3's load 2.01 -> 1.97 s at the median of 5, within noise.)"""
    path = artifact_copy / "tokenizer.json"
    path.write_bytes(b"{" + b"x" * (path.stat().st_size - 1))  # same size, not JSON
    with pytest.raises(ModelFileError, match=r"tokenizer\.json: sha256 does not match the manifest"):
        onnxlm.load(artifact_copy)
    with pytest.raises(onnxlm.OnnxlmError, match="tokenizer"):
        onnxlm.load(artifact_copy, verify=False)


def test_manifest_from_a_future_format_version(artifact_copy):
    path = artifact_copy / "onnxlm.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"format_version=99.*1\.\.1"):
        onnxlm.load(artifact_copy)
    assert_one_line_error(run_cli("info", artifact_copy), "format_version")


def test_corrupt_manifest(artifact_copy):
    (artifact_copy / "onnxlm.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="onnxlm.json"):
        onnxlm.load(artifact_copy)


def test_a_manifest_that_is_no_object_is_a_manifest_error(artifact_copy):
    for text in ("[1, 2]", '{"format_version": 1, "files": [1]}', '{"format_version": 1, "files": {"a": 3}}'):
        (artifact_copy / "onnxlm.json").write_text(text)
        with pytest.raises(ManifestError, match="expected a JSON object with a \"files\" object"):
            onnxlm.load(artifact_copy)
    assert_one_line_error(run_cli("info", artifact_copy), "expected a JSON object")


def test_a_fused_artifact_without_its_manifest_is_named_not_run_as_an_optimum_export(tiny_lfm2, tmp_path):
    """Without onnxlm.json a folder is read as a plain Optimum export; a fused graph's own inputs (seqlens_k, ...)
    then say it is an onnxlm artifact whose manifest is gone, before any run (was: onnxruntime's missing-inputs
    error from the first pass)."""
    art = tmp_path / "art"
    shutil.copytree(tiny_lfm2.onnx_dir, art)
    (art / "onnxlm.json").unlink()
    with pytest.raises(ModelFileError, match="an onnxlm artifact whose onnxlm.json is missing"):
        onnxlm.load(art)
    assert_one_line_error(run_cli("generate", art, "hi"), "onnxlm.json is missing")


def test_cuda_where_unavailable(tiny_gpt2):
    import onnxruntime as ort
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(ProviderError, match="provider='cuda'.*onnxruntime-gpu"):
        onnxlm.load(tiny_gpt2.onnx_dir, provider="cuda")
    assert_one_line_error(run_cli("generate", tiny_gpt2.onnx_dir, "hi", "--provider", "cuda"), "cuda")


def test_cuda_listed_but_not_starting(tiny_gpt2, monkeypatch):
    """onnxruntime-gpu lists CUDAExecutionProvider even where its CUDA/cuDNN libraries are missing, and a session
    then falls back to the CPU without an error: provider='cuda' must refuse (not run silently on the CPU), 'auto'
    must take the CPU. Simulated here: CUDA listed, every session the CPU's."""
    import onnxruntime as ort

    from onnxlm.runtime import session

    real = ort.InferenceSession
    asked = []

    def cpu_only(path, sess_options=None, providers=None, **kw):
        asked.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    session.cuda_starts.cache_clear()
    try:
        with pytest.raises(ProviderError, match="provider='cuda'.*does not start.*fell back to the CPU"):
            onnxlm.load(tiny_gpt2.onnx_dir, provider="cuda")
        assert asked and asked[0][0] == ("CUDAExecutionProvider", {"use_tf32": "0"})  # the probe asked for CUDA
        model = onnxlm.load(tiny_gpt2.onnx_dir, provider="auto")
        assert model.provider == "cpu" and model.decoder.session.get_providers() == ["CPUExecutionProvider"]
        assert len([a for a in asked if a[0] != "CPUExecutionProvider"]) == 1  # probed once, then cached
    finally:
        monkeypatch.undo()
        session.cuda_starts.cache_clear()
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert session.cuda_starts() is False  # a CPU-only onnxruntime: the probe gets the CPU


def test_an_onnxruntime_older_than_the_floor_is_refused(tiny_gpt2, monkeypatch, tmp_path):
    """onnxruntime before MIN_ONNXRUNTIME cannot open some graphs; an artifact that needs more (its manifest's
    ``requires``; a fused one from before that field: the sliding-window floor) is refused below that, but for the
    sliding windows' 1.24, which 1.23 meets with the windows narrowed (tests/test_window_narrowing.py). Loading, and
    an export's validation, refuse by version (DependencyError); pyproject asks for the floor for onnxruntime and
    onnxruntime-gpu."""
    import re

    import onnxruntime as ort

    from onnxlm.export import validate
    from onnxlm.runtime import DependencyError
    from onnxlm.runtime.versions import (MIN_ONNXRUNTIME, SLIDING_WINDOW_ONNXRUNTIME, artifact_onnxruntime,
                                         check_artifact_onnxruntime, check_onnxruntime, runs_narrowed)

    least = ".".join(map(str, MIN_ONNXRUNTIME))
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    # the base install, the cuda extra, the test extra (its graphs' IR version 14 reads from 1.32)
    assert re.findall(r'"onnxruntime(?:-gpu\[cuda,cudnn\])?>=([\d.]+)"', pyproject) == [least, least, "1.32"]
    for fine in (least, f"{least}.1", f"{least}.0rc1", "1.31.0+cu124", "1.40.0.dev20270101", "2.0.0", "local-build"):
        check_onnxruntime(version=fine)
    for old in ("1.22.9", "1.3.0", "0.99"):
        with pytest.raises(DependencyError, match=rf"onnxruntime {re.escape(old)} is installed; onnxlm needs "
                                                  rf"onnxruntime >= {re.escape(least)} .*GatherBlockQuantized"):
            check_onnxruntime(version=old)
    assert artifact_onnxruntime({"requires": {"onnxruntime": "1.24"}, "kv_layout": "fused-gqa"}) == \
        SLIDING_WINDOW_ONNXRUNTIME == (1, 24)
    assert artifact_onnxruntime({"requires": {"onnxruntime": least}, "kv_layout": "fused-gqa"}) == MIN_ONNXRUNTIME
    assert artifact_onnxruntime({"kv_layout": "fused-gqa"}) == SLIDING_WINDOW_ONNXRUNTIME  # exported before "requires"
    assert artifact_onnxruntime({}) == MIN_ONNXRUNTIME  # a plain (optimum) graph from before it
    for config, least_there in (({"model_type": "mistral", "sliding_window": 4}, SLIDING_WINDOW_ONNXRUNTIME),
                                ({"model_type": "gemma3_text", "sliding_window": 4,
                                  "layer_types": ["sliding_attention", "full_attention"]}, SLIDING_WINDOW_ONNXRUNTIME),
                                ({"model_type": "gemma3_text", "sliding_window": 4,
                                  "layer_types": ["full_attention"]}, MIN_ONNXRUNTIME),
                                ({"model_type": "qwen2", "sliding_window": 4, "use_sliding_window": False},
                                 MIN_ONNXRUNTIME),
                                ({"model_type": "llama"}, MIN_ONNXRUNTIME),
                                ({"model_type": "phi3", "sliding_window": 262144}, MIN_ONNXRUNTIME)):  # > 4096
        (tmp_path / "config.json").write_text(json.dumps(config))  # an artifact from before "requires": its config
        assert artifact_onnxruntime({"kv_layout": "fused-gqa", "max_positions": 4096}, tmp_path) == least_there, config
    for bad in ("1.24", {"onnxruntime": 1.24}, {"onnxruntime": "new"}, {}):
        with pytest.raises(ManifestError, match=r"requires=.*expected \{\"onnxruntime\": \"<major>\.<minor>\"\}"):
            artifact_onnxruntime({"requires": bad}, tmp_path)
    monkeypatch.setattr(ort, "__version__", "1.23.2")
    check_artifact_onnxruntime({"requires": {"onnxruntime": least}}, "here")
    # 1.23 runs what its sliding windows alone make need 1.24, each window narrowed (runtime/window_narrowing.py)
    check_artifact_onnxruntime({"requires": {"onnxruntime": "1.24"}}, "here")
    check_artifact_onnxruntime({"kv_layout": "fused-gqa"}, tmp_path / "absent")  # from before "requires"
    from onnxlm.runtime import window_narrowing

    assert window_narrowing.counts_window_wider() is False  # asked of this build (the suite's 1.32), not its number
    assert not runs_narrowed(SLIDING_WINDOW_ONNXRUNTIME)
    monkeypatch.setattr(window_narrowing, "counts_window_wider", lambda: True)  # a build that counts as 1.23 does
    assert runs_narrowed(SLIDING_WINDOW_ONNXRUNTIME) and not runs_narrowed(MIN_ONNXRUNTIME)
    assert not runs_narrowed((1, 30))  # a need past the windows' is no window's
    with pytest.raises(DependencyError, match=r"1\.23\.2 is installed; the artifact here needs onnxruntime >= 1\.30 "
                                              r"\(recorded at its export\)"):  # a need past the windows' stays one
        check_artifact_onnxruntime({"requires": {"onnxruntime": "1.30"}}, "here")
    assert onnxlm.load(tiny_gpt2.onnx_dir).vocab_size  # its manifest requires the floor alone
    from onnxlm.export import quantize_artifact

    with pytest.raises(DependencyError, match=r"quantize_artifact\(scheme='int8'\) needs onnxruntime >= 1\.24 "
                                              r"\(onnxruntime's MatMulNBitsQuantizer takes bits= from 1\.24\)"):
        quantize_artifact(tiny_gpt2.onnx_dir, tmp_path / "q", scheme="int8")
    assert not (tmp_path / "q").exists()
    from onnxlm.export import export_model

    with pytest.raises(DependencyError, match=r"quantize='int4' needs onnxruntime >= 1\.24"):  # before the export
        export_model(tiny_gpt2.hf_dir, tmp_path / "q4", quantize="int4", progress=False)
    assert not (tmp_path / "q4").exists() and not list(tmp_path.glob("*fp32*"))
    monkeypatch.setattr(ort, "__version__", "1.22.1")
    graph = json.loads((tiny_gpt2.onnx_dir / "onnxlm.json").read_text())["graphs"]["decoder"]["file"]
    for refused in (lambda: onnxlm.load(tiny_gpt2.onnx_dir), lambda: validate._session(tiny_gpt2.onnx_dir / graph)):
        with pytest.raises(DependencyError, match=r"onnxruntime 1\.22\.1 is installed; onnxlm needs onnxruntime >= "
                                                  r"1\.23 "):
            refused()
    assert issubclass(DependencyError, onnxlm.OnnxlmError)


def test_a_window_no_sequence_outgrows_needs_only_the_floor(tmp_path):
    """Before 1.24 a window of w holds w + 1 positions, which changes nothing while a sequence holds at most w: a
    graph's need (export/manifest.py) counts a GroupQueryAttention window only where it is shorter than the
    artifact's positions (Phi-3.5's 262,144 over 4,096 positions never binds)."""
    from onnx import TensorProto, helper, save

    from onnxlm.export.manifest import onnxruntime_requirement
    from onnxlm.runtime.versions import MIN_ONNXRUNTIME, SLIDING_WINDOW_ONNXRUNTIME

    def graph(window: int):
        node = helper.make_node("GroupQueryAttention", ["q"], ["y"], domain="com.microsoft", num_heads=1,
                                kv_num_heads=1, local_window_size=window)
        x = helper.make_tensor_value_info("q", TensorProto.FLOAT, [1, 1, 8])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])
        path = tmp_path / f"w{window}.onnx"
        save(helper.make_model(helper.make_graph([node], "g", [x], [y])), str(path))
        return path

    assert onnxruntime_requirement(graph(-1), 16) == MIN_ONNXRUNTIME
    assert onnxruntime_requirement(graph(8), 8) == MIN_ONNXRUNTIME  # 8 positions at most: the window never binds
    assert onnxruntime_requirement(graph(8), 9) == SLIDING_WINDOW_ONNXRUNTIME
    assert onnxruntime_requirement(graph(8), None) == SLIDING_WINDOW_ONNXRUNTIME  # no position limit
    # a window inside an If's branch or a function counts as one in the main graph (the narrowing edits those too)
    from onnx import load
    windowed = load(str(graph(8))).graph
    outer = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=windowed, else_branch=windowed)],
                              "outer", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8])])
    save(helper.make_model(outer), str(tmp_path / "if.onnx"))
    assert onnxruntime_requirement(tmp_path / "if.onnx", 9) == SLIDING_WINDOW_ONNXRUNTIME
    function = helper.make_function("local", "f", ["q"], ["y"], list(windowed.node), [helper.make_opsetid("", 17)])
    caller = helper.make_model(helper.make_graph([helper.make_node("f", ["q"], ["y"], domain="local")], "g",
                                                 list(windowed.input), list(windowed.output)), functions=[function])
    save(caller, str(tmp_path / "function.onnx"))
    assert onnxruntime_requirement(tmp_path / "function.onnx", 9) == SLIDING_WINDOW_ONNXRUNTIME


def test_a_tokenizers_older_than_the_floor_is_refused(tiny_gpt2, monkeypatch):
    """tokenizers 0.21.0-0.21.1 give other ids than llama.cpp's on some texts (runtime/versions.py): loading a
    tokenizer refuses them by version; pyproject asks for the floor."""
    import re

    from onnxlm.runtime import DependencyError, versions

    least = ".".join(map(str, versions.MIN_TOKENIZERS))
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert re.search(r'"tokenizers>=([\d.]+)"', pyproject)[1] == least
    real = versions.installed_version
    monkeypatch.setattr(versions, "installed_version", lambda name: "0.21.1" if name == "tokenizers" else real(name))
    with pytest.raises(DependencyError, match=rf"tokenizers 0\.21\.1 is installed; onnxlm needs tokenizers >= "
                                              rf"{re.escape(least)}"):
        onnxlm.load(tiny_gpt2.onnx_dir)


def test_bad_provider_name(tiny_gpt2):
    with pytest.raises(ParameterError, match="provider.*'auto', 'cpu', 'cuda'"):
        onnxlm.load(tiny_gpt2.onnx_dir, provider="tpu")


def test_right_padding_is_refused_for_decoder_only_generation(gpt2):
    ids = np.array([[5, 6, 7], [8, 9, 256]])
    mask = np.array([[1, 1, 1], [1, 1, 0]])
    with pytest.raises(InputError, match="left padding"):
        gpt2.generate(ids, attention_mask=mask)
    assert gpt2.logits(ids, mask).shape == (2, 3, gpt2.vocab_size)  # one forward pass is fine either way


def test_seq2seq_score_options(tiny_t5):
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    with pytest.raises(InputError, match="targets"):
        t5.score("source only")
    with pytest.raises(ParameterError, match="prepend_bos"):
        t5.score("source", targets="target", prepend_bos=True)


def test_unsupported_settings_in_generation_config_warn(artifact_copy):
    path = artifact_copy / "generation_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(num_beam_groups=2, diversity_penalty=0.5, use_cache=True, remove_invalid_values=True)
    path.write_text(json.dumps(cfg))
    with pytest.warns(UserWarning) as record:
        onnxlm.load(artifact_copy, verify=False)
    message = " ".join(str(w.message) for w in record)
    for name in ("num_beam_groups", "diversity_penalty", "remove_invalid_values"):
        assert name in message
    assert "use_cache" not in message  # harmless: the cache is always used

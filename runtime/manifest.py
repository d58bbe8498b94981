"""Reading and checking an artifact directory: the onnxlm.json manifest, or a plain Optimum export."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ManifestError, ModelFileError
from .gguf_magic import is_gguf_file

MANIFEST_NAME = "onnxlm.json"
FORMAT_VERSION = 1


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: Path) -> dict:
    """A JSON file -> dict; ModelFileError naming the file when missing or corrupt."""
    if not path.is_file():
        raise ModelFileError(f"{path.name} is missing from {path.parent}", str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON: {exc}", str(path)) from exc


def read_json_object(path: Path) -> dict:
    """``read_json`` of a file that must hold a JSON object (config.json): ModelFileError naming it otherwise."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise ModelFileError(f"{path}: expected a JSON object, got {type(value).__name__} (corrupt or edited; "
                             "re-export)", str(path))
    return value


def _not_a_directory(path: Path) -> str:
    """Why a file is no model directory, and for a GGUF file what to do instead."""
    if not is_gguf_file(path):
        return (f"{path} is a file, not a model directory (expected an onnxlm export or an Optimum ONNX export "
                "directory)")
    return (f"{path} is a GGUF file, not a model directory: export it once (onnxlm export {path} DIR --quantize gguf, "
            "which needs onnxlm[export]) and load DIR. The onnxlm commands take the .gguf itself (onnxlm generate "
            f"{path.name} ...) and do that on first use, into $ONNXLM_CACHE/gguf (default ~/.cache/onnxlm/gguf)")


def source_gguf_name(manifest: dict) -> str | None:
    """The name of the GGUF file an artifact was exported from (its manifest's ``quantization.source_gguf`` or
    ``source`` record, or an older manifest's path string), None when it came from elsewhere."""
    quant = manifest.get("quantization")
    for record in ((quant or {}).get("source_gguf") if isinstance(quant, dict) else None, manifest.get("source")):
        name = record.get("name") if isinstance(record, dict) else record
        if isinstance(name, str) and name.lower().endswith(".gguf"):
            return Path(name).name
    return None


def no_chat_template(manifest: dict) -> str:
    """Why an artifact has no chat template, in words: its source GGUF's metadata held none (a base model), or the
    artifact holds no chat_template.jinja."""
    gguf = source_gguf_name(manifest)
    if gguf:
        return (f"this model has no chat template: {gguf}, the GGUF file it was exported from, holds no "
                "tokenizer.chat_template (a base model?)")
    return "this model has no chat template (no chat_template.jinja in its artifact)"


def load_manifest(model_dir: Path, verify: bool = True) -> dict:
    """Artifact dir -> manifest dict. Verifies format version and (if verify) every file's size and sha256.

    A directory without onnxlm.json is read as a plain Optimum export (see `manifest_from_optimum_dir`).
    """
    if model_dir.is_file():
        raise ModelFileError(_not_a_directory(model_dir), str(model_dir))
    if not model_dir.is_dir():
        raise ModelFileError(f"model directory {model_dir} does not exist (expected an onnxlm export "
                             "or an Optimum ONNX export directory)", str(model_dir))
    path = model_dir / MANIFEST_NAME
    if not path.exists() and (model_dir / "recipe.json").is_file():  # export/recipes.py's file: a model to export
        raise ModelFileError(f"{model_dir} is a recipe (recipe.json: a model built from a config), not an artifact: "
                             f"export it first (onnxlm export {model_dir} OUT_DIR), then run OUT_DIR", str(model_dir))
    if not path.exists() and not (model_dir / "config.json").is_file() and not any(model_dir.glob("*.onnx")):
        raise ModelFileError(f"{model_dir} is not a model directory: it holds neither an onnxlm artifact "
                             f"({MANIFEST_NAME}) nor an Optimum ONNX export (config.json and .onnx files); give one "
                             "(onnxlm export MODEL OUT_DIR writes an artifact) or a .gguf file", str(model_dir))
    if not path.exists():
        return manifest_from_optimum_dir(model_dir)
    manifest = read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict) \
            or not all(isinstance(e, dict) for e in manifest.get("files", {}).values()):
        raise ManifestError(f"{path}: expected a JSON object with a \"files\" object of file records, got "
                            f"{json.dumps(manifest)[:80]} (corrupt or replaced; re-export)")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < 1 or version > FORMAT_VERSION:
        raise ManifestError(f"{path}: format_version={version!r} is not supported; this onnxlm reads "
                            f"format versions 1..{FORMAT_VERSION} (upgrade onnxlm or re-export)")
    if manifest.get("kind") not in ("causal-lm", "seq2seq-lm", "embedding"):
        raise ManifestError(f"{path}: kind={manifest.get('kind')!r}; allowed: 'causal-lm', 'seq2seq-lm', 'embedding'")
    graphs = manifest.get("graphs")
    if not isinstance(graphs, dict) or not graphs or not all(
            isinstance(g, dict) and isinstance(g.get("file"), str) for g in graphs.values()):
        raise ManifestError(f"{path}: expected a \"graphs\" object naming each graph's file, got "
                            f"{json.dumps(graphs)[:80]} (corrupt or edited; re-export)")
    positions = manifest.get("max_positions")
    if positions is not None and (not isinstance(positions, int) or isinstance(positions, bool) or positions < 1):
        raise ManifestError(f"{path}: max_positions={positions!r}; allowed: an integer >= 1 or null (corrupt or "
                            "edited; re-export)")
    for name in manifest.get("files", {}):
        file = model_dir / name
        if not file.is_file():
            raise ModelFileError(f"{name} is listed in {MANIFEST_NAME} but missing from {model_dir}", str(file))
    if verify:
        verify_files(model_dir, manifest)
    return manifest


def verify_files(model_dir: Path, manifest: dict) -> None:
    """Every file the manifest lists has its recorded size and sha256 (ModelFileError naming the first that does
    not)."""
    for name, entry in manifest.get("files", {}).items():
        file = model_dir / name
        size = file.stat().st_size
        if "bytes" in entry and size != entry["bytes"]:
            raise ModelFileError(f"{file} has {size} bytes, the manifest says {entry['bytes']} "
                                 "(truncated or replaced; re-export)", str(file))
        if sha256_of(file) != entry.get("sha256"):
            raise ModelFileError(f"{file}: sha256 does not match the manifest (corrupt or replaced; "
                                 "re-export, or skip the check: load(..., verify=False), the CLI's --no-verify)", str(file))


def manifest_from_optimum_dir(model_dir: Path) -> dict:
    """A plain Optimum export dir (config.json + ONNX files) -> a manifest-shaped dict (no checksums)."""
    config = read_json(model_dir / "config.json")
    if (model_dir / "encoder_model.onnx").is_file():
        decoder = next((f for f in ("decoder_model_merged.onnx", "decoder_model.onnx")
                        if (model_dir / f).is_file()), None)
        if decoder is None:
            raise ModelFileError(f"{model_dir} has encoder_model.onnx but no decoder_model_merged.onnx "
                                 "or decoder_model.onnx", str(model_dir))
        graphs = {"encoder": {"file": "encoder_model.onnx"}, "decoder": {"file": decoder}}
        if decoder == "decoder_model.onnx" and (model_dir / "decoder_with_past_model.onnx").is_file():
            graphs["decoder_with_past"] = {"file": "decoder_with_past_model.onnx"}
        kind = "seq2seq-lm"
    elif (model_dir / "model.onnx").is_file():
        graphs, kind = {"decoder": {"file": "model.onnx"}}, "causal-lm"
    else:
        raise ModelFileError(f"no ONNX model in {model_dir}: expected model.onnx (decoder-only) or "
                             "encoder_model.onnx + decoder_model_merged.onnx (seq2seq)", str(model_dir))
    return {"format_version": FORMAT_VERSION, "kind": kind, "model_type": config.get("model_type"),
            "graphs": graphs, "files": {}, "source": str(model_dir), "optimum": True}

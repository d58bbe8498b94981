"""What ``onnxlm export MODEL`` can tell of MODEL before torch is imported or a weight is read, and refuses then in one
line: a local folder that holds no model (transformers would guess a model type from the folder's name, "emptydir"
-> 'mpt', or list every type it knows), an onnxlm artifact given without a quantization (there is nothing to export
again), a GGUF file of an architecture onnxlm does not export (``gguf_reader.refuse_architecture``), and an
encoder-decoder (T5) to quantize with int8 / int4 (quantization takes decoder-only models). The CLI asks
``refuse_source`` before importing torch; ``export_model`` asks it again. Nothing here imports torch, transformers
or gguf (but ``refuse_source``'s GGUF check, skipped where gguf is missing: the export then says how to install it).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from onnxlm.runtime.errors import ExportError
from onnxlm.runtime.gguf_magic import is_gguf_file

from .onnx_export import T5_TYPES
from .recipes import RECIPE_FILE, is_recipe_dir

__all__ = ["MODEL_KINDS", "refuse_source", "refuse_unexportable_dir", "refuse_artifact_without_quantize",
           "seq2seq_model_type", "seq2seq_refusal", "is_seq2seq_config"]

#: what MODEL may be (``onnxlm export --help``'s words)
MODEL_KINDS = "a transformers model directory, a hub name, a .gguf file or a recipe directory"
ARTIFACT_FILE = "onnxlm.json"


def _is_artifact(path: Path) -> bool:
    return (path / ARTIFACT_FILE).is_file()


def refuse_artifact_without_quantize(model, quantize) -> None:
    """ExportError when ``model`` is an onnxlm artifact directory and no quantization is asked: exporting it again
    has nothing to do (its weights are ONNX, not a model transformers loads)."""
    if quantize is None and isinstance(model, (str, os.PathLike)) and _is_artifact(Path(model).expanduser()):
        raise ExportError(f"{model}: already an onnxlm artifact (it has {ARTIFACT_FILE}); pass quantize='int8', "
                          "'int4' or 'gguf' (--quantize) to make a quantized variant of it, or export the model it "
                          "was exported from")


def refuse_unexportable_dir(model) -> None:
    """ExportError naming ``model`` when it is a local folder (not a recipe, not an onnxlm artifact) that holds no
    transformers model config: no ``config.json``, one that is not a JSON object, or one without ``model_type``.
    Anything else (a hub name, a file) is left to the loader."""
    if not isinstance(model, (str, os.PathLike)):
        return
    path = Path(model).expanduser()
    if not path.is_dir() or is_recipe_dir(path) or _is_artifact(path):
        return
    config = path / "config.json"
    if not config.is_file():
        raise ExportError(f"{model}: not a transformers model directory (config.json is missing from it); MODEL is "
                          f"{MODEL_KINDS}")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"not JSON: {str(e)[:80]}"
        raise ExportError(f"{config}: cannot read this transformers config ({why})") from e
    if not isinstance(data, dict):
        raise ExportError(f"{config}: not a transformers model config (a JSON {type(data).__name__}, not an object)")
    if not isinstance(data.get("model_type"), str) or not data["model_type"]:
        raise ExportError(f"{config} has no model_type: not a transformers model config (MODEL is {MODEL_KINDS})")


def _local_config(model) -> dict | None:
    """A local source's config as a dict: a recipe's ``config``, a transformers directory's ``config.json``; None
    for anything else, or one that cannot be read (the export's own read says what is wrong)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    path = Path(model).expanduser()
    try:
        if is_recipe_dir(path):
            cfg = json.loads((path / RECIPE_FILE).read_text(encoding="utf-8")).get("config")
        elif (path / "config.json").is_file():
            cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, ValueError, AttributeError):
        return None
    return cfg if isinstance(cfg, dict) else None


def is_seq2seq_config(model_type, is_encoder_decoder) -> bool:
    """True for an encoder-decoder config: it says ``is_encoder_decoder``, or its model_type is one of the T5 ones
    (transformers' T5Config is an encoder-decoder whatever a config.json leaves out)."""
    return bool(is_encoder_decoder) or model_type in T5_TYPES


def seq2seq_model_type(model) -> str | None:
    """An export source's model_type where it is an encoder-decoder, known before loading: a loaded model's (or
    ``LoadedModel``'s) config, a recipe's config, a directory's config.json; else None (decoder-only, or not known
    before loading: a hub name, whose config the load's ``check`` sees)."""
    config = getattr(model, "config", None)  # a transformers model's
    if config is None:  # a LoadedModel's
        config = getattr(getattr(model, "model", None), "config", None)
    if config is not None and not isinstance(config, dict):
        model_type = getattr(config, "model_type", None)
        return model_type if is_seq2seq_config(model_type, getattr(config, "is_encoder_decoder", False)) else None
    cfg = _local_config(model)
    if cfg is None:
        return None
    model_type = cfg.get("model_type")
    return model_type if is_seq2seq_config(model_type, cfg.get("is_encoder_decoder")) else None


def seq2seq_refusal(quantize, model, model_type) -> str:
    """The one line refusing int8 / int4 quantization of the encoder-decoder ``model``."""
    where = model if isinstance(model, (str, os.PathLike)) else (  # a LoadedModel's source, a model's hub name
        getattr(model, "source", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
        or type(model).__name__)
    return (f"quantize={quantize!r}: quantization supports decoder-only models (GPT-2, Llama family) for now; "
            f"{where} is a {model_type!r} encoder-decoder (export it without quantize)")


def refuse_absent_or_not_gguf(model) -> None:
    """ExportError for a source given as a path that is not there (a path by its looks, ``looks_like_path``: not
    sent to the hub) or a file named .gguf that does not start with GGUF's magic; anything else is left to the
    other checks and the loader."""
    if not isinstance(model, (str, os.PathLike)):
        return
    given, path = os.fspath(model), Path(model).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file() and not is_gguf_file(path):
        raise ExportError(f"{given}: named .gguf but not a GGUF file (it does not start with the GGUF magic; a "
                          "download that saved an error page reads so)")
    if not path.exists() and looks_like_path(given):
        org = given.split("/")[0] if given.count("/") == 1 and not given.startswith(("/", ".", "~")) else None
        hint = (f" (read as a path: {org}/ is a folder here; for the hub repository {given}, run from another "
                "folder)") if org and Path(org).is_dir() and Path(given).suffix.lower() != ".gguf" else ""
        raise ExportError(f"{given}: no such file or directory{hint}")


def looks_like_path(given: str) -> bool:
    """A source that is a local path by its looks, never a hub name ("org/name"): a .gguf name, one that starts with
    /, . or ~, one with more than one /, a Windows separator, or an "org/name" whose "org" is a local folder
    (``models/gpt2-typo`` beside a ``models`` folder: a mistyped path, not a hub repository)."""
    if Path(given).suffix.lower() == ".gguf" or given.startswith(("/", ".", "~")) or given.count("/") > 1:
        return True
    if os.sep != "/" and os.sep in given:
        return True
    return given.count("/") == 1 and Path(given.split("/")[0]).is_dir()


def refuse_source(model, quantize=None) -> None:
    """What this module refuses of a source to export (``export_model`` says an artifact given without a
    quantization is one, ``refuse_artifact_without_quantize``, after its checks of the quantization settings): a
    folder that holds no model, a GGUF file of an architecture onnxlm does not export (skipped where the gguf
    package is missing), an encoder-decoder to quantize with int8 / int4."""
    refuse_absent_or_not_gguf(model)
    refuse_unexportable_dir(model)
    if isinstance(model, (str, os.PathLike)) and is_gguf_file(Path(model).expanduser()):
        from .gguf_reader import refuse_architecture

        try:
            refuse_architecture(model)
        except ImportError:  # no gguf to read its header with: the export says how to install it
            pass
        return
    if quantize in ("int8", "int4") and not (isinstance(model, (str, os.PathLike))
                                             and _is_artifact(Path(model).expanduser())):
        model_type = seq2seq_model_type(model)
        if model_type is not None:
            raise ExportError(seq2seq_refusal(quantize, model, model_type))

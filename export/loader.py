"""Load what ``export_model`` was given into one ``LoadedModel`` (fp32 PyTorch model + tokenizer + generation config)."""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxlm.runtime.errors import ExportError
from onnxlm.runtime.gguf_magic import is_gguf_file
from .hub_reach import cache_only, hub_endpoint
from .missing_weights import refuse_missing_weights
from .onnx_export import SUPPORTED_FAMILIES, family_of
from .recipes import instantiate_recipe, is_recipe_dir
from .sources import MODEL_KINDS, refuse_absent_or_not_gguf


@dataclass
class LoadedModel:
    model: Any  # transformers PreTrainedModel, fp32, eval mode
    family: str  # "gpt2" | "t5" | "llama"
    tokenizer: Any  # tokenizers.Tokenizer
    generation_config: Any  # transformers GenerationConfig
    chat_template: str | None
    source: str
    #: special-token ids the tokenizer declares (a transformers tokenizer's bos/eos/pad), used where the configs
    #: name none; never guessed from the vocabulary
    tokenizer_specials: dict = field(default_factory=dict)
    #: how the model's own runtime pools its hidden states into one embedding ("mean", "cls", "last"), where its
    #: files say (a GGUF's ``{arch}.pooling_type``, a sentence-transformers folder's ``1_Pooling/config.json``)
    pooling: str | None = None


def _check_model(model, source: str) -> str:
    import torch

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise ExportError(f"{source}: not a transformers model (no config.model_type); "
                          f"supported families: {SUPPORTED_FAMILIES}")
    family = family_of(model_type)
    can_generate = getattr(model, "can_generate", lambda: False)()
    if not can_generate:
        raise ExportError(f"{source}: {type(model).__name__} has no language-modeling head; load it with "
                          "AutoModelForCausalLM (GPT-2, Llama family) or AutoModelForSeq2SeqLM (T5)")
    if not isinstance(model, torch.nn.Module):
        raise ExportError(f"{source}: {type(model).__name__} is not a PyTorch model")
    return family


def _fp32(model):
    import torch

    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()  # leave the caller's object as it was
    return model.eval()


def _tokenizer_from(obj):
    """A ``tokenizers.Tokenizer`` from a tokenizers.Tokenizer, a transformers fast tokenizer or a tokenizer.json path."""
    if obj is None:
        return None
    from tokenizers import Tokenizer

    if isinstance(obj, Tokenizer):
        return obj
    if isinstance(obj, (str, Path)):
        return Tokenizer.from_file(str(obj))
    backend = getattr(obj, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"tokenizer: {type(obj).__name__} is a slow (Python) tokenizer; pass a fast one "
                          "(tokenizers.Tokenizer or PreTrainedTokenizerFast)")
    return backend


def _hf_tokenizer(name_or_path: str):
    """transformers' tokenizer of a source, or None. Its loggers are quiet meanwhile: a slow tokenizer's notices
    (LlamaTokenizer's "legacy behaviour" text) are about transformers' own encoding, not the artifact's."""
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            return AutoTokenizer.from_pretrained(name_or_path, **cache_only(Path(name_or_path).is_dir()))
        finally:
            hf_logging.set_verbosity(level)
    except Exception:  # noqa: BLE001 - no tokenizer is reported by the caller with a clear message
        return None


def _declared_specials(hf_tok) -> dict:
    """A transformers tokenizer -> {'bos_token_id': id, ...} for the special tokens it declares (none if absent)."""
    out = {}
    for name in ("bos", "eos", "pad"):
        tid = getattr(hf_tok, f"{name}_token_id", None) if hf_tok is not None else None
        if isinstance(tid, int) and getattr(hf_tok, f"{name}_token", None) is not None:
            out[f"{name}_token_id"] = tid
    return out


def _chat_template(hf_tok) -> str | None:
    t = getattr(hf_tok, "chat_template", None) if hf_tok is not None else None
    if isinstance(t, dict):
        t = t.get("default")
    return t if isinstance(t, str) and t else None


def load_source(model, *, tokenizer=None, log=None, check=None) -> LoadedModel:
    """Dispatch on what ``model`` is: recipe dir, transformers dir, .gguf file, hub name, a loaded model, or a
    ``LoadedModel`` already (returned as it is: a caller that also needs the PyTorch model loads a source once).
    ``check(config)``: the caller's refusals of the model's config, run once it is known and before the weights
    load (a recipe's, before they are made), beside the refusal of a family onnxlm does not export."""
    from transformers import GenerationConfig

    if isinstance(model, LoadedModel):
        if check is not None:
            check(model.model.config)
        return model
    if not isinstance(model, (str, Path)):
        if check is not None:
            check(model.config)
        source = str(getattr(getattr(model, "config", None), "_name_or_path", "") or f"<{type(model).__name__}>")
        family = _check_model(model, source)
        hf_tok = None
        if tokenizer is None and source and not source.startswith("<"):
            hf_tok = _hf_tokenizer(source)
        tok = _tokenizer_from(tokenizer if tokenizer is not None else hf_tok)
        gen = getattr(model, "generation_config", None) or GenerationConfig.from_model_config(model.config)
        return LoadedModel(_fp32(model), family, tok, gen, _chat_template(tokenizer or hf_tok), source,
                           _declared_specials(tokenizer if hasattr(tokenizer, "bos_token_id") else hf_tok))

    path = Path(model).expanduser()
    if path.is_dir() and is_recipe_dir(path):
        m, tok, hf_tok, gen, chat = instantiate_recipe(path, check=check)
        family = _check_model(m, str(path))
        return LoadedModel(m, family, _tokenizer_from(tokenizer) or tok, gen, chat, str(path.resolve()),
                           _declared_specials(hf_tok))

    if is_gguf_file(path):  # by its magic: a hub cache's blob too
        try:
            from .gguf import load_gguf
        except ImportError as e:
            raise ExportError(f"{path}: GGUF loading is unavailable ({e}); install the 'export' extra (gguf)") from e
        g = load_gguf(path, check=check)
        family = _check_model(g.model, str(path))
        return LoadedModel(_fp32(g.model), family, _tokenizer_from(tokenizer) or g.tokenizer, g.generation_config,
                           g.chat_template, os.path.abspath(path),  # a link's own name (a hub cache's blob has none)
                           pooling=gguf_pooling(g.metadata))

    refuse_absent_or_not_gguf(model)  # a path by its looks is not sent to the hub; a .gguf without the magic
    if path.exists() and not path.is_dir():
        raise ExportError(f"{path}: expected a recipe dir, a transformers model dir, a .gguf file or a hub name")

    # local transformers dir or hub name (from_pretrained downloads in the latter case)
    name = str(path) if path.is_dir() else str(model)
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    # a hub name without a reachable hub: only what the Hugging Face cache holds (huggingface_hub retries a name
    # it cannot resolve for ~30 s before it says so)
    offline = cache_only(path.is_dir())
    try:
        config = AutoConfig.from_pretrained(name, **offline)
    except Exception as e:  # noqa: BLE001 - OSError (not found / no network), ValueError (unknown type), ...
        where = "local directory" if path.is_dir() else "hub name"
        if offline:
            raise ExportError(f"{model}: cannot load a transformers config from this {where}: the Hugging Face Hub "
                              f"({hub_endpoint()}) cannot be reached from here and its cache holds no such model; "
                              f"give {MODEL_KINDS.replace('a hub name, ', '')}") from None
        raise ExportError(f"{model}: cannot load a transformers config from this {where}: {e}") from e
    family = family_of(config.model_type)  # refuse unsupported architectures before loading weights
    if check is not None:
        check(config)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    try:
        m, info = auto.from_pretrained(name, dtype="float32", output_loading_info=True, **offline)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{model}: cannot load the model weights: {e}") from e
    refuse_missing_weights(info, model)
    _check_model(m, name)
    hf_tok = None if tokenizer is not None else _hf_tokenizer(name)
    tok = _tokenizer_from(tokenizer if tokenizer is not None else hf_tok)
    gen = getattr(m, "generation_config", None) or GenerationConfig.from_model_config(config)
    source = str(path.resolve()) if path.is_dir() else name
    return LoadedModel(m.eval(), family, tok, gen, _chat_template(tokenizer or hf_tok), source,
                       _declared_specials(tokenizer if hasattr(tokenizer, "bos_token_id") else hf_tok),
                       pooling=sentence_transformers_pooling(path) if path.is_dir() else None)


#: llama.cpp's ``enum llama_pooling_type`` (``{arch}.pooling_type``) -> onnxlm's names; none (0) and rank (4) are not
#: a pooling of one text's hidden states into its embedding
GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}
#: sentence-transformers' ``1_Pooling/config.json`` flags -> onnxlm's names
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}


def gguf_pooling(meta: dict) -> str | None:
    """A GGUF's metadata -> its pooling ("mean" / "cls" / "last"), or None where it names none (a generative model)."""
    value = meta.get(f"{meta.get('general.architecture')}.pooling_type")
    return GGUF_POOLING.get(int(value)) if value is not None else None


def sentence_transformers_pooling(path: Path) -> str | None:
    """A transformers folder that sentence-transformers also loads -> the pooling its ``1_Pooling/config.json``
    turns on, if exactly one of mean / cls / last (else None)."""
    import json

    try:
        flags = json.loads((path / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    on = [name for key, name in ST_POOLING.items() if flags.get(key) is True]
    return on[0] if len(on) == 1 else None

"""Recipes: tiny models described by ``recipe.json`` (transformers config + seed + byte-level tokenizer spec).

Weights come from ``torch.manual_seed(seed)`` followed by transformers' own initialisation, so the same recipe gives
the same weights on every machine with the same torch version. An optional ``param_noise`` (a std) then adds seeded
Gaussian noise to every parameter, so biases (initialised to 0) and norm weights (1) take non-trivial values.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from onnxlm.runtime.errors import ExportError

RECIPE_FILE = "recipe.json"
RECIPES_DIR = Path(__file__).resolve().parents[1] / "models" / "recipes"


def is_recipe_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / RECIPE_FILE).is_file()


def load_recipe(recipe_dir: str | Path) -> dict[str, Any]:
    path = Path(recipe_dir) / RECIPE_FILE
    try:
        recipe = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(f"{path}: cannot read recipe ({e})") from e
    for key in ("seed", "config", "tokenizer"):
        if key not in recipe:
            raise ExportError(f"{path}: recipe lacks the required key {key!r} (needs seed, config, tokenizer)")
    if "model_type" not in recipe["config"]:
        raise ExportError(f"{path}: recipe config lacks 'model_type'")
    return recipe


def instantiate_recipe(recipe_dir: str | Path, check=None):
    """Return ``(model, tokenizers.Tokenizer, hf_fast_tokenizer, generation_config, chat_template)`` for a recipe.
    ``check(config)``: run on the recipe's config before its weights are made (``loader.load_source``'s)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, GenerationConfig

    from .tokenizer import build_byte_level_tokenizer

    recipe = load_recipe(recipe_dir)
    cfg = dict(recipe["config"])
    model_type = cfg.pop("model_type")
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as e:
        raise ExportError(f"{recipe_dir}: unknown model_type {model_type!r} in recipe ({e})") from e
    if check is not None:
        check(config)
    torch.manual_seed(int(recipe["seed"]))
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    model = auto.from_config(config, dtype=torch.float32)
    model.eval()
    noise = float(recipe.get("param_noise", 0.0))
    if noise:  # transformers initialises biases to 0 and norm weights to 1: perturb them so they are exercised
        with torch.no_grad():
            for p in model.parameters():  # tied weights are one parameter, perturbed once
                p.add_(torch.randn_like(p) * noise)
    gen = GenerationConfig.from_model_config(config)
    for k, v in recipe.get("generation_config", {}).items():
        setattr(gen, k, v)
    model.generation_config = gen

    spec = recipe["tokenizer"]
    tok = build_byte_level_tokenizer(spec)
    hf_tok = _fast_tokenizer(tok, spec)
    return model, tok, hf_tok, gen, spec.get("chat_template")


def _fast_tokenizer(tok, spec):
    from transformers import PreTrainedTokenizerFast

    kw = {k: spec[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if spec.get(k)}
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    if spec.get("chat_template"):
        hf_tok.chat_template = spec["chat_template"]
    return hf_tok


def build_recipe(recipe_dir: str | Path, save_dir: str | Path) -> Path:
    """Write the recipe's transformers checkpoint (``save_pretrained``) plus ``tokenizer.json`` and friends.

    The result loads with ``AutoModelFor*.from_pretrained(save_dir)`` and ``AutoTokenizer.from_pretrained(save_dir)``
    (or ``PreTrainedTokenizerFast(tokenizer_file=save_dir / "tokenizer.json")``). Returns ``save_dir``.
    """
    save_dir = Path(save_dir)
    model, tok, hf_tok, gen, _ = instantiate_recipe(recipe_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(save_dir)
    gen.save_pretrained(save_dir)
    hf_tok.save_pretrained(save_dir)  # tokenizer.json, tokenizer_config.json (incl. chat template), special_tokens_map
    tok.save(str(save_dir / "tokenizer.json"))
    return save_dir

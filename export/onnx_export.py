"""ONNX export through optimum-onnx, with the ONNX configs this artifact layout needs.

Decoder-only models export as ONE graph ``model.onnx`` (task ``text-generation-with-past``: past key/values are
inputs; the first step feeds past length 0). Seq2seq (T5) exports optimum's encoder + merged decoder.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from onnxlm.runtime.errors import ExportError

from .atomic_dir import remove_tree

DECODER_ONLY_TASK = "text-generation-with-past"
SEQ2SEQ_TASK = "text2text-generation-with-past"

#: model_type -> family; "llama" covers every architecture optimum exports like Llama (RoPE, GQA, position_ids).
GPT2_TYPES = {"gpt2"}
T5_TYPES = {"t5", "mt5"}
LLAMA_TYPES = {"llama", "mistral", "qwen2", "qwen3", "granite", "olmo", "olmo2", "olmo3", "smollm3", "helium", "arcee",
               "phi3", "stablelm", "cohere", "glm", "gemma", "gemma2", "gemma3_text", "ernie4_5", "exaone4", "lfm2"}
#: rope_scaling types whose graph is proven exact (tests/test_families.py). "dynamic" is refused: transformers
#: recomputes its frequencies from the sequence length at run time, which a graph freezes. "longrope" (Phi-3.5, Phi-3
#: 128k) does so only past ``original_max_position_embeddings`` (its long factors): up to there its short factors
#: hold, so an export holds that many positions (``position_limit``) and is exact within them.
SUPPORTED_ROPE_SCALING = ("default", "linear", "llama3", "yarn", "longrope")
#: Llama-family types optimum-onnx (0.1) cannot export: the fused graph (``fused_llama``) is their only one
FUSED_ONLY_TYPES = {"ernie4_5", "exaone4", "lfm2", "olmo3"}
SUPPORTED_FAMILIES = "GPT-2 (gpt2), T5 (t5, mt5), Llama family (" + ", ".join(sorted(LLAMA_TYPES)) + ")"


def family_of(model_type: str) -> str:
    if model_type in GPT2_TYPES:
        return "gpt2"
    if model_type in T5_TYPES:
        return "t5"
    if model_type in LLAMA_TYPES:
        return "llama"
    raise ExportError(
        f"model_type {model_type!r} is not supported; supported families: {SUPPORTED_FAMILIES}"
    )


def rope_type_of(config) -> str:
    """A config's rope_scaling type ("default" without one; the legacy key "type" read too)."""
    rope = getattr(config, "rope_scaling", None) or {}
    return (rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None) or "default"


def position_limit(config) -> int | None:
    """The positions an export of ``config`` holds: ``max_position_embeddings``, but for longrope no more than
    ``original_max_position_embeddings`` (past it transformers switches to the long factors at run time)."""
    limit = getattr(config, "max_position_embeddings", None)
    original = getattr(config, "original_max_position_embeddings", None)
    if rope_type_of(config) == "longrope" and limit is not None and original:
        return min(int(limit), int(original))
    return limit


#: the supported model types whose transformers attention reads ``sliding_window``
WINDOWED_TYPES = ("mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "olmo3", "exaone4", "smollm3")


def check_config(config) -> None:
    """Refuse config values whose graph cannot match transformers exactly (the family itself is supported)."""
    rope_type = rope_type_of(config)
    if rope_type not in SUPPORTED_ROPE_SCALING:
        raise ExportError(
            f"rope_scaling {{'rope_type': {rope_type!r}}} is not supported for export; supported rope_scaling types: "
            f"{', '.join(SUPPORTED_ROPE_SCALING)} (or none)"
        )
    window = getattr(config, "sliding_window", None)
    if window is not None and config.model_type not in WINDOWED_TYPES and config.model_type not in T5_TYPES:
        # its attention ignores the key, but transformers' KV cache (DynamicCache) keeps only that window: a prompt's
        # pass attends to every position and its cached steps to the window, so no one graph matches transformers
        raise ExportError(f"sliding_window {window!r} in a {config.model_type!r} config: transformers' "
                          f"{config.model_type} attention ignores it while its KV cache keeps only that window, so "
                          "transformers itself answers a prompt and its cached steps differently; set it to null in "
                          "config.json (a key copied from another model's config?)")


def attn_implementation_for(config) -> str | None:
    """The attention implementation to trace ``config``'s model with (None: the model's own).

    transformers' GPT-2 honours ``scale_attn_by_inverse_layer_idx`` and ``reorder_and_upcast_attn`` only in its eager
    attention (the SDPA path, the default, silently drops the 1/(layer_idx+1) scale), so such models are traced eager.
    """
    if config.model_type in GPT2_TYPES and (getattr(config, "scale_attn_by_inverse_layer_idx", False)
                                            or getattr(config, "reorder_and_upcast_attn", False)):
        return "eager"
    if getattr(config, "attn_logit_softcapping", None) is not None:  # Gemma 2: the SDPA path drops the capping
        return "eager"
    return None


@contextmanager
def traced_attention(model):
    """Within the block ``model`` runs ``attn_implementation_for(model.config)``; the caller's setting is restored."""
    impl, was = attn_implementation_for(model.config), model.config._attn_implementation
    if impl is None or impl == was:
        yield model
        return
    model.set_attn_implementation(impl)
    try:
        yield model
    finally:
        model.set_attn_implementation(was)


def _with_position_ids(base):
    """Subclass ``base`` (an optimum decoder OnnxConfig) so the with-past graph also takes ``position_ids``.

    optimum's TextDecoderWithPositionIdsOnnxConfig adds ``position_ids`` only when the task is exactly
    "text-generation"/"feature-extraction", i.e. not for "text-generation-with-past"; without it GPT-2 computes
    positions as past_len + arange(s), which is wrong for left-padded batches (transformers uses cumsum(mask)-1).
    """

    class WithPositionIds(base):
        @property
        def inputs(self):
            common = dict(super().inputs)
            common["position_ids"] = {0: "batch_size", 1: "sequence_length"}
            # keep the conventional order: input_ids, attention_mask, position_ids, past_key_values...
            order = ["input_ids", "attention_mask", "position_ids"]
            return {**{k: common[k] for k in order if k in common}, **{k: v for k, v in common.items() if k not in order}}

        def generate_dummy_inputs(self, framework: str = "pt", **kwargs):
            # optimum pads the dummy attention_mask to past + new tokens only for the task "text-generation"; with
            # "text-generation-with-past" it stays one short, which models with legacy masking (StableLM) reject.
            from optimum.utils import DummyInputGenerator

            dummy = super().generate_dummy_inputs(framework, **kwargs)
            past = dummy.get("past_key_values")  # [(key, value) per layer], key [b, kv_heads, past, head_dim]
            if past and "attention_mask" in dummy:
                want = past[0][0].shape[-2] + dummy["input_ids"].shape[1]
                if dummy["attention_mask"].shape[1] < want:
                    dummy["attention_mask"] = DummyInputGenerator.pad_input_on_dim(
                        dummy["attention_mask"], desired_length=want, dim=1)
            return dummy

    WithPositionIds.__name__ = base.__name__ + "WithPositionIds"
    return WithPositionIds


def _decoder_onnx_config(model, family: str):
    from optimum.exporters.tasks import TasksManager

    ctor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", model=model, task=DECODER_ONLY_TASK, library_name="transformers"
    )
    base = ctor.func if hasattr(ctor, "func") else ctor
    cls = _with_position_ids(base)
    return cls(model.config, task=DECODER_ONLY_TASK, use_past=True, use_past_in_inputs=True)


@contextmanager
def _quiet_stdout():
    """File descriptor 1 points at the null device inside, and back after: what C++ code prints there (torch's IR
    graph dump before a failed export's error, hundreds of lines) stays out of a caller's stdout; the error itself
    is raised as an ExportError."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):  # no fd 1 (an embedded interpreter): nothing to keep clean
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(null)


def export_onnx(model, family: str, out_dir: Path, *, opset: int | None = None) -> tuple[dict[str, str], int]:
    """Export ``model`` into ``out_dir``. Returns ({role: filename}, opset actually used)."""
    from optimum.exporters.onnx import onnx_export_from_model

    out_dir = Path(out_dir)
    # optimum also writes config/generation_config/tokenizer files and (for T5) extra graphs: export into a scratch
    # dir and move only the graphs we ship.
    scratch = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out_dir))
    quiet = [logging.getLogger(n) for n in ("optimum", "transformers")]
    levels = [lg.level for lg in quiet]
    try:
        for lg in quiet:
            lg.setLevel(logging.ERROR)
        if family == "t5":
            task, custom = SEQ2SEQ_TASK, None
            ship = {"encoder": "encoder_model.onnx", "decoder": "decoder_model_merged.onnx"}
        else:
            task = DECODER_ONLY_TASK
            onnx_config = _decoder_onnx_config(model, family)
            custom = {"model": onnx_config}
            ship = {"decoder": "model.onnx"}
        if opset is None:
            from optimum.exporters.tasks import TasksManager

            ctor = TasksManager.get_exporter_config_constructor(
                exporter="onnx", model=model, task=task, library_name="transformers"
            )
            opset = max(int(getattr(ctor.func if hasattr(ctor, "func") else ctor, "DEFAULT_ONNX_OPSET", 14)), 14)
        try:
            with _quiet_stdout():  # torch's C++ logging writes to fd 1: keep a caller's stdout clean
                onnx_export_from_model(
                    model,
                    output=scratch,
                    task=task,
                    opset=opset,
                    custom_onnx_configs=custom,
                    do_validation=False,  # we validate ourselves, on left-padded batches too
                    device="cpu",
                )
        except ExportError:
            raise
        except Exception as e:  # noqa: BLE001 - optimum/torch raise anything
            raise ExportError(f"ONNX export of {model.config.model_type} failed: {type(e).__name__}: {e}") from e
        for name in ship.values():
            src = scratch / name
            if not src.is_file():
                raise ExportError(f"optimum did not produce {name} (got {sorted(p.name for p in scratch.iterdir())})")
            data = scratch / (name + "_data")
            if data.exists():
                shutil.move(str(data), out_dir / data.name)
            shutil.move(str(src), out_dir / name)
        return ship, opset
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
        remove_tree(scratch)

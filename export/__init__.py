"""Export (needs the `export` extra: torch, transformers, optimum-onnx).

``export_model(model, out_dir, ...)`` writes a validated ONNX artifact; ``build_recipe(recipe_dir, save_dir)`` writes a
recipe's transformers checkpoint; ``quantize_artifact(src, out_dir, scheme=...)`` quantizes an fp32 artifact (weight-only,
quality-gated); ``quantize_gguf_artifact(src, out_dir)`` does it on the blocks of the GGUF file ``src`` was
exported from; ``ensure_gguf_artifact(gguf)`` returns a .gguf file's cached artifact, exported on first use. Heavy
imports (torch, transformers, optimum) happen on first use.
"""
from onnxlm.runtime.errors import ExportError, QualityGateError

__all__ = ["export_model", "quantize_artifact", "quantize_gguf_artifact", "ensure_gguf_artifact", "build_recipe",
           "ExportError", "QualityGateError", "RECIPES_DIR"]


def __getattr__(name):
    if name == "export_model":
        from .export import export_model

        return export_model
    if name == "quantize_artifact":
        from .quantize import quantize_artifact

        return quantize_artifact
    if name == "quantize_gguf_artifact":
        from .gguf_quant import quantize_gguf_artifact

        return quantize_gguf_artifact
    if name == "ensure_gguf_artifact":
        from .gguf_artifact import ensure_gguf_artifact

        return ensure_gguf_artifact
    if name == "build_recipe":
        from .recipes import build_recipe

        return build_recipe
    if name == "RECIPES_DIR":
        from .recipes import RECIPES_DIR

        return RECIPES_DIR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

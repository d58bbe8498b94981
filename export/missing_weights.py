"""A checkpoint that lacks some of the model's weights: transformers starts those at random and only logs it, so an
export would validate (the ONNX graph equals that PyTorch model) and answer nonsense. Refused here, naming them."""
from __future__ import annotations

from onnxlm.runtime.errors import ExportError


def refuse_missing_weights(loading_info: dict, source) -> None:
    """transformers' ``output_loading_info`` of a ``from_pretrained`` -> ExportError naming the ``missing_keys``
    (tied weights are not among them: transformers ties those)."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise ExportError(f"{source}: the checkpoint has no values for {len(missing)} of the model's weights "
                          f"({shown}); transformers would start them at random. Is the file complete, and of the "
                          "architecture its config names?")

"""A checkpoint that lacks some of the model's weights: transformers starts those at random and only logs it, so an
export would validate (the ONNX graph equals that PyTorch model) and answer nonsense. Refused here, naming them; so
is a GGUF holding tensors the model has no place for (transformers' loader drops them without a word)."""
from __future__ import annotations

from onnxlm.runtime.errors import ExportError


def _listed(names: list[str]) -> str:
    """Names -> the first six, comma-separated, and how many in all beyond them."""
    return ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")


def refuse_missing_weights(loading_info: dict, source) -> None:
    """transformers' ``output_loading_info`` of a ``from_pretrained`` -> ExportError naming the ``missing_keys``
    (tied weights are not among them: transformers ties those)."""
    missing = sorted(loading_info.get("missing_keys") or [])
    if missing:
        shown = _listed(missing)
        raise ExportError(f"{source}: the checkpoint has no values for {len(missing)} of the model's weights "
                          f"({shown}); transformers would start them at random. Is the file complete, and of the "
                          "architecture its config names?")


def refuse_unused_tensors(model, tensor_names, source=None) -> None:
    """A GGUF's tensors (``tensor_names``) that transformers' loader skipped for ``model`` (it maps each file name
    to a module of the model and drops those it cannot place, saying nothing) -> ExportError naming them: a file whose
    q/k/v biases were dropped answers differently from llama.cpp, which applies them. The tensors onnxlm reads itself
    (``gguf_config.READ_HERE``) are not among them. ``model`` may be a meta-device skeleton (only its names are read);
    ``source`` prefixes the message."""
    from transformers.modeling_gguf_pytorch_utils import get_gguf_hf_weights_map

    from .gguf_config import READ_HERE

    placed = get_gguf_hf_weights_map(model)
    unused = sorted(n for n in tensor_names if n not in placed and n not in READ_HERE)
    if unused:
        shown = _listed(unused)
        where = "" if source is None else f"{source}: "
        raise ExportError(f"{where}{len(unused)} of the file's tensors have no place in the {model.config.model_type} "
                          f"model transformers builds for it ({shown}); they would be dropped, and the model would "
                          "not compute what llama.cpp computes from this file")

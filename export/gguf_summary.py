"""What a GGUF file holds and whether onnxlm takes it, from its header alone: ``onnxlm info model.gguf``.

``summarize_gguf(path)`` reads the header through gguf-py's reader (the ``export`` extra; no torch): no tensor data
and no token strings (a 262,144-token list is only counted). It answers a user before a first run spends minutes on an
export: the architecture and whether onnxlm exports it, the tensor types and which of them keep their blocks under
``--quantize gguf``, and the tokenizer kind and whether onnxlm builds it.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

from onnxlm.runtime.errors import ExportError, ModelFileError

from .gguf_reader import arch_fields, field_value
from .gguf_splits import split_bytes, split_files

__all__ = ["summarize_gguf"]


def _refusal(reader, arch) -> str | None:
    """Why the export would refuse this file from its header (gguf_config's settings: a rope scaling it cannot
    express, ..., and tensors it does not export), None when it would not."""
    from .gguf_config import config_overrides, refuse_tensors

    header = arch_fields(reader, arch)
    try:
        refuse_tensors(arch, [t.name for t in reader.tensors])
        config_overrides({"general.architecture": arch, **header})
    except ExportError as exc:
        return str(exc)
    return None


def _fp32_with_group(reader, arch) -> dict[str, int]:
    """Block tensors that an export on the file's blocks runs in fp32 because their q/k/v or gate/up product also
    holds a tensor without blocks (gguf_quant.rewrite_graph's rule) -> {type: count}."""
    from .gguf_blocks import NATIVE_TYPES
    from .gguf_quant import layer_tensors

    types = {t.name: t.tensor_type.name for t in reader.tensors}
    out: Counter = Counter()
    # the blocks the tensors name, not block_count (checked against them for an architecture onnxlm exports:
    # gguf_header; another's may say anything, as 4,000,000,000 once did)
    blocks = sorted({int(m.group(1)) for name in types if (m := re.match(r"blk\.(\d+)\.", name))})
    for i in blocks:
        for part in ("qkv", "gate_up"):
            group = [types.get(f"blk.{i}.{t}.weight") for t in layer_tensors(arch, part)]
            if len(group) > 1 and None not in group and any(t not in NATIVE_TYPES for t in group):
                out.update(t for t in group if t in NATIVE_TYPES)
    return dict(out)


def _tokenizer(reader) -> dict:
    """tokenizer.ggml.* -> {"model", "pre", "tokens", "supported", "why"}."""
    from .gguf_pretok import PRE_TYPES

    model, pre = field_value(reader, "tokenizer.ggml.model"), field_value(reader, "tokenizer.ggml.pre")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    out = {"model": model, "pre": pre, "tokens": len(tokens.data) if tokens is not None else 0}
    if model == "llama":
        return {**out, "supported": True, "why": "SentencePiece, built as llama.cpp tokenizes"}
    if model == "bert":
        return {**out, "supported": True, "why": "WordPiece, built as llama.cpp tokenizes (WPM)"}
    if model == "t5":
        return {**out, "supported": True, "why": "SentencePiece Unigram, built as llama.cpp tokenizes (UGM)"}
    if model != "gpt2":
        return {**out, "supported": False, "why": f"tokenizer.ggml.model {model!r}: onnxlm builds 'gpt2' (byte-level "
                                                  "BPE), 'llama' (SentencePiece), 'bert' (WordPiece) and 't5' "
                                                  "(Unigram)"}
    if (pre or "default") not in PRE_TYPES:
        return {**out, "supported": False, "why": f"tokenizer.ggml.pre {pre!r} is not one onnxlm knows "
                                                  f"({', '.join(sorted(PRE_TYPES))})"}
    return {**out, "supported": True, "why": f"byte-level BPE, llama.cpp's {pre or 'default'!r} split"}


def summarize_gguf(path) -> dict:
    """A GGUF file -> {"file", "bytes" (of every file of a split GGUF), "files" (1, or a split GGUF's count),
    "version", "name", "architecture", "exported", "refused" (why the export would refuse a file of an architecture
    it exports, else None), "layers", "hidden",
    "context_length", "parameters", "tensor_types" (type -> count, most first), "dequantized_types", "blocks",
    "on_blocks" (whether its export runs on the file's blocks), "off_blocks" (why not: ``gguf_quant.off_blocks_reason``),
    "fp32_with_group" (block tensors run in fp32 beside a tensor of their product without blocks: type -> count),
    "tokenizer", "chat_template"}. ExportError when gguf-py is missing or the file is no readable GGUF."""
    from .gguf import TESTED_GGUF_ARCHITECTURES
    from .gguf_blocks import NATIVE_TYPES
    from .gguf_bert import encoder_refusal
    from .gguf_header import ENCODER_GGUF_ARCHITECTURES
    from .gguf_quant import LOSSLESS_FP32, has_blocks, off_blocks_reason

    path = Path(os.fspath(path))
    try:
        from .gguf_reader import gguf_reader

        reader = gguf_reader(path)
    except ImportError as exc:
        raise ExportError(f"reading {path.name}'s header needs the gguf package ({exc}): "
                          "pip install 'onnxlm[export]'") from exc
    except ModelFileError:  # gguf_reader's own: it names the file
        raise
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path}: not a readable GGUF file ({exc})") from exc
    arch = field_value(reader, "general.architecture")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    refused = (_refusal(reader, arch) if arch in TESTED_GGUF_ARCHITECTURES else
               encoder_refusal(lambda key: field_value(reader, key)) if arch in ENCODER_GGUF_ARCHITECTURES else None)
    off_blocks = off_blocks_reason(reader)  # an architecture onnxlm does not export: off them too
    return {
        "file": path.name, "bytes": split_bytes(path), "files": len(split_files(path)),
        "version": field_value(reader, "GGUF.version"),
        "name": field_value(reader, "general.name"), "architecture": arch,
        "exported": arch in TESTED_GGUF_ARCHITECTURES + ENCODER_GGUF_ARCHITECTURES and refused is None,
        "refused": refused, "embedding_only": arch in ENCODER_GGUF_ARCHITECTURES,
        "reranker": arch in ENCODER_GGUF_ARCHITECTURES and field_value(reader, f"{arch}.pooling_type") == 4,
        "layers": field_value(reader, f"{arch}.block_count"),
        "hidden": field_value(reader, f"{arch}.embedding_length"),
        "context_length": field_value(reader, f"{arch}.context_length"),
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "tensor_types": dict(types.most_common()),
        "dequantized_types": sorted(t for t in types if t not in NATIVE_TYPES and t not in LOSSLESS_FP32),
        "blocks": has_blocks(types), "on_blocks": off_blocks is None, "off_blocks": off_blocks,
        "fp32_with_group": _fp32_with_group(reader, arch),
        "tokenizer": _tokenizer(reader),
        "chat_template": "tokenizer.chat_template" in reader.fields,
    }

"""The artifact manifest ``onnxlm.json`` (schema in docs/design.md)."""
from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from onnxlm.runtime.errors import ExportError
from onnxlm.runtime.versions import (MIN_ONNXRUNTIME, SLIDING_WINDOW_ONNXRUNTIME, check_runnable, dotted,
                                     window_binds)
from onnxlm.runtime.window_narrowing import all_nodes

FORMAT_VERSION = 1
MANIFEST_FILE = "onnxlm.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_table(out_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 + bytes of every file under ``out_dir`` except the manifest, keyed by posix relative path."""
    table = {}
    for p in sorted(Path(out_dir).rglob("*")):
        if p.is_file() and p.name != MANIFEST_FILE:
            table[p.relative_to(out_dir).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return table


def versions() -> dict[str, str | None]:
    out = {}
    for dist in ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "tokenizers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def model_dims(config, family: str) -> dict[str, Any]:
    """num_layers/num_heads/num_kv_heads/head_dim/hidden_size/vocab_size/max_positions from a transformers config."""
    if family == "gpt2":
        heads = config.n_head
        return {"num_layers": config.n_layer, "num_heads": heads, "num_kv_heads": heads,
                "head_dim": config.n_embd // heads, "hidden_size": config.n_embd, "vocab_size": config.vocab_size,
                "max_positions": config.n_positions}
    if family == "t5":
        return {"num_layers": config.num_decoder_layers, "num_encoder_layers": config.num_layers,
                "num_heads": config.num_heads, "num_kv_heads": config.num_heads, "head_dim": config.d_kv,
                "hidden_size": config.d_model, "vocab_size": config.vocab_size, "max_positions": None}
    from .onnx_export import position_limit

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"num_layers": config.num_hidden_layers, "num_heads": heads,
            "num_kv_heads": getattr(config, "num_key_value_heads", None) or heads, "head_dim": head_dim,
            "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
            "max_positions": position_limit(config)}


def graph_io(path: Path) -> dict[str, list[str]]:
    """An ONNX file -> its input names (initializers listed as inputs left out, as onnxruntime's ``get_inputs``
    leaves them) and output names, read from the graph alone (a session packed every weight first: ~7 s for
    Gemma 3's fp32 graph)."""
    import onnx

    g = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in g.initializer}
    return {"inputs": [i.name for i in g.input if i.name not in weights], "outputs": [o.name for o in g.output]}


def check_graph_dims(graphs: dict[str, dict], dims: dict[str, Any], family: str) -> None:
    """The config's layer count must match the KV inputs the decoder graph really has."""
    dec = graphs["decoder"]["inputs"]
    n_kv = sum(1 for n in dec if n.startswith("past_key_values.") and n.endswith(".key"))
    expected = dims["num_layers"] * (2 if family == "t5" else 1)  # T5: decoder + encoder (cross) keys per layer
    if n_kv != expected:
        raise ExportError(f"exported decoder has {n_kv} past key inputs, config says {expected}: export is inconsistent")
    if family != "t5":
        for name in ("input_ids", "attention_mask", "position_ids"):
            if name not in dec:
                raise ExportError(f"exported decoder lacks the {name!r} input (inputs: {dec[:4]}...)")


def onnxruntime_requirement(path: Path, max_positions: int | None = None) -> tuple[int, ...]:
    """An ONNX file -> the oldest onnxruntime it answers right on (``onnxlm.runtime.versions``): 1.24 where a
    GroupQueryAttention has a sliding window (``local_window_size`` >= 0) that a sequence of ``max_positions`` can
    outgrow (``window_binds``), else ``MIN_ONNXRUNTIME``. The main graph's nodes, their subgraphs' and the model's
    functions', as ``runtime.window_narrowing`` narrows them."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    binding = any(a.name == "local_window_size" and a.i >= 0 and window_binds(a.i, max_positions)
                  for n in all_nodes(model) if n.op_type == "GroupQueryAttention" for a in n.attribute)
    return SLIDING_WINDOW_ONNXRUNTIME if binding else MIN_ONNXRUNTIME


def check_graph_onnxruntime(path: Path, max_positions: int | None = None) -> tuple[int, ...]:
    """DependencyError when the imported onnxruntime is older than the ONNX file ``path`` needs
    (``onnxruntime_requirement``; sliding windows alone: the floor, 1.23 running them narrowed,
    ``versions.check_runnable``): its validation would otherwise fail by other numbers, or pass and write an
    artifact this machine refuses to load. -> that need."""
    need = onnxruntime_requirement(path, max_positions)
    check_runnable(need, f"the exported graph {path.name}")
    return need


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``onnxlm.json`` into ``out_dir``: the given fields, ``files`` (every file's sha256 and bytes) and
    ``requires`` (the oldest onnxruntime its graphs answer right on, from the graphs themselves)."""
    manifest = {"format_version": FORMAT_VERSION, **manifest}
    manifest["files"] = file_table(out_dir)
    if manifest.get("graphs"):
        least = max(onnxruntime_requirement(Path(out_dir) / g["file"], manifest.get("max_positions"))
                    for g in manifest["graphs"].values())
        manifest["requires"] = {"onnxruntime": dotted(least)}
    order = ["format_version", "kind", "model_type", "files", "graphs", "num_layers", "num_encoder_layers",
             "num_heads", "num_kv_heads", "head_dim", "hidden_size", "vocab_size", "max_positions", "special_tokens",
             "dtype", "opset", "requires", "versions", "validation", "source"]
    ordered = {k: manifest[k] for k in order if k in manifest}
    ordered.update({k: v for k, v in manifest.items() if k not in ordered})
    (Path(out_dir) / MANIFEST_FILE).write_text(json.dumps(ordered, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return ordered

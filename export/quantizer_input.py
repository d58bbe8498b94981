"""A saved fp32 graph as the quantizers rewrite it: ``load_unaliased`` undoes what saving it memory-mapped did (a head
cut into row parts, a tied lookup reading an alias of the head's weight), so ``quantize.py`` and ``gguf_quant.py``
see one `Gemm` over one tied weight, as in an inline graph.
"""
from __future__ import annotations

from pathlib import Path

from .head_parts import merge
from .mapped_weights import alias_map


def load_unaliased(path) -> "onnx.ModelProto":  # noqa: F821
    """An ONNX file with its external data -> the ModelProto in which a head cut into row parts is one `Gemm` again
    (``head_parts.merge``), every node that reads an alias of one whole tensor (or of such a head's parts) reads
    that tensor instead, and the alias is gone (what the quantizers rewrite: a tied embedding is then one
    initializer read by the lookup and the head, as inline graphs have it)."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    from onnxlm.runtime.errors import ExportError

    aliases = alias_map(path)
    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    kept = [t for t in model.graph.initializer if t.name not in aliases]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    whole_of = {tuple(parts): w for w, parts in merge(model).items()}  # before reading: a head is one file range
    load_external_data_for_model(model, str(Path(path).parent))  # the aliases' bytes are not read twice
    target = {}
    for name, sources in aliases.items():
        if len(sources) == 1 and dims[name] == dims[sources[0]]:
            target[name] = sources[0]
        elif tuple(sources) in whole_of:
            target[name] = whole_of[tuple(sources)]
        else:
            raise ExportError(f"{path}: {name!r} aliases {sources}, not one whole tensor; export the fp32 artifact "
                              "again with this onnxlm")
    for node in model.graph.node:
        for i, x in enumerate(node.input):
            if x in target:
                node.input[i] = target[x]
    return model

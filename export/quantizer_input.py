"""A saved fp32 graph as the quantizers rewrite it: ``load_unaliased`` undoes what saving it memory-mapped did (a head
cut into row parts, a tied lookup reading an alias of the head's weight), so ``quantize.py`` and ``gguf_quant.py``
see one `Gemm` over one tied weight, as in an inline graph.

Its weights are read from the data file's memory map (``read_external``), not by onnx's loader, which validated
each tensor's file and bounds anew (~8 s of Gemma 3 270M's 18 s load). ``gguf_quant`` reads none of them up front
(``read=False``): it compares each weight it replaces through a view of the map (``external_array``) and reads only
the initializers its graph keeps (norms, rotary tables), not the 1.1 GB of weights it drops.
"""
from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

from .head_parts import merge
from .mapped_weights import alias_map, external_range


def external_array(t, base_dir) -> np.ndarray:
    """A TensorProto whose bytes lie in a data file under ``base_dir`` -> a read-only view of them (np.memmap, its
    dims and element type): nothing is read until the array is."""
    from onnx.helper import tensor_dtype_to_np_dtype

    location, offset, length = external_range(t)
    dtype = np.dtype(tensor_dtype_to_np_dtype(t.data_type))
    shape = tuple(int(d) for d in t.dims)
    if length != int(np.prod(shape)) * dtype.itemsize:
        from onnxlm.runtime.errors import ModelFileError

        raise ModelFileError(f"{t.name!r}: {length} bytes in {location} for dims {list(shape)} of {dtype}")
    return np.memmap(_data_file(base_dir, location), dtype=dtype, mode="r", offset=offset, shape=shape)


def _data_file(base_dir, location: str) -> Path:
    """The data file ``location`` names, which must lie in ``base_dir`` (as onnx's loader requires)."""
    base = Path(base_dir).resolve()
    path = (base / location).resolve()
    if base not in path.parents:
        from onnxlm.runtime.errors import ModelFileError

        raise ModelFileError(f"external data location {location!r} lies outside {base}")
    return path


def array_of(t, base_dir) -> np.ndarray:
    """A TensorProto -> its array: a view of its data file's bytes when they are external, else numpy_helper's."""
    from onnx import numpy_helper

    return external_array(t, base_dir) if external_range(t) is not None else numpy_helper.to_array(t)


def read_external(model, base_dir) -> None:
    """Every initializer of ``model`` whose bytes are still in a data file under ``base_dir`` gets them as raw_data
    (one memory map per file), as onnx's ``load_external_data_for_model`` would."""
    maps = {}
    try:
        for t in model.graph.initializer:
            where = external_range(t)
            if where is None:
                continue
            location, offset, length = where
            if location not in maps:
                with open(_data_file(base_dir, location), "rb") as f:
                    maps[location] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            t.raw_data = maps[location][offset:offset + length]
            del t.external_data[:]
            t.data_location = t.DEFAULT
    finally:
        for m in maps.values():
            m.close()


def load_unaliased(path, *, read: bool = True) -> "onnx.ModelProto":  # noqa: F821
    """An ONNX file with its external data -> the ModelProto in which a head cut into row parts is one `Gemm` again
    (``head_parts.merge``), every node that reads an alias of one whole tensor (or of such a head's parts) reads
    that tensor instead, and the alias is gone (what the quantizers rewrite: a tied embedding is then one
    initializer read by the lookup and the head, as inline graphs have it). ``read=False``: the weights stay in the
    data file (``external_array`` views them; ``read_external`` reads those still needed)."""
    import onnx

    from onnxlm.runtime.errors import ExportError

    aliases = alias_map(path)
    model = onnx.load(str(path), load_external_data=False)
    dims = {t.name: list(t.dims) for t in model.graph.initializer}
    kept = [t for t in model.graph.initializer if t.name not in aliases]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    whole_of = {tuple(parts): w for w, parts in merge(model).items()}  # before reading: a head is one file range
    if read:
        read_external(model, Path(path).parent)  # the aliases' bytes are not read twice
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

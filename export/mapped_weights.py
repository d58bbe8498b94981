"""A graph saved for onnxruntime's memory map: its weights in an external data file at aligned offsets, and tensors
that alias another tensor's bytes (the same offset and length in that file).

onnxruntime maps an external data file's tensors into memory instead of reading them, and a CPU kernel reads a
mapped initializer where it lies, so only the pages a run touches are resident (file-backed pages the kernel can
drop and read again). What that buys a quantized artifact (measured on the Gemma 3 270M and SmolLM2 GGUF variants:
``docs/benchmarks.md``, "GGUF files against llama.cpp"):

* a weight that onnxruntime prepacks (``MatMulNBits``, ``MatMul``) is read once at load into onnxruntime's packed
  copy, after which onnxruntime drops the initializer and its mapping: the file bytes leave the process;
* a tied embedding read by a lookup (``GatherBlockQuantized``) touches a few rows a step. Inline, or sharing one
  initializer with the head, the whole table stays resident beside the head's packed copy (the head's prepacking
  cannot free an initializer another node reads); as an alias of the head's bytes it is a second mapping of the same
  file range, so the head's copy is freed after packing and the lookup costs only the rows it reads (Gemma 3 270M:
  168 MB of codes and 21 MB of scales). The file stores the bytes once;
* tables read by position (rotary caches sized for the model's whole context: Gemma 3's are 67 MB) cost only the
  rows of the positions a run reaches.

Offsets are multiples of ``ALIGN`` (4 KiB, a page: a tensor shares no page with another; onnxruntime maps a tensor
at any offset, measured, so a coarser alignment would only pad the file: 64 KiB had added 15 MB to SmolLM2's);
tensors under ``INLINE_BYTES`` stay in the ``.onnx`` file unless an alias reads them. ``alias`` makes the data-less
placeholder of an alias (of one tensor, or of row parts of one stored back to back); ``save_mapped`` writes the pair
of files; ``write_arrays`` writes numpy arrays the same way (the fused fp32 graphs: ``fused_graph.save_graph``);
``alias_map`` reads back which tensors share bytes (tests, tools, ``quantizer_input.load_unaliased``).
"""
from __future__ import annotations

from pathlib import Path

ALIGN = 1 << 12  # offsets of the external data: 4 KiB
INLINE_BYTES = 4096  # smaller tensors stay inline in the .onnx file


def alias(name: str, sources, dims) -> "onnx.TensorProto":  # noqa: F821 - onnx is imported lazily
    """A placeholder TensorProto ``name`` of the element type of ``sources`` (a TensorProto, or a list of them with
    one element type: row parts stored back to back) and ``dims`` (their element count); ``save_mapped`` will point
    it at their bytes. It holds no data of its own until then."""
    import numpy as np
    import onnx

    from onnxlm.runtime.errors import ExportError

    sources = [sources] if isinstance(sources, onnx.TensorProto) else list(sources)
    count = sum(int(np.prod(t.dims)) for t in sources)
    if int(np.prod(dims)) != count or len({t.data_type for t in sources}) != 1:
        raise ExportError(f"alias {name!r} of {[t.name for t in sources]}: dims {list(dims)} do not hold their "
                          f"{count} elements of one type")
    t = onnx.TensorProto(name=name, data_type=sources[0].data_type, dims=list(dims))
    t.doc_string = "alias of " + ", ".join(s.name for s in sources)
    return t


def _payload(t) -> bytes | None:
    """The tensor's bytes when it carries any (raw_data, else the typed fields through numpy), else None."""
    if t.HasField("raw_data"):
        return t.raw_data
    if t.data_location == t.EXTERNAL:
        return None
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    return arr.tobytes() if arr.size else None


def save_mapped(model, path, aliases: dict | None = None) -> str:
    """Write ``model`` (changed in place) to ``path`` and its weights to ``path.name + "_data"`` beside it, each at an
    ``ALIGN``-aligned offset; ``aliases`` maps a placeholder initializer (``alias``) to the initializer whose bytes it
    shares, or to a list of initializers, written back to back (each but the last a whole number of ``ALIGN``
    pages), whose bytes together it shares. Returns the data file's name."""
    import onnx

    from onnxlm.runtime.errors import ExportError

    path = Path(path)
    data_name = path.name + "_data"
    aliases = {a: [s] if isinstance(s, str) else list(s) for a, s in (aliases or {}).items()}
    by_name = {t.name: t for t in model.graph.initializer}
    bad = [f"{a} -> {s}" for a, s in aliases.items()
           if a not in by_name or not s or any(x not in by_name or x in aliases for x in s)]
    if bad:
        raise ExportError(f"aliases without their tensors (or of another alias): {bad}")
    grouped = {x: s for s in aliases.values() for x in s}  # a source -> its group, written together at the first
    where: dict[str, tuple[int, int]] = {}
    with open(path.parent / data_name, "wb") as f:
        for t in model.graph.initializer:
            if t.name in aliases or t.name in where:
                continue
            group = [by_name[x] for x in grouped.get(t.name, [t.name])]
            for i, member in enumerate(group):
                data = _payload(member)
                if data is None or (len(data) < INLINE_BYTES and member.name not in grouped):
                    continue  # an alias's sources are stored externally whatever their size
                if i + 1 < len(group) and len(data) % ALIGN:
                    raise ExportError(f"alias source {member.name!r}: {len(data)} bytes, not whole {ALIGN}-byte "
                                      "pages, so the next part would not follow it")
                offset = _append(f, data)
                where[member.name] = (offset, len(data))
                point_at(member, data_name, offset, len(data))
    for name, sources in aliases.items():
        if any(x not in where for x in sources):
            raise ExportError(f"alias {name!r}: a source among {sources} holds no data")
        start = where[sources[0]][0]
        point_at(by_name[name], data_name, start, sum(where[x][1] for x in sources))
    onnx.save_model(model, str(path))
    return data_name


def write_arrays(arrays: dict, data_path, aliases: dict | None = None) -> list:
    """name -> array (C-contiguous) -> their TensorProtos, in order, then one per alias: each array of
    ``INLINE_BYTES`` or more written from its own buffer (no protobuf copy) to ``data_path`` at an ``ALIGN``-aligned
    offset and pointed at there, smaller ones inline; ``aliases`` maps an alias name to the array whose bytes it
    shares (a second tensor over the same offset and length: onnxruntime maps it on its own), or to arrays stored
    back to back (row parts, each but the last whole pages) whose rows it spans."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from onnxlm.runtime.errors import ExportError

    data_path = Path(data_path)
    out, where = [], {}
    shared = {x for s in (aliases or {}).values() for x in ([s] if isinstance(s, str) else s)}  # stored, however small
    with open(data_path, "wb") as f:
        for name, a in arrays.items():
            if a.nbytes < INLINE_BYTES and name not in shared:
                out.append(numpy_helper.from_array(a, name))
                continue
            a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))  # onnx stores little-endian
            offset = _append(f, a.reshape(-1).view(np.uint8).data)
            t = onnx.TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(a.dtype), dims=a.shape)
            point_at(t, data_path.name, offset, a.nbytes)
            out.append(t)
            where[name] = t
    for name, sources in (aliases or {}).items():
        sources = [sources] if isinstance(sources, str) else list(sources)
        joined = joined_range([where[x] for x in sources]) if all(x in where for x in sources) else None
        if joined is None or name in arrays:
            raise ExportError(f"alias {name!r}: its sources {sources} are not arrays stored back to back (or the "
                              "name is taken)")
        dims = [sum(int(where[x].dims[0]) for x in sources), *where[sources[0]].dims[1:]]
        t = alias(name, [where[x] for x in sources], dims)
        point_at(t, *joined)
        out.append(t)
    return out


def _append(f, data) -> int:
    """Write ``data`` (bytes-like) to the data file ``f`` at the next ``ALIGN``-aligned offset; returns that offset."""
    offset = -(-f.tell() // ALIGN) * ALIGN
    f.seek(offset)
    f.write(data)
    return offset


def external_range(t) -> tuple[str, int, int] | None:
    """A TensorProto whose bytes are in a data file -> (location, offset, length) there; None when they are inline."""
    if t.data_location != t.EXTERNAL:
        return None
    info = {e.key: e.value for e in t.external_data}
    return info.get("location"), int(info.get("offset", 0)), int(info.get("length", 0))


def joined_range(tensors: list) -> tuple[str, int, int] | None:
    """TensorProtos whose bytes lie back to back, in order, in one data file -> (location, offset, total length) of
    them all there; None otherwise (one inline, another file, a gap)."""
    where = [external_range(t) for t in tensors]
    if not where or not all(where) or len({w[0] for w in where}) > 1 or \
            any(a[1] + a[2] != b[1] for a, b in zip(where, where[1:])):
        return None
    return where[0][0], where[0][1], sum(w[2] for w in where)


def point_at(t, data_name: str, offset: int, length: int) -> None:
    """Make ``t`` an external tensor at ``offset`` (``length`` bytes) of ``data_name``."""
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        t.ClearField(field)
    del t.external_data[:]
    t.data_location = t.EXTERNAL
    for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value


def alias_map(path) -> dict[str, list[str]]:
    """An ONNX file -> {alias: the tensors whose bytes it shares, in file order}: every external tensor whose byte
    range holds other tensors' ranges (or repeats the range of one listed before it)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ranges = []  # (location, start, end, order, name)
    for order, t in enumerate(model.graph.initializer):
        if (where := external_range(t)) is not None:
            loc, start, length = where
            ranges.append((loc, start, start + length, order, t.name))
    out = {}
    for loc, start, end, order, name in ranges:
        inside = sorted((s, o, n) for lc, s, e, o, n in ranges if lc == loc and n != name and start <= s and e <= end
                        and ((s, e) != (start, end) or o < order))
        if inside:
            out[name] = [n for _, _, n in inside]
    return out

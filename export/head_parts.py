"""A memory-mapped fp32 graph's output head cut by rows, and put back together for the quantizers.

onnxruntime packs a `Gemm` weight while its mapped bytes are resident, so a head of 671 MB (Gemma 3 270M's tied
[262144, 640] float32 embedding) put both copies on the load's peak at once. Cut into row parts of at most
``nbits.HEAD_PART_BYTES`` (one `Gemm` each over ``{W}.part{i}``, their outputs concatenated), each part is packed
and its mapping dropped before the next: the peak holds one part beside the packed copies. A part's logits are the
same columns the whole `Gemm` computes. The parts lie back to back at aligned offsets in the data file, so the tied
lookup's alias (``{W}.lookup``) spans them (``mapped_weights.write_arrays``).

``cut`` rewrites a ``fused_graph.Graph`` before it is saved mapped; ``merge`` turns a loaded ModelProto's parts back
into one `Gemm` over ``W`` (``quantizer_input.load_unaliased``), the graph the quantizers know.
"""
from __future__ import annotations

import numpy as np

from .mapped_weights import external_range, joined_range, point_at
from .nbits import HEAD_PART_BYTES, page_rows


def cut(g, part_bytes: int | None = None) -> dict[str, list[str]]:
    """``g`` (a fused_graph.Graph, changed in place): each `Gemm(x, W, transB=1)` over a constant W of more than
    ``part_bytes`` (default ``HEAD_PART_BYTES``) -> `Gemm` per row part + `Concat` on the last axis; W's array
    replaced, in its place in the order, by its parts (views). Returns {W: [part names]}."""
    from onnx import helper

    part_bytes = part_bytes or HEAD_PART_BYTES
    out = {}
    for node in list(g.nodes):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        w = node.input[1] if node.op_type == "Gemm" and len(node.input) == 2 else None
        if w not in g.arrays or attrs != {"transB": 1} or g.arrays[w].ndim != 2:
            continue
        weight = g.arrays[w]
        rows = page_rows(len(weight), [weight[0].nbytes], part_bytes)
        if len(rows) == 1:
            continue
        names = [f"{w}.part{j}" for j in range(len(rows))]
        arrays = {}
        for name, array in g.arrays.items():  # the parts (views) where W was, the order kept
            arrays.update({n: weight[lo:hi] for n, (lo, hi) in zip(names, rows)} if name == w else {name: array})
        g.arrays = arrays
        gemms = [helper.make_node("Gemm", [node.input[0], n], [f"{n}.logits"], name=f"{n}.Gemm", transB=1)
                 for n in names]
        concat = helper.make_node("Concat", [f"{n}.logits" for n in names], list(node.output), name=f"{w}.Concat",
                                  axis=-1)
        at = g.nodes.index(node)
        g.nodes[at:at + 1] = [*gemms, concat]
        out[w] = names
    return out


def _concat_rows(parts: list, name: str) -> "onnx.TensorProto":  # noqa: F821
    """float32 TensorProtos [r_i, K] -> one [sum r_i, K] named ``name``. Parts back to back in one data file (as
    ``mapped_weights.write_arrays`` lays them out) give a tensor over that file's range, nothing read; inline parts
    are joined (row-major parts in order are the whole's bytes)."""
    from onnx import TensorProto, numpy_helper

    dims = [sum(t.dims[0] for t in parts), *parts[0].dims[1:]]
    if (joined := joined_range(parts)) is not None:
        out = TensorProto(name=name, data_type=parts[0].data_type, dims=dims)
        point_at(out, *joined)
        return out
    if any(external_range(t) is not None for t in parts):
        raise ValueError(f"{name}: its row parts are not back to back in one data file; load their data first")
    if any(t.data_type != TensorProto.FLOAT or not t.raw_data for t in parts):
        return numpy_helper.from_array(np.concatenate([numpy_helper.to_array(t) for t in parts]), name)
    return TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, raw_data=b"".join(t.raw_data for t in parts))


def merge(model) -> dict[str, list[str]]:
    """A ModelProto (changed in place; its weights read, or still in their data file, which is cheaper: the whole
    head is then a range of that file, see ``_concat_rows``): each `Concat` of `Gemm`s over ``{W}.part0..n`` -> one
    `Gemm(x, W, transB=1)` writing the Concat's output, W the parts' rows in order. Returns {W: [parts]}."""
    from onnx import helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    out = {}
    for concat in [n for n in g.node if n.op_type == "Concat"]:
        gemms = [producer.get(x) for x in concat.input]
        if not gemms or any(n is None or n.op_type != "Gemm" or len(n.input) != 2 for n in gemms):
            continue
        w = gemms[0].input[1].rsplit(".part", 1)[0]
        names = [f"{w}.part{j}" for j in range(len(gemms))]
        if [n.input[1] for n in gemms] != names or len({n.input[0] for n in gemms}) != 1:
            continue
        whole = _concat_rows([inits[n] for n in names], w)
        for i in sorted((i for i, t in enumerate(g.initializer) if t.name in names), reverse=True):
            del g.initializer[i]  # in place: rebuilding the list copied every weight of the graph (1.1 GB, ~12 s)
        g.initializer.append(whole)
        gemm = helper.make_node("Gemm", [gemms[0].input[0], w], list(concat.output), name=f"{w}.Gemm", transB=1)
        dropped = {id(n) for n in gemms[1:]} | {id(concat)}
        nodes = [gemm if n is gemms[0] else n for n in g.node if id(n) not in dropped]
        del g.node[:]
        g.node.extend(nodes)
        out[w] = names
    return out

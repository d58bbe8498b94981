"""The output head of an int8/int4 artifact as 8-bit blocks; a tied embedding reads the same code bytes.

``quantize_artifact`` (``export/quantize.py``) quantizes the body with onnxruntime's ``MatMulNBitsQuantizer`` and
leaves the head to ``rewrite_head``: the head weight W [V, D] becomes 8-bit symmetric blocks of 32 along D
(``nbits.q8_blocks``: codes ``q+128``, scale ``max|w|/127``, GGUF's Q8_0 layout) in a ``MatMulNBits`` bits=8 at
accuracy level 4 (onnxruntime's 8-bit path at level 1 is ~90x slower), whatever the scheme (int4 included: a 4-bit
head costs the most quality for the least memory). A tied embedding's lookup becomes ``GatherBlockQuantized`` bits=8
over the head's code bytes (``Rewriter.tied_embedding``), so the [V, D] weight is stored once, in 8 bits, and the fp32
copy is gone. ``head_passes``: with the body at int8 activations (accuracy level 4) the head runs in one int8 pass;
with the fidelity setting (level 1: fp32 activations) in two (``Rewriter.split_int8``: x rounded exactly as level 4
rounds it, then the remainder: fp32-like activations for a second int8 product), as measured on SmolLM2 (see
``quantize.py``).

``find_head`` recognises the head in both graph kinds: the fused graphs' ``Gemm(x, W, transB=1)`` (tied: W is the
embedding the ``Gather`` reads) and optimum's ``MatMul(x, Transpose(E))`` (tied) or ``MatMul(x, W)`` (untied). A head
it cannot rewrite (not found, or D not a multiple of 32) stays fp32; ``quantize_head="yes"`` then refuses. A tied
weight read by anything but one ``Gather(E, ids, axis=0)`` and the head keeps that fp32 reader (the head then has its
own 8-bit copy; no such graph is exported today).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxlm.runtime.errors import ExportError

from .nbits import BLOCK, HEAD_PART_BYTES, Rewriter, dequantize, q8_blocks

HEAD_CHOICES = ("auto", "yes", "no")  # quantize_head: auto = 8-bit where it can be, yes = 8-bit or refuse, no = fp32


@dataclass
class Head:
    """The output projection of a decoder graph."""

    node: object  # the Gemm / MatMul computing the logits
    weight: str  # its constant weight's initializer name (tied: the embedding)
    transposed: bool  # the initializer is [D, V] (optimum's untied MatMul, a transB=0 Gemm); else [V, D]
    transpose: object | None  # optimum's tied head: the Transpose node of the embedding it reads
    gather: object | None  # the embedding lookup reading the same weight (a tied head), else None


def head_passes(accuracy_level: int) -> int:
    """Int8 passes of the 8-bit head: 1 beside a body at int8 activations (level 4), 2 (fp32-like) otherwise."""
    return 1 if accuracy_level == 4 else 2


def check_quantize_head(quantize_head) -> str:
    if quantize_head not in HEAD_CHOICES:
        raise ExportError(f"quantize_head: got {quantize_head!r}; allowed: {', '.join(HEAD_CHOICES)} (auto: the "
                          "output head in 8-bit blocks where it can be, yes: 8-bit or refuse, no: keep it fp32)")
    return quantize_head


def find_head(graph) -> Head | None:
    """The node computing the graph output ``logits`` (through Reshape / Identity), or None when it is not a
    MatMul / Gemm with a constant weight (directly, or a Transpose of one)."""
    from onnx import helper

    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name: i for i in graph.initializer}
    node = producer.get("logits")
    while node is not None and node.op_type in ("Reshape", "Identity"):
        node = producer.get(node.input[0])
    if node is None or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (len(node.input) > 2 or attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0):
        return None
    weight, transpose = node.input[1], None
    if weight in inits:
        transposed = not (node.op_type == "Gemm" and attrs.get("transB", 0))
    else:
        transpose = producer.get(weight)
        perm = None if transpose is None else {a.name: list(a.ints) for a in transpose.attribute}.get("perm")
        only_head = [n for n in graph.node if weight in n.input] == [node]
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in inits \
                or perm not in (None, [1, 0]) or not only_head:
            return None
        weight, transposed = transpose.input[0], False
    if len(inits[weight].dims) != 2:
        return None
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] == weight
                   and all(a.i == 0 for a in n.attribute if a.name == "axis")), None)
    return Head(node, weight, transposed, transpose, gather)


def rewrite_head(model, head: Head, passes: int) -> tuple[dict, dict[str, str]]:
    """``model`` (an onnx ModelProto, changed in place) with ``head`` as an 8-bit MatMulNBits and a tied
    embedding as GatherBlockQuantized over aliases of its codes and scales; the fp32 weight (and optimum's
    Transpose) removed. Returns (the manifest's record of the head, the aliases for ``mapped_weights.save_mapped``)."""
    g = model.graph  # changed in place by rw.apply
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    rw = Rewriter(g, accuracy_level=4, opset=opset)
    w = rw.to_array(rw.fp32[head.weight])
    w = w.T if head.transposed else w  # [V, D]
    blocks = q8_blocks(w)
    lead = 1 if head.node.op_type == "Gemm" else 2  # Gemm's x is [T, K]; a MatMul head reads hidden states [b, s, K]
    replace = {id(head.node): rw.matmul(head.node.input[0], blocks, [head.node.output[0]], [w.shape[0]], "lm_head",
                                        two_pass=passes == 2, lead=lead, part_bytes=HEAD_PART_BYTES)}
    if head.transpose is not None:
        replace[id(head.transpose)] = []
    if head.gather is not None:
        replace[id(head.gather)] = rw.tied_embedding(head.gather, "lm_head", blocks)
    rw.apply(replace)
    err = float(np.abs(dequantize(blocks) - w).max())
    return {"tensor": head.weight, "shape": list(w.shape), "quantized": True, "tied": head.gather is not None,
            "bits": 8, "block_size": BLOCK, "accuracy_level": 4, "passes": passes,
            "embedding": "GatherBlockQuantized over the head's codes" if head.gather is not None else None,
            "max_weight_error": err}, rw.aliases


def plan_head(model, quantize_head: str) -> tuple[Head | None, str | None]:
    """(the head of ``model``'s graph or None, why it stays fp32 or None to rewrite it in 8 bits); ExportError when
    ``quantize_head="yes"`` and it cannot be rewritten."""
    head = find_head(model.graph)
    reason = None
    if quantize_head == "no":
        reason = "quantize_head='no'"
    elif head is None:
        reason = "no MatMul / Gemm with a constant weight computes 'logits'"
    else:
        dims = next(i.dims for i in model.graph.initializer if i.name == head.weight)
        k = dims[0] if head.transposed else dims[1]
        if k % BLOCK:
            reason = f"hidden size {k} is not a multiple of {BLOCK}"
    if reason is not None and quantize_head == "yes":
        raise ExportError(f"quantize_head='yes': the output head cannot be stored in 8-bit blocks: {reason} "
                          "(use quantize_head='auto' or 'no')")
    return head, reason

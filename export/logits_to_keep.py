"""Graph surgery: give a decoder-only graph transformers' ``logits_to_keep`` input.

``logits_to_keep`` ([1] int64) = k keeps the output projection's input to the last k positions before the
projection (k = 0 keeps every position), so a prefill over t prompt tokens computes [b, 1, V] logits instead of
[b, t, V]: the runtime's ``start`` and ``advance`` feed 1, ``logits()``/``score()`` feed 0. This is what
transformers' ``generate`` does with ``logits_to_keep=1``; the values kept are the same computation on the same
rows, so they are bit-identical to the all-positions graph's last row.

The projection is the MatMul (or Gemm) nearest to the ``logits`` output: it may be followed by elementwise scaling
(Granite's ``logits_scaling``, Cohere's ``logit_scale``), which then acts on the kept rows only.
"""
from __future__ import annotations

from pathlib import Path

from onnxlm.runtime.errors import ExportError

INPUT_NAME = "logits_to_keep"
_INT64_MAX = 2**63 - 1


def _projection(producers: dict, output: str, depth: int = 4):
    """The MatMul/Gemm node nearest to ``output`` walking back through at most ``depth`` nodes, or None."""
    node = producers.get(output)
    if node is None or depth == 0:
        return None
    if node.op_type in ("MatMul", "Gemm"):
        return node
    for name in node.input:
        found = _projection(producers, name, depth - 1)
        if found is not None:
            return found
    return None


def add_logits_to_keep(path: Path) -> None:
    """Rewrite the decoder-only graph at ``path`` in place with a ``logits_to_keep`` input (see module doc)."""
    import onnx
    from onnx import TensorProto, helper

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # weights in model.onnx_data (if any) stay put
    graph = model.graph
    if any(i.name == INPUT_NAME for i in graph.input):
        return
    producers = {o: n for n in graph.node for o in n.output}
    proj = _projection(producers, "logits")
    if proj is None:
        raise ExportError(f"{path.name}: no output projection (MatMul) found before 'logits'; cannot add "
                          f"{INPUT_NAME}")
    hidden = proj.input[0]  # [b, s, d]
    kept = hidden + "_last_k"
    nodes = [
        helper.make_node("Neg", [INPUT_NAME], [INPUT_NAME + "_neg"], name="LogitsToKeep_Neg"),
        helper.make_node("Constant", [], [INPUT_NAME + "_ends"], name="LogitsToKeep_Ends",
                         value=helper.make_tensor(INPUT_NAME + "_ends_value", TensorProto.INT64, [1], [_INT64_MAX])),
        helper.make_node("Constant", [], [INPUT_NAME + "_axes"], name="LogitsToKeep_Axes",
                         value=helper.make_tensor(INPUT_NAME + "_axes_value", TensorProto.INT64, [1], [1])),
        # hidden[:, -k:, :]  (k = 0: -0 = 0, every position)
        helper.make_node("Slice", [hidden, INPUT_NAME + "_neg", INPUT_NAME + "_ends", INPUT_NAME + "_axes"], [kept],
                         name="LogitsToKeep_Slice"),
    ]
    index = list(graph.node).index(proj)
    for offset, node in enumerate(nodes):
        graph.node.insert(index + offset, node)
    proj.input[0] = kept
    graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT64, [1]))
    for out in graph.output:  # logits: [batch, kept positions, V]
        if out.name == "logits":
            out.type.tensor_type.shape.dim[1].dim_param = "logits_length"
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp))
    try:
        onnx.checker.check_model(str(tmp))
    except Exception:
        tmp.unlink()
        raise
    tmp.replace(path)

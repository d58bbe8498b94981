"""Write runtime/graphs/gather_rows_{float32,float16}_r{3,4}.onnx: out = Gather(data, rows, axis=0).

The runtime uses them to reorder KV-cache rows on the device (CUDA) during beam search: onnxruntime's Python
API has no device-side indexing, and the runtime must not depend on the `onnx` package, so the two tiny graphs
are built here once (needs `onnx`) and shipped as package data.
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[1] / "runtime" / "graphs"


def gather_rows(elem_type: int, rank: int) -> onnx.ModelProto:
    """rank 4: KV tensors [b, heads, len, head_dim]; rank 3: encoder output [b, len, hidden]."""
    dims = ["h", "t", "d"][-(rank - 1):]
    data = helper.make_tensor_value_info("data", elem_type, ["b", *dims])
    rows = helper.make_tensor_value_info("rows", TensorProto.INT64, ["n"])
    out = helper.make_tensor_value_info("out", elem_type, ["n", *dims])
    graph = helper.make_graph([helper.make_node("Gather", ["data", "rows"], ["out"], axis=0)], "gather_rows",
                              [data, rows], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="onnxlm")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for name, t in (("float32", TensorProto.FLOAT), ("float16", TensorProto.FLOAT16)):
        for rank in (3, 4):
            path = OUT / f"gather_rows_{name}_r{rank}.onnx"
            onnx.save(gather_rows(t, rank), path)
            print("wrote", path)

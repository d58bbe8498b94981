"""Write runtime/graphs/window_probe.onnx: one GroupQueryAttention with a sliding window of 1 position.

``runtime/window_narrowing.counts_window_wider`` runs it once per process to learn how the installed onnxruntime
counts a window: before 1.24 (onnxruntime PR #25927) ``local_window_size`` w let a query attend to w + 1 positions,
from 1.24 to w. A version string would say it too, but not for a nightly or a patch release that differs from its
number; the graph answers for the build at hand. Built here once (needs ``onnx``), shipped as package data (the
runtime needs no ``onnx``), IR 8 so that every onnxruntime from the floor (1.23) opens it.
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OUT = Path(__file__).resolve().parents[1] / "runtime" / "graphs" / "window_probe.onnx"
HEAD = 16  # GroupQueryAttention's head size must be a multiple of 8 (onnxruntime 1.32)


def window_probe() -> onnx.ModelProto:
    """query/key/value [1, t, 16] (one head, one kv head), empty past [1, 1, 0, 16], seqlens_k [1], total -> out."""
    seq = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "t", HEAD]) for n in ("query", "key", "value")]
    past = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, "p", HEAD]) for n in ("past_key", "past_value")]
    lengths = [helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
               helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("out", "present_key", "present_value")]
    node = helper.make_node("GroupQueryAttention", [i.name for i in seq + past + lengths],
                            [o.name for o in outs], domain="com.microsoft", num_heads=1, kv_num_heads=1,
                            local_window_size=1)
    graph = helper.make_graph([node], "window_probe", seq + past + lengths, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="onnxlm")
    model.ir_version = 8
    return model


if __name__ == "__main__":
    onnx.save(window_probe(), OUT)
    print("wrote", OUT)

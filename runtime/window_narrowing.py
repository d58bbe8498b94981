"""Sliding-window graphs on onnxruntime 1.23 (the newest for Python 3.10): each window narrowed by one position.

Before 1.24, ``GroupQueryAttention``'s ``local_window_size`` w let a query attend to w + 1 positions, itself and w
before it; from 1.24 (onnxruntime PR #25927, "Fix Local Attention off by 1 bug") to w, as transformers' sliding
window does. onnxlm's fused graphs carry the model's window (1.24's meaning), so on 1.23 ``narrowed_model`` hands
onnxruntime the same graph with every window set to w - 1: 1.23 then attends to the model's w positions, and its
logits equal 1.32's (``scripts/dependency_floor.py``; runtime/versions.py and the README give the figures). Which
way the installed build counts is asked of it (``counts_window_wider``: a one-node graph), not read from its version
number. Nothing else in the graph changes; the weights stay in the artifact's data file (``session.make_session`` opens the bytes
with that folder for it).

The graph is read with protobuf (onnxruntime's own dependency; the base install has no ``onnx``) through a
descriptor of the few fields this reads: ModelProto.graph / functions, GraphProto.node, FunctionProto.node,
NodeProto.op_type / domain / attribute, AttributeProto.name / i / g / graphs / type (a node's subgraphs, an
``If``'s branches, are walked too; onnxlm's graphs have none). Every other field passes through as unknown fields,
which protobuf keeps when it writes the message again.
"""
from __future__ import annotations

import functools
from pathlib import Path

from .errors import DependencyError

#: the op whose attribute narrows, and its domain
WINDOWED_OP = ("GroupQueryAttention", "com.microsoft")
WINDOW_ATTRIBUTE = "local_window_size"
PROBE = Path(__file__).resolve().parent / "graphs" / "window_probe.onnx"  # scripts/make_window_probe.py


@functools.lru_cache(maxsize=1)
def counts_window_wider() -> bool:
    """Whether the imported onnxruntime lets ``local_window_size`` w attend to w + 1 positions (before 1.24), asked
    of the build itself once per process: ``window_probe.onnx`` (a window of 1) over three positions whose values
    are 0, 1, 0 with equal scores (zero queries) gives the last position 0 alone, or 0.5 beside the one before it.
    A DependencyError where the probe cannot run or answers neither (a window this build ignores: 1/3)."""
    import numpy as np
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level, opts.intra_op_num_threads, opts.inter_op_num_threads = 3, 1, 1
        session = ort.InferenceSession(str(PROBE), sess_options=opts, providers=["CPUExecutionProvider"])
        head = session.get_inputs()[0].shape[-1]
        value = np.zeros((1, 3, head), np.float32)
        value[0, 1] = 1.0
        empty = np.zeros((1, 1, 0, head), np.float32)
        out = session.run(["out"], {"query": np.zeros_like(value), "key": np.zeros_like(value), "value": value,
                                    "past_key": empty, "past_value": empty, "seqlens_k": np.array([2], np.int32),
                                    "total_sequence_length": np.array(3, np.int32)})[0]
    except Exception as exc:  # onnxruntime raises its own types; a missing probe file is an install's fault
        raise DependencyError(f"onnxruntime {ort.__version__} could not run onnxlm's sliding-window probe {PROBE} "
                              f"({type(exc).__name__}: {exc}); reinstall onnxlm and onnxruntime") from exc
    last = float(out[0, 2, 0])
    if abs(last - 0.5) < 1e-3 or abs(last) < 1e-3:
        return last > 0.25
    raise DependencyError(f"onnxruntime {ort.__version__}'s GroupQueryAttention gave {last:.4g} on onnxlm's "
                          "sliding-window probe, where a window of 1 gives 0 (1.24 and later) or 0.5 (before): its "
                          "sliding windows cannot be trusted; install onnxruntime 1.24 or newer (or 1.23.2)")


@functools.lru_cache(maxsize=1)
def narrowing_reader():
    """A protobuf message class for ONNX's ModelProto that knows only the fields this module reads."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="onnxlm_window_narrowing.proto", package="onnxlm_window",
                                               syntax="proto2")
    label, t = descriptor_pb2.FieldDescriptorProto, descriptor_pb2.FieldDescriptorProto

    def message(name: str, fields: list[tuple[str, int, int, int, str | None]]) -> None:
        m = proto.message_type.add(name=name)
        for field_name, number, field_label, field_type, type_name in fields:
            f = m.field.add(name=field_name, number=number, label=field_label, type=field_type)
            if type_name:
                f.type_name = f".onnxlm_window.{type_name}"

    opt, rep = label.LABEL_OPTIONAL, label.LABEL_REPEATED
    message("AttributeProto", [("name", 1, opt, t.TYPE_STRING, None), ("i", 3, opt, t.TYPE_INT64, None),
                               ("g", 6, opt, t.TYPE_MESSAGE, "GraphProto"),
                               ("graphs", 11, rep, t.TYPE_MESSAGE, "GraphProto"),
                               ("type", 20, opt, t.TYPE_INT32, None)])  # type an int: no enum to declare
    message("NodeProto", [("name", 3, opt, t.TYPE_STRING, None),  # (an error's message names the node)
                          ("op_type", 4, opt, t.TYPE_STRING, None), ("attribute", 5, rep, t.TYPE_MESSAGE,
                                                                      "AttributeProto"),
                          ("domain", 7, opt, t.TYPE_STRING, None)])
    message("GraphProto", [("node", 1, rep, t.TYPE_MESSAGE, "NodeProto")])
    message("FunctionProto", [("node", 7, rep, t.TYPE_MESSAGE, "NodeProto")])
    message("ModelProto", [("graph", 7, opt, t.TYPE_MESSAGE, "GraphProto"),
                           ("functions", 25, rep, t.TYPE_MESSAGE, "FunctionProto")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    descriptor = pool.FindMessageTypeByName("onnxlm_window.ModelProto")
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)  # pragma: no cover - older protobuf


def all_nodes(model):
    """A ModelProto (onnx's, or ``narrowing_reader``'s, whose fields of these names are the same) -> every NodeProto
    in it: the main graph's, their subgraphs' (If/Loop/Scan bodies, at any depth) and the model's functions'."""
    nodes = [n for f in model.functions for n in f.node] + list(model.graph.node)
    while nodes:
        node = nodes.pop()
        yield node
        nodes += [n for a in node.attribute for g in [a.g, *a.graphs] for n in g.node]  # an unset g holds no node


def narrowed_windows(model: bytes) -> tuple[bytes, int]:
    """A serialized ONNX model -> the same model with every GroupQueryAttention's ``local_window_size`` w >= 1 set
    to w - 1 (-1, no window, stays; 0 is a DependencyError: no narrower window exists), and how many it narrowed:
    the main graph's nodes, their subgraphs' and the model's functions'."""
    proto = narrowing_reader()()
    proto.ParseFromString(model)
    narrowed = 0
    for node in all_nodes(proto):
        if (node.op_type, node.domain) != WINDOWED_OP:
            continue
        for attribute in node.attribute:
            if attribute.name == WINDOW_ATTRIBUTE and attribute.i >= 0:
                if attribute.i == 0:  # attends to no position from 1.24; a build counting wider cannot say it
                    raise DependencyError(f"GroupQueryAttention node {node.name!r} has local_window_size 0, which "
                                          "onnxruntime before 1.24 counts as a window of one position (its graph "
                                          "cannot be narrowed to the same numbers); needs onnxruntime >= 1.24")
                attribute.i -= 1
                narrowed += 1
    return proto.SerializeToString(), narrowed


def narrowed_model(path: Path, opts) -> bytes:
    """An ONNX file -> its bytes with every window narrowed (``narrowed_windows``), for ``InferenceSession``; its
    ``opts`` (SessionOptions) told to read the external data from the file's folder, as a session of the file does."""
    opts.add_session_config_entry("session.model_external_initializers_file_folder_path", str(Path(path).parent))
    return narrowed_windows(Path(path).read_bytes())[0]

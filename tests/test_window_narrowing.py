"""runtime/window_narrowing.py: the graph onnxruntime 1.23 gets for an artifact whose sliding windows need 1.24.

The end-to-end proof is in tests/test_fused_layouts.py (a narrowed artifact's logits are transformers' with the
window one shorter) and scripts/dependency_floor.py (1.23.2 answers the narrowed graphs as 1.32 the exported ones);
here the edit itself: exactly the windows of GroupQueryAttention nodes, every other byte of meaning kept (fields the
reader's small descriptor does not know included), and a file that is no ONNX model refused by name.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="building test graphs needs onnx (the test extra)")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxlm.runtime.window_narrowing import narrowed_model, narrowed_windows  # noqa: E402


def _graph(windows: list[int]) -> onnx.ModelProto:
    """One GroupQueryAttention per window (-1: none), a contrib op of another name and an ONNX op that both carry a
    ``local_window_size`` attribute of their own (not windows to narrow), an initializer stored externally, doc
    strings, metadata and a float attribute beside the window: fields the narrowing's descriptor does not declare."""
    nodes = [helper.make_node("GroupQueryAttention", [f"x{i}"], [f"y{i}"], name=f"gqa{i}", domain="com.microsoft",
                              num_heads=2, kv_num_heads=1, local_window_size=w, scale=0.125, doc_string=f"layer {i}")
             for i, w in enumerate(windows)]
    nodes += [helper.make_node("MultiHeadAttention", ["m"], ["n"], domain="com.microsoft", num_heads=2,
                               local_window_size=5),
              helper.make_node("Identity", ["a"], ["b"], local_window_size=6)]
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in (("location", "model.onnx_data"), ("offset", "4096"), ("length", "24")):
        weight.external_data.add(key=key, value=value)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, "t", 8]) for n in
              [f"x{i}" for i in range(len(windows))] + ["m", "a"]]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in
               [f"y{i}" for i in range(len(windows))] + ["n", "b"]]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, [weight], doc_string="graph doc"),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="onnxlm-test", doc_string="model doc")
    helper.set_model_props(model, {"onnxlm": "window test"})
    return model


def _window(node) -> int:
    return next(a.i for a in node.attribute if a.name == "local_window_size")


def test_every_groupqueryattention_window_is_one_narrower_and_nothing_else_changes():
    model = _graph([4, -1, 1, 512])
    data, narrowed = narrowed_windows(model.SerializeToString())
    assert narrowed == 3  # 4, 1 and 512; -1 (no window) stays
    got = onnx.ModelProto.FromString(data)
    assert [_window(n) for n in got.graph.node] == [3, -1, 0, 511, 5, 6]  # the other ops' attributes untouched
    for node in got.graph.node:  # the rest of each node: order, type, float attribute, doc string
        for attribute in node.attribute:
            if attribute.name == "local_window_size":
                attribute.i = _window(next(n for n in model.graph.node if n.output == node.output))
    assert got == model  # the window restored, the whole model is the original, external data record included
    again, none = narrowed_windows(_graph([-1, -1]).SerializeToString())
    assert none == 0 and onnx.ModelProto.FromString(again) == _graph([-1, -1])


def test_narrowed_model_reads_the_file(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(_graph([8]), str(path))
    import onnxruntime as ort

    opts = ort.SessionOptions()
    assert [_window(n) for n in onnx.ModelProto.FromString(narrowed_model(path, opts)).graph.node][0] == 7
    assert opts.get_session_config_entry("session.model_external_initializers_file_folder_path") == str(tmp_path)


def test_windows_in_subgraphs_and_functions_narrow_too():
    """A GroupQueryAttention in an ``If``'s branch or in a model-local function (none in onnxlm's graphs) is narrowed
    as one in the main graph; the rest of the model, again, as it was."""
    inner = _graph([6]).graph
    branch = helper.make_graph(list(inner.node)[:1], "then", [], [helper.make_tensor_value_info("y0", TensorProto.FLOAT,
                                                                                                None)])
    model = _graph([4])
    model.graph.node.append(helper.make_node("If", ["c"], ["z"], then_branch=branch, else_branch=branch))
    model.functions.append(helper.make_function("local", "f", ["x0"], ["y0"], list(_graph([9]).graph.node)[:1],
                                                [helper.make_opsetid("com.microsoft", 1)]))
    data, narrowed = narrowed_windows(model.SerializeToString())
    got = onnx.ModelProto.FromString(data)
    assert narrowed == 4  # the main graph's, both branches', the function's
    branches = [a.g for a in got.graph.node[-1].attribute]
    assert [_window(got.graph.node[0]), *[_window(g.node[0]) for g in branches], _window(got.functions[0].node[0])] \
        == [3, 5, 5, 8]
    for node, window in ((got.graph.node[0], 4), (got.functions[0].node[0], 9), *((g.node[0], 6) for g in branches)):
        next(a for a in node.attribute if a.name == "local_window_size").i = window  # restored: the original model
    assert got == model


def test_a_file_that_is_no_onnx_model_is_refused_by_name(tmp_path):
    """Bytes that are no protobuf message: a ModelFileError naming the file, raised by the narrowing's own read (its
    cause protobuf's DecodeError), not by onnxruntime after it."""
    from google.protobuf.message import DecodeError

    from onnxlm.runtime.errors import ModelFileError
    from onnxlm.runtime.session import make_session

    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x0a\xff\xff\xff\xff not a protobuf message")
    with pytest.raises(ModelFileError, match=r"model file .*model\.onnx could not be loaded") as refused:
        make_session(path, "cpu", 1, narrow_windows=True)
    assert isinstance(refused.value.__cause__, DecodeError)


def test_a_window_of_zero_cannot_be_narrowed_and_says_so(tmp_path):
    """``local_window_size`` 0 attends to no position from onnxruntime 1.24 and to the position itself before it;
    no narrower window says the former: a DependencyError naming the node (through ``make_session`` too, not
    wrapped as a corrupt file), where handing the graph over as it is would answer other numbers."""
    from onnxlm.runtime.errors import DependencyError
    from onnxlm.runtime.session import make_session

    with pytest.raises(DependencyError, match="'gqa1' has local_window_size 0.*needs onnxruntime >= 1.24"):
        narrowed_windows(_graph([3, 0]).SerializeToString())
    path = tmp_path / "model.onnx"
    onnx.save(_graph([0]), str(path))
    with pytest.raises(DependencyError, match="local_window_size 0"):
        make_session(path, "cpu", 1, narrow_windows=True)


def test_a_probe_that_cannot_run_or_answers_neither_way_is_a_dependency_error(tmp_path, monkeypatch):
    """The probe decides whether to narrow (on every onnxruntime): where it cannot run (a broken install) or answers
    neither 0 nor 0.5 (a build that ignores the window: 1/3), loading a windowed artifact must not guess."""
    import onnxruntime as ort

    from onnxlm.runtime import window_narrowing
    from onnxlm.runtime.errors import DependencyError

    class IgnoresTheWindow:  # what a GroupQueryAttention without its window gives: the mean of all three values
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def get_inputs(self):
            return self.session.get_inputs()

        def run(self, names, feeds):
            return [np.full((1, 3, feeds["value"].shape[-1]), 1 / 3, np.float32)]

    real = ort.InferenceSession
    try:
        window_narrowing.counts_window_wider.cache_clear()
        monkeypatch.setattr(window_narrowing, "PROBE", tmp_path / "missing.onnx")
        with pytest.raises(DependencyError, match=r"could not run onnxlm's sliding-window probe .*missing\.onnx"):
            window_narrowing.counts_window_wider()
        monkeypatch.undo()
        monkeypatch.setattr(ort, "InferenceSession", IgnoresTheWindow)
        with pytest.raises(DependencyError, match=r"gave 0\.3333 on onnxlm's sliding-window probe, where a window "
                                                  r"of 1 gives 0 \(1\.24 and later\) or 0\.5 \(before\)"):
            window_narrowing.counts_window_wider()
    finally:
        monkeypatch.undo()
        window_narrowing.counts_window_wider.cache_clear()
    assert window_narrowing.counts_window_wider() is False  # this build (the suite's 1.32), asked again

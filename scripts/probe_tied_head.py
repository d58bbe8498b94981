"""Probe (not the exporter): a fused artifact's tied head rewritten so that onnxruntime keeps no packed copy of the
embedding, to measure memory and decode speed against the original (argv: SRC_ARTIFACT DST_DIR [external]).

The fused exporters read a tied embedding E [V, D] twice: Gather(E, input_ids) and the head Gemm(x, E, transB=1).
onnxruntime prepacks the Gemm's B (a second, packed copy of E: GPT-2 small 154 MB, SmolLM2 113 MB) and must keep E
for the Gather. Here E is stored once as [1, V, D]: Gather on axis 1 (+ Squeeze) and the head as
com.microsoft.FusedMatMul(x [1, b*k, D], E, transB=1); onnxruntime prepacks only a 2-D B, so both read the same
weights. "external" also moves the weights to model.onnx_data (memory-mapped by onnxruntime). The manifest's sha256
no longer match: load the result with verify=False (scripts/probe_memory.py does not verify)."""
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
external = len(sys.argv) > 3 and sys.argv[3] == "external"
dst.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.is_file() and not f.name.startswith("model.onnx"):
        shutil.copy(f, dst / f.name)
m = onnx.load(src / "model.onnx")
g = m.graph
inits = {i.name: i for i in g.initializer}
head = next(n for n in g.node if n.op_type == "Gemm" and n.input[1] in inits and
            any(o.op_type == "Gather" and o.input[0] == n.input[1] for o in g.node))
emb = head.input[1]
w = numpy_helper.to_array(inits[emb])
g.initializer.remove(inits[emb])
g.initializer.extend([numpy_helper.from_array(w[None], emb + ".3d"),
                      numpy_helper.from_array(np.array([0], np.int64), "probe_axes_0"),
                      numpy_helper.from_array(np.array([1, -1, w.shape[1]], np.int64), "probe_shape_3d")])
nodes = []
for n in g.node:
    if n.op_type == "Gather" and n.input[0] == emb:  # [1, V, D] gather axis 1 -> [1, b, s, D] -> [b, s, D]
        nodes += [helper.make_node("Gather", [emb + ".3d", n.input[1]], [n.output[0] + "_4d"], axis=1, name=n.name),
                  helper.make_node("Squeeze", [n.output[0] + "_4d", "probe_axes_0"], [n.output[0]],
                                   name=n.name + "_squeeze")]
    elif n is head:  # [b*k, D] -> [1, b*k, D] x [1, V, D]^T -> [1, b*k, V] (the next Reshape makes [b, k, V])
        nodes += [helper.make_node("Reshape", [n.input[0], "probe_shape_3d"], [n.input[0] + "_3d"],
                                   name=n.name + "_3d"),
                  helper.make_node("FusedMatMul", [n.input[0] + "_3d", emb + ".3d"], [n.output[0]],
                                   domain="com.microsoft", transB=1, alpha=1.0, name=n.name)]
    else:
        nodes.append(n)
del g.node[:]
g.node.extend(nodes)
onnx.save(m, dst / "model.onnx", save_as_external_data=external, all_tensors_to_one_file=True,
          location="model.onnx_data", size_threshold=1024)
print(f"{dst}: {emb} stored once as [1, V, D]; head FusedMatMul(transB=1){' ; weights external' if external else ''}")

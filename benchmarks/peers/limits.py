"""The machine's two limits as onnxruntime's fp32 MatMul meets them (``--_bandwidth THREADS``, measured in a fresh
process): how fast it streams a weight at batch 1, and its throughput on a prompt-sized product (``floors.py``)."""
from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time

import numpy as np

from .settings import child_env, module_command


def _matmul_seconds(m: int, k: int, n: int, threads: int, runs: int = 15) -> float:
    """Median seconds of onnxruntime's fp32 MatMul x [m, k] @ W [k, n] (W a constant initializer, prepacked as in
    the graphs), ``threads`` intra-op threads, after 3 warm-up runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"x": np.ones((m, k), np.float32)}
    times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        sess.run(None, x)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth_main(threads: str) -> int:
    """Child: the machine's two limits as onnxruntime's fp32 MatMul meets them, one JSON line:
    gb_per_s = how fast it streams a weight at batch 1 (the decode step's shape: x [1, 2048] @ W [2048, 32768],
    256 MiB, far above the caches); gflops = its throughput on a prompt-sized product (x [512, 1024] @ W [1024, 4096],
    the prefill's shape)."""
    t = int(threads)
    stream = _matmul_seconds(1, 2048, 32768, t)
    compute = _matmul_seconds(512, 1024, 4096, t)
    print(json.dumps({"gb_per_s": 2048 * 32768 * 4 / stream / 1e9, "gflops": 2 * 512 * 1024 * 4096 / compute / 1e9}),
          flush=True)
    return 0


def measure_limits(threads: int) -> dict:
    """bandwidth_main's {"gb_per_s", "gflops"} from a fresh process ({} when it fails)."""
    p = subprocess.run(module_command(sys.executable, "--_bandwidth", str(threads)), capture_output=True, text=True,
                       env=child_env(), timeout=600)
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    return {}

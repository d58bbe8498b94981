"""Row gathers on OrtValues without a host round trip: a one-node ONNX graph (Gather, axis 0) run on the
value's own device. Used to reorder the KV cache (and encoder output) during beam search under CUDA.

The graphs ship as package data (runtime/graphs/, built by scripts/make_gather_graphs.py), so the runtime needs
no `onnx` package.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

GRAPHS = Path(__file__).resolve().parent / "graphs"
ELEMENT_NAMES = {"tensor(float)": "float32", "tensor(float16)": "float16"}


@lru_cache(maxsize=None)
def _session(dtype: str, rank: int, device: str) -> ort.InferenceSession:
    """One cached session per (dtype, rank, device) -> InferenceSession of gather_rows_{dtype}_r{rank}.onnx."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    return ort.InferenceSession(str(GRAPHS / f"gather_rows_{dtype}_r{rank}.onnx"), providers=providers)


def gather_rows(value: ort.OrtValue, rows: np.ndarray) -> ort.OrtValue:
    """value [b, ...] (OrtValue on any device), rows [n] int64 -> [n, ...] OrtValue on the same device."""
    dtype = ELEMENT_NAMES[value.data_type()]
    device = value.device_name().lower()
    session = _session(dtype, len(value.shape()), device)
    binding = session.io_binding()
    binding.bind_ortvalue_input("data", value)
    binding.bind_cpu_input("rows", np.ascontiguousarray(rows, dtype=np.int64))
    binding.bind_output("out", device)
    session.run_with_iobinding(binding)
    return binding.get_outputs()[0]

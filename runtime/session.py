"""onnxruntime sessions: provider choice, threads, and one `GraphRunner` per ONNX file.

On the CPU a step is a plain `session.run` on numpy arrays: presents come back as numpy arrays and are fed
back as the next step's past without a copy. On CUDA the runner uses IO binding: every output except the
logits stays on the device as an OrtValue and is bound as the next step's input, so the KV cache never
makes a host round trip.
"""
from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .device_gather import GRAPHS
from .errors import ModelFileError, ParameterError, ProviderError
from .heap import session_heap
from .threads import resolve_threads
from .versions import check_onnxruntime
from .window_narrowing import narrowed_model, narrowing_reader

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# fp32 products in fp32 on the GPU: the CUDA provider's default, TF32 (10-bit mantissas) on Ampere and later, put
# the tiny models' logits 2.6e-3 (GPT-2), 3.2e-3 (Llama) and 1.5e-2 (T5) from transformers' on an H200; with it
# off, 1.6e-6 to 9.5e-6, as on the CPU (docs/design.md, "CUDA")
CUDA_OPTIONS = {"use_tf32": "0"}
PROBE = GRAPHS / "gather_rows_float32_r3.onnx"  # cuda_starts' one-node graph (device_gather's row gather)
ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def resolve_provider(provider: str) -> str:
    """'auto' | 'cpu' | 'cuda' -> 'cpu' | 'cuda'; raises ProviderError when CUDA is asked for but missing or does not
    start ('auto' then takes the CPU)."""
    if provider not in ("auto", "cpu", "cuda"):
        raise ParameterError("provider", f"got {provider!r}; allowed: 'auto', 'cpu', 'cuda'")
    available = ort.get_available_providers()
    if provider == "auto":
        return "cuda" if PROVIDERS["cuda"] in available and cuda_starts() else "cpu"
    if PROVIDERS[provider] not in available:
        raise ProviderError(
            f"provider={provider!r}: onnxruntime here offers only {available}. "
            "For CUDA install onnxruntime-gpu in place of onnxruntime (pip install 'onnxlm[cuda]').")
    if provider == "cuda" and not cuda_starts():
        raise ProviderError(
            "provider='cuda': onnxruntime-gpu is installed but its CUDA provider does not start here (a session "
            "asked for it fell back to the CPU): its CUDA and cuDNN libraries were not found. Install them for "
            f"onnxruntime-gpu {ort.__version__} (pip install 'onnxruntime-gpu[cuda,cudnn]'), or use provider='cpu'.")
    return provider


@lru_cache(maxsize=1)
def cuda_starts() -> bool:
    """Whether onnxruntime's CUDA provider really starts in this process. A listed provider whose CUDA or cuDNN
    libraries cannot be loaded does not fail the session: onnxruntime logs an error and runs it on the CPU. So
    the libraries from pip's nvidia packages are preloaded (``onnxruntime.preload_dlls``; a no-op on CPU builds),
    then a one-node graph shipped with the runtime (``graphs/gather_rows_float32_r3.onnx``) is opened on CUDA and
    its session asked which provider it got."""
    with contextlib.suppress(Exception):  # a CPU build has none; a missing library is the probe's to find
        ort.preload_dlls()
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # the probe's own failure is reported by the caller, not logged here
    try:
        probe = ort.InferenceSession(str(PROBE), sess_options=opts, providers=session_providers("cuda"))
    except Exception:  # noqa: BLE001 - any failure to open it on CUDA means CUDA does not start
        return False
    return probe.get_providers()[0] == PROVIDERS["cuda"]


def session_providers(provider: str) -> list:
    """A resolved provider ('cpu' | 'cuda') -> onnxruntime's providers list: CUDA (with ``CUDA_OPTIONS``) before the
    CPU, which runs the ops CUDA has no kernel for; or the CPU alone."""
    return [(PROVIDERS["cuda"], CUDA_OPTIONS), PROVIDERS["cpu"]] if provider == "cuda" else [PROVIDERS["cpu"]]


def make_session(path: Path, provider: str, threads: int | None, *,
                 narrow_windows: bool = False) -> ort.InferenceSession:
    """Open one ONNX file on the resolved provider ('cpu' | 'cuda'), with an onnxruntime that is new enough
    (``versions.check_onnxruntime``; the loader checks what the artifact needs). ``narrow_windows``: the graph with
    every sliding window one position narrower, for onnxruntime 1.23 (``window_narrowing.py``), its weights read
    from the file's folder as onnxruntime reads them from the file."""
    check_onnxruntime()
    threads = resolve_threads(threads)
    if not path.is_file():
        raise ModelFileError(f"model file {path} is missing", str(path))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads  # threads=, else ONNXLM_THREADS, else the physical cores
    opts.inter_op_num_threads = 1
    providers = session_providers(provider)
    if narrow_windows:
        narrowing_reader()  # protobuf's own failures before the file's (which say it is corrupt)
    with session_heap():  # the weights onnxruntime frees after prepacking go back to the kernel (heap.py)
        source = _narrowed_source(path, opts) if narrow_windows else os.fspath(path)
        try:
            return ort.InferenceSession(source, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ModelFileError(f"model file {path} could not be loaded (corrupt or truncated?): {exc}",
                                 str(path)) from exc


def _narrowed_source(path, opts) -> bytes:
    """``narrowed_model``'s bytes of the ONNX file ``path``: a file that does not parse is a ModelFileError (as
    onnxruntime's own parse failure is), one that cannot be read says so; a window no narrower one can replace
    (``narrowed_windows``) stays the DependencyError it is."""
    from google.protobuf.message import DecodeError

    try:
        return narrowed_model(path, opts)
    except DecodeError as exc:
        raise ModelFileError(f"model file {path} could not be loaded (corrupt or truncated?): {exc}",
                             str(path)) from exc
    except OSError as exc:
        raise ModelFileError(f"model file {path} could not be read: {exc}", str(path)) from exc


class GraphRunner:
    """Runs one ONNX graph; knows its input/output names and dtypes."""

    def __init__(self, session: ort.InferenceSession, provider: str):
        self.session = session
        self.provider = provider
        self.device = "cuda" if provider == "cuda" else "cpu"
        self.io_binding = provider == "cuda"  # keep outputs as device OrtValues (tests may force it on the CPU)
        self.inputs = {i.name: i for i in session.get_inputs()}
        self.outputs = [o.name for o in session.get_outputs()]

    def has_input(self, name: str) -> bool:
        return name in self.inputs

    def input_dtype(self, name: str) -> type:
        return ORT_TO_NUMPY.get(self.inputs[name].type, np.float32)

    def run(self, feeds: dict, host_outputs: tuple[str, ...] = ("logits",)) -> dict:
        """feeds: name -> np.ndarray | OrtValue -> name -> np.ndarray (host_outputs) | np.ndarray/OrtValue (rest)."""
        feeds = {k: v for k, v in feeds.items() if k in self.inputs}
        if not self.io_binding:
            values = self.session.run(self.outputs, {k: to_numpy(v) for k, v in feeds.items()})
            return dict(zip(self.outputs, values))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.outputs:
            binding.bind_output(name, "cpu" if name in host_outputs else self.device)
        self.session.run_with_iobinding(binding)
        out = dict(zip(self.outputs, binding.get_outputs()))
        return {k: (v.numpy() if k in host_outputs else v) for k, v in out.items()}


def to_numpy(value) -> np.ndarray:
    """np.ndarray | OrtValue -> np.ndarray (host copy only for device values)."""
    return value.numpy() if isinstance(value, ort.OrtValue) else value

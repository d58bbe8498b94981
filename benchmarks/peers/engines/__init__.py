"""One worker class per engine (a WORKERS key -> its class). Each class has static methods ``imports(d)`` (the
engine's libraries, timed out of the load), ``load(d)`` -> model, ``generator(model, d, case, ids [b, p])`` ->
``gen(n)`` -> new ids [b, n], and ``logits(model, d, window [w])`` -> [w, V] (None: no agreement figure); ``d`` is
the worker's payload (runner.run_worker). Importing this package imports numpy only."""
from __future__ import annotations

from .common import Unsupported
from .ctranslate2_engine import Ct2Worker
from .llamacpp_engine import LlamaCppWorker
from .ogenai_engine import OgenaiWorker
from .onnxlm_engine import OnnxlmWorker
from .optimum_engine import OptimumWorker
from .torch_engine import TorchWorker

WORKERS = {"onnxlm": OnnxlmWorker, "torch": TorchWorker, "optimum": OptimumWorker, "ct2": Ct2Worker,
           "ogenai": OgenaiWorker, "llamacpp": LlamaCppWorker}

__all__ = ["WORKERS", "Unsupported"]

"""llama.cpp (llama-cpp-python) as a peer-benchmark engine, on the GGUF file itself: batch 1, greedy and sampling
(the high-level API has no batch and no beam search); a second context with ``logits_all`` for the agreement."""
from __future__ import annotations

import numpy as np

from .common import mode_error


class LlamaCppWorker:
    @staticmethod
    def imports(d):
        import llama_cpp  # noqa: F401

    @staticmethod
    def _open(d, n_ctx, logits_all):
        from llama_cpp import Llama

        return Llama(model_path=d["path"], n_ctx=n_ctx, n_threads=d["threads"], n_threads_batch=d["threads"],
                     n_batch=512, logits_all=logits_all, verbose=False, seed=0)

    @staticmethod
    def load(d):
        return LlamaCppWorker._open(d, d["opts"]["n_ctx"], False)

    @staticmethod
    def generator(model, d, case, ids):
        mode_error(case, "llama-cpp-python", batch_ok=False, beam_ok=False)
        kw = {"top_k": 1, "temp": 0.0} if case["mode"] == "greedy" else \
            {"top_k": 50, "top_p": 1.0, "min_p": 0.0, "temp": 1.0}
        prompt = [int(i) for i in ids[0]]

        def gen(n):
            model.reset()  # no prefix reuse between calls: every call pays its prompt
            out = []
            for tok in model.generate(prompt, reset=True, **kw):
                out.append(tok)
                if len(out) == n:
                    break
            return np.array([out], dtype=np.int64)

        return gen

    @staticmethod
    def logits(model, d, window):
        if getattr(model, "_quality_llm", None) is None:  # a second context with logits for every position
            model._quality_llm = LlamaCppWorker._open(d, max(len(window), 64) + 8, True)
        q = model._quality_llm
        q.reset()
        q.eval([int(i) for i in window])
        return np.array(q.scores[:len(window)], dtype=np.float32)

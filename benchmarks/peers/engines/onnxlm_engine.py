"""onnxlm as a peer-benchmark engine: ``onnxlm.load`` on the CPU, ``generate``, ``logits`` for the agreement."""
from __future__ import annotations

import numpy as np

from .common import hf_kwargs


class OnnxlmWorker:
    @staticmethod
    def imports(d):
        import onnxlm  # noqa: F401

    @staticmethod
    def load(d):
        import onnxlm

        return onnxlm.load(d["path"], provider="cpu", threads=d["threads"])

    @staticmethod
    def generator(model, d, case, ids):
        mask = np.ones_like(ids)
        kw = hf_kwargs(case["mode"])

        def gen(n):  # -> new ids [batch, n]
            seq = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw).sequences
            return seq[:, 1:] if model.is_encoder_decoder else seq[:, ids.shape[1]:]

        return gen

    @staticmethod
    def logits(model, d, window):  # [w] ids -> [w, V]
        return model.logits([window])[0]

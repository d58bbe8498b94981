"""onnxruntime-genai as a peer-benchmark engine: ``og.Model`` on its builder's graphs, a Generator per call; its
``logits`` output for the agreement."""
from __future__ import annotations

import numpy as np


class OgenaiWorker:
    @staticmethod
    def imports(d):
        import onnxruntime_genai  # noqa: F401

    @staticmethod
    def load(d):
        import onnxruntime_genai as og

        return og.Model(d["path"])

    @staticmethod
    def _run(model, ids, total, mode):
        import onnxruntime_genai as og

        params = og.GeneratorParams(model)
        opts = {"greedy": {"do_sample": False, "num_beams": 1}, "sample": {"do_sample": True, "top_k": 50},
                "beam4": {"do_sample": False, "num_beams": 4}}[mode]
        params.set_search_options(max_length=total, min_length=total, batch_size=ids.shape[0], **opts)
        g = og.Generator(model, params)
        g.append_tokens(ids.astype(np.int32))
        return g

    @staticmethod
    def generator(model, d, case, ids):
        prompt = ids.shape[1]

        def gen(n):
            g = OgenaiWorker._run(model, ids, prompt + n, case["mode"])
            while not g.is_done():
                g.generate_next_token()
            return np.array([np.asarray(g.get_sequence(i))[prompt:prompt + n] for i in range(ids.shape[0])])

        return gen

    @staticmethod
    def logits(model, d, window):
        g = OgenaiWorker._run(model, np.asarray([window]), len(window), "greedy")  # max_length <= context
        return np.asarray(g.get_output("logits"))[0]

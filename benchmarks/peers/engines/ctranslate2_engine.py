"""CTranslate2 as a peer-benchmark engine: a Generator (decoder-only) or Translator (seq2seq) on tokens from the
artifact's tokenizer; ``forward_batch`` logits for the agreement (decoder-only)."""
from __future__ import annotations

import numpy as np

from .common import Unsupported


class Ct2Worker:
    @staticmethod
    def imports(d):
        import ctranslate2  # noqa: F401
        import tokenizers  # noqa: F401

    @staticmethod
    def load(d):
        import ctranslate2
        from tokenizers import Tokenizer

        cls = ctranslate2.Translator if d["seq2seq"] else ctranslate2.Generator
        model = cls(d["path"], device="cpu", compute_type=d["opts"]["compute_type"], intra_threads=d["threads"],
                    inter_threads=1)
        return model, Tokenizer.from_file(d["tokenizer"])

    @staticmethod
    def generator(model_tok, d, case, ids):
        model, tok = model_tok
        src = [[tok.id_to_token(int(i)) for i in row] for row in ids]
        kw = {"greedy": {"sampling_topk": 1, "beam_size": 1},
              "sample": {"sampling_topk": 50, "sampling_temperature": 1.0, "beam_size": 1},
              "beam4": {"beam_size": 4}}[case["mode"]]

        def gen(n):
            if d["seq2seq"]:
                res = model.translate_batch(src, max_decoding_length=n, min_decoding_length=n, **kw)
                return np.array([[tok.token_to_id(t) for t in r.hypotheses[0][:n]] for r in res], dtype=np.int64)
            res = model.generate_batch(src, max_length=n, min_length=n, include_prompt_in_result=False, **kw)
            return np.array([r.sequences_ids[0][:n] for r in res], dtype=np.int64)

        return gen

    @staticmethod
    def logits(model_tok, d, window):
        model, tok = model_tok
        if d["seq2seq"]:
            raise Unsupported("seq2seq")
        out = model.forward_batch([[tok.id_to_token(int(i)) for i in window]])
        return np.array(out)[0]

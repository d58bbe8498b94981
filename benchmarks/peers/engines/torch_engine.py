"""PyTorch (transformers) as a peer-benchmark engine: ``from_pretrained`` in float32, ``generate`` under
``inference_mode``, the logits of a forward pass for the agreement."""
from __future__ import annotations

import contextlib

from .common import hf_kwargs


class TorchWorker:
    @staticmethod
    def imports(d):
        import torch
        import transformers  # noqa: F401

        torch.set_num_threads(d["threads"])
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)

    @staticmethod
    def load(d):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        cls = AutoModelForSeq2SeqLM if d["seq2seq"] else AutoModelForCausalLM
        return cls.from_pretrained(d["path"], dtype=torch.float32).eval()

    @staticmethod
    def generator(model, d, case, ids):
        import torch

        t_ids = torch.from_numpy(ids)
        kw = hf_kwargs(case["mode"])

        def gen(n):
            with torch.inference_mode():
                out = model.generate(input_ids=t_ids, attention_mask=torch.ones_like(t_ids), max_new_tokens=n,
                                     min_new_tokens=n, pad_token_id=d["pad_token_id"], **kw).numpy()
            return out[:, 1:] if d["seq2seq"] else out[:, ids.shape[1]:]

        return gen

    @staticmethod
    def logits(model, d, window):
        import torch

        with torch.inference_mode():
            return model(torch.tensor([window])).logits[0].float().numpy()

"""optimum's ORTModelForCausalLM / ORTModelForSeq2SeqLM as a peer-benchmark engine (transformers' ``generate`` over
onnxruntime sessions); the same fp32 weights as PyTorch, so no agreement figure."""
from __future__ import annotations

from .torch_engine import TorchWorker


class OptimumWorker(TorchWorker):
    @staticmethod
    def imports(d):
        TorchWorker.imports(d)
        import optimum.onnxruntime  # noqa: F401

    @staticmethod
    def load(d):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = d["threads"]
        so.inter_op_num_threads = 1
        cls = ORTModelForSeq2SeqLM if d["seq2seq"] else ORTModelForCausalLM
        return cls.from_pretrained(d["path"], provider="CPUExecutionProvider", session_options=so, use_cache=True,
                                   use_io_binding=False)

    logits = None  # the same fp32 weights as PyTorch: no agreement figure

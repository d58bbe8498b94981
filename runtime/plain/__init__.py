"""The plain KV layout: the graphs optimum-onnx exports (``model.onnx``; T5's ``encoder_model.onnx`` +
``decoder_model_merged.onnx``; manifest without ``kv_layout``).

The past goes in as inputs and comes back as new ``present`` outputs each step (``kv_cache.py``: ``KVCache`` holds
them, on the CPU or as device OrtValues, and gathers rows for beam search); rows are LEFT padded with an attention
mask over past + new tokens. Runs on every execution provider.

* ``causal_lm.py``: ``CausalLM`` (GPT-2, Llama family), the base of the fused twin.
* ``seq2seq_lm.py``: ``Seq2SeqLM`` (T5: encoder once, then the merged decoder).
* ``kv_cache.py``: ``KVCache``, ``past_input_names``, ``take_rows``.
"""
from .causal_lm import CausalLM
from .kv_cache import KVCache
from .seq2seq_lm import Seq2SeqLM

__all__ = ["CausalLM", "Seq2SeqLM", "KVCache"]

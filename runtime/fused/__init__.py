"""The fused KV layout: our own GroupQueryAttention graphs (``export/fused_*.py``; manifest
``"kv_layout": "fused-gqa"``).

The KV cache lives in preallocated buffers (``kv_buffers.py``: views of one anonymous mmap, doubled when full)
bound once as both past and present, so a step appends in place; rows are RIGHT padded (``start`` re-packs
left-padded prompts) and beam steps reorder buffer rows in place. CPU only (numpy-backed buffers). The classes
subclass the plain ones and change only how a step feeds the graph and keeps the cache.

* ``causal_lm.py``: ``FusedCausalLM`` (GPT-2, Llama family), ``KV_LAYOUT``.
* ``hybrid_lm.py``: ``FusedHybridLM`` (LFM2: convolution states beside the KV buffers); ``causal_class`` picks it.
* ``seq2seq_lm.py``: ``FusedSeq2SeqLM`` (T5: the cross K/V computed once by the encoder graph).
* ``kv_buffers.py``: ``KVBuffers``, ``mapped_buffers``, ``reorder_in_place``, ``reorder_plan``.
* ``buffer_pool.py``: ``BufferPool`` (freed buffer mappings kept resident for reuse; ``model.keep_kv_buffers``).
"""
from .causal_lm import KV_LAYOUT, FusedCausalLM
from .hybrid_lm import FusedHybridLM
from .kv_buffers import KVBuffers
from .seq2seq_lm import FusedSeq2SeqLM

__all__ = ["FusedCausalLM", "FusedHybridLM", "FusedSeq2SeqLM", "KVBuffers", "KV_LAYOUT", "causal_class"]


def causal_class(manifest: dict) -> type:
    """A fused decoder-only artifact's manifest -> its runtime class: ``FusedHybridLM`` when the graph takes
    convolution states (``conv_gather``), else ``FusedCausalLM``."""
    return FusedHybridLM if "conv_gather" in manifest["graphs"]["decoder"]["inputs"] else FusedCausalLM

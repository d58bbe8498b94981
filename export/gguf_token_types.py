"""GGUF token types as llama.cpp uses them (``src/llama-vocab.cpp: llama_vocab::impl::load``).

``tokenizer.ggml.token_type`` is not the whole story: llama.cpp promotes some tokens to CONTROL by their text, whatever
the file says, and that decides whether the text is cut out as an added token with special-token parsing off
(CONTROL tokens are then plain text, USER_DEFINED ones are still cut out). Gemma 3's ``</s>`` is USER_DEFINED in the
file but an end-of-generation text for llama.cpp, hence CONTROL: ``"</s>"`` is parsed only with special tokens on.

* end-of-generation texts (``<|eot_id|>``, ``<|im_end|>``, ``<end_of_turn>``, ``</s>``, ``<eos>``, ...) -> CONTROL;
* fill-in-the-middle texts (``<|fim_prefix|>``, ``<PRE>``, ...) -> CONTROL (llama.cpp: the first found of each kind
  when the GGUF names none; vocabularies have at most one of each);
* ``</s>`` back to NORMAL when the end-of-generation set also holds ``<|tool_response>`` or ``<|plamo:eos|>``;
* gpt-oss's ``<|channel|>``, ``<|message|>``, ``<|start|>``, ``<|constrain|>`` -> USER_DEFINED.
"""
from __future__ import annotations

__all__ = ["NORMAL", "UNKNOWN", "CONTROL", "USER_DEFINED", "UNUSED", "BYTE", "llama_cpp_token_types", "eog_texts",
           "vocabulary_lists"]

# llama.cpp's llama_token_type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

_EOG_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[",
})
_FIM_TEXTS = frozenset({
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>", "\u2581<PRE>",
    "<|code_prefix|>", "<|prefix|>",
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>", "\u2581<SUF>",
    "<|code_suffix|>", "<|suffix|>",
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>", "\u2581<MID>",
    "<|code_middle|>", "<|middle|>",
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    "<|file_sep|>",
})
_NORMAL_S_MARKERS = ("<|tool_response>", "<|plamo:eos|>")
_GPT_OSS_USER_DEFINED = frozenset({"<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"})


def vocabulary_lists(meta) -> tuple[list[str], list[float], list[int]]:
    """A GGUF's metadata -> (``tokenizer.ggml.tokens``, ``scores``, ``token_type`` as ints), one entry per token
    (llama.cpp's defaults where the scores or types are absent: 0.0, NORMAL); ExportError naming the key otherwise."""
    from onnxlm.runtime.errors import ExportError

    tokens = meta.get("tokenizer.ggml.tokens")
    if not tokens:
        raise ExportError("GGUF metadata lacks tokenizer.ggml.tokens")
    tokens, n = list(tokens), len(tokens)
    scores = meta.get("tokenizer.ggml.scores")
    scores = [0.0] * n if scores is None else list(scores)
    if len(scores) != n:
        raise ExportError(f"GGUF metadata has {n} tokens but {len(scores)} tokenizer.ggml.scores")
    types = meta.get("tokenizer.ggml.token_type") or [NORMAL] * n
    if len(types) != n:
        raise ExportError(f"GGUF metadata has {n} tokens but {len(types)} tokenizer.ggml.token_type")
    return tokens, scores, [int(t) for t in types]


def eog_texts() -> frozenset[str]:
    """The token texts llama.cpp ends a generation at (its end-of-generation set, found by text)."""
    return _EOG_TEXTS


def llama_cpp_token_types(tokens: list[str], token_types: list[int]) -> list[int]:
    """``token_types`` (GGUF ``tokenizer.ggml.token_type``) with llama.cpp's by-text changes applied."""
    out = list(token_types)
    present = set(tokens)
    normal_s = "</s>" in present and any(m in present for m in _NORMAL_S_MARKERS)
    for i, t in enumerate(tokens):
        if t in _EOG_TEXTS or t in _FIM_TEXTS:
            out[i] = CONTROL
        if t == "</s>" and normal_s:
            out[i] = NORMAL
        if t in _GPT_OSS_USER_DEFINED:
            out[i] = USER_DEFINED
    return out

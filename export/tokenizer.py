"""The byte-level tokenizer used by recipes (``tokenizers`` format, no training)."""
from __future__ import annotations

from typing import Any

from onnxlm.runtime.errors import ExportError
from onnxlm.runtime.tokenizer import bytes_to_unicode  # noqa: F401  (public here too: tests/gguf_vocabs.py)


def build_byte_level_tokenizer(spec: dict[str, Any]):
    """A byte-level tokenizer built from a recipe's tokenizer spec, without training.

    Ids 0..255 are the 256 bytes (spelled with the ByteLevel alphabet, so any UTF-8 text round-trips);
    ``spec["special_tokens"]`` (a list of strings) follow from id 256 on. ``spec["post_processor"]``, when given,
    is ``{"single": "...", "pair": "..."}`` for a TemplateProcessing post-processor (e.g. ``"$A </s>"``).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    if spec.get("type", "byte-level") != "byte-level":
        raise ExportError(f"tokenizer.type: only 'byte-level' is supported in recipes, got {spec.get('type')!r}")
    # ByteLevel maps byte b to a printable character; order the vocabulary by byte value.
    byte_to_char = bytes_to_unicode()
    vocab = {byte_to_char[b]: b for b in range(256)}
    if set(vocab) != set(pre_tokenizers.ByteLevel.alphabet()):  # pragma: no cover - tokenizers changed its alphabet
        raise ExportError("tokenizers' ByteLevel alphabet is not the GPT-2 byte mapping; cannot build a byte-level vocab")
    specials = list(spec.get("special_tokens", []))
    for i, tok in enumerate(specials):
        vocab[tok] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=spec.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    pp = spec.get("post_processor")
    if pp:
        used = [s for s in specials if s in pp.get("single", "") or s in pp.get("pair", "")]
        tok.post_processor = processors.TemplateProcessing(
            single=pp["single"], pair=pp.get("pair", pp["single"] + " $B"), special_tokens=[(s, vocab[s]) for s in used]
        )
    return tok


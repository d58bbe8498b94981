"""Added tokens' text through a byte-level BPE vocabulary's decoder, as llama.cpp prints them.

A GGUF's byte-level BPE vocabulary (``tokenizer.ggml.model = "gpt2"``) holds its ordinary tokens in the byte-level
alphabet (``Ġ`` for a space, ``Ã©`` for the two bytes of ``é``) but its control and user-defined tokens as plain
text (llama.cpp's converter writes transformers' added tokens as they are), and llama.cpp's ``token_to_piece``
copies those as they are. tokenizers passes every token, added ones too, through the model's decoder:
``ByteLevel`` reads a plain ``é`` (the alphabet's character for the byte 0xE9) as that one byte, so ``Größe`` or
``café`` decoded to ``Gr��e`` / ``caf�``, and a space or newline inside an added token vanished.

``byte_level_decoder(texts)`` puts, before ``ByteLevel``, one ``Replace`` per added token whose text the alphabet
would change, anchored to the whole token's text (``^...$``: an ordinary token whose byte-level text merely holds
those characters is left alone), that writes the token in the alphabet: ``ByteLevel`` then gives back its text.
"""
from __future__ import annotations

from tokenizers import Regex, decoders

from onnxlm.runtime.tokenizer import bytes_to_unicode

__all__ = ["byte_level_text", "byte_level_decoder"]

_ALPHABET = bytes_to_unicode()  # GPT-2's byte -> character table, the one ByteLevel uses


def byte_level_text(text: str) -> str:
    """Plain text -> its UTF-8 bytes in the byte-level alphabet (what ``ByteLevel`` decodes back to ``text``)."""
    return "".join(_ALPHABET[b] for b in text.encode("utf-8"))


def _whole(text: str) -> Regex:
    """A pattern matching exactly ``text`` (every character but letters and digits as a ``\\x{..}`` escape, which
    the Rust regex engine reads whatever the character)."""
    return Regex("^" + "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text) + "$")


def byte_level_decoder(texts: list[str]):
    """Added tokens' plain texts -> the decoder of a byte-level vocabulary holding them: ``ByteLevel``, after a
    ``Replace`` for each text the alphabet would change (``Sequence``; ``ByteLevel`` alone where none)."""
    steps = [decoders.Replace(_whole(t), byte_level_text(t)) for t in dict.fromkeys(texts)
             if t and byte_level_text(t) != t]
    return decoders.Sequence([*steps, decoders.ByteLevel()]) if steps else decoders.ByteLevel()

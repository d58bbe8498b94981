"""Text <-> token ids through the artifact's tokenizer.json (HF `tokenizers`), plus batching with padding."""
from __future__ import annotations

import operator
import threading
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from .errors import InputError, ModelFileError, ParameterError
from .heap import release_free_heap
from .versions import check_tokenizers


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer`; encodes with the tokenizer's own post-processor (T5 appends </s>)."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        # ids of added tokens marked special: decode(skip_special_tokens=True) leaves them out
        self.special_ids = {i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special}
        self._encoding = threading.Lock()  # split_special_tokens sets a flag of the shared tokenizer for one call

    @classmethod
    def from_file(cls, path: Path) -> "TextTokenizer":
        if not path.is_file():
            raise ModelFileError(f"{path.name} is missing from {path.parent}; text inputs need it "
                                 "(token ids still work)", str(path))
        check_tokenizers()
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise ModelFileError(f"{path} is not a valid tokenizers file: {exc}", str(path)) from exc
        release_free_heap()  # what the JSON parse freed goes back to the kernel (heap.py)
        return cls(tokenizer)

    def encode(self, text: str, add_special_tokens: bool = True, *, split_special_tokens: bool = False) -> list[int]:
        """str -> ids (list of int). ``add_special_tokens``: the post-processor's (BOS, T5's </s>);
        ``split_special_tokens`` (transformers' name; llama.cpp's ``parse_special=False``): special-token strings in
        the text (``"<|im_end|>"``) are read as plain text, not as those tokens."""
        if not isinstance(text, str):
            raise InputError(f"inputs: expected str, got {type(text).__name__}")
        for name, flag in (("add_special_tokens", add_special_tokens), ("split_special_tokens", split_special_tokens)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ParameterError(name, f"got {flag!r}; allowed: True or False")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8, kept by surrogateescape
            raise InputError(f"inputs: the text is not valid Unicode (U+{ord(text[exc.start]):04X} at character "
                             f"{exc.start} is a lone surrogate, e.g. a byte that was not UTF-8); give UTF-8 text") \
                from None
        return self.encoding(text, add_special_tokens, split_special_tokens=split_special_tokens).ids

    def encoding(self, text: str, add_special_tokens: bool = True, *, split_special_tokens: bool = False):
        """str -> the tokenizers ``Encoding`` (ids, offsets, ...), as :meth:`encode` encodes it. Encode through
        here, not through ``self.tokenizer``: a call with ``split_special_tokens`` sets the shared tokenizer's flag
        for its own call, under the lock every encoding takes."""
        with self._encoding:
            before = self.tokenizer.encode_special_tokens
            self.tokenizer.encode_special_tokens = split_special_tokens
            try:
                return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)
            finally:
                self.tokenizer.encode_special_tokens = before

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """ids (a sequence of token ids >= 0) -> str. An id past the tokenizer's vocabulary (a padded head's) decodes
        to nothing, as transformers' decode skips it."""
        if not isinstance(skip_special_tokens, (bool, np.bool_)):
            raise ParameterError("skip_special_tokens", f"got {skip_special_tokens!r}; allowed: True or False")
        return self.tokenizer.decode(token_ids(ids, "ids"), skip_special_tokens=bool(skip_special_tokens))

    def token_to_id(self, token: str) -> int | None:
        """A token's text -> its id, or None where the vocabulary has no such token."""
        if not isinstance(token, str):
            raise InputError(f"token: expected str, got {type(token).__name__}")
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """A token id >= 0 -> its text, or None past the vocabulary."""
        return self.tokenizer.id_to_token(token_ids([token_id], "token_id")[0])


def token_ids(ids, where: str) -> list[int]:
    """Token ids as given (a list, tuple, range, 1-D integer array or tensor, any iterable of integers; numpy and
    0-d integer arrays welcome) -> [int], each in [0, 2**32) (the tokenizers library's u32); InputError naming
    ``where`` otherwise (a float, a bool, a string of digits, a nested list are not ids)."""
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise InputError(f"{where}: expected a 1-D array of integer token ids, got {ids.dtype} of shape {ids.shape}")
        out = ids.astype(np.int64).tolist()
    elif isinstance(ids, (str, bytes, bytearray, memoryview, dict, set, frozenset)) or not hasattr(ids, "__iter__") \
            or getattr(ids, "ndim", 1) != 1:  # text, bytes, unordered collections, a 2-D tensor: no id sequence
        raise InputError(f"{where}: expected a list of token ids, got {type(ids).__name__}")
    else:
        out = [_token_id(i, where) for i in ids]
    bad = [i for i in out if not 0 <= i < 2**32]
    if bad:
        raise InputError(f"{where}: token id {bad[0]} is out of range; allowed: 0 <= id < 2**32")
    return out


def _token_id(value, where: str) -> int:
    """One id: an integer (Python, numpy, a 0-d integer array or tensor: ``__index__``), never a bool or a float."""
    if not isinstance(value, (bool, np.bool_)) and getattr(value, "ndim", 0) == 0 \
            and "bool" not in str(getattr(value, "dtype", "")):  # a bool tensor's element is no id either
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise InputError(f"{where}: expected integer token ids, got {type(value).__name__} {value!r:.40}")


def pad_batch(rows: list[list[int]], pad_id: int, side: str = "left") -> tuple[np.ndarray, np.ndarray]:
    """rows of ids -> input_ids [b, t] int64, attention_mask [b, t] int64, padded on `side` ('left' | 'right')."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return ids, mask


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}

"""The Unicode categories llama.cpp's BPE pre-tokenizers see: Unicode 15.1's, where tokenizers' regex engine
(Oniguruma) knows Unicode 16.

llama.cpp classifies code points from its own table (Unicode 15.1: CJK Extension I is there, Unicode 16's scripts
are not). A code point Unicode 16 assigned (Egyptian Hieroglyphs Extended-A, Garay, Kirat Rai, Cyrillic TJE,
Outlined digits, ...) is undefined there: neither letter, digit, mark nor punctuation, so ``[^\\s\\p{L}\\p{N}]``
takes it. In tokenizers' regexes ``\\p{L}`` takes it, and the split differs: ``"a\\U000141e8<S"`` is ``a𔇨`` +
``<S`` in tokenizers and ``a`` + ``𔇨<`` + ``S`` in llama.cpp (a fuzz run over random texts found it on Llama 3,
Tekken and o200k-style vocabularies). ``as_unicode_15_1(regex)`` rewrites each ``\\p{L}``, ``\\p{N}``, ``\\p{M}``
and ``\\p{P}`` to the class without those code points (Oniguruma's ``&&``), inside a bracket too.

``UNICODE_16_ADDITIONS`` holds, per category, the code points tokenizers' ``\\p{X}`` matches that Unicode 15.1 does
not file under X (nothing is the other way round: Unicode 16 only added). ``python -m onnxlm.export.unicode_gap``
prints it again from a ``unicodedata2==15.1.0`` install (``pip install unicodedata2==15.1.0``; not a dependency)
and the installed tokenizers, for a tokenizers release on a newer Unicode.
"""
from __future__ import annotations

import re

#: category -> ((first, last), ...) code points tokenizers' \p{category} matches and Unicode 15.1 does not
UNICODE_16_ADDITIONS: dict[str, tuple[tuple[int, int], ...]] = {
    "L": ((0x01C89, 0x01C8A), (0x0A7CB, 0x0A7CD), (0x0A7DA, 0x0A7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
          (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E),
          (0x11390, 0x113B5), (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0),
          (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF), (0x1E5D0, 0x1E5ED),
          (0x1E5F0, 0x1E5F0)),
    "N": ((0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x16130, 0x16139), (0x16D70, 0x16D79),
          (0x1CCF0, 0x1CCF9), (0x1E5F1, 0x1E5FA)),
    "M": ((0x00897, 0x00897), (0x10D69, 0x10D6D), (0x10EFC, 0x10EFC), (0x113B8, 0x113C0), (0x113C2, 0x113C2),
          (0x113C5, 0x113C5), (0x113C7, 0x113CA), (0x113CC, 0x113D0), (0x113D2, 0x113D2), (0x113E1, 0x113E2),
          (0x11F5A, 0x11F5A), (0x1611E, 0x1612F), (0x1E5EE, 0x1E5EF)),
    "P": ((0x01B4E, 0x01B4F), (0x01B7F, 0x01B7F), (0x10D6E, 0x10D6E), (0x113D4, 0x113D5), (0x113D7, 0x113D8),
          (0x11BE1, 0x11BE1), (0x16D6D, 0x16D6F), (0x1E5FF, 0x1E5FF)),
}


def _class(category: str) -> str:
    """``\\p{X}`` without Unicode 16's additions, as an Oniguruma class (valid inside a bracket as well)."""
    ranges = "".join(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}"
                     for a, b in UNICODE_16_ADDITIONS[category])
    return f"[\\p{{{category}}}&&[^{ranges}]]"


def as_unicode_15_1(regex: str) -> str:
    """A pre-tokenizer regex -> the same with ``\\p{L}``, ``\\p{N}``, ``\\p{M}``, ``\\p{P}`` as Unicode 15.1 has
    them (llama.cpp's categories)."""
    return re.sub(r"\\p\{([LNMP])\}", lambda m: _class(m.group(1)), regex)


def _additions() -> dict[str, list[tuple[int, int]]]:  # pragma: no cover - run by hand (module docstring)
    import unicodedata2
    from tokenizers import Regex, pre_tokenizers

    if unicodedata2.unidata_version != "15.1.0":
        raise SystemExit(f"unicodedata2 holds Unicode {unicodedata2.unidata_version}; install unicodedata2==15.1.0")
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(map(chr, points))
    out = {}
    for cat in UNICODE_16_ADDITIONS:
        runs = pre_tokenizers.Split(Regex(f"\\p{{{cat}}}+"), behavior="isolated").pre_tokenize_str(text)
        matched = {ord(ch) for piece, _ in runs
                   if not pre_tokenizers.Split(Regex(f"\\p{{{cat}}}"), behavior="removed").pre_tokenize_str(piece[0])
                   for ch in piece}
        old = {c for c in points if unicodedata2.category(chr(c)).startswith(cat)}
        if old - matched:
            raise SystemExit(f"\\p{{{cat}}} lacks {len(old - matched)} code points of Unicode 15.1's: not a superset")
        ranges: list[list[int]] = []
        for c in sorted(matched - old):
            if ranges and ranges[-1][1] == c - 1:
                ranges[-1][1] = c
            else:
                ranges.append([c, c])
        out[cat] = [tuple(r) for r in ranges]
    return out


if __name__ == "__main__":  # pragma: no cover
    for cat, ranges in _additions().items():
        print(f'    "{cat}": ({", ".join(f"(0x{a:05X}, 0x{b:05X})" for a, b in ranges)}),')

"""A short text for the quality gate of tiny random-weight models whose variants are forced through it.

Their near-uniform logits make the gate's figures meaningless (the tests check the artifact, not the figures), and
the shipped text (11,075 bytes) is as many tokens with their byte-level vocabularies: 2-4 s a gate, ~90 s of the
suite. A forced variant takes any text (``onnxlm.export.quality.check_quality_text``); the tests of the gate's own
measures and early stop (tests/test_quantize.py) and the real models' gates keep the shipped text."""
from onnxlm.export.quality import QUALITY_TEXT

#: the shipped text's first ~800 characters, cut at a space (~800 tokens at one byte a token)
SHORT_GATE_TEXT = QUALITY_TEXT.read_text(encoding="utf-8")[:800].rsplit(" ", 1)[0]

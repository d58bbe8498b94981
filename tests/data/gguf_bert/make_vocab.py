"""Write vocab.txt: a small uncased WordPiece vocabulary (BERT's layout: one token a line, ``##`` continuations,
[PAD] [UNK] [CLS] [SEP] [MASK] first) for the tiny BERT GGUF of tests/gguf_bert.py.

No package here ships a real BERT ``vocab.txt``, so one is trained with ``tokenizers``' WordPieceTrainer (BERT's
normalizer and pre-tokenizer) on varied text: the tokenizer corpus (tests/data/gguf_tokenizers/corpus.json: prose,
accents, Cyrillic, Greek, CJK, Korean, Arabic, emoji, code) and the docstrings of a few standard-library modules.
The file is stored; run this by hand only to make another one::

    .venv/bin/python tests/data/gguf_bert/make_vocab.py
"""
from __future__ import annotations

import inspect
import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
SIZE = 3000
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def texts() -> list[str]:
    import argparse
    import collections
    import json as json_module
    import pathlib as pathlib_module
    import textwrap

    corpus = json.loads((HERE.parent / "gguf_tokenizers" / "corpus.json").read_text(encoding="utf-8"))["texts"]
    docs = []
    for module in (argparse, collections, json_module, pathlib_module, textwrap, inspect):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                docs.append(doc)
    return corpus * 3 + docs


def main() -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=SIZE, special_tokens=SPECIALS, min_frequency=2,
                                        show_progress=False)
    tok.train_from_iterator(texts(), trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    (HERE / "vocab.txt").write_text("".join(t + "\n" for t, _ in vocab), encoding="utf-8")
    print(f"vocab.txt: {len(vocab)} tokens")


if __name__ == "__main__":
    main()

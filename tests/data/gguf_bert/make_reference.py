"""Write reference.json: llama.cpp's token ids and embeddings for the tiny BERT GGUF of tests/gguf_bert.py.

Never run in CI (it needs llama-cpp-python); run it by hand after changing the corpus, the vocabulary or the tiny
model::

    .venv-peers/bin/python tests/data/gguf_bert/make_reference.py [--onnxlm-python .venv/bin/python]

``--onnxlm-python`` (default: the repository's ``.venv/bin/python``) has onnxlm, torch, transformers and gguf: it
writes the GGUF files (tests/gguf_bert.py, the code the tests use) into a temporary directory and prints their
sha256. This interpreter only needs ``llama_cpp``.

* ``ids``: every text of ``TEXTS`` (tests/data/gguf_tokenizers/corpus.json's texts, then ``EXTRA``: WordPiece's own
  cases) tokenized by ``Llama(path, vocab_only=True).tokenize(text.encode(), add_bos, special)`` three ways:
  ``special`` (add_bos=True: [CLS] first, [SEP] last; special tokens parsed), ``plain`` (add_bos=True,
  special=False) and ``special_no_add`` (add_bos=False, special=True);
* ``embeddings``: ``Llama(path, embedding=True, pooling_type=...).create_embedding(EMBED_TEXTS)`` for the F32 file
  with mean pooling (the file's own) and with cls pooling, and for the Q8_0 file with mean pooling: llama.cpp's
  vectors as it returns them (not normalised).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
EXTRA = [
    "HELLO World!", "[CLS]", "[SEP]", "[CLS] hello [SEP] world [SEP]", "x[SEP]y[MASK]z",
    "[cls] [Sep] [ MASK ]", "[CLS][SEP][MASK][PAD][UNK]", "Café naïve résumé 안녕 日本語", "İstanbul ΣΟΦΟΣ. Straße",
    "x\u0301y e\u0301 \u0344", "\u00a0\u2000a\u2001b\u180ec\u200bd\ufeffe\u00adf", "\ue000private\U000f0000 use",
    "\u01c4emal \u01c5 \u01c6", "\x00nul\ufffdrep", "a\u2581b \u2581ab \u2581\u2581x y\u2581 ,\u2581z",
    "unbelievable tokenization of WordPiece subwords", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "1,234.56 $5 50% a+b=c <tag> x^2 `code` a|b ~home", "\u3000\u3000full\u3000width\u3000spaces",
]
EMBED_TEXTS = ["Hello world, how are you?", "a", "The stock market fell today.",
               "Café, naïve, résumé: 日本語のテキスト", "def f(x):\n    return x + 1", "[CLS] spelled out [SEP]"]
VARIANTS = {"f32": None, "q8_0": "Q8_0"}


def texts() -> list[str]:
    corpus = json.loads((HERE.parent / "gguf_tokenizers" / "corpus.json").read_text(encoding="utf-8"))["texts"]
    return corpus + EXTRA


def _write_files(onnxlm_python: str, workdir: str) -> dict[str, tuple[str, str]]:
    code = ("import json, sys; sys.path.insert(0, 'tests'); import gguf_bert; "
            f"print(json.dumps({{k: ({workdir!r} + f'/tiny-bert-{{k}}.gguf', gguf_bert.write_tiny_bert_gguf("
            f"{workdir!r} + f'/tiny-bert-{{k}}.gguf', block_type=b)) for k, b in {VARIANTS!r}.items()}}))")
    out = subprocess.run([onnxlm_python, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def llama_cpp_ids(path: str, corpus: list[str]) -> dict:
    """llama.cpp's ids of each text for the GGUF file ``path`` (its vocabulary only), in the three modes the tests
    compare: special (BOS/EOS added, special-token strings read), plain (added, read as text), special_no_add."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    ids = {"special": [], "plain": [], "special_no_add": []}
    for t in corpus:
        b = t.encode("utf-8")
        ids["special"].append(llm.tokenize(b, add_bos=True, special=True))
        ids["plain"].append(llm.tokenize(b, add_bos=True, special=False))
        ids["special_no_add"].append(llm.tokenize(b, add_bos=False, special=True))
    del llm
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    import llama_cpp

    all_texts = texts()
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_files(args.onnxlm_python, tmp)
        ids = llama_cpp_ids(files["f32"][0], all_texts)
        embeddings = {}
        for name, variant, pooling in (("f32-mean", "f32", 1), ("f32-cls", "f32", 2), ("q8_0-mean", "q8_0", 1)):
            llm = llama_cpp.Llama(model_path=files[variant][0], embedding=True, pooling_type=pooling, n_ctx=128,
                                  verbose=False)
            embeddings[name] = [d["embedding"] for d in llm.create_embedding(EMBED_TEXTS)["data"]]
            del llm
    record = {"llama_cpp_python": llama_cpp.__version__, "sha256": {k: v[1] for k, v in files.items()},
              "texts": all_texts, "ids": ids, "embed_texts": EMBED_TEXTS, "embeddings": embeddings}
    (HERE / "reference.json").write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n",
                                         encoding="utf-8")
    print(f"reference.json: {len(all_texts)} texts, {len(embeddings)} embedding sets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write <vocab>.ids.json: llama.cpp's token ids for every text of corpus.json, for each GGUF vocabulary.

Never run in CI (it needs llama-cpp-python); run it by hand after changing the corpus or the vocabularies::

    .venv-peers/bin/python tests/data/gguf_tokenizers/make_reference_ids.py [--vocab NAME ...] \
        [--onnxlm-python .venv/bin/python]

``--onnxlm-python`` (default: the repository's ``.venv/bin/python``) is the interpreter with onnxlm and gguf: it
locates the real GGUF files and writes the tokenizer-only ones (tests/gguf_vocabs.py, the same code the tests use)
into a temporary directory. This interpreter only needs ``llama_cpp``.

Each text is tokenized by ``llama_cpp.Llama(model_path, vocab_only=True).tokenize(text.encode(), add_bos, special)``
three ways: ``special`` (add_bos=True, i.e. BOS/EOS as the GGUF says, and special tokens parsed), ``plain``
(add_bos=True, special=False: control tokens are text, user-defined ones still parsed) and ``special_no_add``
(add_bos=False, special=True). The file also records the sha256 of the vocabulary's source files and the
llama-cpp-python version.
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


def _vocab_files(onnxlm_python: str, workdir: str, names: list[str] | None) -> dict[str, list[str]]:
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); import gguf_vocabs; "
        f"print(json.dumps(gguf_vocabs.write_all({workdir!r}, {names!r})))"
    )
    out = subprocess.run([onnxlm_python, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", action="append", help="only this vocabulary (repeatable; default: all)")
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    import llama_cpp

    texts = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))["texts"]
    with tempfile.TemporaryDirectory() as tmp:
        files = _vocab_files(args.onnxlm_python, tmp, args.vocab)
        for name, (gguf_path, *shas) in files.items():
            llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
            ids = {"special": [], "plain": [], "special_no_add": []}
            for t in texts:
                b = t.encode("utf-8")
                ids["special"].append(llm.tokenize(b, add_bos=True, special=True))
                ids["plain"].append(llm.tokenize(b, add_bos=True, special=False))
                ids["special_no_add"].append(llm.tokenize(b, add_bos=False, special=True))
            record = {
                "vocab": name,
                "source_sha256": shas,
                "llama_cpp_python": llama_cpp.__version__,
                "n_texts": len(texts),
                "ids": ids,
            }
            out = HERE / f"{name}.ids.json"
            out.write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
            print(f"{out.name}: {len(texts)} texts", file=sys.stderr)
            del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write <vocab>.ids.json: llama.cpp's token ids (and detokenized text) for every text of corpus.json, for each UGM
vocabulary of ugm_vocabs.py.

Never run in CI (it needs llama-cpp-python); run it by hand after changing the corpus or the vocabularies::

    .venv-peers/bin/python tests/data/gguf_ugm/make_reference_ids.py [--vocab NAME ...] \
        [--onnxlm-python .venv/bin/python]

``--onnxlm-python`` (default: the repository's ``.venv/bin/python``) is the interpreter with gguf: it writes the
tokenizer-only GGUF files (ugm_vocabs.py, the same code the tests build their metadata with) into a temporary
directory. This interpreter only needs ``llama_cpp``.

Each text is tokenized by ``llama_cpp.Llama(model_path, vocab_only=True).tokenize(text.encode(), add_bos, special)``
three ways: ``special`` (add_bos=True, i.e. BOS/EOS as the GGUF says, special tokens parsed), ``plain`` (add_bos=True,
special=False: control tokens are text, user-defined ones still parsed) and ``special_no_add`` (add_bos=False,
special=True). ``detokenized``: llama.cpp's ``llama_detokenize`` (remove_special=False, unparse_special=False) of the
``special_no_add`` ids. The file also records the sha256 of the source files and the llama-cpp-python version.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _vocab_files(onnxlm_python: str, workdir: str, names: list[str] | None) -> tuple[dict[str, str], list[str]]:
    code = (
        f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import ugm_vocabs; "
        f"print(json.dumps([ugm_vocabs.write_all({workdir!r}, {names!r}), ugm_vocabs.source_sha256()]))"
    )
    out = subprocess.run([onnxlm_python, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    files, shas = json.loads(out.stdout.strip().splitlines()[-1])
    return files, shas


def _detokenize(llama_cpp, llm, ids: list[int]) -> str:
    """llama.cpp's own detokenize (llama-cpp-python's Llama.detokenize pieces tokens together without it)."""
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    size = 4 * len(ids) * 16 + 16
    buf = ctypes.create_string_buffer(size)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, size, False, False)
    if n < 0:
        raise RuntimeError(f"detokenize needs {-n} bytes")
    return buf.raw[:n].decode("utf-8", errors="replace")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", action="append", help="only this vocabulary (repeatable; default: all)")
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    import llama_cpp

    texts = json.loads((HERE / "corpus.json").read_text(encoding="utf-8"))["texts"]
    with tempfile.TemporaryDirectory() as tmp:
        files, shas = _vocab_files(args.onnxlm_python, tmp, args.vocab)
        for name, gguf_path in files.items():
            llm = llama_cpp.Llama(model_path=gguf_path, vocab_only=True, verbose=False)
            ids = {"special": [], "plain": [], "special_no_add": []}
            detok = []
            for t in texts:
                b = t.encode("utf-8")
                ids["special"].append(llm.tokenize(b, add_bos=True, special=True))
                ids["plain"].append(llm.tokenize(b, add_bos=True, special=False))
                ids["special_no_add"].append(llm.tokenize(b, add_bos=False, special=True))
                detok.append(_detokenize(llama_cpp, llm, ids["special_no_add"][-1]))
            record = {
                "vocab": name,
                "source_sha256": shas,
                "llama_cpp_python": llama_cpp.__version__,
                "n_texts": len(texts),
                "ids": ids,
                "detokenized": detok,
            }
            out = HERE / f"{name}.ids.json"
            out.write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
            print(f"{out.name}: {len(texts)} texts", file=sys.stderr)
            del llm
    return 0


if __name__ == "__main__":
    sys.exit(main())

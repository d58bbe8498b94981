"""Write reference.json: llama.cpp's token ids, hidden states and embeddings for the tiny nomic-bert GGUF of
tests/gguf_nomic_bert.py.

Never run in CI (it needs llama-cpp-python); run it by hand after changing the texts or the tiny model::

    .venv-peers/bin/python tests/data/gguf_nomic_bert/make_reference.py [--onnxlm-python .venv/bin/python]

``--onnxlm-python`` (default: the repository's ``.venv/bin/python``) has onnxlm, gguf and numpy: it writes the GGUF
files (tests/gguf_nomic_bert.py, the code the tests use) into a temporary directory and prints their sha256. This
interpreter only needs ``llama_cpp``.

* ``ids``: ``Llama.tokenize(text.encode(), add_bos=True, special=False)`` of every text of ``EMBED_TEXTS``: the ids
  ``create_embedding`` runs ([CLS] first, [SEP] last; "[CLS]" written in a text is text);
* ``hidden``: ``Llama(path, embedding=True, pooling_type=0).embed(text)`` of each text (alone) for the F32 file
  and for the F32 file with attention biases (``attention_bias=True``): every token's output state (pooling none:
  the last block's output, after its layer_output_norm);
* ``embeddings``: ``Llama(path, embedding=True, pooling_type=...).create_embedding(EMBED_TEXTS)`` for the F32 file
  with mean pooling (the file's own) and with cls pooling, and for the Q8_0 file with mean pooling: llama.cpp's
  vectors as it returns them (not normalised);
* ``long``: for the "long" file (nomic's head size 64 and context 2048) and ``LONG_TEXT`` (over a thousand
  tokens): its ids, its first 8 tokens' states, and its mean and cls vectors.
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
EMBED_TEXTS = ["Hello world, how are you?", "a", "The stock market fell today.",
               "Café, naïve, résumé: 日本語のテキスト", "def f(x):\n    return x + 1", "[CLS] spelled out [SEP]",
               "search_query: what is the capital of France? " * 4
               + "search_document: Paris is the capital and largest city of France, on the Seine."]
#: over a thousand tokens for the "long" file (nomic's head size and context): rotary positions far out
LONG_TEXT = " ".join(f"word{i % 97} the quick brown fox {i}" for i in range(150))


def _f32(values):
    """Nested lists of llama.cpp's float32 values, each written with the 9 digits that give its float32 back."""
    return [_f32(v) for v in values] if isinstance(values, list) else float(f"{values:.9g}")


def _write_files(onnxlm_python: str, workdir: str) -> dict[str, tuple[str, str]]:
    code = ("import json, sys; sys.path.insert(0, 'tests'); import gguf_nomic_bert as g; "
            f"print(json.dumps(g.write_reference_files({workdir!r})))")
    out = subprocess.run([onnxlm_python, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    import llama_cpp

    with tempfile.TemporaryDirectory() as tmp:
        files = _write_files(args.onnxlm_python, tmp)
        llm = llama_cpp.Llama(model_path=files["f32"][0], embedding=True, pooling_type=0, n_ctx=128, verbose=False)
        ids = [llm.tokenize(t.encode("utf-8"), add_bos=True, special=False) for t in EMBED_TEXTS]
        # one text a call: llama-cpp-python 0.3.36's embed, pooling none, reads a batch's second and later
        # sequences at the wrong offset (``pos += size``, not ``size * n_embd``)
        hidden = {"f32": [llm.embed(t) for t in EMBED_TEXTS]}
        del llm
        llm = llama_cpp.Llama(model_path=files["bias"][0], embedding=True, pooling_type=0, n_ctx=128, verbose=False)
        hidden["bias"] = [llm.embed(t) for t in EMBED_TEXTS]
        del llm
        embeddings = {}
        for name, variant, pooling in (("f32-mean", "f32", 1), ("f32-cls", "f32", 2), ("q8_0-mean", "q8_0", 1)):
            llm = llama_cpp.Llama(model_path=files[variant][0], embedding=True, pooling_type=pooling, n_ctx=128,
                                  verbose=False)
            embeddings[name] = [d["embedding"] for d in llm.create_embedding(EMBED_TEXTS)["data"]]
            del llm
        # the long text: one ubatch (a non-causal encoder needs its whole sequence in one), its ids, its first 8
        # tokens' states and its mean / cls vectors
        long = {"text": LONG_TEXT}
        for pooling in (0, 1, 2):
            llm = llama_cpp.Llama(model_path=files["long"][0], embedding=True, pooling_type=pooling, n_ctx=2048,
                                  n_batch=2048, n_ubatch=2048, verbose=False)
            if pooling == 0:
                long["ids"] = llm.tokenize(LONG_TEXT.encode("utf-8"), add_bos=True, special=False)
                long["hidden_first_8"] = llm.embed(LONG_TEXT)[:8]
            else:
                long[{1: "mean", 2: "cls"}[pooling]] = llm.create_embedding(LONG_TEXT)["data"][0]["embedding"]
            del llm
    if any([len(h) for h in states] != [len(r) for r in ids] for states in hidden.values()):
        raise SystemExit("llama.cpp's states and ids disagree in length")
    record = {"llama_cpp_python": llama_cpp.__version__, "sha256": {k: v[1] for k, v in files.items()},
              "embed_texts": EMBED_TEXTS, "ids": ids, "hidden": {k: _f32(v) for k, v in hidden.items()},
              "embeddings": {k: _f32(v) for k, v in embeddings.items()},
              "long": {k: (_f32(v) if k not in ("text", "ids") else v) for k, v in long.items()}}
    (HERE / "reference.json").write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n",
                                         encoding="utf-8")
    print(f"reference.json: {len(EMBED_TEXTS)} texts ({sum(map(len, ids))} tokens), {len(embeddings)} embedding "
          "sets", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

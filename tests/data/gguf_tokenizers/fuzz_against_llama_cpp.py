"""Random texts through llama.cpp and through the tokenizers built from GGUF metadata: how many ids agree.

Never run in CI (it needs llama-cpp-python); a check beyond the stored corpus, run by hand like make_reference_ids.py::

    .venv-peers/bin/python tests/data/gguf_tokenizers/fuzz_against_llama_cpp.py [--vocab NAME ...] \
        [--n 1000] [--seed 0] [--onnxlm-python .venv/bin/python]

Each text joins 1-12 random pieces: words of several scripts, runs of ASCII and Unicode spaces, punctuation, emoji
with ZWJ, digits, the vocabulary's own control and user-defined tokens, random code points and vocabulary pieces.
The script runs itself under ``--onnxlm-python`` (role ``--ours``: writes the tokenizer-only GGUFs with
tests/gguf_vocabs.py, makes the texts, encodes them as tests/test_gguf_tokenizers.py does) and compares with
``llama_cpp.Llama(path, vocab_only=True).tokenize`` in the three modes. Prints, per vocabulary and mode, the texts
whose ids are equal and the first differing ones; exits 1 when any differs (Phi-3's known difference included).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MODES = ("special", "special_no_add", "plain")

_WORDS = ("the capital of France is Paris hello world don't I'll we've IT'S naïve café Straße 東京 日本語 中文 한국어 "
          "Привет مرحبا नमस्ते สวัสดี Tiếng").split()
_PUNCT = list(".,;:!?()[]{}<>/\\|@#$%^&*-_=+~`'\"") + ["...", "--", "->", "=>", "<=", "!=", "//", "/*", "*/"]
_SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t ", "\u00a0", "\u3000", "\u2009",
           "\u200b", "\u2002", "\u2028", "\u0085", "\u1680"]
_EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "1️⃣", "🇫🇷", "❤️", "🤖", "\u200d", "\ufe0f"]
_DIGITS = ["0", "7", "42", "123", "1234", "12345678901234567890", "3.14", "1,000", "٣٤٥", "①", "²"]


def _code_point(rng: random.Random) -> str:
    while True:
        c = rng.choice([rng.randint(0x80, 0x2FF), rng.randint(0x370, 0x1FFF), rng.randint(0x2000, 0x2BFF),
                        rng.randint(0x3000, 0x9FFF), rng.randint(0xAC00, 0xD7A3), rng.randint(0xE000, 0xFFFD),
                        rng.randint(0x10000, 0x1FAFF)])
        if not 0xD800 <= c <= 0xDFFF:
            return chr(c)


def make_texts(rng: random.Random, n: int, tokens: list[str], types: list[int]) -> list[str]:
    added = [t for t, ty in zip(tokens, types) if ty in (2, 3, 4) and t] or ["<s>"]
    pieces = [t.replace("\u2581", " ").replace("\u0120", " ") for t in tokens[:5000]]
    texts = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 12)):
            k = rng.random()
            pool = (_WORDS if k < 0.3 else _SPACES if k < 0.45 else _PUNCT if k < 0.55 else _EMOJI if k < 0.62
                    else _DIGITS if k < 0.7 else added if k < 0.82 else pieces if k < 0.9 else None)
            parts.append(rng.choice(pool) if pool else "".join(_code_point(rng) for _ in range(rng.randint(1, 4))))
        texts.append("".join(parts))
    return texts


def ours(names: list[str], n: int, seed: int, workdir: str) -> dict:
    """The onnxlm side: {name: {"path", "texts", "ids": {mode: [ids]}}}."""
    import warnings

    sys.path.insert(0, str(ROOT / "tests"))
    import gguf_vocabs
    from tokenizers import Tokenizer

    from onnxlm.export.gguf import build_tokenizer_from_gguf
    from onnxlm.runtime.tokenizer import TextTokenizer

    out = {}
    for name in names:
        path = gguf_vocabs.vocab_gguf(name, pathlib.Path(workdir))
        meta = gguf_vocabs.vocab_metadata(name)
        tokens = meta["tokenizer.ggml.tokens"]
        texts = make_texts(random.Random(f"{seed}/{name}"), n, tokens,
                           meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
        tok_file = pathlib.Path(workdir) / f"{name}.tokenizer.json"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            build_tokenizer_from_gguf(meta).save(str(tok_file))
        text_tok = TextTokenizer.from_file(tok_file)
        raw = Tokenizer.from_file(str(tok_file))
        raw.encode_special_tokens = True
        out[name] = {"path": str(path), "texts": texts, "ids": {
            "special": [text_tok.encode(t) for t in texts],
            "special_no_add": [text_tok.encode(t, add_special_tokens=False) for t in texts],
            "plain": [raw.encode(t).ids for t in texts],
        }}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", action="append", help="only this vocabulary (repeatable; default: all)")
    ap.add_argument("--n", type=int, default=1000, help="texts per vocabulary (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--onnxlm-python", default=str(ROOT / ".venv" / "bin" / "python"))
    ap.add_argument("--ours", metavar="WORKDIR", help=argparse.SUPPRESS)  # the onnxlm-side role
    args = ap.parse_args(argv)
    if args.n < 1:
        raise SystemExit(f"--n={args.n}: give at least 1 text")

    if args.ours:
        sys.path.insert(0, str(ROOT / "tests"))
        import gguf_vocabs

        names = args.vocab or list(gguf_vocabs.VOCABS)
        (pathlib.Path(args.ours) / "ours.json").write_text(
            json.dumps(ours(names, args.n, args.seed, args.ours), ensure_ascii=False), encoding="utf-8")
        return 0

    import llama_cpp

    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.onnxlm_python, __file__, "--ours", tmp, "--n", str(args.n), "--seed", str(args.seed)]
        for v in args.vocab or []:
            cmd += ["--vocab", v]
        subprocess.run(cmd, cwd=ROOT, check=True)
        data = json.loads((pathlib.Path(tmp) / "ours.json").read_text(encoding="utf-8"))
        for name, rec in data.items():
            llm = llama_cpp.Llama(model_path=rec["path"], vocab_only=True, verbose=False)
            ref = {"special": [], "special_no_add": [], "plain": []}
            for t in rec["texts"]:
                b = t.encode("utf-8")
                ref["special"].append(llm.tokenize(b, add_bos=True, special=True))
                ref["special_no_add"].append(llm.tokenize(b, add_bos=False, special=True))
                ref["plain"].append(llm.tokenize(b, add_bos=True, special=False))
            del llm
            for mode in MODES:
                bad = [(t, o, r) for t, o, r in zip(rec["texts"], rec["ids"][mode], ref[mode]) if o != r]
                failed |= bool(bad)
                print(f"{name}/{mode}: {len(rec['texts']) - len(bad)}/{len(rec['texts'])} equal")
                for t, o, r in bad[:3]:
                    print(f"    {t!r}\n      ours  {o}\n      llama {r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Store llama.cpp's logits for the tiny GGUFs of tests/gguf_writers.py (the reference of tests/test_gguf_config.py).

llama.cpp is the home runtime of a GGUF: where transformers' loader drops metadata (rope scaling, rope_freqs,
Gemma's soft-capping and query scale), onnxlm must follow llama.cpp. Runs with the project's .venv (gguf writes the
files) and a python with llama-cpp-python (built from source: scripts/setup_peers.sh) that evaluates them; never run
in CI. From the repository root:

    .venv/bin/python tests/data/gguf_llama_cpp/make_reference_logits.py [--peers-python .venv-peers/bin/python]
        [--cases NAME ...]

writes reference_logits.json beside this script: per case the GGUF's sha256 and llama.cpp's logits [len(ids), vocab]
for the ids (F32 weights, 1 thread; llama.cpp's default F16 KV cache, F32 for the cases of ``F32_KV``).
``--cases``: only these, merged into the stored file (the others' logits kept as they are: made again on another CPU
they move by up to ~7e-4, its summation order).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(HERE.parents[1]))  # tests/: gguf_writers

#: cases whose reference llama.cpp makes with its KV cache in F32 (type_k = type_v = GGML_TYPE_F32): EXAONE 4's 64
#: tiny layers carry the F16 cache's rounding to 6.3e-3 of the logits (in F32: 8.6e-6 from onnxlm's)
F32_KV = ("exaone4-swa",)

EVAL = """
import json, sys
import llama_cpp
path, ids, kv = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
f32 = dict(type_k=0, type_v=0) if kv == "f32" else {}
llm = llama_cpp.Llama(path, n_ctx=64, n_threads=1, logits_all=True, verbose=False, **f32)
llm.eval(ids)
print(json.dumps({"version": llama_cpp.__version__, "logits": [[round(float(x), 6) for x in row] for row in llm.scores[:len(ids)]]}))
"""


def main() -> None:
    from gguf_writers import CASES, IDS, write_tiny_gguf

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    ap.add_argument("--cases", nargs="+", choices=list(CASES), help="make only these, keeping the stored others")
    args = ap.parse_args()
    stored = HERE / "reference_logits.json"
    out = json.loads(stored.read_text()) if args.cases else {"ids": IDS, "cases": {}}
    if out["ids"] != IDS:
        raise SystemExit("the stored reference has other ids than tests/gguf_writers.py: make every case again")
    with tempfile.TemporaryDirectory() as tmp:
        for case in args.cases or CASES:
            path = Path(tmp) / f"{case}.gguf"
            sha = write_tiny_gguf(path, case)
            kv = "f32" if case in F32_KV else "f16"
            run = subprocess.run([args.peers_python, "-c", EVAL, str(path), json.dumps(IDS), kv], capture_output=True,
                                 text=True, check=True)
            got = json.loads(run.stdout.strip().splitlines()[-1])
            out["llama_cpp_python"] = got["version"]
            out["cases"][case] = {"sha256": sha, "logits": got["logits"], **({"kv_cache": kv} if kv == "f32" else {})}
            print(case, len(got["logits"]), "x", len(got["logits"][0]))
    out["cases"] = {case: out["cases"][case] for case in CASES if case in out["cases"]}  # the writers' order
    stored.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()

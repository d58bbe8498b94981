"""Decode cost per token, plain vs fused (kv_layout="fused") artifact of the same model, in one process.

    .venv/bin/python scripts/bench_fused.py PLAIN_DIR FUSED_DIR [--prompts 16 512] [--steps 32] [--runs 5]

For each prompt length: start() on a random prompt of that length (batch 1), then ``--steps`` advance() calls;
prints the median over ``--runs`` of the mean ms per advance (the prefill is not counted).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import onnxlm


def ms_per_token(model, prompt_len: int, steps: int, rng) -> float:
    ids = rng.integers(10, model.vocab_size - 10, size=(1, prompt_len)).astype(np.int64)
    state, logits = model.start(ids, np.ones_like(ids))
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = state.advance(np.array([int(logits[0].argmax())], np.int64))
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("plain")
    ap.add_argument("fused")
    ap.add_argument("--prompts", type=int, nargs="+", default=[16, 512])
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    models = {"plain": onnxlm.load(args.plain, threads=args.threads),
              "fused": onnxlm.load(args.fused, threads=args.threads)}
    rng = np.random.default_rng(0)
    for n in args.prompts:
        for name, model in models.items():
            ms_per_token(model, n, 4, rng)  # warm-up
            runs = [ms_per_token(model, n, args.steps, rng) for _ in range(args.runs)]
            print(f"prompt {n:5d}  {name:6s} {statistics.median(runs):7.2f} ms/token "
                  f"(runs: {', '.join(f'{r:.2f}' for r in runs)})", flush=True)


if __name__ == "__main__":
    main()

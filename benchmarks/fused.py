"""Decode cost per token, plain vs fused (kv_layout="fused") artifact of the same model, in one process.

    .venv/bin/python -m benchmarks.fused PLAIN_DIR FUSED_DIR [--prompts 16 512] [--steps 32] [--runs 5]

Decoder-only: for each prompt length, start() on a random prompt of that length (batch 1), then ``--steps``
advance() calls. Seq2seq (T5): start() on a random 64-token source, advance() until the decoder holds that many
tokens, then ``--steps`` timed advance() calls. The two models alternate run by run (so a load change on a shared
machine hits both); prints the median and the minimum over ``--runs`` of the mean ms per advance (the prefill is not
counted).
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import onnxlm


def ms_per_token(model, length: int, steps: int, rng) -> float:
    """Mean ms of ``steps`` greedy advance() calls after a prompt (decoder-only) / decoder prefix (seq2seq) of
    ``length`` tokens, batch 1."""
    ids = rng.integers(10, model.vocab_size - 10, size=(1, 64 if model.is_encoder_decoder else length))
    state, logits = model.start(ids.astype(np.int64), np.ones_like(ids))
    for _ in range(length - 1 if model.is_encoder_decoder else 0):  # seq2seq: grow the decoder to ``length``
        logits = state.advance(np.array([int(logits[0].argmax())], np.int64))
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = state.advance(np.array([int(logits[0].argmax())], np.int64))
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fused", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plain", metavar="PLAIN_DIR", help="the plain-layout artifact")
    ap.add_argument("fused", metavar="FUSED_DIR", help="the fused artifact (kv_layout=\"fused\") of the same model")
    ap.add_argument("--prompts", type=int, nargs="+", default=[16, 512], help="prompt lengths (default: 16 512)")
    ap.add_argument("--steps", type=int, default=32, help="timed advance() calls per run (default: 32)")
    ap.add_argument("--runs", type=int, default=5, help="alternating runs per length (default: 5)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: onnxlm's)")
    args = ap.parse_args()
    models = {"plain": onnxlm.load(args.plain, threads=args.threads),
              "fused": onnxlm.load(args.fused, threads=args.threads)}
    rng = np.random.default_rng(0)
    for n in args.prompts:
        runs = {name: [] for name in models}
        for name, model in models.items():
            ms_per_token(model, n, 4, rng)  # warm-up
        for _ in range(args.runs):
            for name, model in models.items():
                runs[name].append(ms_per_token(model, n, args.steps, rng))
        for name, r in runs.items():
            print(f"length {n:5d}  {name:6s} {statistics.median(r):7.2f} ms/token (min {min(r):.2f}; runs: "
                  f"{', '.join(f'{x:.2f}' for x in r)})", flush=True)


if __name__ == "__main__":
    main()

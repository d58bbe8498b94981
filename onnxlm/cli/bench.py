"""`onnxlm bench`: prefill and per-token decode speed of the onnxlm runtime on one model."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ParameterError
from onnxlm.runtime.threads import resolve_threads

from .args import (MODEL_DIR_HELP, add_model_args, command_parser, load_model, non_empty_text, non_negative_int,
                   positive_int)

DESCRIPTION = """\
Time the onnxlm runtime on one model: the prefill (prompt) pass, the per-token decode steps (greedy argmax on
the KV cache, exactly --max-new-tokens steps) and a full `model.generate` call (EOS blocked so every run makes
the same number of tokens). Reports medians over --runs after --warmup runs.

With --peers, everything after it goes to `python -m benchmarks.peers` (a source checkout only): onnxlm against
PyTorch, optimum, CTranslate2, onnxruntime-genai and llama.cpp, each in its own process; writes
its sections of docs/benchmarks.md (see `onnxlm bench --peers --help`).

example:
  onnxlm bench models/gpt2 --max-new-tokens 64 --runs 5 --threads 4
  onnxlm bench --peers --quick
"""
REPO = Path(__file__).resolve().parents[2]
PEERS_PACKAGE = REPO / "benchmarks" / "peers" / "__main__.py"


def add_parser(sub) -> None:
    p = command_parser(sub, "bench", help="time prefill and decode (tokens/s)", description=DESCRIPTION)
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", help=f"{MODEL_DIR_HELP}; required unless --peers")
    add_model_args(p, model_dir=False)
    p.add_argument("--prompt", type=non_empty_text, default="The quick brown fox jumps over the lazy dog. " * 2,
                   help="prompt text (default: a short English sentence, twice)")
    p.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N",
                   help="decode steps per run (default: 32)")
    p.add_argument("--runs", type=positive_int, default=3, metavar="R", help="timed runs (default: 3)")
    p.add_argument("--warmup", type=non_negative_int, default=1, metavar="W", help="untimed runs first (default: 1)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="B",
                   help="rows decoded together (the prompt repeated; default: 1)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object")
    p.add_argument("--peers", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="run `python -m benchmarks.peers` with ARGS (all that follows) instead of timing one model")
    p.set_defaults(func=run)


def run_peers(script_args: list[str]) -> int:
    """`onnxlm bench --peers ARGS`: `python -m benchmarks.peers ARGS` with this python and the checkout's root on
    its path (from any working directory); returns its exit status."""
    if not PEERS_PACKAGE.is_file():
        raise ParameterError("peers", f"needs benchmarks/peers from a source checkout of onnxlm ({PEERS_PACKAGE} "
                                      "is missing)")
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}
    return subprocess.call([sys.executable, "-m", "benchmarks.peers", *script_args], env=env)


def run(args) -> int:
    if args.peers is not None:
        return run_peers(args.peers)
    if args.model_dir is None:
        args.parser_for_command.error("MODEL_DIR is required: an artifact directory (or pass --peers to compare "
                                      "engines)")  # a usage error: exit 2
    model = load_model(args)
    ids, mask = model.prepare_inputs([args.prompt] * args.batch_size)
    n = args.max_new_tokens
    if not model.is_encoder_decoder and model.max_positions and ids.shape[1] + n > model.max_positions:
        raise ParameterError("max_new_tokens", f"prompt ({ids.shape[1]} tokens) + {n} new tokens exceeds the "
                                               f"model's max_positions {model.max_positions}")
    prefill, decode, total = [], [], []
    for i in range(args.warmup + args.runs):
        t0 = time.perf_counter()
        state, logits = model.start(ids, mask)
        t1 = time.perf_counter()
        for _ in range(n):
            logits = state.advance(np.argmax(logits, axis=-1).astype(np.int64))
        t2 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False, num_beams=1)
        t3 = time.perf_counter()
        if i >= args.warmup:
            prefill.append(t1 - t0)
            decode.append(t2 - t1)
            total.append(t3 - t2)
    b, s = ids.shape
    p_med, d_med, g_med = (statistics.median(x) for x in (prefill, decode, total))
    threads = resolve_threads(args.threads)  # the count the sessions ran on (--threads, $ONNXLM_THREADS, or cores)
    result = {
        "model": str(model.path), "provider": model.provider, "threads": threads, "batch_size": b,
        "prompt_tokens": int(s), "new_tokens": n, "runs": args.runs,
        "prefill_ms": p_med * 1e3, "prefill_tokens_per_s": b * s / p_med,
        "decode_ms_per_token": d_med * 1e3 / n, "decode_tokens_per_s": b * n / d_med,
        "generate_s": g_med, "generate_tokens_per_s": b * n / g_med,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"onnxlm bench: {model.path} on {model.provider}"
          f" ({threads} thread{'s' if threads != 1 else ''}), batch {b}, "
          f"prompt {s} tokens, {n} new tokens, median of {args.runs} runs")
    print(f"  prefill   {result['prefill_ms']:9.2f} ms          {result['prefill_tokens_per_s']:10.1f} tokens/s")
    print(f"  decode    {result['decode_ms_per_token']:9.2f} ms/token    {result['decode_tokens_per_s']:10.1f} tokens/s")
    print(f"  generate  {result['generate_s'] * 1e3:9.2f} ms total    {result['generate_tokens_per_s']:10.1f} "
          f"tokens/s (end to end, processors included)")
    return 0

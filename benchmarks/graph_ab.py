"""A/B decode-step timing (and an optional per-op profile) of fused decoder graphs, e.g. two forms of the
GGUF-native graph (export/gguf_quant.py) or a GGUF-native graph against its fp32 source.

Each round runs ``--steps`` decode steps of every graph in turn in one process (one token after a ``--past``-token
cache, ``session.run`` with random KV), so the graphs see the same machine load; the report is the median ms/step
of each graph over all rounds and its ratio to the first graph, and the median (and quartiles) of the per-round
ratios (each round's graphs ran back to back: the pairing cancels slow drifts of the load). On a shared machine
only these alternating comparisons mean anything: run it under ``nice -n 10``, many short rounds (``--steps 2``),
and label the figures as taken under load.

    python -m benchmarks.graph_ab A/model.onnx B/model.onnx --rounds 20 --steps 20
    python -m benchmarks.graph_ab A B --profile      # + onnxruntime's per-op kernel time per step
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def graph_path(p: str) -> Path:
    """An artifact directory or a .onnx file -> the .onnx file."""
    path = Path(p)
    return path / "model.onnx" if path.is_dir() else path


def session(path: Path, threads: int, profile_prefix: str | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def decode_feeds(sess, past: int, capacity: int, seed: int = 0) -> dict:
    """The inputs of one decode step (batch 1, one new token after ``past`` cached ones) of a fused graph."""
    rng = np.random.default_rng(seed)
    feeds = {"input_ids": np.array([[5]], np.int64), "seqlens_k": np.array([past], np.int32),
             "total_sequence_length": np.array(past + 1, np.int32), "logits_positions": np.zeros((1, 1), np.int64),
             "position_ids": np.array([[past]], np.int64)}  # GPT-2's, a rotary turned before GQA's
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values"):
            kv_heads, head_dim = i.shape[1], i.shape[3]
            feeds[i.name] = rng.random((1, kv_heads, capacity, head_dim)).astype(np.float32)
    names = {i.name for i in sess.get_inputs()}
    return {k: v for k, v in feeds.items() if k in names}


def node_group(op: str, name: str) -> str:
    """A node -> its row in the profile: the op type, MatMulNBits by projection (``l3.qkv`` -> ``MatMulNBits qkv``)
    and the correction's MatMuls / Gemms by role."""
    if op in ("MatMulNBits", "MatMul", "Gemm"):
        part = name.split(".")[1] if name.startswith("l") and "." in name else name.split(".")[0]
        return f"{op} {part}{'.' + name.rsplit('.', 1)[-1] if name.count('.') > 1 else ''}"
    return op


def op_profile(path: Path, threads: int, past: int, capacity: int, steps: int,
               by_node: bool = False) -> tuple[dict, dict, float]:
    """Per op type (``by_node``: per ``node_group``): (kernel ms per step, calls per step), and the kernels' total
    ms per step."""
    with tempfile.TemporaryDirectory() as tmp:
        s = session(path, threads, str(Path(tmp) / "prof"))
        feeds = decode_feeds(s, past, capacity)
        for _ in range(steps):
            s.run(["logits"], feeds)
        events = json.loads(Path(s.end_profiling()).read_text())
    ms, calls = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = e["args"]["op_name"]
            if by_node:
                key = node_group(key, e["name"][:-len("_kernel_time")])
            ms[key] += e["dur"] / 1e3 / steps
            calls[key] += 1 / steps
    return dict(ms), dict(calls), sum(ms.values())


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.graph_ab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graphs", nargs="+", help="artifact directories or .onnx files (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    ap.add_argument("--steps", type=int, default=20, help="decode steps per graph per round (default 20)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    ap.add_argument("--past", type=int, default=16, help="cached tokens before the step (default 16)")
    ap.add_argument("--capacity", type=int, default=64, help="KV buffer length (default 64)")
    ap.add_argument("--profile", action="store_true", help="also print each graph's per-op kernel time")
    ap.add_argument("--by-node", action="store_true", help="with --profile: MatMul-like ops split by projection")
    ap.add_argument("--top", type=int, default=14, help="rows of the profile (default 14)")
    args = ap.parse_args()
    paths = [graph_path(g) for g in args.graphs]
    sessions = [session(p, args.threads) for p in paths]
    feeds = [decode_feeds(s, args.past, args.capacity) for s in sessions]
    times = [[] for _ in paths]
    rounds = [[] for _ in paths]  # each graph's median ms/step per round: paired with the reference's
    for s, f in zip(sessions, feeds):  # warm-up
        for _ in range(5):
            s.run(["logits"], f)
    for _ in range(args.rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            step = []
            for _ in range(args.steps):
                t = time.perf_counter()
                s.run(["logits"], f)
                step.append(time.perf_counter() - t)
            times[i] += step
            rounds[i].append(np.median(step))
    ref = np.median(times[0])
    for p, ts, rs in zip(paths, times, rounds):
        paired = np.asarray(rs) / np.asarray(rounds[0])
        q1, q3 = np.percentile(paired, [25, 75])
        print(f"{np.median(ts) * 1e3:7.2f} ms/step  ({np.median(ts) / ref:.3f}x; per round {np.median(paired):.3f}x, "
              f"quartiles {q1:.3f}-{q3:.3f})  {p}")
    if args.profile:
        del sessions
        for p in paths:
            ms, calls, total = op_profile(p, args.threads, args.past, args.capacity, args.steps, args.by_node)
            print(f"\n{p}: kernels {total:.2f} ms/step")
            for op in sorted(ms, key=ms.get, reverse=True)[:args.top]:
                print(f"  {op:36s} {ms[op]:7.3f} ms  {calls[op]:5.0f}/step")


if __name__ == "__main__":
    main()

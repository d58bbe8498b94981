"""Probe (for the fused-graph work of the performance issue): does this onnxruntime's CPU GroupQueryAttention
(com.microsoft) give exact attention for a right-padded batch with per-row lengths (seqlens_k), append each row's
new token in place in a preallocated KV buffer bound as both past and present (IO binding), and keep the step
cost flat as the buffer grows?

    .venv/bin/python scripts/probe_gqa_kv_buffer.py

Prints the max difference from a numpy reference attention for the prompt and a decode step, and the
microseconds per decode step for a 64- and a 4096-position buffer. (onnxruntime 1.32 on the 2-core dev machine:
diffs <= 1.2e-7, in-place results identical, ~25 us per step for both buffer sizes.)
"""
from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as TP
from onnx import helper

B, S, N, KVN, H = 2, 5, 4, 2, 8  # batch, prompt length, query heads, kv heads, head dim


def gqa_session() -> ort.InferenceSession:
    """One GroupQueryAttention node: q [B,S,N*H], k/v [B,S,KVN*H], past [B,KVN,L,H], seqlens_k [B], total -> out."""
    node = helper.make_node("GroupQueryAttention", ["q", "k", "v", "pk", "pv", "seqlens_k", "total_len"],
                            ["out", "prk", "prv"], domain="com.microsoft", num_heads=N, kv_num_heads=KVN)
    f = TP.FLOAT
    inputs = [helper.make_tensor_value_info("q", f, [None, None, N * H]),
              helper.make_tensor_value_info("k", f, [None, None, KVN * H]),
              helper.make_tensor_value_info("v", f, [None, None, KVN * H]),
              helper.make_tensor_value_info("pk", f, [None, KVN, None, H]),
              helper.make_tensor_value_info("pv", f, [None, KVN, None, H]),
              helper.make_tensor_value_info("seqlens_k", TP.INT32, [None]),
              helper.make_tensor_value_info("total_len", TP.INT32, [])]
    outputs = [helper.make_tensor_value_info(n, f, None) for n in ("out", "prk", "prv")]
    model = helper.make_model(helper.make_graph([node], "gqa", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """One row: q [s, N, H], k/v [T, KVN, H] (the last s of T are the queries' own) -> causal attention [s, N, H]."""
    out = np.zeros_like(q)
    s, t = len(q), len(k)
    for n in range(N):
        kn = n // (N // KVN)
        logits = q[:, n] @ k[:, kn].T / np.sqrt(H)
        logits[np.arange(t)[None, :] > (t - s + np.arange(s))[:, None]] = -np.inf
        p = np.exp(logits - logits.max(1, keepdims=True))
        out[:, n] = (p / p.sum(1, keepdims=True)) @ v[:, kn]
    return out


def main() -> None:
    sess, rng = gqa_session(), np.random.default_rng(0)
    lens = np.array([5, 3])  # right padded: row 1 has 3 real tokens
    q, k, v = (rng.standard_normal((B, S, w * H)).astype(np.float32) for w in (N, KVN, KVN))
    q2, k2, v2 = (rng.standard_normal((B, 1, w * H)).astype(np.float32) for w in (N, KVN, KVN))
    for max_len in (64, 4096):
        kbuf = ort.OrtValue.ortvalue_from_numpy(np.zeros((B, KVN, max_len, H), np.float32))
        vbuf = ort.OrtValue.ortvalue_from_numpy(np.zeros((B, KVN, max_len, H), np.float32))

        def run(qq, kk, vv, seqlens, total):
            io = sess.io_binding()
            for name, a in (("q", qq), ("k", kk), ("v", vv), ("seqlens_k", seqlens.astype(np.int32)),
                            ("total_len", np.array(total, np.int32))):
                io.bind_cpu_input(name, a)
            io.bind_ortvalue_input("pk", kbuf)
            io.bind_ortvalue_input("pv", vbuf)
            io.bind_output("out")
            io.bind_ortvalue_output("prk", kbuf)  # present = the same buffer: appended in place
            io.bind_ortvalue_output("prv", vbuf)
            sess.run_with_iobinding(io)
            return io.get_outputs()[0].numpy()

        out = run(q, k, v, lens - 1, S)
        diff = max(np.abs(out[b, :n].reshape(n, N, H) - reference(q[b, :n].reshape(n, N, H),
                                                                  k[b, :n].reshape(n, KVN, H),
                                                                  v[b, :n].reshape(n, KVN, H))).max()
                   for b, n in enumerate(lens))
        out2 = run(q2, k2, v2, lens, S + 1)
        diff2 = max(np.abs(out2[b].reshape(1, N, H) - reference(
            q2[b].reshape(1, N, H), np.concatenate([k[b, :n], k2[b]]).reshape(n + 1, KVN, H),
            np.concatenate([v[b, :n], v2[b]]).reshape(n + 1, KVN, H))).max() for b, n in enumerate(lens))
        t0 = time.perf_counter()
        for _ in range(200):
            run(q2, k2, v2, lens, S + 1)
        us = (time.perf_counter() - t0) / 200 * 1e6
        print(f"buffer {max_len:5d}: prompt max|diff| {diff:.2g}, step max|diff| {diff2:.2g}, {us:.1f} us/step")


if __name__ == "__main__":
    main()

"""The worker process (``--_worker PAYLOAD``): one engine, every case of one model -> one JSON line on stdout.

Imports only numpy and the engine's libraries (``engines/``): the llama.cpp worker runs in another venv. Timing: per
case a warm-up call of 1 and of N new tokens, then ``runs`` timed pairs; decode ms/token = (median t(N) - median
t(1)) / (N - 1). Memory: RSS after load and peak RSS (VmHWM) above the post-import baseline."""
from __future__ import annotations

import contextlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from .engines import WORKERS, Unsupported


def _status_kb(field_name: str) -> int:
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_hwm() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


ROWS = 128  # positions whose float64 log-probabilities are formed at once


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def worker_main(payload_path: str) -> int:
    """Child: one engine, every case of one model -> one JSON line on stdout."""
    d = json.loads(Path(payload_path).read_text())
    impl = WORKERS[d["kind"]]
    impl.imports(d)
    out = {"cases": {}, "quality": None}
    base_kb = _status_kb("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    model = impl.load(d)
    out["load_s"] = time.perf_counter() - t0
    out["rss_loaded_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
    n = d["new_tokens"]
    for case in d["cases"]:
        key, ids = case["key"], np.asarray(d["prompts"][f"{case['batch']}x{case['prompt']}"], dtype=np.int64)
        try:
            gen = impl.generator(model, d, case, ids)
            gen(1)
            new = np.asarray(gen(n))
            t1, tn = [], []
            for _ in range(d["runs"]):
                s = time.perf_counter()
                gen(1)
                t1.append(time.perf_counter() - s)
                s = time.perf_counter()
                gen(n)
                tn.append(time.perf_counter() - s)
        except Unsupported as e:
            out["cases"][key] = {"note": f"unsupported: {e}"}
            continue
        except Exception as e:  # noqa: BLE001 - reported in the table
            out["cases"][key] = {"note": f"failed: {type(e).__name__}: {str(e)[:160]}"}
            print(f"[worker {d['label']}] {key} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        m1, mn = statistics.median(t1), statistics.median(tn)
        step = (mn - m1) / (n - 1) if mn > m1 else float("nan")
        out["cases"][key] = {"ttft_ms": m1 * 1e3, "ms_per_token": step * 1e3,
                             "tokens_per_s": case["batch"] / step if step == step else float("nan"),
                             "t1": t1, "tn": tn, "ids": new[:, :n].tolist(), "shape": list(new.shape)}
        print(f"[worker {d['label']}] {key}: ttft {m1 * 1e3:.1f} ms, {step * 1e3:.2f} ms/token", file=sys.stderr,
              flush=True)
    out["peak_rss_mb"] = (_status_kb("VmHWM") - base_kb) / 1024  # before the quality pass's own buffers
    if d.get("windows") and getattr(impl, "logits", None):
        try:
            tops, logps = [], []
            for window in d["windows"]:  # export/quality.py's teacher-forced measures, window by window
                lg = np.asarray(impl.logits(model, d, window))[:len(window) - 1]
                tops.append(lg.argmax(-1))
                nxt = np.asarray(window[1:])[:, None]
                for r in range(0, len(nxt), ROWS):  # float64 a few rows at a time: a 262k vocabulary is 2 MB a row
                    logps.append(np.take_along_axis(_log_softmax(lg[r:r + ROWS]), nxt[r:r + ROWS], 1)[:, 0])
                del lg
            out["quality"] = {"top1": np.concatenate(tops).tolist(), "logp": np.concatenate(logps).tolist()}
        except Exception as e:  # noqa: BLE001
            out["quality_note"] = f"{type(e).__name__}: {str(e)[:160]}"
    print(json.dumps(out), flush=True)
    return 0

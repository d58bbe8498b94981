"""onnxruntime's profiler on onnxlm's graphs (``--profile``): op-type kernel ms per decode step.

``profile_main`` is the child (``--_profile PAYLOAD``): it loads the artifact with every session profiled, runs a
prompt and ``steps`` greedy decode steps per prompt length, and prints one JSON line; ``run_profile`` starts it from
the main process."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .prepare import EngineSpec, Prepared
from .runner import parse_cases, prompt_ids
from .settings import child_env, log, module_command


def profile_main(payload_path: str) -> int:
    """Child: onnxruntime's profiler on an onnxlm artifact -> op-type ms per decode step, one JSON line."""
    d = json.loads(Path(payload_path).read_text())
    import onnxruntime as ort

    import onnxlm

    sessions = []
    original = ort.InferenceSession

    def profiled(path, sess_options=None, *a, **k):  # every session onnxlm opens gets the profiler
        so = sess_options or ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d["dir"]) / "ort_profile")
        s = original(path, so, *a, **k)
        sessions.append(s)
        return s

    ort.InferenceSession = profiled
    result = {}
    for prompt in d["prompts"]:
        sessions.clear()
        model = onnxlm.load(d["path"], provider="cpu", threads=d["threads"], verify=False)
        ids = np.asarray(d["ids"][str(prompt)], dtype=np.int64)
        state, logits = model.start(ids, np.ones_like(ids))
        t0 = time.perf_counter()
        for _ in range(d["steps"]):
            logits = state.advance(np.argmax(logits, axis=-1).astype(np.int64))
        wall = (time.perf_counter() - t0) / d["steps"] * 1e3
        files = [s.end_profiling() for s in sessions]
        result[str(prompt)] = {"wall_ms_per_step": wall, **_op_shares(files)}
        del model, state
    print(json.dumps(result), flush=True)
    return 0


def _op_shares(files: list[str]) -> dict:
    """onnxruntime profile JSON files -> per decode step: op type -> ms, and the session.run time (the first run
    of each session, the prefill, is left out)."""
    ops: dict[str, float] = {}
    runs, run_us = 0, 0.0
    for f in files:
        events = json.loads(Path(f).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        if len(spans) < 2:
            continue
        decode = spans[1:]
        runs = max(runs, len(decode))
        run_us += sum(b - a for a, b in decode)
        start = decode[0][0]
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
                op = e.get("args", {}).get("op_name", "?")
                ops[op] = ops.get(op, 0.0) + e["dur"]
    steps = max(runs, 1)
    return {"run_ms_per_step": run_us / steps / 1e3,
            "ops_ms_per_step": {k: v / steps / 1e3 for k, v in sorted(ops.items(), key=lambda kv: -kv[1])}}


def run_profile(prep: Prepared, eng: EngineSpec, args, tmp: Path) -> dict | None:
    """profile_main on ``eng``'s artifact in a child process, at the shortest and the longest prompt of the cases
    -> its result (None when it fails)."""
    prompts = [p for p in sorted({c["prompt"] for c in parse_cases(args.cases)}) if p in (min(args.prompt_set),
                                                                                         max(args.prompt_set))]
    d = {"path": eng.path, "threads": args.threads, "steps": args.new_tokens, "prompts": prompts,
         "ids": {str(p): prompt_ids(prep.artifact, 1, p).tolist() for p in prompts},
         "dir": str(tmp)}
    path = tmp / f"profile-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(d))
    proc = subprocess.run(module_command(sys.executable, "--_profile", str(path)), capture_output=True, text=True,
                          env=child_env(eng.env), timeout=args.worker_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"  profile of {eng.label} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        return None
    return json.loads(lines[-1])

"""The main side of a run: the cases, the prompt ids and quality windows every engine gets, and one worker process
per engine (``--_worker``: worker.py), with that engine's python and environment."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np

from .prepare import EngineSpec, Prepared
from .settings import MODES, PROMPT_TEXT, child_env, log, module_command


def parse_cases(specs: list[str]) -> list[dict]:
    """["bB:pP:MODE", ...] -> [{"key", "batch", "prompt", "mode"}, ...] (SystemExit on a malformed one)."""
    out = []
    for s in specs:
        m = re.fullmatch(r"b(\d+):p(\d+):(greedy|sample|beam4)", s)
        if not m:
            raise SystemExit(f"--cases {s!r}: expected bB:pP:MODE with MODE in {MODES}, e.g. b1:p16:greedy")
        out.append({"key": s, "batch": int(m.group(1)), "prompt": int(m.group(2)), "mode": m.group(3)})
    return out


def prompt_ids(artifact: Path, batch: int, length: int) -> np.ndarray:
    """[batch, length] int64 prompt ids from a fixed English text; rows start at different offsets (no padding)."""
    from onnxlm.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(artifact / "tokenizer.json")
    stream: list[int] = []
    while len(stream) < length + 11 * batch:
        stream += tok.encode(PROMPT_TEXT, add_special_tokens=False)
    return np.array([stream[11 * r: 11 * r + length] for r in range(batch)], dtype=np.int64)


def quality_windows(prep: Prepared) -> list[list[int]]:
    """export/quality.py's text and windows for a decoder-only model ([] for seq2seq)."""
    if prep.seq2seq:
        return []
    from onnxlm.export.quality import QUALITY_TEXT, _windows
    from onnxlm.runtime.tokenizer import TextTokenizer

    ids = TextTokenizer.from_file(prep.artifact / "tokenizer.json").encode(QUALITY_TEXT.read_text(encoding="utf-8"),
                                                                            add_special_tokens=False)
    return [ids[s:e] for s, e in _windows(len(ids), prep.max_positions) if e - s >= 2]


def run_worker(eng: EngineSpec, prep: Prepared, cases: list[dict], prompts: dict, windows, args, tmp: Path) -> dict:
    """One engine's worker process over ``cases`` -> its JSON result + worker_s, or {"note": why it failed}."""
    payload = {"kind": eng.kind, "label": eng.label, "path": eng.path, "threads": args.threads, "opts": eng.opts,
               "seq2seq": prep.seq2seq, "pad_token_id": prep.pad_token_id, "new_tokens": args.new_tokens,
               "runs": args.runs, "cases": cases, "prompts": prompts, "windows": windows,
               "tokenizer": str(prep.artifact / "tokenizer.json")}
    path = tmp / f"payload-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(payload))
    env = child_env({"TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **eng.env})
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(module_command(eng.python, "--_worker", str(path)), capture_output=True, text=True,
                              env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"note": f"worker timed out after {args.worker_timeout} s"}
    finally:
        path.unlink(missing_ok=True)
    for line in proc.stderr.splitlines():
        if line.startswith("[worker"):
            log("  " + line)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"note": f"worker failed (rc {proc.returncode}): {tail[:200]}"}
    res = json.loads(lines[-1])
    res["worker_s"] = time.perf_counter() - t0
    return res


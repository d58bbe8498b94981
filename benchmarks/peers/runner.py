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
from .results import merge_rounds
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


def run_rounds(engines: list[EngineSpec], prep: Prepared, cases: list[dict], prompts: dict, windows, args,
               tmp: Path) -> dict:
    """Every engine's worker, ``args.rounds`` times with the engines taking turns, then (with ``windows``) one more
    worker per engine for the agreement pass alone -> engine label -> its merged result (``results.merge_rounds``,
    the agreement pass's "quality" added). Turns make a ratio of two engines a ratio of figures measured minutes
    apart at most, however long the whole run; the agreement pass comes last because a timed case right after
    another process's big pass read up to 1.6x slower here (SmolLM2's GGUF variant: 9.4 against 5.9 ms/token)."""
    rounds: dict[str, list[dict]] = {eng.label: [] for eng in engines}
    n = getattr(args, "rounds", 1)
    for i in range(n):
        for eng in engines:
            log(f"{prep.key}: {eng.label} ..." + (f" (round {i + 1} of {n})" if n > 1 else ""))
            res = run_worker(eng, prep, cases, prompts, [], args, tmp)
            rounds[eng.label].append(res)
            log(f"  {eng.label}: " + (res["note"] if "note" in res else
                                      f"load {res['load_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB, worker "
                                      f"{res['worker_s']:.0f} s"))
    out = {label: merge_rounds(rs) for label, rs in rounds.items()}
    for eng in engines if windows else []:
        if "note" in out[eng.label]:
            continue
        log(f"{prep.key}: {eng.label}, agreement pass ...")
        res = run_worker(eng, prep, [], prompts, windows, args, tmp)
        for k in ("quality", "quality_note"):
            if k in res:
                out[eng.label][k] = res[k]
        if "note" in res or res.get("quality_note"):
            log(f"  {eng.label}: no agreement figure: {res.get('note') or res['quality_note']}")
    return out

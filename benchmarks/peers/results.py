"""One model's results: every engine's worker output, the agreement with onnxlm fp32, the profiles; and the
figures of one case (None where the engine did not measure it)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .prepare import Prepared


@dataclass
class ModelRun:
    prep: Prepared
    results: dict                      # engine label -> worker result (or {"note": ...})
    quality: dict                      # engine label -> {"agreement", "perplexity"} vs onnxlm fp32
    profiles: dict = field(default_factory=dict)   # engine label -> profile_main's result


def merge_rounds(rounds: list[dict]) -> dict:
    """One engine's worker results of several rounds (the engines taking turns) -> one result: per case the median
    over the rounds of ms/token, time to first token and tokens/s, each round's pair kept under "rounds"; the highest
    peak RSS; the first round's load time and ids. A round that failed is left out (its note kept
    when every round failed)."""
    ok = [r for r in rounds if "note" not in r]
    if not ok:
        return rounds[0]
    out = {**ok[0], "cases": {}, "peak_rss_mb": max(r["peak_rss_mb"] for r in ok), "rounds": len(ok)}
    for key, first in ok[0]["cases"].items():
        per = [r["cases"].get(key, {}) for r in ok]
        per = [c for c in per if "ms_per_token" in c]
        if "ms_per_token" not in first or len(per) < len(ok):
            out["cases"][key] = first if "ms_per_token" not in first else {"note": "failed in a later round"}
            continue
        med = {f: float(np.median([c[f] for c in per])) for f in ("ms_per_token", "ttft_ms", "tokens_per_s")}
        out["cases"][key] = {**first, **med, "rounds": [[c["ms_per_token"], c["ttft_ms"]] for c in per]}
    return out


def round_ratios(run: ModelRun, label: str, peer: str, key: str) -> list[list[float]] | None:
    """[[ms/token ratio, first-token ratio], ...] of ``label`` over ``peer`` in each round of case ``key`` (figures
    taken minutes apart, the machine's speed moving between them, make their ratio only as steady as the machine;
    the same round's pair is closer in time), or None without rounds for both."""
    a, b = case_result(run, label, key), case_result(run, peer, key)
    if not (a and b and "rounds" in a and "rounds" in b):
        return None
    return [[x[0] / y[0], x[1] / y[1]] for x, y in zip(a["rounds"], b["rounds"])]


def case_result(run: ModelRun, label: str, key: str) -> dict | None:
    r = run.results.get(label, {}).get("cases", {}).get(key)
    return r if r and "ms_per_token" in r else None


def compute_quality(run: ModelRun) -> None:
    """run.quality := per engine with a teacher-forced pass: top-1 agreement with onnxlm fp32's and perplexity."""
    ref = run.results.get("onnxlm fp32", {}).get("quality")
    if not ref:
        return
    top_ref, lp_ref = np.asarray(ref["top1"]), np.asarray(ref["logp"])
    for label, res in run.results.items():
        q = res.get("quality")
        if q:
            top, lp = np.asarray(q["top1"]), np.asarray(q["logp"])
            run.quality[label] = {"agreement": float((top == top_ref).mean()), "perplexity": float(np.exp(-lp.mean())),
                                  "perplexity_fp32": float(np.exp(-lp_ref.mean())), "tokens": int(len(top) + 1)}


def decode_ms(run: ModelRun | None, label: str, key: str) -> float | None:
    r = case_result(run, label, key) if run else None
    return r["ms_per_token"] if r else None


def first_token_ms(run: ModelRun | None, label: str, key: str) -> float | None:
    r = case_result(run, label, key) if run else None
    return r["ttft_ms"] if r else None


def tokens_per_s(run: ModelRun | None, label: str, key: str) -> float | None:
    r = case_result(run, label, key) if run else None
    return r["tokens_per_s"] if r else None

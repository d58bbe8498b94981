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

"""Issue 9's Targets, computed from the runs: rows (target, measured, limit, met / **missed** / not measured); and the
two checks no engine run gives (`import onnxlm` time, the runtime staying torch-free)."""
from __future__ import annotations

import contextlib
import statistics
import subprocess
import sys
from pathlib import Path

from .results import ModelRun, decode_ms, first_token_ms, tokens_per_s


def targets(runs: dict[str, ModelRun], cases: list[dict], new_tokens: int, import_s: float | None,
            torch_free: bool | None) -> list[tuple[str, str, str, str]]:
    """Issue 9's Targets -> rows (target, measured, limit, met/missed/not measured)."""
    rows = []
    lengths = [c["prompt"] for c in cases if c["batch"] == 1 and c["mode"] == "greedy"] or [0]
    short, long = min(lengths), max(lengths)
    batch_key = next((c["key"] for c in cases if c["batch"] > 1 and c["mode"] == "greedy"), None)
    beam_key = next((c["key"] for c in cases if c["mode"] == "beam4"), None)
    s, lg = f"b1:p{short}:greedy", f"b1:p{long}:greedy"

    def row(text, value, limit, ok_fn, fmt=".2f", unit="×"):
        if value is None or value != value:
            rows.append((text, "–", f"{limit}", "not measured"))
        else:
            rows.append((text, f"{value:{fmt}}{unit}", f"{limit}", "met" if ok_fn(value) else "**missed**"))

    def ratio(a, b):
        return a / b if a is not None and b else None

    gpt2 = runs.get("gpt2-small") or runs.get("tiny-gpt2")
    smol = runs.get("smollm2") or runs.get("tiny-llama")
    t5 = runs.get("t5-small") or runs.get("tiny-t5")

    def name_of(run, default):  # the model names; a stand-in (--quick) is named as itself
        return default if run is None or run.prep.key in ("gpt2-small", "t5-small", "smollm2") else run.prep.key

    g_name, t_name, s_name = name_of(gpt2, "GPT-2 small"), name_of(t5, "T5-small"), name_of(smol, "SmolLM2")
    named = [(gpt2, g_name), (smol, s_name)]
    for run, name in named:
        row(f"fp32 b1: onnxlm ms/token / CTranslate2 f32, {name} (prompt {short})",
            ratio(decode_ms(run, "onnxlm fp32", s), decode_ms(run, "CTranslate2 float32", s)), "<= 0.8×",
            lambda v: v <= 0.8)
    for p in (short, long):
        k = f"b1:p{p}:greedy"
        row(f"fp32 b1: onnxlm ms/token / onnxruntime-genai fp32, {s_name} (prompt {p})",
            ratio(decode_ms(smol, "onnxlm fp32", k), decode_ms(smol, "onnxruntime-genai fp32", k)), "<= 0.9×",
            lambda v: v <= 0.9)
    for run, name in named:
        row(f"long context: onnxlm ms/token at {long} / at {short}, {name}",
            ratio(decode_ms(run, "onnxlm fp32", lg), decode_ms(run, "onnxlm fp32", s)), "<= 1.2×", lambda v: v <= 1.2)
        row(f"long context: onnxlm ms/token / CTranslate2 f32 at {long}, {name}",
            ratio(decode_ms(run, "onnxlm fp32", lg), decode_ms(run, "CTranslate2 float32", lg)), "<= 0.9×",
            lambda v: v <= 0.9)
        row(f"long context: onnxlm time to first token / CTranslate2 f32 at {long}, {name}",
            ratio(first_token_ms(run, "onnxlm fp32", lg), first_token_ms(run, "CTranslate2 float32", lg)), "<= 0.8×",
            lambda v: v <= 0.8)
    dq = (smol.prep.roles.get("default") if smol else None) or "no variant"
    fid = (smol.prep.roles.get("fidelity") if smol else None) or "no variant"
    q = smol.quality.get(dq) if smol and dq else None
    row(f"quantized {s_name} ({dq}): top-1 agreement with fp32", q and q["agreement"] * 100, ">= 97.5%",
        lambda v: v >= 97.5, ".1f", "%")
    row(f"quantized {s_name} ({dq}): perplexity increase", q and (q["perplexity"] / q["perplexity_fp32"] - 1) * 100,
        "<= +0.5%", lambda v: v <= 0.5, "+.2f", "%")
    for other, limit in (("onnxlm fp32", 0.5), ("llama.cpp (GGUF blocks)", 0.8), ("onnxruntime-genai int4", 1.1)):
        row(f"quantized {s_name} ({dq}): ms/token / {other} (prompt {short})",
            ratio(decode_ms(smol, dq, s), decode_ms(smol, other, s)), f"<= {limit}×", lambda v, lim=limit: v <= lim)
    fq = smol.quality.get(fid) if smol and fid else None
    row(f"fidelity {s_name} ({fid}): top-1 agreement", fq and fq["agreement"] * 100, ">= 99.5%", lambda v: v >= 99.5,
        ".1f", "%")
    row(f"fidelity {s_name} ({fid}): ms/token / onnxlm fp32",
        ratio(decode_ms(smol, fid, s), decode_ms(smol, "onnxlm fp32", s)), "<= 0.75×", lambda v: v <= 0.75)
    for run, name in [(gpt2, g_name), (t5, t_name), (smol, s_name)]:
        if batch_key:
            row(f"batch {batch_key.split(':')[0][1:]} tokens/s: onnxlm fp32 / CTranslate2 f32, {name}",
                ratio(tokens_per_s(run, "onnxlm fp32", batch_key), tokens_per_s(run, "CTranslate2 float32", batch_key)),
                ">= 1.3×", lambda v: v >= 1.3)
            if name != t_name:
                row(f"batch {batch_key.split(':')[0][1:]} tokens/s: onnxlm int8 / CTranslate2 int8, {name}",
                    ratio(tokens_per_s(run, "onnxlm int8", batch_key),
                          tokens_per_s(run, "CTranslate2 int8", batch_key)),
                    ">= 1.3×", lambda v: v >= 1.3)
        if beam_key:
            row(f"beam 4 ms/token: onnxlm fp32 / CTranslate2 f32, {name}",
                ratio(decode_ms(run, "onnxlm fp32", beam_key), decode_ms(run, "CTranslate2 float32", beam_key)),
                "<= 0.8×", lambda v: v <= 0.8)
    for run, name in named:
        if not run or run.prep.kv_bytes_per_token is None:
            continue
        res = run.results.get("onnxlm fp32", {})
        eng = next(e for e in run.prep.engines if e.label == "onnxlm fp32")
        weights = eng.weight_bytes or 0
        rows_pos = max((c["batch"] * (4 if c["mode"] == "beam4" else 1) * (c["prompt"] + new_tokens)
                        for c in cases), default=0)
        kv = rows_pos * run.prep.kv_bytes_per_token
        peak = res.get("peak_rss_mb")
        row(f"peak RSS / (weights {weights / 1e6:.0f} MB + largest KV {kv / 1e6:.0f} MB), onnxlm fp32, {name}",
            ratio(peak * 2**20 if peak else None, weights + kv), "<= 1.3×", lambda v: v <= 1.3)
        row(f"peak RSS: onnxlm int8 / CTranslate2 int8, {name}",
            ratio(run.results.get("onnxlm int8", {}).get("peak_rss_mb"),
                  run.results.get("CTranslate2 int8", {}).get("peak_rss_mb")), "<= 1.2×", lambda v: v <= 1.2)
    row("`import onnxlm` (median of 5 fresh processes)", import_s, "< 0.3 s", lambda v: v < 0.3, ".3f", " s")
    rows.append(("runtime stays torch-free: `import onnxlm` + load + generate leave torch/transformers/onnx unimported",
                 "–" if torch_free is None else ("yes" if torch_free else "no"), "yes",
                 "not measured" if torch_free is None else ("met" if torch_free else "**missed**")))
    return rows


def import_checks(artifact: Path | None) -> tuple[float | None, bool | None]:
    """Median wall time of `import onnxlm` in 5 fresh processes; whether load + generate import torch & co."""
    times = []
    for _ in range(5):
        p = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import onnxlm; "
                            "print(time.perf_counter() - t)"], capture_output=True, text=True)
        with contextlib.suppress(ValueError, IndexError):
            times.append(float(p.stdout.strip().splitlines()[-1]))
    free = None
    if artifact is not None:
        code = ("import sys, onnxlm; m = onnxlm.load(sys.argv[1], provider='cpu'); "
                "m.generate([[1, 2, 3]], max_new_tokens=2); "
                "print(sorted(k for k in ('torch', 'transformers', 'onnx', 'onnxlm.export') if k in sys.modules))")
        p = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True)
        if p.returncode == 0:
            free = p.stdout.strip().splitlines()[-1] == "[]"
    return (statistics.median(times) if times else None), free

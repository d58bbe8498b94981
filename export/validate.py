"""Export-time validation: PyTorch vs onnxruntime on the same inputs.

Checks (causal): first step (past length 0), a step with past, and a left-padded batch of 2 (prompt + one step with
past) with ``position_ids = cumsum(mask) - 1`` and masked positions set to 1, as transformers'
``prepare_inputs_for_generation`` does. Checks (seq2seq): encoder on a right-padded batch of 2, the merged decoder's
first step (no cache, 3 decoder tokens) and a step with past (cache branch, cross-attention KV kept from the first
step).

Tolerance rule (``default_tolerance``): ``tol = ATOL + RTOL * max|reference logits|`` with ATOL = 1e-4 and
RTOL = 1e-4, the max taken over every check. fp32 rounding differences between two correct implementations grow with
the magnitude of the values summed, so a fixed absolute bound is either too loose for tiny models (logits ~1, where
diffs are ~1e-6) or too tight for real ones (logits in the tens); tiny models get ~1e-4..5e-4, a model with logits up to
30 gets 3.1e-3. A ``tolerance=`` given by the caller is an absolute bound and replaces the rule.

A check fails when max|ort - ref| > tol over the compared (non-padding) positions, or when the top-1 token differs at
some position while the reference's top-1 and ORT's top-1 are more than ``tol`` apart in the reference logits (a
near-tie may legitimately flip).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxlm.runtime.plain.causal_lm import position_ids_from_mask
from onnxlm.runtime.errors import ExportError

ATOL = 1e-4
RTOL = 1e-4
TOLERANCE_RULE = f"atol + rtol * max|reference logits| (atol={ATOL:g}, rtol={RTOL:g})"


def default_tolerance(max_abs_ref: float) -> float:
    return ATOL + RTOL * float(max_abs_ref)


@dataclass
class _Check:
    name: str
    ref: np.ndarray  # [n, V] rows compared
    got: np.ndarray
    is_logits: bool = True
    info: dict[str, Any] = field(default_factory=dict)


def _session(path: Path):
    import onnxruntime as ort

    from onnxlm.runtime.versions import runs_narrowed
    from onnxlm.runtime.window_narrowing import narrowed_model

    from .manifest import check_graph_onnxruntime

    need = check_graph_onnxruntime(path)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # 1.23: each sliding window one narrower, as the runtime does
    source = narrowed_model(path, so) if runs_narrowed(need) else str(path)
    return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])


def _ort_run(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one onnxruntime session; returns {output name: array}. (Tests monkeypatch this.)"""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    if "logits_to_keep" in wanted and "logits_to_keep" not in feeds:
        feeds = {**feeds, "logits_to_keep": np.array([0], dtype=np.int64)}  # every position is compared
    outs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outs))


def _t(x):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x))


def _causal_checks(model, session, cfg: dict) -> list[_Check]:
    import torch

    rng = np.random.default_rng(0)
    V = cfg["vocab_size"]
    L, kvh, hd = cfg["num_layers"], cfg["num_kv_heads"], cfg["head_dim"]
    checks: list[_Check] = []

    def empty_past(b):
        z = np.zeros((b, kvh, 0, hd), np.float32)
        return {f"past_key_values.{i}.{k}": z for i in range(L) for k in ("key", "value")}

    def presents_as_past(out):
        return {f"past_key_values.{i}.{k}": out[f"present.{i}.{k}"] for i in range(L) for k in ("key", "value")}

    def torch_run(ids, mask, pos, past):
        with torch.no_grad():
            o = model(input_ids=_t(ids), attention_mask=_t(mask), position_ids=_t(pos), past_key_values=past,
                      use_cache=True)
        return o.logits.float().numpy(), o.past_key_values

    def run_pair(tag, ids, mask, pos, ort_past, torch_past, valid):
        ref, tpast = torch_run(ids, mask, pos, torch_past)
        out = _ort_run(session, {"input_ids": ids, "attention_mask": mask, "position_ids": pos, **ort_past})
        checks.append(_Check(tag, ref[valid], out["logits"][valid]))
        return out, tpast

    # 1) first step, batch 1, past length 0
    ids = rng.integers(0, V, size=(1, 7), dtype=np.int64)
    mask = np.ones_like(ids)
    out, tpast = run_pair("first_step", ids, mask, position_ids_from_mask(mask), empty_past(1), None, mask.astype(bool))
    # 2) one step with past
    nxt = rng.integers(0, V, size=(1, 1), dtype=np.int64)
    mask2 = np.ones((1, 8), np.int64)
    run_pair("step_with_past", nxt, mask2, position_ids_from_mask(mask2)[:, -1:], presents_as_past(out), tpast,
             np.ones((1, 1), bool))
    # 3) batch of 2, left padded, then a step with past
    ids = rng.integers(0, V, size=(2, 7), dtype=np.int64)
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1]], np.int64)
    pad = cfg.get("pad_token_id")
    ids[mask == 0] = pad if isinstance(pad, int) and 0 <= pad < V else 0
    out, tpast = run_pair("left_padded_batch", ids, mask, position_ids_from_mask(mask), empty_past(2), None, mask.astype(bool))
    nxt = rng.integers(0, V, size=(2, 1), dtype=np.int64)
    mask2 = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
    run_pair("left_padded_step_with_past", nxt, mask2, position_ids_from_mask(mask2)[:, -1:], presents_as_past(out), tpast,
             np.ones((2, 1), bool))
    return checks


def _seq2seq_checks(model, enc_sess, dec_sess, cfg: dict) -> list[_Check]:
    import torch
    from transformers.modeling_outputs import BaseModelOutput

    rng = np.random.default_rng(0)
    V = cfg["vocab_size"]
    L, H, hd = cfg["num_layers"], cfg["num_heads"], cfg["head_dim"]
    start = cfg.get("decoder_start_token_id") or 0
    checks: list[_Check] = []

    src = rng.integers(0, V, size=(2, 6), dtype=np.int64)
    smask = np.array([[1] * 6, [1, 1, 1, 1, 0, 0]], np.int64)
    src[smask == 0] = cfg.get("pad_token_id") or 0
    with torch.no_grad():
        ref_enc = model.get_encoder()(input_ids=_t(src), attention_mask=_t(smask), use_cache=False).last_hidden_state
    enc = _ort_run(enc_sess, {"input_ids": src, "attention_mask": smask})["last_hidden_state"]
    valid = smask.astype(bool)
    checks.append(_Check("encoder_padded_batch", ref_enc.numpy()[valid], enc[valid], is_logits=False))

    dec_ids = np.concatenate([np.full((2, 1), start, np.int64), rng.integers(0, V, size=(2, 2), dtype=np.int64)], 1)
    z = np.zeros((2, H, 0, hd), np.float32)
    past = {f"past_key_values.{i}.{a}.{k}": z for i in range(L) for a in ("decoder", "encoder") for k in ("key", "value")}
    feeds = {"encoder_attention_mask": smask, "input_ids": dec_ids, "encoder_hidden_states": enc,
             "use_cache_branch": np.array([False]), **past}
    out = _ort_run(dec_sess, feeds)
    with torch.no_grad():
        o = model(encoder_outputs=BaseModelOutput(last_hidden_state=ref_enc), attention_mask=_t(smask),
                  decoder_input_ids=_t(dec_ids), use_cache=True)
    checks.append(_Check("decoder_first_step", o.logits.numpy().reshape(-1, V), out["logits"].reshape(-1, V)))

    nxt = rng.integers(0, V, size=(2, 1), dtype=np.int64)
    # TRAP: with use_cache_branch=True the encoder presents are dummies; keep the first step's cross-attention KV.
    past = {}
    for i in range(L):
        for k in ("key", "value"):
            past[f"past_key_values.{i}.decoder.{k}"] = out[f"present.{i}.decoder.{k}"]
            past[f"past_key_values.{i}.encoder.{k}"] = out[f"present.{i}.encoder.{k}"]
    feeds = {"encoder_attention_mask": smask, "input_ids": nxt, "encoder_hidden_states": enc,
             "use_cache_branch": np.array([True]), **past}
    out2 = _ort_run(dec_sess, feeds)
    with torch.no_grad():
        o2 = model(encoder_outputs=BaseModelOutput(last_hidden_state=ref_enc), attention_mask=_t(smask),
                   decoder_input_ids=_t(nxt), past_key_values=o.past_key_values, use_cache=True)
    checks.append(_Check("decoder_step_with_past", o2.logits.numpy().reshape(-1, V), out2["logits"].reshape(-1, V)))
    return checks


def judge_check(c: _Check, tol: float) -> tuple[dict[str, Any], list[str]]:
    """One check -> (its manifest record, failure messages). Rule (module docstring): max|got - ref| <= tol, and
    a top-1 flip only where the reference's own gap between the two tokens is <= tol (a near-tie)."""
    if c.ref.shape != c.got.shape:
        return ({"name": c.name, "passed": False, "error": "shape mismatch"},
                [f"{c.name}: shape {c.got.shape} != reference {c.ref.shape}"])
    diff = float(np.abs(c.got.astype(np.float64) - c.ref).max()) if c.ref.size else 0.0
    if not np.isfinite(c.got).all():
        diff = float("inf")
    rec = {"name": c.name, "max_abs_diff": diff, "max_abs_ref": float(np.abs(c.ref).max())}
    failures = []
    if c.is_logits:  # [n, V]
        ref_top, got_top = c.ref.argmax(-1), c.got.argmax(-1)
        rows = np.arange(len(ref_top))
        gaps = c.ref[rows, ref_top] - c.ref[rows, got_top]  # 0 where they agree
        rec["top1_mismatches"] = int((ref_top != got_top).sum())
        bad_top = int((gaps > tol).sum())
        if bad_top:
            failures.append(f"{c.name}: top-1 token differs at {bad_top} position(s) beyond a near-tie")
    if diff > tol:
        failures.append(f"{c.name}: max|diff| {diff:.3g} > tolerance {tol:.3g}")
    rec["passed"] = not failures
    return rec, failures


def validate_export(model, out_dir: Path, graphs: dict[str, str], cfg: dict, *, tolerance: float | None = None,
                    log=None) -> dict[str, Any]:
    """Compare ``model`` (PyTorch) with the exported graphs; return the manifest's ``validation`` dict.

    Raises ExportError when a check fails (see the module docstring for the rule). ``log`` (callable taking a str)
    receives one line per check, pass or fail.
    """
    out_dir = Path(out_dir)
    model.eval()
    if "encoder" in graphs:
        checks = _seq2seq_checks(model, _session(out_dir / graphs["encoder"]), _session(out_dir / graphs["decoder"]), cfg)
    else:
        checks = _causal_checks(model, _session(out_dir / graphs["decoder"]), cfg)
    return judge_checks(checks, tolerance, log, "PyTorch vs onnxruntime")


def judge_checks(checks: list[_Check], tolerance: float | None, log, what: str) -> dict[str, Any]:
    """Every check judged with one tolerance (the caller's, else the rule over all checks' logits) -> the manifest's
    ``validation`` dict; raises ExportError naming every failed check. ``log`` gets one line per check. A reference
    that is not finite is an ExportError first: its tolerance would be NaN, and every comparison with NaN passes."""
    broken = [c.name for c in checks if not np.isfinite(c.ref).all()]
    if broken:
        raise ExportError(f"export validation failed ({what}): the reference itself gives NaN or inf in "
                          f"{', '.join(broken)}: the model's weights or config make it answer non-finite numbers "
                          "(e.g. a negative norm epsilon, a rotary base of 0, weights that decode to inf), so there "
                          "is nothing to validate the export against")
    max_ref = max(float(np.abs(c.ref).max()) for c in checks if c.is_logits)
    tol = float(tolerance) if tolerance is not None else default_tolerance(max_ref)
    records, failures = [], []
    for c in checks:
        rec, why = judge_check(c, tol)
        records.append(rec)
        failures.extend(why)
        if log and "max_abs_diff" in rec:
            extra = f", top-1 mismatches {rec['top1_mismatches']}" if c.is_logits else ""
            log(f"  validate {c.name:<28} max|diff| {rec['max_abs_diff']:.3g} (tol {tol:.3g}, "
                f"max|ref| {rec['max_abs_ref']:.3g}{extra}) {'ok' if rec['passed'] else 'FAIL'}")
    finite = [r["max_abs_diff"] for r in records if "max_abs_diff" in r]
    result = {
        "max_abs_diff": max(finite) if finite else None,
        "tolerance": tol,
        "tolerance_rule": "caller-given absolute tolerance" if tolerance is not None else TOLERANCE_RULE,
        "checks": records,
    }
    if failures:
        raise ExportError(f"export validation failed ({what}): " + "; ".join(failures))
    return result


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)

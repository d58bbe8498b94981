"""How much a quantized artifact changes the answer: teacher-forced agreement with its fp32 source.

Both artifacts read the same fixed text (``data/quality_text.txt``, shipped with onnxlm, ~650 tokens with
SmolLM2's tokenizer) in one teacher-forced pass each (windows of at most ``max_positions`` tokens); the measures
are the share of positions where the two models' top-1 next tokens agree, and both perplexities. The gate
(``check_quality``) refuses a variant below ``MIN_TOP1_AGREEMENT`` or above ``MAX_PERPLEXITY_INCREASE`` unless
forced. Random-weight models have near-uniform logits, so their agreement says little: their tests force it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError

QUALITY_TEXT = Path(__file__).resolve().parent / "data" / "quality_text.txt"
MIN_TOP1_AGREEMENT = 0.975  # share of teacher-forced positions whose top-1 token equals the fp32 model's
MAX_PERPLEXITY_INCREASE = 0.005  # relative: quantized perplexity <= fp32 perplexity * (1 + this)


def _windows(n: int, size: int | None) -> list[tuple[int, int]]:
    """[0, n) cut into consecutive windows of at most ``size`` tokens (one window when size is None)."""
    if not size or size >= n:
        return [(0, n)]
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _teacher_forced(model, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """ids [n] -> (top-1 next token [n-1] int64, log p(ids[i+1] | ids[:i+1]) [n-1] float64), window by window."""
    from onnxlm.runtime.processors import log_softmax

    tops, logps = [], []
    for start, end in _windows(len(ids), model.max_positions):
        window = ids[start:end]
        if len(window) < 2:
            continue
        logits = model.logits([window])[0, :-1]  # [w-1, V] float32
        tops.append(logits.argmax(-1))
        picked = np.take_along_axis(log_softmax(logits), np.asarray(window[1:])[:, None], axis=1)[:, 0]
        logps.append(picked.astype(np.float64))
    return np.concatenate(tops), np.concatenate(logps)


def measure_quality(reference_dir: Path, candidate_dir: Path, text: str | None = None) -> dict:
    """Two artifact dirs (fp32 reference, quantized candidate) with the same tokenizer -> the quality record."""
    import onnxlm

    ref = onnxlm.load(reference_dir, provider="cpu", verify=False)
    cand = onnxlm.load(candidate_dir, provider="cpu", verify=False)
    if ref.tokenizer is None:
        raise ExportError("quantization quality is measured on a text: this artifact has no tokenizer "
                          "(force_quality=True skips the measurement)")
    text = QUALITY_TEXT.read_text(encoding="utf-8") if text is None else text
    ids = ref.tokenizer.encode(text, add_special_tokens=False)
    top_ref, lp_ref = _teacher_forced(ref, ids)
    top_cand, lp_cand = _teacher_forced(cand, ids)
    return {"text": QUALITY_TEXT.name, "tokens": len(ids), "top1_agreement": float((top_ref == top_cand).mean()),
            "perplexity": float(np.exp(-lp_cand.mean())), "perplexity_fp32": float(np.exp(-lp_ref.mean())),
            "min_top1_agreement": MIN_TOP1_AGREEMENT, "max_perplexity_increase": MAX_PERPLEXITY_INCREASE}


def quality_failures(quality: dict) -> list[str]:
    """The gate's reasons to refuse a variant ([] when it passes)."""
    out = []
    if quality["top1_agreement"] < quality["min_top1_agreement"]:
        out.append(f"top-1 agreement with fp32 {quality['top1_agreement']:.3f} < {quality['min_top1_agreement']}")
    limit = quality["perplexity_fp32"] * (1 + quality["max_perplexity_increase"])
    if quality["perplexity"] > limit:
        out.append(f"perplexity {quality['perplexity']:.3f} > {limit:.3f} (fp32 {quality['perplexity_fp32']:.3f} "
                   f"+{quality['max_perplexity_increase']:.1%})")
    return out

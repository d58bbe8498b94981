"""How much a quantized artifact changes the answer: teacher-forced agreement with its fp32 source.

Both artifacts read the same fixed text (``data/quality_text.txt``, shipped with onnxlm: prose, meeting notes, a
dialogue, Python / SQL / JavaScript, a letter, questions and answers; 2,755 tokens with SmolLM2's tokenizer) in
teacher-forced passes of at most ``WINDOW`` tokens (and the models' ``max_positions``); the measures are the share of
positions where the two models' top-1 next tokens agree, both perplexities, and the mean KL divergence
KL(fp32 || quantized) of the next-token distributions. The gate (``quality_failures``) refuses a variant below
``MIN_TOP1_AGREEMENT``, above ``MAX_PERPLEXITY_INCREASE`` or above ``MAX_MEAN_KL`` unless forced.

The thresholds, from SmolLM2 on this text (fp32 = the dequantised Q4_1 GGUF): the GGUF-native default agrees on
97.7 % (perplexity +0.29 %, KL 0.0012), its fidelity level on 100 %, int8 at level 1 on 98.0 % (+0.40 %, 0.0011);
int8 at level 4 reads 96.2 % (+0.65 %, KL 0.0038) and no longer answers the chat question right, int4 70.6 % (KL
0.28). A top-1 figure moves by about +-0.3 % (one standard error at 2,755 tokens) with summation order, so the
agreement bound sits two of those below the default's; the KL bound, which does not hinge on near-ties, separates
the variants that keep the answers from those that change them. Random-weight models have near-uniform logits, so
their agreement says little: their tests force it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError

QUALITY_TEXT = Path(__file__).resolve().parent / "data" / "quality_text.txt"
MIN_TOP1_AGREEMENT = 0.97  # share of teacher-forced positions whose top-1 token equals the fp32 model's
MAX_PERPLEXITY_INCREASE = 0.005  # relative: quantized perplexity <= fp32 perplexity * (1 + this)
MAX_MEAN_KL = 0.003  # nats: mean KL(fp32 || quantized) of the next-token distributions over the text's positions
WINDOW = 1024  # tokens per teacher-forced pass
LOGITS_ELEMENTS = 1 << 25  # logits through the output head at once (128 MB: Gemma 3's 262,144-token vocabulary
#                            made a window's [1023, V] 1 GB a model, and the gate's peak 12.5 GB; 3.9 GB so)
ROW_ELEMENTS = 1 << 22  # logits whose log-probabilities are formed at once (16 MB float32 temporaries)
MIN_PASS = 65  # tokens a share's pass holds at least: onnxruntime's GroupQueryAttention sums in another order at
#                64 rows or fewer, over more the whole window's order (a share's pass up to its last position gave
#                SmolLM2's and Gemma 3's gate the same arrays bit for bit, in 0.77x and 0.67x the time)


def _windows(n: int, size: int | None) -> list[tuple[int, int]]:
    """[0, n) cut into consecutive windows of at most ``size`` tokens (one window when size is None)."""
    if not size or size >= n:
        return [(0, n)]
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _shares(n: int, vocab: int) -> list[tuple[int, int]]:
    """A window's n predicted positions [0, n) in the fewest equal shares of at most ``LOGITS_ELEMENTS`` logits."""
    passes = max(1, -(-n * vocab // LOGITS_ELEMENTS))
    return _windows(n, -(-n // passes))


def _teacher_forced(ref, cand, ids: list[int]) -> dict[str, np.ndarray]:
    """ids [n] -> per position of both models, window by window: top-1 next tokens [n-1] int64 ("top_ref",
    "top_cand"), log p(ids[i+1] | ids[:i+1]) [n-1] float32 ("lp_ref", "lp_cand"), and KL(ref || cand) of the two
    next-token distributions [n-1] float32 ("kl"). A window is one forward pass; a model whose ``logits`` selects
    positions (the fused graphs) runs its head on at most ``LOGITS_ELEMENTS`` logits at a time, a pass for each
    share of the window's positions over the window's tokens up to the share's last one (causal: the values the
    whole window's pass gives them; at least ``MIN_PASS`` tokens), another computes the window's logits once.
    Log-probabilities are formed a few rows at a time (row by row the same figures)."""
    from onnxlm.runtime.processors import log_softmax

    out = {k: [] for k in ("top_ref", "top_cand", "lp_ref", "lp_cand", "kl")}
    size = min(m for m in (ref.max_positions, cand.max_positions, WINDOW) if m)
    vocab = max(ref.vocab_size, cand.vocab_size)
    rows = max(1, ROW_ELEMENTS // vocab)
    models = {"ref": ref, "cand": cand}
    for start, end in _windows(len(ids), size):
        window = ids[start:end]
        if len(window) < 2:
            continue
        whole = {key: m.logits([window])[0, :-1] for key, m in models.items()
                 if not m.selects_positions}  # [w-1, V] float32
        for lo, hi in _shares(len(window) - 1, vocab) if len(whole) < 2 else [(0, len(window) - 1)]:
            nxt = np.asarray(window[lo + 1:hi + 1])[:, None]
            upto = window[:max(hi, MIN_PASS)]  # what positions lo..hi-1 see: tokens up to hi - 1
            logits = {key: whole[key][lo:hi] if key in whole else m.logits([upto], positions=np.arange(lo, hi))[0]
                      for key, m in models.items()}  # [k, V] float32
            for key, value in logits.items():
                out[f"top_{key}"].append(value.argmax(-1))
            for r in range(0, len(nxt), rows):
                logp = {key: log_softmax(value[r:r + rows]) for key, value in logits.items()}  # [rows, V] float32
                for key, lp in logp.items():
                    out[f"lp_{key}"].append(np.take_along_axis(lp, nxt[r:r + rows], axis=1)[:, 0])
                out["kl"].append((np.exp(logp["ref"]) * (logp["ref"] - logp["cand"])).sum(-1))
    return {k: np.concatenate(v) for k, v in out.items()}


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
    m = _teacher_forced(ref, cand, ids)
    return {"text": QUALITY_TEXT.name, "tokens": len(ids),
            "top1_agreement": float((m["top_ref"] == m["top_cand"]).mean()),
            "perplexity": float(np.exp(-m["lp_cand"].mean())), "perplexity_fp32": float(np.exp(-m["lp_ref"].mean())),
            "mean_kl": float(m["kl"].mean()),
            "min_top1_agreement": MIN_TOP1_AGREEMENT, "max_perplexity_increase": MAX_PERPLEXITY_INCREASE,
            "max_mean_kl": MAX_MEAN_KL}


def quality_failures(quality: dict) -> list[str]:
    """The gate's reasons to refuse a variant ([] when it passes)."""
    out = []
    if quality["top1_agreement"] < quality["min_top1_agreement"]:
        out.append(f"top-1 agreement with fp32 {quality['top1_agreement']:.3f} < {quality['min_top1_agreement']}")
    if quality.get("max_mean_kl") is not None and quality["mean_kl"] > quality["max_mean_kl"]:
        out.append(f"mean KL divergence from fp32 {quality['mean_kl']:.5f} > {quality['max_mean_kl']}")
    limit = quality["perplexity_fp32"] * (1 + quality["max_perplexity_increase"])
    if quality["perplexity"] > limit:
        out.append(f"perplexity {quality['perplexity']:.3f} > {limit:.3f} (fp32 {quality['perplexity_fp32']:.3f} "
                   f"+{quality['max_perplexity_increase']:.1%})")
    return out

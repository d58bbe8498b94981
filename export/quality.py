"""How much a quantized artifact changes the answer: teacher-forced agreement with its fp32 source.

Both artifacts read the same fixed text (``data/quality_text.txt``, shipped with onnxlm: prose, meeting notes, a
dialogue, Python / SQL / JavaScript, a letter, questions and answers; 2,755 tokens with SmolLM2's tokenizer) in
teacher-forced passes of at most ``WINDOW`` tokens (and the models' ``max_positions``); the measures are the share of
positions where the two models' top-1 next tokens agree, both perplexities, and the mean KL divergence
KL(fp32 || quantized) of the next-token distributions. The gate (``quality_failures``) refuses a variant below
``MIN_TOP1_AGREEMENT``, above ``MAX_PERPLEXITY_INCREASE`` or above ``MAX_MEAN_KL`` unless forced.

The thresholds, from SmolLM2 on this text (fp32 = the dequantised Q4_1 GGUF): the GGUF-native default agrees on
97.7 % (perplexity +0.29 %, KL 0.0012), its fidelity level on 100 %, int8 at level 1 on 98.0 % (+0.40 %, 0.0011);
int8 at level 4 reads 96.2 % (+0.65 %, KL 0.0038), int4 70.6 % (KL 0.28). A top-1 figure moves by about +-0.3 %
(one standard error at 2,755 tokens) with summation order, so the agreement bound sits two of those below the
default's; the KL bound does not hinge on near-ties. No bound keeps every greedy answer: the chat question "What is
the capital of France?" starts on a near-tie in fp32 ("The" 0.152, "L" 0.140), and both the default GGUF variant
and llama.cpp on the same file answer "L'Étoile, la Marseillaise," where fp32 says "Paris". Random-weight models
have near-uniform logits, so their agreement says little: their tests force it.

The gate stops as soon as the refusal is decided (``measure_quality(..., stop_when_refused=True)``, the export's
call unless the variant is forced): after each share, when the mismatches so far already keep the whole text's
top-1 agreement under its bound, or the KL summed so far already puts its mean over its bound (KL is never
negative), the rest of the text cannot change the outcome. int4 of SmolLM2 (70.6 %) is refused after the first 86
of 2,752 positions; a variant that passes reads the whole text.

The two models take turns share by share; a reference over ``ONE_AT_A_TIME_BYTES`` (2 GiB) runs first and is dropped
before the candidate loads, its log-probabilities going through a temporary file (slower: ~190 MB/s of writes here;
the same figures bit for bit), so the gate never holds a big fp32 session beside the candidate.

A caller may gate on a text of its own (``quality_text=``, ``--quality-text FILE``: its own domain, its own language):
at least ``MIN_GATE_TOKENS`` tokens with the artifact's tokenizer, since a shorter text's figures are too noisy to
refuse or pass a variant on (``check_quality_text``); a forced variant takes any text of two tokens or more (its
figures are recorded, not gated). The record names it ``"the caller's text"`` with its sha256.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError

QUALITY_TEXT = Path(__file__).resolve().parent / "data" / "quality_text.txt"
MIN_TOP1_AGREEMENT = 0.97  # share of teacher-forced positions whose top-1 token equals the fp32 model's
MAX_PERPLEXITY_INCREASE = 0.005  # relative: quantized perplexity <= fp32 perplexity * (1 + this)
MAX_MEAN_KL = 0.003  # nats: mean KL(fp32 || quantized) of the next-token distributions over the text's positions
WINDOW = 1024  # tokens per teacher-forced pass
LOGITS_ELEMENTS = 1 << 22  # logits through the output head at once (16 MB). Gemma 3's 262,144-token vocabulary made
#                            a window's [1023, V] 1 GB a model and the gate's peak 12.5 GB; 2^25 at a time 3.4 GB (the
#                            sessions' arenas keep a share's head outputs), 2^22 2.1 GB, in the same time, same figures
#: a reference artifact over this many bytes runs before the candidate loads, not beside it (``_teacher_forced``)
ONE_AT_A_TIME_BYTES = 2 << 30
KL_ROUNDING = 1e-5  # nats: a bound on how far below 0 a position's KL comes out in float32 (log-sum-exp rounding ~2e-6)
ROW_ELEMENTS = 1 << 22  # logits whose log-probabilities are formed at once (16 MB float32 temporaries)
MIN_GATE_TOKENS = 2000  # a caller's gate text, in the artifact's tokens (one standard error of top-1 ~0.3 % at 2,755)
CALLERS_TEXT = "the caller's text"  # the record's "text" for a quality_text (else the shipped file's name)


def _windows(n: int, size: int | None) -> list[tuple[int, int]]:
    """[0, n) cut into consecutive windows of at most ``size`` tokens (one window when size is None)."""
    if not size or size >= n:
        return [(0, n)]
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _shares(n: int, vocab: int) -> list[tuple[int, int]]:
    """A window's n predicted positions [0, n) in the fewest equal shares of at most ``LOGITS_ELEMENTS`` logits."""
    passes = max(1, -(-n * vocab // LOGITS_ELEMENTS))
    return _windows(n, -(-n // passes))


def _share_logits(model, window: list[int], vocab: int):
    """A window's tokens -> (lo, hi, the logits [hi - lo, V] float32 of its predicted positions lo..hi-1) for each
    share (``_shares``) of its positions 0..len(window)-2, in order (a generator). A model whose ``logits`` selects
    positions (the fused graphs): its ``empty_state`` ``extend``ed by each share's tokens, so the window's tokens go
    through the body once and each pass's head reads only its share (a pass over the window up to each share's last
    position read Gemma 3's window ~4.5 times: the gate took twice as long); the figures equal one pass over the whole
    window's. A share of one token takes a second token along: a one-row pass is a decode step, whose quantized
    products take onnxruntime's one-row kernels (other int8 roundings). Another model: the window's logits from one
    pass, sliced."""
    shares = _shares(len(window) - 1, vocab)
    if not model.selects_positions:
        whole = model.logits([window])[0, :-1]  # [w-1, V] float32
        for lo, hi in shares:
            yield lo, hi, whole[lo:hi]
        return
    ids = np.asarray(window, np.int64)[None, :]
    state = model.empty_state(max_length=len(window))
    for lo, hi in shares:
        extra = int(hi - lo == 1)  # a second token along (the window holds hi + 1 tokens), dropped again below
        logits = state.extend(ids[:, lo:hi + extra])[0, :hi - lo]  # [k, V] float32
        if extra:
            state.rollback(np.ones(1, np.int64))
        yield lo, hi, logits


class _FileRows:
    """The reference's log-probability rows, first all written to a temporary file (never mapped: not resident),
    then read back in the same order: the models run one after the other."""

    def __init__(self):
        import tempfile

        self.f = tempfile.TemporaryFile()

    def put(self, rows: np.ndarray) -> None:  # [r, V] float32
        self.f.write(np.ascontiguousarray(rows, np.float32).tobytes())

    def rewind(self) -> None:  # all written: read from the start
        self.f.seek(0)

    def take(self, shape: tuple[int, int]) -> np.ndarray:  # -> [r, V] float32
        return np.fromfile(self.f, np.float32, shape[0] * shape[1]).reshape(shape)

    def close(self) -> None:
        self.f.close()


class _MemoryRows:
    """The reference's log-probability rows handed over share by share in memory: the models take turns."""

    def __init__(self):
        from collections import deque

        self.q = deque()

    def put(self, rows: np.ndarray) -> None:
        self.q.append(rows)

    def rewind(self) -> None:
        pass

    def take(self, shape: tuple[int, int]) -> np.ndarray:
        return self.q.popleft()

    def close(self) -> None:
        self.q.clear()


def _one_side(model, ids: list[int], size: int, vocab: int, rows_of_ref, kind: str, out: dict):
    """One model over the text, window by window and share by share (a generator: it yields each share's number of
    positions once the share is read) ->
    ``out``'s top-1 tokens and log p(next token) per position; ``kind`` "ref" puts each position's log-probabilities
    [V] float32 into ``rows_of_ref``, "cand" takes them back in the same order and adds KL(ref || cand) per
    position. Log-probabilities are formed a few rows at a time (row by row the same figures)."""
    from onnxlm.runtime.processors import log_softmax

    rows = max(1, ROW_ELEMENTS // vocab)
    for start, end in _windows(len(ids), size):
        window = ids[start:end]
        if len(window) < 2:
            continue
        for lo, hi, logits in _share_logits(model, window, vocab):
            nxt = np.asarray(window[lo + 1:hi + 1])[:, None]
            out["top"].append(logits.argmax(-1))
            for r in range(0, len(nxt), rows):
                lp = log_softmax(logits[r:r + rows])  # [rows, V] float32
                out["lp"].append(np.take_along_axis(lp, nxt[r:r + rows], axis=1)[:, 0])
                if kind == "ref":
                    rows_of_ref.put(lp)
                else:
                    ref = rows_of_ref.take(lp.shape)
                    out["kl"].append((np.exp(ref) * (ref - lp)).sum(-1))
            yield hi - lo


def _positions(n: int, size: int) -> int:
    """The predicted positions of n tokens read in windows of ``size``: each window's tokens but its last."""
    return sum(end - start - 1 for start, end in _windows(n, size) if end - start >= 2)


def _refusal_decided(positions: int):
    """The whole text's ``positions`` -> a test on the figures so far ((ref, cand) lists of per-share arrays,
    ``_one_side``'s ``out``): True once the gate must refuse whatever the remaining positions hold: the mismatches
    so far leave the agreement under ``MIN_TOP1_AGREEMENT`` even if every other position agrees, or the KL so far
    (each position's is >= 0, up to float rounding: ``KL_ROUNDING`` a position) puts the mean over ``MAX_MEAN_KL``.
    Perplexity is no bound (the remaining positions can lower it)."""

    def decided(a: dict, b: dict) -> bool:
        mismatches = sum(int((x != y).sum()) for x, y in zip(a["top"], b["top"]))
        kl = sum(float(k.sum(dtype=np.float64)) for k in b["kl"])
        return (positions - mismatches < MIN_TOP1_AGREEMENT * positions
                or kl - KL_ROUNDING * positions > MAX_MEAN_KL * positions)

    return decided


def _teacher_forced(ref, cand, ids: list[int], *, size: int | None = None, one_at_a_time: bool = False,
                    stop=None, progress: bool = False) -> dict[str, np.ndarray]:
    """ids [n] -> per position of both models, window by window: top-1 next tokens [n-1] int64 ("top_ref",
    "top_cand"), log p(ids[i+1] | ids[:i+1]) [n-1] float32 ("lp_ref", "lp_cand"), and KL(ref || cand) of the two
    next-token distributions [n-1] float32 ("kl"). A window's logits are one forward pass's values; a model whose
    ``logits`` selects positions (the fused graphs) gets them a share at a time (``_share_logits``): its head on at
    most ``LOGITS_ELEMENTS`` logits per pass, the window's tokens through the body once.

    The models take turns share by share; ``one_at_a_time``: the reference runs first and is dropped (the caller
    hands over its only reference) before ``cand`` is loaded (``cand`` may be a callable that loads it), its
    log-probabilities going through a temporary file (``_FileRows``; 2.8 GB for Gemma 3's gate, written at ~190 MB/s
    here). The same figures either way, bit for bit. ``stop(ref_out, cand_out)``, asked after each of the
    candidate's shares: True ends the reading there, and every array holds the positions read so far.
    ``progress``: a bar of the positions read on stderr (one for the reference first when it runs alone)."""
    import gc

    from tqdm import tqdm

    size = size or min(m for m in (ref.max_positions, getattr(cand, "max_positions", None), WINDOW) if m)
    vocab = ref.vocab_size
    a, b = ({k: [] for k in ("top", "lp", "kl")} for _ in range(2))
    rows_of_ref = _FileRows() if one_at_a_time else _MemoryRows()
    positions = _positions(len(ids), size)
    bar = partial(tqdm, total=positions, unit="tok", disable=not progress, leave=False)
    try:
        if one_at_a_time:
            with bar(desc="quality gate: the fp32 reference") as done:
                for n in _one_side(ref, ids, size, vocab, rows_of_ref, "ref", a):
                    done.update(n)
            del ref  # measure_quality passes its only reference: the session goes here
            gc.collect()
            rows_of_ref.rewind()
        cand = cand() if callable(cand) and not hasattr(cand, "logits") else cand
        if cand.vocab_size != vocab:
            raise ExportError(f"quality: the candidate's vocabulary ({cand.vocab_size}) is not the reference's "
                              f"({vocab})")
        sides = [_one_side(cand, ids, size, vocab, rows_of_ref, "cand", b)]
        if not one_at_a_time:
            sides.insert(0, _one_side(ref, ids, size, vocab, rows_of_ref, "ref", a))
        with bar(desc="quality gate") as done:
            for *_, n in zip(*sides):  # zip: the reference's share, then the candidate's
                done.update(n)
                if stop is not None and stop(a, b):
                    break
    finally:
        rows_of_ref.close()
    n = sum(map(len, b["top"]))  # positions read (a reference that ran first read them all)
    return {"top_ref": np.concatenate(a["top"])[:n], "top_cand": np.concatenate(b["top"]),
            "lp_ref": np.concatenate(a["lp"])[:n], "lp_cand": np.concatenate(b["lp"]), "kl": np.concatenate(b["kl"])}


def _weight_bytes(artifact_dir: Path) -> int:
    """An artifact's graph and weight files' bytes."""
    return sum(f.stat().st_size for f in Path(artifact_dir).iterdir()
               if f.suffix == ".onnx" or f.name.endswith("_data"))


def check_quality_text(text, artifact_dir: Path | None, *, gated: bool) -> None:
    """ExportError naming ``quality_text`` unless ``text`` is None (the shipped text) or a string that the artifact's
    tokenizer cuts into at least ``MIN_GATE_TOKENS`` tokens (``gated``: the figures decide) or 2 (a forced variant:
    recorded only). Asked before the graph is rewritten, so a bad text costs nothing. ``artifact_dir`` None (a source
    still to be exported: no tokenizer yet): only what needs none, its type and, gated, a length that cannot be
    enough (under ``MIN_GATE_TOKENS`` UTF-8 bytes: a byte-level or byte-fallback tokenizer's token holds one byte or
    more, SentencePiece adds one space)."""
    from onnxlm.runtime.tokenizer import TextTokenizer

    if text is None:
        return
    if not isinstance(text, str) or not text:
        raise ExportError(f"quality_text: the text the quality gate reads, a non-empty str; got {text!r:.60}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise ExportError(f"quality_text: not valid Unicode ({e.reason} at index {e.start})") from e
    least = MIN_GATE_TOKENS if gated else 2
    why = ("the gate decides on it, and a shorter text's agreement moves by more than its bounds' margin; give a "
           "longer text, or force_quality=True (--force-quality) to record its figures without gating" if gated else
           "a teacher-forced measure needs two tokens or more")
    if artifact_dir is None:
        if gated and size + 1 < least:
            raise ExportError(f"quality_text: {size:,} UTF-8 bytes, too short for the {least:,} tokens the gate reads "
                              f"at the least (a token holds a byte or more): {why}")
        return
    tok_file = Path(artifact_dir) / "tokenizer.json"
    if not tok_file.is_file():
        raise ExportError(f"quality_text: given, but {artifact_dir} has no tokenizer.json to read it with")
    n = len(TextTokenizer.from_file(tok_file).encode(text, add_special_tokens=False))
    if n < least:
        raise ExportError(f"quality_text: {n:,} tokens with this artifact's tokenizer; at least {least:,} allowed: "
                          f"{why}")


def measure_quality(reference_dir: Path, candidate_dir: Path, text: str | None = None, *,
                    stop_when_refused: bool = False, progress: bool = False) -> dict:
    """Two artifact dirs (fp32 reference, quantized candidate) with the same tokenizer -> the quality record, on
    ``text`` (default: the shipped ``QUALITY_TEXT``; a caller's text is recorded as ``CALLERS_TEXT`` with its sha256). A
    reference of more than ``ONE_AT_A_TIME_BYTES`` runs first and is dropped before the candidate loads (a
    Llama-3.2-1B-shaped model's gate held 4.8 GB of fp32 session beside the candidate's 1.7).
    ``stop_when_refused``: the reading ends once the gate's refusal is decided (``_refusal_decided``); the record's
    figures are then those of the positions read, and ``"stopped_early": {"positions", "of"}`` says how many.
    ``progress``: a bar of the positions read on stderr."""
    import hashlib
    import json

    import onnxlm
    from onnxlm.runtime.heap import release_free_heap

    models = [onnxlm.load(reference_dir, provider="cpu", verify=False)]  # handed over below, not kept here
    tokenizer = models[0].tokenizer
    if tokenizer is None:
        raise ExportError("quantization quality is measured on a text: this artifact has no tokenizer "
                          "(force_quality=True, --force-quality, skips the measurement)")
    if text is None:
        name, text = {"text": QUALITY_TEXT.name}, QUALITY_TEXT.read_text(encoding="utf-8")
    else:
        name = {"text": CALLERS_TEXT, "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}  # a
        #                                                      --quality-text FILE's: the file's (read as bytes)
    ids = tokenizer.encode(text, add_special_tokens=False)
    cand_positions = json.loads((Path(candidate_dir) / "onnxlm.json").read_text()).get("max_positions")
    size = min(m for m in (models[0].max_positions, cand_positions, WINDOW) if m)

    def candidate():
        release_free_heap()  # the reference's session is gone: its pages back before the candidate's
        return onnxlm.load(candidate_dir, provider="cpu", verify=False)

    positions = _positions(len(ids), size)
    m = _teacher_forced(models.pop(), candidate, ids, size=size,
                        one_at_a_time=_weight_bytes(reference_dir) > ONE_AT_A_TIME_BYTES,
                        stop=_refusal_decided(positions) if stop_when_refused else None, progress=progress)
    early = {"stopped_early": {"positions": len(m["kl"]), "of": positions}} if len(m["kl"]) < positions else {}
    return {**name, "tokens": len(ids), **early,
            "top1_agreement": float((m["top_ref"] == m["top_cand"]).mean()),
            "perplexity": _perplexity(m["lp_cand"]), "perplexity_fp32": _perplexity(m["lp_ref"]),
            "mean_kl": float(m["kl"].mean()),
            "min_top1_agreement": MIN_TOP1_AGREEMENT, "max_perplexity_increase": MAX_PERPLEXITY_INCREASE,
            "max_mean_kl": MAX_MEAN_KL}


def _perplexity(logprobs: np.ndarray) -> float | None:
    """# [n] float32 log-probabilities -> exp of their mean negative (float64), or None past float64's range (a
    random-weight model's mean NLL over 709): JSON, which the manifest is, has no infinity (None reads as +inf)."""
    with np.errstate(over="ignore"):
        ppl = float(np.exp(-logprobs.mean(dtype=np.float64)))
    return ppl if np.isfinite(ppl) else None


def quality_failures(quality: dict) -> list[str]:
    """The gate's reasons to refuse a variant ([] when it passes)."""
    out = []
    if quality["top1_agreement"] < quality["min_top1_agreement"]:
        out.append(f"top-1 agreement with fp32 {quality['top1_agreement']:.3f} < {quality['min_top1_agreement']}")
    if quality.get("max_mean_kl") is not None and quality["mean_kl"] > quality["max_mean_kl"]:
        out.append(f"mean KL divergence from fp32 {quality['mean_kl']:.5f} > {quality['max_mean_kl']}")
    ppl, ppl_fp32 = perplexities(quality)
    limit = ppl_fp32 * (1 + quality["max_perplexity_increase"])
    if ppl > limit:
        out.append(f"perplexity {ppl:.3f} > {limit:.3f} "
                   f"(fp32 {ppl_fp32:.3f} +{quality['max_perplexity_increase']:.1%})")
    return out


def perplexities(quality: dict) -> tuple[float, float]:
    """A quality record -> (perplexity, perplexity_fp32) as floats (a recorded None, past float64's range: inf)."""
    return tuple(float("inf") if quality[k] is None else quality[k] for k in ("perplexity", "perplexity_fp32"))

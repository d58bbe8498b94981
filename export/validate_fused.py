"""Export-time validation of a fused artifact (kv_layout "fused"): PyTorch vs the runtime's own fused state.

Decoder-only: one left-padded batch of 3 rows (7, 4 and 1 real tokens of 7): the prompt's logits at every real
position (``FusedCausalLM.logits``), then ``start`` and two ``advance`` steps with past, against transformers' forward
with ``position_ids = cumsum(mask) - 1`` (padded slots 1) and its KV cache, taken first (``causal_references``).
T5: a right-padded source batch of 3 (7, 4 and 1 tokens): the logits of a 4-token decoder sequence at every position
(``FusedSeq2SeqLM.logits``), then ``start`` and two ``advance`` steps, against transformers' forward on the whole
decoder sequence so far. Same tolerance rule and judgement as ``validate.py`` (``judge_checks``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from onnxlm.runtime.plain.causal_lm import position_ids_from_mask

from .validate import _Check, _t, judge_checks


#: model_types whose transformers forward on a left-padded batch reads its pad tokens (LFM2: its convolutions' padding
#: mask is applied to a 2-D mask only, and the model hands them its 4-D one): their references are taken a row at a
#: time, each on its own tokens (what llama.cpp computes, and what the graph computes for any padding)
ROW_BY_ROW = ("lfm2",)


def causal_references(model, cfg: dict) -> dict:
    """PyTorch's side of the decoder-only checks, taken before the graph is built (an export of a model it loaded
    itself then drops the PyTorch weights while building: ``fused_graph.release_weights``): the inputs and
    transformers' logits -> {"ids" [3, 7], "mask" [3, 7], "next" [[3], [3]], "logits": check name -> [n, V]}. The
    padded slots' ids (0 here, the runtime's pad id there) reach no real position's logits: they are masked."""
    import torch

    model.eval()
    rng = np.random.default_rng(0)
    V = cfg["vocab_size"]
    ids = rng.integers(0, V, size=(3, 7), dtype=np.int64)
    mask = np.array([[1] * 7, [0, 0, 0, 1, 1, 1, 1], [0] * 6 + [1]], np.int64)
    ids[mask == 0] = 0
    nexts = [rng.integers(0, V, size=(3,), dtype=np.int64) for _ in range(2)]
    if model.config.model_type in ROW_BY_ROW:
        return {"ids": ids, "mask": mask, "next": nexts, "logits": _row_by_row(model, ids, mask, nexts)}
    with torch.no_grad():
        o = model(input_ids=_t(ids), attention_mask=_t(mask), position_ids=_t(position_ids_from_mask(mask)),
                  use_cache=True)
    logits = {"fused_prompt_all_positions": o.logits.float().numpy()[mask.astype(bool)],
              "fused_prefill_last": o.logits.float().numpy()[:, -1]}
    past, step_mask = o.past_key_values, mask
    for step, nxt in enumerate(nexts):
        step_mask = np.concatenate([step_mask, np.ones((3, 1), np.int64)], axis=1)
        pos = (step_mask.sum(axis=1) - 1)[:, None]
        with torch.no_grad():
            o = model(input_ids=_t(nxt[:, None]), attention_mask=_t(step_mask), position_ids=_t(pos),
                      past_key_values=past, use_cache=True)
        past = o.past_key_values
        logits[f"fused_step_{step + 1}_with_past"] = o.logits.float().numpy()[:, -1]
    return {"ids": ids, "mask": mask, "next": nexts, "logits": logits}


def _row_by_row(model, ids: np.ndarray, mask: np.ndarray, nexts: list) -> dict:
    """``causal_references``' logits with each row run alone on its attended tokens, each step on the whole row so
    far (no cache: transformers' LFM2 decode step loses a convolution input while a row holds fewer positions than
    its taps)."""
    import torch

    rows = [ids[r][mask[r] == 1] for r in range(len(ids))]
    with torch.no_grad():
        def run(row):  # [n] -> [n, V]
            return model(input_ids=_t(row[None])).logits[0].float().numpy()
        prompt = [run(row) for row in rows]
        logits = {"fused_prompt_all_positions": np.concatenate(prompt),
                  "fused_prefill_last": np.stack([p[-1] for p in prompt])}
        for step in range(len(nexts)):
            rows = [np.append(row, nexts[step][r]) for r, row in enumerate(rows)]
            logits[f"fused_step_{step + 1}_with_past"] = np.stack([run(row)[-1] for row in rows])
    return logits


def _fused_checks(references: dict, runtime_model) -> list[_Check]:
    """``causal_references`` against the runtime's fused state on the same inputs: every real position of the
    left-padded prompt (``logits``), ``start``'s last position, two ``advance`` steps."""
    ref = references["logits"]
    ids, mask = references["ids"].copy(), references["mask"]
    ids[mask == 0] = runtime_model.pad_id
    checks = [_Check("fused_prompt_all_positions", ref["fused_prompt_all_positions"],
                     runtime_model.logits(ids, mask)[mask.astype(bool)])]
    state, got = runtime_model.start(ids, mask)
    checks.append(_Check("fused_prefill_last", ref["fused_prefill_last"], got))
    for step, nxt in enumerate(references["next"]):
        name = f"fused_step_{step + 1}_with_past"
        checks.append(_Check(name, ref[name], state.advance(nxt)))
    return checks


def _fused_seq2seq_checks(model, runtime_model, cfg: dict) -> list[_Check]:
    import torch

    rng = np.random.default_rng(0)
    V = cfg["vocab_size"]
    src = rng.integers(0, V, size=(3, 7), dtype=np.int64)
    mask = np.array([[1] * 7, [1, 1, 1, 1, 0, 0, 0], [1] + [0] * 6], np.int64)
    src[mask == 0] = runtime_model.pad_id
    dec = np.concatenate([runtime_model.initial_sequences(src), rng.integers(0, V, size=(3, 3), dtype=np.int64)], 1)

    def ref(decoder_ids):  # [b, T] -> transformers' logits [b, T, V]
        with torch.no_grad():
            return model(input_ids=_t(src), attention_mask=_t(mask), decoder_input_ids=_t(decoder_ids)).logits.numpy()

    checks = [_Check("fused_decoder_all_positions", ref(dec).reshape(-1, V),
                     runtime_model.logits(src, dec, mask).reshape(-1, V))]
    state, got = runtime_model.start(src, mask)
    checks.append(_Check("fused_first_step", ref(dec[:, :1])[:, -1], got))
    for step in range(1, 3):
        checks.append(_Check(f"fused_step_{step}_with_past", ref(dec[:, :step + 1])[:, -1],
                             state.advance(dec[:, step])))
    return checks


def validate_fused_export(model, out_dir: Path, manifest: dict, cfg: dict, *, tolerance: float | None = None,
                          log=None, references: dict | None = None) -> dict[str, Any]:
    """``model`` (PyTorch) vs the fused artifact in ``out_dir`` (side files written, ``manifest`` = the manifest to
    be) through the runtime; returns the manifest's ``validation`` dict, raises ExportError when a check fails.
    Decoder-only: ``references`` (``causal_references``, taken before the build) stand for the model, which may
    have been released since; without them they are taken from ``model`` now."""
    from onnxlm.runtime.fused import causal_class
    from onnxlm.runtime.fused.seq2seq_lm import FusedSeq2SeqLM

    from .manifest import check_graph_onnxruntime

    for graph in manifest["graphs"].values():  # the runtime's sessions check only the floor every graph needs
        check_graph_onnxruntime(Path(out_dir) / graph["file"], manifest.get("max_positions"))
    model.eval()
    if manifest["kind"] == "seq2seq-lm":
        checks = _fused_seq2seq_checks(model, FusedSeq2SeqLM(Path(out_dir), manifest, "cpu", None), cfg)
    else:
        refs = references if references is not None else causal_references(model, cfg)
        checks = _fused_checks(refs, causal_class(manifest)(Path(out_dir), manifest, "cpu", None))
    return judge_checks(checks, tolerance, log, "PyTorch vs onnxruntime, fused graph")

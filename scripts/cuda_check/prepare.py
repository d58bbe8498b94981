"""The CUDA check's inputs, made on a machine with the `export` extra (torch, transformers 4.57.6): the tiny plain
GPT-2, Llama and T5 artifacts and transformers' references for them (refs.npz), in OUT (default .devcheck/).

    .venv/bin/python scripts/cuda_check/prepare.py [OUT]

A GPU host then needs only onnxruntime-gpu, onnxlm's wheel (`pip wheel --no-deps -w OUT/whl .`), starlette,
uvicorn and sse-starlette, and runs `python scripts/cuda_check/run.py OUT` (see run.py). Its transformers and torch
may be any version: the references travel as arrays.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
MODELS = ("tiny-gpt2", "tiny-llama", "tiny-t5")


@torch.no_grad()
def causal_refs(ours, ref) -> dict[str, np.ndarray]:
    """A left-padded batch of 3 and transformers' answers: next-token logits at the start and after each of 3 steps
    [4, b, V], greedy (8 new) and 4-beam (6 new) ids, per-token log-probs of the batch [b, t-1]."""
    from torch_ref import causal_logits, left_padded_batch

    ids, mask = left_padded_batch(np.random.default_rng(0), [6, 2, 4], ours.vocab_size - 4, ours.pad_id)
    steps = np.array([[5 + t, 9, 11] for t in range(3)])  # [3, b]
    seq, seq_mask, logits = ids, mask, [causal_logits(ref, ids, mask)[:, -1]]
    for tok in steps:
        seq = np.concatenate([seq, tok[:, None]], 1)
        seq_mask = np.concatenate([seq_mask, np.ones((len(tok), 1), np.int64)], 1)
        logits.append(causal_logits(ref, seq, seq_mask)[:, -1])
    gen = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), do_sample=False, eos_token_id=None,
               pad_token_id=ours.pad_id)
    lp = torch.log_softmax(torch.tensor(causal_logits(ref, ids, mask)), -1).numpy()  # [b, t, V]
    return {"ids": ids, "mask": mask, "steps": steps, "step_logits": np.stack(logits),
            "greedy": ref.generate(max_new_tokens=8, **gen).numpy(),
            "beam4": ref.generate(num_beams=4, max_new_tokens=6, **gen).numpy(),
            "token_logprobs": np.take_along_axis(lp[:, :-1], ids[:, 1:, None], 2)[..., 0]}


@torch.no_grad()
def seq2seq_refs(ours, ref) -> dict[str, np.ndarray]:
    """Right-padded sources [2, s] and transformers' answers: the first decoder logits [b, V], greedy and 4-beam ids
    (6 new tokens)."""
    from torch_ref import right_padded_batch, seq2seq_logits

    eos = ours.generation_config.eos_token_ids[0]
    src, m = right_padded_batch(np.random.default_rng(1), [5, 3], ours.vocab_size - 4, ours.pad_id, eos)
    gen = dict(input_ids=torch.tensor(src), attention_mask=torch.tensor(m), do_sample=False, max_new_tokens=6,
               eos_token_id=None)
    return {"ids": src, "mask": m, "start_logits": seq2seq_logits(ref, src, m, ours.initial_sequences(src))[:, -1],
            "greedy": ref.generate(**gen).numpy(), "beam4": ref.generate(num_beams=4, **gen).numpy()}


def main(out: Path) -> None:
    from transformers import AutoModelForCausalLM, T5ForConditionalGeneration

    import onnxlm
    from onnxlm.export import export_model
    from onnxlm.export.recipes import build_recipe

    tmp = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    try:
        for name in MODELS:
            hf = build_recipe(REPO / "models" / "recipes" / name, tmp / name)
            art = export_model(hf, out / name, progress=False, kv_layout="plain", force=True)
            ours = onnxlm.load(art, provider="cpu")
            if name == "tiny-t5":
                refs = seq2seq_refs(ours, T5ForConditionalGeneration.from_pretrained(hf).eval())
            else:  # eager attention: transformers' SDPA path drops some configs' scalings
                refs = causal_refs(ours, AutoModelForCausalLM.from_pretrained(hf, attn_implementation="eager").eval())
            # onnxlm on this CPU with a seed: the draws read host logits, so the GPU run must draw the same
            refs["cpu_sample"] = ours.generate(refs["ids"], attention_mask=refs["mask"], do_sample=True, top_k=20,
                                               seed=7, max_new_tokens=8, eos_token_id=[]).sequences
            np.savez(art / "refs.npz", **refs)
            print(name, {k: v.shape for k, v in refs.items()})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / ".devcheck")

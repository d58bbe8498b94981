"""Speculative decoding on SmolLM2 (batch 1, 2 threads): tokens/s plain vs prompt lookup vs a draft model, per task.

Tasks: copy/edit of a passage, extraction of fields from a document, a summary, free text, a code rewrite (chat
prompts, greedy, max 160 new tokens). Columns: tokens/s of each mode, its ratio to plain in the same run, acceptance
(accepted / proposed tokens), tokens per forward pass (new tokens / passes, the prefill counted), and whether the ids
equal plain greedy. Runs are interleaved (plain, lookup, draft, plain, ...) so that CPU contention from other work
hits every mode alike; each figure is the best of ``--repeats``. The verify-step cost: a 10-token ``extend`` against
a 1-token ``advance`` on the same state (median of 20 each).

The draft model is a 4-layer Llama with SmolLM2's vocabulary and tokenizer and RANDOM weights (``--draft`` builds it
once): it shows the cost side of a draft (its proposals are almost never accepted), not a trained draft's gain.

    python -m benchmarks.speculative MODEL_DIR [--draft DIR] [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

import onnxlm

PASSAGE = ("The river Loire rises in the Massif Central and flows north and then west for more than a thousand "
           "kilometres before it reaches the Atlantic at Saint-Nazaire. Along its middle course stand the castles "
           "of Chambord, Blois, Amboise and Chenonceau, built by kings and financiers of the Renaissance who came "
           "for the hunting and the mild climate. The valley between Sully-sur-Loire and Chalonnes was listed as a "
           "World Heritage Site in 2000 for its landscape of towns, vineyards and river islands.")
DOCUMENT = ("Invoice number: INV-2024-0193\nDate: 14 March 2024\nCustomer: Maison Dupont SARL, 12 rue des Lilas, "
            "37000 Tours\nItems: 3 oak chairs at 120.00 EUR, 1 walnut table at 640.00 EUR\nTotal: 1000.00 EUR\n"
            "Payment due: 13 April 2024\nContact: claire.dupont@example.com")
CODE = ("def total(items):\n    t = 0\n    for i in range(len(items)):\n        t = t + items[i]['price'] * "
        "items[i]['qty']\n    return t\n\n\ndef names(items):\n    out = []\n    for i in range(len(items)):\n"
        "        out.append(items[i]['name'])\n    return out\n")
TASKS = {
    "copy/edit": f"Repeat this text exactly, but replace 'kilometres' with 'km':\n\n{PASSAGE}",
    "extraction": f"From this invoice, write the invoice number, the customer, the total and the contact, one "
                  f"per line as 'field: value':\n\n{DOCUMENT}",
    "summary": f"Summarize this paragraph in two sentences:\n\n{PASSAGE}",
    "free text": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "code rewrite": f"Rewrite these Python functions to use list comprehensions and sum(), keeping the names:\n\n"
                    f"{CODE}",
}


def build_draft(model_dir: Path, out: Path) -> Path:
    """A 4-layer Llama with the model's vocabulary and tokenizer, random weights, exported fused (once)."""
    if (out / "onnxlm.json").is_file():
        return out
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from onnxlm.export import export_model
    base = json.loads((model_dir / "config.json").read_text())
    cfg = LlamaConfig(vocab_size=base["vocab_size"], hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=base.get("bos_token_id"),
                      eos_token_id=base.get("eos_token_id"), pad_token_id=base.get("pad_token_id"))
    torch.manual_seed(0)
    hf = out.parent / (out.name + "-hf")
    LlamaForCausalLM(cfg).save_pretrained(hf)
    for name in ("tokenizer.json", "generation_config.json", "chat_template.jinja"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, hf / name)
    return export_model(hf, out, progress=False, kv_layout="fused", validate=False)


def verify_cost(model, repeats: int = 20) -> tuple[float, float]:
    """-> (median seconds of a 10-token extend, of a 1-token advance) after a 200-token prefix."""
    ids = np.asarray([model._encode(PASSAGE)[:200]], np.int64)
    state, _ = model.start(ids, np.ones_like(ids))
    ext, adv = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        state.extend(ids[:, :10])
        ext.append(time.perf_counter() - t)
        state.rollback(np.array([10]))
        t = time.perf_counter()
        state.advance(ids[0, :1])
        adv.append(time.perf_counter() - t)
        state.rollback(np.array([1]))
    return statistics.median(ext), statistics.median(adv)


def run(model_dir: Path, draft_dir: Path | None, repeats: int, max_new: int) -> dict:
    model = onnxlm.load(model_dir, threads=2)
    draft = onnxlm.load(draft_dir, threads=2) if draft_dir else None
    modes = {"plain": {}, "lookup": dict(prompt_lookup_num_tokens=10)}
    if draft is not None:
        modes["draft"] = dict(assistant_model=draft, num_assistant_tokens_schedule="heuristic_transient")
    rows = {}
    for task, text in TASKS.items():
        prompt = [model.render_chat([{"role": "user", "content": text}], tokenize=True)]
        best, out = {m: 0.0 for m in modes}, {}
        for _ in range(repeats):
            for mode, kw in modes.items():  # interleaved: contention hits every mode alike
                t = time.perf_counter()
                res = model.generate(prompt, max_new_tokens=max_new, do_sample=False, **kw)
                dt = time.perf_counter() - t
                n = len(res.new_tokens[0])
                best[mode] = max(best[mode], n / dt)
                out[mode] = res
        rows[task] = (best, out)
    return {"rows": rows, "verify": verify_cost(model), "modes": list(modes)}


DESCRIPTION = """`python -m benchmarks.speculative models/smollm2-135m-instruct --draft models/draft-random --write
docs/benchmarks.md`: chat prompts (copy/edit of a passage, extraction of invoice fields, a two-sentence summary, a
short story, a code rewrite), greedy, at most 160 new tokens. Modes: plain; prompt lookup
(`prompt_lookup_num_tokens=10`); a draft model (`assistant_model=`,
`num_assistant_tokens_schedule="heuristic_transient"`). **The draft is a 4-layer Llama (hidden 256) with SmolLM2's
vocabulary and RANDOM weights**: it shows what a draft costs (its proposals are never accepted), not what a trained
draft gains. Measured while other workers used the same 2 cores (load average 3-5): runs are interleaved (plain,
lookup, draft, plain, ...) so the contention hits every mode, each figure is the best of 2, and the ratios are
within one run (absolute tokens/s are lower than on an idle machine). Acceptance = accepted / proposed tokens; tokens
per pass counts the prefill."""


def table(result: dict) -> str:
    modes = result["modes"]
    head = ["task", "new tokens"] + [f"{m} tok/s" for m in modes]
    head += [f"{m} ×plain" for m in modes[1:]] + [f"{m} accept" for m in modes[1:]]
    head += [f"{m} tok/pass" for m in modes[1:]] + ["ids equal"]
    lines = [DESCRIPTION, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task, (best, out) in result["rows"].items():
        plain = out["plain"]
        cells = [task, str(len(plain.new_tokens[0]))] + [f"{best[m]:.1f}" for m in modes]
        cells += [f"{best[m] / best['plain']:.2f}" for m in modes[1:]]
        for m in modes[1:]:
            s = out[m].speculation
            cells.append(f"{s.accepted / s.proposed:.2f}" if s.proposed else "-")
        cells += [f"{len(out[m].new_tokens[0]) / (out[m].speculation.passes + 1):.2f}" for m in modes[1:]]
        cells.append("yes" if all(out[m].new_tokens == plain.new_tokens for m in modes) else "NO")
        lines.append("| " + " | ".join(cells) + " |")
    ext, adv = result["verify"]
    lines.append("")
    lines.append(f"Verify step: a 10-token `extend` takes {ext * 1e3:.1f} ms, a 1-token `advance` {adv * 1e3:.1f} ms "
                 f"({ext / adv:.2f}×), after a 200-token prefix.")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.speculative", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--draft", type=Path, help="draft artifact dir (built with random weights when missing)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--write", type=Path, help="update the 'speculative' section of this Markdown file")
    args = p.parse_args(argv)
    draft = build_draft(args.model_dir, args.draft) if args.draft else None
    text = table(run(args.model_dir, draft, args.repeats, args.max_new_tokens))
    print(text)
    if args.write:
        from benchmarks.report_sections import update_sections
        update_sections(args.write, "benchmarks.speculative", {"speculative": text})


if __name__ == "__main__":
    main()

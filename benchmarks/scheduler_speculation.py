"""The server's speculation (``onnxlm serve --prompt-lookup N``): one request alone in the continuous-batching
scheduler, plain against prompt lookup, on the chat tasks of ``benchmarks.speculative`` (greedy, 2 threads).

The scheduler is driven as the server's engine drives it (``step`` until done), without HTTP (which costs both modes
the same). Runs are interleaved (plain, lookup, plain, ...) and each figure is the best of ``--repeats``. Columns:
tokens/s of each mode, their ratio, acceptance (accepted / proposed tokens), tokens per scheduler step, and whether
the ids equal plain's (on a quantized variant's int8 activations a pass of several positions may round otherwise:
docs/design.md, "Rows per pass"). A third mode sends a ``prediction`` (OpenAI's predicted outputs) without prompt
lookup: the text a client would predict the answer from (the passage to copy, the invoice, the code; none for the
free text). With ``--draft DIR`` a fourth mode speculates with that draft model (the server's ``--draft``;
runtime/decoding/scheduler_draft.py, llama.cpp's defaults: up to 16 tokens a round, p_min 0.75), and the draft's
own plain tokens/s are measured beside (its cost against the model's). The task "extraction (JSON)" asks for the
invoice's fields under a JSON schema (OpenAI's ``response_format`` json_schema, every mode constrained): there the
speculating modes also check the schema's forced tokens (its keys, quotes, braces; scheduler_speculation.py's
``ConstrainedProposer``). ``--tasks`` picks some of the tasks.

    python -m benchmarks.scheduler_speculation MODEL_DIR [--prompt-lookup 10] [--draft DIR] [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import onnxlm
from onnxlm.runtime.constraints import make_constraint
from onnxlm.runtime.decoding.scheduler import Request, Scheduler
from onnxlm.runtime.decoding.scheduler_draft import ServerDraft

from benchmarks.speculative import CODE, DOCUMENT, PASSAGE, TASKS

#: what a client would send as the prediction of each task's answer (its source text; the edit asked, where known)
PREDICTIONS = {"copy/edit": PASSAGE.replace("kilometres", "km"), "extraction": DOCUMENT, "summary": PASSAGE,
               "free text": None, "code rewrite": CODE, "extraction (JSON)": DOCUMENT}
INVOICE = {"type": "object", "properties": {k: {"type": "string"} for k in ("invoice_number", "customer", "total",
                                                                           "contact")},
           "required": ["invoice_number", "customer", "total", "contact"], "additionalProperties": False}
#: the structured-output task: (its prompt, its JSON schema)
STRUCTURED = {"extraction (JSON)": (f"From this invoice, give the invoice number, the customer, the total and the "
                                    f"contact as JSON:\n\n{DOCUMENT}", INVOICE)}


def one(model, ids: list[int], max_new: int, lookup: int, prediction: str | None = None, draft=None,
        schema: dict | None = None) -> tuple[float, list[int], object, int]:
    """One request alone (``draft``: a ServerDraft or None; ``schema``: a JSON schema it answers under) -> (tokens/s
    from admission to its last token, its new ids, the speculation counts, scheduler steps)."""
    sched = Scheduler(model, prompt_lookup=lookup, draft=draft)
    predicted = model.tokenizer.encode(prediction, add_special_tokens=False) if prediction else None
    constraint = make_constraint("json_schema", schema) if schema is not None else None
    req = sched.add(Request(ids, model.resolve_config(dict(max_new_tokens=max_new, do_sample=False)),
                            prediction=predicted, constraint=constraint))
    steps, t = 0, time.perf_counter()
    while sched.busy:
        sched.step()
        steps += 1
    return len(req.new_ids[0]) / (time.perf_counter() - t), req.new_ids[0], sched.speculation, steps


def run(model_dir: Path, lookup: int, repeats: int, max_new: int, draft_dir: Path | None = None,
        tasks: list[str] | None = None) -> dict:
    model = onnxlm.load(model_dir, threads=2)
    draft_model = onnxlm.load(draft_dir, threads=2) if draft_dir else None
    draft = ServerDraft(draft_model, model) if draft_model is not None else None
    rows = {}
    every = {**{task: (text, None) for task, text in TASKS.items()}, **STRUCTURED}
    for task, (text, schema) in every.items():
        if tasks and task not in tasks:
            continue
        ids = model.render_chat([{"role": "user", "content": text}], tokenize=True)
        best, out = {"plain": 0.0, "lookup": 0.0, "prediction": 0.0, "draft": 0.0, "draft alone": 0.0}, {}
        modes = [("plain", model, 0, None, None), ("lookup", model, lookup, None, None)] + (
            [("prediction", model, 0, PREDICTIONS[task], None)] if PREDICTIONS.get(task) else []) + (
            [("draft", model, 0, None, draft), ("draft alone", draft_model, 0, None, None)] if draft else [])
        for _ in range(repeats):
            for mode, m, n, prediction, d in modes:  # interleaved: contention hits every mode alike
                rate, new, counts, steps = one(m, ids, max_new, n, prediction, d, schema)
                best[mode] = max(best[mode], rate)
                out[mode] = (new, counts, steps)
        rows[task] = (best, out)
    return {"rows": rows, "lookup": lookup, "model": model_dir, "draft": draft_dir}


def table(result: dict, command: str) -> str:
    drafted = (f", and the draft model `{result['draft']}` (`--draft`; its own plain tokens/s in the last column)"
               if result.get("draft") else "")
    lines = [f"`{command}`: one request alone in the scheduler (the server's engine loop, no HTTP), "
             f"`--prompt-lookup {result['lookup']}` against plain, and a `prediction` (the task's source text) without "
             f"prompt lookup{drafted}; greedy, the chat tasks of `benchmarks.speculative`; best of the repeats, modes "
             "interleaved.", "",
             "| task | new tokens | plain tok/s | mode | tok/s | ×plain | accept | tokens/step | ids equal |"
             + (" draft alone tok/s |" if drafted else ""), "|---|---|---|---|---|---|---|---|---|"
             + ("---|" if drafted else "")]
    for task, (best, out) in result["rows"].items():
        plain = out["plain"][0]
        for mode in ("lookup", "prediction", "draft"):
            if mode not in out:
                continue
            new, counts, steps = out[mode]
            accept = f"{counts.accepted / counts.proposed:.2f}" if counts.proposed else "-"
            lines.append(f"| {task} | {len(plain)} | {best['plain']:.1f} | {mode} | {best[mode]:.1f} | "
                         f"{best[mode] / best['plain']:.2f} | {accept} | {len(new) / steps:.2f} | "
                         f"{'yes' if new == plain else 'NO'} |"
                         + ((f" {best['draft alone']:.1f} |" if mode == "draft" else " - |") if drafted else ""))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.scheduler_speculation", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--prompt-lookup", type=int, default=10, help="tokens proposed at most (default: 10)")
    p.add_argument("--draft", type=Path, help="also speculate with this draft model (an artifact directory)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--tasks", nargs="+", metavar="TASK", choices=[*TASKS, *STRUCTURED],
                   help="only these tasks (default: all)")
    p.add_argument("--write", type=Path, help="update the 'scheduler_speculation' section of this Markdown file")
    args = p.parse_args(argv)
    result = run(args.model_dir, args.prompt_lookup, args.repeats, args.max_new_tokens, args.draft, args.tasks)
    command = "python -m benchmarks.scheduler_speculation " + " ".join(sys.argv[1:] if argv is None else argv)
    text = table(result, command)
    print(text)
    if args.write:
        from benchmarks.report_sections import update_sections
        update_sections(args.write, "benchmarks.scheduler_speculation", {"scheduler_speculation": text})


if __name__ == "__main__":
    main()

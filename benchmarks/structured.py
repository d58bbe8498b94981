"""Structured output cost on one model: ms per generated token with and without a constraint, the mask's own share,
and the one-time costs (llguidance tokenizer, schema compilation).

    nice -n 10 .venv/bin/python -m benchmarks.structured MODEL_DIR [--runs 5] [--batch 1 8] [--threads N] [--write]

For each batch size and constraint (a nested JSON schema, an ISO-date regex, two choices): a constrained greedy run
on chat prompts, then an unconstrained run of the *same number of tokens* (EOS disabled, so it cannot stop early).
ms/token = wall time of ``generate`` (prefill included) / generated tokens per row; median over ``--runs``.
"mask ms/token" is the time spent in the constraint processor and its matchers (mask + advance) per step.
--write replaces the "Structured output" section of docs/benchmarks.md between its ``benchmarks.structured`` markers
(appended if absent; the rest of the file stays as it is: benchmarks/report_sections.py).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import onnxlm
from onnxlm.runtime import constraints as C

from .report_sections import update_sections

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "tests" / "data" / "person_schema.json").read_text())
# the nested schema of tests/test_smollm2.py (one file for both)
PEOPLE = ["a 34-year-old engineer from Berlin", "a retired teacher in Lyon", "a student who paints",
          "Maria, a nurse in Madrid", "a chef from Tokyo", "an old fisherman", "a young pianist in Vienna",
          "a farmer in Kenya"]
CASES = {"json_schema": dict(json_schema=SCHEMA),
         "regex (ISO date)": dict(regex=r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"),
         "choices (2)": dict(choices=["yes", "no"])}
QUESTIONS = {"json_schema": "Describe {} as a JSON object with name, age, role, skills and address.",
             "regex (ISO date)": "When was {} born? Answer with a date as YYYY-MM-DD.",
             "choices (2)": "Is {} happy? Answer yes or no."}


class MaskTimer:
    """Wraps ConstraintProcessor.__call__ / advance to add up the time spent in them."""

    def __init__(self):
        self.seconds = 0.0
        self.calls = 0
        self._call, self._advance = C.ConstraintProcessor.__call__, C.ConstraintProcessor.advance
        timer = self

        def call(proc, ids, scores):
            t = time.perf_counter()
            out = timer._call(proc, ids, scores)
            timer.seconds += time.perf_counter() - t
            timer.calls += 1
            return out

        def advance(proc, tokens):
            t = time.perf_counter()
            timer._advance(proc, tokens)
            timer.seconds += time.perf_counter() - t

        C.ConstraintProcessor.__call__, C.ConstraintProcessor.advance = call, advance

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out


def one_time_costs(model) -> list[tuple[str, float]]:
    """(what, ms): llguidance tokenizer build, cold schema compile, cached compile, fresh matcher."""
    model.__dict__.pop("_constraint_engines", None)
    eos = model.generation_config.eos_token_ids
    t = time.perf_counter()
    engine = C.engine_for(model, eos, "json_schema")
    tok_ms = (time.perf_counter() - t) * 1e3
    c = C.make_constraint("json_schema", SCHEMA)
    t = time.perf_counter()
    engine.compile(c)
    cold = (time.perf_counter() - t) * 1e3
    t = time.perf_counter()
    for _ in range(100):
        engine.compile(C.make_constraint("json_schema", SCHEMA))
    cached = (time.perf_counter() - t) * 10
    t = time.perf_counter()
    for _ in range(100):
        engine.matcher(c)
    fresh = (time.perf_counter() - t) * 10
    return [("llguidance tokenizer from tokenizer.json (once per model)", tok_ms),
            ("JSON schema compile, first use", cold),
            ("JSON schema compile, cached (make_constraint + cache hit)", cached),
            ("fresh matcher per row (copy of the compiled one)", fresh)]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.structured", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="also print the rows as JSON lines")
    ap.add_argument("--write", action="store_true", help="update the section in docs/benchmarks.md")
    args = ap.parse_args()
    model = onnxlm.load(args.model_dir, threads=args.threads, verify=False)
    load_start = os.getloadavg()
    lines = ["| one-time cost | ms |", "| --- | ---: |"]
    lines += [f"| {what} | {ms:.2f} |" for what, ms in one_time_costs(model)]
    print("\n".join(lines))
    timer = MaskTimer()
    table = ["| constraint | batch | new tokens | unconstrained ms/token | constrained ms/token | ratio | "
             "mask ms/token |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    print("\n" + "\n".join(table), flush=True)
    rows = []
    for batch in args.batch:
        for name, kw in CASES.items():
            prompts = [model.render_chat([{"role": "user", "content": QUESTIONS[name].format(p)}], tokenize=True)
                       for p in (PEOPLE * 4)[:batch]]
            res = model.generate(prompts, max_new_tokens=120, **kw)  # warm-up; fixes the token count
            steps = len(res.scores or []) or max(len(t) for t in res.new_tokens)
            free, bound, mask = [], [], []
            for _ in range(args.runs):
                t = time.perf_counter()
                model.generate(prompts, max_new_tokens=steps, eos_token_id=[])
                free.append((time.perf_counter() - t) * 1e3 / steps)
                timer.take()
                t = time.perf_counter()
                out = model.generate(prompts, max_new_tokens=120, **kw)
                n = max(len(x) for x in out.new_tokens)
                bound.append((time.perf_counter() - t) * 1e3 / n)
                seconds, _ = timer.take()
                mask.append(seconds * 1e3 / n)
            f, b, m = statistics.median(free), statistics.median(bound), statistics.median(mask)
            rows.append(dict(constraint=name, batch=batch, new_tokens=steps, unconstrained_ms=f, constrained_ms=b,
                             ratio=b / f, mask_ms=m))
            table.append(f"| {name} | {batch} | {steps} | {f:.2f} | {b:.2f} | {b / f:.2f}x | {m:.2f} |")
            print(table[-1], flush=True)
    if args.write:
        write_section(args, lines, table, rows, load_start, os.getloadavg())
    if args.json:
        for r in rows:
            print(json.dumps(r))


OWNER, SECTION = "benchmarks.structured", "structured-output"  # its markers in docs/benchmarks.md


def write_section(args, costs: list[str], table: list[str], rows: list[dict], load_start, load_end) -> None:
    """Replace (or append) the marked "Structured output" section of docs/benchmarks.md; nothing else changes."""
    import llguidance
    path = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
    shares = [100 * r["mask_ms"] / r["constrained_ms"] for r in rows]
    loads = lambda la: " / ".join(f"{x:.2f}" for x in la)  # noqa: E731
    body = ["## Structured output (SmolLM2: constrained against unconstrained decoding)", "",
            f"Generated by `python -m benchmarks.structured models/{Path(args.model_dir).name} --runs {args.runs} --batch "
            f"{' '.join(map(str, args.batch))} --write` (under `nice -n 10`); greedy, chat prompts, the constrained "
            "run first fixes the token count, the unconstrained run generates exactly as many tokens (EOS off); "
            "ms/token = wall time of `generate` (prefill included) / new tokens; median of the runs. **mask "
            "ms/token** is the time in the constraint processor (llguidance bitmask for the batch, the numpy mask, "
            "the matchers' advance) per step. The schema is the nested one of the test suite (objects, an array, an "
            "enum, a bounded integer, patterns).", "",
            f"Machine: {os.cpu_count()} logical CPUs, {platform.platform()}, Python {platform.python_version()}, "
            f"llguidance {llguidance.__version__}, onnxruntime {__import__('onnxruntime').__version__}. Load "
            f"average (1/5/15 min) at start {loads(load_start)}, at end {loads(load_end)}: other processes shared "
            "the CPU, so absolute times are pessimistic and noisy; the ratios and the mask's share are what to "
            "read.", "", *costs, "", *table, "",
            f"- The mask's own cost is {min(shares):.1f}-{max(shares):.1f} % of a constrained token's time in these "
            "rows; where the two ms/token columns differ by more than that, the rest is run-to-run noise of the "
            "shared machine (the runs alternate constrained / unconstrained). Target: within 1.2x.", ""]
    update_sections(path, OWNER, {SECTION: "\n".join(body) + "\n"})
    print(f"updated the {OWNER} section of {path}")


if __name__ == "__main__":
    main()

"""`python -m benchmarks.peers`: the command line, and one run from end to end (the limits, then per model the
preparation, one worker per engine, the agreement, the profiles; the targets; the report and its plot)."""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from ..report_sections import update_sections
from .limits import measure_limits
from .prepare import prepare
from .op_profile import run_profile
from .report import OWNER, TITLE, machine_info, plot_context, render, versions
from .results import ModelRun, compute_quality
from .runner import parse_cases, prompt_ids, quality_windows, run_rounds
from .settings import DEFAULT_OGENAI_BUILDER, DEFAULT_OUT, DEFAULT_PEERS_PYTHON, FULL, QUANT_VARIANTS, QUICK, REPO, log
from .targets import import_checks, targets


def parse_args(argv=None):
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.peers", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark onnxlm (fp32 and quantized) against PyTorch, optimum, CTranslate2, onnxruntime-genai "
                    "and llama.cpp,\neach engine in its own process; updates its sections of docs/benchmarks.md (between its "
                    "markers;\nthe rest of the file stays), writes a plot and the issue's TARGETS table.",
        epilog="full run (default): gpt2-small, t5-small, smollm2; cases " + " ".join(FULL["cases"]) +
               f"; {FULL['new_tokens']} new tokens, {FULL['runs']} runs.\n--quick: tiny recipes, cases " +
               " ".join(QUICK["cases"]) + f", {QUICK['new_tokens']} new tokens, 1 run, no file written unless "
               "--out.\n\nexamples (from the repository root):\n  .venv/bin/python -m benchmarks.peers --quick\n"
               "  .venv/bin/python -m benchmarks.peers --profile\n"
               "  .venv/bin/python -m benchmarks.peers --model smollm2 --cases b1:p16:greedy --no-write")
    p.add_argument("--quick", action="store_true", help="small models and few tokens: checks the machinery")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="gpt2-small | t5-small | smollm2 | a recipe name (tiny-gpt2, tiny-t5, tiny-llama) | a recipe "
                        "dir | a .gguf file (repeatable)")
    p.add_argument("--cases", nargs="+", metavar="bB:pP:MODE", help="cases, MODE greedy | sample | beam4")
    p.add_argument("--variants", nargs="*", metavar="NAME",
                   help=f"onnxlm quantized variants (default: all of {[v['name'] for v in QUANT_VARIANTS]})")
    p.add_argument("--new-tokens", type=int, help="new tokens per timed generate, N")
    p.add_argument("--runs", type=int, help="timed runs per case; medians are reported")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every engine's timed cases this many times, the engines taking turns: medians over the "
                        "rounds, and each round's ratios in the report (default: 1; the agreement pass runs once, "
                        "after them)")
    p.add_argument("--threads", type=int, default=usable, help=f"threads for every engine (default: {usable})")
    p.add_argument("--profile", action="store_true",
                   help="onnxruntime profiler on onnxlm's fp32 and default quantized graphs: op-type ms per step")
    p.add_argument("--engines", nargs="+", metavar="TEXT",
                   help="run only the engines whose label contains one of these (case-insensitive), e.g. llama.cpp")
    p.add_argument("--no-optimum", action="store_true")
    p.add_argument("--no-ct2", action="store_true")
    p.add_argument("--no-ogenai", action="store_true")
    p.add_argument("--no-llamacpp", action="store_true")
    p.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON,
                   help="python with llama_cpp (default: .venv-peers/bin/python at the repository root, or "
                        "$PEERS_VENV/bin/python; scripts/setup_peers.sh)")
    p.add_argument("--ogenai-builder", type=Path, default=DEFAULT_OGENAI_BUILDER,
                   help="onnxruntime-genai builder.py to run (default: the one setup_peers.sh extracts; else the "
                        "installed onnxruntime_genai.models.builder)")
    p.add_argument("--ct2-f32-env", nargs="*", default=[], metavar="VAR=VALUE",
                   help="environment for the CTranslate2 float32 worker (default: none, its own oneDNN backend, "
                        "the fastest on a quiet machine here; e.g. CT2_USE_MKL=1 to try MKL)")
    p.add_argument("--ct2-int8-env", nargs="*", default=[], metavar="VAR=VALUE",
                   help="environment for the CTranslate2 int8 worker (default: none; MKL's int8 GEMM is ~20x slower "
                        "than oneDNN's on this AMD CPU)")
    p.add_argument("--worker-timeout", type=int, default=1800, help="seconds per engine worker (default: 1800)")
    p.add_argument("--out", type=Path, help="markdown report whose marked sections are replaced (appended where "
                   "missing; default: docs/benchmarks.md; --quick: none)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: bench_context.png beside --out)")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.model = args.model or mode["models"]
    args.cases = args.cases or mode["cases"]
    args.new_tokens = args.new_tokens or mode["new_tokens"]
    args.runs = args.runs or mode["runs"]
    args.variants = [v["name"] for v in QUANT_VARIANTS] if args.variants is None else args.variants
    unknown = set(args.variants) - {v["name"] for v in QUANT_VARIANTS}
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; allowed: {[v['name'] for v in QUANT_VARIANTS]}")
    if args.new_tokens < 2 or args.runs < 1 or args.threads < 1 or args.rounds < 1:
        p.error("--new-tokens must be >= 2, --runs, --rounds and --threads >= 1")
    args.ct2_env = {"float32": dict(kv.split("=", 1) for kv in args.ct2_f32_env if "=" in kv),
                    "int8": dict(kv.split("=", 1) for kv in args.ct2_int8_env if "=" in kv)}
    if args.out is None and args.quick:
        args.no_write = True
    args.out = args.out or DEFAULT_OUT
    args.plot = args.plot or args.out.parent / "bench_context.png"
    parse_cases(args.cases)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    py = ".venv/bin/python" if Path(sys.prefix).resolve() == (REPO / ".venv").resolve() else "python"
    command = " ".join(shlex.quote(a) for a in [py, "-m", "benchmarks.peers", *argv])
    t_start = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    cases = parse_cases(args.cases)
    args.prompt_set = sorted({c["prompt"] for c in cases})
    machine, vers = machine_info(), versions(args.peers_python)
    log(f"{machine['CPU']}, {machine['logical CPUs']}; threads={args.threads}; models {args.model}; "
        f"cases {args.cases}; N={args.new_tokens}, runs={args.runs}")
    runs: dict[str, ModelRun] = {}
    args.limits = measure_limits(args.threads)
    log(f"fp32 MatMul limits: {args.limits}")
    with tempfile.TemporaryDirectory(prefix="onnxlm-bench-") as tmpd:
        tmp = Path(tmpd)
        for key in args.model:
            prep = prepare(key, tmp / re.sub(r"\W", "_", key), args)
            limit = prep.max_positions
            my_cases = [c for c in cases if not limit or c["prompt"] + args.new_tokens <= limit]
            prompts = {f"{c['batch']}x{c['prompt']}": prompt_ids(prep.artifact, c["batch"], c["prompt"]).tolist()
                       for c in my_cases}
            windows = quality_windows(prep)
            for eng in prep.engines:
                if args.engines and not any(t.lower() in eng.label.lower() for t in args.engines):
                    eng.note = eng.note or "not selected (--engines)"
                if eng.note:
                    log(f"{eng.label}: {eng.note}")
            run = ModelRun(prep, run_rounds([e for e in prep.engines if not e.note], prep, my_cases, prompts,
                                            windows, args, tmp), {})
            compute_quality(run)
            for label, q in run.quality.items():
                log(f"  quality {label}: agreement {q['agreement']:.4f}, perplexity {q['perplexity']:.3f} "
                    f"(fp32 {q['perplexity_fp32']:.3f})")
            if args.profile and not prep.seq2seq:
                for label in ["onnxlm fp32", prep.roles.get("default")]:
                    eng = next((e for e in prep.engines if e.label == label and not e.note), None)
                    if eng:
                        log(f"profiling {label} ...")
                        run.profiles[label] = run_profile(prep, eng, args, tmp)
            runs[prep.key] = run
        import_s, torch_free = import_checks(next(iter(runs.values())).prep.artifact if runs else None)
    rows = targets(runs, cases, args.new_tokens, import_s, torch_free)
    plot_rel = None
    if not args.no_write and plot_context(runs, cases, args.plot):
        plot_rel = os.path.relpath(args.plot, args.out.parent)
    sections = render(runs, cases, machine, vers, command, args, time.perf_counter() - t_start, rows, plot_rel)
    print(TITLE + "".join(sections.values()))
    if not args.no_write:
        update_sections(args.out, OWNER, sections, head=TITLE)
        log(f"updated the {OWNER} sections of {args.out}; wrote {args.plot}")
    return 0

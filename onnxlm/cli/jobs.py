"""`onnxlm score|generate|embed MODEL_DIR --input FILE --output OUT.parquet [--ray]`: the batch-job flags and their run
(onnxlm/jobs). Bad input (unreadable file, missing column, an output left by another job) is one error line and
exit status 2; a row the model refuses is one error line and exit status 1, the rows before it kept."""
from __future__ import annotations

import sys
from pathlib import Path

from .args import model_path, positive_int

EPILOG = """\
batch jobs (--input): every row of a JSON Lines file (one object per line) or a Parquet file, written to one
Parquet file; needs `pip install 'onnxlm[jobs]'` (and 'onnxlm[ray]' for --ray). The input's {column} column
(--column) is the {what}; an `id` column (--id-column) is copied to the output, and `row` (the 0-based input
row) always is. A rerun of the same command resumes: rows already written are skipped; the output file appears
only when complete (finished rows wait in OUTPUT.parts/).
"""


#: task -> (its default text column in the epilog, in --column's help, what a row's text is, its plural)
TEXT_COLUMNS = {"score": ("`text`", "text", "text to score", "texts"),
                "generate": ("`prompt` (else `text`)", "prompt, else text", "prompt", "prompts"),
                "embed": ("`text`", "text", "text to embed", "texts")}


def add_job_args(p, task: str) -> None:
    column, default, what, plural = TEXT_COLUMNS[task]
    p.epilog = EPILOG.format(column=column, what=what)
    g = p.add_argument_group("batch job (a file in, a Parquet file out)")
    g.add_argument("--input", metavar="FILE",
                   help="rows to process: .jsonl/.json/.ndjson (one JSON object per line) or .parquet")
    g.add_argument("--output", metavar="OUT.parquet", help="the Parquet file to write (needed with --input)")
    g.add_argument("--column", metavar="NAME", help=f"the input column holding the {plural} (default: {default})")
    # defaults are None here (filled in by run_job), so that a job flag given without --input is refused
    g.add_argument("--id-column", metavar="NAME",
                   help="an input column copied to the output beside each result (default: id, when present; a "
                        "column named here must exist)")
    if task == "score":
        g.add_argument("--target-column", metavar="NAME",
                       help="encoder-decoder models: the column of target texts (default: target)")
    if task == "generate":
        g.add_argument("--batch-size", type=positive_int, metavar="N",
                       help="prompts generated together, left-padded (default: 8); sampling with --seed runs each "
                            "row alone with seed + row, so a row's text never depends on its batch")
    g.add_argument("--rows-per-part", type=positive_int, metavar="N",
                   help="rows per part file written while the job runs: the most work a kill loses (default: 256)")
    g.add_argument("--overwrite", action="store_true",
                   help="start afresh: drop OUTPUT's unfinished parts and replace OUTPUT (default: resume them); "
                        "an interrupted --overwrite run resumes by the same command without --overwrite")
    g.add_argument("--quiet", action="store_true", help="with --input: no progress bar and no summary line")
    r = p.add_argument_group("Ray Data (pip install 'onnxlm[ray]')")
    r.add_argument("--ray", action="store_true",
                   help="run the job on Ray Data: a local Ray instance, or the cluster of --ray-address / $RAY_ADDRESS")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="an existing Ray cluster, e.g. ray://head:10001 or auto (default: $RAY_ADDRESS, else a "
                        "local instance); MODEL_DIR must exist at the same path on every node")
    r.add_argument("--ray-actors", type=positive_int, metavar="N",
                   help="model replicas (Ray actors), each loading the model once (default: 1)")
    r.add_argument("--ray-cpus-per-actor", type=positive_int, metavar="N",
                   help="CPUs each actor reserves; also its onnxruntime threads unless --threads (default: 1)")
    p.set_defaults(job_task=task)


#: job flags -> their argparse dest; `--batch-size` is a job flag of generate only (score's and embed's run the
#: command's texts too)
JOB_FLAGS = {"--output": "output", "--column": "column", "--id-column": "id_column",
             "--target-column": "target_column", "--rows-per-part": "rows_per_part", "--overwrite": "overwrite",
             "--quiet": "quiet", "--ray": "ray", "--ray-address": "ray_address", "--ray-actors": "ray_actors",
             "--ray-cpus-per-actor": "ray_cpus_per_actor"}
RAY_FLAGS = ("--ray-address", "--ray-actors", "--ray-cpus-per-actor")


def _given(args, flag: str) -> bool:
    value = getattr(args, JOB_FLAGS[flag], None)
    return value is not None and value is not False


def wants_job(args) -> bool:
    """True when --input was given; usage errors for job flags given without it, or other inputs given with it."""
    perr = args.parser_for_command.error
    flags = dict(JOB_FLAGS)
    if getattr(args, "job_task", None) == "generate":
        flags["--batch-size"] = "batch_size"
    if args.input is None:
        given = [f for f, dest in flags.items() if getattr(args, dest, None) not in (None, False)]
        if given:
            perr(f"{given[0]} needs --input FILE (it is a batch-job flag)")
        return False
    if args.output is None:
        perr("--input needs --output OUT.parquet")
    if args.texts or args.file:
        perr("--input replaces positional texts and --file: give one or the other")
    if not args.ray:
        for flag in RAY_FLAGS:
            if _given(args, flag):
                perr(f"{flag} needs --ray")
    return True


def run_job(args, task: str, *, params: dict | None = None, **options) -> int:
    """Build the JobSpec from args and run it; prints a one-line summary on stderr."""
    from onnxlm.jobs import JobInputError, JobSpec, run_local, run_ray
    from onnxlm.jobs.inputs import check_input_path
    from onnxlm.jobs.output import check_not_input, check_output_path

    from .errors import error_line
    try:
        check_input_path(Path(args.input))  # refused before a .gguf MODEL's first-run export, not after it
        check_output_path(Path(args.output))
        check_not_input(Path(args.output), Path(args.input))
        if task == "score" and options.get("target_column") is None:
            options["target_column"] = "target"  # --target-column's default
        spec = JobSpec(task, model_path(args), args.input, args.output, column=args.column, id_column=args.id_column,
                       batch_size=args.batch_size or 8, rows_per_part=args.rows_per_part or 256,
                       params=params or {}, provider=args.provider, threads=args.threads, verify=args.verify,
                       **options)
        if args.ray:
            report = run_ray(spec, address=args.ray_address, actors=args.ray_actors or 1,
                             cpus_per_actor=args.ray_cpus_per_actor or 1, overwrite=args.overwrite,
                             progress=not args.quiet)
        else:
            report = run_local(spec, overwrite=args.overwrite, progress=not args.quiet)
    except JobInputError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"onnxlm: {args.output}: {report.output_rows} rows ({report.processed} processed now, "
              f"{report.skipped} already done)", file=sys.stderr)
    return 0

"""A job on one machine: read the input, skip the rows a previous run finished, process the rest in batches with
a progress bar, write parts, merge them into the output. `prepare` is shared with the Ray runner."""
from __future__ import annotations

import sys
from dataclasses import dataclass

from .inputs import import_pyarrow, read_rows
from .output import Parts
from .spec import JobSpec
from .tasks import output_schema, process


@dataclass
class JobReport:
    """rows: input rows; skipped: done by an earlier run; processed: done now; output_rows: rows in the output."""

    rows: int
    skipped: int
    processed: int
    output_rows: int


@dataclass
class Prepared:
    spec: JobSpec
    parts: Parts
    todo: object           # pa.Table(row, [id], text, [target]): the rows still to process, in input order
    rows: int              # rows in the input
    done: int              # rows an earlier run finished
    schema: object         # the output's pa.Schema


def prepare(spec: JobSpec, *, overwrite: bool = False) -> Prepared:
    """Everything that can be refused is refused here, before any model is loaded (JobInputError: exit 2)."""
    import pyarrow.compute as pc
    pa = import_pyarrow()
    from onnxlm.runtime.manifest import load_manifest
    manifest = load_manifest(spec.model_dir, verify=False)
    if spec.chat and not (spec.model_dir / "chat_template.jinja").is_file():
        from onnxlm.runtime.errors import ModelFileError
        from onnxlm.runtime.manifest import no_chat_template
        raise ModelFileError(f"--chat: {spec.model_dir}: {no_chat_template(manifest)}",
                             str(spec.model_dir / "chat_template.jinja"))
    table = read_rows(spec, needs_target=spec.task == "score" and manifest["kind"] == "seq2seq-lm")
    schema = output_schema(spec, _generation_config(spec), table.schema)  # ParameterError for a bad parameter
    parts = Parts(spec, spec.fingerprint())
    done = parts.open(overwrite=overwrite)
    todo = table.filter(pc.invert(pc.is_in(table.column("row"), value_set=pa.array(sorted(done), pa.int64()))))
    return Prepared(spec, parts, todo, table.num_rows, table.num_rows - todo.num_rows, schema)


def _generation_config(spec: JobSpec):
    """The artifact's generation config with the job's parameters (ParameterError for a bad one)."""
    from onnxlm.runtime import GenerationConfig
    file = spec.model_dir / "generation_config.json"
    base = GenerationConfig.from_file(file) if file.is_file() else GenerationConfig()
    return base.replace(**spec.params).validate()


def progress_bar(prep: Prepared, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=prep.rows, initial=prep.done, unit="row", file=sys.stderr, disable=not enabled,
                desc="scoring" if prep.spec.task == "score" else "generating", dynamic_ncols=True)


def run_local(spec: JobSpec, *, overwrite: bool = False, progress: bool = True, model=None) -> JobReport:
    """Run the job in this process (model: an already loaded LanguageModel to reuse, else loaded here)."""
    prep = prepare(spec, overwrite=overwrite)
    if prep.todo.num_rows == 0 and not prep.parts.dir.exists():  # finished by an earlier run
        return JobReport(prep.rows, prep.done, 0, output_rows(spec))
    if prep.todo.num_rows:
        if model is None:
            from onnxlm.runtime import load
            model = load(spec.model_dir, provider=spec.provider, threads=spec.threads, verify=spec.verify)
        bar = progress_bar(prep, progress)
        pending = []  # processed batches not yet in a part
        try:
            for start in range(0, prep.todo.num_rows, spec.batch_size):
                pending.append(process(model, spec, prep.todo.slice(start, spec.batch_size), prep.schema))
                bar.update(min(spec.batch_size, prep.todo.num_rows - start))
                if sum(t.num_rows for t in pending) >= spec.rows_per_part:
                    prep.parts.write(_concat(pending))
                    pending = []
        finally:  # a failure or Ctrl-C keeps every finished batch: the rerun resumes after it
            prep.parts.write(_concat(pending))
            bar.close()
    total = prep.parts.finish(prep.schema)
    return JobReport(prep.rows, prep.done, prep.todo.num_rows, total)


def output_rows(spec: JobSpec) -> int:
    import pyarrow.parquet as pq
    return pq.ParquetFile(spec.output).metadata.num_rows


def _concat(tables):
    pa = import_pyarrow()
    return pa.concat_tables(tables) if tables else pa.table({})

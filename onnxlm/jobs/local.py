"""A job on one machine: read the input, skip the rows a previous run finished, process the rest in batches with
a progress bar, write parts, merge them into the output. `prepare` is shared with the Ray runner."""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from .inputs import import_pyarrow, read_rows
from .output import Parts, check_not_input
from .spec import JobRowError, JobSpec
from .tasks import output_schema, process, split_params


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


def prepare(spec: JobSpec, *, overwrite: bool = False, loads_here: bool = True) -> Prepared:
    """Everything that can be refused is refused here, before any model is loaded (JobInputError: exit 2);
    ``loads_here``: the model loads in this process, so the artifact's onnxruntime need is checked too (a Ray run's
    actors check their own)."""
    import pyarrow.compute as pc
    pa = import_pyarrow()
    from onnxlm.runtime.manifest import load_manifest
    from onnxlm.runtime.versions import check_artifact_onnxruntime
    check_not_input(spec.output, spec.input)
    if spec.task == "embed":  # the model's own pooling named: every batch (and every Ray actor) gets the same
        spec = replace(spec, pooling=spec.embed_pooling())
    manifest = load_manifest(spec.model_dir, verify=False)
    if loads_here:  # DependencyError before the output's lock and parts
        check_artifact_onnxruntime(manifest, spec.model_dir)
    _check_score_options(spec, manifest)
    check_can_embed(spec, manifest)
    if spec.task != "embed" and manifest.get("kind") == "embedding":  # before the output's lock and parts
        from onnxlm.runtime.errors import ModelFileError
        from onnxlm.runtime.encoder_embedder import encoder_role
        use = "onnxlm rerank" if manifest.get("pooling") == "rank" else "onnxlm embed --input"
        raise ModelFileError(f"{spec.model_dir}: {encoder_role(manifest)}; use {use}", str(spec.model_dir))
    if spec.chat and not (spec.model_dir / "chat_template.jinja").is_file():
        from onnxlm.runtime.errors import ModelFileError
        from onnxlm.runtime.manifest import no_chat_template
        raise ModelFileError(f"--chat: {spec.model_dir}: {no_chat_template(manifest)}",
                             str(spec.model_dir / "chat_template.jinja"))
    table = read_rows(spec, needs_target=spec.task == "score" and manifest["kind"] == "seq2seq-lm")
    config = _generation_config(spec, manifest)  # ParameterError for a bad parameter
    _check_constraints(spec, table.num_rows)
    schema = output_schema(spec, config, table.schema)
    parts = Parts(spec, spec.fingerprint())
    done = parts.open(overwrite=overwrite)  # holds the output's lock until the merge (or parts.release())
    todo = table.filter(pc.invert(pc.is_in(table.column("row"), value_set=pa.array(sorted(done), pa.int64()))))
    return Prepared(spec, parts, todo, table.num_rows, table.num_rows - todo.num_rows, schema)


def _generation_config(spec: JobSpec, manifest: dict):
    """The artifact's generation config as the loaded model reads it (special tokens filled from the manifest and
    config.json) with the job's parameters (ParameterError for a bad one)."""
    from onnxlm.runtime.manifest import read_json
    from onnxlm.runtime.model import artifact_generation_config
    config_file = spec.model_dir / "config.json"  # (loading the model needs it; a finished job's rerun does not)
    base = artifact_generation_config(spec.model_dir, manifest, read_json(config_file) if config_file.is_file() else {})
    return base.replace(**split_params(spec.params)[0]).validate()


def _check_constraints(spec: JobSpec, rows: int) -> None:
    """The structured-output constraints, checked (and their grammars built) before a model loads."""
    from onnxlm.runtime.constraints import pop_constraints
    from onnxlm.runtime.errors import ParameterError
    wanted = split_params(spec.params)[1]
    per_row = wanted.get("constraints")
    if per_row is not None and (not isinstance(per_row, (list, tuple)) or len(per_row) != rows):
        got = f"{len(per_row)} entries" if isinstance(per_row, (list, tuple)) else type(per_row).__name__
        raise ParameterError("constraints", f"a job takes one entry per input row ({rows}), each a dict like "
                                            f"{{'json_schema': ...}} or None; got {got}")
    if wanted:
        pop_constraints(dict(wanted), rows)


def _check_score_options(spec: JobSpec, manifest: dict) -> None:
    """score's job-wide options, refused from the artifact's files before a model loads and any row runs (the
    same refusals as `LanguageModel.score`, which would otherwise come back as a failing row)."""
    if spec.task != "score" or not (spec.prepend_bos or spec.append_eos):
        return
    from onnxlm.runtime.errors import ParameterError
    if spec.prepend_bos and manifest.get("kind") == "seq2seq-lm":
        raise ParameterError("prepend_bos", f"only for decoder-only models; {spec.model_dir} is an encoder-decoder "
                                            "model, whose target starts after the decoder start token")
    config = _generation_config(spec, manifest)
    for option, name, present in (("prepend_bos", "bos_token_id", config.bos_token_id is not None),
                                  ("append_eos", "eos_token_id", bool(config.eos_token_ids))):
        if getattr(spec, option) and not present:
            raise ParameterError(option, f"{spec.model_dir} has no {name}")


def check_can_embed(spec: JobSpec, manifest: dict) -> None:
    """embed: an artifact whose manifest says it cannot embed (a T5, a plain-layout graph) is refused before the
    output's parts and any model load, with `LanguageModel.check_embeddings`'s reason. (A fused graph exported
    before embeddings, without last_hidden_state, is refused by the loaded model's own check.)"""
    if spec.task != "embed":
        return
    from onnxlm.runtime.embedding import manifest_refusal
    from onnxlm.runtime.errors import ModelFileError

    refusal = manifest_refusal(spec.model_dir, manifest)
    if refusal is not None:
        raise ModelFileError(refusal, str(spec.model_dir))


def check_loaded(model, spec: JobSpec) -> None:
    """What only the loaded model can tell, checked before any row runs (embed: a graph with last_hidden_state)."""
    if spec.task == "embed":
        model.check_embeddings()


BAR_LABELS = {"score": "scoring", "generate": "generating", "embed": "embedding"}


def progress_bar(prep: Prepared, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=prep.rows, initial=prep.done, unit="row", file=sys.stderr, disable=not enabled,
                desc=BAR_LABELS[prep.spec.task], dynamic_ncols=True)


def run_local(spec: JobSpec, *, overwrite: bool = False, progress: bool = True, model=None) -> JobReport:
    """Run the job in this process (model: an already loaded LanguageModel to reuse, else loaded here)."""
    prep = prepare(spec, overwrite=overwrite, loads_here=model is None)
    try:
        return _run_local(prep, model, progress)
    finally:
        prep.parts.release()


def _run_local(prep: Prepared, model, progress: bool) -> JobReport:
    spec = prep.spec
    if prep.todo.num_rows == 0 and not prep.parts.dir.exists():  # finished by an earlier run
        return JobReport(prep.rows, prep.done, 0, output_rows(spec))
    if prep.todo.num_rows:
        if model is None:
            from onnxlm.runtime import load
            model = load(spec.model_dir, provider=spec.provider, threads=spec.threads, verify=spec.verify)
        check_loaded(model, spec)
        bar = progress_bar(prep, progress)
        pending = []  # processed batches not yet in a part
        try:
            for start in range(0, prep.todo.num_rows, spec.batch_size):
                try:
                    pending.append(process(model, spec, prep.todo.slice(start, spec.batch_size), prep.schema))
                except JobRowError as exc:  # the batch's rows before the failing one are finished too
                    if exc.kept is not None and exc.kept.num_rows:
                        pending.append(exc.kept)
                    raise
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

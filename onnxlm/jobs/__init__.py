"""Batch jobs over a corpus: score, generate or embed every row of a JSON Lines / Parquet file into a Parquet file,
resumable and never half-written, in one process (`run_local`) or on Ray Data (`run_ray`). Application code on
the runtime's public API, like the CLI (`onnxlm score|generate|embed MODEL_DIR --input ... --output ...`).

    from onnxlm.jobs import JobSpec, run_local
    run_local(JobSpec("score", "models/gpt2", "data.jsonl", "scores.parquet"))

Modules: `spec.py` (the job and its fingerprint), `inputs.py` (input schema), `tasks.py` (a batch of rows -> output
rows; output schema), `output.py` (parts, resume, atomic merge), `local.py` (one process), `ray_data.py` (Ray).
"""
from .local import JobReport, run_local
from .spec import JobInputError, JobOutputError, JobRowError, JobSpec


def run_ray(spec: JobSpec, **kwargs) -> JobReport:
    """`ray_data.run_ray` (imported on use: Ray is an optional extra)."""
    from .ray_data import run_ray as _run_ray
    return _run_ray(spec, **kwargs)


__all__ = ["JobSpec", "JobReport", "JobInputError", "JobOutputError", "JobRowError", "run_local", "run_ray"]

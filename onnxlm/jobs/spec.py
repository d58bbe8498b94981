"""What a batch job is: its task, where its rows come from and go, and the options that decide its results."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxlm.runtime.errors import InputError, OnnxlmError, ParameterError

TASKS = ("score", "generate")
#: the text column tried when --column is not given, in order
DEFAULT_COLUMNS = {"score": ("text",), "generate": ("prompt", "text")}


class JobInputError(InputError):
    """The job cannot start: unreadable or malformed input, a missing column, an output left by another job.
    The CLI prints it as one line and exits 2."""


class JobRowError(OnnxlmError):
    """A row failed inside the model (e.g. a prompt longer than the context); the rows before it are kept: those
    of earlier batches, and ``kept`` (a pa.Table or None), its own batch's rows before it, each run alone."""

    def __init__(self, message: str, kept=None):
        super().__init__(message)
        self.kept = kept


@dataclass
class JobSpec:
    """A score/generate job over a file. Everything that changes the results is in `fingerprint()`: a rerun
    resumes only the same job (same input bytes, model, task and options)."""

    task: str                         # "score" | "generate"
    model_dir: Path
    input: Path                       # .jsonl / .json / .ndjson (one JSON object per line) or .parquet
    output: Path                      # .parquet
    column: str | None = None         # text column (default: DEFAULT_COLUMNS[task])
    id_column: str | None = None      # copied to the output; None: the input's `id` column, when it has one
    target_column: str = "target"     # seq2seq score: the target text scored given the text
    batch_size: int = 8               # rows per model call
    rows_per_part: int = 256          # rows per part file (the most work a kill loses)
    params: dict = field(default_factory=dict)   # generate: transformers GenerationConfig names
    prepend_bos: bool = False         # score
    append_eos: bool = False          # score
    chat: bool = False                # generate: wrap each prompt in the model's chat template
    system: str | None = None         # generate, with chat: a system message
    chat_template_kwargs: dict = field(default_factory=dict)  # generate, with chat: extra template variables
    provider: str = "auto"
    threads: int | None = None
    verify: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ParameterError("task", f"got {self.task!r}; allowed: {', '.join(repr(t) for t in TASKS)}")
        for name in ("batch_size", "rows_per_part"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(name, f"got {value!r}; must be an integer >= 1")
        only = {"score": ("params", "chat", "system", "chat_template_kwargs"),
                "generate": ("prepend_bos", "append_eos")}
        given = lambda name: self.system is not None if name == "system" else bool(getattr(self, name))  # noqa: E731
        for name in only[self.task]:  # (system: "" is given too, an empty system message)
            if given(name):
                other = "generate" if self.task == "score" else "score"
                raise ParameterError(name, f"only for task {other!r}, not {self.task!r}")
        for name in ("system", "chat_template_kwargs"):
            if given(name) and not self.chat:
                raise ParameterError(name, "needs chat=True")
        if self.id_column is not None and (not isinstance(self.id_column, str) or not self.id_column):
            raise ParameterError("id_column", f"got {self.id_column!r}; must be a column name (a non-empty string) "
                                              "or None (the input's `id` column, when it has one)")
        self.model_dir, self.input, self.output = Path(self.model_dir), Path(self.input), Path(self.output)

    @property
    def parts_dir(self) -> Path:
        """Finished parts of an unfinished job live here until they are merged into `output`."""
        return self.output.with_name(self.output.name + ".parts")

    def fingerprint(self) -> dict:
        """The job's identity, stored beside its parts and in the output's metadata."""
        options = {k: v for k, v in asdict(self).items()
                   if k not in ("model_dir", "input", "output", "batch_size", "rows_per_part", "provider", "threads",
                                 "verify")}
        if options["id_column"] is None:  # the default: the same results as naming `id` (refused when absent)
            options["id_column"] = "id"
        return {"task": self.task, "input_sha256": file_sha256(self.input), "model": model_identity(self.model_dir),
                "options": json.loads(json.dumps(options, default=str))}


def file_sha256(path: Path, what: str = "--input", chunk: int = 1 << 20) -> str:
    """The input's bytes decide which row is which: a changed file is a different job."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as exc:
        raise JobInputError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def model_identity(model_dir: Path) -> dict:
    """An onnxlm artifact: the hash of its manifest (which hashes every file), wherever the directory lies;
    another directory (a plain Optimum export): its absolute path."""
    manifest = Path(model_dir) / "onnxlm.json"
    if manifest.is_file():
        return {"manifest_sha256": file_sha256(manifest, "MODEL_DIR")}
    return {"dir": os.path.abspath(model_dir)}

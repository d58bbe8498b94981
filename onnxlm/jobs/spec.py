"""What a batch job is: its task, where its rows come from and go, and the options that decide its results."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxlm.runtime.errors import InputError, OnnxlmError, ParameterError

TASKS = ("score", "generate", "embed")
#: the text column tried when --column is not given, in order
DEFAULT_COLUMNS = {"score": ("text",), "generate": ("prompt", "text"), "embed": ("text",)}
#: options that belong to some tasks only (refused, when given, for the others)
TASK_OPTIONS = {"prepend_bos": ("score",), "append_eos": ("score",), "params": ("generate",), "chat": ("generate",),
                "system": ("generate",), "chat_template_kwargs": ("generate",), "pooling": ("embed",),
                "normalize": ("embed",), "truncate": ("embed",)}


class JobInputError(InputError):
    """The job cannot start: unreadable or malformed input, a missing column, an output left by another job.
    The CLI prints it as one line and exits 2."""


class JobOutputError(OnnxlmError):
    """The job's results could not be written (a full disk, a directory that became unwritable): what was written
    before is kept, and the same command resumes once the cause is fixed. The CLI prints it as one line, exit 1."""


class JobRowError(OnnxlmError):
    """A row failed inside the model (e.g. a prompt longer than the context); the rows before it are kept: those
    of earlier batches, and ``kept`` (a pa.Table or None), its own batch's rows before it, each run alone."""

    def __init__(self, message: str, kept=None):
        super().__init__(message)
        self.kept = kept


@dataclass
class JobSpec:
    """A score/generate/embed job over a file. Everything that changes the results is in `fingerprint()`: a rerun
    resumes only the same job (same input bytes, model, task and options)."""

    task: str                         # "score" | "generate" | "embed"
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
    pooling: str | None = None        # embed: "mean" | "cls" | "last" (None: the model's own, see `embed_pooling`)
    normalize: bool = True            # embed: unit-length vectors
    truncate: bool = False            # embed: a row past the context cut to it (LanguageModel.embed's truncate)
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
        for name, tasks in TASK_OPTIONS.items():
            if self.task not in tasks and self._given(name):
                raise ParameterError(name, f"only for task {' or '.join(map(repr, tasks))}, not {self.task!r}")
        for name in ("system", "chat_template_kwargs"):
            if self._given(name) and not self.chat:
                raise ParameterError(name, "needs chat=True")
        from onnxlm.runtime.chat import check_template_vars
        self.chat_template_kwargs = check_template_vars(self.chat_template_kwargs)
        if self.id_column is not None and (not isinstance(self.id_column, str) or not self.id_column):
            raise ParameterError("id_column", f"got {self.id_column!r}; must be a column name (a non-empty string) "
                                              "or None (the input's `id` column, when it has one)")
        if self.pooling is not None:
            from onnxlm.runtime.embedding import check_pooling
            check_pooling(self.pooling)
        if not isinstance(self.normalize, bool):
            raise ParameterError("normalize", f"got {self.normalize!r}; allowed: True or False")
        if not isinstance(self.truncate, bool):
            raise ParameterError("truncate", f"got {self.truncate!r}; allowed: True or False")
        self.model_dir, self.input, self.output = Path(self.model_dir), Path(self.input), Path(self.output)

    def _given(self, name: str) -> bool:
        """An option set away from its default (system: "" is given too, an empty system message)."""
        if name in ("system", "pooling"):
            return getattr(self, name) is not None
        if name == "normalize":
            return self.normalize is not True
        return bool(getattr(self, name))

    def embed_pooling(self) -> str:
        """embed: the pooling the rows get: `pooling`, else the artifact's own (its manifest's `pooling`, as
        `LanguageModel.default_pooling`), else 'mean'."""
        from onnxlm.runtime.embedding import manifest_pooling
        if self.pooling is not None:
            return self.pooling
        manifest = self.model_dir / "onnxlm.json"
        try:
            found = json.loads(manifest.read_text(encoding="utf-8")) if manifest.is_file() else {}
        except (OSError, ValueError):
            found = {}  # an unreadable manifest: loading the model refuses it
        return manifest_pooling(found if isinstance(found, dict) else {})

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
        if self.task == "embed":  # the pooling as resolved: `--pooling mean` and a default of mean are one job
            options["pooling"] = self.embed_pooling()
        else:  # score and generate jobs keep the fingerprint they had before embed's options existed
            del options["pooling"], options["normalize"]
        if not self.truncate:  # an embed job without it keeps the fingerprint it had before truncate existed
            del options["truncate"]
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

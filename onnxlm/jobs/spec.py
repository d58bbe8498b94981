"""What a batch job is: its task, where its rows come from and go, and the options that decide its results."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from onnxlm.runtime.errors import InputError, OnnxlmError

TASKS = ("score", "generate")
#: the text column tried when --column is not given, in order
DEFAULT_COLUMNS = {"score": ("text",), "generate": ("prompt", "text")}


class JobInputError(InputError):
    """The job cannot start: unreadable or malformed input, a missing column, an output left by another job.
    The CLI prints it as one line and exits 2."""


class JobRowError(OnnxlmError):
    """A row failed inside the model (e.g. a prompt longer than the context); the rows before it are kept."""


@dataclass
class JobSpec:
    """A score/generate job over a file. Everything that changes the results is in `fingerprint()`: a rerun
    resumes only the same job (same input bytes, model, task and options)."""

    task: str                         # "score" | "generate"
    model_dir: Path
    input: Path                       # .jsonl / .json / .ndjson (one JSON object per line) or .parquet
    output: Path                      # .parquet
    column: str | None = None         # text column (default: DEFAULT_COLUMNS[task])
    id_column: str = "id"             # copied to the output when the input has it
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
            raise ValueError(f"task: got {self.task!r}; allowed: {TASKS}")
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

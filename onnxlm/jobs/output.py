"""Writing a job's output so that it is resumable and never half-written.

While a job runs, finished rows go to `OUTPUT.parts/part-NNNNNN.parquet` (each written to a temporary name in
the same directory, then renamed: a part is whole or absent) beside `OUTPUT.parts/job.json` (the job's
fingerprint). A rerun of the same job reads the `row` column of the parts (and of OUTPUT, when it exists) and
skips those rows. When every row is done, OUTPUT and the parts are merged, sorted by (row, index), into a
temporary file renamed over OUTPUT, and the parts directory is removed. OUTPUT carries the fingerprint in its
schema metadata (`onnxlm.job`), so a rerun on a finished output knows it is finished, and a different job never
appends to it.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from .spec import JobInputError, JobOutputError, JobSpec

JOB_FILE = "job.json"
REPLACES_FILE = "replaces-output"  # in the parts directory of an --overwrite run: its parts replace OUTPUT
META_KEY = b"onnxlm.job"


def check_output_path(out: Path) -> Path:
    """--output's refusals that need no model: a directory, not .parquet, a parent that does not exist (or is a
    file), a name the file system refuses."""
    try:
        if out.exists() and out.is_dir():
            raise JobInputError(f"--output: {out} is a directory; give a .parquet file path")
        if out.suffix.lower() != ".parquet":
            raise JobInputError(f"--output: {out} must end in .parquet")
        if out.parent.exists() and not out.parent.is_dir():
            raise JobInputError(f"--output: {out.parent} is a file, not a directory")
        if not out.parent.is_dir():
            raise JobInputError(f"--output: the directory {out.parent} does not exist")
    except OSError as exc:  # a name too long, a path the file system cannot look up
        raise JobInputError(f"--output: {out}: {exc.strerror or exc}") from None
    return out


def check_not_input(out: Path, input_path: Path) -> None:
    """--output may not be the --input file (by any path or link to it): the merge would replace the input."""
    try:
        same = out.exists() and os.path.samefile(out, input_path)
    except OSError:
        same = False
    if same:
        raise JobInputError(f"--output: {out} is the --input file {input_path}; choose another --output")


def lock_path(out: Path) -> Path:
    """The lock a run holds on OUTPUT and its parts from `Parts.open` until the merge (kept: removing a lock file
    others may have opened would let two runs hold two different locks)."""
    return out.with_name(f".{out.name}.lock")


class Parts:
    """The parts directory of a job: which rows are done, and atomic writes of new parts."""

    def __init__(self, spec: JobSpec, fingerprint: dict):
        self.spec, self.fingerprint, self.dir = spec, fingerprint, spec.parts_dir
        self.count = 0
        self.merge_output = False  # OUTPUT holds rows of this job (its merge was cut short before the parts went)
        self.replacing = False     # an --overwrite run, or its resumption: OUTPUT's rows are not this run's
        self.lock = None           # a filelock.FileLock held from `open` to `release` (or the merge)

    def acquire(self) -> None:
        """Hold the output's lock, or refuse at once: another run writing the same parts would lose rows (its
        merge removes the parts the other still writes) or mix two jobs."""
        import filelock
        out = self.spec.output
        lock = filelock.FileLock(lock_path(out), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise JobInputError(f"--output: another run of this job is writing {out} (it holds "
                                f"{lock_path(out)}); wait for it to finish, or choose another --output") from None
        except OSError as exc:
            raise JobInputError(f"--output: cannot lock {lock_path(out)}: {exc.strerror or exc}") from None
        self.lock = lock

    def release(self) -> None:
        """Let another run of the job start (after the merge, a failure or an interrupt)."""
        if self.lock is not None:
            self.lock.release(force=True)
            self.lock = None

    def open(self, *, overwrite: bool = False) -> set[int]:
        """Check (or start) the job's record; -> the input rows already done (in parts or in OUTPUT).

        An OUTPUT of this job counts as done; an OUTPUT of another job is refused, unless this job is replacing it
        (overwrite=True, or unfinished parts of this job are there): it stays untouched until the merge replaces it.
        overwrite=True drops unfinished parts; its own parts are marked as replacing OUTPUT (``REPLACES_FILE``), so
        that a rerun without it resumes the replacement (OUTPUT's rows, the same job's earlier answers, are not
        counted as done nor merged)."""
        out = check_output_path(self.spec.output)
        check_not_input(out, self.spec.input)
        self.acquire()  # before anything below deletes "stale" temporary files another run may be writing
        try:
            return self._open(out, overwrite)
        except BaseException:
            self.release()
            raise

    def _open(self, out: Path, overwrite: bool) -> set[int]:
        import pyarrow.parquet as pq
        found = _file_fingerprint(out) if out.exists() else None  # first: refuses a file that is not Parquet
        for stale in out.parent.glob(f".{out.name}.tmp-*"):  # a merge cut short: OUTPUT itself is untouched
            stale.unlink()
        if overwrite:  # the replacement is on record from the start (before its first part: a kill there resumes it)
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir.mkdir()
            _atomic_write_text(self.dir / REPLACES_FILE, "")
            _atomic_write_text(self.dir / JOB_FILE, json.dumps(self.fingerprint, indent=1))
        done: set[int] = set()
        job_file = self.dir / JOB_FILE
        resuming = job_file.is_file()
        if not resuming:  # a marker without its job record (a run killed between the two): not this run's
            (self.dir / REPLACES_FILE).unlink(missing_ok=True)
        self.replacing = overwrite or (self.dir / REPLACES_FILE).is_file()
        if resuming:
            self._check(json.loads(job_file.read_text(encoding="utf-8")), self.dir)
            for stale in [p for p in self.dir.iterdir() if ".tmp-" in p.name]:  # a write cut short: never renamed
                stale.unlink()
            for part in sorted(self.dir.glob("part-*.parquet")):
                done.update(pq.read_table(part, columns=["row"]).column("row").to_pylist())
                self.count += 1
        if out.exists():
            if found == self.fingerprint and not self.replacing:
                done.update(pq.read_table(out, columns=["row"]).column("row").to_pylist())
                self.merge_output = True
            elif not (self.replacing or resuming):
                self._check(found, out)
        return done

    def _check(self, found: dict | None, where: Path) -> None:
        if found != self.fingerprint:
            what = _difference(found, self.fingerprint)
            raise JobInputError(f"--output: {where} was written by a different job ({what}); rerun the same "
                                "command to resume it, or pass --overwrite, or choose another --output")

    def write(self, table) -> None:
        """One part, atomically: a temporary file in the parts directory renamed to part-NNNNNN.parquet."""
        import pyarrow.parquet as pq
        if table.num_rows == 0:
            return
        self.dir.mkdir(exist_ok=True)
        job_file = self.dir / JOB_FILE
        if not job_file.is_file():
            _atomic_write_text(job_file, json.dumps(self.fingerprint, indent=1))
        final = self.dir / f"part-{self.count:06d}.parquet"
        tmp = self.dir / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise JobOutputError(f"--output: writing {final} failed ({_reason(exc)}); the {self.count} part(s) "
                                 f"written before are kept in {self.dir}: fix that and run the same command again "
                                 "to resume") from None
        self.count += 1

    def finish(self, schema) -> int:
        """Merge OUTPUT (if any) and every part into OUTPUT, atomically; -> the output's row count."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        out = self.spec.output
        tables = [pq.read_table(out)] if self.merge_output else []
        tables += [pq.read_table(p) for p in sorted(self.dir.glob("part-*.parquet"))] if self.dir.is_dir() else []
        table = pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()
        keys = [("row", "ascending")] + ([("index", "ascending")] if "index" in schema.names else [])
        table = _unique(table.sort_by(keys), keys)
        meta = dict(schema.metadata or {})
        meta[META_KEY] = json.dumps(self.fingerprint).encode()
        table = table.replace_schema_metadata(meta)
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            pq.write_table(table, tmp)
            os.replace(tmp, out)
        except OSError as exc:
            raise JobOutputError(f"--output: writing {out} failed ({_reason(exc)}); every row is done and kept in "
                                 f"{self.dir}: fix that and run the same command again to write {out.name}") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        shutil.rmtree(self.dir, ignore_errors=True)
        self.release()
        return table.num_rows


def _reason(exc: OSError) -> str:
    """An OSError (Python's or pyarrow's, whose message holds the errno's text) -> its reason in a few words."""
    return exc.strerror or str(exc) or type(exc).__name__


def _unique(table, keys):
    """table sorted by keys -> without repeated keys (a row in OUTPUT and in a part left by a killed merge)."""
    import numpy as np
    import pyarrow as pa
    if table.num_rows < 2:
        return table
    cols = [table.column(k).to_numpy() for k, _ in keys]
    repeat = np.ones(table.num_rows, bool)
    repeat[0] = False
    for c in cols:
        repeat[1:] &= c[1:] == c[:-1]
    return table.filter(pa.array(~repeat))


def _file_fingerprint(path: Path) -> dict | None:
    import pyarrow.parquet as pq
    try:
        meta = pq.read_schema(path).metadata or {}
    except Exception as exc:  # noqa: BLE001 - not Parquet at all
        raise JobInputError(f"--output: {path} exists and is not a Parquet file ({' '.join(str(exc).split())}); "
                            "remove it or choose another --output") from None
    raw = meta.get(META_KEY)
    return json.loads(raw) if raw else None


def _difference(found: dict | None, want: dict) -> str:
    if found is None:
        return "it has no onnxlm job record"
    for key, label in (("task", "task"), ("input_sha256", "input file contents"), ("model", "model"),
                       ("options", "options")):
        if found.get(key) != want.get(key):
            return _options_difference(found.get(key), want.get(key)) if key == "options" else f"its {label} differs"
    return "its record differs"


def _options_difference(found, want) -> str:
    """Which options differ, with the output's value and this run's ("its options differ (pooling: 'mean' there,
    'cls' now)"): a rerun that changed a flag must be told which."""
    if not isinstance(found, dict) or not isinstance(want, dict):
        return "its options differ"
    keys = sorted(k for k in set(found) | set(want) if found.get(k) != want.get(k))
    shown = "; ".join(f"{k}: {found.get(k)!r:.60} there, {want.get(k)!r:.60} now" for k in keys[:3])
    return f"its options differ ({shown}{'; ...' if len(keys) > 3 else ''})"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

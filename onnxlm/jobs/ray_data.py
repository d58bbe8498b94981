"""The same job on Ray Data, for when one machine is not enough (`pip install 'onnxlm[ray]'`).

The driver reads the input and skips finished rows exactly as the single-process run (`local.prepare`), hands the
rows to Ray in blocks of whole batches, and `map_batches` runs them through a pool of actors: each actor loads the
model once (`ModelActor.__init__`) and processes batches of `batch_size` rows with the same `tasks.process` as the
local run, so the rows and their batches are the same and so are the results. The driver writes the results as
they arrive into the same atomic parts, and merges them into the Parquet output: a killed run resumes the same way.

Connect to a cluster with `address` ("ray://head:10001", "auto") or the RAY_ADDRESS environment variable; without
either, Ray starts a local instance. The model directory must exist at the same path on every node (a shared
filesystem, or the same artifact copied to each).
"""
from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import threading
from dataclasses import asdict

from .local import JobReport, Prepared, check_loaded, output_rows, prepare, progress_bar
from .spec import JobInputError, JobRowError, JobSpec


class ModelActor:
    """A Ray Data callable class: one per actor, so the model loads once per actor, not once per batch."""

    def __init__(self, spec: dict, schema, threads: int):
        from onnxlm.runtime import load
        self.spec, self.schema = JobSpec(**spec), schema
        self.model = load(self.spec.model_dir, provider=self.spec.provider, threads=threads, verify=self.spec.verify)
        check_loaded(self.model, self.spec)

    def __call__(self, batch):
        """pa.Table(row, [id], text, [target]) -> pa.Table of output rows (tasks.process) and an ERROR_COLUMN of
        nulls; a batch the model refuses -> one marker row (the batch's first `row`, the error's message), so that
        the rows finished before it still reach the driver (an exception would fail the whole dataset)."""
        import pyarrow as pa

        from onnxlm.runtime.errors import OnnxlmError

        from .tasks import process
        try:
            table = process(self.model, self.spec, batch, self.schema)
        except OnnxlmError as exc:  # the rows finished before the failing one, then the marker
            kept = getattr(exc, "kept", None)
            kept = kept if kept is not None else self.schema.empty_table()
            marker = pa.Table.from_pylist([{"row": batch.column("row")[kept.num_rows].as_py()}], schema=self.schema)
            return pa.concat_tables([kept.append_column(ERROR_COLUMN, pa.nulls(kept.num_rows, pa.string())),
                                     marker.append_column(ERROR_COLUMN, pa.array([str(exc)], pa.string()))])
        return table.append_column(ERROR_COLUMN, pa.nulls(table.num_rows, pa.string()))


#: the column of the actors' results that carries a failed batch's error (never written to a part)
ERROR_COLUMN = "__onnxlm_error__"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise JobInputError("--ray needs Ray Data, which is not installed: pip install 'onnxlm[ray]'") from None
    return ray


def map_rows(ds, spec: JobSpec, schema, *, actors: int = 1, cpus_per_actor: float = 1):
    """ds: a ray.data.Dataset with columns row, [id], text, [target] -> the Dataset of output rows, plus
    ERROR_COLUMN (null, or a failed batch's marker row: see ModelActor.__call__)."""
    ray = import_ray()
    threads = spec.threads or max(1, int(cpus_per_actor))  # onnxruntime's threads: the CPUs the actor holds
    return ds.map_batches(ModelActor, fn_constructor_kwargs={"spec": asdict(spec), "schema": schema,
                                                             "threads": threads},
                          batch_size=spec.batch_size, batch_format="pyarrow", num_cpus=cpus_per_actor,
                          compute=ray.data.ActorPoolStrategy(size=actors))


def run_ray(spec: JobSpec, *, address: str | None = None, actors: int = 1, cpus_per_actor: float = 1,
            overwrite: bool = False, progress: bool = True) -> JobReport:
    """Run the job on Ray Data (an instance already initialised in this process, else ray.init(address))."""
    ray = import_ray()
    prep = prepare(spec, overwrite=overwrite, loads_here=False)  # the actors load the model
    try:  # prepare holds the output's lock: released however the run ends
        if prep.todo.num_rows == 0 and not prep.parts.dir.exists():  # finished by an earlier run
            return JobReport(prep.rows, prep.done, 0, output_rows(spec))
        if prep.todo.num_rows:
            with _ray_logs(quiet=not progress), _ray_started(ray, address, progress):
                _run(ray, prep, actors, cpus_per_actor, progress)
        total = prep.parts.finish(prep.schema)
    finally:
        prep.parts.release()
    return JobReport(prep.rows, prep.done, prep.todo.num_rows, total)


@contextlib.contextmanager
def _ray_started(ray, address: str | None, progress: bool):
    """Ray for one run: the instance already initialised in this process, else ``ray.init(address)``, shut down
    after the run. The process's signal handlers are left as they were: ``ray.init`` installs its own SIGTERM
    handler (it exits the process), which outlives ``ray.shutdown`` and would end a caller's process on a later
    SIGTERM instead of its own handling (the CLI's unwinding of an export, a server's graceful drain)."""
    if ray.is_initialized():
        yield
        return
    main = threading.current_thread() is threading.main_thread()  # handlers can only be set from the main thread
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    _check_reachable(address)
    ray.init(address=address, log_to_driver=False, logging_level=logging.CRITICAL if not progress else logging.INFO)
    try:
        yield
    finally:
        try:
            ray.shutdown()
        finally:
            for sig, handler in handlers.items():
                if handler is not None:  # None: a handler not set from Python, which cannot be put back
                    signal.signal(sig, handler)


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """--ray-address host:port (or ray://host:port): a JobInputError when nothing answers there within ``timeout``
    seconds; ``ray.init`` would retry the connection for minutes, its warnings past --quiet. None, "auto" and
    "local" are Ray's to resolve."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rstrip("/").rpartition(":")
    if not host or not port.isdigit():
        raise JobInputError(f"--ray-address: got {address!r}; allowed: HOST:PORT, ray://HOST:PORT, 'auto' or "
                            "'local'")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise JobInputError(f"--ray-address {address}: nothing answers at {host}:{port} "
                            f"({exc.strerror or exc}); start the cluster there (ray start --head), or leave "
                            "--ray-address out to run Ray in this process") from None


@contextlib.contextmanager
def _ray_logs(quiet: bool):
    """quiet (--quiet): Ray's own log lines off while the job runs (its Python loggers, and the C++ core worker's
    lines of a Ray started here); an error still ends the job as one onnxlm error line."""
    if not quiet:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("ray", "ray.data", "ray.serve", "ray.train")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _run(ray, prep: Prepared, actors: int, cpus_per_actor: float, progress: bool) -> None:
    import pyarrow.compute as pc
    spec = prep.spec
    ray.data.DataContext.get_current().enable_progress_bars = False  # the driver's own bar counts input rows
    # blocks of whole batches (the local run's batches), at most rows_per_part rows, at least one per actor
    per_actor = -(-prep.todo.num_rows // actors)
    block = spec.batch_size * max(1, min(spec.rows_per_part // spec.batch_size, -(-per_actor // spec.batch_size)))
    blocks = [prep.todo.slice(i, block) for i in range(0, prep.todo.num_rows, block)]
    ds = map_rows(ray.data.from_arrow(blocks), spec, prep.schema, actors=actors, cpus_per_actor=cpus_per_actor)
    bar = progress_bar(prep, progress)
    seen: set[int] = set()
    failed = None  # (row, message) of the first failed batch
    try:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            errors = table.column(ERROR_COLUMN)
            finished = table.filter(pc.is_null(errors)).drop_columns([ERROR_COLUMN])
            prep.parts.write(finished)  # one part per block of results, atomically
            rows = set(finished.column("row").to_pylist())
            bar.update(len(rows - seen))
            seen |= rows
            if errors.null_count < table.num_rows:
                marker = table.filter(pc.is_valid(errors)).slice(0, 1).to_pylist()[0]
                failed = (marker["row"], marker[ERROR_COLUMN])
                break  # like the local run: stop at the first failed batch, the rows finished so far kept
    except Exception as exc:  # noqa: BLE001 - a worker's error arrives wrapped by Ray: show the model's message
        message = _onnxlm_message(exc)
        if message is None:
            raise
        raise JobRowError(message) from exc
    finally:
        bar.close()
    if failed is not None:
        raise JobRowError(failed[1])


def _onnxlm_message(exc: BaseException) -> str | None:
    """The message of the onnxlm error inside a Ray task error, or None. Ray Data re-raises a worker's exception
    as a UserCodeException whose cause did not cross the process boundary; only its text, the worker's traceback,
    names it (`onnxlm.jobs.spec.JobRowError: row 2 (id 'b'): ...`)."""
    found = re.findall(r"^onnxlm\.[\w.]*\.(\w*Error): (.+)$", str(exc), flags=re.M)
    if not found:
        return None
    rows = [m for name, m in found if name == "JobRowError"]
    return rows[-1] if rows else found[-1][1]

"""Batch jobs on Ray Data (`onnxlm score|generate --input ... --output ... --ray`) on a local Ray instance started
once for this module (2 CPUs): the rows equal the single-process run, row for row."""
from __future__ import annotations

import json
import os
import signal

import pytest

import onnxlm
from onnxlm.cli import main
from onnxlm.jobs import JobSpec, run_local, run_ray

if os.environ.get("CI") == "true":  # CI installs the ray extra: its absence is a failure there, not a skip
    import pyarrow.parquet as pq
    import ray
else:
    ray = pytest.importorskip("ray", reason="Ray jobs need the 'ray' extra")
    pq = pytest.importorskip("pyarrow.parquet", reason="batch jobs need the 'jobs' extra (pyarrow)")

TEXTS = [f"Row {i}: " + " ".join(["the cat", "a dog", "one bird", "some fish"][: 1 + i % 4]) for i in range(13)]


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance for the module's tests; the signal handlers as they were after it (ray.init installs a SIGTERM
    handler that exits the process and outlives ray.shutdown: a later test's SIGTERM would end the pytest worker)."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_a_run_that_starts_ray_shuts_it_down_and_leaves_the_signal_handlers(monkeypatch):
    """No Ray running: run_ray's instance is started for the run and shut down after it, and the process's SIGTERM /
    SIGINT handlers are put back. ray.init installs a SIGTERM handler that exits the process and outlives
    ray.shutdown (local_ray's docstring; a later SIGTERM killed a pytest worker): a stand-in for ray does the same
    here, without the seconds a real instance takes to start."""
    from onnxlm.jobs import ray_data

    calls = []

    def ray_exits(signum, frame):
        raise SystemExit(signum)

    class FakeRay:
        running = False

        def is_initialized(self):
            return self.running

        def init(self, **kw):
            calls.append(("init", kw["address"]))
            self.running = True
            signal.signal(signal.SIGTERM, ray_exits)
            signal.signal(signal.SIGINT, ray_exits)

        def shutdown(self):
            calls.append(("shutdown",))
            self.running = False

    def mine(signum, frame):
        raise AssertionError("not to be called")

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, mine)
    try:
        fake = FakeRay()
        with pytest.raises(RuntimeError, match="a failing run"), ray_data._ray_started(fake, "auto", progress=False):
            assert fake.running and signal.getsignal(signal.SIGTERM) is ray_exits
            raise RuntimeError("a failing run")
        assert calls == [("init", "auto"), ("shutdown",)] and not fake.running
        assert signal.getsignal(signal.SIGTERM) is mine and signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
        fake.running = True  # an instance the caller started: neither started nor shut down here
        with ray_data._ray_started(fake, None, progress=False):
            pass
        assert calls == [("init", "auto"), ("shutdown",)] and fake.running
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"id": 100 + i, "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    return path


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_ray_score_and_generate_equal_the_single_process_run(local_ray, tmp_path, data, tiny_gpt2):
    model = onnxlm.load(tiny_gpt2.onnx_dir)
    # batched rows, on 2 actors and on 1 (seeded sampling runs row by row, batch-independent: tests/test_jobs.py)
    jobs = {"score": {}, "beam": {"max_new_tokens": 5, "num_beams": 2, "num_return_sequences": 2}}
    for name, params in jobs.items():
        task = "score" if name == "score" else "generate"
        spec = dict(batch_size=3, rows_per_part=6, params=params)
        local = run_local(JobSpec(task, tiny_gpt2.onnx_dir, data, tmp_path / f"{name}-local.parquet", **spec),
                          progress=False, model=model)
        remote = run_ray(JobSpec(task, tiny_gpt2.onnx_dir, data, tmp_path / f"{name}-ray.parquet", **spec),
                         actors=2 if task == "score" else 1, progress=False)
        assert remote == local  # same counts
        assert rows(tmp_path / f"{name}-ray.parquet") == rows(tmp_path / f"{name}-local.parquet"), name
    assert len(rows(tmp_path / "beam-ray.parquet")) == 2 * len(TEXTS)


def test_ray_cli_resumes_a_partial_run_and_shows_progress(local_ray, tmp_path, data, tiny_gpt2, capsys):
    out = tmp_path / "out.parquet"
    argv = ["score", tiny_gpt2.onnx_dir, "--input", data, "--output", out, "--batch-size", 2, "--rows-per-part", 4]
    assert main([str(a) for a in argv]) == 0  # single process: the reference
    whole = rows(out)
    # a killed run: its first part written, the rest not
    parts = tmp_path / "out.parquet.parts"
    parts.mkdir()
    pq.write_table(pq.read_table(out).slice(0, 4).replace_schema_metadata(None), parts / "part-000000.parquet")
    (parts / "job.json").write_text(json.dumps(JobSpec("score", tiny_gpt2.onnx_dir, data, out).fingerprint()))
    out.unlink()
    capsys.readouterr()
    assert main([str(a) for a in argv + ["--ray"]]) == 0
    err = capsys.readouterr().err
    assert "scoring" in err and f"{len(TEXTS)}/{len(TEXTS)}" in err
    assert f"{len(TEXTS)} rows ({len(TEXTS) - 4} processed now, 4 already done)" in err
    assert rows(out) == whole and not parts.exists()


def test_ray_row_error_names_the_row(local_ray, tmp_path, tiny_gpt2, capsys):
    src = tmp_path / "long.jsonl"
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(["a b", "word " * 200])))
    code = main([str(a) for a in ["score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "o.parquet",
                                  "--ray", "--quiet"]])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (Ray's own log lines come before it)
    assert code == 1 and last.startswith("onnxlm: error: row 1 (id 'd1'):") and "max_positions" in last
    assert not (tmp_path / "o.parquet").exists()


def test_ray_keeps_the_rows_finished_before_a_failing_batch(local_ray, tmp_path, tiny_gpt2, capsys):
    src = tmp_path / "mid.jsonl"
    texts = ["a b", "c d", "word " * 200, "e f", "g h", "i j"]  # one block of 4 rows: batches [0, 1] and [2, 3]
    src.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    out = tmp_path / "o.parquet"
    code = main([str(a) for a in ["score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--ray", "--quiet",
                                  "--batch-size", 2, "--rows-per-part", 4]])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and err.startswith("onnxlm: error: row 2 (id 'd2'):"), err
    done = sorted(r for p in (tmp_path / "o.parquet.parts").glob("part-*") for r in pq.read_table(p)["row"].to_pylist())
    assert 0 in done and 1 in done and 2 not in done and 3 not in done and not out.exists()  # as the local run keeps

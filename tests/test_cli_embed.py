"""`onnxlm embed` (onnxlm/cli/embed.py) and the batch job task "embed" (onnxlm/jobs): the printed vectors and the
Parquet rows equal `LanguageModel.embed` on the same texts with the same options, the summary shows the cosine
table, a model that cannot embed and a bad option are refused, a rerun resumes, and a rerun with another pooling
is another job. The runtime's own embedding tests: tests/test_embeddings.py."""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

import onnxlm
from cli_util import run_cli
from onnxlm.jobs import JobSpec, run_local
from onnxlm.jobs import local as jobs_local

pytest.importorskip("torch", reason="embedding tests export a tiny fused model (the 'export' extra)")
if os.environ.get("CI") == "true":  # CI installs the jobs extra: its absence is a failure there
    import pyarrow as pa
else:
    pa = pytest.importorskip("pyarrow", reason="batch jobs need the 'jobs' extra (pyarrow)")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = ["The cat sat on the mat.", "A cat is sitting on a mat.", "Stocks fell sharply today."]
ROWS = [f"row {i}: " + "some words here " * (1 + i % 3) for i in range(7)]


@pytest.fixture(scope="module")
def fused_dir(tiny_llama, tmp_path_factory):
    """tiny_llama exported on the fused graph (conftest's artifacts are plain-layout, which cannot embed)."""
    from onnxlm.export import export_model

    return export_model(tiny_llama.hf_dir, tmp_path_factory.mktemp("emb-cli") / "fused", progress=False,
                        validate=False)


@pytest.fixture(scope="module")
def fused(fused_dir):
    return onnxlm.load(fused_dir)


def json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines()]


def corpus(tmp_path, texts=ROWS, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return path


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ---------------------------------------------------------------------------------------------------- help
def test_help_shows_the_command_its_flags_and_examples(capsys):
    code, out, _ = run_cli(capsys, "embed", "--help")
    assert code == 0 and "usage: onnxlm embed" in out and "examples:" in out
    for flag in ("--pooling {mean,cls,last}", "--no-normalize", "--batch-size", "--json", "--file", "--input",
                 "--output", "--column", "--ray", "OUTPUT.parts", "text to embed"):
        assert flag in out, flag
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and re.search(r"^\s+embed\s+embedding vectors", out, re.M) and "  onnxlm embed models/" in out


# ---------------------------------------------------------------------------------------------------- vectors
def test_json_vectors_equal_model_embed(fused_dir, fused, capsys):
    code, out, err = run_cli(capsys, "embed", fused_dir, *TEXTS, "--json")
    assert code == 0 and err == ""
    got = json_lines(out)
    want = fused.embed(TEXTS)
    assert [g["text"] for g in got] == TEXTS and [g["num_tokens"] for g in got] == want.token_counts
    assert set(got[0]) == {"text", "num_tokens", "embedding"}
    vectors = np.array([g["embedding"] for g in got], np.float32)
    assert vectors.shape == want.embeddings.shape == (3, fused.config["hidden_size"])
    np.testing.assert_allclose(vectors, want.embeddings, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("argv,kw", [(["--pooling", "cls"], dict(pooling="cls")),
                                     (["--pooling", "last"], dict(pooling="last")),
                                     (["--no-normalize"], dict(normalize=False)),
                                     (["--pooling", "last", "--no-normalize", "--batch-size", "1"],
                                      dict(pooling="last", normalize=False))])
def test_pooling_and_no_normalize_change_the_vectors_as_the_api_does(fused_dir, fused, capsys, argv, kw):
    code, out, _ = run_cli(capsys, "embed", fused_dir, *TEXTS, "--json", *argv)
    assert code == 0
    vectors = np.array([g["embedding"] for g in json_lines(out)], np.float32)
    np.testing.assert_allclose(vectors, fused.embed(TEXTS, **kw).embeddings, rtol=0, atol=1e-6)
    assert not np.allclose(vectors, fused.embed(TEXTS).embeddings, atol=1e-3)  # the option took effect


def test_texts_from_a_file_and_stdin_as_score_reads_them(fused_dir, tmp_path, capsys, monkeypatch):
    import io

    (tmp_path / "t.txt").write_text("\n".join(TEXTS[:2]) + "\n\n")
    code, out, _ = run_cli(capsys, "embed", fused_dir, "--file", tmp_path / "t.txt", "--json")
    assert code == 0 and [g["text"] for g in json_lines(out)] == TEXTS[:2]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(TEXTS[2].encode() + b"\n")))
    code, out, _ = run_cli(capsys, "embed", fused_dir, "-", "--json")
    assert code == 0 and [g["text"] for g in json_lines(out)] == [TEXTS[2]]


# ---------------------------------------------------------------------------------------------------- summary
def test_summary_shows_each_vector_and_the_cosine_table(fused_dir, fused, capsys):
    code, out, _ = run_cli(capsys, "embed", fused_dir, *TEXTS)
    assert code == 0
    res = fused.embed(TEXTS)
    dim = res.embeddings.shape[1]
    for i, text in enumerate(TEXTS):
        first = ", ".join(f"{float(x):.4f}" for x in res.embeddings[i][:6])
        assert f"=== [{i + 1}] {text!r}\n{res.token_counts[i]} tokens -> {dim} dimensions (mean pooling, unit " \
               f"length): [{first}, ...]" in out
    table = out[out.index("cosine similarity (mean pooling):"):].splitlines()
    assert table[1].split() == ["[1]", "[2]", "[3]"]
    got = np.array([[float(x) for x in line.split()[1:]] for line in table[2:5]])
    unit = res.embeddings / np.linalg.norm(res.embeddings, axis=1, keepdims=True)
    np.testing.assert_allclose(got, unit @ unit.T, atol=1e-4)
    assert not np.allclose(got, 1.0, atol=1e-3)  # the texts differ
    code, out, _ = run_cli(capsys, "embed", fused_dir, TEXTS[0])
    assert code == 0 and "=== [1]" in out and "cosine" not in out  # one text: nothing to compare


def test_many_texts_show_each_ones_nearest_and_a_progress_bar(fused_dir, fused, tmp_path, capsys):
    texts = [f"sentence {i} about {['cats', 'stocks', 'rain'][i % 3]}" for i in range(12)]
    (tmp_path / "many.txt").write_text("\n".join(texts))
    code, out, err = run_cli(capsys, "embed", fused_dir, "--file", tmp_path / "many.txt", "--batch-size", 4,
                             "--no-normalize")
    assert code == 0 and "embedding" in err and "12/12" in err  # tqdm's bar on stderr
    assert "(mean pooling, norm " in out and "unit length" not in out
    v = fused.embed(texts, normalize=False).embeddings.astype(np.float64)
    sim = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    np.fill_diagonal(sim, -np.inf)
    lines = out[out.index("most similar other text"):].splitlines()[1:]
    assert len(lines) == 12
    for i, line in enumerate(lines):
        j = int(sim[i].argmax())
        assert line.split()[:3] == [f"[{i + 1}]", "->", f"[{j + 1}]"], line
        assert abs(float(line.split()[3]) - sim[i, j]) < 1e-4


# ---------------------------------------------------------------------------------------------------- refusals
def test_a_model_that_cannot_embed_is_one_error_line(tiny_t5, tiny_llama, tmp_path, capsys):
    for model, kind in ((tiny_t5.onnx_dir, "seq2seq-lm on the plain layout"),
                        (tiny_llama.onnx_dir, "causal-lm on the plain layout")):
        code, out, err = run_cli(capsys, "embed", model, "hello")
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("onnxlm: error: ") and "embeddings need a decoder-only model on the fused graph" in err
        assert kind in err
    out = tmp_path / "t5.parquet"  # the batch job: refused before any part is written
    code, _, err = run_cli(capsys, "embed", tiny_t5.onnx_dir, "--input", corpus(tmp_path), "--output", out)
    assert code == 1 and err.count("\n") == 1 and "seq2seq-lm on the plain layout" in err, err
    assert not out.exists() and not (tmp_path / "t5.parquet.parts").exists()


def test_bad_options_are_usage_errors(fused_dir, tmp_path, capsys):
    code, out, err = run_cli(capsys, "embed", fused_dir, "hi", "--pooling", "max")
    assert code == 2 and out == "" and "argument --pooling: invalid choice: 'max'" in err and "usage:" in err
    code, _, err = run_cli(capsys, "embed", fused_dir, "hi", "--batch-size", 0)
    assert code == 2 and "--batch-size" in err
    code, _, err = run_cli(capsys, "embed", fused_dir, "--input", corpus(tmp_path), "--output",
                           tmp_path / "o.parquet", "--json")
    assert code == 2 and "--json does not apply" in err
    code, _, err = run_cli(capsys, "embed", fused_dir, "hi", "--output", tmp_path / "o.parquet")
    assert code == 2 and "--output needs --input" in err
    assert not (tmp_path / "o.parquet").exists()


def test_jobspec_options_belong_to_their_task(tmp_path):
    base = dict(model_dir=tmp_path, input=tmp_path / "i.jsonl", output=tmp_path / "o.parquet")
    with pytest.raises(onnxlm.ParameterError, match="pooling: only for task 'embed', not 'score'"):
        JobSpec("score", pooling="cls", **base)
    with pytest.raises(onnxlm.ParameterError, match="normalize: only for task 'embed', not 'generate'"):
        JobSpec("generate", normalize=False, **base)
    with pytest.raises(onnxlm.ParameterError, match="prepend_bos: only for task 'score', not 'embed'"):
        JobSpec("embed", prepend_bos=True, **base)
    with pytest.raises(onnxlm.ParameterError, match="params: only for task 'generate', not 'embed'"):
        JobSpec("embed", params={"max_new_tokens": 3}, **base)
    with pytest.raises(onnxlm.ParameterError, match=r"pooling: got 'max'"):
        JobSpec("embed", pooling="max", **base)
    with pytest.raises(onnxlm.ParameterError, match=r"normalize: got 'no'"):
        JobSpec("embed", normalize="no", **base)


def test_fingerprint_resolves_the_default_pooling_and_leaves_other_tasks_alone(fused_dir, tmp_path):
    src = corpus(tmp_path)
    spec = lambda task, **kw: JobSpec(task, fused_dir, src, tmp_path / "o.parquet", **kw)  # noqa: E731
    assert spec("embed").fingerprint() == spec("embed", pooling="mean").fingerprint()  # tiny llama's own: mean
    assert spec("embed").fingerprint() != spec("embed", pooling="last").fingerprint()
    assert spec("embed").fingerprint() != spec("embed", normalize=False).fingerprint()
    assert "pooling" not in spec("score").fingerprint()["options"]  # score/generate outputs keep resuming
    assert "normalize" not in spec("generate").fingerprint()["options"]


# ---------------------------------------------------------------------------------------------------- batch job
@pytest.mark.parametrize("argv,kw", [([], {}), (["--pooling", "last", "--no-normalize"],
                                                dict(pooling="last", normalize=False))])
def test_job_rows_equal_model_embed(fused_dir, fused, tmp_path, capsys, argv, kw):
    out = tmp_path / "v.parquet"
    code, stdout, err = run_cli(capsys, "embed", fused_dir, "--input", corpus(tmp_path), "--output", out,
                                "--batch-size", 3, *argv)
    assert code == 0 and stdout == "" and "embedding" in err and "7/7" in err
    assert "v.parquet: 7 rows (7 processed now, 0 already done)" in err
    schema = pq.read_schema(out)
    assert schema.names == ["row", "id", "text", "num_tokens", "embedding"]
    assert schema.field("num_tokens").type == pa.int64() and schema.field("embedding").type == pa.list_(pa.float32())
    got = rows(out)
    want = fused.embed(ROWS, **kw)
    assert [r["row"] for r in got] == list(range(7)) and [r["id"] for r in got] == [f"d{i}" for i in range(7)]
    assert [r["text"] for r in got] == ROWS and [r["num_tokens"] for r in got] == want.token_counts
    for r, vector in zip(got, want.embeddings):
        np.testing.assert_allclose(r["embedding"], vector, rtol=0, atol=1e-6)


def test_a_row_the_model_refuses_is_named_and_the_rows_before_it_kept(fused_dir, fused, tmp_path, capsys):
    src, out = corpus(tmp_path, ROWS[:3] + ["word " * 200] + ROWS[3:]), tmp_path / "v.parquet"  # past max_positions
    code, _, err = run_cli(capsys, "embed", fused_dir, "--input", src, "--output", out, "--batch-size", 2, "--quiet")
    assert code == 1 and err.count("\n") == 1 and "row 3 (id 'd3')" in err and "max_positions" in err, err
    kept = [r for p in (tmp_path / "v.parquet.parts").glob("part-*") for r in pq.read_table(p).to_pylist()]
    assert sorted(r["row"] for r in kept) == [0, 1, 2] and not out.exists()
    row2 = next(r for r in kept if r["row"] == 2)
    np.testing.assert_allclose(row2["embedding"], fused.embed(ROWS[2]).embeddings[0], rtol=0, atol=1e-6)


class Interrupt(BaseException):
    """Stands for a kill: not an Exception, so nothing in the job catches it."""


def test_a_killed_job_resumes_without_redoing_rows(fused_dir, fused, tmp_path, monkeypatch):
    from onnxlm.jobs.tasks import process as real

    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    opts = dict(batch_size=2, rows_per_part=2)
    run_local(JobSpec("embed", fused_dir, src, tmp_path / "whole.parquet", **opts), progress=False, model=fused)
    seen: list = []

    def process(model, spec, batch, schema):
        if len(seen) == stop:
            raise Interrupt
        seen.append(batch.column("row").to_pylist())
        return real(model, spec, batch, schema)

    monkeypatch.setattr(jobs_local, "process", process)
    stop = 2
    with pytest.raises(Interrupt):
        run_local(JobSpec("embed", fused_dir, src, out, **opts), progress=False, model=fused)
    assert not out.exists() and len(list((tmp_path / "out.parquet.parts").glob("part-*.parquet"))) == 2
    seen.clear()
    stop = 99
    report = run_local(JobSpec("embed", fused_dir, src, out, **opts), progress=False, model=fused)
    assert seen == [[4, 5], [6]]  # only the rows the killed run had not written
    assert (report.skipped, report.processed, report.output_rows) == (4, 3, 7)
    assert rows(out) == rows(tmp_path / "whole.parquet") and not (tmp_path / "out.parquet.parts").exists()


def test_another_pooling_is_another_job(fused_dir, fused, tmp_path, capsys):
    src, out = corpus(tmp_path), tmp_path / "v.parquet"
    base = ["embed", fused_dir, "--input", src, "--output", out, "--quiet"]
    assert run_cli(capsys, *base)[0] == 0
    before = out.read_bytes()
    for argv, why in ((["--pooling", "cls"], "pooling: 'mean' there, 'cls' now"),
                      (["--no-normalize"], "normalize: True there, False now")):
        code, _, err = run_cli(capsys, *base, *argv)
        assert code == 2 and err.count("\n") == 1 and f"different job (its options differ ({why}))" in err, err
        assert out.read_bytes() == before  # untouched
    code, _, err = run_cli(capsys, *base[:-1], "--pooling", "mean")  # the model's own pooling named: the same job
    assert code == 0 and "7 rows (0 processed now, 7 already done)" in err and out.read_bytes() == before
    # unfinished parts of one pooling are not resumed by another either
    parts = tmp_path / "v.parquet.parts"
    parts.mkdir()
    pq.write_table(pq.read_table(out).slice(0, 3).replace_schema_metadata(None), parts / "part-000000.parquet")
    (parts / "job.json").write_text(json.dumps(JobSpec("embed", fused_dir, src, out).fingerprint()))
    out.unlink()
    code, _, err = run_cli(capsys, *base, "--pooling", "last")
    assert code == 2 and "v.parquet.parts was written by a different job" in err, err
    code, _, err = run_cli(capsys, *base[:-1], "--pooling", "last", "--overwrite")
    assert code == 0 and "7 rows (7 processed now, 0 already done)" in err
    np.testing.assert_allclose(np.array([r["embedding"] for r in rows(out)]),
                               fused.embed(ROWS, pooling="last").embeddings, rtol=0, atol=1e-6)


def test_ray_job_equals_the_local_run(fused_dir, tmp_path, capsys):
    """--ray on a local Ray instance (2 CPUs, no dashboard: the quickest to start): the same rows as the
    single-process run; the signal handlers as they were after it (tests/test_jobs_ray.py's local_ray)."""
    import signal

    if os.environ.get("CI") == "true":  # CI installs the ray extra: its absence is a failure there, not a skip
        import ray
    else:
        ray = pytest.importorskip("ray", reason="Ray jobs need the 'ray' extra")
    src = corpus(tmp_path)
    argv = ["embed", fused_dir, "--input", src, "--batch-size", 2, "--rows-per-part", 4, "--pooling", "last",
            "--quiet"]
    assert run_cli(capsys, *argv, "--output", tmp_path / "local.parquet")[0] == 0
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        code, _, err = run_cli(capsys, *argv, "--output", tmp_path / "ray.parquet", "--ray")
    finally:
        ray.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert code == 0, err
    assert rows(tmp_path / "ray.parquet") == rows(tmp_path / "local.parquet")
    assert pq.read_schema(tmp_path / "ray.parquet").metadata == pq.read_schema(tmp_path / "local.parquet").metadata


def test_truncate_lets_a_long_row_through_the_command_and_the_job(fused_dir, fused, tmp_path, capsys):
    """--truncate: a text past the context is embedded cut to it (as embed(truncate=True)) by the command and the
    batch job, which without it stops at that row; the job's fingerprint holds truncate only when given, so jobs
    written before it resume."""
    long = "word " * 300
    code, out, err = run_cli(capsys, "embed", fused_dir, long, "--json")
    assert code == 1 and "at most" in err
    code, out, err = run_cli(capsys, "embed", fused_dir, long, "--json", "--truncate")
    assert code == 0, err
    want = fused.embed([long], truncate=True)
    (line,) = json_lines(out)
    assert line["num_tokens"] == fused.max_positions
    assert np.abs(np.asarray(line["embedding"]) - want.embeddings[0]).max() <= 1e-6
    source = corpus(tmp_path, texts=["short one", long, "short two"])
    out_path = tmp_path / "long.parquet"
    code, _, err = run_cli(capsys, "embed", fused_dir, "--input", source, "--output", out_path, "--quiet")
    assert code != 0 and not out_path.exists()
    code, _, err = run_cli(capsys, "embed", fused_dir, "--input", source, "--output", out_path, "--quiet",
                           "--truncate", "--overwrite")
    assert code == 0, err
    got = rows(out_path)
    assert [r["num_tokens"] for r in got][1] == fused.max_positions
    from onnxlm.jobs import JobSpec
    plain = JobSpec("embed", fused_dir, source, tmp_path / "a.parquet").fingerprint()["options"]
    cut = JobSpec("embed", fused_dir, source, tmp_path / "a.parquet", truncate=True).fingerprint()["options"]
    assert "truncate" not in plain and cut["truncate"] is True

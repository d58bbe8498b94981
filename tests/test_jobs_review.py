"""Batch jobs: the reviewed defects (JSONL line ends, constraints, concurrent runs, job-only flags, JobSpec checks,
--output equal to --input, job-wide score options, Parquet text types, huge JSON ids). Ray: tests/test_jobs_ray.py."""
from __future__ import annotations

import json
import os

import pytest

import onnxlm
from cli_util import run_cli
from onnxlm.jobs import JobInputError, JobSpec, run_local
from onnxlm.jobs import local as jobs_local
from onnxlm.jobs.inputs import read_rows
from onnxlm.runtime.errors import ParameterError

if os.environ.get("CI") == "true":
    import pyarrow as pa
else:
    pa = pytest.importorskip("pyarrow", reason="batch jobs need the 'jobs' extra (pyarrow)")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = ["The cat sat on the mat.", "Hello", "Once upon a time", "x y", "The end."]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def corpus(tmp_path, column="text", name="data.jsonl"):
    return write_jsonl(tmp_path / name, [{"id": f"doc-{i}", column: t} for i, t in enumerate(TEXTS)])


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return onnxlm.load(tiny_gpt2.onnx_dir)


# ---------------------------------------------------------------------------------------------------- 1. JSONL lines
def test_jsonl_lines_end_at_newline_only(tmp_path, tiny_gpt2):
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x0bh\x1ci"]  # str.splitlines() cuts at each of these
    src = tmp_path / "u.jsonl"
    src.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\r\n" for t in texts) + "\r\n",
                   encoding="utf-8")  # CRLF line ends and a blank last line
    table = read_rows(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "o.parquet"))
    assert table.column("text").to_pylist() == texts and table.column("row").to_pylist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------------------------------- 2. constraints
def test_cli_job_with_a_constraint_equals_generate_and_has_constraint_satisfied(tmp_path, tiny_gpt2, gpt2, capsys):
    pytest.importorskip("llguidance")
    src, out = corpus(tmp_path, column="prompt"), tmp_path / "c.parquet"
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--choices",
                           " yes, no", "--max-new-tokens", 4, "--batch-size", 2, "--quiet")
    assert code == 0 and err == "", err
    got = rows(out)
    assert pq.read_schema(out).names == ["row", "id", "prompt", "index", "text", "token_ids", "finish_reason",
                                         "constraint_satisfied"]
    for r in got:
        solo = gpt2.generate(TEXTS[r["row"]], max_new_tokens=4, choices=[" yes", " no"])
        assert (r["text"], r["token_ids"], r["constraint_satisfied"]) == \
            (solo.text[0], solo.new_tokens[0], solo.constraint_satisfied[0])
        assert r["text"] in (" yes", " no")


def test_job_constraints_per_input_row_and_refused_before_the_model(tmp_path, tiny_gpt2, gpt2, monkeypatch):
    pytest.importorskip("llguidance")
    src = corpus(tmp_path, column="prompt")
    per_row = [{"regex": "[0-9]+"}, None, {"choices": ["A", "B"]}, None, {"json_schema": {"type": "integer"}}]
    out = tmp_path / "p.parquet"
    run_local(JobSpec("generate", tiny_gpt2.onnx_dir, src, out, batch_size=2,
                      params={"max_new_tokens": 3, "constraints": per_row}), progress=False, model=gpt2)
    got = rows(out)
    assert [r["constraint_satisfied"] is None for r in got] == [c is None for c in per_row]
    assert got[2]["text"] in ("A", "B") and got[2]["constraint_satisfied"] is True
    for r in got:
        solo = gpt2.generate(TEXTS[r["row"]], max_new_tokens=3, constraints=[per_row[r["row"]]])
        assert r["token_ids"] == solo.new_tokens[0]

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(onnxlm.runtime, "load", no_load)
    for params, name in [({"choices": "yes"}, "choices"), ({"regex": ""}, "regex"),
                         ({"constraints": per_row[:2]}, "constraints"), ({"regex": "a", "choices": ["b"]}, "choices"),
                         ({"grammar": "   "}, "grammar")]:
        with pytest.raises(ParameterError) as info:
            run_local(JobSpec("generate", tiny_gpt2.onnx_dir, src, tmp_path / "x.parquet", params=params),
                      progress=False)
        assert info.value.parameter == name
    assert not (tmp_path / "x.parquet.parts").exists()


# ------------------------------------------------------------------------------------------------- 3. concurrent runs
def test_a_second_run_of_the_same_job_is_refused_while_the_first_writes(tmp_path, tiny_gpt2, gpt2, capsys,
                                                                          monkeypatch):
    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    real, answers = jobs_local.process, []

    def process(model, spec, batch, schema):
        if not answers:  # the first batch of the first run: a second run starts meanwhile
            answers.append(run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out))
            answers.append(run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out,
                                   "--overwrite"))
        return real(model, spec, batch, schema)

    monkeypatch.setattr(jobs_local, "process", process)
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=1, rows_per_part=1),
                       progress=False, model=gpt2)
    for code, stdout, err in answers:
        assert code == 2 and stdout == "" and err.count("\n") == 1, err
        assert err.startswith("onnxlm: error: --output: another run of this job is writing") and str(out) in err
    assert report.output_rows == 5 and [r["row"] for r in rows(out)] == list(range(5))
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)
    assert code == 0 and "5 rows (0 processed now, 5 already done)" in err  # the lock went with the run


# ---------------------------------------------------------------------------------------------------- 4. job flags
@pytest.mark.parametrize("command,argv,flag", [
    ("generate", ["--batch-size", "2"], "--batch-size"),
    ("generate", ["--rows-per-part", "2"], "--rows-per-part"),
    ("generate", ["--column", "x"], "--column"),
    ("generate", ["--id-column", "x"], "--id-column"),
    ("score", ["--overwrite"], "--overwrite"),
    ("score", ["--quiet"], "--quiet"),
    ("score", ["--target-column", "t"], "--target-column"),
    ("score", ["--ray-actors", "2"], "--ray-actors"),
    ("generate", ["--ray-cpus-per-actor", "2"], "--ray-cpus-per-actor"),
])
def test_job_flags_without_input_are_usage_errors(tiny_gpt2, capsys, command, argv, flag):
    code, out, err = run_cli(capsys, command, tiny_gpt2.onnx_dir, "Hello", *argv)
    assert code == 2 and out == "" and f"error: {flag} needs --input FILE" in err, err


def test_ray_flags_without_ray_and_a_missing_id_column_are_refused(tmp_path, tiny_gpt2, capsys):
    src = corpus(tmp_path)
    base = ["score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "o.parquet"]
    for flag in ("--ray-actors", "--ray-cpus-per-actor"):
        code, _, err = run_cli(capsys, *base, flag, 2)
        assert code == 2 and f"error: {flag} needs --ray" in err, err
    code, _, err = run_cli(capsys, *base, "--id-column", "key")
    assert code == 2 and err.count("\n") == 1 and "no column 'key'" in err and "--id-column" in err, err
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.parquet.parts").exists()


# ---------------------------------------------------------------------------------------------------- 6. JobSpec checks
@pytest.mark.parametrize("field,value", [("batch_size", -1), ("batch_size", 0), ("batch_size", 2.5),
                                         ("batch_size", None), ("batch_size", True), ("rows_per_part", 0),
                                         ("rows_per_part", "8"), ("task", "translate"), ("prepend_bos", True),
                                         ("id_column", "")])
def test_jobspec_refuses_bad_fields_naming_them(tmp_path, field, value):
    args = {"task": "generate", "model_dir": tmp_path, "input": tmp_path / "i.jsonl", "output": tmp_path / "o.parquet",
            field: value}
    with pytest.raises(ParameterError) as info:
        JobSpec(**args)
    assert info.value.parameter == field and field in str(info.value)
    if field in ("batch_size", "rows_per_part"):
        assert "integer >= 1" in str(info.value)
    if field == "task":
        assert "'score'" in str(info.value) and "'generate'" in str(info.value)


# ------------------------------------------------------------------------------------------------- 7. output == input
def test_output_equal_to_input_is_refused_even_with_overwrite(tmp_path, tiny_gpt2, capsys):
    src = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": TEXTS}), src)
    before = src.read_bytes()
    (tmp_path / "link.parquet").symlink_to(src)
    sub = tmp_path / "sub"
    sub.mkdir()
    for out in (src, tmp_path / "link.parquet", sub / ".." / "data.parquet"):
        for extra in ([], ["--overwrite"]):
            code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, *extra)
            assert code == 2 and err.count("\n") == 1 and "is the --input file" in err, err
    with pytest.raises(JobInputError, match="is the --input file"):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "link.parquet"), overwrite=True,
                  progress=False)
    assert src.read_bytes() == before and not list(tmp_path.glob("*.parts"))


# ------------------------------------------------------------------------------------------------- 8. job-wide options
def test_a_score_option_the_model_refuses_fails_before_any_row(tmp_path, tiny_t5, capsys, monkeypatch):
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "translate: house", "target": "Haus"}])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(onnxlm.runtime, "load", no_load)
    out = tmp_path / "o.parquet"
    code, _, err = run_cli(capsys, "score", tiny_t5.onnx_dir, "--input", src, "--output", out, "--prepend-bos")
    assert code == 1 and err.count("\n") == 1 and "--prepend-bos: only for decoder-only models" in err, err
    assert "row 0" not in err and not out.exists() and not (tmp_path / "o.parquet.parts").exists()


# ---------------------------------------------------------------------------------------------------- 9. Parquet / ids
def test_dictionary_and_string_view_text_columns_are_read_as_strings(tmp_path, tiny_gpt2):
    src = tmp_path / "d.parquet"
    pq.write_table(pa.table({"id": pa.array(["a", "b", "a", "c", "b"]).dictionary_encode(),
                             "text": pa.array(TEXTS).dictionary_encode(),
                             "target": pa.array(TEXTS).cast(pa.string_view())}), src)
    assert pa.types.is_dictionary(pq.read_schema(src).field("text").type)
    table = read_rows(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "o.parquet"), needs_target=True)
    assert table.column("text").to_pylist() == TEXTS and table.column("target").to_pylist() == TEXTS
    assert table.schema.field("text").type == pa.string() and table.schema.field("target").type == pa.string()


def test_an_id_beyond_64_bits_is_named(tmp_path, tiny_gpt2, capsys):
    src = write_jsonl(tmp_path / "i.jsonl", [{"id": 1, "text": "a"}, {"id": 2 ** 64, "text": "b"}])
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "o.parquet")
    assert code == 2 and err.count("\n") == 1 and "18446744073709551616" in err and "64-bit" in err, err
    assert "mix types" not in err


def test_an_artifact_the_installed_onnxruntime_cannot_run_is_refused_before_any_row(tmp_path, tiny_gpt2, capsys,
                                                                                      monkeypatch):
    """The artifact's onnxruntime need is checked with the job's other refusals, before the output's lock or parts
    and before any model loads (it had been refused by the first load, after the job had been set up)."""
    import onnxruntime as ort

    src = write_jsonl(tmp_path / "t.jsonl", [{"text": t} for t in TEXTS])

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(onnxlm.runtime, "load", no_load)
    monkeypatch.setattr(ort, "__version__", "1.22.1")
    out = tmp_path / "o.parquet"
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)
    assert code == 1 and err.count("\n") == 1 and "onnxruntime 1.22.1 is installed" in err, err
    assert not out.exists() and not (tmp_path / "o.parquet.parts").exists()

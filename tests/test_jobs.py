"""Batch jobs (onnxlm/jobs, `onnxlm score|generate --input ... --output ...`): results equal the runtime's own
calls row by row, a rerun resumes without duplicates, the output is never half-written, bad input is one error
line with exit status 2, and a progress bar shows."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import onnxlm
from cli_util import run_cli
from onnxlm.jobs import JobSpec, run_local
from onnxlm.jobs import local as jobs_local

if os.environ.get("CI") == "true":  # CI installs the jobs extra: its absence is a failure there
    import pyarrow as pa
else:
    pa = pytest.importorskip("pyarrow", reason="batch jobs need the 'jobs' extra (pyarrow)")
import pyarrow.parquet as pq  # noqa: E402

TEXTS = ["The cat sat on the mat.", "Hello", "A somewhat longer sentence to score here.", "x y", "Once upon a time",
         "Numbers 1 2 3", "The end.", "Another row", "short", "A final sentence of the file"]


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def corpus(tmp_path, texts=TEXTS, column="text", name="data.jsonl"):
    return write_jsonl(tmp_path / name, [{"id": f"doc-{i}", column: t, "other": i} for i, t in enumerate(texts)])


def rows(path) -> list[dict]:
    return pq.read_table(path).to_pylist()


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return onnxlm.load(tiny_gpt2.onnx_dir)


# ---------------------------------------------------------------------------------------------------- results
def test_score_rows_equal_model_score_and_keep_ids(tmp_path, tiny_gpt2, gpt2):
    out = tmp_path / "scores.parquet"
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, corpus(tmp_path), out, batch_size=3), progress=False,
                       model=gpt2)
    assert (report.rows, report.processed, report.output_rows) == (10, 10, 10)
    got = rows(out)
    assert [r["row"] for r in got] == list(range(10)) and [r["id"] for r in got] == [f"doc-{i}" for i in range(10)]
    assert pq.read_schema(out).names == ["row", "id", "text", "tokens", "token_ids", "token_logprobs",
                                         "sequence_logprob", "num_tokens", "perplexity"]
    for r, text in zip(got, TEXTS):
        solo = gpt2.score(text)
        assert r["text"] == text and r["token_ids"] == [int(t) for t in solo.tokens[0]]
        np.testing.assert_allclose(r["token_logprobs"], solo.token_logprobs[0], atol=1e-5)
        assert abs(r["sequence_logprob"] - float(solo.sequence_logprobs[0])) < 1e-4
        assert r["num_tokens"] == len(r["token_ids"])
        assert r["perplexity"] == pytest.approx(np.exp(-r["sequence_logprob"] / r["num_tokens"]))
        assert "".join(r["tokens"]) == gpt2.tokenizer.decode(r["token_ids"], skip_special_tokens=False)


def test_parquet_input_equals_jsonl_input(tmp_path, tiny_gpt2, gpt2):
    src = tmp_path / "data.parquet"
    pq.write_table(pa.table({"id": list(range(10)), "text": TEXTS}), src)
    run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "a.parquet"), progress=False, model=gpt2)
    run_local(JobSpec("score", tiny_gpt2.onnx_dir, corpus(tmp_path), tmp_path / "b.parquet"), progress=False,
              model=gpt2)
    a, b = rows(tmp_path / "a.parquet"), rows(tmp_path / "b.parquet")
    assert [r["id"] for r in a] == list(range(10))  # the id column keeps its type
    assert [{**r, "id": None} for r in a] == [{**r, "id": None} for r in b]


def test_generate_greedy_and_beam_rows_equal_solo_generate(tmp_path, tiny_gpt2, gpt2):
    prompts = TEXTS[:5]
    src = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])  # no id column: none in the output
    run_local(JobSpec("generate", tiny_gpt2.onnx_dir, src, tmp_path / "g.parquet", batch_size=2,
                      params={"max_new_tokens": 6}), progress=False, model=gpt2)
    got = rows(tmp_path / "g.parquet")
    assert "id" not in got[0]
    for r, p in zip(got, prompts):
        solo = gpt2.generate(p, max_new_tokens=6)
        assert (r["prompt"], r["index"], r["token_ids"], r["text"], r["finish_reason"]) == \
            (p, 0, solo.new_tokens[0], solo.text[0], solo.finish_reasons[0])
    params = {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": 2, "eos_token_id": []}
    run_local(JobSpec("generate", tiny_gpt2.onnx_dir, src, tmp_path / "b.parquet", batch_size=3, params=params),
              progress=False, model=gpt2)
    got = rows(tmp_path / "b.parquet")
    assert [(r["row"], r["index"]) for r in got] == [(i, j) for i in range(5) for j in range(2)]
    for r in got:
        solo = gpt2.generate(prompts[r["row"]], **params)
        assert r["token_ids"] == solo.new_tokens[r["index"]]
        assert abs(r["sequences_score"] - float(solo.sequences_scores[r["index"]])) < 1e-4


def test_seeded_sampling_is_per_row_and_independent_of_the_batch(tmp_path, tiny_gpt2, gpt2):
    src = corpus(tmp_path)
    params = {"max_new_tokens": 6, "do_sample": True, "seed": 11, "top_k": 30, "output_scores": True}
    for size in (1, 4):
        run_local(JobSpec("generate", tiny_gpt2.onnx_dir, src, tmp_path / f"s{size}.parquet", batch_size=size,
                          params=params), progress=False, model=gpt2)
    one, four = rows(tmp_path / "s1.parquet"), rows(tmp_path / "s4.parquet")
    assert one == four
    for r in one[:3]:  # row r samples alone with seed + r
        solo = gpt2.generate(TEXTS[r["row"]], **{**params, "seed": 11 + r["row"]})
        assert r["token_ids"] == solo.new_tokens[0] and len(r["token_logprobs"]) == len(r["token_ids"])
    assert len({tuple(r["token_ids"]) for r in one}) > 1


def test_seq2seq_score_reads_the_target_column(tmp_path, tiny_t5, capsys):
    t5 = onnxlm.load(tiny_t5.onnx_dir)
    src = write_jsonl(tmp_path / "t.jsonl", [{"text": "translate: house", "target": "Haus"},
                                             {"text": "summarize: a b c", "target": "abc"}])
    run_local(JobSpec("score", tiny_t5.onnx_dir, src, tmp_path / "t.parquet"), progress=False, model=t5)
    got = rows(tmp_path / "t.parquet")
    solo = t5.score(["translate: house", "summarize: a b c"], targets=["Haus", "abc"])
    assert [r["target"] for r in got] == ["Haus", "abc"]
    for i, r in enumerate(got):
        np.testing.assert_allclose(r["token_logprobs"], solo.token_logprobs[i], atol=1e-5)
    no_target = write_jsonl(tmp_path / "n.jsonl", [{"text": "translate: house"}])
    code, _, err = run_cli(capsys, "score", tiny_t5.onnx_dir, "--input", no_target, "--output", tmp_path / "n.parquet")
    assert code == 2 and err.count("\n") == 1 and "'target'" in err and "--target-column" in err


# ---------------------------------------------------------------------------------------------------- resume / atomic
class Interrupt(BaseException):
    """Stands for a kill: not an Exception, so nothing in the job catches it."""


def _interrupt_after(monkeypatch, batches: int, seen: list, output_absent: bool = True) -> None:
    from onnxlm.jobs.tasks import process as real

    def process(model, spec, batch, schema):
        if len(seen) == batches:
            raise Interrupt
        assert not (output_absent and spec.output.exists())  # the output appears only once complete
        seen.append(batch.column("row").to_pylist())
        return real(model, spec, batch, schema)

    monkeypatch.setattr(jobs_local, "process", process)


def test_a_killed_run_resumes_without_duplicates(tmp_path, tiny_gpt2, gpt2, monkeypatch):
    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    spec = dict(batch_size=2, rows_per_part=2)
    run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "whole.parquet", **spec), progress=False,
              model=gpt2)
    seen: list = []
    _interrupt_after(monkeypatch, 3, seen)
    with pytest.raises(Interrupt):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, **spec), progress=False, model=gpt2)
    assert not out.exists()  # never a half-written output
    parts = sorted((tmp_path / "out.parquet.parts").glob("part-*.parquet"))
    assert len(parts) == 3 and sorted(r for p in parts for r in pq.read_table(p)["row"].to_pylist()) == list(range(6))
    (tmp_path / "out.parquet.parts" / ".part-000003.parquet.tmp-dead").write_bytes(b"PAR1 cut short")  # kill -9
    seen.clear()
    _interrupt_after(monkeypatch, 99, seen)
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, **spec), progress=False, model=gpt2)
    assert seen == [[6, 7], [8, 9]]  # only the rows the killed run had not written
    assert (report.skipped, report.processed, report.output_rows) == (6, 4, 10)
    assert rows(out) == rows(tmp_path / "whole.parquet")  # every row once, in input order
    assert not (tmp_path / "out.parquet.parts").exists()
    seen.clear()
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, **spec), progress=False, model=gpt2)
    assert seen == [] and (report.processed, report.output_rows) == (0, 10)  # a finished job: nothing to do


def test_a_kill_during_the_merge_leaves_no_output_and_the_parts(tmp_path, tiny_gpt2, gpt2, monkeypatch):
    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, tmp_path / "whole.parquet", batch_size=2), progress=False,
              model=gpt2)
    real_replace = os.replace

    def replace(a, b):
        if str(b) == str(out):
            raise Interrupt  # killed between writing the merged file and renaming it
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Interrupt):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=2, rows_per_part=4), progress=False,
                  model=gpt2)
    monkeypatch.setattr(os, "replace", real_replace)
    assert not out.exists() and len(list((tmp_path / "out.parquet.parts").glob("part-*.parquet"))) == 3
    (tmp_path / ".out.parquet.tmp-dead").write_bytes(b"PAR1 merged file of a kill -9")
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=2, rows_per_part=4),
                       progress=False, model=gpt2)
    assert report.processed == 0 and rows(out) == rows(tmp_path / "whole.parquet")
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(tmp_path, tiny_gpt2, gpt2, capsys, monkeypatch):
    """ENOSPC while writing a part, then while writing the merged output: JobOutputError (one line, exit 1) naming
    the file, the reason and what is kept; no temporary file stays; the same command then resumes and merges."""
    from onnxlm.jobs import JobOutputError

    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    real_write = pq.write_table
    calls = []

    def full_after(n):
        def write_table(table, where, *a, **kw):
            calls.append(where)
            if len(calls) > n:
                raise OSError(28, "No space left on device")
            return real_write(table, where, *a, **kw)
        return write_table

    spec = dict(batch_size=2, rows_per_part=2)
    monkeypatch.setattr(pq, "write_table", full_after(2))
    with pytest.raises(JobOutputError, match=r"part-000002.parquet failed \(No space left on device\); the 2 part"):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, **spec), progress=False, model=gpt2)
    parts = tmp_path / "out.parquet.parts"
    assert not out.exists() and sorted(p.name for p in parts.iterdir() if ".tmp-" in p.name) == []
    assert len(list(parts.glob("part-*.parquet"))) == 2
    calls.clear()
    monkeypatch.setattr(pq, "write_table", full_after(3))  # the three parts left, then the merge fails
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--batch-size", 2,
                           "--rows-per-part", 2, "--quiet")
    assert code == 1 and err.count("\n") == 1 and f"writing {out} failed (No space left on device)" in err, err
    assert not out.exists() and [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    monkeypatch.setattr(pq, "write_table", real_write)
    report = run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, **spec), progress=False, model=gpt2)
    assert (report.processed, report.output_rows) == (0, 10) and [r["row"] for r in rows(out)] == list(range(10))


def test_a_grown_input_is_another_job_and_overwrite_starts_afresh(tmp_path, tiny_gpt2, capsys, monkeypatch):
    src, out = corpus(tmp_path), tmp_path / "out.parquet"
    assert run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--quiet")[0] == 0
    corpus(tmp_path, TEXTS + ["one more"])
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)
    assert code == 2 and err.count("\n") == 1 and "different job" in err and "input file contents" in err
    assert len(rows(out)) == 10  # untouched
    # --overwrite: the old output stays until the new one replaces it, even across an interrupted run
    seen: list = []
    _interrupt_after(monkeypatch, 1, seen, output_absent=False)
    with pytest.raises(Interrupt):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=4, rows_per_part=4), overwrite=True,
                  progress=False)
    monkeypatch.undo()
    assert len(rows(out)) == 10
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)  # resumes it
    assert code == 0 and "11 rows (7 processed now, 4 already done)" in err and len(rows(out)) == 11
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--overwrite")
    assert code == 0 and "11 rows (11 processed now, 0 already done)" in err and len(rows(out)) == 11
    # an --overwrite of the same job's finished output (sampling without a seed, a newer onnxlm), interrupted: the
    # rerun without --overwrite resumes the replacement, never taking the old output's rows as done
    seen.clear()
    _interrupt_after(monkeypatch, 1, seen, output_absent=False)
    with pytest.raises(Interrupt):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=4, rows_per_part=4), overwrite=True,
                  progress=False)
    monkeypatch.undo()
    assert (tmp_path / "out.parquet.parts" / "replaces-output").is_file()
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)
    assert code == 0 and "11 rows (7 processed now, 4 already done)" in err and len(rows(out)) == 11
    seen.clear()  # interrupted before its first part: the replacement is on record from the start
    _interrupt_after(monkeypatch, 0, seen, output_absent=False)
    with pytest.raises(Interrupt):
        run_local(JobSpec("score", tiny_gpt2.onnx_dir, src, out, batch_size=4, rows_per_part=4), overwrite=True,
                  progress=False)
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out)
    assert code == 0 and "11 rows (11 processed now, 0 already done)" in err and len(rows(out)) == 11


def test_a_row_the_model_refuses_names_it_and_keeps_the_rows_before(tmp_path, tiny_gpt2, capsys):
    src = corpus(tmp_path, TEXTS[:4] + ["word " * 200] + TEXTS[4:])  # longer than max_positions
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--batch-size", 2,
                           "--rows-per-part", 2, "--quiet")
    assert code == 1 and err.count("\n") == 1 and "row 4 (id 'doc-4')" in err and "max_positions" in err
    assert not out.exists()
    done = sorted(r for p in (tmp_path / "out.parquet.parts").glob("part-*") for r in pq.read_table(p)["row"].to_pylist())
    assert done == [0, 1, 2, 3]


def test_a_refused_row_inside_a_batch_keeps_the_rows_before_it_in_that_batch(tmp_path, tiny_gpt2, gpt2, capsys):
    """The failing row is the batch's second: the batch's first row (found finished while the failing one was
    looked for, each row run alone) is kept with the earlier batches', with the values a solo run gives."""
    src = corpus(tmp_path, TEXTS[:5] + ["word " * 200] + TEXTS[5:])
    out = tmp_path / "out.parquet"
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", out, "--batch-size", 4,
                           "--quiet")
    assert code == 1 and "row 5 (id 'doc-5')" in err
    kept = [r for p in sorted((tmp_path / "out.parquet.parts").glob("part-*")) for r in pq.read_table(p).to_pylist()]
    assert sorted(r["row"] for r in kept) == [0, 1, 2, 3, 4]
    row4 = next(r for r in kept if r["row"] == 4)
    np.testing.assert_allclose(row4["token_logprobs"], gpt2.score(TEXTS[4]).token_logprobs[0], atol=1e-5)


def test_an_empty_system_message_is_given(tmp_path):
    """--system "": an empty system message (it replaces a template's default one), not none."""
    spec = JobSpec(task="generate", model_dir=tmp_path, input=tmp_path / "i.jsonl", output=tmp_path / "o.parquet",
                   chat=True, system="")
    from onnxlm.jobs.tasks import _model_input

    class Model:
        def render_chat(self, messages, tokenize, **kw):
            return messages
    assert _model_input(Model(), spec, "hi") == [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    with pytest.raises(onnxlm.ParameterError, match="system: needs chat=True"):
        JobSpec(task="generate", model_dir=tmp_path, input=tmp_path / "i.jsonl", output=tmp_path / "o.parquet",
                system="")
    with pytest.raises(onnxlm.ParameterError, match="chat_template_kwargs: 'self' is set by"):  # not a TypeError
        JobSpec(task="generate", model_dir=tmp_path, input=tmp_path / "i.jsonl", output=tmp_path / "o.parquet",
                chat=True, chat_template_kwargs={"self": 1})


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_score_and_generate_with_progress_bar(tmp_path, tiny_gpt2, gpt2, capsys):
    src = corpus(tmp_path)
    code, out, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "s.parquet",
                             "--batch-size", 4)
    assert code == 0 and out == ""
    assert "scoring" in err and "10/10" in err and "row" in err  # tqdm's bar on stderr
    assert "s.parquet: 10 rows (10 processed now, 0 already done)" in err
    src = corpus(tmp_path, column="prompt", name="prompts.jsonl")
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--input", src, "--output",
                           tmp_path / "g.parquet", "--max-new-tokens", 4, "--num-beams", 2)
    assert code == 0 and "generating" in err and "10/10" in err
    got = rows(tmp_path / "g.parquet")
    assert got[1]["token_ids"] == gpt2.generate(TEXTS[1], max_new_tokens=4, num_beams=2).new_tokens[0]
    code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "q.parquet",
                           "--column", "prompt", "--quiet")
    assert code == 0 and err == ""


def test_cli_generate_column_falls_back_to_text_and_chat_needs_a_template(tmp_path, tiny_gpt2, gpt2, capsys):
    src = corpus(tmp_path, TEXTS[:2])  # a `text` column, no `prompt`
    code, _, _ = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "g.parquet",
                         "--max-new-tokens", 3, "--quiet")
    assert code == 0 and [r["prompt"] for r in rows(tmp_path / "g.parquet")] == TEXTS[:2]
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--input", src, "--output",
                           tmp_path / "c.parquet", "--chat", "--quiet")
    assert code == 1 and err.count("\n") == 1 and "chat template" in err


BAD_INPUTS = {
    "missing column": (lambda d: write_jsonl(d / "a.jsonl", [{"body": "hi"}]), "no column 'text' (columns: body)"),
    "no such file": (lambda d: d / "absent.jsonl", "does not exist"),
    "a directory": (lambda d: (d / "dir.jsonl").mkdir() or d / "dir.jsonl", "does not exist or is not a file"),
    "not JSON": (lambda d: (d / "b.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n') and d / "b.jsonl",
                 "line 2 is not JSON"),
    "not an object": (lambda d: (d / "c.jsonl").write_text('["text"]\n') and d / "c.jsonl", "not an object"),
    "not Parquet": (lambda d: (d / "d.parquet").write_bytes(b"not parquet at all") and d / "d.parquet",
                    "cannot read"),
    "not UTF-8": (lambda d: (d / "e.jsonl").write_bytes(b'{"text": "caf\xe9"}\n') and d / "e.jsonl", "not UTF-8"),
    "unknown extension": (lambda d: (d / "f.csv").write_text("text\nhi\n") and d / "f.csv", "unknown extension"),
    "empty text": (lambda d: write_jsonl(d / "g.jsonl", [{"text": "ok"}, {"text": "  "}]), "row 1"),
    "null text": (lambda d: write_jsonl(d / "h.jsonl", [{"text": "ok"}, {"id": 3}]), "row 1 (0-based) of column "
                                                                                     "'text' is null"),
    "number text": (lambda d: write_jsonl(d / "i.jsonl", [{"text": 5}]), "holds int64 values"),
    "mixed id types": (lambda d: write_jsonl(d / "j.jsonl", [{"id": 1, "text": "a"}, {"id": "b", "text": "b"}]),
                       "mix types (int, str)"),
    "no rows": (lambda d: (d / "k.jsonl").write_text("\n\n") and d / "k.jsonl", "holds no rows"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line_and_exit_2(tmp_path, tiny_gpt2, capsys, case):
    make, message = BAD_INPUTS[case]
    src = make(tmp_path)
    code, out, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, "--output", tmp_path / "o.parquet")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("onnxlm: error: --input") and message in err, err
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / "o.parquet.parts").exists()


def test_bad_output_and_flag_combinations_exit_2(tmp_path, tiny_gpt2, capsys):
    src = corpus(tmp_path)
    (tmp_path / "taken.parquet").write_text("someone else's file")
    for argv, message in [
        (["--output", tmp_path / "o.txt"], "must end in .parquet"),
        (["--output", tmp_path / "nodir" / "o.parquet"], "does not exist"),
        (["--output", tmp_path / "taken.parquet"], "not a Parquet file"),
    ]:
        code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, "--input", src, *argv)
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "taken.parquet").read_text() == "someone else's file"
    for argv in (["--output", tmp_path / "o.parquet"], ["--input", src], ["--input", src, "--output",
                 tmp_path / "o.parquet", "Hello"], ["--input", src, "--output", tmp_path / "o.parquet", "--json"]):
        code, _, err = run_cli(capsys, "score", tiny_gpt2.onnx_dir, *argv)
        assert code == 2 and "usage:" in err



def test_help_shows_the_job_flags(capsys):
    for command in ("score", "generate"):
        code, out, _ = run_cli(capsys, command, "--help")
        assert code == 0
        for flag in ("--input", "--output", "--column", "--id-column", "--overwrite", "--ray", "--ray-address",
                     "--ray-actors", "--batch-size", "RAY_ADDRESS", "OUTPUT.parts"):
            assert flag in out, (command, flag)


def test_a_bad_generation_parameter_fails_before_any_row(tmp_path, tiny_gpt2, capsys):
    out = tmp_path / "g.parquet"
    code, _, err = run_cli(capsys, "generate", tiny_gpt2.onnx_dir, "--input", corpus(tmp_path), "--output", out,
                           "--temperature", -1, "--do-sample")
    assert code == 1 and err.count("\n") == 1 and "temperature" in err
    assert not out.exists() and not (tmp_path / "g.parquet.parts").exists()


def test_an_unreachable_ray_address_is_refused_at_once():
    """ray.init retries a dead --ray-address for minutes (its warnings past --quiet): nothing answering there is a
    JobInputError naming it within the connect timeout."""
    import time

    from onnxlm.jobs import JobInputError
    from onnxlm.jobs.ray_data import _check_reachable

    began = time.monotonic()
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        with pytest.raises(JobInputError, match=f"--ray-address {address}: nothing answers at 127.0.0.1:1"):
            _check_reachable(address, timeout=2)
    assert time.monotonic() - began < 5
    with pytest.raises(JobInputError, match="allowed: HOST:PORT"):
        _check_reachable("nonsense")
    for address in (None, "auto", "local"):
        _check_reachable(address)  # Ray's to resolve

"""Reading a job's input: JSON Lines or Parquet -> one Arrow table of the rows to process.

The table has `row` (int64, the 0-based position in the input: the key a rerun resumes by), `id` (the input's
id column, when it has one, values and type as given), `text` (the text column: a non-empty string in every row)
and `target` (seq2seq scoring: the target column, a non-empty string in every row). Every problem is a
JobInputError naming the file, the column and the row or line.
"""
from __future__ import annotations

import json
from pathlib import Path

from .spec import DEFAULT_COLUMNS, JobInputError, JobSpec

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def import_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise JobInputError("batch jobs read and write Parquet with pyarrow, which is not installed: "
                            "pip install 'onnxlm[jobs]'") from None
    return pyarrow


def check_input_path(path: Path) -> Path:
    """--input's refusals that need no model and no reading: not a file, an unknown extension."""
    if not path.is_file():
        raise JobInputError(f"--input: {path} does not exist or is not a file")
    suffix = path.suffix.lower()
    if suffix != ".parquet" and suffix not in JSONL_SUFFIXES:
        raise JobInputError(f"--input: {path} has an unknown extension {suffix!r}; allowed: .parquet, "
                            f"{', '.join(JSONL_SUFFIXES)} (one JSON object per line)")
    return path


def read_rows(spec: JobSpec, *, needs_target: bool = False):
    """spec.input -> pa.Table(row, [id], text, [target]); needs_target: a seq2seq score job."""
    pa = import_pyarrow()
    path = check_input_path(spec.input)
    if path.suffix.lower() == ".parquet":
        names, n, column = _parquet_columns(path)
    else:
        names, n, column = _jsonl_columns(path)
    if n == 0:
        raise JobInputError(f"--input: {path} holds no rows")
    text_col = _text_column(spec, names)
    cols = {"row": pa.array(range(n), pa.int64())}
    if spec.id_column is not None and spec.id_column not in names:
        raise JobInputError(f"--input: {path} has no column {spec.id_column!r} (columns: {', '.join(names) or 'none'});"
                            " --id-column names the input column copied to the output")
    id_column = spec.id_column or "id"
    if id_column in names:
        cols["id"] = column(id_column)
    cols["text"] = _strings(path, column(text_col), text_col)
    if needs_target:
        if spec.target_column not in names:
            raise JobInputError(f"--input: {path} has no column {spec.target_column!r} (columns: "
                                f"{', '.join(names)}); scoring with an encoder-decoder model needs "
                                "the target text: name its column with --target-column")
        cols["target"] = _strings(path, column(spec.target_column), spec.target_column)
    return pa.table(cols)


def _text_column(spec: JobSpec, columns: list[str]) -> str:
    wanted = (spec.column,) if spec.column else DEFAULT_COLUMNS[spec.task]
    for name in wanted:
        if name in columns:
            return name
    names = " or ".join(repr(n) for n in wanted)
    hint = "" if spec.column else "; choose the text column with --column"
    raise JobInputError(f"--input: {spec.input} has no column {names} (columns: {', '.join(columns) or 'none'})"
                        f"{hint}")


def _strings(path: Path, column, name: str):
    """column (pa.Array) -> the same as a string array; JobInputError at the first row that is not a non-empty
    string."""
    import pyarrow as pa
    if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):  # e.g. a pandas category
        column = column.dictionary_decode()
    if pa.types.is_string_view(column.type):
        column = column.cast(pa.string())
    if not (_is_text(column.type) or pa.types.is_null(column.type)):
        raise JobInputError(f"--input: {path}: column {name!r} holds {column.type} values; expected text (strings)")
    for i, value in enumerate(column.to_pylist()):
        if not isinstance(value, str) or not value.strip():
            got = "null" if value is None else repr(value)
            raise JobInputError(f"--input: {path}: row {i} (0-based) of column {name!r} is {got}; every row needs "
                                "a non-empty text")
    return column.cast(pa.string())


def _is_text(type_) -> bool:
    import pyarrow as pa
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def _parquet_columns(path: Path):
    """-> (column names, row count, name -> pa.Array), reading only the columns asked for."""
    pa = import_pyarrow()
    try:
        file = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise JobInputError(f"--input: cannot read {path} as Parquet: {_one_line(exc)}") from None

    def column(name: str):
        try:
            return file.read(columns=[name]).column(0).combine_chunks()
        except (pa.ArrowException, OSError) as exc:
            raise JobInputError(f"--input: cannot read column {name!r} of {path}: {_one_line(exc)}") from None

    return file.schema_arrow.names, file.metadata.num_rows, column


def _jsonl_columns(path: Path):
    """One JSON object per line (blank lines skipped) -> (keys, row count, key -> pa.Array); a key absent from a
    line is null there; the values of a key must share one type."""
    import pyarrow as pa
    try:
        data = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobInputError(f"--input: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x})") from None
    except OSError as exc:
        raise JobInputError(f"--input: cannot read {path}: {exc.strerror or exc}") from None
    records = []
    # lines end at "\n" only (a "\r" before it is JSON whitespace): str.splitlines() would also cut at U+2028,
    # U+2029, U+0085 and other characters that JSON strings may hold raw
    for number, line in enumerate(data.split("\n"), 1):
        if not line.strip(" \t\r"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise JobInputError(f"--input: {path} line {number} is not JSON ({exc.msg}); expected one JSON object "
                                "per line") from None
        if not isinstance(record, dict):
            raise JobInputError(f"--input: {path} line {number} is a JSON {type(record).__name__}, not an object; "
                                'expected one object per line, e.g. {"id": 1, "text": "..."}')
        records.append(record)

    def column(name: str):
        values = [r.get(name) for r in records]
        try:
            return pa.array(values)
        except (pa.ArrowException, OverflowError) as exc:
            raise _mixed(path, name, values, exc) from None

    return list(dict.fromkeys(k for r in records for k in r)), len(records), column


def _mixed(path: Path, name: str, values: list, exc: Exception) -> JobInputError:
    """A key whose values Arrow cannot put in one column (e.g. ints and strings)."""
    kinds = sorted({type(v).__name__ for v in values if v is not None})
    huge = next((v for v in values if isinstance(v, int) and not isinstance(v, bool)
                 and not -2 ** 63 <= v < 2 ** 63), None)
    if huge is not None:
        return JobInputError(f"--input: {path}: the values of {name!r} include the integer {huge}, outside the "
                             "signed 64-bit range of a Parquet integer column; give such values as strings")
    return JobInputError(f"--input: {path}: the values of {name!r} mix types ({', '.join(kinds)}): "
                        f"{_one_line(exc)}; give them one type")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())

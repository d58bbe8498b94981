"""One batch of input rows -> its output rows, through the runtime's public API (`score`, `generate`,
`render_chat`, `embed`). The single-process loop and the Ray Data actors both call `process`, so they give the same
rows.

Output columns (the same fields `onnxlm score|generate|embed --json` print):
- score:    row, [id], text, [target], tokens (list<string>), token_ids (list<int64>), token_logprobs
            (list<float32>), sequence_logprob (float64, their sum), num_tokens (int64), perplexity (float64).
- generate: row, [id], prompt, index (0.. num_return_sequences-1: one output row per returned sequence), text,
            token_ids (list<int64>: the new tokens), finish_reason ("eos" | "length" | "stop"),
            [sequences_score (float64): beam search], [constraint_satisfied (bool): with json_schema / regex /
            choices / grammar / constraints: does the new text match the whole constraint; null for a row without
            one], [token_logprobs (list<float32>): with output_scores].
- embed:    row, [id], text, num_tokens (int64: the tokens the model read, special tokens included), embedding
            (list<float32>: every row the model's width D; unit length unless normalize=False). The job's pooling
            and normalize are in its fingerprint (the output's `onnxlm.job` metadata), not in columns.

A job's `params` are generate's: GenerationConfig names plus one structured-output constraint for every row
(json_schema / regex / choices / grammar), or `constraints`, one entry per input row (indexed by `row`).
"""
from __future__ import annotations

import math

import numpy as np

from onnxlm.runtime.errors import OnnxlmError

from .spec import JobRowError, JobSpec


CONSTRAINT_PARAMS = ("json_schema", "regex", "choices", "grammar", "constraints")


def split_params(params: dict) -> tuple[dict, dict]:
    """A job's params -> (generation config parameters, structured-output constraints as generate takes them)."""
    generation = {k: v for k, v in params.items() if k not in CONSTRAINT_PARAMS}
    constraints = {k: v for k, v in params.items() if k in CONSTRAINT_PARAMS and v is not None}
    return generation, constraints


def output_schema(spec: JobSpec, model_config, input_schema):
    """-> the pa.Schema of the job's output (fixed per job: every part has it)."""
    import pyarrow as pa
    fields = [pa.field("row", pa.int64())]
    if "id" in input_schema.names:
        fields.append(pa.field("id", input_schema.field("id").type))
    if spec.task == "embed":
        fields += [pa.field("text", pa.string()), pa.field("num_tokens", pa.int64()),
                   pa.field("embedding", pa.list_(pa.float32()))]
        return pa.schema(fields)
    if spec.task == "score":
        fields.append(pa.field("text", pa.string()))
        if "target" in input_schema.names:
            fields.append(pa.field("target", pa.string()))
        fields += [pa.field("tokens", pa.list_(pa.string())), pa.field("token_ids", pa.list_(pa.int64())),
                   pa.field("token_logprobs", pa.list_(pa.float32())), pa.field("sequence_logprob", pa.float64()),
                   pa.field("num_tokens", pa.int64()), pa.field("perplexity", pa.float64())]
        return pa.schema(fields)
    fields += [pa.field("prompt", pa.string()), pa.field("index", pa.int64()), pa.field("text", pa.string()),
               pa.field("token_ids", pa.list_(pa.int64())), pa.field("finish_reason", pa.string())]
    if model_config.num_beams > 1:
        fields.append(pa.field("sequences_score", pa.float64()))
    if split_params(spec.params)[1]:
        fields.append(pa.field("constraint_satisfied", pa.bool_()))
    if model_config.output_scores and model_config.num_beams == 1:
        fields.append(pa.field("token_logprobs", pa.list_(pa.float32())))
    return pa.schema(fields)


def process(model, spec: JobSpec, batch, schema):
    """batch: pa.Table(row, [id], text, [target]) -> pa.Table with `schema` (see the module doc)."""
    import pyarrow as pa
    rows = batch.to_pylist()
    try:
        records = _records(model, spec, rows)
    except OnnxlmError as exc:  # name the row: the batch's first row that fails alone
        failed = _failing_row(model, spec, rows, exc)
        if failed is None:
            raise
        row, error, before = failed
        ident = f" (id {row['id']!r})" if "id" in row else ""
        raise JobRowError(f"row {row['row']}{ident}: {error}",
                          kept=pa.Table.from_pylist(before, schema=schema)) from exc
    return pa.Table.from_pylist(records, schema=schema)


def _records(model, spec: JobSpec, rows: list[dict]) -> list[dict]:
    """rows (dicts of row, [id], text, [target]) -> their output records, by the job's task."""
    run = {"score": _score, "generate": _generate, "embed": _embed}[spec.task]
    return run(model, spec, rows)


def _failing_row(model, spec: JobSpec, rows: list[dict], exc: Exception):
    """-> (the first row of a failed batch that fails alone, its error, the records of the rows before it, each
    run alone: they are kept as the earlier batches are), or None when each succeeds alone."""
    if len(rows) == 1:
        return rows[0], exc, []
    before = []
    for row in rows:
        try:
            before += _records(model, spec, [row])
        except OnnxlmError as one:
            return row, one, before
    return None


# ---------------------------------------------------------------------------------------------------- score
def _score(model, spec: JobSpec, rows: list[dict]) -> list[dict]:
    texts = [r["text"] for r in rows]
    targets = [r["target"] for r in rows] if rows and "target" in rows[0] else None
    res = model.score(texts, targets=targets, prepend_bos=spec.prepend_bos, append_eos=spec.append_eos)
    out = []
    for i, row in enumerate(rows):
        ids = [int(t) for t in res.tokens[i]]
        lps = np.asarray(res.token_logprobs[i], dtype=np.float32)
        total = float(res.sequence_logprobs[i])
        rec = {k: row[k] for k in ("row", "id", "text", "target") if k in row}
        rec.update(tokens=[_piece(model, t) for t in ids], token_ids=ids, token_logprobs=lps.tolist(),
                   sequence_logprob=total, num_tokens=len(ids),
                   perplexity=math.exp(-total / len(ids)) if ids else float("nan"))
        out.append(rec)
    return out


def _piece(model, token_id: int) -> str:
    if model.tokenizer is None:
        return str(token_id)
    return model.tokenizer.decode([token_id], skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------------- embed
def _embed(model, spec: JobSpec, rows: list[dict]) -> list[dict]:
    """The batch's texts through one `model.embed` call (batch_size: the job's, so the rows run together)."""
    res = model.embed([r["text"] for r in rows], pooling=spec.embed_pooling(), normalize=spec.normalize,
                      batch_size=spec.batch_size, truncate=spec.truncate)
    out = []
    for i, row in enumerate(rows):
        rec = {k: row[k] for k in ("row", "id", "text") if k in row}
        rec.update(num_tokens=res.token_counts[i], embedding=res.embeddings[i].tolist())
        out.append(rec)
    return out


# ---------------------------------------------------------------------------------------------------- generate
def _generate(model, spec: JobSpec, rows: list[dict]) -> list[dict]:
    """Greedy and beam search run the rows as one left-padded batch. Sampling with a seed runs each row alone with
    seed + row, so a row's text never depends on which rows shared its batch (batch size, resume, Ray blocks)."""
    params, constraints = split_params(spec.params)
    config = model.resolve_config(params)

    def call(group: list[dict], **extra) -> dict:  # generate's kwargs for these rows
        if "constraints" in constraints:  # one entry per input row
            return {**params, "constraints": [constraints["constraints"][r["row"]] for r in group], **extra}
        return {**params, **constraints, **extra}

    inputs = [_model_input(model, spec, r["text"]) for r in rows]
    if config.do_sample and config.seed is not None:
        results = [(model.generate([x], **call([r], seed=config.seed + r["row"])), [r])
                   for x, r in zip(inputs, rows)]
    else:
        results = [(model.generate(inputs, **call(rows)), rows)]
    out = []
    for res, group in results:
        n = len(res.text) // len(group)  # returned sequences per prompt: row i -> i*n .. i*n+n-1
        for j in range(len(res.text)):
            row = group[j // n]
            rec = {k: row[k] for k in ("row", "id") if k in row}
            rec.update(prompt=row["text"], index=j % n, text=res.text[j],
                       token_ids=[int(t) for t in res.new_tokens[j]], finish_reason=res.finish_reasons[j])
            if res.sequences_scores is not None:
                rec["sequences_score"] = float(res.sequences_scores[j])
            if constraints:
                satisfied = res.constraint_satisfied
                rec["constraint_satisfied"] = None if satisfied is None else satisfied[j]
            if config.output_scores and config.num_beams == 1:
                rec["token_logprobs"] = _token_logprobs(res, j)
            out.append(rec)
    return out


def _model_input(model, spec: JobSpec, text: str):
    """A prompt as the runtime takes it: the text, or with chat its template's token ids."""
    if not spec.chat:
        return text
    messages = ([{"role": "system", "content": spec.system}] if spec.system is not None else []) + \
        [{"role": "user", "content": text}]
    return model.render_chat(messages, tokenize=True, **spec.chat_template_kwargs)


def _token_logprobs(res, row: int) -> list[float]:
    """log-softmax of the processed scores at each chosen token (as `onnxlm generate --output-scores`)."""
    out = []
    for step, tok in enumerate(res.new_tokens[row][:len(res.scores)]):
        s = res.scores[step][row].astype(np.float64)
        finite = np.isfinite(s)
        m = np.max(s[finite]) if finite.any() else 0.0
        out.append(float(s[tok] - (m + np.log(np.sum(np.exp(s - m))))))
    return out

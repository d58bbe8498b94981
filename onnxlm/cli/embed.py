"""`onnxlm embed`: one vector per text (the model's last hidden states pooled), and how alike the texts are."""
from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from onnxlm.runtime.embedding import POOLINGS

from .args import add_model_args, add_prompt_args, command_parser, load_model, positive_int, read_prompts
from .jobs import add_job_args, run_job, wants_job

SHOWN_VALUES = 6  # a vector's first values in the summary
MATRIX_MAX = 10   # up to this many texts: the full cosine matrix; more: each text's most similar other

DESCRIPTION = """\
Embed texts: one vector per text, the model's last hidden states pooled over the text's tokens (mean: their
average, cls: the first token's, last: the last token's) and scaled to unit length (--no-normalize keeps them
as pooled). The summary shows each text's token count and the vector's first values, then the cosine similarity
of every pair of texts; --json prints the whole vectors.

Decoder-only models on the fused graph (what `onnxlm export` makes where the family has one, and every
decoder .gguf) can embed, and so do embedding GGUFs (BERT: all-MiniLM, bge, mxbai-embed-large; XLM-RoBERTa: bge-m3,
multilingual-e5; nomic-bert: nomic-embed-text), which only embed; a T5, or an export with --kv-layout plain, cannot.

examples:
  onnxlm embed models/smollm2 "The cat sat on the mat." "A cat is sitting on a mat." "Stocks fell today."
  onnxlm embed models/qwen3-embedding "What is ONNX?" --pooling last --json
  onnxlm embed models/smollm2 --file sentences.txt --json > vectors.jsonl
  onnxlm embed models/smollm2 --input docs.jsonl --output vectors.parquet
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "embed", help="embedding vectors of texts, and their cosine similarities",
                       description=DESCRIPTION)
    add_model_args(p)
    add_prompt_args(p, name="TEXT", what="text")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="how a text's token states become one vector (default: the model's own, where its GGUF "
                        "or sentence-transformers files named one, else mean)")
    p.add_argument("--no-normalize", dest="normalize", action="store_false",
                   help="keep the pooled vectors as they are (default: unit length, as OpenAI's and llama.cpp's)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="texts embedded per forward pass (default: 16); a progress bar shows on stderr for many "
                        "texts")
    p.add_argument("--truncate", action="store_true",
                   help="cut a text longer than the model's context to it (its first tokens, and the [SEP] / EOS "
                        "the tokenizer appends kept last) instead of refusing it; a batch job then never stops at "
                        "a long row (default: refused, as OpenAI's and llama.cpp's servers refuse it)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per text: {"text", "num_tokens", "embedding": [floats]}')
    add_job_args(p, "embed")
    p.set_defaults(func=run)


def run(args) -> int:
    if wants_job(args):
        if args.json:
            args.parser_for_command.error("--input writes Parquet (an `embedding` column): --json does not apply")
        return run_job(args, "embed", pooling=args.pooling, normalize=args.normalize, truncate=args.truncate)
    texts = read_prompts(args, what="text")
    model = load_model(args, generating=False)
    model.check_embeddings()  # a model that cannot embed says so before any text runs
    bar = tqdm(total=len(texts), desc="embedding", unit="text", file=sys.stderr, disable=len(texts) <= args.batch_size)
    vectors = []
    for start in range(0, len(texts), args.batch_size):  # bounded batches: a long file never becomes one batch
        chunk = texts[start:start + args.batch_size]
        res = model.embed(chunk, pooling=args.pooling, normalize=args.normalize, batch_size=args.batch_size,
                          truncate=args.truncate)
        bar.update(len(chunk))
        with bar.external_write_mode():
            _print_chunk(args, chunk, res, start)
        if not args.json:
            vectors.append(res.embeddings)
    bar.close()
    if not args.json and len(texts) > 1:
        print()
        _print_similarities(cosine_matrix(np.concatenate(vectors)), res.pooling)
    return 0


def _print_chunk(args, texts: list[str], res, offset: int) -> None:
    for i, text in enumerate(texts):
        vector = res.embeddings[i]
        if args.json:
            print(json.dumps({"text": text, "num_tokens": res.token_counts[i], "embedding": vector.tolist()}),
                  flush=True)
            continue
        if i + offset:
            print()
        scale = "unit length" if res.normalize else f"norm {float(np.linalg.norm(vector)):.4g}"
        shown = ", ".join(f"{float(x):.4f}" for x in vector[:SHOWN_VALUES])
        more = ", ..." if len(vector) > SHOWN_VALUES else ""
        print(f"=== [{offset + i + 1}] {_short(text)}")
        tokens = f"{res.token_counts[i]} token" + ("" if res.token_counts[i] == 1 else "s")
        print(f"{tokens} -> {len(vector)} dimensions ({res.pooling} pooling, {scale}): [{shown}{more}]")


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    # [n, D] float32 -> [n, n] float32: the cosine of every pair (an all-zero vector: 0 with every other)
    v = vectors.astype(np.float64)
    norms = np.linalg.norm(v, axis=1)
    v = v / np.where(norms > 0, norms, 1.0)[:, None]
    return np.clip(v @ v.T, -1.0, 1.0).astype(np.float32)


def _print_similarities(sim: np.ndarray, pooling: str) -> None:
    """sim [n, n]: the whole table for up to MATRIX_MAX texts, else each text's most similar other text."""
    n = len(sim)
    labels = [f"[{i + 1}]" for i in range(n)]
    if n <= MATRIX_MAX:
        width = max(8, max(map(len, labels)) + 2)
        print(f"cosine similarity ({pooling} pooling):")
        print(" " * width + "".join(f"{label:>{width}}" for label in labels))
        for label, row in zip(labels, sim):
            print(f"{label:<{width}}" + "".join(f"{float(x):>{width}.4f}" for x in row))
        return
    others = sim.copy()
    np.fill_diagonal(others, -np.inf)
    nearest = others.argmax(axis=1)
    print(f"most similar other text, by cosine similarity ({pooling} pooling; {n} texts):")
    for i, j in enumerate(nearest):
        print(f"{labels[i]:>{len(labels[-1])}} -> {labels[j]:<{len(labels[-1])}} {float(sim[i, j]):.4f}")


def _short(text: str, limit: int = 70) -> str:
    """A text as its header shows it: repr'd, long ones cut with an ellipsis."""
    return repr(text) if len(text) <= limit else repr(text[:limit - 3]) + "..."

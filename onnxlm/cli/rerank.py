"""`onnxlm rerank`: documents ordered by a reranker's relevance score for a query (llama.cpp's /rerank, locally)."""
from __future__ import annotations

import json

from .args import (add_model_args, add_prompt_args, command_parser, load_model, non_empty_text,
                   positive_int, read_prompts)

DESCRIPTION = """\
Rerank documents for a query with a reranker (a `bert` GGUF with pooling_type rank: bge-reranker-v2-m3, the
ms-marco cross-encoders; onnxlm export keeps its classifier head): each (query, document) pair is built as
llama.cpp's server builds it and scored by the head (a logit: higher is more relevant). Prints the documents best
first with their scores; --json prints one object per document, {"index", "score", "document"}.

examples:
  onnxlm rerank models/bge-reranker "what is a panda?" "The giant panda is a bear." "hi" "Pandas eat bamboo."
  onnxlm rerank models/bge-reranker "what is a panda?" --file documents.txt --top-n 3 --json
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "rerank", help="order documents by a reranker's relevance to a query",
                       description=DESCRIPTION)
    add_model_args(p)
    p.add_argument("query", metavar="QUERY", type=non_empty_text, help="the query the documents are scored for")
    add_prompt_args(p, name="DOCUMENT", what="document")
    p.add_argument("--top-n", type=positive_int, default=None, metavar="N",
                   help="the N best documents only (default: all)")
    p.add_argument("--batch-size", type=positive_int, default=16, metavar="N",
                   help="pairs scored per forward pass (default: 16)")
    p.add_argument("--json", action="store_true",
                   help='one JSON object per document, best first: {"index", "score", "document"}')
    p.set_defaults(func=run)


def run(args) -> int:
    documents = read_prompts(args, what="document")
    if not documents:
        args.parser_for_command.error("no documents: give them as arguments, with --file, or on stdin")
    model = load_model(args, generating=False)
    results = model.rerank(args.query, documents, top_n=args.top_n, batch_size=args.batch_size)
    for r in results:
        if args.json:
            print(json.dumps({"index": r.index, "score": r.score, "document": documents[r.index]},
                             ensure_ascii=False))
        else:
            print(f"{r.score:10.4f}  [{r.index + 1}] {documents[r.index]!r}")
    return 0

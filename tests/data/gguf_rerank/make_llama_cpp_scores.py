"""llama.cpp's rank scores for tests/test_rerank.py's tiny XLM-R reranker -> llama_cpp_scores.json beside this file.

Run with the peers' interpreter (llama-cpp-python 0.3.36) on the GGUF tests/test_rerank.py's ``write_xlmr_reranker``
writes (write it with the onnxlm venv first):

    .venv/bin/python -c "import sys; sys.path[:0] = ['tests', 'tests/data/gguf_ugm']; import test_rerank as t; \
        t.write_xlmr_reranker(__import__('pathlib').Path('/tmp/tiny-xlmr-reranker.gguf'))"
    .venv-peers/bin/python tests/data/gguf_rerank/make_llama_cpp_scores.py /tmp/tiny-xlmr-reranker.gguf

Each pair's ids are built as llama.cpp's server's ``format_prompt_rerank`` builds them (the vocabulary's add_bos /
add_eos / add_sep flags and bos / eos / sep ids as llama.cpp reads them; query and document tokenized with
add_special false, parse_special false), decoded as one sequence with LLAMA_POOLING_TYPE_RANK, and the score is
``llama_get_embeddings_seq(ctx, 0)[0]`` (the server's ``send_rerank``). The file's sha256 is stored: the test
compares only against the same file.
"""
import hashlib
import json
import pathlib
import sys

import llama_cpp
from llama_cpp import Llama

QUERY = "What is the capital of France?"  # tests/test_rerank.py's QUERY and DOCS
DOCS = ["Paris is the capital of France.", "a", "Le café est très bon, n'est-ce pas ?", "日本語のテキストです。",
        "Berlin is the capital of Germany, and it has many museums and parks.", "</s> not a separator"]


def main(path: str) -> None:
    m = Llama(path, embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_RANK, n_ctx=64, n_batch=64,
              n_ubatch=64, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(m.model)
    bos, eos, sep = (llama_cpp.llama_vocab_bos(vocab), llama_cpp.llama_vocab_eos(vocab),
                     llama_cpp.llama_vocab_sep(vocab))
    add_bos, add_eos, add_sep = (llama_cpp.llama_vocab_get_add_bos(vocab), llama_cpp.llama_vocab_get_add_eos(vocab),
                                 llama_cpp.llama_vocab_get_add_sep(vocab))
    eos = sep if eos == -1 else eos

    def tok(s: str) -> list[int]:
        return m.tokenize(s.encode("utf-8"), add_bos=False, special=False)

    ctx = m._ctx.ctx
    pairs = []
    for doc in DOCS:
        ids = (([bos] if add_bos else []) + tok(QUERY) + ([eos] if add_eos else []) + ([sep] if add_sep else [])
               + tok(doc) + ([eos] if add_eos else []))
        batch = llama_cpp.llama_batch_init(len(ids), 0, 1)
        for i, t in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(ids)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        pairs.append({"ids": ids, "score": float(llama_cpp.llama_get_embeddings_seq(ctx, 0)[0])})
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    out = {"llama_cpp_python": llama_cpp.__version__, "gguf_sha256": hashlib.sha256(
        pathlib.Path(path).read_bytes()).hexdigest(), "query": QUERY, "documents": DOCS,
        "flags": {"add_bos": add_bos, "add_eos": add_eos, "add_sep": add_sep}, "pairs": pairs}
    target = pathlib.Path(__file__).with_name("llama_cpp_scores.json")
    target.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(target)


if __name__ == "__main__":
    main(sys.argv[1])

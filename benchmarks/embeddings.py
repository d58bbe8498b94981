"""Embeddings side by side: onnxlm's ``embed`` (fp32 artifact, GGUF-native variant) and llama.cpp's embeddings
(llama-cpp-python, ``embedding=True``, mean pooling) on the same GGUF file and texts, 2 threads.

``--native`` is optional (an embedding encoder, a ``bert`` GGUF's artifact, has no GGUF-native variant: the fp32
artifact alone), and ``--gguf`` takes one file or more (llama.cpp runs each: a BERT model's F32 and Q8_0 files).

Texts: ``--texts`` pieces of ``export/data/quality_text.txt`` (prose, code, dialogue; cut at line ends, >= 300
characters each) and ``--long`` texts of four pieces each (mixed lengths, as a corpus has: a batch of similar
lengths must not pad the short ones to the long ones), each embedded with mean pooling and unit length by every
engine (``--cut sentences``: windows of consecutive sentences, one starting at each sentence, for more pieces
than the text's lines give). Engines take turns, ``--rounds``
times, each round in a process of its own (llama.cpp in ``--peers-python``); each figure is the median of the
rounds. Columns: texts/s embedding all
texts in one call (onnxlm ``batch_size=16``; llama.cpp's ``embed`` of the list), ms for one text alone, peak RSS of
the process, the tokens each engine read, and agreement: the cosine between each engine's vector and the fp32
artifact's (transformers' hidden states on the dequantised weights, ``tests/test_fused_layouts.py``), min and mean;
speed against onnxlm fp32's (its texts/s and its ms for one text, each over this engine's: above 1, faster).

    python -m benchmarks.embeddings --gguf FILE.gguf --fp32 FP32_DIR --native GGUF_VARIANT_DIR \\
        --peers-python .venv-peers/bin/python [--write docs/benchmarks.md]
    python -m benchmarks.embeddings --gguf minilm-f32.gguf minilm-q8_0.gguf --fp32 MINILM_DIR \\
        --texts 100 --long 0 --cut sentences --size 200     # a BERT embedding model (no --native)
"""
from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

QUALITY_TEXT = Path(__file__).resolve().parents[1] / "export" / "data" / "quality_text.txt"

#: llama.cpp's side, run in the peers' Python: argv = gguf, texts.json, out.npz, threads
LLAMA_CPP = r"""
import json, resource, sys, time
import numpy as np
from llama_cpp import Llama, LLAMA_POOLING_TYPE_MEAN
gguf, texts_file, out, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = json.load(open(texts_file))
llm = Llama(gguf, embedding=True, pooling_type=LLAMA_POOLING_TYPE_MEAN, n_ctx=512, n_batch=512, n_ubatch=512,
            n_threads=threads, n_threads_batch=threads, verbose=False)
counts = [len(llm.tokenize(t.encode("utf-8"))) for t in texts]
llm.embed(texts[:2], normalize=True)  # warm
t = time.perf_counter(); vectors = np.array(llm.embed(texts, normalize=True), np.float32); whole = time.perf_counter() - t
t = time.perf_counter(); llm.embed(texts[0], normalize=True); one = time.perf_counter() - t
np.savez(out, vectors=vectors, counts=np.array(counts), whole=whole, one=one,
         rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def paragraphs(n: int, size: int = 300) -> list[str]:
    """The quality gate's text cut at line ends into pieces of at least ``size`` characters -> the first ``n``."""
    pieces, lines = [], []
    for line in QUALITY_TEXT.read_text(encoding="utf-8").splitlines():
        lines.append(line)
        if sum(len(x) + 1 for x in lines) >= size:
            pieces.append("\n".join(lines).strip())
            lines = []
    return [p for p in pieces if p][:n]


def sentence_windows(n: int, size: int = 300) -> list[str]:
    """The quality gate's text as sentences; from each sentence, it and the ones after it up to ``size`` characters
    (the windows overlap: about as many pieces as the text has sentences, 104) -> the first ``n`` that reach
    ``size``."""
    text = QUALITY_TEXT.read_text(encoding="utf-8")
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
    out = []
    for i in range(len(sentences)):
        piece = []
        for s in sentences[i:]:
            piece.append(s)
            if sum(len(x) + 1 for x in piece) >= size:
                out.append(" ".join(piece).strip())
                break
    return out[:n]


def onnxlm_round(art: Path, texts: list[str], threads: int) -> dict:
    """One onnxlm round in a fresh process (its own peak RSS) -> vectors, counts, seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        subprocess.run([sys.executable, "-m", "benchmarks.embeddings", "--_onnxlm", str(art), tmp, str(threads)],
                       check=True, timeout=1800)
        return dict(np.load(Path(tmp) / "out.npz"))


def _onnxlm_worker(art: str, tmp: str, threads: str) -> None:
    import onnxlm

    texts = json.loads((Path(tmp) / "texts.json").read_text())
    model = onnxlm.load(art, threads=int(threads))
    model.embed(texts[:2], pooling="mean")  # warm
    t = time.perf_counter()
    res = model.embed(texts, pooling="mean", batch_size=16)
    whole = time.perf_counter() - t
    t = time.perf_counter()
    model.embed(texts[0], pooling="mean")
    one = time.perf_counter() - t
    np.savez(Path(tmp) / "out.npz", vectors=res.embeddings, counts=np.array(res.token_counts), whole=whole, one=one,
             rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def llama_cpp_round(python: Path, gguf: Path, texts: list[str], threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "texts.json").write_text(json.dumps(texts))
        subprocess.run([str(python), "-c", LLAMA_CPP, str(gguf), str(Path(tmp) / "texts.json"),
                        str(Path(tmp) / "out.npz"), str(threads)], check=True, timeout=1800)
        return dict(np.load(Path(tmp) / "out.npz"))


def cosines(vectors: np.ndarray, ref: np.ndarray) -> np.ndarray:
    # [n, D], [n, D] float32 (unit rows) -> [n] float64
    return (vectors.astype(np.float64) * ref).sum(axis=1)


def run(args) -> dict:
    texts = (sentence_windows if args.cut == "sentences" else paragraphs)(args.texts, args.size)
    if len(texts) < args.texts:
        raise SystemExit(f"--texts {args.texts}: the text gives {len(texts)} pieces of {args.size} characters "
                         f"cut at {args.cut}")
    texts += ["\n".join(texts[4 * i:4 * i + 4]) for i in range(args.long)]  # longer texts among the short ones
    engines = {"onnxlm fp32": lambda: onnxlm_round(args.fp32, texts, args.threads)}
    if args.native is not None:
        engines["onnxlm gguf"] = lambda: onnxlm_round(args.native, texts, args.threads)
    for gguf in args.gguf:  # one llama.cpp engine per file
        name = "llama.cpp" if len(args.gguf) == 1 else f"llama.cpp {gguf.name}"
        engines[name] = lambda gguf=gguf: llama_cpp_round(args.peers_python, gguf, texts, args.threads)
    rounds = {name: [] for name in engines}
    for _ in range(args.rounds):
        for name, go in engines.items():  # taking turns: the machine's drift hits every engine alike
            rounds[name].append(go())
    return {"texts": texts, "rounds": rounds}


def table(result: dict, command: str) -> str:
    texts, rounds = result["texts"], result["rounds"]
    ref = rounds["onnxlm fp32"][0]["vectors"]
    ref_counts = rounds["onnxlm fp32"][0]["counts"]
    lines = [f"`{command}`: {len(texts)} pieces of the quality gate's text ({int(ref_counts.sum()):,} tokens, "
             f"{int(ref_counts.min())}-{int(ref_counts.max())} a text), mean pooling, unit length, 2 threads; "
             "medians of the rounds, engines taking turns.", "",
             "| engine | texts/s (all in one call) | ms for one text | peak RSS MB | tokens read | cosine to fp32 min / mean "
             "| speed vs onnxlm fp32 (all / one) |",
             "|---|---:|---:|---:|---:|---|---|"]
    base_whole = float(np.median([r["whole"] for r in rounds["onnxlm fp32"]]))
    base_one = float(np.median([r["one"] for r in rounds["onnxlm fp32"]]))
    for name, rs in rounds.items():
        whole = float(np.median([r["whole"] for r in rs]))
        one = float(np.median([r["one"] for r in rs])) * 1e3
        rss = float(np.median([r["rss"] for r in rs])) / 1024
        cos = cosines(rs[0]["vectors"], ref)
        same = "same" if np.array_equal(rs[0]["counts"], ref_counts) else \
            f"{int(rs[0]['counts'].sum()):,} ({int((rs[0]['counts'] != ref_counts).sum())} texts differ)"
        lines.append(f"| {name} | {len(texts) / whole:.1f} | {one:.1f} | {rss:.0f} | {same} | "
                     f"{cos.min():.5f} / {cos.mean():.5f} | {base_whole / whole:.2f}x / {base_one * 1e3 / one:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "--_onnxlm":
        return _onnxlm_worker(*argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.embeddings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=Path, required=True, nargs="+",
                   help="the GGUF file llama.cpp reads (several: llama.cpp runs each, e.g. an F32 and a Q8_0 file)")
    p.add_argument("--fp32", type=Path, required=True, help="onnxlm's fp32 artifact of that file (the reference)")
    p.add_argument("--native", type=Path,
                   help="onnxlm's --quantize gguf artifact of that file (none for an embedding encoder)")
    p.add_argument("--peers-python", type=Path, default=Path(".venv-peers/bin/python"),
                   help="a Python with llama-cpp-python (default: .venv-peers/bin/python)")
    p.add_argument("--texts", type=int, default=32, help="pieces of text embedded (default: 32)")
    p.add_argument("--long", type=int, default=3,
                   help="texts of four pieces each added among them (default: 3): mixed lengths, as a corpus has")
    p.add_argument("--cut", choices=("lines", "sentences"), default="lines",
                   help="pieces cut at line ends (default) or windows of sentences (more pieces)")
    p.add_argument("--size", type=int, default=300, help="characters a piece at least (default: 300)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of every engine in turn (default: 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", type=Path, help="update the 'embeddings' section of this Markdown file")
    args = p.parse_args(argv)
    text = table(run(args), "python -m benchmarks.embeddings " + " ".join(argv))
    print(text)
    if args.write:
        from benchmarks.report_sections import update_sections
        update_sections(args.write, "benchmarks.embeddings", {"embeddings": text})


if __name__ == "__main__":
    main()

"""A long prompt arriving while a stream decodes (``onnxlm serve --prefill-chunk``): how long the stream stalls.

For each ``--chunk`` (0: every prompt prefilled whole), an in-process server on MODEL_DIR (2 threads) streams a
greedy completion of ``--stream-tokens`` tokens; once ``--after`` of its chunks arrived, a second client sends a
prompt of ~``--long-tokens`` tokens (README.md's text) for 8 tokens. Reported: the stream's longest gap between
two chunks, its median gap, the stream's whole time, and the long request's time to its answer (its prefill cost
spread in parts), and whether each text equals the first setting's (on an int8-activation variant a pass of
another shape may part at a near-tie: docs/design.md, "Rows per pass").

    python -m benchmarks.prefill_chunk MODEL_DIR [--chunk 0 256 512] [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def one(model_dir: Path, chunk: int, stream_tokens: int, after: int, long_tokens: int, threads: int) -> dict:
    import httpx

    import onnxlm
    from onnxlm.serve.app import ServeConfig, create_app, start_in_thread

    model = onnxlm.load(model_dir, threads=threads)
    ids = model.tokenizer.encode(README.read_text(encoding="utf-8"))[:long_tokens]
    long_prompt = model.tokenizer.decode(ids)
    app = create_app(lambda: model, ServeConfig(model_name="m", max_tokens=4096, prefill_chunk=chunk,
                                                prefix_cache_mb=0))
    server, thread, port = start_in_thread(app)
    url = f"http://127.0.0.1:{port}"
    try:
        while httpx.get(url + "/health", timeout=5).status_code != 200:
            time.sleep(0.1)
        arrivals, texts, sent = [], [], threading.Event()
        out = {}

        def long_request():
            sent.wait()
            t = time.perf_counter()
            r = httpx.post(url + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 8, "temperature": 0},
                           timeout=600).json()
            out["long_s"], out["long_text"] = time.perf_counter() - t, r["choices"][0]["text"]
            out["long_at"] = (t, time.perf_counter())

        other = threading.Thread(target=long_request)
        other.start()
        body = {"prompt": "Write a long story about a lighthouse keeper.", "max_tokens": stream_tokens,
                "temperature": 0, "stream": True, "ignore_eos": True}
        start = time.perf_counter()
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    arrivals.append(time.perf_counter())
                    texts.append(json.loads(line[5:])["choices"][0]["text"])
                    if len(arrivals) == after:
                        sent.set()
        other.join()
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
        return {"chunk": chunk, "max_gap": max(gaps), "median_gap": statistics.median(gaps),
                "stream_s": arrivals[-1] - start, "long_s": out["long_s"], "stream_text": "".join(texts),
                "long_text": out["long_text"], "prompt_tokens": len(ids)}
    finally:
        server.should_exit = True
        thread.join(10)


def table(rows: list[dict], command: str) -> str:
    base = rows[0]
    lines = [f"`{command}`: a greedy stream of {len(base['stream_text'])} characters; after its first chunks a "
             f"prompt of {base['prompt_tokens']:,} tokens arrives for 8 tokens; 2 threads; each text compared with "
             f"the first setting's.", "",
             "| --prefill-chunk | stream's longest gap s | median gap ms | stream total s | long request s | "
             "texts equal (stream / long) |",
             "|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        same = " / ".join("yes" if r[k] == base[k] else "no" for k in ("stream_text", "long_text"))
        lines.append(f"| {r['chunk'] or '0 (whole)'} | {r['max_gap']:.2f} | {r['median_gap'] * 1e3:.1f} | "
                     f"{r['stream_s']:.1f} | {r['long_s']:.1f} | {same} |")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.prefill_chunk", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("--chunk", type=int, nargs="+", default=[0, 128, 256, 512])
    p.add_argument("--stream-tokens", type=int, default=200)
    p.add_argument("--after", type=int, default=20, help="stream chunks before the long prompt is sent")
    p.add_argument("--long-tokens", type=int, default=3000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", type=Path, help="update the 'prefill-chunk' section of this Markdown file")
    args = p.parse_args(argv)
    rows = [one(args.model_dir, c, args.stream_tokens, args.after, args.long_tokens, args.threads)
            for c in args.chunk]
    text = table(rows, "python -m benchmarks.prefill_chunk " + " ".join(argv))
    print(text)
    if args.write:
        from benchmarks.report_sections import update_sections
        update_sections(args.write, "benchmarks.prefill_chunk", {"prefill-chunk": text})


if __name__ == "__main__":
    main()

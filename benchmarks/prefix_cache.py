"""Benchmark the server's prefix cache against llama.cpp's `llama-server` on the same model: a ~1,000-token chat sent
twice (the second answered from the cache), the same document asked another question (the shared start reused:
any length of it, or a hybrid model's last checkpoint before the prompts part), and the second turn of that chat
(the first turn's prompt and answer reused, the new message prefilled), each against its cold time; and one request
alone through `onnxlm serve` against the same chat in the library.

    python -m benchmarks.prefix_cache models/smollm2-135m-instruct --gguf SmolLM2-135M-Instruct.Q4_1.gguf \\
        --llama-server /path/to/llama-server --write

onnxlm runs as `onnxlm serve` (a subprocess, --threads), llama-server with `-t` the same threads and its own prompt
cache (`cache_prompt`, on by default); one server at a time; greedy, max_tokens 1 by default (the time is the prompt's).
"Cold" is the same body sent to a fresh server (onnxlm: `--prefix-cache-mb 0`; llama-server: `cache_prompt: false`).
Timings are medians of --runs. `--write` puts the table into docs/benchmarks.md between this module's markers.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks import servers
from benchmarks.report_sections import update_sections

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "export" / "data" / "quality_text.txt"


def start_onnxlm(model_dir: str, threads: int, cache_mb: int) -> tuple[subprocess.Popen, str]:
    return servers.start_onnxlm(model_dir, threads=threads,
                                extra=["--prefix-cache-mb", str(cache_mb), "--max-tokens", "256"])


def start_llama_server(binary: str, gguf: str, threads: int) -> tuple[subprocess.Popen, str]:
    return servers.start_llama_server(binary, gguf, threads=threads)


WARM_UP = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


@contextlib.contextmanager
def client(url: str):
    """One keep-alive client per server, as an API client holds one (a new httpx client per request spends tens of
    ms on its SSL context and connection, which would be timed as the server's), after one short warm-up request
    (the server's first-request set-up is not the prompt's time); closed when the block ends."""
    with httpx.Client(base_url=url, timeout=600) as c:
        c.post("/v1/chat/completions", json=WARM_UP).raise_for_status()
        yield c


def timed(c: httpx.Client, body: dict) -> tuple[float, dict]:
    """POST /v1/chat/completions -> (seconds, response json)."""
    t0 = time.perf_counter()
    r = c.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0, r.json()


def chat_bodies(words: int, max_tokens: int) -> tuple[dict, callable, dict]:
    """-> the first turn's body (~1,000 tokens: a long document and a question), a function answer -> the second
    turn's body (first turn + answer + a new question), and the first turn with another question (the same
    document: a shared start)."""
    doc = " ".join(TEXT.read_text(encoding="utf-8").split()[:words])

    def asked(question: str) -> list:
        return [{"role": "system", "content": "You answer questions about the document the user gives."},
                {"role": "user", "content": f"Document:\n{doc}\n\n{question}"}]
    first = asked("What is this document about?")
    base = {"max_tokens": max_tokens, "temperature": 0}

    def second(answer: str) -> dict:
        return {**base, "messages": first + [{"role": "assistant", "content": answer},
                                             {"role": "user", "content": "Name one detail from it."}]}
    return {**base, "messages": first}, second, {**base, "messages": asked("Who would read it, and why?")}


def measure(start, extra_cold: dict, runs: int, words: int, max_tokens: int) -> dict:
    """start(cache: bool) -> (proc, url). Cold: a fresh cache-off server per body; warm: the same body again, and
    the second turn after the first, on one cache-on server."""
    first, second, other = chat_bodies(words, max_tokens)
    out = {"cold": [], "repeat": [], "repeat_again": [], "turn2_cold": [], "turn2": [], "other_cold": [], "other": []}
    for _ in range(runs):
        proc, url = start(False)
        try:
            with client(url) as c:
                t, answer = timed(c, {**first, **extra_cold})
                out["cold"].append(t)
                out["prompt_tokens"] = answer["usage"]["prompt_tokens"]
                text = answer["choices"][0]["message"]["content"]
                t2, a2 = timed(c, {**second(text), **extra_cold})
                out["turn2_cold"].append(t2)
                out["turn2_tokens"] = a2["usage"]["prompt_tokens"]
                out["other_cold"].append(timed(c, {**other, **extra_cold})[0])
        finally:
            servers.stop(proc)
        proc, url = start(True)
        try:
            with client(url) as c:
                _, answer = timed(c, first)               # fills the cache
                out["other"].append(timed(c, other)[0])   # its document again, another question
                t, again = timed(c, first)
                out["repeat"].append(t)
                out["repeat_again"].append(statistics.median(timed(c, first)[0] for _ in range(3)))
                out["same_answer"] = again["choices"][0]["message"] == answer["choices"][0]["message"]
                t2, _ = timed(c, second(answer["choices"][0]["message"]["content"]))
                out["turn2"].append(t2)
        finally:
            servers.stop(proc)
    return {k: statistics.median(v) if isinstance(v, list) else v for k, v in out.items()}


def library_vs_server(model_dir: str, threads: int, runs: int) -> dict:
    """A 90-token greedy chat: the library's model.chat against one request alone through onnxlm serve, interleaved
    (library, server, library, ...: both loaded, one idle while the other runs, a pause between, so a change in the
    machine's speed during the run hits both alike), after one warm-up each; medians."""
    import onnxlm

    messages = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
    model = onnxlm.load(model_dir, threads=threads)
    proc, url = start_onnxlm(model_dir, threads, 256)
    lib, srv = [], []
    try:
        with client(url) as c:
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                n = len(model.chat(messages, max_new_tokens=90, do_sample=False).new_tokens[0])
                lib.append(time.perf_counter() - t0)
                time.sleep(0.2)  # onnxruntime's idle threads stop spinning before the other engine runs
                t, body = timed(c, {"messages": messages, "max_tokens": 90, "temperature": 0})
                srv.append(t)
                time.sleep(0.2)
    finally:
        servers.stop(proc)
    return {"library": statistics.median(lib[1:]), "server": statistics.median(srv[1:]), "tokens": n,
            "server_tokens": body["usage"]["completion_tokens"]}


def report(res: dict, args) -> str:
    rows = ["| server | prompt tokens | cold s | repeated s | repeated / cold | sent again s | other question "
            "cold s | other question s | other / cold | 2nd turn cold s | 2nd turn s | 2nd turn / cold | same answer |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in res["servers"].items():
        rows.append(f"| {name} | {r['prompt_tokens']} (2nd turn {r['turn2_tokens']}) | {r['cold']:.3f} | "
                    f"{r['repeat']:.3f} | {r['repeat'] / r['cold']:.3f} | {r['repeat_again']:.3f} | "
                    f"{r['other_cold']:.3f} | {r['other']:.3f} | {r['other'] / r['other_cold']:.3f} | "
                    f"{r['turn2_cold']:.3f} | {r['turn2']:.3f} | {r['turn2'] / r['turn2_cold']:.3f} | "
                    f"{'yes' if r['same_answer'] else 'no'} |")
    lines = ["## Prefix caching: a repeated chat and a chat's next turn (`python -m benchmarks.prefix_cache`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads "
             f"per server; model {Path(args.model_dir).name} (onnxlm: its artifact; llama-server: "
             f"{Path(args.gguf).name if args.gguf else 'not run'}); greedy, max_tokens {args.max_tokens}; median of "
             f"{args.runs}; "
             f"command `{' '.join(['python -m benchmarks.prefix_cache'] + sys.argv[1:])}`.", "",
             *rows, "",
             "Repeated: the first time the chat is sent again after filling the cache; sent again: the median of "
             "3 more sends after that (each server's memory for the resumed state already in use once); the other "
             "question (the same document) is sent right after the cache is filled, the 2nd turn after the sends.",
             ""]
    if res.get("library"):
        lv = res["library"]
        lines += [f"One request alone (a greedy chat, {lv['tokens']} new tokens in the library, {lv['server_tokens']} "
                  f"through the server): library `model.chat` {lv['library']:.2f} s, through "
                  f"`onnxlm serve` {lv['server']:.2f} s (**{lv['server'] / lv['library']:.2f}x**).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="an onnxlm artifact dir (e.g. models/smollm2-135m-instruct)")
    ap.add_argument("--gguf", help="the same model's GGUF for llama-server")
    ap.add_argument("--llama-server", help="path of a llama-server binary (built from llama.cpp; never in CI)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=1,
                    help="new tokens per answer (default 1: the time is the prompt's; the second turn's prompt "
                         "holds the first turn's answer of this length)")
    ap.add_argument("--words", type=int, default=640, help="words of the document (~1,000 prompt tokens)")
    ap.add_argument("--no-library", action="store_true", help="skip the library-vs-server comparison")
    ap.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = ap.parse_args(argv)
    res = {"servers": {}}
    res["servers"]["onnxlm serve"] = measure(lambda cache: start_onnxlm(args.model_dir, args.threads,
                                                                         256 if cache else 0),
                                             {}, args.runs, args.words, args.max_tokens)
    if args.llama_server and args.gguf:
        res["servers"]["llama-server"] = measure(lambda cache: start_llama_server(args.llama_server, args.gguf,
                                                                                  args.threads),
                                                 {"cache_prompt": False}, args.runs, args.words, args.max_tokens)
    if not args.no_library:
        res["library"] = library_vs_server(args.model_dir, args.threads, args.runs)
    text = report(res, args)
    print(text)
    print(json.dumps(res, indent=1))
    if args.write:
        update_sections(ROOT / "docs" / "benchmarks.md", "benchmarks.prefix_cache", {"prefix-cache": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

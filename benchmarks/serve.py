"""Benchmark `onnxlm serve`: throughput (generated tokens/s over all clients) and latency (time to first token,
time per output token) at 1, 4, 16 and 32 concurrent streaming clients.

    python -m benchmarks.serve models/smollm2-135m-instruct            # starts a server on a free port
    python -m benchmarks.serve --url http://127.0.0.1:8000 --model NAME  # an already running server

Every client sends --requests-per-client streaming /v1/completions requests one after another (greedy, --max-tokens
new tokens, the prompts differ per client); token counts come from the server's usage (stream_options). Prints a
Markdown table (and --json FILE writes the numbers). Needs the test extra (httpx).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "The three laws of robotics are",
           "Write a short poem about the sea:", "In machine learning, overfitting means", "def fibonacci(n):",
           "The best way to learn a language is", "Water boils at"]


async def one_request(client: httpx.AsyncClient, url: str, model: str | None, prompt: str, max_tokens: int) -> dict:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if model:
        body["model"] = model
    t0 = time.perf_counter()
    first = None
    usage = None
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                usage = chunk["usage"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else 0
    first = first or end
    return {"ttft": first - t0, "tokens": tokens, "total": end - t0,
            "tpot": (end - first) / (tokens - 1) if tokens > 1 else None}


async def level(url: str, model: str | None, clients: int, per_client: int, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker(c: int) -> list[dict]:
            return [await one_request(client, url, model, PROMPTS[(c + k) % len(PROMPTS)] + f" ({c})", max_tokens)
                    for k in range(per_client)]

        t0 = time.perf_counter()
        runs = [r for rs in await asyncio.gather(*[worker(c) for c in range(clients)]) for r in rs]
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in runs)
    tpots = [r["tpot"] for r in runs if r["tpot"] is not None]
    return {"clients": clients, "requests": len(runs), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_p50_ms": 1000 * statistics.median(r["ttft"] for r in runs),
            "ttft_max_ms": 1000 * max(r["ttft"] for r in runs),
            "tpot_p50_ms": 1000 * statistics.median(tpots) if tpots else float("nan")}


def start_server(model_dir: str, threads: int | None, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "onnxlm", "serve", model_dir, "--port", str(port), "--log-level", "warning",
           "--max-batch", str(max_batch)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 300 s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", nargs="?", help="artifact directory (a server is started for it)")
    p.add_argument("--url", help="benchmark a running server instead")
    p.add_argument("--model", default=None, help="model name to send (default: none, the served model)")
    p.add_argument("--clients", default="1,4,16,32", help="concurrency levels (default: 1,4,16,32)")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads of the started server")
    p.add_argument("--max-batch", type=int, default=32, help="--max-batch of the started server")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the numbers as JSON")
    args = p.parse_args(argv)
    if not args.url and not args.model_dir:
        p.error("give MODEL_DIR or --url")
    proc = None
    url = args.url
    if not url:
        proc, url = start_server(args.model_dir, args.threads, args.max_batch)
    try:
        asyncio.run(level(url, args.model, 1, 1, 8))  # warm-up
        rows = [asyncio.run(level(url, args.model, int(c), args.requests_per_client, args.max_tokens))
                for c in args.clients.split(",")]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    base = rows[0]["tokens_per_s"]
    print(f"max_tokens={args.max_tokens}, {args.requests_per_client} requests per client, greedy, streaming; "
          f"cpu_count={os.cpu_count()}")
    print("| clients | requests | tokens | wall s | tokens/s | x 1 client | TTFT p50 ms | TTFT max ms | "
          "per-token p50 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.0f} | "
              f"{r['tokens_per_s'] / base:.1f} | {r['ttft_p50_ms']:.0f} | {r['ttft_max_ms']:.0f} | "
              f"{r['tpot_p50_ms']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark `onnxlm serve`: throughput (generated tokens/s over all clients) and latency (time to first token,
time per output token) at 1, 4, 16 and 32 concurrent streaming clients; optionally beside llama.cpp's
`llama-server` on the same GGUF, one server after the other in the same run (ratios).

    python -m benchmarks.serve models/smollm2-135m-instruct            # starts a server on a free port
    python -m benchmarks.serve --url http://127.0.0.1:8000 --model NAME  # an already running server
    python -m benchmarks.serve models/smollm2-gguf --threads 2 \
        --llama-server /path/to/llama-server --gguf SmolLM2-135M-Instruct.Q4_1.gguf --write

Every client sends --requests-per-client streaming /v1/completions requests one after another (greedy, --max-tokens
new tokens, the prompts differ per client); token counts come from the server's usage (stream_options; a server
that sends none: its text chunks are counted, one token each). `onnxlm serve` runs as a user starts it: the prefix
cache on (--prefix-cache-mb 256, the default) and tools accepted; llama-server with -np (parallel slots, its
continuous batching) = the largest client count. Prints Markdown tables (--json FILE writes the numbers, --write puts
the side-by-side table into docs/benchmarks.md between this module's markers). Needs the test extra (httpx).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import httpx

from benchmarks import servers
from benchmarks.report_sections import update_sections

ROOT = Path(__file__).resolve().parents[1]

PROMPTS = ["The capital of France is", "Once upon a time, in a small village,", "The three laws of robotics are",
           "Write a short poem about the sea:", "In machine learning, overfitting means", "def fibonacci(n):",
           "The best way to learn a language is", "Water boils at"]


# --chat-tools: every chat request offers this tool (tool_choice "auto"), as an agent's requests do
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def request_body(prompt: str, max_tokens: int, chat_tools: bool) -> tuple[str, dict]:
    """-> (path, body) of one greedy streaming request: a completion, or a chat message with TOOLS offered."""
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if chat_tools:
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}], "tools": TOOLS,
                                        "tool_choice": "auto"}
    return "/v1/completions", {**body, "prompt": prompt}


def produced(choice: dict) -> bool:
    """Does a streamed choice carry generated text (a completion's text, a chat delta's content or tool call)?"""
    delta = choice.get("delta") or {}
    return bool(choice.get("text") or delta.get("content") or delta.get("tool_calls"))


async def one_request(client: httpx.AsyncClient, url: str, model: str | None, prompt: str, max_tokens: int,
                      chat_tools: bool = False) -> dict:
    path, body = request_body(prompt, max_tokens, chat_tools)
    if model:
        body["model"] = model
    t0 = time.perf_counter()
    first = None
    usage = None
    chunks = 0  # text chunks (a server without stream usage: one token each)
    async with client.stream("POST", url + path, json=body) as r:
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
            if chunk.get("choices") and produced(chunk["choices"][0]):
                chunks += 1
                first = first or time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else chunks
    first = first or end
    return {"ttft": first - t0, "tokens": tokens, "total": end - t0,
            "prompt_tokens": usage["prompt_tokens"] if usage else 0,
            "tpot": (end - first) / (tokens - 1) if tokens > 1 else None}


async def level(url: str, model: str | None, clients: int, per_client: int, max_tokens: int,
                chat_tools: bool = False) -> dict:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def worker(c: int) -> list[dict]:
            return [await one_request(client, url, model, PROMPTS[(c + k) % len(PROMPTS)] + f" ({c})", max_tokens,
                                      chat_tools) for k in range(per_client)]

        t0 = time.perf_counter()
        runs = [r for rs in await asyncio.gather(*[worker(c) for c in range(clients)]) for r in rs]
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in runs)
    tpots = [r["tpot"] for r in runs if r["tpot"] is not None]
    return {"clients": clients, "requests": len(runs), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "requests_per_s": len(runs) / wall,
            "prompt_tokens": sum(r["prompt_tokens"] for r in runs),
            "ttft_p50_ms": 1000 * statistics.median(r["ttft"] for r in runs),
            "ttft_max_ms": 1000 * max(r["ttft"] for r in runs),
            "tpot_p50_ms": 1000 * statistics.median(tpots) if tpots else float("nan")}


def run_levels(url: str, model: str | None, levels: list[int], per_client: int, max_tokens: int,
               chat_tools: bool = False) -> list[dict]:
    asyncio.run(level(url, model, 1, 1, 8, chat_tools))  # warm-up
    return [asyncio.run(level(url, model, c, per_client, max_tokens, chat_tools)) for c in levels]


def table(rows: list[dict]) -> list[str]:
    base = rows[0]["tokens_per_s"]
    out = ["| clients | requests | tokens | wall s | tokens/s | x 1 client | TTFT p50 ms | TTFT max ms | "
           "per-token p50 ms |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['clients']} | {r['requests']} | {r['tokens']} | {r['wall_s']:.1f} | "
                   f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.1f} | {r['ttft_p50_ms']:.0f} | "
                   f"{r['ttft_max_ms']:.0f} | {r['tpot_p50_ms']:.1f} |")
    return out


def side_by_side(results: dict, args) -> str:
    """The section for docs/benchmarks.md: each server's table, then onnxlm / llama-server per client count."""
    ours, peer = results["onnxlm serve"], results["llama-server"]
    lines = ["## Server under concurrent clients: `onnxlm serve` beside llama-server (`python -m benchmarks.serve`)",
             "", f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; both servers with "
             f"{args.threads} threads, one after the other in one run; onnxlm: `{Path(args.model_dir).name}` "
             "(prefix cache on, its default 256 MB; tools accepted), llama-server: "
             f"`{Path(args.gguf).name}` with -np {max(args.levels)}; {args.requests_per_client} streaming "
             f"{'chat requests offering a tool (tool_choice auto)' if args.chat_tools else '/v1/completions requests'}"
             f" per client, greedy, max_tokens {args.max_tokens}; command "
             f"`{' '.join(['python -m benchmarks.serve'] + sys.argv[1:])}`.", ""]
    for name, rows in results.items():
        lines += [f"{name}:", "", *table(rows), ""]
    lines += ["| clients | onnxlm tokens/s | llama-server tokens/s | onnxlm / llama-server | requests/s onnxlm / "
              "llama-server | prompt tokens onnxlm / llama-server | TTFT p50 ms onnxlm / llama-server |",
              "|---:|---:|---:|---:|---:|---|---|"]
    for a, b in zip(ours, peer):
        lines.append(f"| {a['clients']} | {a['tokens_per_s']:.0f} | {b['tokens_per_s']:.0f} | "
                     f"**{a['tokens_per_s'] / b['tokens_per_s']:.2f}x** | "
                     f"**{a['requests_per_s'] / b['requests_per_s']:.2f}x** | {a['prompt_tokens']} / "
                     f"{b['prompt_tokens']} | {a['ttft_p50_ms']:.0f} / {b['ttft_p50_ms']:.0f} |")
    lines += ["", "Both servers get the same requests; their answers may differ in length (a chat answer that calls "
              "the tool ends early), so tokens/s and requests/s are both shown. A streamed reply that may be a tool "
              "call is held back until it is known not to be one (onnxlm), so the first content can come late."]
    return "\n".join(lines + [""])


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
    p.add_argument("--llama-server", default=None, metavar="BIN",
                   help="also run llama.cpp's llama-server binary on --gguf, after onnxlm (never in CI)")
    p.add_argument("--gguf", default=None, help="the GGUF llama-server serves (the file MODEL_DIR was exported from)")
    p.add_argument("--chat-tools", action="store_true",
                   help="streaming /v1/chat/completions requests that offer a tool (tool_choice auto) instead of "
                        "completions (llama-server then runs with --jinja, which its tools need)")
    p.add_argument("--write", action="store_true", help="put the side-by-side table into docs/benchmarks.md")
    args = p.parse_args(argv)
    if not args.url and not args.model_dir:
        p.error("give MODEL_DIR or --url")
    if args.llama_server and (not args.gguf or args.url):
        p.error("--llama-server needs --gguf and MODEL_DIR (not --url)")
    if args.write and not args.llama_server:
        p.error("--write needs --llama-server (it writes the side-by-side table)")
    args.levels = [int(c) for c in args.clients.split(",")]
    results = {}
    if args.url:
        results["server"] = run_levels(args.url, args.model, args.levels, args.requests_per_client, args.max_tokens,
                                       args.chat_tools)
    else:
        proc, url = servers.start_onnxlm(args.model_dir, threads=args.threads,
                                         extra=["--max-batch", str(args.max_batch)])
        try:
            results["onnxlm serve"] = run_levels(url, args.model, args.levels, args.requests_per_client,
                                                 args.max_tokens, args.chat_tools)
        finally:
            servers.stop(proc)
    if args.llama_server:
        proc, url = servers.start_llama_server(args.llama_server, args.gguf, threads=args.threads or 2,
                                               slots=max(args.levels), context_per_slot=1024,
                                               jinja=args.chat_tools)
        try:
            results["llama-server"] = run_levels(url, None, args.levels, args.requests_per_client, args.max_tokens,
                                                 args.chat_tools)
        finally:
            servers.stop(proc)
    print(f"max_tokens={args.max_tokens}, {args.requests_per_client} requests per client, greedy, streaming, "
          f"{'chat with tools' if args.chat_tools else 'completions'}; "
          f"cpu_count={os.cpu_count()}")
    for name, rows in results.items():
        print(f"\n{name}:")
        print("\n".join(table(rows)))
    if args.llama_server:
        text = side_by_side(results, args)
        print("\n" + text)
        if args.write:
            name = "serve-vs-llama-server" + ("-chat-tools" if args.chat_tools else "")
            update_sections(ROOT / "docs" / "benchmarks.md", "benchmarks.serve", {name: text})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

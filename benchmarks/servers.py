"""Servers the benchmarks start side by side: `onnxlm serve` on an artifact, llama.cpp's `llama-server` on a GGUF
(built from the llama.cpp sources vendored in llama-cpp-python's sdist; never in CI). Each is a subprocess on a
free local port, waited for until its /health answers 200; the caller kills it (``stop``)."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Poll ``url``/health until 200; raise SystemExit if the process exits or ``timeout`` seconds pass."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"{url} did not become ready in {timeout} s")


def start_onnxlm(model_dir: str, *, threads: int | None = None, extra: list[str] = ()) -> tuple[subprocess.Popen, str]:
    """`onnxlm serve MODEL_DIR` (with ``extra`` flags, e.g. --prefix-cache-mb 0) -> (process, base url)."""
    port = free_port()
    cmd = [sys.executable, "-m", "onnxlm", "serve", model_dir, "--port", str(port), "--log-level", "warning",
           *(["--threads", str(threads)] if threads else []), *extra]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def start_llama_server(binary: str, gguf: str, *, threads: int, slots: int = 1, context_per_slot: int = 4096,
                       jinja: bool = False) -> tuple[subprocess.Popen, str]:
    """`llama-server -m GGUF` with ``threads`` for decoding and prompts, ``slots`` parallel sequences (its
    continuous batching) sharing a context of ``slots * context_per_slot``; ``jinja``: the GGUF's chat template
    run as Jinja (what its ``tools`` support needs) -> (process, base url)."""
    port = free_port()
    proc = subprocess.Popen([binary, "-m", gguf, "-t", str(threads), "-tb", str(threads),
                             "-c", str(slots * context_per_slot), "-np", str(slots), "--port", str(port),
                             "--log-disable", *(["--jinja"] if jinja else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()

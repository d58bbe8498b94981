"""`onnxlm serve`: an OpenAI-compatible HTTP server on one model (continuous batching, streaming)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from onnxlm.runtime.decoding.scheduler_draft import DRAFT_MAX, DRAFT_MIN, DRAFT_P_MIN
from onnxlm.runtime.embedding import POOLINGS
from onnxlm.runtime.errors import ModelFileError, OnnxlmError, ParameterError

from .args import (add_model_args, command_parser, flagged_artifact, model_path, non_negative_float, non_negative_int,
                   port, positive_int, probability)

DESCRIPTION = """\
Serve a model over HTTP with the OpenAI API: POST /v1/completions, POST /v1/chat/completions (models with a chat
template), POST /v1/responses (OpenAI's Responses API, stateless), POST /v1/embeddings (decoder-only models of the
fused layout, the default export: their last hidden states pooled, see --pooling; and embedding GGUFs: BERT,
XLM-RoBERTa, nomic-bert, which only embed: their generating endpoints answer 400), GET /v1/models, GET /health (503
until the model is loaded, 200 when ready), GET /metrics (JSON, or Prometheus' text format for a scraper);
Anthropic's POST /v1/messages and /v1/messages/count_tokens; llama.cpp's native POST /completion (its fields,
defaults and sampler order) and POST /infill (fill-in-the-middle for editors, on models with FIM tokens), its POST
/embedding (and /embeddings; embd_normalize), /tokenize, /detokenize, /apply-template, GET /props and GET /slots;
and a chat page at GET / (open http://127.0.0.1:8000/ in a browser). Concurrent requests are decoded together
(continuous batching); `stream: true` sends server-sent events. Needs the serve extra: pip install 'onnxlm[serve]'.

On SIGTERM/SIGINT the server stops taking requests (503), lets those in flight finish (up to --shutdown-timeout
seconds) and exits.

examples:
  onnxlm serve models/smollm2 --port 8000
  curl http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"prompt": "The capital of France is", "max_tokens": 10, "temperature": 0}'
  curl http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' \\
       -d '{"input": ["first text", "second text"]}'
  onnxlm serve big-model.gguf --draft small-model.gguf   # speculative decoding with a draft model
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "serve", help="OpenAI-compatible HTTP server", description=DESCRIPTION)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="port, 0-65535 (default: 8000)")
    p.add_argument("--api-key", default=os.environ.get("ONNXLM_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every endpoint but GET /health and the chat page "
                        "(/metrics, /props, /slots and llama.cpp's endpoints too; Anthropic's /v1/messages also takes "
                        "'x-api-key: KEY') (default: $ONNXLM_API_KEY; none: open)")
    p.add_argument("--allowed-origins", nargs="*", default=["*"], metavar="ORIGIN",
                   help="origins whose browser pages may call the API (CORS), e.g. https://app.example.com; '*' "
                        "any, as llama.cpp's and vLLM's servers (default: *); the flag alone: none (same-origin "
                        "pages only, as the chat page)")
    p.add_argument("--model-name", default=None, metavar="NAME",
                   help="the model id clients send and /v1/models lists (default: the directory's name; a .gguf "
                        "file's name without .gguf)")
    p.add_argument("--max-batch", type=positive_int, default=32, metavar="N",
                   help="rows decoded together at most (default: 32)")
    p.add_argument("--max-queue", type=non_negative_int, default=64, metavar="N",
                   help="rows (prompts x n) that may wait beyond --max-batch; a request whose rows would pass "
                        "them gets 429 (default: 64)")
    p.add_argument("--max-tokens", type=positive_int, default=1024, metavar="N",
                   help="the largest max_tokens a request may ask for (default: 1024)")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=None, metavar="N",
                   help="the longest prompt accepted, in tokens (default: the model's context)")
    p.add_argument("--max-body-mb", type=positive_int, default=8, metavar="MB",
                   help="the largest request body accepted, in MB of 2**20 bytes; larger ones get 413 before they "
                        "are read (default: 8)")
    p.add_argument("--prefix-cache-mb", type=non_negative_int, default=256, metavar="MB",
                   help="keys/values of recent prompts and answers kept to prefill a new request only from where it "
                        "differs (repeated system prompts, the next turn of a chat), least recently used dropped; "
                        "0 turns it off (default: 256)")
    p.add_argument("--kv-pool-mb", type=non_negative_int, default=256, metavar="MB",
                   help="freed KV buffers kept resident for the next request's buffers of the same size, so a "
                        "request does not fault fresh pages in (fused models); 0 turns it off (default: 256)")
    p.add_argument("--prompt-lookup", type=non_negative_int, default=0, metavar="N",
                   help="speculative decoding while a request decodes alone: up to N tokens copied from its own "
                        "prompt and answer (prompt lookup, as generate's prompt_lookup_num_tokens) are checked in one "
                        "pass; fewer passes where answers repeat their context (code edits, quotes), the same tokens "
                        "on fp32 artifacts (a quantized variant's may part at near-ties, as in a shared batch); not "
                        "for structured output or n > 1; 0 turns it off (default: 0)")
    d = p.add_argument_group("speculative decoding with a draft model (llama.cpp's -md; not with --prompt-lookup)")
    d.add_argument("--draft", "--model-draft", "-md", metavar="MODEL", default=None,
                   help="a smaller model with the same vocabulary (an artifact directory or a .gguf file, loaded "
                        "with the same --provider/--threads): while a request decodes alone it drafts up to "
                        "--draft-max tokens, greedily, that the model checks in one pass; the same tokens as "
                        "without it (greedy and seeded sampling alike; on fp32 artifacts), fewer passes of the "
                        "model where the draft guesses well. It pays when the draft's step costs a small share of "
                        "the model's (a 1B model with a 135M draft), not for drafts nearly as slow as the model; "
                        "not for structured output or n > 1")
    d.add_argument("--draft-max", type=draft_tokens, default=None, metavar="N",
                   help=f"tokens a draft round proposes at most, 1-64 (default: {DRAFT_MAX})")
    d.add_argument("--draft-min", type=non_negative_int, default=None, metavar="N",
                   help=f"a draft of fewer tokens is not checked (a plain step instead) (default: {DRAFT_MIN})")
    d.add_argument("--draft-p-min", type=probability, default=None, metavar="P",
                   help="the draft stops after a token it gives less than P probability (its scores after the "
                        f"request's logits processors) (default: {DRAFT_P_MIN})")
    p.add_argument("--prefill-chunk", type=non_negative_int, default=256, metavar="N",
                   help="a prompt with more than N tokens to compute (what the prefix cache holds is not) is "
                        "prefilled N tokens a step, between the other requests' steps, and joins the batch once "
                        "whole; shorter prompts arriving together are prefilled "
                        "together up to N tokens a step: the other requests' streams go on (a 3,000-token prompt "
                        "prefilled whole stalled a SmolLM2 stream for 6.7 s, in parts of 256 for about 0.7 s; a part "
                        "late in a long context costs more); the same tokens on fp32 artifacts; small values cost "
                        "speed (a pass a part: 1 is a pass per prompt token); 0 prefills every prompt whole "
                        "(default: 256)")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="how /v1/embeddings and llama.cpp's /embedding pool a text's last hidden states into one "
                        "vector: mean over its tokens, its first token's (cls) or its last token's (last: decoder "
                        "embedding models such as Qwen3-Embedding); every embedding request uses it (default: the "
                        "model's own where its GGUF or sentence-transformers files name one, else mean)")
    p.add_argument("--slots", action=argparse.BooleanOptionalAction, default=True,
                   help="GET /slots reports what each row of the batch is doing, as llama.cpp's server does "
                        "(--no-slots turns it off: 501; default: on)")
    p.add_argument("--shutdown-timeout", type=non_negative_float, default=30.0, metavar="S",
                   help="seconds in-flight requests get to finish after SIGTERM (default: 30)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def run(args) -> int:
    try:
        import sse_starlette  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise OnnxlmError(f"onnxlm serve needs the serve extra ({exc.name} is missing): "
                          "pip install 'onnxlm[serve]'") from None
    from onnxlm.runtime import load
    from onnxlm.runtime.manifest import load_manifest

    from onnxlm.serve.app import ServeConfig, create_app

    check_draft_args(args)
    check_listen(args.host, args.port)  # before a first run's export, not after it
    path = model_path(args)  # a .gguf file: its cached artifact, exported on first use
    draft_path = draft_artifact(args.draft) if args.draft else None
    if not path.is_dir():
        raise ModelFileError(f"{path}: not a model directory (give an artifact directory from onnxlm export, or a "
                             ".gguf file)", str(path))
    load_manifest(path, verify=False)  # a folder that is no artifact: one error line, before uvicorn starts
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = ServeConfig(model_name=args.model_name or served_name(args.model_dir, path), api_key=args.api_key,
                         max_rows=args.max_batch, max_queue=args.max_queue, max_tokens=args.max_tokens,
                         max_prompt_tokens=args.max_prompt_tokens, max_body_mb=args.max_body_mb,
                         prefix_cache_mb=args.prefix_cache_mb, kv_pool_mb=args.kv_pool_mb, slots=args.slots,
                         prompt_lookup=args.prompt_lookup, prefill_chunk=args.prefill_chunk, pooling=args.pooling,
                         draft_max=args.draft_max, draft_min=args.draft_min, draft_p_min=args.draft_p_min,
                         allowed_origins=tuple(args.allowed_origins))
    def load_model():
        model = load(path, provider=args.provider, threads=args.threads, verify=args.verify)
        check_prompt_cap(args.max_prompt_tokens, model)
        return model

    def load_draft():
        return load(draft_path, provider=args.provider, threads=args.threads, verify=args.verify)

    app = create_app(load_model, config, draft_loader=load_draft if draft_path else None)
    state = app.state.serve
    server = draining_server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                            timeout_graceful_shutdown=5), state, args.shutdown_timeout)
    threading.Thread(target=_exit_on_load_error, args=(server, state), daemon=True).start()
    try:
        server.run()
    except SystemExit as exc:  # uvicorn's startup failure (its log line says why: the port taken meanwhile, ...)
        raise OnnxlmError(f"the server could not start on {args.host}:{args.port} (exit {exc.code}; see the log "
                          "line above)") from None
    if state.engine.load_error is not None:
        part = f"the draft model {draft_path} (--draft)" if state.engine.loading == "draft" else str(path)
        raise OnnxlmError(f"loading {part} failed: {state.engine.load_error}")
    return 0


def draft_tokens(text: str) -> int:
    """--draft-max: an integer from 1 to 64."""
    value = positive_int(text)
    if value > 64:
        raise argparse.ArgumentTypeError(f"expected an integer from 1 to 64, got {value}")
    return value


def check_draft_args(args) -> None:
    """--draft's options, refused by name before anything loads: with --prompt-lookup, --draft-min past
    --draft-max, or --draft-* without --draft (they would change nothing). Then the defaults fill what is not
    given."""
    given = [f"--draft-{n}" for n in ("max", "min", "p-min")
             if getattr(args, "draft_" + n.replace("-", "_")) is not None]
    if not args.draft:
        if given:
            raise ParameterError(given[0].lstrip("-").replace("-", "_"), f"{given[0]} needs --draft MODEL (a draft "
                                 "model to speculate with)")
    elif args.prompt_lookup:
        raise ParameterError("draft", "--draft and --prompt-lookup: give one of them (a request's own "
                             "prompt_lookup_num_tokens still asks for prompt lookup)")
    args.draft_max = DRAFT_MAX if args.draft_max is None else args.draft_max
    args.draft_min = DRAFT_MIN if args.draft_min is None else args.draft_min
    args.draft_p_min = DRAFT_P_MIN if args.draft_p_min is None else args.draft_p_min
    if args.draft_min > args.draft_max:
        raise ParameterError("draft_min", f"--draft-min {args.draft_min} is more than --draft-max "
                             f"{args.draft_max}; allowed: 0 to {args.draft_max}")


def draft_artifact(given: str) -> Path:
    """--draft as given -> the artifact directory to load (``args.flagged_artifact``: errors name --draft)."""
    return flagged_artifact(given, "--draft")


def check_prompt_cap(cap: int | None, model) -> None:
    """--max-prompt-tokens past the model's context would be a cap that never applies (the context's does): refused
    by name once the model is loaded."""
    if cap is not None and model.max_positions and cap > model.max_positions:
        raise ParameterError("max_prompt_tokens", f"--max-prompt-tokens {cap} is more than the model's context "
                             f"({model.max_positions} positions); allowed: at most {model.max_positions}")


def check_listen(host: str, port: int) -> None:
    """Refuse a --host/--port the server could not listen on (taken, not this machine's, not resolvable) with one
    error line, before the model loads; the socket is closed again at once (uvicorn binds it, as it does, with
    SO_REUSEADDR)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, addr = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(addr)
    except (OSError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise OnnxlmError(f"--host {host} --port {port}: cannot listen there ({why})") from None


def served_name(given: str, path: Path) -> str:
    """The model's name in the API when --model-name is not given: a .gguf file's name without .gguf (a split
    GGUF's without its ``-00001-of-0000N`` too), else the artifact directory's name."""
    from onnxlm.export.gguf_splits import SPLIT_NAME
    from onnxlm.runtime.gguf_magic import is_gguf_file

    if not is_gguf_file(given):
        return path.resolve().name
    split = SPLIT_NAME.match(Path(given).name)
    return split["prefix"] if split else Path(given).stem


def _exit_on_load_error(server, state) -> None:
    state.engine.ready.wait()
    if state.engine.load_error is not None:
        server.should_exit = True


def draining_server(uvicorn_config, state, timeout: float):
    """uvicorn's server with a graceful drain: the first SIGTERM/SIGINT makes new requests get 503 and waits (up to
    ``timeout`` s) for the in-flight ones before uvicorn shuts down; a second signal exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if state.draining:  # a second signal: stop now
                self.should_exit = self.force_exit = True
                return
            state.draining = True
            logging.getLogger("onnxlm.serve").info("signal %s: draining %d requests in flight",
                                                   signal.Signals(sig).name, state.in_flight)
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self) -> None:
            end = time.monotonic() + timeout
            while state.in_flight > 0 and time.monotonic() < end:
                time.sleep(0.05)
            self.should_exit = True

    return DrainingServer(uvicorn_config)

"""`onnxlm` command line: export, generate, chat, score, embed, rerank, tokenize, info, bench, demo, serve, cache.

Exit codes: 0 ok, 1 runtime failure (one line `onnxlm: error: ...` on stderr), 2 usage error, 130 interrupted
(SIGINT), 143 terminated (SIGTERM: it unwinds as an interrupt does, so an export removes its scratch directories);
`onnxlm serve` drains its requests on either and exits 0.
Only `export` (and `demo` when it has to export) imports `onnxlm.export` (torch); every other command runs on
numpy + onnxruntime + tokenizers.
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import threading
import warnings

from onnxlm.runtime.errors import OnnxlmError

from onnxlm import __version__
from . import bench, cache, demo, embed, export, generate, info, rerank, score, serve, tokenize
from .errors import error_line, flag_named, one_line_warnings

DESCRIPTION = """\
Export GPT-2, T5 and Llama-family language models, or a GGUF file (Llama, Qwen, Gemma, Phi-3, ...), to ONNX
once (needs torch), then generate, chat, score, embed and serve with numpy + onnxruntime only.

examples:
  onnxlm export gpt2 models/gpt2
  onnxlm export model.Q4_K_M.gguf models/my-q4km --quantize gguf    # a GGUF, kept on its own blocks
  onnxlm generate models/gpt2 "The meaning of life is" --max-new-tokens 30
  onnxlm generate models/gpt2 "Once upon a time" --do-sample --seed 0 --top-p 0.9 --stream
  onnxlm chat models/smollm2 "What is ONNX?" --system "Answer briefly."
  onnxlm score models/gpt2 "The cat sat on the mat."
  onnxlm embed models/smollm2 "The cat sat on the mat." "A cat is on the mat." "Stocks fell."
  onnxlm rerank models/bge-reranker "what is a panda?" "The giant panda is a bear." "hi"
  onnxlm tokenize models/gpt2 "The cat sat on the mat."
  onnxlm info models/gpt2
  onnxlm serve models/smollm2 --port 8000
  onnxlm demo
  onnxlm cache prune
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="onnxlm", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"onnxlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                title="commands (run `onnxlm COMMAND --help` for details)")
    for module in (export, generate, score, embed, rerank, tokenize, info, bench, demo, serve, cache):
        module.add_parser(sub)
    parser.set_defaults(commands=sub.choices)  # name -> the command's parser, for its own usage errors
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """argv -> the command's arguments; an unknown option is the command's usage error (its usage line, and the
    nearest of its options), not the top-level parser's."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:  # positionals after options (`generate MODEL --max-new-tokens 5 "prompt"`): the command's own parse
        args, extra = _intermixed(args, extra, argv)
    if extra:
        command = args.commands[args.command]
        known = [s for a in command._actions for s in a.option_strings]
        near = difflib.get_close_matches(next((e.split("=")[0] for e in extra if e.startswith("-")), ""), known, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        command.error(f"unrecognized arguments: {' '.join(extra)}{hint}")
    return args


def _intermixed(args: argparse.Namespace, extra: list[str], argv: list[str]) -> tuple[argparse.Namespace,
                                                                                         list[str]]:
    """The command's arguments parsed again with options and positionals in any order (argparse's own parse ends
    a ``nargs="*"`` positional at the first option, and leaves the texts after it over); a command with actions of
    its own (``cache``) keeps the first parse."""
    command = args.commands[args.command]
    try:
        ns, rest = command.parse_known_intermixed_args(argv[argv.index(args.command) + 1:])
    except (TypeError, ValueError):  # subparsers (argparse refuses them here), or the command name not in argv
        return args, extra
    return argparse.Namespace(**{**vars(args), **vars(ns)}), rest


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on argv (default sys.argv[1:]); returns the exit status (argparse exits 2 on usage errors)."""
    parser = build_parser()
    handlers = ({sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
                if threading.current_thread() is threading.main_thread() else {})  # put back when it ends
    _unwind_on_sigterm()
    shown, warnings.showwarning = warnings.showwarning, one_line_warnings(warnings.showwarning)
    args = None
    try:
        args = _parse(parser, argv)
        args.parser = parser
        return int(args.func(args) or 0)
    except Terminated:
        _hold_further_interrupts()
        _flush_quietly()
        print("\nonnxlm: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        _hold_further_interrupts()
        _flush_quietly()
        print("\nonnxlm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `onnxlm generate ... | head`: stop quietly
        _silence_stdout()
        return 1
    except OnnxlmError as exc:
        _flush_quietly()
        print(error_line(flag_named(exc, getattr(args, "parser_for_command", None))), file=sys.stderr)
        return 1
    except OSError as exc:  # unreadable --file, disk full while exporting, ...
        _flush_quietly()
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(error_line(f"{where}{exc.strerror or exc}"), file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
        for sig, handler in handlers.items():
            if handler is not None:  # (None: set outside Python, nothing to put back)
                signal.signal(sig, handler)


def _hold_further_interrupts() -> None:
    """A second Ctrl-C (or SIGTERM) while the first one's message is printed and the handlers put back: ignored,
    not a traceback (the command is ending anyway)."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, docker stop, systemd, a CI cancel) raised in the main thread: it unwinds like Ctrl-C, so
    what cleans up after an interrupt (an export's scratch and temporary directories) runs for it too."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _unwind_on_sigterm() -> None:
    """Turn SIGTERM into ``Terminated`` while the command runs, where nobody chose another handler (a parent that
    ignores it keeps that; `serve`'s uvicorn installs its own graceful drain); ``main`` puts the handler back."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - stdout may be closed or a broken pipe
        pass


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except Exception:  # noqa: BLE001
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

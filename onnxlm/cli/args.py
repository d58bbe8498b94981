"""Arguments the CLI commands share: model loading, generation parameters, prompt sources."""
from __future__ import annotations

import argparse
import io
import math
import sys
from pathlib import Path

from onnxlm.runtime.errors import InputError

SUPPRESS = argparse.SUPPRESS


# ---------------------------------------------------------------------------------------------------- argument types
def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0)


def non_empty_text(text: str) -> str:
    """A prompt given as an option: refused empty (or all whitespace) before a model loads."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty text")
    return text


def probability(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails it too
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (seconds): NaN, inf and negatives refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def port(text: str) -> int:
    value = _int_at_least(text, 0)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {value}")
    return value


def int_list(text: str) -> list[int]:
    """'1,2, 3' -> [1, 2, 3]; an empty item ('1,,2') is refused, not skipped (a token id lost in the typing)."""
    try:
        values = [int(p) for p in text.replace(" ", "").split(",")] if text.strip() else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token ids like '1,2,3', got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one token id")
    return values


def json_object(text: str) -> dict:
    """'{"enable_thinking": false}' -> that dict (a JSON object, nothing else)."""
    import json

    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON ({e}): {text[:60]!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object such as \'{{"enable_thinking": false}}\', '
                                         f"got {text[:60]!r}")
    return value


def template_variables(text: str) -> dict:
    """'{"enable_thinking": false}' -> extra chat-template variables (a JSON object whose keys are names the
    rendering does not set itself: runtime/chat.check_template_vars)."""
    from onnxlm.runtime.chat import check_template_vars
    from onnxlm.runtime.errors import ParameterError

    try:
        return check_template_vars(json_object(text))
    except ParameterError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("chat_template_kwargs: ")) from None


def early_stopping(text: str):
    value = {"true": True, "false": False, "never": "never"}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------- model loading
MODEL_DIR_HELP = ("an artifact directory written by `onnxlm export` (or a plain Optimum ONNX export), or a .gguf file: "
                  "exported once on first use, on its own blocks, into $ONNXLM_CACHE/gguf (default "
                  "$XDG_CACHE_HOME/onnxlm/gguf, else ~/.cache/onnxlm/gguf; needs torch that once), and reused later")


def add_model_args(p: argparse.ArgumentParser, *, model_dir: bool = True) -> None:
    if model_dir:
        p.add_argument("model_dir", metavar="MODEL_DIR", help=MODEL_DIR_HELP)
    g = p.add_argument_group("runtime")
    g.add_argument("--provider", choices=("auto", "cpu", "cuda"), default="auto",
                   help="onnxruntime execution provider; auto picks CUDA when onnxruntime-gpu offers it (default: auto)")
    g.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="intra-op threads for onnxruntime (default: $ONNXLM_THREADS, else the physical cores)")
    g.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the sha256 checks of the artifact's files against onnxlm.json (faster start)")


def model_path(args) -> Path:
    """MODEL_DIR as given -> the artifact directory to load (``artifact_path``)."""
    return artifact_path(args.model_dir)


def artifact_path(text: str) -> Path:
    """A model as given (MODEL_DIR, serve's --draft) -> the artifact directory to load: a .gguf file's cached
    artifact, exported first when missing (export/gguf_artifact.py), else the path itself."""
    path, gguf = given_model(text)
    if not gguf:
        return path
    from onnxlm.export.gguf_artifact import ensure_gguf_artifact

    return ensure_gguf_artifact(path)


def check_params_early(args, params: dict) -> None:
    """The generation parameters checked before the model loads (a .gguf's first run exports it first: ~30 s before
    a bad value was said): against the artifact's generation config as the loaded model reads it, or for a .gguf
    file the one its export writes (transformers' defaults: a GGUF holds no generation settings but the special
    ids, which the loaded model checks). ParameterError for a bad one; a model that is not there is left to the
    load to refuse."""
    from onnxlm.runtime.errors import ModelFileError
    from onnxlm.runtime.generation_config import GenerationConfig

    try:
        path, gguf = given_model(args.model_dir)
    except ModelFileError:
        return
    if gguf:
        base = GenerationConfig()
    elif (path / "onnxlm.json").is_file() and (path / "config.json").is_file():
        from onnxlm.runtime.manifest import load_manifest, read_json
        from onnxlm.runtime.model import artifact_generation_config
        try:
            base = artifact_generation_config(path, load_manifest(path, verify=False), read_json(path / "config.json"))
        except Exception:  # noqa: BLE001 - an unreadable artifact: the load says what is wrong with it
            return
    else:
        return
    constraints = ("json_schema", "regex", "choices", "grammar", "constraints")  # generate's own (jobs' tasks.py)
    base.replace(**{k: v for k, v in params.items() if k not in constraints}).validate()


def flagged_artifact(given: str, flag: str) -> Path:
    """A second model as a flag gives it (serve's --draft, generate's --assistant) -> the artifact directory to load
    (a .gguf file's cached artifact, exported on first use), checked as the model's is before anything starts; its
    errors name ``flag`` (the same error type)."""
    from onnxlm.runtime.errors import ModelFileError, OnnxlmError
    from onnxlm.runtime.manifest import load_manifest

    try:
        path = artifact_path(given)
        if not path.is_dir():
            raise ModelFileError(f"{path}: not a model directory (give an artifact directory from onnxlm export, or "
                                 "a .gguf file)", str(path))
        load_manifest(path, verify=False)
    except OnnxlmError as exc:
        raise flag_error(exc, flag) from None
    return path


def flag_error(exc, flag: str):
    """An onnxlm error -> the same type saying it is about ``flag``."""
    from onnxlm.runtime.errors import OnnxlmError

    try:
        return type(exc)(f"{flag}: {exc}")
    except TypeError:  # an error built from other arguments
        return OnnxlmError(f"{flag}: {exc}")


def given_model(text: str) -> tuple[Path, bool]:
    """MODEL_DIR as given -> (its path, whether it is a GGUF file); ModelFileError for a file named .gguf that is
    not one and for a path that is not there."""
    from onnxlm.runtime.errors import ModelFileError
    from onnxlm.runtime.gguf_magic import is_gguf_file

    path = Path(text).expanduser()
    if is_gguf_file(path):
        return path, True
    if path.suffix.lower() == ".gguf" and path.is_file():
        raise ModelFileError(f"{path}: named .gguf but not a GGUF file (it does not start with the GGUF magic; a "
                             "download that saved an error page reads so)", str(path))
    if not path.exists():
        what = ("no such GGUF file" if path.suffix.lower() == ".gguf" else
                "no such model: give an artifact directory (onnxlm export ...) or a .gguf file")
        raise ModelFileError(f"{path}: {what}", str(path))
    return path, False


def load_model(args, *, generating: bool = True):
    """The command's model; ``generating``: a command that generates or scores refuses an embedding model (it only
    embeds: onnxlm embed) in one error line."""
    from onnxlm.runtime import load
    from onnxlm.runtime.errors import ModelFileError

    model = load(model_path(args), provider=args.provider, threads=args.threads, verify=args.verify)
    if generating and not getattr(model, "can_generate", True):
        from onnxlm.runtime.encoder_embedder import encoder_role

        use = ("onnxlm rerank (or onnxlm serve's /rerank)" if getattr(model, "is_reranker", False)
               else "onnxlm embed (or onnxlm serve's /v1/embeddings)")
        raise ModelFileError(f"{model.path}: {encoder_role(model.manifest)}; use {use}", str(model.path))
    return model


# ---------------------------------------------------------------------------------------------------- generation flags
# (flag, parameter name, argparse kwargs). Every flag defaults to SUPPRESS: only flags given on the command line are
# passed to the runtime, so the artifact's generation_config.json supplies the rest.
GEN_FLAGS: list[tuple[str, str, dict]] = [
    ("--max-new-tokens", "max_new_tokens", dict(type=int, metavar="N", help="tokens to generate at most")),
    ("--max-length", "max_length", dict(type=int, metavar="N",
                                        help="total length (prompt + new tokens) at most; --max-new-tokens wins")),
    ("--min-new-tokens", "min_new_tokens", dict(type=int, metavar="N", help="EOS is blocked before N new tokens")),
    ("--min-length", "min_length", dict(type=int, metavar="N", help="EOS is blocked below this total length")),
    ("--do-sample", "do_sample", dict(action=argparse.BooleanOptionalAction,
                                      help="sample instead of greedy/beam search (--no-do-sample forces greedy)")),
    ("--seed", "seed", dict(type=int, metavar="N", help="random seed for sampling (reproducible output); with "
                                                         "several prompts or rows, prompt i samples with N + i")),
    ("--temperature", "temperature", dict(type=float, metavar="T", help="divide the logits by T when sampling")),
    ("--top-k", "top_k", dict(type=int, metavar="K", help="sample among the K most likely tokens (0: off)")),
    ("--top-p", "top_p", dict(type=float, metavar="P", help="nucleus sampling: smallest set with probability >= P")),
    ("--min-p", "min_p", dict(type=float, metavar="P",
                              help="drop tokens less likely than P times the most likely one")),
    ("--typical-p", "typical_p", dict(type=float, metavar="P", help="locally typical sampling mass")),
    ("--repetition-penalty", "repetition_penalty", dict(type=float, metavar="X",
                                                        help="penalise tokens already present (1.0: off)")),
    ("--no-repeat-ngram-size", "no_repeat_ngram_size", dict(type=int, metavar="N",
                                                            help="never repeat an n-gram of this size")),
    ("--num-beams", "num_beams", dict(type=int, metavar="N", help="beam search with N beams (1: off)")),
    ("--length-penalty", "length_penalty", dict(type=float, metavar="X",
                                                help="beam search: exponent of the length normalisation")),
    ("--early-stopping", "early_stopping", dict(type=early_stopping, metavar="{true,false,never}",
                                                help="beam search stopping rule")),
    ("--num-return-sequences", "num_return_sequences", dict(type=int, metavar="N",
                                                            help="sequences returned per prompt (beams or samples)")),
    ("--eos-token-id", "eos_token_id", dict(type=int, action="append", metavar="ID",
                                            help="end-of-sequence token id (repeatable; replaces the model's)")),
    ("--pad-token-id", "pad_token_id", dict(type=int, metavar="ID", help="padding token id")),
    ("--stop-string", "stop_strings", dict(action="append", metavar="S",
                                           help="stop once S is written (repeatable; as transformers, the "
                                                "end of the prompt counts too); the text is cut where S starts")),
    ("--bad-words-ids", "bad_words_ids", dict(type=int_list, action="append", metavar="IDS",
                                              help="a comma-separated token id sequence that must never be "
                                                   "generated (repeatable)")),
    ("--suppress-tokens", "suppress_tokens", dict(type=int_list, metavar="IDS",
                                                  help="comma-separated token ids that are never generated")),
    ("--prompt-lookup", "prompt_lookup_num_tokens", dict(type=int, metavar="N",
                                                         help="speculative decoding: propose up to N tokens copied "
                                                              "from the prompt and output (same output, fewer "
                                                              "forward passes on input-grounded text)")),
    ("--output-scores", "output_scores", dict(action="store_true",
                                              help="also report the log-probability of every generated token")),
]


def add_generation_args(p: argparse.ArgumentParser, helps: dict[str, str] | None = None) -> None:
    """The generation flags on ``p``; ``helps``: a command's own help text for some of them (flag -> text)."""
    g = p.add_argument_group("generation parameters",
                             "transformers GenerationConfig names; unset flags keep the model's "
                             "generation_config.json values")
    for flag, name, kw in GEN_FLAGS:
        g.add_argument(flag, dest=name, default=SUPPRESS, **{**kw, "help": (helps or {}).get(flag, kw.get("help"))})


def generation_params(args) -> dict:
    """The generation parameters given explicitly on the command line."""
    return {name: getattr(args, name) for _, name, _ in GEN_FLAGS if hasattr(args, name)}


# ---------------------------------------------------------------------------------------------------- prompt sources
def add_prompt_args(p: argparse.ArgumentParser, *, name: str = "PROMPT", what: str = "prompt") -> None:
    p.add_argument("texts", nargs="*", metavar=name,
                   help=f"{what}s (each argument is one {what}); `-` reads {what}s from stdin, one per line. "
                        f"Without any, {what}s come from --file or from piped stdin")
    p.add_argument("--file", "-f", metavar="PATH",
                   help=f"read {what}s from PATH, one per line (blank lines skipped; `-` = stdin)")


def read_prompts(args, *, what: str = "prompt", stdin=None) -> list[str]:
    """Positional texts, --file lines, or stdin lines (when `-` is given or stdin is piped)."""
    stdin = sys.stdin if stdin is None else stdin
    texts: list[str] = []
    for i, text in enumerate(args.texts):
        texts.extend(_lines(stdin) if text == "-" else [check_utf8(text, f"{what} argument {i + 1}")])
    if args.file:
        if args.file == "-":
            texts.extend(_lines(stdin))
        else:
            texts.extend(_lines_of_file(Path(args.file), what))
    if not args.texts and not args.file and stdin is not None and not _isatty(stdin):
        texts.extend(_lines(stdin))
    if not texts:
        args.parser_for_command.error(
            f"no {what} given: pass it as an argument, with --file PATH, or pipe it on stdin")
    return texts


def _lines(stream, name: str = "stdin") -> list[str]:
    """Non-blank lines of a text stream (stdin: its bytes are decoded here, so bad bytes name their line)."""
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        stream = io.StringIO(decode_utf8(buffer.read(), name), newline=None)
    try:
        return [check_utf8(line.rstrip("\r\n"), name) for line in stream if line.strip()]
    except UnicodeDecodeError as exc:
        raise _not_utf8(name, exc.object, exc.start) from None


def read_line(stream, name: str = "stdin") -> str:
    """One line of an interactive stream ('' at EOF); InputError when it is not UTF-8 text."""
    try:
        return check_utf8(stream.readline(), name)
    except UnicodeDecodeError as exc:
        raise _not_utf8(name, exc.object, exc.start) from None


def check_utf8(text: str, name: str) -> str:
    """text -> text; InputError when it holds bytes that were not UTF-8 (Python keeps them as lone surrogates in
    command-line arguments, and in stdin under a C/POSIX locale)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = ord(text[exc.start])
        byte = bad - 0xDC00 if 0xDC80 <= bad <= 0xDCFF else None
        raise InputError(f"{name}: not UTF-8 text ({f'byte 0x{byte:02x}' if byte is not None else f'U+{bad:04X}'}"
                         "); onnxlm reads text as UTF-8: convert it first, e.g. with `iconv -f latin1 -t utf-8`") from None
    return text


def decode_utf8(data: bytes, name: str) -> str:
    """File or stdin bytes -> str; InputError naming `name` and the line of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(name, data, exc.start, line=data.count(b"\n", 0, exc.start) + 1) from None


def _not_utf8(name: str, data: bytes, start: int, line: int | None = None) -> InputError:
    where = f" on line {line}" if line is not None else ""
    return InputError(f"{name}: not UTF-8 text (byte 0x{data[start]:02x}{where}); onnxlm reads text as UTF-8: "
                      "convert it first, e.g. with `iconv -f latin1 -t utf-8`")


def _lines_of_file(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise InputError(f"--file: {path} does not exist or is not a file")
    lines = _lines(io.StringIO(decode_utf8(path.read_bytes(), str(path)), newline=None))
    if not lines:
        raise InputError(f"--file: {path} holds no {what}s (only blank lines)")
    return lines


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def command_parser(sub, name: str, *, help: str, description: str) -> argparse.ArgumentParser:
    """A subcommand parser whose namespace remembers it (for usage errors raised after parsing)."""
    p = sub.add_parser(name, help=help, description=description,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(parser_for_command=p)
    return p

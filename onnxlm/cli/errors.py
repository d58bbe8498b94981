"""How the CLI reports a failure: exactly one line on stderr (used by `main` and by the batch jobs' runner); and
onnxlm's own warnings, one line each."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]  # onnxlm/ (its runtime/ and export/ inside an installed package)
_ROOTS = (_PACKAGE, _PACKAGE.parent / "runtime", _PACKAGE.parent / "export")  # the same in a source checkout


def error_line(message: str) -> str:
    """One readable line: a message's lines are joined so a failure is always exactly one line (the spaces within a
    line are kept: a quoted value of three spaces still reads as three)."""
    return "onnxlm: error: " + _one_line(message)


def flag_named(exc, parser) -> str:
    """An error's message, a ParameterError's parameter named as the command's flag for it where it has one
    ("--max-new-tokens: got -5; ..." for "max_new_tokens: got -5; ..."): what the user typed."""
    message, name = str(exc), getattr(exc, "parameter", None)
    if not isinstance(name, str) or parser is None or not message.startswith(name + ":"):
        return message
    flag = "--" + name.replace("_", "-")
    return flag + message[len(name):] if flag in getattr(parser, "_option_string_actions", {}) else message


def _one_line(message) -> str:
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def warning_line(message: str) -> str:
    """A warning of onnxlm's as one line, beside its error lines."""
    return "onnxlm: warning: " + _one_line(message)


def one_line_warnings(previous=warnings.showwarning):
    """A ``warnings.showwarning`` that prints onnxlm's own UserWarnings as ``warning_line`` (not Python's form with
    the file, line and source line of the warn call) and hands every other warning to ``previous``."""
    def show(message, category, filename, lineno, file=None, line=None):
        here = Path(filename).resolve()
        if issubclass(category, UserWarning) and any(here.is_relative_to(root) for root in _ROOTS):
            print(warning_line(str(message)), file=file or sys.stderr)
        else:
            previous(message, category, filename, lineno, file, line)
    return show

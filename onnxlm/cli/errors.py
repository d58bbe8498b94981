"""How the CLI reports a failure: exactly one line on stderr (used by `main` and by the batch jobs' runner)."""
from __future__ import annotations


def error_line(message: str) -> str:
    """One readable line: newlines in a message are folded so a failure is always exactly one line."""
    return "onnxlm: error: " + " ".join(str(message).split())

"""The peer benchmark's settings: paths, the prompt, the onnxlm variants, the full and quick runs; and how a child
process of this package is started (``python -m benchmarks.peers --_...`` with the repository on its path)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
# The peers' own venv (scripts/setup_peers.sh): .venv-peers at the repository root unless PEERS_VENV says otherwise
# (a relative PEERS_VENV is taken from the repository root, as setup_peers.sh does).
PEERS_VENV = REPO / os.environ.get("PEERS_VENV", ".venv-peers")
DEFAULT_PEERS_PYTHON = PEERS_VENV / "bin" / "python"
# onnxruntime-genai's newest builder imports transformers 5.x names; 0.11.4's works with the pinned 4.57 (setup_peers.sh
# extracts it here); the runtime that runs the built graphs is the newest wheel, installed in .venv.
DEFAULT_OGENAI_BUILDER = PEERS_VENV / "ogenai-builder" / "onnxruntime_genai" / "models" / "builder.py"
PROMPT_TEXT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home at night. "
    "Later, towers of stone carried lamps fed with oil, and lenses made the light visible far out at sea. "
    "Keepers lived beside the lamp, trimming wicks and winding the clockwork that turned the lens. "
)
MODES = ("greedy", "sample", "beam4")
SHARED_DATA = REPO.parent / "shared" / "data"

# onnxlm's quantized variants: one line each (name, export_model keyword arguments, role). "from_source": quantize
# while exporting the original source (e.g. a GGUF keeping its own blocks) instead of the fp32 artifact. "role":
# "default" is the variant the quantized targets are checked on (the last one listed wins), "fidelity" the
# fidelity setting. force_quality is always set: the bench reports the agreement instead of gating on it.
QUANT_VARIANTS = [
    {"name": "int8", "kwargs": {"quantize": "int8", "accuracy_level": 4}},
    {"name": "int4", "kwargs": {"quantize": "int4", "accuracy_level": 4}},
    {"name": "int4-fidelity", "kwargs": {"quantize": "int4", "accuracy_level": 1}},
    {"name": "gguf", "kwargs": {"quantize": "gguf"}, "from_source": True, "role": "default"},
    {"name": "gguf-fidelity", "kwargs": {"quantize": "gguf", "accuracy_level": 1}, "from_source": True, "role": "fidelity"},
]

# Full and quick settings (--quick); every value can still be overridden on the command line.
# The full run is sized for ~25 min on 2 quiet cores (estimate: ~8 min of preparation - exports, quantizations,
# conversions, builds - then ~40 s per engine and model, ~80 s for PyTorch, 24 workers, ~2 min of profiles); add
# b1:p128:greedy for a third point on the context plot (~+2 min).
FULL = {"models": ["gpt2-small", "t5-small", "smollm2"], "new_tokens": 24, "runs": 3,
        "cases": ["b1:p16:greedy", "b1:p512:greedy", "b8:p16:greedy", "b1:p16:sample", "b1:p16:beam4"]}
QUICK = {"models": ["tiny-gpt2", "tiny-t5", "tiny-llama"], "new_tokens": 8, "runs": 1,
         "cases": ["b1:p16:greedy", "b1:p64:greedy", "b2:p16:greedy", "b1:p16:sample", "b1:p16:beam4"]}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)



def module_command(python: str, *args: str) -> list[str]:
    """The command line of a child process of this package: ``python -m benchmarks.peers ARGS`` (run it with
    child_env(), which puts the repository on the child's path wherever it starts)."""
    return [str(python), "-m", "benchmarks.peers", *args]


def child_env(extra: dict | None = None) -> dict:
    """This process's environment + the repository root first on PYTHONPATH + ``extra``."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""), **(extra or {})}

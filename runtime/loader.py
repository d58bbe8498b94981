"""`load`: an artifact directory (or a plain Optimum export) -> CausalLM | Seq2SeqLM."""
from __future__ import annotations

import os
from pathlib import Path

from .manifest import load_manifest
from .session import resolve_provider


def load(path, *, provider: str = "auto", threads: int | None = None, verify: bool = True):
    """Open a model directory on 'auto' | 'cpu' | 'cuda'. verify=False skips the manifest's sha256 checks."""
    from .causal_lm import CausalLM
    from .seq2seq_lm import Seq2SeqLM
    model_dir = Path(os.fspath(path)).expanduser()
    resolved = resolve_provider(provider)
    manifest = load_manifest(model_dir, verify=verify)
    cls = Seq2SeqLM if manifest["kind"] == "seq2seq-lm" else CausalLM
    return cls(model_dir, manifest, resolved, threads)

"""`load`: an artifact directory (or a plain Optimum export) -> CausalLM | Seq2SeqLM | EncoderEmbedder."""
from __future__ import annotations

import os
from pathlib import Path

from .errors import ManifestError, ParameterError, ProviderError
from .manifest import load_manifest, verify_files
from .session import resolve_provider
from .versions import check_artifact_onnxruntime, check_onnxruntime


def load(path, *, provider: str = "auto", threads: int | None = None, verify: bool = True):
    """Open a model directory on 'auto' | 'cpu' | 'cuda'. verify=False skips the manifest's sha256 checks."""
    from .fused import KV_LAYOUT, FusedSeq2SeqLM, causal_class
    from .plain import CausalLM, Seq2SeqLM
    raw = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(raw, str):
        raise ParameterError("path", f"got {type(path).__name__} {path!r:.60}; allowed: a model directory's path "
                                     "(str or pathlib.Path)")
    model_dir = Path(raw).expanduser()
    check_onnxruntime()  # before the provider probe and the checksums
    resolved = resolve_provider(provider)
    manifest = load_manifest(model_dir, verify=False)
    check_artifact_onnxruntime(manifest, model_dir)  # its manifest's need (windows: 1.23 narrows); before the checksums
    if verify:
        verify_files(model_dir, manifest)
    if manifest["kind"] == "embedding":  # an embedding-only encoder (a BERT GGUF's export): one graph, no KV
        from .encoder_embedder import EncoderEmbedder

        return EncoderEmbedder(model_dir, manifest, resolved, threads)
    cls = Seq2SeqLM if manifest["kind"] == "seq2seq-lm" else CausalLM
    if manifest.get("kv_layout", "plain") == KV_LAYOUT:  # in-place KV buffers: numpy-backed, CPU only
        if provider == "cuda":
            raise ProviderError(f"provider='cuda': {model_dir} is a fused artifact (kv_layout {KV_LAYOUT!r}), "
                                "which runs on the CPU only; allowed: 'auto', 'cpu'")
        cls, resolved = (FusedSeq2SeqLM if cls is Seq2SeqLM else causal_class(manifest)), "cpu"
    elif manifest.get("kv_layout", "plain") != "plain":
        raise ManifestError(f"{model_dir}: kv_layout {manifest['kv_layout']!r} is unknown; allowed: 'plain', "
                            f"{KV_LAYOUT!r}")
    return cls(model_dir, manifest, resolved, threads)

"""Typed errors. Every message names the parameter or file at fault and what is allowed."""
from __future__ import annotations


class OnnxlmError(Exception):
    """Base class of every error onnxlm raises on purpose."""


class ModelFileError(OnnxlmError, FileNotFoundError):
    """A model file is missing, truncated, corrupt or does not match the manifest's checksum."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:  # FileNotFoundError would otherwise print errno/filename fields
        return self.args[0]


class RerankerError(ModelFileError):
    """``embed`` on a reranker, or ``rerank`` on a model that is not one (runtime/encoder_embedder.py)."""


class ManifestError(OnnxlmError):
    """The artifact manifest (onnxlm.json) is unreadable, inconsistent or from an unknown format version."""


class ProviderError(OnnxlmError):
    """The requested onnxruntime execution provider is not available here."""


class DependencyError(OnnxlmError, ImportError):
    """The installed onnxruntime or tokenizers is older than onnxlm, or an artifact, needs (``runtime/versions.py``):
    older versions cannot open some graphs or give other answers without an error. (An old llguidance is a
    ParameterError naming the constraint parameter, as the missing extra is.)"""


class InputError(OnnxlmError, ValueError):
    """A prompt or token-id input is unusable (empty, too long, ids out of the vocabulary, bad shapes)."""

    def naming(self, where: str) -> "InputError":
        """The same fault with its message's leading name (``input_ids: ...``) replaced by ``where``: a check shared
        by several inputs names the one the caller gave (``targets``, ``documents[2]``)."""
        return InputError(f"{where}: " + str(self).split(": ", 1)[-1])


class ParameterError(OnnxlmError, ValueError):
    """A generation/scoring parameter is out of its allowed range or unknown."""

    def __init__(self, parameter: str, message: str):
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


class ExportError(OnnxlmError):
    """Export failed (unsupported architecture, validation mismatch, target exists, ...)."""


class QualityGateError(ExportError):
    """The quality gate refused a quantized variant: ``refusal`` says which figures against fp32 fell outside the
    gate's bounds."""

    def __init__(self, message: str, refusal: str):
        super().__init__(message)
        self.refusal = refusal


class ExportNotice(UserWarning):
    """Something an export did that its user should hear about (a GGUF's context capped to the positions an artifact
    holds): ``export_model`` shows these although it silences the libraries' warnings while it loads a model."""

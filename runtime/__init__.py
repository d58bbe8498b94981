"""Torch-free runtime: numpy + onnxruntime + tokenizers only."""
from .errors import (DependencyError, InputError, ManifestError, ModelFileError, OnnxlmError, ParameterError,
                     ProviderError)
from .generation_config import GenerationConfig
from .loader import load
from .plain import CausalLM, Seq2SeqLM
from .results import EmbeddingResult, GenerationResult, ScoringResult, StepResult, TokenDistribution

__all__ = ["load", "CausalLM", "Seq2SeqLM", "GenerationConfig", "GenerationResult", "ScoringResult", "StepResult",
           "EmbeddingResult",
           "TokenDistribution", "OnnxlmError", "DependencyError", "InputError", "ManifestError", "ModelFileError",
           "ParameterError", "ProviderError"]

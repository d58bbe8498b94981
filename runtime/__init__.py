"""Torch-free runtime: numpy + onnxruntime + tokenizers only."""
from .causal_lm import CausalLM
from .errors import (InputError, ManifestError, ModelFileError, OnnxlmError, ParameterError, ProviderError)
from .generation_config import GenerationConfig
from .loader import load
from .results import GenerationResult, ScoringResult, StepResult, TokenDistribution
from .seq2seq_lm import Seq2SeqLM

__all__ = ["load", "CausalLM", "Seq2SeqLM", "GenerationConfig", "GenerationResult", "ScoringResult", "StepResult",
           "TokenDistribution", "OnnxlmError", "InputError", "ManifestError", "ModelFileError", "ParameterError",
           "ProviderError"]

"""`EncoderEmbedder`: an embedding-only encoder artifact (manifest ``kind = "embedding"``: a BERT GGUF's export,
export/encoder_export.py) -> one vector per text, as ``LanguageModel.embed`` gives a decoder's.

Its graph reads ``input_ids``, ``attention_mask`` and ``token_type_ids`` [b, s] and gives ``last_hidden_state``
[b, s, D]: every position sees every other of its row (no causal mask), padding on either side is masked out.
``embed`` is ``LanguageModel.embed``'s: the same inputs (text, ids, lists of either), checks and messages (the
input helpers are LanguageModel's own), batches of similar length (runtime/embedding.py), pooling 'mean' / 'cls'
(the first token's state: [CLS], which the tokenizer puts first) / 'last', and the default pooling from the manifest
(the GGUF's ``bert.pooling_type``). Text is encoded with the tokenizer's special tokens, as llama.cpp encodes it:
[CLS] text [SEP]. It only embeds: ``generate``, ``stream``, ``chat``, ``score`` raise ``ModelFileError``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .embedding import manifest_pooling
from .errors import ModelFileError
from .manifest import read_json
from .model import LanguageModel
from .generation_config import GenerationConfig
from .session import GraphRunner, make_session
from .tokenizer import TextTokenizer

__all__ = ["EncoderEmbedder", "KIND"]

KIND = "embedding"


class EncoderEmbedder:
    """An embedding encoder artifact (see the module doc); ``onnxlm.load`` returns one for ``kind = "embedding"``."""

    is_encoder_decoder = False
    can_generate = False  # it only embeds (the server's generating endpoints answer 400 generation_not_supported)

    def __init__(self, path: Path, manifest: dict, provider: str, threads: int | None):
        self.path, self.manifest, self.provider, self.threads = path, manifest, provider, threads
        self.config = read_json(path / "config.json")
        tok_file = path / "tokenizer.json"
        self.tokenizer = TextTokenizer.from_file(tok_file) if tok_file.is_file() else None
        self.session = make_session(path / manifest["graphs"]["encoder"]["file"], provider, threads)
        self.encoder = GraphRunner(self.session, provider)  # the "encoder" graph, where `onnxlm info` looks
        self.generation_config = GenerationConfig()  # nothing to generate: transformers' defaults, for `info`
        self.chat_template = None
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.vocab_size = int(manifest.get("vocab_size") or self.config["vocab_size"])
        self.max_positions = manifest.get("max_positions") or self.config.get("max_position_embeddings")
        self.pad_id = int(manifest.get("special_tokens", {}).get("pad_token_id") or 0)

    def __repr__(self) -> str:
        return (f"EncoderEmbedder(path={str(self.path)!r}, model_type={self.manifest.get('model_type')!r}, "
                f"provider={self.provider!r}, vocab_size={self.vocab_size}, pooling={self.default_pooling!r})")

    # inputs: LanguageModel's own helpers (the same accepted forms, checks and messages)
    _check_ids = LanguageModel._check_ids
    _encode = LanguageModel._encode
    _encode_raw = LanguageModel._encode_raw
    _rows = LanguageModel._rows
    _indexed_rows = LanguageModel._indexed_rows
    _in_vocabulary = LanguageModel._in_vocabulary
    _out_of_vocabulary = LanguageModel._out_of_vocabulary

    @property
    def default_pooling(self) -> str:
        """The pooling ``embed`` uses unless told: the manifest's (the GGUF's ``bert.pooling_type``), else 'mean'."""
        return manifest_pooling(self.manifest)

    def check_embeddings(self) -> None:
        """An encoder artifact always embeds (``LanguageModel.check_embeddings``' counterpart)."""

    def last_hidden_state(self, input_ids, attention_mask=None) -> np.ndarray:
        # [b, s] int ids, [b, s] 0/1 mask (padding on either side) -> [b, s, D] float32
        ids, mask = self._check_ids(input_ids, attention_mask)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)  # one sequence (segment 0), as llama.cpp feeds BERT
        return self.session.run(["last_hidden_state"], feeds)[0]

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # right-padded [b, t] ids and mask -> [b, t, D] float32 states, [b] lengths (embedding.embed_batch's call)
        return self.last_hidden_state(ids, mask), mask.sum(axis=1)

    # one vector per input row: the encoder's last hidden states pooled over the row's tokens ([CLS] and [SEP]
    # included); LanguageModel.embed's parameters, checks and result
    embed = LanguageModel.embed

    def _embeds_only(self, what: str):
        raise ModelFileError(f"{self.path}: {what} needs a language model; this artifact is an embedding model "
                             f"({self.manifest.get('model_type')}, kind {KIND!r}): it only embeds (embed())",
                             str(self.path))

    def generate(self, *args, **kwargs):
        self._embeds_only("generate")

    def stream(self, *args, **kwargs):
        self._embeds_only("stream")

    def chat(self, *args, **kwargs):
        self._embeds_only("chat")

    def score(self, *args, **kwargs):
        self._embeds_only("score")

    def next_token_distribution(self, *args, **kwargs):
        self._embeds_only("next_token_distribution")

"""`EncoderEmbedder`: an embedding-only encoder artifact (manifest ``kind = "embedding"``: a BERT GGUF's export,
export/encoder_export.py) -> one vector per text, as ``LanguageModel.embed`` gives a decoder's.

Its graph reads ``input_ids``, ``attention_mask`` and ``token_type_ids`` [b, s] and gives ``last_hidden_state``
[b, s, D]: every position sees every other of its row (no causal mask), padding on either side is masked out.
``embed`` is ``LanguageModel.embed``'s: the same inputs (text, ids, lists of either), checks and messages (the
input helpers are LanguageModel's own), batches of similar length (runtime/embedding.py), pooling 'mean' / 'cls'
(the first token's state: [CLS], which the tokenizer puts first) / 'last', and the default pooling from the manifest
(the GGUF's ``bert.pooling_type``). Text is encoded with the tokenizer's special tokens, as llama.cpp encodes it:
[CLS] text [SEP]. It only embeds: ``generate``, ``stream``, ``chat``, ``score`` raise ``ModelFileError``.

A reranker's artifact (manifest ``pooling`` "rank": a ``bert`` GGUF with ``pooling_type`` 4 and its classifier head;
its graph also gives ``rank_scores`` [b, n_labels]) scores (query, document) pairs instead: ``rerank`` builds each
pair's ids as llama.cpp's server does (``format_prompt_rerank``: the manifest's ``rank.pair``, e.g.
``<s> query </s></s> document </s>`` for bge-reranker-v2-m3), runs them in batches of similar length as ``embed``
does, and gives llama.cpp's /rerank score (the head's first output, no sigmoid), best first. ``embed`` on a reranker
raises ``RerankerError`` (a ``ModelFileError``), and ``rerank`` on an embedding model too.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from .embedding import check_batch_size, manifest_pooling
from .errors import InputError, ModelFileError, ParameterError, RerankerError
from .manifest import read_json_object
from .model import LanguageModel
from .generation_config import GenerationConfig
from .session import GraphRunner, make_session
from .tokenizer import TextTokenizer

__all__ = ["EncoderEmbedder", "KIND", "Ranked", "RerankerError"]

KIND = "embedding"


def encoder_role(manifest: dict) -> str:
    """An encoder artifact's manifest -> what it is and does, for the refusals of what it does not: a reranker
    (pooling "rank") only reranks, an embedding model only embeds."""
    if manifest.get("pooling") == "rank":
        return f"a reranker ({manifest.get('model_type')}): it only scores (query, document) pairs"
    return f"an embedding model ({manifest.get('model_type')}): it only embeds"


class Ranked(NamedTuple):
    """One document's place in ``rerank``'s answer: its index in the documents given and llama.cpp's score."""
    index: int
    score: float

    def __repr__(self) -> str:
        return f"Ranked(index={self.index}, score={self.score:.6g})"


class EncoderEmbedder:
    """An embedding encoder artifact (see the module doc); ``onnxlm.load`` returns one for ``kind = "embedding"``."""

    is_encoder_decoder = False
    can_generate = False  # it only embeds (the server's generating endpoints answer 400 generation_not_supported)

    def __init__(self, path: Path, manifest: dict, provider: str, threads: int | None):
        self.path, self.manifest, self.provider, self.threads = path, manifest, provider, threads
        self.config = read_json_object(path / "config.json")
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
        self.rank = manifest.get("rank") if manifest.get("pooling") == "rank" else None
        self.is_reranker = self.rank is not None and "rank_scores" in {o.name for o in self.session.get_outputs()}

    def __repr__(self) -> str:
        pooling = "rank" if self.is_reranker else self.default_pooling
        return (f"EncoderEmbedder(path={str(self.path)!r}, model_type={self.manifest.get('model_type')!r}, "
                f"provider={self.provider!r}, vocab_size={self.vocab_size}, pooling={pooling!r})")

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
        """An encoder artifact embeds unless it is a reranker (``LanguageModel.check_embeddings``' counterpart)."""
        if self.is_reranker:
            raise RerankerError(f"{self.path}: this artifact is a reranker (pooling 'rank': its classifier head scores "
                                "query/document pairs); it does not make embeddings: use rerank(query, documents)",
                                str(self.path))

    def last_hidden_state(self, input_ids, attention_mask=None) -> np.ndarray:
        # [b, s] int ids, [b, s] 0/1 mask (padding on either side) -> [b, s, D] float32
        return self.session.run(["last_hidden_state"], self._feeds(*self._check_ids(input_ids, attention_mask)))[0]

    def _feeds(self, ids: np.ndarray, mask: np.ndarray) -> dict:
        # checked [b, s] int64 ids and mask -> the graph's feeds: token type 0 everywhere where it takes them (one
        # sequence, as llama.cpp feeds BERT; its rank pairs too: its graph adds type 0's row to every token)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return feeds

    def hidden_states(self, ids: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # right-padded [b, t] ids and mask -> [b, t, D] float32 states, [b] lengths (embedding.embed_batch's call)
        return self.last_hidden_state(ids, mask), mask.sum(axis=1)

    def embed(self, inputs, **kwargs):
        """One vector per input row: the encoder's last hidden states pooled over the row's tokens ([CLS] and [SEP]
        included); ``LanguageModel.embed``'s parameters, checks and result. A reranker raises ``RerankerError``."""
        self.check_embeddings()
        return LanguageModel.embed(self, inputs, **kwargs)

    # reranking (a reranker's artifact: manifest pooling "rank")

    def check_rerank(self) -> None:
        if not self.is_reranker:
            raise RerankerError(f"{self.path}: rerank needs a reranker (a GGUF with pooling_type 4, rank, and its "
                                f"classifier head); this artifact is an embedding model (pooling "
                                f"{self.default_pooling!r}): use embed()", str(self.path))

    def pair_ids(self, query: str, document: str) -> list[int]:
        """One (query, document) pair -> its ids, as llama.cpp's server builds them (``format_prompt_rerank``): the
        file's ``rerank`` template filled in and tokenized with its special tokens read, else [BOS] query [EOS] [SEP]
        document [EOS] with the flags llama.cpp reads (the manifest's ``rank.pair``), query and document tokenized
        without special tokens and with special-token strings read as text (parse_special false)."""
        self.check_rerank()
        pair = self.rank["pair"]
        if pair.get("template"):
            prompt = pair["template"].replace("{query}", query).replace("{document}", document)
            return self.tokenizer.encode(prompt, add_special_tokens=False)
        q = self.tokenizer.encode(query, add_special_tokens=False, split_special_tokens=True)
        d = self.tokenizer.encode(document, add_special_tokens=False, split_special_tokens=True)
        return [*pair["prefix"], *q, *pair["middle"], *d, *pair["suffix"]]

    def rank_scores(self, rows: list[list[int]]) -> np.ndarray:
        # rows of pair ids (unpadded) -> [n, n_labels] float32: one pass, right-padded (the head reads the first token)
        from .tokenizer import pad_batch

        self.check_rerank()
        ids, mask = pad_batch([list(r) for r in rows], self.pad_id, side="right")
        return self.session.run(["rank_scores"], self._feeds(*self._check_ids(ids, mask)))[0]

    def rerank(self, query: str, documents: list[str], *, top_n: int | None = None,
               batch_size: int = 16) -> list[Ranked]:
        """Each document's relevance to ``query`` -> ``Ranked(index, score)`` best first (ties in the order given),
        the first ``top_n`` (default all): llama.cpp's /rerank, its score the head's first output (a logit for
        bge-reranker and the ms-marco cross-encoders, no sigmoid). Pairs run in batches of similar length
        (``batch_size`` rows and ``embedding.MAX_BATCH_TOKENS`` padded positions at most)."""
        self.check_rerank()
        if not isinstance(query, str):
            raise ParameterError("query", f"expected a string, got {type(query).__name__}")
        if isinstance(documents, str) or not isinstance(documents, (list, tuple)) or not documents or not all(
                isinstance(d, str) for d in documents):
            raise ParameterError("documents", "expected a non-empty list of strings")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0):
            raise ParameterError("top_n", f"got {top_n!r}; allowed: None or an integer >= 0")
        batch_size = check_batch_size(batch_size)
        try:  # the query alone (beside an empty document): its own faults are the query's, not a document's
            self._check_ids([self.pair_ids(query, "")], None)
        except InputError as exc:
            raise exc.naming("query") from None
        rows = []
        for i, doc in enumerate(documents):
            try:
                row = self.pair_ids(query, doc)
                self._check_ids([row], None)
            except InputError as exc:
                raise exc.naming(f"documents[{i}]") from None
            rows.append(row)
        scores = self.pair_scores(rows, batch_size)
        return ranked(scores, top_n)

    def pair_scores(self, rows: list[list[int]], batch_size: int = 16) -> np.ndarray:
        # rows of pair ids -> [n] float32 in the given order: llama.cpp's score (the head's first output)
        from .embedding import batches

        out = np.zeros(len(rows), np.float32)
        for chunk in batches([len(r) for r in rows], batch_size):
            out[chunk] = self.rank_scores([rows[i] for i in chunk])[:, 0]
        return out

    def _embeds_only(self, what: str):
        use = "rerank()" if self.is_reranker else "embed()"
        raise ModelFileError(f"{self.path}: {what} needs a language model; this artifact is "
                             f"{encoder_role(self.manifest)} (kind {KIND!r}; {use})", str(self.path))

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


def ranked(scores, top_n: int | None = None) -> list[Ranked]:
    """Scores in the documents' order -> ``Ranked`` best first (a stable sort: ties keep the order given), the first
    ``top_n`` (llama.cpp's ``format_response_rerank``: sorted by score, then cut to top_n)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return [Ranked(i, float(scores[i])) for i in order][:len(order) if top_n is None else int(top_n)]

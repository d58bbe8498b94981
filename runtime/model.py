"""`LanguageModel`: what CausalLM and Seq2SeqLM share — inputs, parameters, generate, stream, score, chat."""
from __future__ import annotations

import numbers
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .constraints import (KINDS as CONSTRAINT_KINDS, ConstrainedState, ConstraintProcessor, FollowingConstraint,
                          engine_for, pop_constraints)
from .errors import InputError, ModelFileError, ParameterError, RerankerError
from .generation_config import GenerationConfig, warn_once
from .heap import release_free_heap
from .manifest import no_chat_template, read_json_object
from .processors import build_processors, log_softmax
from .results import EmbeddingResult, GenerationResult, ScoringResult, StepResult, TokenDistribution
from .session import GraphRunner, make_session
from .streaming import IncrementalText, decode_after
from .tokenizer import TextTokenizer, pad_batch
from .versions import artifact_onnxruntime, runs_narrowed


def artifact_generation_config(path: Path, manifest: dict, config: dict) -> GenerationConfig:
    """An artifact's generation_config.json (transformers' defaults without one), its unset special-token ids taken
    from the manifest's special_tokens, then from config.json."""
    gen_file = path / "generation_config.json"
    gen = GenerationConfig.from_file(gen_file) if gen_file.is_file() else GenerationConfig()
    specials = manifest.get("special_tokens", {})
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if getattr(gen, name) is None:
            value = specials.get(name, config.get(name))
            if value is not None:
                gen = gen.replace(**{name: value})
    return gen


class LanguageModel:
    """Base of CausalLM / Seq2SeqLM. Subclasses provide `_init_graphs`, `start`, `initial_sequences`, `logits`."""

    is_encoder_decoder = False
    can_generate = True  # (an EncoderEmbedder's is False: it only embeds)

    def __init__(self, path: Path, manifest: dict, provider: str, threads: int | None):
        self.path, self.manifest, self.provider, self.threads = path, manifest, provider, threads
        # onnxruntime 1.23 runs an artifact whose sliding windows need 1.24 with each window one narrower
        self.narrows_windows = runs_narrowed(artifact_onnxruntime(manifest, path))
        self.config = read_json_object(path / "config.json")
        self.generation_config = artifact_generation_config(path, manifest, self.config)
        unsupported = self.generation_config.unsupported_settings()
        if unsupported:
            warnings.warn(f"{path / 'generation_config.json'}: onnxlm ignores these generation settings it does not "
                          f"implement: {unsupported}; results can differ from transformers' generate", stacklevel=3)
        tok_file = path / "tokenizer.json"
        self.tokenizer = TextTokenizer.from_file(tok_file) if tok_file.is_file() else None
        self._init_graphs()
        release_free_heap()  # what building the sessions freed goes back to the kernel (heap.py)
        logits_dim = self.decoder.session.get_outputs()[0].shape[-1]  # [batch, length, V]: V may be symbolic
        self.logits_width = int(logits_dim) if isinstance(logits_dim, int) else None  # V when the graph fixes it
        self.vocab_size = self.logits_width or int(self.config["vocab_size"])
        # longest decoder-only sequence (learned or rotary positions); None for T5's relative positions
        self.max_positions = None if self.is_encoder_decoder else manifest.get(
            "max_positions", self.config.get("n_positions", self.config.get("max_position_embeddings")))
        chat_file = path / "chat_template.jinja"
        try:
            self.chat_template = chat_file.read_text(encoding="utf-8") if chat_file.is_file() else None
        except UnicodeDecodeError as exc:
            raise ModelFileError(f"{chat_file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                 f"{exc.start}); a chat template must be UTF-8", str(chat_file)) from None

    # ------------------------------------------------------------------ set-up helpers
    def _runner(self, role: str) -> GraphRunner:
        """'encoder' | 'decoder' | 'decoder_with_past' -> a GraphRunner on that graph's file."""
        file = self.manifest["graphs"][role]["file"]
        return GraphRunner(make_session(self.path / file, self.provider, self.threads,
                                        narrow_windows=self.narrows_windows), self.provider)

    @property
    def pad_id(self) -> int:
        """The id left padding and finished rows use (see ``pad_for``) under the artifact's generation config."""
        return self.pad_for(self.generation_config)

    def pad_for(self, config: GenerationConfig) -> int:
        """config.pad_token_id when it is a token id; else the first EOS id, as transformers' generate falls back
        (old Llama configs carry pad_token_id=-1: feeding it would fail, so it is replaced, with a one-time warning)."""
        pad = config.pad_token_id
        if pad is not None and 0 <= pad < self.vocab_size:
            return int(pad)
        fallback = config.eos_token_ids[0] if config.eos_token_ids else 0
        if pad is not None:
            warn_once(f"pad:{self.path}:{pad}", f"pad_token_id={pad} is not a token id of this model (0 <= id < "
                                                f"{self.vocab_size}); padding with {fallback} (the EOS id) instead")
        return fallback

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(path={str(self.path)!r}, model_type={self.manifest.get('model_type')!r}, "
                f"provider={self.provider!r}, vocab_size={self.vocab_size})")

    # ------------------------------------------------------------------ inputs
    def _check_ids(self, input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
        """ids [t] or [b, t] (ints), mask or None -> input_ids [b, t] int64, attention_mask [b, t] int64, checked."""
        try:
            ids = np.asarray(input_ids)
        except (ValueError, TypeError) as e:  # ragged rows, objects numpy cannot hold as one array
            raise InputError(f"input_ids: expected a [batch, length] array of token ids (rows of one length with "
                             f"attention_mask; ragged rows without it are padded): {e}") from None
        if ids.ndim == 1:
            ids = ids[None, :]
        if ids.ndim != 2 or ids.size == 0:
            raise InputError(f"input_ids: expected a non-empty [batch, length] array of token ids, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise InputError(f"input_ids: expected integer token ids, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise self._out_of_vocabulary(int(bad[0]))
        if attention_mask is None:
            mask = np.ones_like(ids, dtype=np.int64)
        else:
            try:
                mask = np.asarray(attention_mask)
            except (ValueError, TypeError) as e:  # ragged rows, objects numpy cannot hold as one array
                raise InputError(f"attention_mask: expected a [batch, length] array of 0 and 1 shaped as input_ids: "
                                 f"{e}") from None
            if mask.ndim == 1:
                mask = mask[None, :]
            if mask.shape != ids.shape:
                raise InputError(f"attention_mask: shape {mask.shape} != input_ids shape {ids.shape}")
            if not np.isin(mask, (0, 1)).all() or (mask.sum(-1) == 0).any():
                raise InputError("attention_mask: values must be 0 or 1 with at least one 1 per row")
        if not self.is_encoder_decoder and self.max_positions and ids.shape[1] > self.max_positions:
            raise InputError(f"inputs: the prompt has {ids.shape[1]} tokens; this model allows at most "
                             f"{self.max_positions} (max_positions)")
        return ids.astype(np.int64, copy=False), mask.astype(np.int64, copy=False)

    def _encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise ModelFileError(f"{self.path} has no tokenizer.json: pass token ids instead of text", str(self.path))
        if not isinstance(text, str):
            raise InputError(f"inputs: expected str, got {type(text).__name__}")
        if not text:
            raise InputError("inputs: the prompt is empty; give at least one character")
        ids = self._encode_raw(text, add_special_tokens)
        if not ids:
            raise InputError(f"inputs: the prompt {text!r} encodes to no tokens")
        return ids

    def _encode_raw(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def _rows(self, inputs) -> list[list[int]]:
        """str | list[str] | list[int] | list[list[int]] | 1-D/2-D array -> rows of ids (unpadded)."""
        if isinstance(inputs, str):
            return [self._encode(inputs)]
        if isinstance(inputs, np.ndarray):
            if inputs.ndim not in (1, 2) or (inputs.size and not np.issubdtype(inputs.dtype, np.integer)):
                raise InputError(f"inputs: expected a 1-D or 2-D array of integer token ids, got a {inputs.ndim}-D "
                                 f"array of {inputs.dtype}")
            inputs = inputs.tolist()
        if not isinstance(inputs, (list, tuple)) or len(inputs) == 0:
            raise InputError("inputs: expected a non-empty str, list of str, list of ids or list of id lists")
        if all(isinstance(x, str) for x in inputs):
            return [self._encode(x) for x in inputs]
        if all(_is_id(x) for x in inputs):
            return self._in_vocabulary([[int(x) for x in inputs]])
        if all(isinstance(x, (list, tuple, np.ndarray)) for x in inputs):
            if not all(_is_id(v) for x in inputs for v in (x.tolist() if isinstance(x, np.ndarray) else x)):
                raise InputError("inputs: a row holds something other than integer token ids (floats, bools, "
                                 "strings and nested lists are refused, not rounded)")
            rows = [[int(v) for v in x] for x in inputs]
            if any(len(r) == 0 for r in rows):
                raise InputError("inputs: a row of token ids is empty")
            return self._in_vocabulary(rows)
        raise InputError("inputs: mix of types; expected str, list of str, list of ids or list of id lists")

    def _in_vocabulary(self, rows: list[list[int]]) -> list[list[int]]:
        """Rows of Python ints -> the same rows, or InputError for an id outside the vocabulary (before they are
        written into int64 arrays, where an id past 2**63 would overflow)."""
        for row in rows:
            if row and (min(row) < 0 or max(row) >= self.vocab_size):
                raise self._out_of_vocabulary(next(v for v in row if not 0 <= v < self.vocab_size))
        return rows

    def _out_of_vocabulary(self, token_id: int) -> InputError:
        return InputError(f"input_ids: token id {token_id} is out of range; allowed: 0 <= id < {self.vocab_size}")

    def prepare_inputs(self, inputs, attention_mask=None, *, pad_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Any accepted input form -> input_ids [b, t] int64, attention_mask [b, t] int64 (checked).

        Rows of different lengths are padded with ``pad_id`` (default: the model's): on the left for decoder-only
        models, on the right for encoders.
        """
        if attention_mask is not None:
            return self._check_ids(inputs, attention_mask)
        rows = self._rows(inputs)
        ids, mask = pad_batch(rows, self.pad_id if pad_id is None else pad_id,
                              side="right" if self.is_encoder_decoder else "left")
        return self._check_ids(ids, mask)

    def resolve_config(self, params: dict) -> GenerationConfig:
        """kwargs -> the artifact's generation config updated with them, validated."""
        config = self.generation_config.replace(**params).validate()
        config.check_vocab(self.vocab_size)
        ignored = config.ignored_parameters()
        if ignored:  # transformers warns about these once too
            warn_once(f"ignored:{ignored}", f"generation parameters {ignored} have no effect with "
                                            f"do_sample={config.do_sample}, num_beams={config.num_beams}")
        return config

    def _call_inputs(self, inputs, attention_mask, config: GenerationConfig) -> tuple[np.ndarray, np.ndarray]:
        """generate's / stream's inputs -> ids, mask [b, t] (``prepare_inputs``), padded with the call's pad id and,
        for a padded id array given without a mask, masked as transformers' generate masks it."""
        return self.prepare_inputs(inputs, _mask_from_padding(inputs, attention_mask, config),
                                   pad_id=self.pad_for(config))

    # ------------------------------------------------------------------ generation
    def generate(self, inputs, *, attention_mask=None, streamer: Callable[[StepResult], None] | None = None,
                 assistant_model: "LanguageModel | None" = None, stopping_criteria=None,
                 **params) -> GenerationResult:
        """Generate from a prompt (see docs/design.md). params: transformers GenerationConfig names, plus the
        structured-output constraints json_schema / regex / choices / grammar / constraints (runtime/constraints.py).
        assistant_model: a smaller model of the same vocabulary proposing tokens (speculative decoding).
        stopping_criteria: callables (input_ids [n, t], scores) -> [n] bool, as transformers' (decoding/stopping.py's
        ``any_stop``); a row they stop finishes with reason "stop"."""
        if streamer is not None and not callable(streamer):
            raise ParameterError("streamer", f"got {type(streamer).__name__}; allowed: a callable taking each "
                                 "StepResult, or None")
        wanted = _take_constraints(params)
        config = self.resolve_config(params)
        ids, mask = self._call_inputs(inputs, attention_mask, config)
        constraints = _row_constraints(wanted, len(ids))
        if assistant_model is not None and config.num_beams > 1:
            raise ParameterError("assistant_model", "speculative decoding runs greedy and sampling only (num_beams=1)"
                                 ", as in transformers")
        if config.num_beams > 1:  # beam search, or beam sampling with do_sample=True
            if streamer is not None:
                raise ParameterError("streamer", "streaming is available for greedy and sampling, not num_beams > 1")
            return self._beam_generate(ids, mask, config, constraints, stopping_criteria)
        run = self._sample_run(ids, mask, config, stream_text=streamer is not None, constraints=constraints,
                               assistant=assistant_model, stopping_criteria=stopping_criteria)
        for step_results in run:
            if streamer is not None:
                for item in step_results:
                    streamer(item)
        return run.result

    def stream(self, inputs, *, attention_mask=None, assistant_model: "LanguageModel | None" = None,
               stopping_criteria=None, **params) -> Iterator[StepResult]:
        """An iterator of StepResults, one per generated token and row (greedy or sampling). The parameters and
        inputs are checked at the call (a ParameterError / InputError before any iteration); the model runs as it is
        iterated, and closing the iterator stops decoding."""
        wanted = _take_constraints(params)
        config = self.resolve_config(params)
        if config.num_beams > 1:
            raise ParameterError("num_beams", f"got {config.num_beams}; streaming supports num_beams=1 only")
        ids, mask = self._call_inputs(inputs, attention_mask, config)
        constraints = _row_constraints(wanted, len(ids))
        return self._stream(ids, mask, config, constraints, assistant_model, stopping_criteria)

    def _stream(self, ids, mask, config, constraints, assistant, stopping_criteria) -> Iterator[StepResult]:
        """``stream``'s iterator: the run starts at the first ``next``."""
        for step_results in self._sample_run(ids, mask, config, constraints=constraints, assistant=assistant,
                                             stopping_criteria=stopping_criteria):
            yield from step_results

    def _sample_run(self, ids: np.ndarray, mask: np.ndarray, config: GenerationConfig, *,
                    stream_text: bool = True, constraints=None, assistant=None,
                    stopping_criteria=None) -> "_SampleRun":
        from .decoding.candidates import check_speculation, proposer_for
        from .decoding.constrained_proposer import ConstrainedProposer
        from .decoding.stopping import any_stop
        from .decoding.sample import sample_steps
        from .decoding.speculative import SpeculationStats, speculative_steps
        n = config.num_return_sequences if config.do_sample else 1
        min_len, max_len = self._lengths(config, self.initial_sequences(ids).shape[1])  # refuse before any run
        speculate = check_speculation(self, config, assistant, rows=len(ids) * n)
        constraint = self._constraint_processor(config, constraints, n)  # compiled before any run too
        state, logits, sequences = self._start_expanded(ids, mask, n, max_len, config)
        t0 = sequences.shape[1]
        masking = constraint and (FollowingConstraint(constraint, t0) if speculate else constraint)
        processors = build_processors(config, input_length=t0, max_length=max_len,
                                      is_encoder_decoder=self.is_encoder_decoder,
                                      logits_processor=[masking] if constraint else None)
        if constraint and not speculate:  # the state's advance feeds the matchers (speculating: masking catches up)
            state = ConstrainedState(state, constraint)
        rng = np.random.default_rng(config.seed) if config.do_sample else None
        common = dict(processors=processors, do_sample=bool(config.do_sample), rng=rng,
                      eos_token_ids=config.eos_token_ids, pad_token_id=self.pad_for(config), max_length=max_len,
                      stop_check=any_stop(self._stop_check(config, sequences.shape[1]), stopping_criteria))
        if not speculate:
            return _SampleRun(self, config, sequences, stream_text, constraint,
                              sample_steps(state, sequences, logits, **common))
        unconstrained = processors if constraint is None else build_processors(  # the proposals' (see
            config, input_length=t0, max_length=max_len, is_encoder_decoder=False)  # constrained_proposer.py)
        proposer = proposer_for(self, config, assistant, ids, mask, processors=unconstrained, rng=rng,
                                max_length=max_len, stop_check=common["stop_check"])
        if constraint:
            proposer = ConstrainedProposer(proposer, constraint, model=self, max_length=max_len,
                                           eos_token_ids=config.eos_token_ids, catch_up=masking.catch_up)
        stats = SpeculationStats()
        return _SampleRun(self, config, sequences, stream_text, constraint,
                          speculative_steps(state, sequences, logits, proposer=proposer, stats=stats, **common),
                          speculation=stats, proposer=proposer)

    def _start_expanded(self, ids: np.ndarray, mask: np.ndarray, n: int, max_length: int,
                        config: GenerationConfig):
        """ids/mask [b, t] -> (state, logits [b*n, V], sequences [b*n, t0]): each row run once (the prompt's
        prefill, the encoder) and then repeated n times for beams / num_return_sequences (row i -> rows i*n..);
        ``max_length``: the length rows may reach (the state's room for them); a seq2seq model's decoder starts
        with the config's decoder_start_token_id."""
        start = config.decoder_start_token_id
        state, logits = self.start(ids, mask, max_length=max_length, decoder_start_token_id=start)
        sequences = self.initial_sequences(ids, start)
        if n > 1:
            state.select(np.repeat(np.arange(len(ids)), n))
            logits, sequences = np.repeat(logits, n, axis=0), np.repeat(sequences, n, axis=0)
        return state, logits, sequences

    def _lengths(self, config: GenerationConfig, input_length: int) -> tuple[int, int]:
        """(min_length, max_length) in total ids; rejects a max_length beyond the model's positions."""
        limit = None if self.is_encoder_decoder else self.max_positions
        min_len, max_len = config.lengths(input_length, max_positions=limit)
        if limit and max_len > limit:
            if config.max_new_tokens is None:  # the call's (or the model's) max_length asks for it
                raise ParameterError("max_length", f"got {max_len} total tokens, beyond the model's max_positions "
                                     f"{limit}; allowed: max_length <= {limit}")
            if input_length >= limit:  # no max_new_tokens could fit: the prompt is what is too long
                raise ParameterError("inputs", f"the prompt has {input_length} tokens and already fills the model's "
                                     f"max_positions ({limit}); allowed: at most {limit - 1} prompt tokens")
            raise ParameterError("max_new_tokens", f"prompt ({input_length} tokens) + new tokens = {max_len} "
                                 f"exceeds the model's max_positions {limit}; allowed: at most "
                                 f"{limit - input_length} new tokens")
        if max_len <= input_length:  # transformers raises here too: nothing could be generated
            what = "decoder_input_ids" if self.is_encoder_decoder else "the prompt"
            if limit and input_length >= limit and config.max_new_tokens is None:
                raise ParameterError("max_length", f"{what} has {input_length} tokens and already fills the "
                                     f"model's max_positions ({limit}); nothing can be generated")
            raise ParameterError("max_length", f"got {max_len} total tokens but {what} already has "
                                 f"{input_length}; allowed: max_length > {input_length}, or set max_new_tokens")
        return min_len, max_len

    def _constraint_processor(self, config: GenerationConfig, constraints, n: int):
        """One Constraint (or None) per prompt row -> a ConstraintProcessor over the rows expanded n times
        (row i -> rows i*n..), or None when no row is constrained."""
        if constraints is None:
            return None
        kind = next(c.kind for c in constraints if c is not None)
        engine = engine_for(self, config.eos_token_ids, kind)
        return ConstraintProcessor(engine, [c for c in constraints for _ in range(n)])

    def _stop_check(self, config: GenerationConfig, t0: int | None = None):
        """-> the stop-string criterion (ids [n, t] int64 -> [n] bool), or None without stop strings: ``stop``'s
        (OpenAI's rule: the decoded new text after the ``t0`` prompt ids) or ``stop_strings``' (transformers'
        StopStringCriteria: a stop string ending in the last token, prompt tail included)."""
        stops = config.stop_list()
        if not stops:
            return None
        name = "stop" if config.stop else "stop_strings"
        if self.tokenizer is None:
            raise ParameterError(name, f"{self.path} has no tokenizer.json, so stop strings cannot be "
                                 f"matched; generate without {name} (eos_token_id still works)")
        if config.stop:
            from .decoding.stopping import NewTextStopMatcher
            return NewTextStopMatcher(self.tokenizer.tokenizer, stops, t0)
        cached = getattr(self, "_stop_matcher", None)  # the last stop-string set's matcher keeps its token strings
        if cached is None or cached.stop_strings != tuple(stops):
            from .decoding.stopping import StopStringMatcher
            cached = self._stop_matcher = StopStringMatcher(self.tokenizer.tokenizer, stops)
        return cached

    def _text(self, new_ids, config: GenerationConfig, prompt_ids=()) -> str:
        """New ids of one row -> the text they add after the prompt (``prompt_ids``: the row's ids before them;
        ``streaming.decode_after``) without pad/EOS (special tokens skipped), not cut."""
        if self.tokenizer is None:
            return ""
        eos = set(config.eos_token_ids)
        ids = [int(i) for i in new_ids]
        for k, i in enumerate(ids):
            if i in eos:
                ids = ids[:k]
                break
        return decode_after(self.tokenizer, prompt_ids, ids)

    def _finish_text(self, new_ids, config: GenerationConfig, reason: str | None = None,
                     prompt_ids=None) -> str:
        """New ids -> final text, the text they add after the prompt (prompt_ids: the row's ids before the new
        ones). A row that stopped on a stop string (reason 'stop') is cut where the match starts; a match that
        starts in the prompt leaves ''."""
        prompt = [] if prompt_ids is None else [int(i) for i in prompt_ids]
        if reason == "stop" and self.tokenizer is not None and config.stop_list():
            cut = self._stop_check(config).cut(
                lambda ids: decode_after(self.tokenizer, prompt, ids), prompt + [int(i) for i in new_ids],
                len(prompt), self.tokenizer.special_ids)
            if cut is not None:
                return cut
        return self._text(new_ids, config, prompt)

    def _cut_ids(self, texts: list[str], reasons: list[str], config: GenerationConfig) -> list | None:
        """Per row: the ids of its returned text where a stop string ended it (the text cut where the match starts,
        encoded again), else None; None for all when the call has no stop strings."""
        if self.tokenizer is None or not config.stop_list():
            return None
        return [self._encode_raw(t, False) if reason == "stop" else None for t, reason in zip(texts, reasons)]

    def _beam_generate(self, ids: np.ndarray, mask: np.ndarray, config: GenerationConfig,
                       constraints=None, stopping_criteria=None) -> GenerationResult:
        from .decoding.beam import beam_search
        from .decoding.stopping import any_stop
        nb = config.num_beams
        _, max_len = self._lengths(config, self.initial_sequences(ids).shape[1])  # refuse before any run
        constraint = self._constraint_processor(config, constraints, nb)
        state, logits, sequences = self._start_expanded(ids, mask, nb, max_len, config)
        t0 = sequences.shape[1]
        processors = build_processors(config, input_length=t0, max_length=max_len,
                                      is_encoder_decoder=self.is_encoder_decoder,
                                      logits_processor=[constraint] if constraint else None)
        state = ConstrainedState(state, constraint) if constraint else state
        out = beam_search(state, sequences, logits, num_beams=nb, processors=processors,
                          eos_token_ids=config.eos_token_ids, pad_token_id=self.pad_for(config), max_length=max_len,
                          length_penalty=1.0 if config.length_penalty is None else config.length_penalty,  # None: off
                          early_stopping=config.early_stopping,
                          num_return_sequences=config.num_return_sequences, output_scores=bool(config.output_scores),
                          output_logits=bool(config.output_logits), decoder_prompt_len=t0,
                          stopping_criteria=any_stop(self._stop_check(config, t0), stopping_criteria),
                          rng=np.random.default_rng(config.seed) if config.do_sample else None)
        generated = (out.beam_indices != -1).sum(axis=1)  # exact new length of each row (the rest is fill)
        new = [row[t0:t0 + n].tolist() for row, n in zip(out.sequences, generated)]
        texts = [self._finish_text(r, config, reason, row[:t0])
                 for r, reason, row in zip(new, out.finish_reasons, out.sequences)]
        r = config.num_return_sequences
        return GenerationResult(sequences=out.sequences, text=texts,
                                finish_reasons=list(out.finish_reasons), new_tokens=new, scores=out.scores,
                                logits=out.logits, sequences_scores=out.sequences_scores, beam_indices=out.beam_indices,
                                constraint_satisfied=_satisfied(
                                    constraint, constraints and [c for c in constraints for _ in range(r)], new,
                                    lambda: self._cut_ids(texts, out.finish_reasons, config)))

    # ------------------------------------------------------------------ inspection and scoring
    def next_token_distribution(self, text, *, top_k: int = 10) -> TokenDistribution:
        """Prompt -> the top_k most likely next tokens with probabilities (softmax of the raw logits)."""
        if not isinstance(top_k, numbers.Integral) or isinstance(top_k, (bool, np.bool_)) or top_k < 1:
            raise ParameterError("top_k", f"got {top_k!r}; allowed: an int >= 1")
        top_k = int(top_k)
        ids, mask = self.prepare_inputs(text)
        if len(ids) != 1:  # one distribution per call: a batch's other rows would be dropped silently
            raise ParameterError("text", f"got {len(ids)} prompts; allowed: one prompt (a string, or one row of "
                                 "token ids); call once per prompt")
        _, logits = self.start(ids, mask)
        probs = np.exp(log_softmax(logits[0].astype(np.float64)))
        top = np.argsort(-probs, kind="stable")[:min(top_k, len(probs))]
        tokens = [self.tokenizer.decode([int(t)], skip_special_tokens=False) if self.tokenizer else str(int(t))
                  for t in top]
        return TokenDistribution(text if isinstance(text, str) else str(text), [int(t) for t in top], tokens,
                                 [float(probs[t]) for t in top])

    def score(self, inputs, *, targets=None, prepend_bos: bool = False, append_eos: bool = False) -> ScoringResult:
        """Per-token log-probs and their sums.

        Decoder-only: log p(ids[i] | ids[:i]) for every token but the first (prepend_bos=True scores the first
        token too, given BOS; append_eos=True adds an EOS to score). Seq2seq: `targets` is required and the result
        is log p(target | source); target text is encoded with the tokenizer's special tokens (T5 appends </s>).
        """
        cfg = self.generation_config
        for name, flag in (("prepend_bos", prepend_bos), ("append_eos", append_eos)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ParameterError(name, f"got {flag!r}; allowed: True or False")
        if self.is_encoder_decoder:
            if targets is None:
                raise InputError("targets: required for an encoder-decoder model (score(source, target))")
            if prepend_bos:
                raise ParameterError("prepend_bos", "only for decoder-only models; a seq2seq target starts after "
                                     "the decoder start token")
            sources = self._rows(inputs)
            try:
                tgt = self._rows(targets)
            except InputError as exc:  # _rows names inputs / input_ids: these are the targets
                raise exc.naming("targets") from None
            if len(tgt) != len(sources):
                raise InputError(f"targets: {len(tgt)} rows for {len(sources)} sources")
            if append_eos:
                if not cfg.eos_token_ids:
                    raise ParameterError("append_eos", "this model has no eos_token_id")
                tgt = [t if t[-1] in cfg.eos_token_ids else t + cfg.eos_token_ids[:1] for t in tgt]
            logps = self._score_pairs(sources, tgt)
        else:
            if targets is not None:
                raise InputError("targets: only for encoder-decoder models; pass the whole text as inputs")
            tgt = self._rows(inputs)
            if prepend_bos:  # never a second BOS: Llama tokenizers already put one
                if cfg.bos_token_id is None:
                    raise ParameterError("prepend_bos", "this model has no bos_token_id")
                tgt = [t if t[0] == cfg.bos_token_id else [int(cfg.bos_token_id)] + t for t in tgt]
            if append_eos:  # never a second EOS
                if not cfg.eos_token_ids:
                    raise ParameterError("append_eos", "this model has no eos_token_id")
                tgt = [t if t[-1] in cfg.eos_token_ids else t + cfg.eos_token_ids[:1] for t in tgt]
            if any(len(t) < 2 for t in tgt):
                raise InputError("inputs: scoring needs at least 2 tokens per row (or prepend_bos=True)")
            self._check_ids(pad_batch(tgt, self.pad_id)[0], None)
            logps = self._score_batch(tgt)
            tgt = [t[1:] for t in tgt]
        return ScoringResult(tokens=tgt, token_logprobs=logps,
                             sequence_logprobs=np.array([float(np.sum(lp, dtype=np.float64)) for lp in logps]))

    def embed(self, inputs, *, pooling: str | None = None, normalize: bool = True, batch_size: int = 16,
              truncate: bool = False) -> EmbeddingResult:
        """One vector per input row (``runtime/embedding.py``): the model's last hidden states pooled over the row's
        tokens. ``pooling``: 'mean' | 'cls' | 'last' (default: the artifact's own, where its GGUF or
        sentence-transformers files named one, else 'mean'); ``normalize``: unit length (as OpenAI and llama.cpp);
        ``batch_size``: rows per forward pass; ``truncate``: a row longer than the model's context is cut to it (its
        first tokens, and the [SEP] / EOS the tokenizer appends kept last: ``embedding.truncated``; token_counts
        then count what was embedded) instead of refused. Text is encoded with the tokenizer's special tokens, as
        ``generate`` encodes a prompt. Decoder-only models on the fused graph (the default export)."""
        from .embedding import check_batch_size, check_pooling, embed_rows

        pooling = check_pooling(self.default_pooling if pooling is None else pooling)
        if not isinstance(normalize, (bool, np.bool_)):
            raise ParameterError("normalize", f"got {normalize!r}; allowed: True or False")
        batch_size = check_batch_size(batch_size)
        if not isinstance(truncate, (bool, np.bool_)):
            raise ParameterError("truncate", f"got {truncate!r}; allowed: True or False")
        self.check_embeddings()
        rows = self._indexed_rows(inputs, truncate=bool(truncate))
        vectors = embed_rows(self, rows, pooling, 2 if normalize else -1, batch_size)
        return EmbeddingResult(vectors, [len(r) for r in rows], pooling, bool(normalize))

    def rerank(self, query: str, documents: list[str], **kwargs):
        """A language model does not rerank: ``RerankerError`` (a reranker is an encoder artifact, EncoderEmbedder)."""
        kind = "a seq2seq language model" if self.is_encoder_decoder else "a language model"
        raise RerankerError(f"{self.path}: rerank needs a reranker (a GGUF with pooling_type 4, rank, and its "
                            f"classifier head); this artifact is {kind}", str(self.path))

    def _indexed_rows(self, inputs, truncate: bool = False) -> list[list[int]]:
        """``_rows`` for ``embed``, each row checked (ids in the vocabulary, within max_positions, or with
        ``truncate`` cut to it first); a list's bad item is named by its index (``inputs[7]: ...``): among 500 texts
        the refused one must be found."""
        from .embedding import appended_ids, truncated

        limit = self.max_positions if truncate else None
        tail = appended_ids(self.tokenizer) if limit else []

        def cut(row: list[int]) -> list[int]:
            return truncated(list(row), limit, tail) if limit else row

        def check(row: list[int]) -> None:
            if self.max_positions and len(row) > self.max_positions:  # not truncate: a row past the context
                raise InputError(f"inputs: the input has {len(row)} tokens; this model allows at most "
                                 f"{self.max_positions} (max_positions); truncate=True (onnxlm embed --truncate) "
                                 "cuts it to that")
            self._check_ids([row], None)

        items = inputs if isinstance(inputs, (list, tuple)) and inputs and (
            all(isinstance(x, str) for x in inputs) or all(isinstance(x, (list, tuple, np.ndarray)) for x in inputs)
        ) else None
        if items is None:
            rows = [cut(row) for row in self._rows(inputs)]
            for row in rows:
                check(row)
            return rows
        rows = []
        for i, item in enumerate(items):
            try:
                row = cut(self._rows(item if isinstance(item, str) else [item])[0])
                check(row)
            except InputError as exc:
                raise exc.naming(f"inputs[{i}]") from None
            rows.append(row)
        return rows

    @property
    def default_pooling(self) -> str:
        """The pooling ``embed`` uses unless told: the manifest's ``pooling`` (the model's own), else 'mean'."""
        from .embedding import manifest_pooling

        return manifest_pooling(self.manifest)

    def check_embeddings(self) -> None:
        """Raise ModelFileError unless this artifact's graph gives the hidden states ``embed`` pools."""
        from .embedding import manifest_refusal

        raise ModelFileError(manifest_refusal(self.path, self.manifest) or f"{self.path}: cannot embed",
                             str(self.path))

    def chat(self, messages: list[dict], *, chat_template_kwargs: dict | None = None, **params) -> GenerationResult:
        """Render messages with the artifact's chat template and generate the assistant's reply.

        As transformers' `apply_chat_template(..., tokenize=True)`, the rendered prompt is encoded without the
        tokenizer's special tokens: a template that writes `{{ bos_token }}` gives one BOS, not two.
        ``chat_template_kwargs``: extra template variables (e.g. Qwen3's ``{"enable_thinking": False}``)."""
        from .chat import check_template_vars
        variables = check_template_vars(chat_template_kwargs)
        return self.generate([self.render_chat(messages, tokenize=True, **variables)], **params)

    def render_chat(self, messages: list[dict], *, tokenize: bool = False, continue_final_message: bool = False,
                    add_generation_prompt: bool = True, **template_vars) -> str | list[int]:
        """messages [{'role', 'content'}] -> prompt text through the artifact's chat template (jinja2), or with
        tokenize=True its token ids, encoded with add_special_tokens=False (the template writes any BOS).
        ``template_vars`` become template variables, as in transformers' apply_chat_template (e.g. ``tools``).
        ``continue_final_message``: the prompt ends inside the last message (an assistant prefill the reply
        continues) instead of opening a new assistant turn, as transformers' argument of that name;
        ``add_generation_prompt=False``: no new assistant turn opened either (the conversation as it stands)."""
        from .chat import RENDER_VARS, render_chat
        for name, flag in (("tokenize", tokenize), ("continue_final_message", continue_final_message),
                           ("add_generation_prompt", add_generation_prompt)):
            if not isinstance(flag, (bool, np.bool_)):
                raise ParameterError(name, f"got {flag!r}; allowed: True or False")
        taken = sorted(set(template_vars) & set(RENDER_VARS))
        if taken:
            raise ParameterError(taken[0], f"set by render_chat itself ({', '.join(RENDER_VARS)}); it cannot be a "
                                           "template variable here")
        if not self.chat_template:
            raise ModelFileError(f"{self.path}: {no_chat_template(self.manifest)}",
                                 str(self.path / "chat_template.jinja"))
        specials = self.manifest.get("special_tokens", {})
        text = render_chat(self.chat_template, messages, add_generation_prompt=bool(add_generation_prompt),
                           bos_token=specials.get("bos_token", "") or "", eos_token=specials.get("eos_token", "") or "",
                           continue_final_message=bool(continue_final_message), **template_vars)
        return self._encode(text, add_special_tokens=False) if tokenize else text


class _SampleRun:
    """Iterates a sampling/greedy run as lists of StepResult (one per active row) and builds the final result."""

    def __init__(self, model: LanguageModel, config: GenerationConfig, sequences: np.ndarray, stream_text: bool,
                 constraint, steps, speculation=None, proposer=None):
        self.model, self.config, self.steps, self.stream_text = model, config, steps, stream_text
        self.speculation, self.proposer = speculation, proposer  # SpeculationStats and candidate generator, or None
        self.constraint = constraint  # ConstraintProcessor or None; its .constraints: one per row (as expanded)
        self.constraints = None if constraint is None else constraint.constraints
        self.t0, self.b = sequences.shape[1], len(sequences)
        self.tokens: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.reasons: list[str | None] = [None] * self.b
        self.new_ids: list[list[int]] = [[] for _ in range(self.b)]
        self.sequences = sequences
        tokenizer = model.tokenizer.tokenizer if model.tokenizer is not None else None
        self.texts = ([IncrementalText(tokenizer, stops=config.stop_list(), context=prompt) for prompt in sequences]
                      if stream_text else [])
        self.final_text: list[str | None] = [None] * self.b  # set when a row finishes
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[list[StepResult]]:
        for step in self.steps:
            if self.constraint is not None:  # a row ended by a stop string is no conflict at its next mask
                self.constraint.retire(step.finished)
            self.tokens.append(step.tokens)
            if self.config.output_scores:
                self.scores.append(step.scores)
            if self.config.output_logits:
                self.logits.append(step.logits)
            out = []
            for row in np.flatnonzero(step.active):
                tok = int(step.tokens[row])
                self.new_ids[row].append(tok)
                if step.finished[row]:
                    self.reasons[row] = step.reasons[row]
                    self.final_text[row] = self.model._finish_text(self.new_ids[row], self.config,
                                                                   step.reasons[row], self.sequences[row])
                if not self.stream_text:  # plain generate: text is decoded once, at the end
                    piece = ""
                elif step.finished[row]:  # the rest of the final (cut) text; never text past a stop string
                    piece = self.texts[row].finish(self.final_text[row])
                else:
                    piece = self.texts[row].push(tok)
                out.append(StepResult(step.index, int(row), tok, piece, bool(step.finished[row]), step.reasons[row]))
            yield out
        if self.proposer is not None:
            self.proposer.close()
        self.result = self._result()

    def _result(self) -> GenerationResult:
        new = np.stack(self.tokens, axis=1) if self.tokens else np.zeros((self.b, 0), np.int64)
        sequences = np.concatenate([self.sequences, new], axis=1)
        reasons = [r or "length" for r in self.reasons]
        texts = [t if t is not None else self.model._finish_text(ids, self.config, None, prompt)
                 for t, ids, prompt in zip(self.final_text, self.new_ids, self.sequences)]
        return GenerationResult(sequences=sequences, finish_reasons=reasons, new_tokens=self.new_ids, text=texts,
                                scores=self.scores if self.config.output_scores else None,
                                logits=self.logits if self.config.output_logits else None,
                                constraint_satisfied=_satisfied(
                                    self.constraint, self.constraints, self.new_ids,
                                    lambda: self.model._cut_ids(texts, reasons, self.config)),
                                speculation=self.speculation)


def _take_constraints(params: dict) -> dict:
    """Remove the structured-output parameters (json_schema, regex, choices, grammar, constraints) from params."""
    return {k: params.pop(k) for k in (*CONSTRAINT_KINDS, "constraints") if k in params}


def _row_constraints(wanted: dict, batch: int):
    """-> one Constraint (or None) per prompt row, or None without constraints (checked before any run)."""
    return pop_constraints(dict(wanted), batch) if wanted else None


def _satisfied(processor, constraints, new_ids, cut_ids=None) -> list | None:
    """Per returned row: does its new text (up to EOS) match its whole constraint? None: unconstrained row.
    ``cut_ids()`` (asked only for a constrained call): per row, the ids of the text a stop string cut (the returned
    text encoded again), else None: a cut row is judged by what it returns, not by the tokens past the cut."""
    if processor is None:
        return None
    returned = (cut_ids() if cut_ids else None) or [None] * len(new_ids)
    return [None if c is None else processor.engine.satisfied(c, ids if cut is None else cut)
            for c, ids, cut in zip(constraints, new_ids, returned)]




def _is_id(x) -> bool:
    """A token id as the inputs may give one: a Python or numpy integer, never a bool (True would be id 1)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _mask_from_padding(inputs, attention_mask, config: GenerationConfig):
    """A [b, t] id array given without attention_mask -> ``ids != pad_token_id`` where transformers' generate infers
    it (``_prepare_attention_mask_for_generation``: the config's pad id occurs in the ids and is no EOS id), else
    ``attention_mask`` as given (lists of id rows are unpadded rows: a pad id there is a token)."""
    pad = config.pad_token_id
    if (attention_mask is not None or not isinstance(inputs, np.ndarray) or inputs.ndim != 2 or pad is None
            or not np.issubdtype(inputs.dtype, np.integer) or pad in config.eos_token_ids):
        return attention_mask
    mask = (inputs != pad).astype(np.int64)
    empty = np.flatnonzero(mask.sum(axis=1) == 0)
    if empty.size:  # every id of the row is the pad id: transformers' inferred mask would hold nothing of it
        raise InputError(f"input_ids: row {int(empty[0])} is all pad_token_id ({pad}), so the attention_mask "
                         "inferred from the padding (transformers' rule for an id array) holds none of it; pass "
                         "attention_mask, or the rows as lists")
    return mask if not mask.all() else attention_mask

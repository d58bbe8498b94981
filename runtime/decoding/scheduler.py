"""Continuous batching: requests join and leave one running batch between decoding steps.

A request is one prompt with its own GenerationConfig (greedy or sampling, ``num_return_sequences`` rows). ``add``
queues it; each ``step``:

1. feeds the tokens picked at the previous step to the rows still generating (one forward pass, ``state.advance``);
2. admits waiting requests while the batch has room: they are prefilled together (one ``model.start`` on their
   prompts, left padded; each row then repeated n times as ``LanguageModel._start_expanded`` does) and that state
   joins the running one through the state class's ``concat`` (plain layout: the shorter rows left padded and
   masked; fused layout: rows copied into buffers that hold the longest one), so rows of different lengths share
   the batch and keep their own positions;
3. picks one token for every active row with that request's own processors, sampling parameters and random stream
   (one ``np.random.default_rng(seed)`` per request, drawing one uniform per row of the request per step, finished
   rows included, exactly as the solo loop ``sample_steps`` draws), decides which rows finish (eos, stop string,
   length) as ``sample_steps`` does, and reports the tokens;
4. drops finished rows from the state at once (``state.select``); cancelled requests' rows are dropped at the
   start of the next step, before its forward pass.

A request decoding alone may speculate instead (prompt lookup, or a draft model's proposals: several of its
positions picked per pass; see scheduler_speculation.py and scheduler_draft.py), with the same tokens.

So each request's ids are what ``model.generate`` gives for it alone (greedy: identical ids, up to the float
reduction order of a different batch shape; sampling with a seed: the same draws). On a quantized variant's int8
activations (accuracy level 4) that order is more than rounding: onnxruntime's kernels round a one-row pass's
activations otherwise than a pass of several rows (docs/design.md, "Rows per pass"), logits move by up to ~1 and a
greedy or seeded answer can part from the solo one where two tokens were close.

Seq2seq states have no ``concat`` (the decoder self-attention of the merged graph takes no mask, so rows of
different decoder lengths cannot share a batch): an encoder-decoder request is admitted only into an empty batch,
so seq2seq requests are served one at a time (each with all its n rows). Beam search is not scheduled here:
callers run ``model.generate(num_beams=...)`` on its own.
"""
from __future__ import annotations

import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np

from ..constraints import ConstraintProcessor, engine_for
from ..errors import ParameterError
from ..generation_config import GenerationConfig
from ..prefix_cache import PrefixCache, feed_rest
from ..processors import build_processors, greedy_tokens, log_softmax, sample_tokens, top_logprobs
from ..streaming import IncrementalText
from ..tokenizer import pad_batch
from .scheduler_prefill import PromptInParts, feed_part
from .scheduler_draft import ServerDraft
from .scheduler_speculation import proposer_for_request, speculative_pass
from .speculative import SpeculationStats


@dataclass
class TokenEvent:
    """One new token of one row: row (0..n-1 within its request), token id, text increment (streaming: joins to the
    final text), finished (the row ends here), reason ('eos' | 'stop' | 'length' | None), logprob of the token
    under the raw logits and the top ``logprobs`` alternatives [(id, logprob)] (when the request asked)."""

    row: int
    token_id: int
    text: str
    finished: bool = False
    reason: str | None = None
    logprob: float | None = None
    top_logprobs: list | None = None


@dataclass
class Request:
    """A request in the scheduler: prompt ids [t], its resolved config and, once admitted, its rows' progress.
    ``logprobs``: top alternatives reported per token (None: no logprobs). ``extra_processors`` run before the
    config's processors (e.g. OpenAI's presence/frequency penalties). ``constraint``: a ``runtime.constraints.Constraint``
    every row of the request follows (structured output); its mask runs after the other processors, before the
    sampling warpers, as in ``generate``. ``samplers``: processors run last, after the config's processors and the
    mask, in their order (llama.cpp's sampler chain, ``runtime/llama_samplers.py``; the config then sets no
    warpers of its own)."""

    ids: list[int]
    config: GenerationConfig
    logprobs: int | None = None
    extra_processors: list = field(default_factory=list)
    constraint: object | None = None
    samplers: list = field(default_factory=list)
    # ids the answer is expected to follow closely (OpenAI's predicted outputs): proposals while the request decodes
    # alone (scheduler_speculation.py); None: none
    prediction: list[int] | None = None
    # its own draft settings over the scheduler's draft model's (scheduler_draft.py; llama.cpp's per-request
    # speculative.n_max / n_min / p_min): {"max_tokens", "min_tokens", "p_min"}, any of them; None: the scheduler's
    draft: dict | None = None
    # set by the scheduler
    n: int = 1
    t0: int = 0  # ids before the first new one (causal: the prompt; seq2seq: the start token)
    error: BaseException | None = None  # set when the request failed inside the model
    cancelled: bool = False
    done: bool = False
    sequences: np.ndarray | None = None  # [n, t0 + steps] int64, all rows (finished rows get pad, as the solo loop)
    active: np.ndarray | None = None  # [n] bool
    new_ids: list = field(default_factory=list)  # per row: new ids so far
    reasons: list = field(default_factory=list)  # per row: finish reason or None
    final_text: list = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose keys/values came from the prefix cache
    proposed: int = 0  # tokens its prediction proposed and its passes checked (scheduler_speculation.py)
    accepted: int = 0  # ... and kept: OpenAI's accepted_prediction_tokens
    speculated: int = 0  # tokens any of its speculative passes checked (prediction, prompt lookup, draft)
    speculated_accepted: int = 0  # ... and kept (each one a forward pass saved): llama.cpp's draft_n(_accepted)
    # time.perf_counter() when its prefill began, its first tokens were picked, it finished (None until then)
    prefill_at: float | None = None
    first_token_at: float | None = None
    done_at: float | None = None

    @property
    def prompt_tokens(self) -> int:
        return len(self.ids)


class _Uniforms:
    """Stands in for a Generator in ``sample_tokens``: returns uniforms already drawn (one per active row)."""

    def __init__(self, u: np.ndarray):
        self.u = u

    def random(self, n: int) -> np.ndarray:
        return self.u[:n]


class _Run:
    """Per-request decoding objects (processors, rng, stop check, text streams) made at admission."""

    def __init__(self, model, req: Request, t0: int, max_length: int, prompt_lookup: int | None = None,
                 draft=None):
        c = req.config
        # the request's own matchers, one per active row (in req.active order): rows that finish are dropped from
        # it in _pick, so the batch's joins and drops never reorder them
        self.constraint = None
        if req.constraint is not None:
            engine = engine_for(model, c.eos_token_ids, req.constraint.kind)
            self.constraint = ConstraintProcessor(engine, [req.constraint] * req.n)
        self.processors = build_processors(c, input_length=t0, max_length=max_length,
                                           is_encoder_decoder=model.is_encoder_decoder,
                                           logits_processor=[self.constraint] if self.constraint else None)
        self.extra = list(req.extra_processors)
        self.samplers = list(req.samplers)
        self.rng = np.random.default_rng(c.seed) if c.do_sample else None
        self.eos = np.asarray(c.eos_token_ids, dtype=np.int64)
        self.pad = model.pad_for(c)
        self.max_length = max_length
        self.stop_check = model._stop_check(c, t0)
        tok = model.tokenizer.tokenizer if model.tokenizer is not None else None
        prompt = () if model.is_encoder_decoder else req.ids  # the text continues the prompt's (decode_after)
        self.streams = [IncrementalText(tok, stops=c.stop_list(), context=prompt) for _ in range(req.n)]
        # prompt lookup or the draft model while the request decodes alone (scheduler_speculation.py), or None;
        # it proposes under the processors but the constraint, whose matcher then cuts the proposal
        unconstrained = self.processors if self.constraint is None else build_processors(
            c, input_length=t0, max_length=max_length, is_encoder_decoder=model.is_encoder_decoder)
        self.proposer = proposer_for_request(model, req, unconstrained, max_length, prompt_lookup, draft,
                                             self.constraint)

    def scores(self, sequences: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """sequences [k, t] int64, logits [k, V] float32 -> processed scores [k, V] float32."""
        for p in self.extra:
            logits = p(sequences, logits)
        scores = self.processors(sequences, logits)
        for p in self.samplers:
            scores = p(sequences, scores)
        return scores


class Scheduler:
    """Runs many requests on one model: ``add`` queues, ``step`` advances every admitted row by one token.
    Not thread-safe: one thread owns it (the server's engine thread)."""

    def __init__(self, model, max_rows: int = 32, prefix_cache: PrefixCache | None = None,
                 prompt_lookup: int | None = None, prefill_chunk: int | None = None, draft=None):
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ParameterError("max_rows", f"got {max_rows!r}; must be an integer >= 1")
        if prompt_lookup is not None and (not isinstance(prompt_lookup, int) or prompt_lookup < 0):
            raise ParameterError("prompt_lookup", f"got {prompt_lookup!r}; must be an integer >= 0 (0 or None: off)")
        if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int)
                                          or prefill_chunk < 0):
            raise ParameterError("prefill_chunk", f"got {prefill_chunk!r}; must be an integer >= 0 (0 or None: off)")
        self.model, self.max_rows = model, max_rows
        # a longer prompt arriving while rows decode is prefilled this many tokens a step (scheduler_prefill.py)
        self.prefill_chunk = prefill_chunk if prefill_chunk and not model.is_encoder_decoder else None
        self.prefilling: list[PromptInParts] = []
        self.prefill_parts = 0  # parts fed so far (a count for the server's /metrics)
        # tokens a request decoding alone proposes by prompt lookup (scheduler_speculation.py; a request's own
        # prompt_lookup_num_tokens wins), and what those speculative passes did
        self.prompt_lookup, self.speculation = prompt_lookup or None, SpeculationStats()
        # a draft model's proposals instead (scheduler_draft.py's ServerDraft: the server's --draft), or None
        if draft is not None and not isinstance(draft, ServerDraft):
            raise ParameterError("draft", f"got {type(draft).__name__}; pass a ServerDraft(draft_model, model, ...)")
        if draft is not None and self.prompt_lookup:
            raise ParameterError("draft", "pass either draft or prompt_lookup, not both (a request's own "
                                 "prompt_lookup_num_tokens still asks for prompt lookup)")
        self.draft = draft
        # keys/values of recent sequences (runtime/prefix_cache.py); causal models only
        self.prefix_cache = prefix_cache if prefix_cache is not None and not model.is_encoder_decoder else None
        self.waiting: list[Request] = []
        self.requests: list[Request] = []  # admitted, in batch order
        self.rows: list[tuple[Request, int]] = []  # state row -> (request, row within it)
        self.state = None
        self.logits: np.ndarray | None = None  # [len(rows), V] next-token logits of every state row
        self._runs: dict[int, _Run] = {}
        self._positions: dict = {}
        self._next: np.ndarray | None = None  # tokens picked for the rows, not yet fed (the next step feeds them)
        self.failed: list[Request] = []  # requests whose prefill or pick raised (req.error); the caller empties it
        # (ids, views of their keys/values, next-token logits after them, the state they view, a finished answer's
        # prompt length or None, the recurrent state after them: a copy, or None, and after shorter prefixes:
        # {length: state}) the last step marked for the prefix cache, copied in by store_snapshots
        self._snapshots: list[tuple] = []

    # ------------------------------------------------------------------ queue
    def prepare(self, req: Request) -> Request:
        """Check a request before it is queued (raises InputError/ParameterError): ids in the vocabulary, lengths
        within the model's positions, config valid. Sets ``req.n``."""
        c = req.config
        if c.num_beams > 1:
            raise ParameterError("num_beams", "the scheduler runs greedy and sampling only; run beam search alone")
        ids, _ = self.model._check_ids(np.asarray([req.ids], dtype=np.int64), None)
        self.model._lengths(c, self.model.initial_sequences(ids).shape[1])  # max_length within positions
        if req.constraint is not None:  # compiled now (cached per schema): an invalid one never joins the batch
            engine_for(self.model, c.eos_token_ids, req.constraint.kind).compile(req.constraint)
        req.n = c.num_return_sequences if c.do_sample else 1
        if req.n > self.max_rows:
            raise ParameterError("num_return_sequences", f"got {req.n}; this scheduler runs at most {self.max_rows} "
                                 "rows at once")
        return req

    def add(self, req: Request) -> Request:
        """Queue a request (checked by ``prepare``); it is prefilled and joins the batch at a coming ``step``."""
        self.waiting.append(self.prepare(req))
        return req

    def cancel(self, req: Request) -> None:
        """Mark a request cancelled: it leaves the queue, or its rows leave the batch at the next step."""
        req.cancelled = True

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.rows or self.prefilling)

    @property
    def held(self) -> list[Request]:
        """Every request not finished: waiting, being prefilled in parts, decoding."""
        return self.waiting + [p.req for p in self.prefilling] + self.requests

    def row_progress(self) -> list[tuple[Request, int, int, int, bool]]:
        """Each batch row, in state order, then the rows reserved by prompts being prefilled -> (its request, its
        row within it, tokens it has made, tokens it may still make before its length limit, whether it speculates
        while alone in the batch). A snapshot for
        monitoring (the server's /slots); call it on the thread that owns the scheduler, between steps."""
        out = []
        for req, r in self.rows:
            made, run = len(req.new_ids[r]), self._runs[id(req)]
            out.append((req, r, made, max(run.max_length - req.t0 - made, 0), run.proposer is not None))
        for part in self.prefilling:  # rows held by a prompt being prefilled: busy, nothing made yet
            out += [(part.req, r, 0, max(part.run.max_length - part.sequences.shape[1], 0), False)
                    for r in range(part.req.n)]
        return out

    # ------------------------------------------------------------------ one step
    def step(self, *, defer_snapshots: bool = False) -> list[tuple[Request, list[TokenEvent]]]:
        """Advance the rows that go on (the forward pass of the tokens picked last step), admit waiting requests,
        pick one token per active row and drop the rows that finished. -> per request that produced tokens, its
        TokenEvents (a request whose rows all finished has ``done`` set). A token is reported before the forward
        pass that consumes it, so a client sees it one pass earlier. The prefix cache's copies of this step's
        prompts and finished sequences are made before it returns, or with ``defer_snapshots`` by the caller's
        ``store_snapshots()`` once it has handed out the tokens (else by the next step, before anything runs)."""
        self.store_snapshots()  # a deferred last step's, before anything changes
        self._drop_cancelled()
        if self._next is not None:  # one forward pass for every row still generating
            tokens, self._next = self._next, None
            alone = self._speculating()
            out = self._speculative_step(*alone, tokens) if alone is not None else None
            if out is not None:  # a request alone: several of its positions in that pass (nobody waits to join)
                if not defer_snapshots:
                    self.store_snapshots()
                return out
            self.logits = self.state.advance(tokens)
        self._admit()
        if self.prefilling:  # a long prompt's next part (scheduler_prefill.py); whole: it joins the batch
            self._prefill_part()
        if not self.rows:
            return []
        out, keep, next_tokens = [], [], []
        for req in self.requests:
            try:
                events, tokens = self._pick(req)
            except Exception as exc:  # noqa: BLE001 - e.g. a constraint's conflict: this request fails alone
                req.active[:] = False
                self._fail(req, exc)
                continue
            out.append((req, events))
            if req.done:  # its keys/values are still in the state: keep them for the next turn
                self._remember(req)
            for r, tok in zip(np.flatnonzero(req.active), tokens):
                keep.append(self._row_index(req, int(r)))
                next_tokens.append(tok)
        self._retain(keep)
        if self.rows:
            self._next = np.asarray(next_tokens, dtype=np.int64)  # [len(rows)], fed at the next step
        if not defer_snapshots:
            self.store_snapshots()
        return out

    def _speculating(self) -> tuple[Request, _Run] | None:
        """The request decoding alone that may speculate (one row in the batch, nobody waiting), or None."""
        if len(self.rows) != 1 or self.waiting or self.prefilling:
            return None
        req = self.rows[0][0]
        run = self._runs[id(req)]
        return (req, run) if run.proposer is not None else None

    def _speculative_step(self, req: Request, run: _Run, tokens: np.ndarray):
        """``step`` for a request alone with a proposal: several of its positions picked in one pass
        (scheduler_speculation.py), then its row kept or dropped as ``step`` does -> [(req, events)], or None when
        it proposes nothing (nothing ran: the caller steps plainly)."""
        try:
            done = speculative_pass(self, req, run.proposer, tokens, self.speculation)
        except Exception as exc:  # noqa: BLE001 - its pass or a pick failed: the request (alone here) fails
            req.active[:] = False
            self._fail(req, exc)
            self._retain([])
            return []
        if done is None:
            return None
        events, going = done
        if req.done:  # its keys/values are still in the state: keep them for the next turn
            self._remember(req)
        self._retain([0] if going else [])
        if self.rows:
            self._next = np.asarray(going, dtype=np.int64)  # [1], fed at the next step
        return [(req, events)]

    def _row_index(self, req: Request, r: int) -> int:
        return self._positions[(id(req), r)]

    def _pick(self, req: Request) -> tuple[list[TokenEvent], list[int]]:
        """Choose the next token of every active row of req (as sample_steps does) -> events, and the tokens of the
        rows that go on generating."""
        run = self._runs[id(req)]
        rows = np.flatnonzero(req.active)
        logits = self.logits[[self._row_index(req, int(r)) for r in rows]]  # [k, V]
        scores = run.scores(req.sequences[rows], logits)                   # [k, V] processed scores
        if run.rng is not None:  # the solo loop draws one uniform per row of the request, finished rows too
            u = run.rng.random(req.n)
            chosen = sample_tokens(scores, _Uniforms(u[rows]))
        else:
            chosen = greedy_tokens(scores)  # (a row with every token masked: an InputError, as sample_tokens)
        tokens = np.full(req.n, run.pad if run.eos.size else 0, np.int64)
        tokens[rows] = chosen
        if not run.eos.size:  # finished rows keep their last token without an EOS criterion, as sample_steps
            tokens[~req.active] = req.sequences[~req.active, -1]
        req.sequences = np.concatenate([req.sequences, tokens[:, None]], axis=1)
        stops = run.stop_check(req.sequences[rows]) if run.stop_check is not None else np.zeros(len(rows), bool)
        logp = log_softmax(logits) if req.logprobs is not None else None
        events, going, kept = [], [], []
        for k, r in enumerate(rows):
            tok = int(tokens[r])
            req.new_ids[r].append(tok)
            reason = ("eos" if tok in run.eos else "stop" if stops[k]
                      else "length" if req.sequences.shape[1] >= run.max_length else None)
            ev = TokenEvent(int(r), tok, "", reason is not None, reason)
            if logp is not None:
                ev.logprob = float(logp[k, tok])
                if req.logprobs:
                    ev.top_logprobs = top_logprobs(logp[k], req.logprobs)
            if reason is not None:
                req.reasons[r] = reason
                req.final_text[r] = self.model._finish_text(req.new_ids[r], req.config, reason,
                                                            req.sequences[r, :req.t0])
                ev.text = run.streams[r].finish(req.final_text[r])
                req.active[r] = False
            else:
                ev.text = run.streams[r].push(tok)
                going.append(tok)
                kept.append(k)
            events.append(ev)
        if run.constraint is not None:  # matchers consume the chosen tokens, then follow the rows that go on
            run.constraint.advance(chosen)
            run.constraint.select(np.asarray(kept, dtype=np.int64))
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        if not req.active.any():
            req.done, req.done_at = True, time.perf_counter()
        return events, going

    # ------------------------------------------------------------------ batch membership
    def _fail(self, req: Request, exc: BaseException) -> None:
        """End ``req`` with ``exc`` (its caller reads ``req.error``); it is reported with the step's failures."""
        req.error, req.done = exc, True
        self.failed.append(req)

    def _admit(self) -> None:
        """Take waiting requests while rows are free, prefill them together (one left-padded ``start``, each row
        then repeated n times as ``_start_expanded`` does) and join that state to the running one."""
        room, batch = self.max_rows - len(self.rows) - sum(p.req.n for p in self.prefilling), []
        budget, todo = self.prefill_chunk, {}  # prompt tokens prefilled whole this step (None: no bound); per request
        while self.waiting:
            req = self.waiting[0]
            if req.cancelled:
                self.waiting.pop(0)
                req.done = True
                continue
            if (self.rows or batch or self.prefilling) and (req.n > room or self._alone(req)):
                break
            if budget is not None:
                todo[id(req)] = self._to_compute(req)
                if todo[id(req)] <= self.prefill_chunk:  # short ones share a pass: so many that the step grows
                    if batch and todo[id(req)] > budget:  # past a part's work wait for the next
                        break
                    budget -= todo[id(req)]
            batch.append(self.waiting.pop(0))
            room -= req.n
            if self._alone(req):  # seq2seq: one request at a time
                break
        if not batch:
            return
        runs = {}
        for req in list(batch):  # its processors, stop check and streams first: one that cannot be made fails alone
            try:
                sequences = np.repeat(self.model.initial_sequences(np.asarray([req.ids], np.int64),
                                                                   req.config.decoder_start_token_id), req.n, axis=0)
                _, max_len = self.model._lengths(req.config, sequences.shape[1])
                runs[id(req)] = (sequences, _Run(self.model, req, sequences.shape[1], max_len, self.prompt_lookup,
                                                            self.draft))
            except Exception as exc:  # noqa: BLE001 - handed to the caller through req.error
                self._fail(req, exc)
                batch.remove(req)
                continue
            if self.prefill_chunk and todo[id(req)] > self.prefill_chunk:  # long: a part a step, in order
                self.prefilling.append(PromptInParts(req, *runs.pop(id(req))))
                batch.remove(req)
        if not batch:
            return
        began = time.perf_counter()
        for req in batch:
            req.prefill_at = began
        try:  # a failure here fails these requests only (the running batch is untouched)
            state, first = self._prefill(batch)
        except Exception as exc:  # noqa: BLE001 - handed to the caller through req.error
            for req in batch:
                self._fail(req, exc)
            return
        self._join(batch, runs, state, first)

    def _to_compute(self, req: Request) -> int:
        """The prompt positions a request's prefill computes: those the prefix cache does not hold (a next turn
        whose conversation is cached is short, prefilled with the admission's others, borrowing the entry)."""
        return len(req.ids) - (self.prefix_cache.peek(req.ids) if self.prefix_cache else 0)

    def _prefill_part(self) -> None:
        """The first prefilling request's next part; once its prompt is whole it joins the batch as a whole
        prefill's requests do. Always in parts, with or without rows decoding: a short request arriving meanwhile
        joins at the next step instead of waiting for the whole prompt (parts cost ~3 % more than one pass)."""
        part = self.prefilling[0]
        if part.req.prefill_at is None:
            part.req.prefill_at = time.perf_counter()
        try:
            self.prefill_parts += 1
            whole = feed_part(self, part, self.prefill_chunk)
            if whole:
                state, first = self._prefilled([part.req], part.state, part.logits, {id(part.req): part.earlier})
        except Exception as exc:  # noqa: BLE001 - this request fails alone (the running batch is untouched)
            self.prefilling.pop(0)
            self._fail(part.req, exc)
            return
        if whole:
            self.prefilling.pop(0)
            self._join([part.req], {id(part.req): (part.sequences, part.run)}, state, first)

    def _join(self, batch: list[Request], runs: dict, state, first: np.ndarray) -> None:
        """Prefilled requests (their state's rows in ``batch`` order, each n times; next-token logits [sum n, V])
        join the running batch: their rows go after its rows (``concat``)."""
        for req in batch:
            sequences, run = runs[id(req)]
            req.t0, req.sequences, req.active = sequences.shape[1], sequences, np.ones(req.n, bool)
            req.new_ids, req.reasons = [[] for _ in range(req.n)], [None] * req.n
            req.final_text = [None] * req.n
            self._runs[id(req)] = run
            self.requests.append(req)
            self.rows += [(req, r) for r in range(req.n)]
        if self.state is not None:
            state, first = type(self.state).concat([self.state, state]), np.concatenate([self.logits, first])
        self.state, self.logits = state, first
        self._index()

    def _prefill(self, batch: list[Request]):
        """Requests -> (state, next-token logits [sum n, V]), rows in ``batch`` order, each repeated n times: the
        prompts the prefix cache holds a start of resume from it (``model.resume``: one pass over the rest, a
        request at a time), the others share one ``model.start`` (left padded). ``batch`` is reordered in place to
        the rows' order (cold prompts first); every prompt's keys/values then go into the cache."""
        cached = [(req, *self.prefix_cache.lookup(req.ids)) for req in batch] if self.prefix_cache else []
        warm = [(req, snap, reuse) for req, snap, reuse in cached if snap is not None]
        cold = [req for req in batch if all(req is not w[0] for w in warm)]
        starts = {}                                        # one start per decoder start id (a seq2seq call may pick
        for req in cold:                                   # its own; a decoder-only model's are all None)
            starts.setdefault(req.config.decoder_start_token_id, []).append(req)
        cold = [req for group in starts.values() for req in group]
        earlier = {id(req): snap.within(reuse) for req, snap, reuse in warm}  # a hybrid's states in the reused part
        parts = []                                                  # (state, logits [1 or b, V]) per group
        with self._prompt_marks():                        # a hybrid model's states inside prompts, for the cache
            for start_id, group in starts.items():
                ids, mask = pad_batch([r.ids for r in group], self.model.pad_id, side="left")
                parts.append(self.model.start(ids, mask, decoder_start_token_id=start_id))
            users = Counter(id(snap) for _, snap, _ in warm)  # a snapshot several resume from is copied for each
            for req, snap, reuse in warm:                     # the cached positions, then the rest
                parts.append(self._resume(req, snap, reuse, req.ids[reuse:], lend=users[id(snap)] == 1))
        batch[:] = cold + [w[0] for w in warm]
        state = type(parts[0][0]).concat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        return self._prefilled(batch, state, np.concatenate([p[1] for p in parts]), earlier)

    def _resume(self, req: Request, snap, reuse: int, rest, lend: bool):
        """A request's prompt from a prefix-cache entry: its first ``reuse`` positions from ``snap`` (the entry's
        dropped state itself where ``lend`` and the cache lends it, else a copy), then one pass over ``rest`` ->
        (a one-row state, next-token logits [1, V])."""
        req.cached_tokens = reuse
        state = self.prefix_cache.lend(snap, reuse) if lend else None  # its dropped state
        if state is None:                                               # or a copy
            state, first = self.model.resume(snap.state_at(reuse), reuse, rest)
        else:
            first = feed_rest(state, rest)
        return state, snap.logits[reuse][None] if first is None else first  # all held: the cached logits

    def _prefilled(self, batch: list[Request], state, logits: np.ndarray, earlier: dict):
        """Prefilled prompts (state rows and logits [b, V] in ``batch`` order; ``earlier``: id(req) -> a hybrid's
        states within its reused positions) -> (state, logits [sum n, V]): each prompt marked for the prefix cache
        (copied after the step), each row repeated n times."""
        if self.prefix_cache is not None:                           # each prompt, for those to come (after the step)
            self._snapshots += [(req.ids, state.snapshot(i, copy=False), logits[i].copy(), state, None,
                                 state.checkpoint(i), {**earlier.get(id(req), {}), **state.take_prompt_checkpoints(i)})
                                for i, req in enumerate(batch)]
        rows = np.repeat(np.arange(len(batch)), [r.n for r in batch])
        if len(rows) != len(batch):
            state.select(rows)
            logits = logits[rows]
        return state, logits

    def _prompt_marks(self):
        """Around the prefill's passes: a hybrid model (LFM2) keeps its states inside the prompts when there is a
        prefix cache to resume a shared start from them (``keeping_prompt_checkpoints``); else nothing changes."""
        keeping = getattr(self.model, "keeping_prompt_checkpoints", None)
        on = keeping is not None and self.prefix_cache is not None and self.prefix_cache.enabled
        return keeping() if on else nullcontext()

    def _remember(self, req: Request) -> None:
        """A finished one-row request's whole sequence (prompt + answer, the last token not fed) into the prefix
        cache, from the state before its row is dropped: the next turn of a chat starts with it."""
        if self.prefix_cache is None or req.n != 1 or req.cancelled or not req.new_ids[0]:
            return
        row = self._row_index(req, 0)
        held = list(req.ids) + req.new_ids[0][:-1]
        kv = self.state.snapshot(row, copy=False)
        if next(iter(kv.values())).shape[1] == len(held):  # the row holds exactly these positions
            self._snapshots.append((held, kv, self.logits[row].copy(), self.state, len(req.ids),  # logits: its last
                                    self.state.checkpoint(row), {}))
            # token's; those after its prompt (a superseded entry's) are the ones kept first where not all fit

    def store_snapshots(self) -> None:
        """Copy the keys/values the last step marked (prompts after their prefill, finished sequences) into the
        prefix cache, skipping ids an entry covers already (a one-token answer's: its prompt; a repeated prompt
        whose earlier answer is held). ``step`` starts with
        this unless deferred; a caller that hands out the step's tokens first (the server's engine) calls it right
        after, so neither a first token nor a finished answer waits for the copies. The marked arrays are views of the
        state's buffers: a step writes only past each row's held positions, and ``_retain`` keeps rows in order
        (a ``select`` to fewer rows copies into new buffers), so they hold their values until stored. When no row is
        left (the last request finished), the views are kept as they are where the whole buffer block fits the
        cache's budget beside its other entries: the dropped state's buffers become the cache's, and a lone client's
        next request finds its keys/values without a copy made in between; else the cache copies their held
        positions (``PrefixCache.put``)."""
        marked, self._snapshots = self._snapshots, []
        dropped = self.state is None  # no row left: the marked views' buffers are no one else's any more
        for ids, kv, logits, state, prompt, checkpoint, inside in marked:
            keep = dropped and _one_row(kv)  # the views, and the state for a later request to decode on
            owner = state if keep and _backs(state, kv) else None
            if owner is not None:
                owner.forget_rollback()  # what it kept to roll back (a hybrid's states) the cache would not count
            if not self.prefix_cache.covers(ids):
                self.prefix_cache.put(ids, kv if keep else {name: np.array(a) for name, a in kv.items()}, logits,
                                      owner=owner, first=prompt, checkpoint=checkpoint, inside=inside)
            elif owner is not None:
                self.prefix_cache.return_state(ids, kv, owner)
            self.prefix_cache.attach_logits(ids, logits, checkpoint, inside)

    def _alone(self, req: Request) -> bool:
        return bool(self.model.is_encoder_decoder)

    def _drop_cancelled(self) -> None:
        """Cancelled requests leave: their rows are dropped from the state before anything runs."""
        self.waiting = [r for r in self.waiting if not (r.cancelled and _mark_done(r))]
        self.prefilling = [p for p in self.prefilling if not (p.req.cancelled and _mark_done(p.req))]
        if any(req.cancelled for req in self.requests):
            for req in self.requests:
                if req.cancelled:
                    req.active[:] = False
                    req.done = True
            self._retain([i for i, (req, r) in enumerate(self.rows) if req.active[r]])

    def _retain(self, keep: list[int]) -> None:
        """Keep only state rows ``keep`` (in that order); requests with no row left are forgotten."""
        if len(keep) == len(self.rows) and keep == list(range(len(self.rows))):
            return
        self.rows = [self.rows[i] for i in keep]
        if self.rows:
            self.state.select(np.asarray(keep, dtype=np.int64))
            self.logits = self.logits[keep]
            if self._next is not None:
                self._next = self._next[keep]
        else:
            self.state, self.logits, self._next = None, None, None
        alive = {id(req) for req, _ in self.rows}
        for req in self.requests:
            if id(req) not in alive:
                self._runs.pop(id(req), None)
        self.requests = [req for req in self.requests if id(req) in alive]
        self._index()

    def _index(self) -> None:
        self._positions = {(id(req), r): i for i, (req, r) in enumerate(self.rows)}

    def abort_all(self) -> list[Request]:
        """Forget the running batch (after a failed forward pass its state is unusable) -> the requests it held."""
        failed = list(self.requests)
        for req in failed:
            req.done = True
        self.requests, self.rows, self.state, self.logits, self._runs = [], [], None, None, {}
        self._next, self._snapshots = None, []
        self._index()
        return failed


def _one_row(kv: dict) -> bool:
    """Are the views ``kv`` (name -> [kv_heads, L, head_dim]) a block's only row (so keeping them keeps no other
    row's memory), or copies?"""
    first = next(iter(kv.values()))
    return first.base is None or first.base.nbytes <= first.strides[0] * first.shape[0] * len(kv)


def _backs(state, kv: dict) -> bool:
    """Is ``state`` a one-row state still holding the buffers that ``kv`` views (a fused state; a plain state's
    snapshots are copies), so that it can be lent for that row? A prompt's state may since have been resized into
    other buffers (``select`` to n rows)."""
    first = next(iter(kv.values()))
    if first.base is None or len(getattr(state, "lengths", ())) != 1:
        return False
    return next(iter(state.snapshot(0, copy=False).values())).base is first.base


def _mark_done(req: Request) -> bool:
    req.done = True
    return True

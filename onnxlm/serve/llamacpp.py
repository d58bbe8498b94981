"""llama.cpp's native completion endpoints: POST /completion (and /completions, its other name) and POST /infill
(fill-in-the-middle: llamacpp_infill.py), for the clients written against llama.cpp's server rather than OpenAI's
API (llama.vim and llama.vscode call /infill).

Request (llamacpp_request.py): ``prompt`` (a string, token ids, ids and strings mixed, or a list of such prompts),
``n_predict`` (-1, or more than the server's ``--max-tokens``: that many; the context's end stops it sooner, said by
``truncated``), llama.cpp's sampling fields and defaults (temperature 0.8, top_k 40, top_p
0.95, min_p 0.05, its windowed penalties) applied in llama.cpp's order, temperature last (``samplers`` reorders
them), ``stop``, ``seed``, ``n_probs``, ``logit_bias`` in llama.cpp's forms, ``ignore_eos``, ``grammar`` /
``json_schema`` / ``response_format``, ``return_tokens``, ``response_fields``, ``timings_per_token``, ``stream``,
``n_indent`` and ``t_max_predict_ms`` (llamacpp_limits.py: the prompt's row is cancelled where one ends the answer).

Answer, one object per prompt (a list when more than one prompt was given), llama.cpp's fields: ``content``,
``tokens`` (with return_tokens), ``stop``, ``stop_type`` (eos | word | limit), ``stopping_word``,
``tokens_predicted``, ``tokens_evaluated``, ``tokens_cached`` (the positions the model holds after it: prompt and
answer but the last token, as llama.cpp's slot), ``truncated`` (the context ended it), ``generation_settings``,
``prompt`` (its ids decoded, special tokens kept), ``timings`` (``cache_n``: the prompt tokens the prefix cache held;
prompt and generation ms and tokens per second, as llama.cpp names them), ``completion_probabilities`` (n_probs:
each token's log-probability and its top alternatives under the model's distribution, with their bytes; after a
stop word, as many entries fewer as the word has tokens, as llama.cpp), ``model``,
``id_slot`` (-1: this server has no slots). Streamed: one event per token ``{"index", "content", "tokens": [id],
"stop": false, ...}``, then per prompt the final object with ``"stop": true`` (``content`` and ``tokens`` empty), and
no ``[DONE]`` (llama.cpp sends none on this endpoint); an error mid-stream is one event with the error body.
"""
from __future__ import annotations

import asyncio
import time

from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse

from onnxlm.runtime.streaming import decode_after

from . import llamacpp_infill, protocol
from .choices import Choices, token_str_bytes
from .gate import authorize, generating, read_limited
from .jobs import make_jobs, output_constraint
from .llamacpp_limits import LineLimits
from .llamacpp_request import NativeRequest, encode_prompt, parse
from .protocol import bad
from .run import admit, until_done_or_gone
from .state import draft_settings, state_of
from .streaming import sse_response, stream

STOP_TYPES = {"eos": "eos", "stop": "word", "length": "limit", None: "limit"}


async def completion(request: HTTPRequest):
    return await _serve(request, infill=False)


async def infill(request: HTTPRequest):
    """llama.cpp's POST /infill: /completion's fields, the prompt built from ``input_prefix``, ``input_suffix``,
    ``input_extra`` and ``prompt`` (llamacpp_infill.py)."""
    return await _serve(request, infill=True)


async def _serve(request: HTTPRequest, infill: bool):
    authorize(request)
    model = generating(request)
    st = state_of(request)
    raw = await read_limited(request, int(st.config.max_body_mb * 2**20))
    body = protocol.parse_body(raw, request.headers.get("content-type"), any_type=True)  # as llama.cpp reads it
    req = parse(body, max_tokens_cap=st.config.max_tokens, infill=infill, draft=draft_settings(st.config))
    chunks = llamacpp_infill.check(body) if infill else None
    constraint = await output_constraint(model, body)
    # encoding long prompts and building the jobs takes a while: off the event loop, so other streams go on
    jobs = await asyncio.to_thread(_jobs, model, st, req, constraint, body if infill else None, chunks)
    answer = _Answer(model, st, req, jobs)
    # line limits need the tokens as they come (and their time), even for one JSON answer
    slot, run = admit(st, jobs, 1, None, stream=req.stream or answer.watching)
    answer.run = run
    if req.stream:
        return sse_response(stream(answer.events(), run, slot, jobs, answer.choices, {}, done=False))
    try:
        got = await until_done_or_gone(request, run, answer.gather)
    finally:
        slot.release()
    if got is None:
        return JSONResponse({}, status_code=499)
    out = [answer.final(i, streamed=False) for i in range(len(jobs))]
    return JSONResponse(out[0] if len(out) == 1 else out)


def _jobs(model, st, req: NativeRequest, constraint, infill_body: dict | None = None, chunks=None) -> list:
    """One job per prompt, each with the request's chain as its scheduler request's samplers. ``n_predict`` past
    the context is cut to it (llama.cpp stops there and says ``truncated``); 0 makes no tokens. An /infill body
    (``infill_body``, its ``chunks``) makes one prompt. Generation ends at llama.cpp's end-of-generation ids."""
    eos = llamacpp_infill.end_of_generation_ids(model)  # llama.cpp's: the model's, FIM's and end-of-turn tokens
    overrides = {"eos_token_id": eos} if eos else None
    forms = req.prompts
    if infill_body is not None:
        forms = [llamacpp_infill.infill_ids(model, infill_body, chunks)]
    biases = req.biases(model)
    chain = req.samplers(llamacpp_infill.infill_vocab(model, eos) if "infill" in req.order else None)
    ctx = model.max_positions
    jobs = []
    for form in forms:
        ids = encode_prompt(model, form)
        want = req.n_predict
        if ctx and (len(ids) > ctx or (want and len(ids) >= ctx)):
            raise bad("prompt", f"the prompt has {len(ids)} tokens and fills this model's context of {ctx} tokens",
                      code="context_length_exceeded")
        if want and ctx and len(ids) + want > ctx:
            want = ctx - len(ids)
        warm = want == 0 and not (ctx and len(ids) >= ctx)  # n_predict 0: the prompt into the prefix cache (a
        want = 1 if warm else want                         # token made and dropped: its prefill is remembered)
        samp = protocol.Sampling(max_tokens=want, temperature=0.0 if req.greedy else 1.0, top_p=1.0, n=1,
                                 stop=req.stop, seed=req.seed, stream=req.stream, include_usage=False,
                                 presence_penalty=0.0, frequency_penalty=0.0, top_k=0, repetition_penalty=1.0,
                                 num_beams=1, logprobs=req.n_probs or None, max_tokens_param=req.n_predict_name,
                                 ignore_eos=req.ignore_eos)
        made = make_jobs(model, st, samp, [ids], [""], "prompt", constraint, samplers=chain, overrides=overrides,
                         first=biases, draft=req.draft)
        for job in made:
            job.warm_only = warm
        jobs += made
    return jobs


class _Answer:
    """A request's answers as the engine makes them: per prompt its tokens (``choices``), its text, whether a line
    limit ended it (llamacpp_limits.py: its row is cancelled there) -> llama.cpp's stream events and final
    objects."""

    def __init__(self, model, st, req: NativeRequest, jobs: list):
        self.model, self.st, self.req, self.jobs = model, st, req, jobs
        self.choices = Choices(model, 1, chat=False, jobs=jobs)
        self.limits = [LineLimits(req.n_indent, req.t_max_predict_ms) for _ in jobs]
        self.watching = any(lim.active for lim in self.limits)
        self.texts: dict[int, str] = {}
        self.limited: set[int] = set()  # prompts a line limit ended
        self.run = None

    def _take(self, i: int, payload) -> list:
        """Prompt i's new events -> [(event, whether the answer ends with it)]; none once a limit ended it."""
        if i in self.limited or self.jobs[i].warm_only:  # n_predict 0: its token is not the answer's
            return []
        out = []
        for ev in payload:  # one at a time: none past the one a limit ends the answer with is counted
            self.choices.add_events(i, [ev])
            piece = ev.text or ""
            self.texts[i] = self.texts.get(i, "") + piece
            lim = self.limits[i]
            if lim.active and lim.push(piece):
                self.texts[i] = lim.text
                self.limited.add(i)
                if not ev.finished:
                    self.st.engine.cancel(self.jobs[i].req)
                out.append((ev, True))
                break
            out.append((ev, ev.finished))
        return out

    async def gather(self) -> bool:
        async for kind, i, what, payload in self.run.items():
            if what == "events":
                self._take(i, payload)
        return True

    async def events(self):
        """The stream: an event per token, then each prompt's final object (``stop``: true)."""
        ended: set[int] = set()
        async for kind, i, what, payload in self.run.items():
            if what != "events":
                continue
            taken = self._take(i, payload)  # a speculative pass's tokens come together: each chunk counts its own
            before = len(self.choices.tokens.get(i, [])) - len(taken)
            for k, (ev, last) in enumerate(taken):
                n = before + k + 1
                chunk = {"index": i, "content": ev.text or "", "tokens": [ev.token_id], "stop": False,
                         "id_slot": -1, "tokens_predicted": n, "tokens_evaluated": len(self.jobs[i].ids)}
                if self.req.n_probs:
                    chunk["completion_probabilities"] = [_probs(self.model, (ev.token_id, ev.logprob,
                                                                             ev.top_logprobs))]
                if self.req.timings_per_token:
                    chunk["timings"] = _timings(self.jobs[i], n)
                yield chunk
                if last:
                    ended.add(i)
                    yield self.final(i, streamed=True)
        for i in range(len(self.jobs)):  # n_predict 0: no tokens, only the final object
            if i not in ended:
                yield self.final(i, streamed=True)

    def final(self, i: int, streamed: bool) -> dict:
        """Prompt i's final object (``streamed``: the stream's last event, without the content and tokens it
        sent)."""
        model, req, job = self.model, self.req, self.jobs[i]
        entries = self.choices.tokens.get(i, [])
        ids = [t for t, _, _ in entries]
        text = self.texts.get(i, "")
        reason = "length" if i in self.limited else (job.req.reasons[0] if job.req is not None and job.req.reasons
                                                     and not job.warm_only else None)
        ctx = model.max_positions
        word = stopping_word(model, ids, req.stop, job.ids) if reason == "stop" else ""
        out = {"index": i, "content": "" if streamed else text,
               "tokens": ids if req.return_tokens and not streamed else [], "id_slot": -1, "stop": True,
               "model": self.st.config.model_name, "tokens_predicted": len(ids), "tokens_evaluated": len(job.ids),
               "generation_settings": {**req.settings(), "n_ctx": ctx, "model": self.st.config.model_name},
               "prompt": model.tokenizer.decode(job.ids, skip_special_tokens=False) if model.tokenizer else "",
               "has_new_line": "\n" in text,
               "truncated": bool(reason == "length" and i not in self.limited and ctx
                                 and len(job.ids) + len(ids) >= ctx),
               "stop_type": STOP_TYPES.get(reason, "limit"), "stopping_word": word,
               # the positions whose keys and values the model now holds (llama.cpp: the slot's tokens)
               "tokens_cached": len(job.ids) + max(0, len(ids) - 1), "timings": _timings(job, len(ids))}
        if req.n_probs and not streamed:  # llama.cpp leaves out as many entries as the stop word has tokens
            cut = min(len(entries), len(model.tokenizer.encode(word, add_special_tokens=False,
                                                               split_special_tokens=True))) if word else 0
            out["completion_probabilities"] = [_probs(model, e) for e in entries[:len(entries) - cut]]
        return _pick(out, req.response_fields) if req.response_fields else out


def stopping_word(model, ids: list[int], stop: list[str], context=()) -> str:
    """The stop string that ended the text: the first to occur in the decoded tokens (their text after
    ``context``, the prompt's ids; the first in the request's list where two start at the same place, as
    llama.cpp's find_stopping_strings)."""
    if model.tokenizer is None:
        return ""
    full = decode_after(model.tokenizer, context, ids)
    found = [(full.find(s), k, s) for k, s in enumerate(stop) if s in full]
    return min(found)[2] if found else ""


def _probs(model, entry) -> dict:
    """(id, logprob, top) -> llama.cpp's probability entry: the token's text and bytes, its log-probability under
    the model's distribution and its top alternatives'."""
    def one(t, lp):
        raw = token_str_bytes(model, t)[1]
        return {"id": int(t), "token": piece_text(bytes(raw)), "bytes": raw, "logprob": lp}
    token, lp, top = entry
    return {**one(token, lp), "top_logprobs": [one(a, b) for a, b in (top or [])]}


def piece_text(raw: bytes) -> str:
    """A token's bytes -> llama.cpp's ``token`` text: without the multi-byte character its end leaves unfinished
    (``validate_utf8``), other invalid bytes as U+FFFD (its JSON dump's replacement)."""
    end = len(raw)
    for i in range(1, min(4, len(raw)) + 1):  # the first lead byte (from the end) whose character needs more bytes
        c = raw[-i]
        need = 2 if c & 0xE0 == 0xC0 else 3 if c & 0xF0 == 0xE0 else 4 if c & 0xF8 == 0xF0 else 0
        if i < need:
            end = len(raw) - i
            break
    return raw[:end].decode("utf-8", errors="replace")


def _timings(job, predicted: int) -> dict:
    """llama.cpp's ``timings``: the prompt tokens the prefix cache held (``cache_n``), the prompt's pass over the
    others and the generation, from the scheduler's clock (zeros before the first token); ``draft_n`` /
    ``draft_n_accepted`` where the request speculated."""
    r = job.req
    first = r.first_token_at if r is not None else None
    prompt_n = len(job.ids) - (r.cached_tokens if r is not None else 0)
    prompt_ms = (first - r.prefill_at) * 1000 if first is not None and r.prefill_at is not None else 0.0
    predicted_ms = ((r.done_at or time.perf_counter()) - first) * 1000 if first is not None else 0.0

    def rate(n, ms):
        return (ms / n if n else 0.0), (1000 * n / ms if ms > 0 else 0.0)
    prompt_per_token, prompt_per_second = rate(prompt_n, prompt_ms)
    per_token, per_second = rate(predicted, predicted_ms)
    out = {"cache_n": len(job.ids) - prompt_n, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
           "prompt_per_token_ms": prompt_per_token, "prompt_per_second": prompt_per_second, "predicted_n": predicted,
           "predicted_ms": predicted_ms, "predicted_per_token_ms": per_token, "predicted_per_second": per_second}
    if r is not None and r.speculated:  # llama.cpp's, where the request speculated (a draft, prompt lookup)
        out.update(draft_n=r.speculated, draft_n_accepted=r.speculated_accepted)
    return out


def _pick(out: dict, fields: list[str]) -> dict:
    """llama.cpp's ``response_fields``: only the fields named; ``a/b`` is field b of object a, given under the
    name ``a/b``; a name that is not there is left out."""
    picked = {}
    for name in fields:
        value, ok = out, True
        for key in name.split("/"):
            if isinstance(value, dict) and key in value:
                value = value[key]
            else:
                ok = False
                break
        if ok:
            picked[name] = value
    return picked

"""A checked request -> its jobs: one per prompt, with its ids (encoded, within the context and the server's caps),
its decoding (a scheduler request with its processors and constraint, or a beam-search call) and, for echo, the
prompt's log-probs (``prompt_logprobs``, run on the engine thread)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from onnxlm.runtime.constraints import engine_for, make_constraint, response_format_to_params
from onnxlm.runtime.decoding.scheduler import Request
from onnxlm.runtime.errors import InputError, ParameterError
from onnxlm.runtime.penalties import PresenceFrequencyPenaltyProcessor
from onnxlm.runtime.processors import log_softmax, top_logprobs

from . import protocol
from .errors import model_error
from .protocol import bad
from .state import ServeState


@dataclass
class Job:
    """One prompt of an API request: its ids, text, and either a scheduler request or a beam-search call."""

    ids: list[int]
    text: str
    req: Request | None = None
    beam_params: dict | None = None
    prompt_logprobs: list | None = None  # echo: [(id, logprob | None, top | None)]
    warm_only: bool = False  # llama.cpp's n_predict 0: the prompt runs into the prefix cache, its one token dropped


def _encode(model, prompt, param: str) -> list[int]:
    if isinstance(prompt, list):
        return [int(i) for i in prompt]
    if model.tokenizer is None:
        raise bad(param, "this model has no tokenizer.json: send token ids")
    try:
        return model._encode(prompt)
    except InputError as exc:
        raise bad(param, str(exc)) from None


def _prediction_ids(model, text: str | None) -> list[int] | None:
    """A ``prediction``'s text -> its ids as the answer would hold them (no BOS or other added tokens), or None."""
    if not text:
        return None
    if model.tokenizer is None:
        raise bad("prediction", "this model has no tokenizer.json to read a prediction's text with")
    try:
        return model.tokenizer.encode(text, add_special_tokens=False)
    except InputError as exc:
        raise bad("prediction.content", str(exc)) from None


def _limits(model, st: ServeState, ids: list[int], max_tokens: int | None, param: str,
            name: str = "max_tokens") -> int:
    """Prompt length and context checks -> the max new tokens (400 context_length_exceeded past the context;
    ``param``: the prompt's parameter, ``name``: max_tokens' as the body gave it)."""
    cap = st.config.max_prompt_tokens
    if cap is not None and len(ids) > cap:
        raise bad(param, f"the prompt has {len(ids)} tokens; this server accepts at most {cap}",
                  code="context_length_exceeded")
    ctx = model.max_positions
    # the prompt alone leaves no room for a new token (or, scoring only: passes the context): the prompt's fault,
    # whatever max_tokens says (or its default, when the body has none)
    if ctx and (len(ids) > ctx or (max_tokens != 0 and len(ids) >= ctx)):
        raise bad(param, f"the prompt has {len(ids)} tokens and fills this model's context of {ctx} tokens; "
                         "shorten it", code="context_length_exceeded")
    if max_tokens is None:  # chat without max_tokens: up to the context (and the server's cap)
        max_tokens = st.config.max_tokens if not ctx else min(st.config.max_tokens, ctx - len(ids))
    if ctx and len(ids) + max_tokens > ctx:
        raise bad(name, f"this model's maximum context length is {ctx} tokens; the prompt has {len(ids)} and {name} "
                        f"is {max_tokens} ({len(ids) + max_tokens} in all); shorten the prompt or lower {name}",
                  code="context_length_exceeded")
    return max_tokens


async def output_constraint(model, body: dict):
    """What every row's output must follow -> a compiled Constraint, or None: OpenAI's ``response_format``
    (json_object / json_schema; "text" or absent: none), llama.cpp's ``grammar`` (GBNF, or llguidance's Lark) or
    its /completion's ``json_schema`` (the schema itself; llamacpp_request.py refuses it beside the others), not
    both; a 400 naming the parameter for a bad one, or without the 'structured' extra. Compiling (and, once per
    model, building the llguidance tokenizer) runs in a worker thread, off the event loop."""
    param = "response_format"
    try:
        params = response_format_to_params(body.get("response_format"))
        if body.get("grammar") not in (None, ""):  # llama.cpp: an empty grammar is none
            if params:
                raise bad("grammar", "cannot be combined with a response_format of type json_object or json_schema: "
                                     "give one of them")
            param = "grammar"
            constraint = make_constraint("grammar", body["grammar"])
        elif body.get("json_schema") is not None:
            param = "json_schema"
            constraint = make_constraint("json_schema", body["json_schema"])
        elif params:
            constraint = make_constraint("json_schema", params["json_schema"])
        else:
            return None
        engine = engine_for(model, model.generation_config.eos_token_ids, param)
        await asyncio.to_thread(engine.compile, constraint)
        return constraint
    except ParameterError as exc:  # json_schema is named as given (model_error names the runtime's response_format)
        raise (bad(param, str(exc).split(": ", 1)[-1]) if param == "json_schema" else model_error(exc)) from None


def make_jobs(model, st: ServeState, samp: protocol.Sampling, prompts: list, texts: list,
               param: str, constraint=None, samplers: list | None = None, overrides: dict | None = None,
               first: list | None = None, draft: dict | None = None) -> list[Job]:
    """One job per prompt; ``samplers``: the scheduler request's last processors (llama.cpp's chain: llamacpp.py);
    ``first``: processors before all others (llama.cpp's logit biases); ``overrides``: generation parameters set
    over the sampling's (llama.cpp's /infill: its end-of-generation ids); ``draft``: the request's draft settings
    (llama.cpp's speculative.*: ``Request.draft``)."""
    for name in ("prompt_lookup_num_tokens", "prediction"):
        if samp.extra.get(name) and model.is_encoder_decoder:
            raise bad(name, "speculative decoding runs on decoder-only models; this is a seq2seq model")
    predicted = _prediction_ids(model, samp.extra.get("prediction"))
    draft = draft if draft is not None else samp.extra.get("draft")  # llama.cpp's speculative.* of this request
    jobs = []
    for prompt, text in zip(prompts, texts):
        ids = prompt if isinstance(prompt, list) else _encode(model, prompt, param)
        max_new = _limits(model, st, ids, samp.max_tokens, param, samp.max_tokens_param)
        job = Job(ids, text)
        if max_new == 0:  # echo with max_tokens 0: scoring only
            jobs.append(job)
            continue
        params = {**samp.generation_params(max_new), **(overrides or {})}
        if samp.ignore_eos:  # never picked (llama.cpp's ignore_eos), so only max_tokens or a stop string ends it
            params["suppress_tokens"] = list(params.get("eos_token_id") or model.generation_config.eos_token_ids or [])
        try:
            config = model.resolve_config(params)
        except (ParameterError, InputError) as exc:
            raise model_error(exc) from None
        if samp.num_beams > 1:
            job.beam_params = params if constraint is None else {**params, "constraints": [constraint]}
        else:  # (prompt_lookup_num_tokens: the scheduler speculates while the request decodes alone)
            extra = list(first or [])
            if samp.presence_penalty or samp.frequency_penalty:
                t0 = model.initial_sequences(np.asarray([ids])).shape[1]
                extra.append(PresenceFrequencyPenaltyProcessor(samp.presence_penalty, samp.frequency_penalty, t0))
            job.req = Request(ids, config, logprobs=samp.logprobs, extra_processors=extra, constraint=constraint,
                              samplers=list(samplers or []), prediction=predicted, draft=draft)
            try:
                st.engine.scheduler.prepare(job.req)
            except (ParameterError, InputError) as exc:
                raise model_error(exc) from None
        jobs.append(job)
    return jobs


def prompt_logprobs(ids: list[int], k: int):
    """-> fn(model) giving [(id, logprob | None, top | None)] for every prompt token (the first has none):
    log p(ids[i] | ids[:i]) (the runtime's ``score``), and the top k of the logits when k > 0. ``fn`` is a
    generator (an engine call in parts, engine.py): the prompt goes through the model ``PROMPT_ROWS`` tokens at a
    time (``start`` on the first token, then ``extend`` over each part, keeping every position's logits), and it
    yields between parts, so a long prompt's pass lets the other requests' decoding steps run between its parts
    and stops there once its client went away."""
    def run(model):
        out = [(ids[0], None, None)]
        if len(ids) < 2:
            return out
        state, first = model.start(np.asarray([ids[:1]], np.int64), np.ones((1, 1), np.int64),
                                   max_length=len(ids))
        _add_logprobs(out, first, ids[1:2], k)                                   # [1, V]: after the first token
        for a in range(1, len(ids) - 1, PROMPT_ROWS):
            yield                                                                # the engine's turn: others' steps
            part = ids[a:min(a + PROMPT_ROWS, len(ids) - 1)]
            logits = state.extend(np.asarray([part], np.int64))[0]               # [c, V]: after each token of part
            _add_logprobs(out, logits, ids[a + 1:a + 1 + len(part)], k)
        return out
    return run


def _add_logprobs(out: list, logits: np.ndarray, targets: list[int], k: int) -> None:
    """logits [c, V] float32 and the c tokens that followed -> (id, logprob, top k | None) appended to ``out``."""
    logp = log_softmax(logits)                                                   # [c, V]
    for row, token in zip(logp, targets):
        out.append((int(token), float(row[int(token)]), top_logprobs(row, k) if k else None))


PROMPT_ROWS = 256  # echo's part of the prompt per pass: 256 x 49,152 float32 logits = 48 MB for SmolLM2


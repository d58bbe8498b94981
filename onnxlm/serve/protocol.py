"""OpenAI request bodies -> checked parameters; every user mistake is an ``APIError`` with status 400 (or 401/404/
429/503) and OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``, never a 500.

Field names and ranges are OpenAI's (``/v1/completions``, ``/v1/chat/completions``); ``top_k``, ``min_p``,
``repetition_penalty``, ``ignore_eos`` and ``num_beams`` are extensions (vLLM's names; ``ignore_eos`` never picks an
end-of-generation token, as llama.cpp's does, where vLLM picks it and goes on).
"""
from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import dataclass, field

from onnxlm.runtime.chat import RESERVED_VARS, check_template_vars
from onnxlm.runtime.errors import ParameterError

MAX_STOP = 4  # OpenAI: up to 4 stop sequences
MAX_LOGPROBS_COMPLETIONS = 5  # OpenAI: logprobs <= 5 on /v1/completions
MAX_TOP_LOGPROBS_CHAT = 20  # OpenAI: top_logprobs <= 20 on /v1/chat/completions
MAX_PROMPTS = 32  # prompts in one /v1/completions list
GREEDY_BELOW = 1e-5  # temperatures below this decode greedily, as vLLM does (1/T would overflow the logits)
MAX_LOGIT_BIAS = 100  # OpenAI: each bias in [-100, 100]; -100 bans the token
ROLES = ("system", "user", "assistant", "tool", "developer")  # chat message roles accepted
#: the fields OpenAI's API documents for a message of each role, so that a client sending back the SDK's message
#: objects (``model_dump()``: every field, unset ones as null) is accepted; ``reasoning_content`` is llama.cpp's and
#: DeepSeek's extension (a thinking model's reasoning: passed to the template, as llama.cpp and transformers pass it;
#: Qwen3's renders it for the turns after the last user message, others ignore it); any other field is a 400 naming it
#: rather than being ignored
MESSAGE_FIELDS = {"system": {"role", "content", "name"}, "developer": {"role", "content", "name"},
                  "user": {"role", "content", "name"},
                  "assistant": {"role", "content", "name", "tool_calls", "refusal", "audio", "function_call",
                                "annotations", "reasoning_content", "parsed"},
                  "tool": {"role", "content", "tool_call_id", "name"}}
#: assistant fields accepted only as null: what they carry cannot reach the model here
NULL_ONLY = {"function_call": "the deprecated function_call is not supported: send the call as tool_calls",
             "audio": "audio is not available on this server"}


class APIError(Exception):
    """An HTTP error with OpenAI's body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        message, param = _encodable(message), None if param is None else _encodable(param)
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def renamed(exc: APIError, names: list) -> APIError:
    """An error naming the chat machinery's fields (OpenAI's chat names: ``tools[0].function.parameters``,
    ``messages``) -> the same error naming another API's, ``names`` [(compiled pattern, replacement)] applied in
    order to its ``param`` and to the message where it starts with the param (the Anthropic and Responses
    translations' own errors)."""
    if exc.param is None:
        return exc
    param = exc.param
    for pattern, name in names:
        param = pattern.sub(name, param)
    message = exc.message
    if message.startswith(exc.param + ":"):
        message = param + message[len(exc.param):]
    return APIError(exc.status, message, exc.type, param, exc.code)


def _encodable(text: str) -> str:
    """``text`` with any lone UTF-16 surrogate (JSON's \\ud800 escapes: no UTF-8) written as its escape, so that an
    error naming a field the client spelt with one can be sent (encoding the body would fail: a 500)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def bad(param: str | None, message: str, code: str | None = None) -> APIError:
    return APIError(400, f"{param}: {message}" if param else message, param=param, code=code)


def parse_body(raw: bytes, content_type: str | None, *, any_type: bool = False) -> dict:
    """The request's bytes and Content-Type -> the JSON object (400 for anything else). ``any_type``: the body is
    read as JSON whatever its Content-Type, as llama.cpp's server reads its endpoints' (``curl -d`` sends
    application/x-www-form-urlencoded)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not any_type:
        raise bad(None, f"Content-Type must be application/json, got {content_type or 'none'!r}")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(None, f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays/objects nested thousands deep
        raise bad(None, "the body is nested too deeply to be read") from None
    if not isinstance(body, dict):
        raise bad(None, f"the body must be a JSON object, got {type(body).__name__}")
    return body


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _get_int(body: dict, name: str, default, lo: int | None = None, hi: int | None = None):
    v = body.get(name)
    if v is None:
        return default
    if not _is_int(v):
        raise bad(name, f"expected an integer, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        allowed = f"{lo} <= {name} <= {hi}" if hi is not None else f"{name} >= {lo}"
        raise bad(name, f"got {v}; allowed: {allowed}")
    return int(v)


def _get_num(body: dict, name: str, default, lo: float, hi: float | None, lo_open: bool = False):
    v = body.get(name)
    if v is None:
        return default
    if not _is_num(v) or not math.isfinite(v):
        raise bad(name, f"expected a finite number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or (hi is not None and v > hi):
        left = "(" if lo_open else "["
        raise bad(name, f"got {v}; allowed: {left}{lo}, {hi if hi is not None else 'inf'}]")
    return float(v)


def _get_bool(body: dict, name: str, default: bool) -> bool:
    v = body.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise bad(name, f"expected true or false, got {v!r}")
    return v


@dataclass
class Sampling:
    """Parameters shared by both endpoints, checked."""

    max_tokens: int | None
    temperature: float
    top_p: float
    n: int
    stop: list[str]
    seed: int | None
    stream: bool
    include_usage: bool
    presence_penalty: float
    frequency_penalty: float
    top_k: int
    repetition_penalty: float
    num_beams: int
    logprobs: int | None  # top alternatives per token; None: no logprobs
    extra: dict = field(default_factory=dict)
    logit_bias: dict = field(default_factory=dict)  # token id -> bias in [-100, 100]
    min_p: float = 0.0  # 0: off
    ignore_eos: bool = False  # the model's end-of-generation ids are never picked (jobs.py)
    max_tokens_param: str = "max_tokens"  # the name the body gave it (chat: max_completion_tokens, if set)

    def generation_params(self, max_new_tokens: int) -> dict:
        """-> onnxlm generate() parameters (transformers names). OpenAI defaults, not the artifact's warpers."""
        sample = self.temperature >= GREEDY_BELOW
        p = {"max_new_tokens": max_new_tokens, "do_sample": sample, "num_beams": self.num_beams,
             "repetition_penalty": self.repetition_penalty, "top_k": self.top_k or None,
             "top_p": self.top_p, "min_p": self.min_p or None, "typical_p": 1.0, "no_repeat_ngram_size": 0,
             "stop": self.stop or None, "stop_strings": None,  # OpenAI's rule: the new text's, cut before it
             "temperature": self.temperature if sample else 1.0,
             "seed": self.seed if sample else None,
             "num_return_sequences": self.n}
        if self.num_beams > 1:
            p["early_stopping"] = True
        if self.logit_bias:  # one-token sequence_bias; -100 is a true ban (-inf), as OpenAI's -100 excludes it
            p["sequence_bias"] = {(i,): -math.inf if b <= -MAX_LOGIT_BIAS else b for i, b in self.logit_bias.items()}
        if self.extra.get("prompt_lookup_num_tokens"):
            p["prompt_lookup_num_tokens"] = self.extra["prompt_lookup_num_tokens"]
        return p


COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "stream_options",
          "presence_penalty", "frequency_penalty", "top_k", "repetition_penalty", "num_beams", "user", "logit_bias",
          "response_format", "grammar", "prompt_lookup_num_tokens", "min_p", "ignore_eos",
          # llama.cpp's per-request draft settings (the server's --draft), which its OpenAI endpoints take too
          "speculative.n_max", "speculative.n_min", "speculative.p_min"}
COMPLETIONS = COMMON | {"prompt", "logprobs", "echo", "suffix", "best_of"}
CHAT = COMMON | {"messages", "logprobs", "top_logprobs", "max_completion_tokens", "tools", "tool_choice",
                 "parallel_tool_calls", "chat_template_kwargs", "reasoning_format", "prediction",
                 # OpenAI's, checked and ignored at their usual values (openai_fields.py)
                 "store", "metadata", "reasoning_effort", "prompt_cache_key", "safety_identifier", "verbosity",
                 "service_tier", "modalities", "audio", "functions", "function_call", "web_search_options",
                 # vLLM's: the reply continues the final assistant message (an assistant prefill)
                 "continue_final_message", "add_generation_prompt"}
#: the template variables the server sets itself, which chat_template_kwargs may not replace
TEMPLATE_VARS = (*RESERVED_VARS, "tools", "documents")  # and render_chat's own arguments (chat.RESERVED_VARS)


def check_text(strings: list, param: str) -> None:
    """400 naming ``param`` for a string that is not text (a lone surrogate: JSON's \\ud800 escapes have no UTF-8)."""
    for s in strings:
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise bad(param, f"{s[:40]!r} is not valid text (a lone UTF-16 surrogate)") from None


def check_text_within(value, where: str) -> None:
    """Every string in a JSON value (keys too), as ``check_text``: 400 naming where the first one that is not text
    lies (``where.key``, ``where[i]``), before the value is shown to a template or repeated in a reply."""
    if isinstance(value, str):
        check_text([value], where)
    elif isinstance(value, dict):
        for key, item in value.items():
            name = f"{where}.{key}" if where else str(key)
            check_text([str(key)], name)
            check_text_within(item, name)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_text_within(item, f"{where}[{i}]")


def known_fields(obj: dict, allowed, where: str, what: str) -> None:
    """400 naming ``where.<field>`` for a field of ``obj`` (a part of the body: a message, a tool, ...) not in
    ``allowed``: a misspelt field would otherwise be dropped unseen (the body's own keys: ``check_keys``)."""
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise bad(f"{where}.{unknown[0]:.60}", f"unrecognized field {unknown[0]!r:.60} in {what}; allowed: "
                                               f"{', '.join(sorted(allowed))}")


def check_keys(body: dict, allowed: set) -> None:
    unknown = sorted(k for k in body if k not in allowed)
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument {unknown[0]!r}; supported: {', '.join(sorted(allowed))}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad("user", "expected a string")


def logit_bias(body: dict) -> dict[int, float]:
    """OpenAI's ``logit_bias``: {token id as a decimal string: bias in [-100, 100]} -> {id: bias} (400 naming
    logit_bias for anything else). Ids are checked against the vocabulary later (the runtime's ``sequence_bias``
    check, reported as logit_bias)."""
    v = body.get("logit_bias")
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise bad("logit_bias", f"expected an object mapping token ids to biases, got {type(v).__name__}")
    out = {}
    for key, bias in v.items():  # keys: token ids written in decimal (JSON keys are strings); values: numbers
        if not isinstance(key, str) or not re.fullmatch(r"[0-9]{1,18}", key):
            raise bad("logit_bias", f"key {str(key)[:40]!r} is not a token id (a non-negative integer, as a string)")
        if not _is_num(bias) or not math.isfinite(bias) or not -MAX_LOGIT_BIAS <= bias <= MAX_LOGIT_BIAS:
            raise bad("logit_bias", f"the bias for token {key} is {bias!r:.40}; allowed: a number in "
                                    f"[-{MAX_LOGIT_BIAS}, {MAX_LOGIT_BIAS}] (-100 bans the token)")
        out[int(key)] = float(bias)
    return out


def sampling(body: dict, *, chat: bool, max_tokens_cap: int) -> Sampling:
    """The sampling parameters of either endpoint, checked (400 naming the parameter)."""
    name = "max_tokens"
    if chat and body.get("max_completion_tokens") is not None:
        name = "max_completion_tokens"
    echo = not chat and body.get("echo") is True
    max_tokens = _get_int(body, name, None if chat else 16, lo=0 if echo else 1, hi=max_tokens_cap)
    temperature = _get_num(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _get_num(body, "top_p", 1.0, 0.0, 1.0, lo_open=True)
    n = _get_int(body, "n", 1, lo=1, hi=16)
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop", f"expected a non-empty string or a list of up to {MAX_STOP} non-empty strings")
    check_text(stop, "stop")
    seed = _get_int(body, "seed", None, lo=0, hi=2**63 - 1)
    stream = _get_bool(body, "stream", False)
    include_usage = _include_usage(body.get("stream_options"), stream)
    presence = _get_num(body, "presence_penalty", 0.0, -2.0, 2.0)
    frequency = _get_num(body, "frequency_penalty", 0.0, -2.0, 2.0)
    top_k = _get_int(body, "top_k", 0, lo=0)
    min_p = _get_num(body, "min_p", 0.0, 0.0, 1.0)
    repetition = _get_num(body, "repetition_penalty", 1.0, 0.0, None, lo_open=True)
    num_beams = _get_int(body, "num_beams", 1, lo=1, hi=16)
    if chat:
        want = _get_bool(body, "logprobs", False)
        top = _get_int(body, "top_logprobs", None, lo=0, hi=MAX_TOP_LOGPROBS_CHAT)
        if top is not None and not want:
            raise bad("top_logprobs", "requires logprobs: true")
        logprobs = (top or 0) if want else None
    else:
        logprobs = _get_int(body, "logprobs", None, lo=0, hi=MAX_LOGPROBS_COMPLETIONS)
        if body.get("suffix") is not None:
            raise bad("suffix", "not supported by this server")
        if body.get("best_of") is not None and body.get("best_of") != n:
            raise bad("best_of", "only best_of == n is supported")
    if temperature < GREEDY_BELOW and n > 1 and num_beams == 1:
        raise bad("n", f"got {n}; greedy decoding (temperature 0, or below {GREEDY_BELOW:g}) gives one answer: use "
                       f"n=1, a temperature >= {GREEDY_BELOW:g}, or num_beams >= n")
    if num_beams > 1:
        if n > num_beams:
            raise bad("n", f"got {n}; with beam search n <= num_beams ({num_beams})")
        if stream:
            raise bad("stream", "streaming is available without beam search only (num_beams=1)")
        if logprobs is not None:
            raise bad("logprobs", "not available with beam search (num_beams > 1)")
        if presence or frequency:
            raise bad("presence_penalty", "presence/frequency penalties are not available with beam search")
    lookup = _get_int(body, "prompt_lookup_num_tokens", None, lo=1, hi=64)  # extension: speculative decoding
    if lookup is not None and num_beams > 1:
        raise bad("prompt_lookup_num_tokens", "not with beam search (num_beams > 1)")
    extra = {"prompt_lookup_num_tokens": lookup} if lookup is not None else {}
    predicted = prediction(body) if chat else None
    if predicted:
        if num_beams > 1:
            raise bad("prediction", "not with beam search (num_beams > 1)")
        extra["prediction"] = predicted
    draft = draft_overrides(body)
    if draft:
        extra["draft"] = draft
    return Sampling(max_tokens, temperature, top_p, n, stop, seed, stream, include_usage, presence, frequency,
                    top_k, repetition, num_beams, logprobs, logit_bias=logit_bias(body), max_tokens_param=name,
                    min_p=min_p, ignore_eos=_get_bool(body, "ignore_eos", False), extra=extra)


#: llama.cpp's per-request draft fields -> ``Request.draft``'s keys (runtime/decoding/scheduler_draft.py)
DRAFT_FIELDS = {"speculative.n_max": "max_tokens", "speculative.n_min": "min_tokens", "speculative.p_min": "p_min"}


def draft_overrides(body: dict) -> dict:
    """The body's ``speculative.n_max`` (0-64; 0: no draft), ``speculative.n_min`` (>= 0; clamped to n_max where the
    draft runs) and ``speculative.p_min`` (0-1) as ``Request.draft``'s keys, only those given (the server's
    --draft-* fill the rest); without a draft model they change nothing, as in llama.cpp."""
    out = {}
    for name, key in DRAFT_FIELDS.items():
        if body.get(name) is None:
            continue
        if key == "p_min":
            out[key] = _get_num(body, name, None, 0.0, 1.0)
        else:
            out[key] = _get_int(body, name, None, lo=0, hi=64 if key == "max_tokens" else None)
    return out


def prediction(body: dict) -> str | None:
    """OpenAI's ``prediction`` (Predicted Outputs): ``{"type": "content", "content": text}``, the content a string or
    text parts -> the text (None: absent, null or empty). The answer is the model's own whatever it says: the text
    only gives the proposals of speculative decoding (runtime/decoding/prediction.py)."""
    value = body.get("prediction")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("prediction", 'expected an object {"type": "content", "content": "..."}')
    known_fields(value, {"type", "content"}, "prediction", "a prediction")
    if value.get("type") != "content":
        raise bad("prediction.type", f"got {value.get('type')!r:.40}; allowed: 'content'")
    content = value.get("content")
    if isinstance(content, list):
        for k, part in enumerate(content):
            where = f"prediction.content[{k}]"
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(where, 'expected a text part {"type": "text", "text": "..."}')
            known_fields(part, {"type", "text"}, where, "a text part")
        content = "".join(part["text"] for part in content)
    if not isinstance(content, str):
        raise bad("prediction.content", "expected a string or a list of text parts")
    check_text([content], "prediction.content")
    return content or None


def _include_usage(options, stream: bool) -> bool:
    """``stream_options`` -> whether the stream ends with a usage chunk (400 naming the field inside it)."""
    if options is None:
        return False
    if not stream:
        raise bad("stream_options", "only allowed when stream is true")
    if not isinstance(options, dict):
        raise bad("stream_options", 'expected {"include_usage": true|false}')
    known_fields(options, ("include_usage",), "stream_options", "stream_options")
    v = options.get("include_usage")
    if v is not None and not isinstance(v, bool):
        raise bad("stream_options.include_usage", f"expected true or false, got {v!r:.60}")
    return bool(v)


def prompts(body: dict, vocab_size: int) -> list[str | list[int]]:
    """/v1/completions ``prompt``: a string, a list of strings, a list of token ids or a list of such lists ->
    the prompts (400 naming bad ids, empty prompts, wrong types)."""
    return text_or_id_items(body.get("prompt"), "prompt", vocab_size, MAX_PROMPTS)


def text_or_id_items(value, param: str, vocab_size: int, most: int, mixed: bool = True) -> list[str | list[int]]:
    """OpenAI's union of a string, a list of strings, a list of token ids or a list of such lists (/v1/completions'
    ``prompt``, /v1/embeddings' ``input``) -> the items (strings, or lists of ids within the vocabulary), at most
    ``most`` of them; 400 naming ``param`` for anything else (``mixed=False``: strings and id lists not together)."""
    if value is None:
        raise bad(param, "required: a string, a list of strings, a list of token ids or a list of token-id lists")
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value and all(_is_int(i) for i in value):
        items = [value]
    elif isinstance(value, list) and value and (all(isinstance(x, (str, list)) for x in value) if mixed else (
            all(isinstance(x, str) for x in value) or all(isinstance(x, list) for x in value))):
        items = value
    else:
        raise bad(param, "expected a non-empty string, a list of strings, a list of token ids or a list of "
                         "token-id lists" + ("" if mixed else " (not a mix of them)"))
    if len(items) > most:
        raise bad(param, f"{len(items)} items; at most {most} per request")
    for n, x in enumerate(items):
        if isinstance(x, str):
            if not x:
                raise bad(param, f"item {n} is an empty string")
            continue
        if not x or not all(_is_int(i) for i in x):
            raise bad(param, f"item {n}: a token-id item must be a non-empty list of integers")
        wrong = sorted({int(i) for i in x if i < 0 or i >= vocab_size})
        if wrong:
            raise bad(param, f"item {n}: token ids {wrong[:20]} are out of range; allowed: 0 <= id < {vocab_size}")
    return items


def template_kwargs(body: dict) -> dict:
    """``chat_template_kwargs`` (as llama.cpp's server and vLLM take it: extra variables for the chat template, e.g.
    Qwen3's ``{"enable_thinking": false}``) -> {name: JSON value} (400 naming chat_template_kwargs for anything but
    an object of identifiers other than the variables the server sets)."""
    try:  # the Python API's check (runtime/chat.py), with the names the server sets besides
        return check_template_vars(body.get("chat_template_kwargs"), reserved=TEMPLATE_VARS, setter="the server",
                                   container="an object")
    except ParameterError as exc:
        raise bad(exc.parameter, str(exc).removeprefix(f"{exc.parameter}: ")) from None


def continuation(body: dict, msgs: list[dict], *, bare: bool = False) -> dict:
    """vLLM's ``continue_final_message`` (and its ``add_generation_prompt``, false then) -> the render arguments:
    {"continue_final_message": True} where the reply continues the final assistant message (the prompt ends inside
    it), else {} (a new assistant turn, the generation prompt). ``bare``: a rendering without the generation prompt
    may be asked (``add_generation_prompt`` false: /tokenize, /apply-template), else only a reply's prompts."""
    cont = _get_bool(body, "continue_final_message", False)
    gen = body.get("add_generation_prompt")
    if gen is not None and not isinstance(gen, bool):
        raise bad("add_generation_prompt", "expected true or false")
    if not cont:
        if gen is False and bare:
            return {"add_generation_prompt": False}
        if gen is False:
            raise bad("add_generation_prompt", "false only with continue_final_message true: otherwise the reply is "
                                               "a new assistant turn, which the generation prompt opens")
        return {}
    if gen:
        raise bad("continue_final_message", "cannot be combined with add_generation_prompt true (vLLM's rule): the "
                                            "reply continues the last message instead of opening a new turn")
    if not continuable(msgs[-1]):
        raise bad("continue_final_message", "the last message must be the assistant's, with text to continue")
    return {"continue_final_message": True}


def continuable(message: dict) -> bool:
    """A chat message a reply may continue (a prefill): the assistant's, with text and no tool calls."""
    return (message["role"] == "assistant" and not message.get("tool_calls")
            and bool((message.get("content") or "").strip()))


def messages(body: dict) -> list[dict]:
    """/v1/chat/completions ``messages`` -> [{'role', 'content'}] with string content (text parts joined)."""
    ms = body.get("messages")
    if not isinstance(ms, list) or not ms:
        raise bad("messages", "required: a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(ms):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(where, "expected an object with role and content")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"{where}.role", f"got {role!r:.60}; allowed: {', '.join(ROLES)}")
        _check_message_fields(m, role, where)
        tool = _tool_fields(m, role, where)
        if content is None and tool.get("tool_calls"):  # an assistant turn that only calls tools
            out.append({"role": role, "content": None, **tool})
            continue
        if isinstance(content, list):  # content parts: text only (an assistant's refusal parts dropped)
            content = _text_parts(content, f"{where}.content", refusals=role == "assistant")
        if not isinstance(content, str):
            raise bad(f"{where}.content", f"expected a string or a list of text parts, got {type(content).__name__}")
        out.append({"role": role, "content": content, **tool})
    return out


def _check_message_fields(m: dict, role: str, where: str) -> None:
    """400 naming ``messages[i].<field>`` for a field OpenAI does not document for the role (a typo such as
    "contnet" would otherwise be dropped unseen), or a non-null field whose content cannot be used (``NULL_ONLY``)."""
    known_fields(m, MESSAGE_FIELDS[role], where, f"a {role} message")
    for name, why in NULL_ONLY.items():
        if m.get(name) is not None:
            raise bad(f"{where}.{name}", f"{why} (null is accepted)")


def _text_parts(parts: list, where: str, refusals: bool = False) -> str:
    """Content parts -> their texts joined by newlines; only OpenAI's text parts {"type": "text", "text": ...} (400 naming the
    part, or a field of it, for anything else); ``refusals``: an assistant's {"type": "refusal", "refusal": ...}
    parts are dropped, as its ``refusal`` field is."""
    texts = []
    for k, c in enumerate(parts):
        if refusals and isinstance(c, dict) and c.get("type") == "refusal" and isinstance(c.get("refusal"), str):
            known_fields(c, ("type", "refusal"), f"{where}[{k}]", "a refusal part")
            continue
        if not isinstance(c, dict) or c.get("type") != "text" or not isinstance(c.get("text"), str):
            raise bad(f"{where}[{k}]", 'only text parts ({"type": "text", "text": ...}) are supported')
        known_fields(c, ("type", "text"), f"{where}[{k}]", "a text part")
        texts.append(c["text"])
    return "\n".join(texts)  # as llama.cpp's server and vLLM join them


def _tool_fields(m: dict, role: str, where: str) -> dict:
    """A message's tool fields, checked -> {'tool_calls': [...]} (assistant), {'tool_call_id': ...} (tool), or {}.
    Calls keep OpenAI's shape: {"id", "type": "function", "function": {"name", "arguments": JSON string}}."""
    out = {}
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise bad(f"{where}.tool_calls", f"only assistant messages carry tool_calls (this one is {role!r})")
        if not isinstance(calls, list):
            raise bad(f"{where}.tool_calls", "expected a list of {\"id\", \"type\": \"function\", \"function\": "
                                             "{\"name\", \"arguments\"}} objects")
        checked = []
        for k, c in enumerate(calls):
            here = f"{where}.tool_calls[{k}]"
            f = c.get("function") if isinstance(c, dict) else None
            if not isinstance(f, dict) or c.get("type", "function") != "function":
                raise bad(here, 'expected {"id", "type": "function", "function": {"name", "arguments"}}')
            if not isinstance(f.get("name"), str) or not f["name"]:
                raise bad(f"{here}.function.name", "expected a non-empty string")
            args = f.get("arguments", "{}")
            if not isinstance(args, (str, dict)):
                raise bad(f"{here}.function.arguments", "expected a JSON string (or an object)")
            if c.get("id") is not None and not isinstance(c["id"], str):
                raise bad(f"{here}.id", "expected a string")
            checked.append({"id": c.get("id"), "type": "function", "function": {"name": f["name"], "arguments": args}})
        if checked:
            out["tool_calls"] = checked
    if role == "tool":
        call_id = m.get("tool_call_id")
        if not isinstance(call_id, str):
            raise bad(f"{where}.tool_call_id", "a tool message needs the tool_call_id (a string) of the call it "
                                               "answers")
        out["tool_call_id"] = call_id
    name = m.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise bad(f"{where}.name", "expected a string")
        out["name"] = name
    thought = m.get("reasoning_content")
    if thought is not None:
        if not isinstance(thought, str):
            raise bad(f"{where}.reasoning_content", "expected a string")
        out["reasoning_content"] = thought
    return out


def developer_as_system(messages: list[dict], template: str | None) -> list[dict]:
    """The chat messages with OpenAI's ``developer`` role (the chat completions' and the Responses API's) made ``system`` where the chat template never
    names a developer role (open models' templates know system / user / assistant / tool: SmolLM's would add its
    default system prompt and render an unseen role, others refuse it); a template that names it (gpt-oss's) gets
    them as they are. A developer message that follows only system messages joins the last of them (templates take
    one system message, first)."""
    if "developer" in (template or ""):
        return messages
    out: list[dict] = []
    for m in messages:
        if m["role"] == "developer":
            if out and all(x["role"] == "system" for x in out):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n\n" + m["content"]}
                continue
            m = {**m, "role": "system"}
        out.append(m)
    return out

"""llama.cpp's native POST /completion request -> checked parameters (``NativeRequest``): its field names, defaults
and prompt forms, its sampler chain (``runtime/llama_samplers.py``) and its ``logit_bias`` forms. Every mistake is
a 400 naming the field (OpenAI's error body, as the other endpoints answer), but one: biases or penalties so large
that the scores they make overflow float32 are a 400 when those scores are made, naming none (it is their sum with
the logits; biases of one token that add up past float32 are refused at once, naming logit_bias).

What llama.cpp's server documents and this one does not do is refused by name when asked for (``mirostat``,
``dynatemp_range``, ``dry_multiplier``, ``xtc_probability``, ``top_n_sigma``, ``post_sampling_probs``, ``lora``,
images), and accepted with the value that leaves it off; fields that only steer llama.cpp's own machinery are
accepted and have no effect here: ``cache_prompt`` (this server's prefix cache is always on), ``id_slot`` (no slots:
rows share one batch), ``n_keep`` (a prompt never slides out of the context: one past it is a 400),
``t_max_prompt_ms`` (llama.cpp does nothing with it either), the parameters of the samplers above while they are
off, and ``model``.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from onnxlm.runtime.decoding.scheduler_draft import DRAFT_MAX, DRAFT_MIN, DRAFT_P_MIN
from onnxlm.runtime.errors import InputError, ParameterError
from onnxlm.runtime.llama_samplers import DEFAULT_ORDER, FLOAT32_MAX, sampler_chain
from onnxlm.runtime.processors import SequenceBiasProcessor

from . import protocol
from .llamacpp_infill import KEYS as INFILL_KEYS
from .protocol import GREEDY_BELOW, _get_bool, _get_int, _get_num, _is_int, _is_num, bad

MAX_N_PROBS = 100  # top alternatives per token (llama.cpp has no cap; each costs a partial sort of the vocabulary)
MAX_STOP = 16
RANDOM_SEED = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: draw a random seed (as -1 does)

#: llama.cpp's defaults for /completion (tools/server/README.md)
DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.0,
            "repeat_last_n": 64, "presence_penalty": 0.0, "frequency_penalty": 0.0, "min_keep": 0}
#: sampler names llama.cpp accepts (its alternative names too) -> its step; its characters ("kypmt") as well
NAMES = {"penalties": "penalties", "dry": "dry", "top_n_sigma": "top_n_sigma", "top_k": "top_k", "typ_p": "typ_p",
         "top_p": "top_p", "min_p": "min_p", "xtc": "xtc", "temperature": "temperature", "infill": "infill",
         "top-k": "top_k", "top-p": "top_p", "nucleus": "top_p", "typical-p": "typ_p", "typical": "typ_p",
         "typ-p": "typ_p", "typ": "typ_p", "min-p": "min_p", "temp": "temperature", "top-n-sigma": "top_n_sigma"}
CHARS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k", "y": "typ_p", "p": "top_p", "m": "min_p",
         "x": "xtc", "t": "temperature", "i": "infill"}
#: llama.cpp's steps with no processor here -> (its switch, whether a value leaves it off)
OFF_WHEN = {"dry": ("dry_multiplier", lambda v: v == 0), "xtc": ("xtc_probability", lambda v: v == 0),
            "top_n_sigma": ("top_n_sigma", lambda v: v <= 0)}
#: options not done here -> (the value that leaves them off, what it is)
NOT_DONE = {"mirostat": (0, "mirostat sampling"), "dynatemp_range": (0, "dynamic temperature"),
            "dry_multiplier": (0, "DRY sampling"), "xtc_probability": (0, "XTC sampling"),
            "post_sampling_probs": (False, "probabilities after the sampler chain (n_probs gives the model's)"),
            "n_cmpl": (1, "more than one completion of a prompt (send the prompt that many times, a list)"),
            "n": (1, "more than one completion of a prompt (send the prompt that many times, a list)")}
EMPTY_ONLY = {"lora": "LoRA adapters", "image_data": "images", "multimodal_data": "images and audio"}
NUMBERS = {"dynatemp_exponent", "mirostat_tau", "mirostat_eta", "dry_base", "xtc_threshold", "top_n_sigma", "tfs_z",
           "sse_ping_interval"}  # (a stream's keep-alive comments: none sent here, events come at every token)
INTEGERS = {"dry_allowed_length", "dry_penalty_last_n", "n_keep", "id_slot", "n_discard", "t_max_prompt_ms",
            "n_cache_reuse"}  # (KV shifting to reuse chunks: the prefix cache reuses a common start only)
FLAGS = {"cache_prompt", "penalize_nl", "return_progress"}  # (return_progress: no prompt-progress events here)

KEYS = ({"prompt", "n_predict", "max_tokens", "stream", "stop", "seed", "n_probs", "return_tokens", "response_fields",
         "timings_per_token", "ignore_eos", "logit_bias", "samplers", "grammar", "json_schema", "response_format",
         "dry_sequence_breakers", "model", "n_indent", "t_max_predict_ms"}
        | set(DEFAULTS) | set(NOT_DONE) | set(EMPTY_ONLY) | NUMBERS | INTEGERS | FLAGS
        | set(protocol.DRAFT_FIELDS))  # llama.cpp's per-request draft settings (protocol.draft_overrides)


@dataclass
class NativeRequest:
    """A checked /completion body. ``prompts``: the prompt forms (str, ids, or a mix) to encode; ``n_predict``:
    the request's, the server's ``--max-tokens`` where it asked for more or for -1 (then the context may end it
    first); ``order``/``chain``: the samplers after the biases (``biases``, ``samplers``)."""

    prompts: list
    n_predict: int
    stream: bool
    stop: list[str]
    seed: int | None
    n_probs: int
    return_tokens: bool
    response_fields: list[str] | None
    timings_per_token: bool
    ignore_eos: bool
    greedy: bool
    order: list[str]
    chain: dict = field(default_factory=dict)  # sampler_chain's keyword arguments
    bias: object = None  # logit_bias as given (resolved to ids with the tokenizer: ``bias_ids``)
    n_predict_name: str = "n_predict"  # or max_tokens, as the body named it
    n_indent: int = 0  # llamacpp_limits.py
    t_max_predict_ms: int = 0
    draft: dict = field(default_factory=dict)  # the draft settings it runs with: Request.draft's keys (protocol.DRAFT_FIELDS)

    def settings(self) -> dict:
        """llama.cpp's ``generation_settings``: the options the request ran with."""
        c = self.chain
        return {"n_predict": self.n_predict, "seed": RANDOM_SEED if self.seed is None else self.seed,
                "temperature": c["temperature"], "top_k": c["top_k"], "top_p": c["top_p"], "min_p": c["min_p"],
                "typical_p": c["typical_p"], "repeat_last_n": c["penalty_last_n"],
                "repeat_penalty": c["repeat_penalty"], "presence_penalty": c["presence_penalty"],
                "frequency_penalty": c["frequency_penalty"], "min_keep": c["min_keep"], "stop": list(self.stop),
                "max_tokens": self.n_predict, "ignore_eos": self.ignore_eos, "stream": self.stream,
                "n_probs": self.n_probs, "samplers": list(self.order), "timings_per_token": self.timings_per_token,
                "post_sampling_probs": False, "n_indent": self.n_indent, "t_max_predict_ms": self.t_max_predict_ms,
                **{name: self.draft[key] for name, key in protocol.DRAFT_FIELDS.items()}}

    def biases(self, model) -> list:
        """The first step of llama.cpp's chain, before a grammar's mask (whose check then sees a conflict): its logit
        biases -> [] or one processor (``ignore_eos`` is the jobs' ``suppress_tokens``, before the mask too)."""
        bias = bias_ids(model, self.bias)
        return [SequenceBiasProcessor({(i,): b for i, b in bias.items()})] if bias else []

    def samplers(self, vocab=None) -> list:
        """The rest of the chain: its samplers in order (400 naming the field for a bad value); ``vocab``: what the
        infill step reads (``llama_samplers.InfillVocab``), needed where the order names it."""
        try:
            return sampler_chain(self.order, **self.chain, vocab=vocab)
        except ParameterError as exc:
            raise bad(exc.parameter, str(exc).split(": ", 1)[-1]) from None


def _number(body: dict, name: str, default):
    """Any finite number (llama.cpp bounds none of its sampling fields)."""
    return _get_num(body, name, default, -math.inf, None)


def _order(value) -> list[str]:
    """``samplers``: a list of llama.cpp's sampler names, or a string of its characters ("kypmt") -> names."""
    if isinstance(value, str):
        wrong = [c for c in value if c not in CHARS]
        if wrong:
            raise bad("samplers", f"{wrong[0]!r} is not a sampler character; allowed: {''.join(CHARS)} "
                                  f"({', '.join(f'{k}={v}' for k, v in CHARS.items())})")
        return [CHARS[c] for c in value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise bad("samplers", "expected a list of sampler names or a string of sampler characters")
    wrong = [s for s in value if s not in NAMES]
    if wrong:
        raise bad("samplers", f"{wrong[0][:40]!r} is not a sampler; allowed: {', '.join(sorted(set(NAMES.values())))}")
    return [NAMES[s] for s in value]


def parse(body: dict, *, max_tokens_cap: int, infill: bool = False, draft: dict | None = None) -> NativeRequest:
    """A /completion body (JSON object) -> NativeRequest, every field checked (400 naming it). ``infill``: an
    /infill body (its own fields are llamacpp_infill.py's; its ``prompt`` is optional and goes into the FIM
    prompt). ``draft``: the server's draft settings ({"max_tokens", "min_tokens", "p_min"}), which the body's
    ``speculative.*`` fields override."""
    keys = KEYS | INFILL_KEYS if infill else KEYS
    unknown = sorted(k for k in body if k not in keys)
    if unknown:
        where = "/infill" if infill else "/completion"
        raise bad(unknown[0], f"unrecognized field {unknown[0]!r} for {where}; supported: {', '.join(sorted(keys))}")
    if body.get("model") is not None and not isinstance(body["model"], str):
        raise bad("model", "expected a string")
    for name, (off, what) in NOT_DONE.items():
        v = body.get(name)
        if v is not None and not (v is off if isinstance(off, bool) else _is_num(v) and v == off):
            raise bad(name, f"{what} is not available on this server; leave {name} out or {off!r}")
    for name, what in EMPTY_ONLY.items():
        if body.get(name) not in (None, []):
            raise bad(name, f"{what} are not available on this server; leave {name} out or []")
    for name in NUMBERS:
        _number(body, name, None)
    for name in INTEGERS:
        _get_int(body, name, None)
    for name in FLAGS:
        _get_bool(body, name, False)
    if body.get("tfs_z") not in (None, 1, 1.0):
        raise bad("tfs_z", "tail-free sampling is not available (llama.cpp removed it too); leave tfs_z out or 1")
    breakers = body.get("dry_sequence_breakers")
    if breakers is not None and not (isinstance(breakers, list) and all(isinstance(b, str) for b in breakers)):
        raise bad("dry_sequence_breakers", "expected a list of strings")
    if "prompt" not in body and not infill:
        raise bad("prompt", "required: a string, token ids, a mix of both, or a list of such prompts")
    name = "n_predict" if body.get("n_predict") is not None else "max_tokens"
    n_predict = _get_int(body, name, -1, lo=-1)
    n_predict = max_tokens_cap if n_predict < 0 or n_predict > max_tokens_cap else n_predict  # the server's cap
    stop = body.get("stop")
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP or not all(isinstance(s, str) and s for s in stop):
        raise bad("stop", f"expected a list of up to {MAX_STOP} non-empty strings")
    protocol.check_text(stop, "stop")
    seed = _get_int(body, "seed", -1, lo=-1, hi=RANDOM_SEED)
    temperature = _number(body, "temperature", DEFAULTS["temperature"])
    if temperature > FLOAT32_MAX:
        raise bad("temperature", f"got {temperature!r}; must be a finite float32 number")
    n_probs = _get_int(body, "n_probs", 0, lo=0, hi=MAX_N_PROBS)
    fields = body.get("response_fields")
    if fields is not None and not (isinstance(fields, list) and all(isinstance(f, str) for f in fields)):
        raise bad("response_fields", "expected a list of field names (a/b names field b of object a)")
    chain = {"temperature": temperature if temperature >= GREEDY_BELOW else 0.0,  # 1/T would overflow: greedy
             "top_k": _get_int(body, "top_k", DEFAULTS["top_k"]),
             "top_p": _number(body, "top_p", DEFAULTS["top_p"]), "min_p": _number(body, "min_p", DEFAULTS["min_p"]),
             "typical_p": _number(body, "typical_p", DEFAULTS["typical_p"]),
             "min_keep": _get_int(body, "min_keep", DEFAULTS["min_keep"], lo=0),
             "penalty_last_n": _get_int(body, "repeat_last_n", DEFAULTS["repeat_last_n"], lo=-1),
             "repeat_penalty": _number(body, "repeat_penalty", DEFAULTS["repeat_penalty"]),
             "frequency_penalty": _number(body, "frequency_penalty", DEFAULTS["frequency_penalty"]),
             "presence_penalty": _number(body, "presence_penalty", DEFAULTS["presence_penalty"])}
    order = _order(body["samplers"]) if body.get("samplers") is not None else list(DEFAULT_ORDER)
    for step in [s for s in order if s in OFF_WHEN]:
        switch, off = OFF_WHEN[step]
        if body.get(switch) is not None and not off(body[switch]):
            raise bad(switch, f"the {step} sampler is not available on this server")
    order = [s for s in order if s not in OFF_WHEN]  # off: llama.cpp's step would change nothing
    if _is_num(body.get("top_n_sigma")) and body["top_n_sigma"] > 0:
        raise bad("top_n_sigma", "the top_n_sigma sampler is not available on this server")
    if body.get("json_schema") is not None and (body.get("response_format") is not None
                                                or body.get("grammar") not in (None, "")):
        raise bad("json_schema", "cannot be combined with response_format or grammar: give one of them")
    return NativeRequest(prompts=[] if infill else _prompt_forms(body["prompt"]), n_predict=n_predict,
                         n_predict_name=name, stream=_get_bool(body, "stream", False), stop=stop,
                         seed=None if seed in (-1, RANDOM_SEED)
                         else seed, n_probs=n_probs, return_tokens=_get_bool(body, "return_tokens", False),
                         response_fields=fields, timings_per_token=_get_bool(body, "timings_per_token", False),
                         ignore_eos=_get_bool(body, "ignore_eos", False),
                         greedy=chain["temperature"] <= 0 and "temperature" in order,  # llama.cpp: keeps the top
                         order=order, chain=chain, bias=body.get("logit_bias"),
                         n_indent=max(0, _get_int(body, "n_indent", 0)),  # below 0: off, as 0
                         t_max_predict_ms=max(0, _get_int(body, "t_max_predict_ms", 0)),
                         draft=_draft(body, draft or {"max_tokens": DRAFT_MAX, "min_tokens": DRAFT_MIN,
                                                      "p_min": DRAFT_P_MIN}))


def _draft(body: dict, server: dict) -> dict:
    """The body's ``speculative.*`` (protocol.draft_overrides) over the server's draft settings, n_min clamped to
    n_max as llama.cpp clamps it: what the request runs with (its ``generation_settings``)."""
    out = {**server, **protocol.draft_overrides(body)}
    out["min_tokens"] = min(out["min_tokens"], out["max_tokens"])
    return out


def _is_mixed(p) -> bool:
    """One prompt given as a list: token ids only, or ids and strings mixed (llama.cpp's rule)."""
    return isinstance(p, list) and bool(p) and all(_is_int(x) or isinstance(x, str) for x in p) and any(
        _is_int(x) for x in p)


def _prompt_forms(p) -> list:
    """``prompt``: a string, token ids, ids and strings mixed, or a list of such prompts -> the prompts."""
    if isinstance(p, str) or _is_mixed(p):
        items = [p]
    elif isinstance(p, list) and p and all(isinstance(x, str) or _is_mixed(x) for x in p):
        items = p
    else:
        raise bad("prompt", "expected a string, token ids, a list mixing token ids and strings, or a non-empty list "
                            "of such prompts")
    if len(items) > protocol.MAX_PROMPTS:
        raise bad("prompt", f"{len(items)} prompts; at most {protocol.MAX_PROMPTS} per request")
    return items


def encode_prompt(model, form) -> list[int]:
    """One prompt form -> its ids, as llama.cpp's server builds them: a string with the tokenizer's special tokens
    (BOS) and special-token strings read as such; in a mixed list, ids as they are and strings encoded, the special
    tokens added only for a string that comes first. 400 naming ``prompt`` for ids out of the vocabulary."""
    parts = [form] if isinstance(form, str) else form
    ids: list[int] = []
    for k, part in enumerate(parts):
        if isinstance(part, str):
            if model.tokenizer is None:
                raise bad("prompt", "this model has no tokenizer.json: send token ids")
            ids += _encode(model, part, "prompt", add_special_tokens=k == 0)
        else:
            if not 0 <= part < model.vocab_size:
                raise bad("prompt", f"token id {part} is out of range; allowed: 0 <= id < {model.vocab_size}")
            ids.append(int(part))
    if not ids:
        raise bad("prompt", "the prompt encodes to no tokens")
    return ids


def _encode(model, text: str, param: str, add_special_tokens: bool) -> list[int]:
    try:
        return model.tokenizer.encode(text, add_special_tokens=add_special_tokens)
    except InputError as exc:  # text that is not text (a lone surrogate)
        raise bad(param, str(exc).split(": ", 1)[-1]) from None


def _key(k: str):
    """A {token: bias} key: an integer as llama.cpp's strtol reads one (ASCII digits, leading spaces and a sign),
    else the text."""
    return int(k) if re.fullmatch(r"\s*[+-]?[0-9]+", k) else k


def bias_ids(model, value) -> dict[int, float]:
    """llama.cpp's ``logit_bias``: [[token, bias], ...] or {token: bias}, a token being an id or a string (each of
    the string's tokens gets the bias) and a bias a number or false (never that token) -> {id: bias}, the biases
    of a token named more than once added up (llama.cpp adds each entry)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(_key(k), v) for k, v in value.items()]
    elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise bad("logit_bias", "expected [[token, bias], ...] or {token: bias}, a token being an id or a string and "
                                "a bias a number or false")
    out: dict[int, float] = {}
    for token, b in pairs:
        if b is False:
            b = -math.inf
        elif not _is_num(b) or not abs(b) <= FLOAT32_MAX:
            raise bad("logit_bias", f"the bias for {token!r:.40} is {b!r:.40}; expected a finite float32 number or "
                                    "false")
        if isinstance(token, str):
            if model.tokenizer is None:
                raise bad("logit_bias", "this model has no tokenizer.json: give token ids")
            ids = _encode(model, token, "logit_bias", add_special_tokens=False)
        elif _is_int(token) and 0 <= token < model.vocab_size:
            ids = [int(token)]
        else:
            raise bad("logit_bias", f"{token!r:.40} is not a token id in [0, {model.vocab_size}) or a string")
        for i in ids:
            out[i] = out.get(i, 0.0) + float(b)  # -inf stays -inf
    _check_sums(out)
    return out


def _check_sums(bias: dict[int, float]) -> None:
    """Biases of a token named more than once add up, and their sum must stay a float32 number (the processor's
    dtype): past it, a 400 naming logit_bias. llama.cpp adds them in float32 and goes on with an infinite logit
    (then NaN probabilities); a cast to float32 here would make the same infinity, so it is refused instead of
    clipped: no answer computed from an overflow."""
    for i, b in bias.items():
        if math.isfinite(b) and abs(b) > FLOAT32_MAX:
            raise bad("logit_bias", f"the biases of token {i} add up to {b:.4g}, past float32's largest number "
                                    f"({FLOAT32_MAX:.4g}); give smaller biases (or false to ban the token)")

"""Generation parameters with transformers' (4.57) ``GenerationConfig`` names, defaults and semantics.

Only the parameters the onnxlm runtime implements are fields; any other key met in a ``generation_config.json``
(``transformers_version``, ``use_cache``, ``epsilon_cutoff``, ...) is kept, unused, in ``config.extra``.

``validate()`` raises :class:`~onnxlm.runtime.errors.ParameterError` naming the parameter, the bad value and the
allowed range.  Differences from transformers (which only logs warnings for many of these):

* ``temperature``: NaN/inf and non-numbers are always rejected (transformers samples uniformly at inf); ``<= 0`` is rejected only when ``do_sample`` (with
  greedy/beam search the temperature is unused, and ``temperature=0`` is a common way to ask for greedy).
* ``top_k``/``top_p``/``min_p``/``typical_p`` are range-checked only when ``do_sample`` (as transformers builds
  their warpers only then; unused otherwise), but their types always: a string is never a top_k, and NaN never a
  top_p; ``None`` for these means "off", as in transformers.
* ``seed`` is onnxlm's own (``None``: nondeterministic).
* ``stop`` is onnxlm's own: OpenAI's and vLLM's stop sequences. The generation ends when its new text contains
  one, and the text is cut before it; only the decoded new text is searched, so a stop made of a multi-byte
  character split over tokens matches and the prompt never does. ``stop_strings`` keeps transformers' rule (token
  strings, the prompt's tail included, as ``StopStringCriteria``). One or the other, not both.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import numbers
import os
import reprlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Union

from .errors import ModelFileError, ParameterError

__all__ = ["GenerationConfig", "SAMPLING_PARAMETERS", "BEAM_PARAMETERS", "DEFAULT_MAX_LENGTH",
           "sequence_bias_items"]

DEFAULT_MAX_LENGTH = 20
_F32_TINY = 1.1754943508222875e-38  # float32's smallest normal number
_F32_MAX = 3.4028234663852886e38  # float32's largest: a bias above it is +inf on the float32 scores
MAX_ROWS_PER_PROMPT = 1024  # num_beams / num_return_sequences at most (rows decoded at once for one prompt)

#: parameters that only have an effect when ``do_sample`` is True (transformers' "warpers")
SAMPLING_PARAMETERS = frozenset({"temperature", "top_k", "top_p", "min_p", "typical_p", "seed"})
#: parameters that only have an effect when ``num_beams > 1``
BEAM_PARAMETERS = frozenset({"length_penalty", "early_stopping"})

# fields for which an explicit ``None`` means "off" (so a JSON null is kept instead of falling back to the default)
_NONE_MEANS_OFF = frozenset({
    "temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size",
    "length_penalty", "max_new_tokens", "min_new_tokens", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "assistant_confidence_threshold",
})
#: ``num_assistant_tokens_schedule`` values (transformers' AssistedCandidateGenerator)
ASSISTANT_SCHEDULES = ("constant", "heuristic", "heuristic_transient")
# fields that are not generation parameters (bookkeeping)
_INTERNAL = frozenset({"extra", "_explicit"})


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    """A real number a float can hold (an int past float's range, 10**400, is none: refused by name, not an
    OverflowError later)."""
    if not isinstance(x, numbers.Real) or isinstance(x, bool):
        return False
    try:
        float(x)
    except OverflowError:
        return False
    return True


def _as_list(v: Any) -> Any:
    """A string -> [it]; anything else as it is (a stop-string parameter's two forms)."""
    return [v] if isinstance(v, str) else v


def _is_bool(x: Any) -> bool:
    t = type(x)  # numpy's bool without importing numpy: np.bool_ (numpy 1), np.bool (numpy 2, named "bool")
    return isinstance(x, bool) or (t.__module__ == "numpy" and t.__name__ in ("bool_", "bool"))


def sequence_bias_items(v: Any) -> dict:
    """``sequence_bias`` in either of transformers' forms -> {tuple of token ids: float bias} (ParameterError naming
    the bad entry otherwise).

    Forms: a non-empty dict {tuple of ids >= 0: bias} or a non-empty list [[[ids...], bias], ...] (the form a JSON
    file can hold; a later entry for the same ids wins, as in transformers). A bias is a number, not NaN and not
    +inf; -inf bans the sequence's last token where the sequence would be completed (onnxlm accepts ints too, where
    transformers asks for floats)."""
    allowed = ("a non-empty dict {tuple of token ids >= 0: bias} or a non-empty list [[[token ids >= 0], bias], "
               "...], a bias being a number (not NaN, not +inf)")
    short = reprlib.repr  # bad values are quoted, shortened
    if isinstance(v, dict):
        pairs = list(v.items())
    elif isinstance(v, (list, tuple)):
        pairs = []
        for entry in v:  # [[ids...], bias] -> (tuple of ids, bias)
            if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not isinstance(entry[0], (list, tuple)):
                raise ParameterError("sequence_bias", f"entry {short(entry)} is not [[token ids], bias]; must be "
                                                      f"{allowed}")
            pairs.append((tuple(entry[0]), entry[1]))
    else:
        raise ParameterError("sequence_bias", f"got {short(v)}; must be {allowed}")
    if not pairs:
        raise ParameterError("sequence_bias", f"got {short(v)} (empty); must be {allowed}")
    out = {}
    for ids, bias in pairs:  # each key a non-empty tuple of ids >= 0, each bias a number below +inf
        if not isinstance(ids, tuple) or not ids or not all(_is_int(i) and i >= 0 for i in ids):
            raise ParameterError("sequence_bias", f"key {short(ids)} is not a non-empty tuple of token ids >= 0; "
                                                  f"must be {allowed}")
        if not _is_num(bias) or math.isnan(bias) or bias > _F32_MAX:
            raise ParameterError("sequence_bias", f"bias {short(bias)} for {short(ids)} is not a number up to "
                                                  f"float32's largest, {_F32_MAX:.4g} (NaN and values that round to "
                                                  f"+inf are refused; -inf bans); must be {allowed}")
        out[tuple(int(i) for i in ids)] = float(bias)
    return out


#: transformers decoding settings onnxlm does not implement, with the value at which they do nothing
UNSUPPORTED_DEFAULTS = {
    "num_beam_groups": 1, "diversity_penalty": 0.0, "penalty_alpha": None, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "encoder_repetition_penalty": 1.0, "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None, "guidance_scale": None,
    "renormalize_logits": False, "constraints": None, "force_words_ids": None, "forced_decoder_ids": None,
    "watermarking_config": None, "max_time": None,
    "remove_invalid_values": False,
}


#: names transformers' generate accepts that change nothing in onnxlm's output: accepted with a one-time warning
NO_EFFECT_PARAMETERS = {
    "use_cache": "the KV cache is always used",
    "return_dict_in_generate": "generate always returns a GenerationResult",
    "output_attentions": "attention weights are not returned",
    "output_hidden_states": "hidden states are not returned",
}

_WARNED: set = set()


def warn_once(key: str, message: str) -> None:
    """warnings.warn(message) the first time ``key`` is seen in this process (transformers' warning_once)."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, UserWarning, stacklevel=3)


@dataclass
class GenerationConfig:
    # --- length ---
    max_length: int = DEFAULT_MAX_LENGTH  # total length (prompt + new); overridden by max_new_tokens
    max_new_tokens: Optional[int] = None
    min_length: int = 0  # total length below which EOS is masked; overridden by min_new_tokens
    min_new_tokens: Optional[int] = None
    early_stopping: Union[bool, str] = False  # beam search: True | False | "never"
    stop_strings: Optional[Union[str, list]] = None
    stop: Optional[Union[str, list]] = None  # onnxlm's: OpenAI's stop sequences (module docstring)
    # --- strategy ---
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    # --- logits manipulation ---
    temperature: Optional[float] = 1.0
    top_k: Optional[int] = 50
    top_p: Optional[float] = 1.0
    min_p: Optional[float] = None
    typical_p: Optional[float] = 1.0
    repetition_penalty: Optional[float] = 1.0
    no_repeat_ngram_size: Optional[int] = 0
    bad_words_ids: Optional[list] = None
    suppress_tokens: Optional[list] = None
    begin_suppress_tokens: Optional[list] = None
    forced_bos_token_id: Optional[int] = None
    forced_eos_token_id: Optional[Union[int, list]] = None
    length_penalty: Optional[float] = 1.0
    sequence_bias: Optional[Union[dict, list]] = None  # {(ids...): bias} or [[[ids...], bias], ...]
    # --- special tokens ---
    eos_token_id: Optional[Union[int, list]] = None
    pad_token_id: Optional[int] = None
    bos_token_id: Optional[int] = None
    decoder_start_token_id: Optional[int] = None
    # --- outputs ---
    output_scores: bool = False
    output_logits: Optional[bool] = None
    return_dict_in_generate: bool = False  # accepted for compatibility, ignored
    # --- speculative decoding (runtime/decoding/speculative.py; the draft model itself is generate's assistant_model=)
    prompt_lookup_num_tokens: Optional[int] = None  # propose up to this many tokens copied from the row's own ids
    max_matching_ngram_size: Optional[int] = None  # longest n-gram prompt lookup matches (None: 2, as transformers)
    num_assistant_tokens: int = 20  # tokens the draft model proposes per round (start value of the heuristics)
    num_assistant_tokens_schedule: str = "constant"  # "constant" | "heuristic" | "heuristic_transient"
    assistant_confidence_threshold: Optional[float] = 0.4  # the draft stops at a token it gives a lower probability
    # --- onnxlm ---
    seed: Optional[int] = None
    # --- bookkeeping (not parameters) ---
    extra: dict = field(default_factory=dict, repr=False, compare=False)  # unknown keys read from a file
    _explicit: frozenset = field(default=frozenset(), repr=False, compare=False)  # names set through replace()

    # ------------------------------------------------------------------ construction
    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.name not in _INTERNAL]

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """Build from a transformers ``generation_config.json`` dict; unknown keys go to ``.extra``.

        A JSON ``null`` for a parameter whose ``None`` is meaningless (e.g. ``max_length``) gives the default."""
        if not isinstance(d, dict):
            raise ParameterError("generation_config", f"expected a dict, got {type(d).__name__}")
        names = set(cls.parameter_names())
        defaults = cls()
        kw, extra = {}, {}
        for k, v in d.items():
            if k in names:
                if v is None and k not in _NONE_MEANS_OFF and getattr(defaults, k) is not None:
                    continue
                kw[k] = v
            else:
                extra[k] = v
        return cls(**kw, extra=extra)

    def unsupported_settings(self) -> dict:
        """Decoding settings read from a file that onnxlm does not implement, set to a value that would change
        the output (e.g. num_beam_groups=2): {name: value}. Callers warn about them."""
        return {k: v for k, v in self.extra.items()
                if k in UNSUPPORTED_DEFAULTS and v is not None and v != UNSUPPORTED_DEFAULTS[k]}

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "GenerationConfig":
        """Read a ``generation_config.json`` (a directory holding one is accepted too)."""
        p = os.fspath(path)
        if os.path.isdir(p):
            p = os.path.join(p, "generation_config.json")
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise ModelFileError(f"generation config not found: {p}", path=p) from None
        except (OSError, ValueError) as e:
            raise ModelFileError(f"generation config {p} is not readable JSON: {e}", path=p) from None
        if not isinstance(d, dict):
            raise ModelFileError(f"generation config {p} must hold a JSON object", path=p)
        return cls.from_dict(d)

    def to_dict(self) -> dict:
        """Parameters as a plain dict (transformers names; ``extra`` not included)."""
        return {n: getattr(self, n) for n in self.parameter_names()}

    def replace(self, **kw: Any) -> "GenerationConfig":
        """New config with the given parameters changed (not validated; call ``validate()``).

        Unknown names raise ParameterError listing close matches. Names transformers accepts that have no effect
        here (``use_cache``, ``output_attentions``, ...) are dropped with a one-time warning."""
        names = self.parameter_names()
        for k in [k for k in kw if k in NO_EFFECT_PARAMETERS]:
            warn_once(f"no-effect:{k}", f"generation parameter {k!r} has no effect in onnxlm "
                                        f"({NO_EFFECT_PARAMETERS[k]}); ignored")
            if k not in names:
                kw.pop(k)
        for k in kw:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=3, cutoff=0.6)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ParameterError(k, f"unknown generation parameter{hint} (known: {', '.join(names)})")
        return dataclasses.replace(self, **kw, _explicit=self._explicit | frozenset(kw))

    # ------------------------------------------------------------------ derived values
    @property
    def eos_token_ids(self) -> list[int]:
        """EOS ids as a list (empty when there is none)."""
        e = self.eos_token_id
        if e is None:
            return []
        if _is_int(e):
            return [int(e)]
        return [int(i) for i in e]

    @property
    def is_sampling(self) -> bool:
        return bool(self.do_sample)

    @property
    def is_beam(self) -> bool:
        return self.num_beams > 1

    def lengths(self, input_length: int, *, max_positions: Optional[int] = None) -> tuple[int, int]:
        """(min_length, max_length) as *total* lengths for a prompt of ``input_length`` ids, like transformers'
        ``_prepare_generated_length``: ``max_new_tokens`` wins over ``max_length``; a ``max_length`` left at the
        default 20 (not passed through ``replace``) means 20 *new* tokens, capped by ``max_positions``;
        ``min_new_tokens`` wins over ``min_length``. For seq2seq pass the decoder input length (usually 1)."""
        if self.max_new_tokens is not None:
            max_length = self.max_new_tokens + input_length
        elif "max_length" not in self._explicit and self.max_length == DEFAULT_MAX_LENGTH:
            max_length = self.max_length + input_length
            if max_positions is not None:
                max_length = min(max_length, max_positions)
        else:
            max_length = self.max_length
        if self.min_new_tokens is not None:
            min_length = self.min_new_tokens + input_length
        else:
            min_length = self.min_length or 0
        return int(min_length), int(max_length)

    def ignored_parameters(self) -> list[str]:
        """Parameters set to a non-default value that have no effect in the current mode (transformers warns)."""
        out = []
        if not self.do_sample:
            if self.temperature is not None and self.temperature != 1.0:
                out.append("temperature")
            if self.top_p is not None and self.top_p != 1.0:
                out.append("top_p")
            if self.min_p is not None:
                out.append("min_p")
            if self.typical_p is not None and self.typical_p != 1.0:
                out.append("typical_p")
            if self.top_k is not None and self.top_k != 50:
                out.append("top_k")
            if self.seed is not None:
                out.append("seed")
        if self.num_beams == 1:
            if self.early_stopping is not False:
                out.append("early_stopping")
            if self.length_penalty is not None and self.length_penalty != 1.0:
                out.append("length_penalty")
        return out

    # ------------------------------------------------------------------ validation
    def stop_list(self) -> list[str]:
        """The call's stop strings, ``stop``'s or ``stop_strings``' (never both), as a list."""
        return list(_as_list(self.stop or self.stop_strings or []))

    def validate(self) -> "GenerationConfig":
        """Raise ParameterError for the first out-of-range parameter; returns self."""

        def bad(name: str, allowed: str) -> ParameterError:
            return ParameterError(name, f"got {reprlib.repr(getattr(self, name))}; must be {allowed}")  # shortened

        def check_int(name: str, lo: int, optional: bool, allowed: Optional[str] = None) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_int(v) or v < lo:
                raise bad(name, allowed or f"an integer >= {lo}" + (" or None" if optional else ""))

        def check_bool(name: str, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if not _is_bool(v):
                raise bad(name, "True or False")

        def check_ids(name: str, v: Any, allowed: str) -> None:
            if not isinstance(v, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in v):
                raise ParameterError(name, f"got {getattr(self, name)!r}; must be {allowed}")

        # length
        check_int("max_length", 1, False)
        check_int("max_new_tokens", 1, True, "an integer >= 1 (transformers requires > 0) or None")
        if not _is_int(self.min_length):
            raise bad("min_length", "an integer (<= 0: no minimum)")
        check_int("min_new_tokens", 0, True)
        es = self.early_stopping
        if not (_is_bool(es) or (isinstance(es, str) and es == "never")):
            raise bad("early_stopping", 'True, False or "never"')
        for name in ("stop_strings", "stop"):
            ss = getattr(self, name)
            if ss is not None:
                items = _as_list(ss)
                if (not isinstance(items, (list, tuple)) or not items
                        or not all(isinstance(s, str) and s for s in items)):
                    raise bad(name, "a non-empty string or a non-empty list of non-empty strings, or None")
        if self.stop_strings and self.stop:
            raise ParameterError("stop", "pass stop (the new text's, OpenAI's rule) or stop_strings "
                                         "(transformers' rule), not both")

        # strategy
        check_bool("do_sample")
        check_int("num_beams", 1, False)
        check_int("num_return_sequences", 1, False)
        for name in ("num_beams", "num_return_sequences"):  # rows decoded at once, per prompt
            if getattr(self, name) > MAX_ROWS_PER_PROMPT:
                raise bad(name, f"an integer in [1, {MAX_ROWS_PER_PROMPT}] (each is a row decoded at once)")
        if self.num_return_sequences != 1:
            if self.num_beams == 1:
                if not self.do_sample:
                    raise bad("num_return_sequences",
                              "1 for greedy decoding (use do_sample=True or num_beams >= num_return_sequences)")
            elif self.num_return_sequences > self.num_beams:
                raise bad("num_return_sequences", f"<= num_beams ({self.num_beams}) for beam search")

        # numbers: NaN is refused everywhere (transformers lets some through, and they answer NaN or nothing)
        for name in ("temperature", "top_p", "min_p", "typical_p", "repetition_penalty", "length_penalty"):
            v = getattr(self, name)
            if v is not None and (not _is_num(v) or math.isnan(v)):
                raise bad(name, "a number (not NaN) or None")
        # processors built in every mode, checked as their transformers constructors check them
        rp = self.repetition_penalty
        if rp is not None and rp != 1.0 and not rp >= _F32_TINY:  # scores are float32: 1e-300 would be 0
            raise bad("repetition_penalty", f"a number > 0 and >= {_F32_TINY:.3g} (float32's smallest normal: a smaller "
                                            "one is 0 for float32 scores; 1.0 = no penalty) or None")
        nr = self.no_repeat_ngram_size
        if nr is not None and not _is_int(nr):
            raise bad("no_repeat_ngram_size", "an integer (<= 0 disables it) or None")
        lp = self.length_penalty
        if lp is not None and not math.isfinite(lp):
            raise bad("length_penalty", "a finite number or None")
        if self.temperature is not None and math.isinf(self.temperature):
            raise bad("temperature", "a finite number (inf is refused) or None")
        if self.top_k is not None and not _is_int(self.top_k):  # its range: only when sampling (below)
            raise bad("top_k", "an integer >= 0 (0 disables top-k) or None")
        # warpers: built (and so checked) only when sampling, as in transformers; otherwise they have no effect
        if self.do_sample:
            t = self.temperature
            if t is not None and t != 1.0 and not t > 0:
                raise bad("temperature", "a number > 0 when do_sample=True (for greedy decoding set do_sample=False)")
            k = self.top_k
            if k is not None and k != 0 and (not _is_int(k) or k < 0):
                raise bad("top_k", "an integer >= 0 (0 disables top-k) or None")
            for name, allowed, ok in (("top_p", "in [0, 1] (>= 1 disables it)", lambda v: v >= 0),
                                      ("typical_p", "in (0, 1] (>= 1 disables it)", lambda v: v > 0)):
                v = getattr(self, name)
                if v is not None and v < 1.0 and not ok(v):
                    raise bad(name, f"a number {allowed} or None")
            if self.min_p is not None and not 0 <= self.min_p <= 1:
                raise bad("min_p", "a number in [0, 1] or None")
        check_int("seed", 0, True, "an integer >= 0 or None")

        # token lists
        bw = self.bad_words_ids
        if bw is not None:
            if (not isinstance(bw, (list, tuple)) or len(bw) == 0
                    or not all(isinstance(w, (list, tuple)) and len(w) > 0 for w in bw)
                    or not all(_is_int(i) and i >= 0 for w in bw for i in w)):
                raise bad("bad_words_ids", "a non-empty list of non-empty lists of token ids >= 0, or None")
        for name in ("suppress_tokens", "begin_suppress_tokens"):
            v = getattr(self, name)
            if v is not None:
                check_ids(name, v, "a list of token ids >= 0, or None")
        if self.sequence_bias is not None:
            sequence_bias_items(self.sequence_bias)

        # special tokens
        for name in ("eos_token_id", "forced_eos_token_id"):
            v = getattr(self, name)
            if v is None:
                continue
            if _is_int(v):
                if v < 0:
                    raise bad(name, "a token id >= 0, a list of token ids >= 0, or None")
            else:
                check_ids(name, v, "a token id >= 0, a list of token ids >= 0, or None")
                if name == "forced_eos_token_id" and not v:  # transformers refuses it too: nothing could be forced
                    raise bad(name, "a token id >= 0, a non-empty list of token ids >= 0, or None")
        for name in ("forced_bos_token_id", "bos_token_id", "decoder_start_token_id"):
            check_int(name, 0, True, "a token id >= 0 or None")
        # pad_token_id: transformers only warns for a negative value (old LLaMA configs carry -1); accept any int
        if self.pad_token_id is not None and not _is_int(self.pad_token_id):
            raise bad("pad_token_id", "an integer token id or None")

        # speculative decoding
        check_int("prompt_lookup_num_tokens", 1, True)
        check_int("max_matching_ngram_size", 1, True)
        check_int("num_assistant_tokens", 1, False)
        if self.num_assistant_tokens_schedule not in ASSISTANT_SCHEDULES:
            raise bad("num_assistant_tokens_schedule", " or ".join(repr(s) for s in ASSISTANT_SCHEDULES))
        th = self.assistant_confidence_threshold
        if th is not None and (not _is_num(th) or not 0 <= th <= 1):
            raise bad("assistant_confidence_threshold", "a number in [0, 1] (0 or None: no early stop) or None")
        if self.prompt_lookup_num_tokens is not None and self.num_beams > 1:
            raise bad("prompt_lookup_num_tokens", "None with num_beams > 1 (speculative decoding runs greedy and "
                      "sampling only, as in transformers)")

        # outputs
        check_bool("output_scores")
        check_bool("output_logits", optional=True)
        check_bool("return_dict_in_generate", optional=True)
        return self

    def check_vocab(self, vocab_size: int) -> None:
        """Raise ParameterError if any token id parameter is >= vocab_size."""
        def ids_of(v: Any) -> Iterable[int]:
            if v is None:
                return []
            if _is_int(v):
                return [v]
            out = []
            for x in v:
                out.extend(ids_of(x))
            return out

        for name in ("eos_token_id", "forced_eos_token_id", "forced_bos_token_id", "bad_words_ids",
                     "suppress_tokens", "begin_suppress_tokens", "decoder_start_token_id", "bos_token_id"):
            big = [i for i in ids_of(getattr(self, name)) if i >= vocab_size]
            if big:
                raise ParameterError(name, f"token ids {big} are out of the vocabulary; must be < {vocab_size}")
        if self.sequence_bias is not None:
            items = sequence_bias_items(self.sequence_bias)
            big = sorted({i for ids in items for i in ids if i >= vocab_size})
            if big:
                raise ParameterError("sequence_bias", f"token ids {big[:20]} are out of the vocabulary; must be < "
                                                      f"{vocab_size}")
            banned = {ids[0] for ids, b in items.items() if len(ids) == 1 and b == -math.inf}
            if len(banned) >= vocab_size:  # no token could ever be chosen
                raise ParameterError("sequence_bias", f"bans (-inf) every token of the vocabulary ({vocab_size}); "
                                                      "leave at least one allowed")

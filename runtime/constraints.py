"""Structured generation: the output must match a JSON Schema, a regex, one of a list of choices, or a grammar.

Engine: llguidance (optional extra ``structured``: ``pip install onnxlm[structured]``; Rust, numpy bitmasks, no torch).
xgrammar was not chosen: its wheel requires torch and transformers and its matcher imports torch.  The llguidance
tokenizer is built from the artifact's ``tokenizer.json`` string (``LLTokenizer(json, ...)``), never through
``llguidance.hf`` (which imports transformers).

Parameters of ``generate`` / ``stream`` / ``chat`` (at most one per row):
  ``json_schema``  a dict or a JSON string (JSON Schema; llguidance's supported subset).  Whitespace is not flexible:
                   the output is compact JSON (``{"a":1,"b":[2,3]}``), so a small model cannot wander in blank space.
                   A schema may opt back in with ``"x-guidance": {"whitespace_flexible": true}``.  An object that
                   lists ``properties`` takes no other keys unless it says so (``additionalProperties``), as
                   llama.cpp and xgrammar read a schema (``closed_objects``).
  ``regex``        a Rust ``regex`` pattern the whole output must match (Unicode-aware: ``\\d`` matches any Unicode
                   digit; write ``[0-9]`` for ASCII digits).
  ``choices``      a non-empty list of non-empty strings: the output is exactly one of them.
  ``grammar``      a context-free grammar in llguidance's Lark syntax (``start: ...``, ``/regex/`` terminals) or in
                   llama.cpp's GBNF (``root ::= ...``, converted by llguidance).
  ``constraints``  per-row constraints, one entry per prompt: a dict with one of the keys above, or None for a
                   row without constraint (e.g. ``[{"json_schema": S}, None, {"regex": "[0-9]+"}]``).

Contract: the row's new tokens, up to its EOS, always form a prefix the constraint allows; EOS is allowed only where
the constraint is complete, and a complete constraint that admits no continuation forces EOS, so the row ends with
finish reason ``"eos"``.  A row cut by ``max_new_tokens`` (``"length"``) or a stop string (``"stop"``) may be
incomplete: ``GenerationResult.constraint_satisfied`` says, per row, whether the new text (up to EOS) matches the
whole constraint (None for an unconstrained row).

The mask is a logits processor (``ConstraintProcessor``) placed after transformers' processors and before the
sampling warpers (where transformers puts a user ``logits_processor``), so temperature / top-k / top-p act on the
allowed tokens only.  It computes one bitmask for the whole batch (``llguidance.numpy.fill_next_token_bitmask_par``)
and follows the decoding state protocol through ``ConstrainedState``: ``select(rows)`` forks/reorders the matchers
with the KV cache (beam search), ``advance(tokens)`` feeds them the chosen tokens.
"""
from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .errors import ParameterError
from .processors import LogitsProcessor
from .versions import MIN_LLGUIDANCE, dotted, llguidance_too_old

__all__ = ["KINDS", "Constraint", "make_constraint", "pop_constraints", "ConstraintEngine", "engine_for",
           "ConstraintProcessor", "ConstrainedState", "response_format_to_params"]

KINDS = ("json_schema", "regex", "choices", "grammar")
INSTALL_HINT = "pip install 'onnxlm[structured]'"
_CACHE_SIZE = 64  # compiled grammars kept per engine (least recently used dropped first)
_NEG_INF = np.float32(-np.inf)
_PARALLEL_ROWS = 16  # live rows from which the bitmask is filled by llguidance's thread pool


def _llguidance(parameter: str):
    """-> the llguidance module, or ParameterError naming the parameter and the extra to install (or upgrade: older
    than ``MIN_LLGUIDANCE``)."""
    try:
        import llguidance
        import llguidance.numpy  # noqa: F401 - the bitmask helpers
    except ImportError:
        raise ParameterError(parameter, f"structured generation needs the optional 'structured' extra "
                                        f"(llguidance): {INSTALL_HINT}") from None
    old = llguidance_too_old(llguidance)
    if old:
        least = dotted(MIN_LLGUIDANCE)
        raise ParameterError(parameter, f"structured generation needs llguidance >= {least}; {old} is installed: "
                                        f"pip install -U 'llguidance>={least}'")
    return llguidance


# ---------------------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class Constraint:
    """One row's constraint: ``kind`` (the parameter that gave it) and the llguidance grammar (JSON text)."""

    kind: str
    grammar: str

    def __repr__(self) -> str:
        return f"Constraint(kind={self.kind!r})"


def make_constraint(kind: str, value: Any) -> Constraint:
    """('json_schema' | 'regex' | 'choices' | 'grammar', value) -> Constraint (types checked; compiled later)."""
    llg = _llguidance(kind)
    matcher = llg.LLMatcher
    if kind == "json_schema":
        schema = value
        if isinstance(value, (str, bytes)):
            try:
                schema = json.loads(value)
            except ValueError as exc:
                raise ParameterError(kind, f"not valid JSON ({exc}); give a JSON Schema as a dict or a JSON "
                                           "string") from None
        if not isinstance(schema, dict):
            raise ParameterError(kind, f"got {type(schema).__name__}; a JSON Schema must be a dict (JSON object), "
                                       "e.g. {'type': 'object', 'properties': {...}}")
        try:
            text = json.dumps(closed_objects(schema))
        except (TypeError, ValueError) as exc:
            raise ParameterError(kind, f"the schema is not JSON-serialisable: {exc}") from None
        try:
            return Constraint(kind, matcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False}))
        except ValueError as exc:  # llguidance refuses it while reading (e.g. nested past its depth limit)
            raise ParameterError(kind, f"invalid JSON Schema: {exc}") from None
    if kind == "regex":
        if not isinstance(value, str) or not value:
            raise ParameterError(kind, f"got {value!r}; must be a non-empty regular expression string")
        return Constraint(kind, matcher.grammar_from_regex(value))
    if kind == "choices":
        if (isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value
                or not all(isinstance(c, str) and c for c in value)):
            raise ParameterError(kind, f"got {value!r}; must be a non-empty list of non-empty strings")
        return Constraint(kind, matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in value)))
    if kind == "grammar":
        if not isinstance(value, str) or not value.strip():
            raise ParameterError(kind, f"got {value!r}; must be a non-empty grammar (llguidance Lark syntax, "
                                       "or llama.cpp GBNF)")
        try:
            return Constraint(kind, llg.grammar_from("grammar", value))  # Lark as is; GBNF converted to Lark
        except ValueError as exc:
            raise ParameterError(kind, f"invalid grammar: {exc}") from None
    raise ParameterError("constraints", f"unknown constraint {kind!r}; allowed: {', '.join(KINDS)}")


# the schema-valued keywords walked (those of _MERGING are never reached: such a schema is left as given)
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "definitions")             # name -> schema
_SCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")                                      # [schema, ...]
_SCHEMA_ONES = ("additionalProperties", "items", "contains", "not", "propertyNames", "unevaluatedItems",
                "additionalItems")                                                     # schema (or a list: items)
#: keywords that make an object's keys come from several places (merges, dynamic references, conditions)
_MERGING = ("allOf", "$id", "$anchor", "$dynamicRef", "$dynamicAnchor", "$recursiveRef", "if", "then", "else",
            "dependentSchemas", "dependencies", "unevaluatedProperties")
#: what may stand beside a ``$ref`` without adding keys (annotations; Pydantic writes a field's description there)
_BESIDE_REF = {"$ref", "description", "title", "default", "examples", "$comment", "$defs", "definitions", "deprecated",
               "readOnly", "writeOnly", "$schema", "nullable"}
_LOCAL_REF = re.compile(r"#/(\$defs|definitions)/[A-Za-z0-9_.\-]+")


def closed_objects(schema: Any) -> Any:
    """A JSON Schema -> a copy whose objects listing ``properties`` allow no other keys unless they say so
    (``additionalProperties: false`` where it is not given and ``required`` names only listed keys; keys matching
    ``patternProperties`` stay allowed), as llama.cpp's grammar converter and xgrammar's strict mode read a schema: a small model
    otherwise adds keys the schema lets pass (``{"a": 1, "b": 2, "c": 3}`` for a schema of ``a``). Only a schema whose
    objects are each described in one place is closed: plain objects, nested ones, arrays, unions of whole objects,
    ``$ref``s to ``$defs`` / ``definitions`` (annotations beside them); a schema that merges descriptions anywhere
    (``allOf``, a ``$ref`` beside other keywords, alternatives beside an object's own properties, ``$id`` /
    ``$anchor`` references, conditions) is returned as given, open as JSON Schema reads it. A bare ``{"type":
    "object"}`` stays any object."""
    return _closed(schema) if _described_once(schema) else schema


def _described_once(schema: Any) -> bool:
    """Whether every object of ``schema`` is described in one place (see ``closed_objects``)."""
    if isinstance(schema, list):
        return all(_described_once(s) for s in schema)
    if not isinstance(schema, dict):
        return True
    if any(k in schema for k in _MERGING):
        return False
    ref = schema.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not _LOCAL_REF.fullmatch(ref) or set(schema) - _BESIDE_REF):
        return False
    alternatives = [k for k in ("anyOf", "oneOf") if k in schema]  # beside an object's own keywords they merge
    if alternatives and set(schema) - _BESIDE_REF - {"anyOf", "oneOf", "type", "discriminator"}:
        return False
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            if not all(_described_once(sub) for sub in value.values()):
                return False
        elif (key in _SCHEMA_LISTS or key in _SCHEMA_ONES) and not _described_once(value):
            return False
    return True


def _closed(schema: Any) -> Any:
    """``closed_objects``' walk over a schema whose objects are each described once."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _closed(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS or key in _SCHEMA_ONES:
            out[key] = _closed(value)
        else:
            out[key] = value
    props, required = schema.get("properties"), schema.get("required")
    if (isinstance(props, dict) and "additionalProperties" not in schema
            and (not isinstance(required, list) or all(r in props for r in required))):
        out["additionalProperties"] = False
    return out


def _one(entry: dict, where: str) -> Constraint:
    """{'json_schema': S} (exactly one key of KINDS) -> Constraint."""
    given = [k for k in entry if entry[k] is not None]
    unknown = [k for k in entry if k not in KINDS]
    if unknown:
        raise ParameterError("constraints", f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(KINDS)}")
    if len(given) != 1:
        raise ParameterError("constraints", f"{where}: give exactly one of {', '.join(KINDS)}, got "
                                            f"{given or 'none'}")
    return make_constraint(given[0], entry[given[0]])


def pop_constraints(params: dict, batch: int) -> list[Constraint | None] | None:
    """Remove the constraint parameters from ``params`` (kwargs of generate) -> one Constraint (or None) per prompt
    row, or None when no row is constrained.  Several constraints for the same rows raise ParameterError."""
    single = {k: params.pop(k) for k in KINDS if k in params}
    single = {k: v for k, v in single.items() if v is not None}
    per_row = params.pop("constraints", None)
    if len(single) > 1:
        names = list(single)
        raise ParameterError(names[1], f"only one constraint per row; got {', '.join(names)} together")
    if single and per_row is not None:
        raise ParameterError("constraints", f"give either {next(iter(single))}= (every row) or constraints= "
                                            "(one entry per prompt), not both")
    if single:
        kind, value = next(iter(single.items()))
        return [make_constraint(kind, value)] * batch
    if per_row is None:
        return None
    if not isinstance(per_row, (list, tuple)) or len(per_row) != batch:
        raise ParameterError("constraints", f"must be a list with one entry per prompt ({batch}), each a dict "
                                            f"like {{'json_schema': ...}} or None; got {per_row!r}"[:300])
    rows: list[Constraint | None] = []
    for i, entry in enumerate(per_row):
        if entry is None:
            rows.append(None)
        elif isinstance(entry, Constraint):
            rows.append(entry)
        elif isinstance(entry, dict):
            rows.append(_one(entry, f"entry {i}"))
        else:
            raise ParameterError("constraints", f"entry {i}: got {type(entry).__name__}; each entry is a dict "
                                                f"with one of {', '.join(KINDS)}, or None")
    return rows if any(r is not None for r in rows) else None


def response_format_to_params(response_format: Any) -> dict:
    """OpenAI's ``response_format`` -> onnxlm's constraint arguments for ``generate`` (for the HTTP server).

    ``{"type": "json_schema", "json_schema": {"name": .., "schema": {..}, "strict": ..}}`` -> ``{"json_schema": schema}``
    (``strict`` changes nothing: the output always matches), ``{"type": "json_object"}`` -> any JSON object,
    ``{"type": "text"}`` or None -> ``{}``.  Anything else raises ParameterError("response_format", ...)."""
    if response_format is None:
        return {}
    if not isinstance(response_format, dict):
        raise ParameterError("response_format", f"got {type(response_format).__name__}; must be an object like "
                                                '{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}')
    kind = response_format.get("type")
    if kind == "text":
        return {}
    if kind in ("json_object", "json_schema"):
        _llguidance("response_format")  # without the extra: a ParameterError naming it (a 400 in the server)
    if kind == "json_object":
        return {"json_schema": {"type": "object"}}
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, dict):
            raise ParameterError("response_format", 'type "json_schema" needs a "json_schema" object with '
                                                    'a "name" and a "schema"')
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ParameterError("response_format", 'json_schema.name must be a non-empty string')
        strict = spec.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ParameterError("response_format", f"json_schema.strict must be true, false or absent, got "
                                                    f"{strict!r}")
        schema = spec.get("schema", {"type": "object"})  # OpenAI: the schema is optional
        if not isinstance(schema, dict):
            raise ParameterError("response_format", f"json_schema.schema must be a JSON Schema object, got "
                                                    f"{type(schema).__name__}")
        try:
            make_constraint("json_schema", schema)
            _check_schema_alone(schema)
        except ParameterError as exc:
            message = str(exc).split(": ", 1)[-1]
            raise ParameterError("response_format", f"invalid json_schema.schema: {message}") from None
        return {"json_schema": schema}
    raise ParameterError("response_format", f"type {kind!r} is not supported; allowed: 'text', 'json_object', "
                                            "'json_schema'")


def _check_schema_alone(schema: dict) -> None:
    """Compile a schema without a model's tokenizer (validity only) -> ParameterError('json_schema', ...)."""
    llg = _llguidance("json_schema")
    grammar = llg.LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
    is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ParameterError("json_schema", _clean(messages[0]))


def _clean(message: str) -> str:
    """llguidance's error text -> its first lines (the matcher appends a long state dump)."""
    return message.split("\n<state>")[0].strip()


# ---------------------------------------------------------------------------------------------------- engine
class ConstraintEngine:
    """The llguidance tokenizer of one model (tokenizer.json, EOS ids, vocabulary size) and its compiled grammars."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Sequence[int], tokenizer_size: int):
        llg = _llguidance("json_schema")
        self.llg = llg
        self.vocab_size = int(vocab_size)
        self.eos = np.asarray(sorted({int(e) for e in eos_token_ids}), dtype=np.int64)
        # the mask covers the tokenizer's ids and the model's (an embedding may be padded past the tokenizer)
        self.tokenizer = llg.LLTokenizer(tokenizer_json, n_vocab=max(int(vocab_size), int(tokenizer_size)),
                                         eos_token=[int(e) for e in self.eos])
        self.words = (self.tokenizer.vocab_size + 31) // 32  # int32 words per bitmask row
        self.executor = llg.LLExecutor()
        self._compiled: OrderedDict[str, Any] = OrderedDict()  # grammar -> compiled matcher, LRU
        self._lock = threading.Lock()  # generate may run in several threads (a server)

    def compile(self, constraint: Constraint):
        """Constraint -> its compiled matcher in the initial state (cached per grammar); ParameterError naming
        the constraint's parameter when the schema/regex/grammar is invalid or can match nothing."""
        with self._lock:
            hit = self._compiled.get(constraint.grammar)
            if hit is not None:
                self._compiled.move_to_end(constraint.grammar)
                return hit
        m = self.llg.LLMatcher(self.tokenizer, constraint.grammar, log_level=0)
        if m.is_error():
            raise ParameterError(constraint.kind, f"invalid {_WHAT[constraint.kind]}: {_clean(m.get_error())}")
        probe = m.deep_copy()
        probe.compute_bitmask()  # the first mask settles whether anything can start (updates is_stopped)
        if probe.is_stopped() and not probe.is_accepting():
            raise ParameterError(constraint.kind, f"the {_WHAT[constraint.kind]} cannot match any text")
        with self._lock:
            self._compiled[constraint.grammar] = m
            if len(self._compiled) > _CACHE_SIZE:
                self._compiled.popitem(last=False)
        return m

    def matcher(self, constraint: Constraint):
        """-> a fresh matcher (a copy of the compiled one: rows never share state)."""
        return self.compile(constraint).deep_copy()

    def satisfied(self, constraint: Constraint, new_ids: Sequence[int]) -> bool:
        """Do the new tokens (up to the first EOS) form a complete match of the constraint?"""
        ids = [int(i) for i in new_ids]
        for k, i in enumerate(ids):
            if i in self.eos:
                ids = ids[:k]
                break
        m = self.matcher(constraint)
        return m.try_consume_tokens(ids) == len(ids) and m.is_accepting()


_WHAT = {"json_schema": "JSON schema", "regex": "regex", "choices": "choices", "grammar": "grammar"}


def engine_for(model, eos_token_ids: Sequence[int], parameter: str) -> ConstraintEngine:
    """The model's engine for these EOS ids (built once per model and EOS set: ~0.2 s for a 49k vocabulary)."""
    _llguidance(parameter)
    if model.tokenizer is None:
        raise ParameterError(parameter, f"{model.path} has no tokenizer.json; constraints work on text, so they "
                                        "need the artifact's tokenizer")
    if not eos_token_ids:
        raise ParameterError("eos_token_id", f"{parameter} ends a row with an EOS token once the constraint is "
                                             "complete; this generation has no eos_token_id: set one")
    cache = model.__dict__.setdefault("_constraint_engines", {})
    key = tuple(sorted({int(e) for e in eos_token_ids}))
    if key not in cache:
        tok = model.tokenizer.tokenizer
        from tokenizers import Tokenizer  # a copy without padding/truncation, as llguidance's own HF bridge does
        plain = Tokenizer.from_str(tok.to_str())
        plain.no_padding()
        plain.no_truncation()
        cache[key] = ConstraintEngine(plain.to_str(), model.vocab_size, key, tok.get_vocab_size(with_added_tokens=True))
    return cache[key]


# ---------------------------------------------------------------------------------------------------- processor
class ConstraintProcessor(LogitsProcessor):
    """Sets every token a row's constraint does not allow next to -inf; rows without a constraint pass unchanged.
    ``(input_ids [b, t] int64, scores [b, V] float32) -> [b, V] float32``, one llguidance bitmask for the batch.

    State follows the decoding state protocol: ``select(rows)`` reorders/forks the matchers as the KV cache
    (beam search), ``advance(tokens)`` consumes each row's chosen token.  A row stops being masked once it has
    consumed its EOS, or a token its matcher refuses (only rows the loop has already finished or dropped: a
    finished row fed padding, a beam whose score is -inf), or once ``retire`` says the loop ended it (a stop string
    or a stopping criterion: its matcher may then allow nothing the other processors leave, which is no conflict)."""

    def __init__(self, engine: ConstraintEngine, constraints: Sequence[Constraint | None]):
        self.engine = engine
        self.constraints = list(constraints)  # as given (the rows before any select)
        self.kinds = [c.kind if c is not None else None for c in constraints]
        self.matchers = [engine.matcher(c) if c is not None else None for c in constraints]
        self.live = np.array([m is not None for m in self.matchers], dtype=bool)  # [b] row still masked
        self._bitmask = np.full((len(self.matchers), engine.words), -1, dtype=np.int32)

    def __repr__(self) -> str:
        return f"ConstraintProcessor(rows={len(self.matchers)}, constrained={int(self.live.sum())})"

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(self.live)
        if rows.size == 0:
            return scores
        b, vocab = scores.shape
        # 1. allowed next tokens of every live row into one [b, words] int32 bitmask (llguidance's thread pool
        #    only for big batches: below that its hand-offs cost more than the masks, measured on 2 busy cores)
        llnp = self.engine.llg.numpy
        if rows.size >= _PARALLEL_ROWS:
            llnp.fill_next_token_bitmask_par(self.engine.executor, [(self.matchers[r], int(r)) for r in rows],
                                             self._bitmask)
        else:
            for r in rows:
                llnp.fill_next_token_bitmask(self.matchers[r], self._bitmask, int(r))
        allowed = np.unpackbits(self._bitmask[rows].view(np.uint8), axis=1, bitorder="little")[:, :vocab]
        allowed = allowed.view(bool)  # [r, V] (0/1 bytes)
        # 2. EOS only where the constraint is complete (llguidance also offers EOS at a dead end)
        for j, r in enumerate(rows):
            if not self.matchers[r].is_accepting():
                allowed[j, self.engine.eos[self.engine.eos < vocab]] = False
        # 3. mask: disallowed -> -inf (one pass when every row is constrained)
        if rows.size == b:
            out = np.where(allowed, scores, _NEG_INF)
            best = out.max(axis=1)  # [r]
        else:
            out = scores.copy()
            out[rows] = np.where(allowed, scores[rows], _NEG_INF)
            best = out[rows].max(axis=1)
        # 4. a live row with nothing left is a conflict (e.g. min_new_tokens blocking a forced EOS): refuse it
        empty = best == _NEG_INF
        if empty.any():
            j = int(np.flatnonzero(empty)[0])
            kind = self.kinds[rows[j]]
            if not allowed[j].any():
                raise ParameterError(kind, f"row {int(rows[j])}: the {_WHAT[kind]} reached a state that nothing "
                                           "can complete (no token allowed)")
            raise ParameterError(kind, f"row {int(rows[j])}: every token the {_WHAT[kind]} allows next is "
                                       "blocked by other generation parameters (min_new_tokens / min_length "
                                       "blocking EOS, bad_words_ids, suppress_tokens, ...)")
        return out

    def select(self, rows: np.ndarray) -> None:
        """rows [b'] int64: row i becomes old row rows[i] (a row used twice is forked with deep_copy)."""
        used: set[int] = set()
        matchers = []
        for r in np.asarray(rows).tolist():
            m = self.matchers[r]
            if m is not None and r in used:
                m = m.deep_copy()
            used.add(r)
            matchers.append(m)
        self.matchers = matchers
        self.live = self.live[rows]
        self.kinds = [self.kinds[r] for r in np.asarray(rows).tolist()]
        if len(matchers) != len(self._bitmask):
            self._bitmask = np.full((len(matchers), self.engine.words), -1, dtype=np.int32)

    def retire(self, finished: np.ndarray) -> None:
        """finished [b] bool: rows the decoding loop has ended (any reason); they are masked no more."""
        self.live &= ~np.asarray(finished, dtype=bool)

    def advance(self, tokens: np.ndarray) -> None:
        """tokens [b] int64: each live row's matcher consumes its chosen token; EOS (or a refused token) ends it."""
        for r in np.flatnonzero(self.live):
            tok = int(tokens[r])
            if not self.matchers[r].consume_token(tok) or tok in self.engine.eos:
                self.live[r] = False


class ConstrainedState:
    """A decoding state (docs/design.md protocol) whose select/advance also drive a ConstraintProcessor, so the
    decoding loops stay unaware of constraints."""

    def __init__(self, state, processor: ConstraintProcessor):
        self.state, self.processor = state, processor

    def select(self, rows: np.ndarray) -> None:
        self.state.select(rows)
        self.processor.select(rows)

    def advance(self, tokens: np.ndarray) -> np.ndarray:
        self.processor.advance(tokens)
        return self.state.advance(tokens)

    def __getattr__(self, name: str):
        return getattr(self.state, name)


class FollowingConstraint:
    """A ConstraintProcessor for the speculative loop (decoding/speculative.py), which decides several positions per
    forward pass: called with the rows' ids, it first has each live row's matcher consume the ids decided since its
    last call (``catch_up``), so each position is masked after the tokens decided before it, and the matcher never
    sees a proposed token that was not picked (nothing to roll back). The state is not wrapped in ConstrainedState
    then: this processor does the consuming. ``input_length``: the rows' length when decoding starts."""

    def __init__(self, processor: ConstraintProcessor, input_length: int):
        self.processor, self.length = processor, input_length

    def __repr__(self) -> str:
        return f"FollowingConstraint({self.processor!r}, at={self.length})"

    def catch_up(self, input_ids: np.ndarray) -> None:
        """input_ids [b, t] int64: the live rows' matchers consume ids [length, t) (a retired row's are padding)."""
        for position in range(self.length, input_ids.shape[1]):
            self.processor.advance(input_ids[:, position])
        self.length = max(self.length, input_ids.shape[1])

    def __call__(self, input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
        self.catch_up(input_ids)
        return self.processor(input_ids, scores)

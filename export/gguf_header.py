"""The GGUF metadata keys onnxlm's import reads, checked once against what they may hold before anything reads them.

gguf-py's reader parses any well-formed file, whatever its values say: a ``block_count`` of 4,000,000,000 or of
"two", a head count of 0, an EOS id that is an array, merges that are integers, a negative norm epsilon. Read as
they are, such values hung ``onnxlm info`` (a loop over 4e9 blocks), broke transformers and the tokenizer builders
with tracebacks (TypeError, ZeroDivisionError, AttributeError) or exported a model whose validation saw NaN.

``check_header(reader, path)`` (run by ``gguf_reader.gguf_reader`` on every file it hands out, so by the metadata
reader, ``onnxlm info``, the tokenizer builders, the GGUF-native export and transformers' loader alike) checks each key
of ``GENERAL_KEYS`` (any file) and of ``ARCH_KEYS`` (``{arch}.*``, for an architecture onnxlm exports:
``TESTED_GGUF_ARCHITECTURES``; another one's keys may mean other things, and its file is refused by name later) that
the file holds: its GGUF value type (``GGUFValueType``: an integer, a float, a string, a bool, or an array of one of
them) and its range, then what the keys say together (``block_count`` against the file's ``blk.N`` tensors where it
has some, ``check_blocks``, which ``load_gguf`` asks again of any file before a model is built; the head counts
against each other). A value outside them is a ``ModelFileError`` naming the file, the key, its type and value
and what is allowed. An absent key is not checked here: the readers have their defaults (llama.cpp's).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

from onnxlm.runtime.errors import ModelFileError

__all__ = ["TESTED_GGUF_ARCHITECTURES", "ENCODER_GGUF_ARCHITECTURES", "GENERAL_KEYS", "ARCH_KEYS", "check_header",
           "check_blocks", "scalar_value", "architecture_refusal", "exported_architectures"]

#: ``general.architecture`` values whose files the tests export (tests/test_gguf*.py, tests/test_gemma3_270m.py)
TESTED_GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3", "granite", "smollm3",
                             "olmo2", "ernie4_5", "exaone4", "gpt2", "stablelm", "lfm2")


#: ``general.architecture`` values exported as embedding-only encoders (export/gguf_bert.py, export/nomic_bert.py;
#: tests/test_gguf_bert.py, tests/test_gguf_nomic_bert.py)
ENCODER_GGUF_ARCHITECTURES = ("bert", "nomic-bert")


def architecture_refusal(path, arch) -> str | None:
    """Why a GGUF file of ``general.architecture`` ``arch`` is not exported, in one line naming ``path``, the
    architecture and those onnxlm exports (the list ``onnxlm info`` names); None for one it exports."""
    if isinstance(arch, str) and arch in TESTED_GGUF_ARCHITECTURES + ENCODER_GGUF_ARCHITECTURES:
        return None
    said = (f"GGUF architecture {_short(arch)!r} (its general.architecture)" if isinstance(arch, str) else
            "a GGUF file without general.architecture")
    return f"{path}: onnxlm does not export {said}; the GGUF architectures it exports: " + exported_architectures()


def exported_architectures() -> str:
    """The GGUF architectures onnxlm exports, as its refusals and ``onnxlm info`` list them."""
    return (", ".join(TESTED_GGUF_ARCHITECTURES) + "; as embedding models: " + ", ".join(ENCODER_GGUF_ARCHITECTURES))


# what a key's value may be (``Rule.kind``)
INT = "int"              # any GGUF integer type (not a bool)
FLOAT = "float"          # FLOAT32 / FLOAT64, or an integer type (a whole number is a number)
STRING = "string"
BOOL = "bool"            # BOOL, or an integer type (0 / 1), as gguf_tokenizer's _flag reads it
STRINGS = "strings"      # an array of strings
INTS = "ints"            # an array of integers
FLOATS = "floats"        # an array of floats (or integers)
PER_LAYER = "per-layer"  # an integer, or an array of integers with one per block (llama.cpp's get_key_or_arr)
PATTERN = "pattern"      # an integer, or an array of bools (or integers) (sliding_window_pattern)

_WORDS = {INT: "an integer", FLOAT: "a finite number", STRING: "a string", BOOL: "a boolean",
          STRINGS: "an array of strings", INTS: "an array of integers", FLOATS: "an array of numbers",
          PER_LAYER: "an integer (or an array of one integer per block)",
          PATTERN: "an integer, or an array of booleans (one per block)"}


@dataclass(frozen=True)
class Rule:
    """A key's kind (``INT``, ``FLOAT``, ...) and range: a number at least ``least``, or (floats) above ``above``."""

    kind: str
    least: float | None = None
    above: float | None = None

    def allowed(self) -> str:
        bound = (f" >= {self.least:g}" if self.least is not None else f" > {self.above:g}" if self.above is not None
                 else "")
        return _WORDS[self.kind] + bound


#: keys of any GGUF file the import reads -> their rule
GENERAL_KEYS = {
    "general.architecture": Rule(STRING),
    "general.name": Rule(STRING),
    "general.file_type": Rule(INT, least=0),
    "tokenizer.ggml.model": Rule(STRING),
    "tokenizer.ggml.pre": Rule(STRING),
    "tokenizer.ggml.tokens": Rule(STRINGS),
    "tokenizer.ggml.token_type": Rule(INTS),
    "tokenizer.ggml.scores": Rule(FLOATS),
    "tokenizer.ggml.merges": Rule(STRINGS),
    **{f"tokenizer.ggml.{name}_token_id": Rule(INT, least=0)
       for name in ("bos", "eos", "unknown", "padding", "eot", "eom")},
    "tokenizer.ggml.add_bos_token": Rule(BOOL),
    "tokenizer.ggml.add_eos_token": Rule(BOOL),
    "tokenizer.ggml.add_space_prefix": Rule(BOOL),
    "tokenizer.chat_template": Rule(STRING),
}

#: ``{arch}.*`` keys the import reads (gguf_config, transformers' GGUF_CONFIG_MAPPING, gguf_architectures) -> their
#: rule, for the architectures onnxlm exports. A count of nothing (0 blocks, heads, positions) divides by zero or
#: builds an empty model; a norm epsilon or rope base at or below 0 (or inf, NaN) gives NaN. Factors llama.cpp reads
#: 0 as "none" for may be 0 (rope.scaling.factor, Granite's multipliers: gguf_config maps a 0 to none).
ARCH_KEYS = {
    "block_count": Rule(INT, least=1),
    "context_length": Rule(INT, least=1),  # a huge one is capped where the export's positions are chosen:
    #                                        gguf_config.cap_positions
    "embedding_length": Rule(INT, least=1),
    "feed_forward_length": Rule(INT, least=1),
    "vocab_size": Rule(INT, least=1),
    "attention.head_count": Rule(INT, least=1),
    "attention.head_count_kv": Rule(PER_LAYER, least=0),  # 0 only in an LFM2 file's per-layer array: check_header
    "attention.key_length": Rule(INT, least=1),
    "attention.value_length": Rule(INT, least=1),
    "attention.layer_norm_rms_epsilon": Rule(FLOAT, above=0),
    "attention.layer_norm_epsilon": Rule(FLOAT, above=0),
    "attention.sliding_window": Rule(INT, least=0),
    "attention.sliding_window_pattern": Rule(PATTERN, least=0),
    "attention.scale": Rule(FLOAT, least=0),
    "attn_logit_softcapping": Rule(FLOAT, above=0),
    "final_logit_softcapping": Rule(FLOAT, above=0),
    "embedding_scale": Rule(FLOAT, least=0),
    "residual_scale": Rule(FLOAT, least=0),
    "logit_scale": Rule(FLOAT, least=0),
    "rope.dimension_count": Rule(INT, least=1),
    "rope.freq_base": Rule(FLOAT, above=0),
    "rope.freq_base_swa": Rule(FLOAT, above=0),
    "rope.scaling.type": Rule(STRING),
    "rope.scaling.factor": Rule(FLOAT, least=0),
    "rope.scale_linear": Rule(FLOAT, least=0),
    "rope.scaling.original_context_length": Rule(INT, least=0),
    "rope.scaling.attn_factor": Rule(FLOAT, above=0),
    "nextn_predict_layers": Rule(INT, least=0),
    "shortconv.l_cache": Rule(INT, least=1),
}

#: architectures whose files give ``attention.head_count_kv`` one entry per block (0: a layer without attention)
PER_LAYER_KV_ARCHS = ("lfm2",)
_BLOCK = re.compile(r"blk\.(\d+)\.")


def check_header(reader, path) -> None:
    """ModelFileError naming ``path`` and the key when a metadata value the import reads is not of its type or range
    (``GENERAL_KEYS``, ``ARCH_KEYS``), or the keys disagree with each other or with the file's tensors (see the module
    doc). Nothing is read past the header but the tensors' names and shapes."""
    arch = scalar_value(reader.fields.get("general.architecture"))
    rules = dict(GENERAL_KEYS)
    exported = isinstance(arch, str) and arch in TESTED_GGUF_ARCHITECTURES + ENCODER_GGUF_ARCHITECTURES
    if exported:
        rules.update({f"{arch}.{key}": rule for key, rule in ARCH_KEYS.items()})
    for key, rule in rules.items():
        field = reader.fields.get(key)
        if field is not None:
            _check_field(path, key, field, rule)
    if exported:
        _check_together(reader, path, arch)


def _bad(path, key: str, field, allowed: str) -> ModelFileError:
    return ModelFileError(f"{path}: GGUF metadata {key} is {_described(field)}: it must be {allowed}", path=str(path))


def _check_field(path, key: str, field, rule: Rule) -> None:
    from gguf.constants import GGUFValueType as T

    ints, floats = _int_types(), (T.FLOAT32, T.FLOAT64)
    types = list(field.types)
    array = types[0] == T.ARRAY
    element = types[1] if array and len(types) > 1 else None  # None: an empty array
    kind = rule.kind
    if kind in (STRINGS, INTS, FLOATS):
        wanted = {STRINGS: (T.STRING,), INTS: ints, FLOATS: floats + ints}[kind]
        if not array or (element is not None and (element not in wanted or len(types) > 2)):
            raise _bad(path, key, field, rule.allowed())
        return
    if kind == PER_LAYER and array:
        if element is not None and (element not in ints or len(types) > 2):
            raise _bad(path, key, field, rule.allowed())
        values = _values(field)
    elif kind == PATTERN and array:
        if element is not None and (element not in (T.BOOL, *ints) or len(types) > 2):
            raise _bad(path, key, field, rule.allowed())
        return
    else:
        scalar_types = {INT: ints, PER_LAYER: ints, PATTERN: ints, FLOAT: floats + ints,
                        STRING: (T.STRING,), BOOL: (T.BOOL, *ints)}[kind]
        if array or types[0] not in scalar_types:
            raise _bad(path, key, field, rule.allowed())
        if kind in (STRING, BOOL):
            return
        values = [scalar_value(field)]
    for value in values:
        if isinstance(value, float) and not math.isfinite(value):
            raise _bad(path, key, field, rule.allowed())
        if (rule.least is not None and value < rule.least) or (rule.above is not None and value <= rule.above):
            raise _bad(path, key, field, rule.allowed())


def check_blocks(reader, path) -> None:
    """ModelFileError naming ``path`` unless the ``{arch}.block_count`` of an architecture onnxlm exports is the
    number of blocks its ``blk.N`` tensors name (``check_header`` asks it of a file with block tensors, ``load_gguf``
    of any file before a model of that many blocks is built: 4,000,000,000 of them hung)."""
    arch = scalar_value(reader.fields.get("general.architecture"))
    if arch not in TESTED_GGUF_ARCHITECTURES + ENCODER_GGUF_ARCHITECTURES:
        return
    blocks = scalar_value(reader.fields.get(f"{arch}.block_count"))
    found = {int(m.group(1)) for t in reader.tensors if (m := _BLOCK.match(t.name))}
    n = max(found) + 1 if found else 0
    if (0 if blocks is None else blocks) != n:  # llama.cpp would look for blk.N tensors that are not there (or leave
        #                                        some unread); transformers would build its default count
        said = f"{arch}.block_count is absent" if blocks is None else f"{arch}.block_count is {blocks}"
        raise ModelFileError(f"{path}: GGUF metadata {said}, but the file's tensors are those of {n} blocks"
                             + (f" (blk.0 .. blk.{n - 1})" if n else "") + ": a damaged or hand-made file",
                             path=str(path))


def _check_together(reader, path, arch: str) -> None:
    """What the keys say together: ``block_count`` against the file's ``blk.N`` tensors (where it has some: a
    vocabulary-only file has none), the head counts against each other, GPT-2's context against its position
    table."""
    fields = reader.fields
    blocks = scalar_value(fields.get(f"{arch}.block_count"))
    tensors = list(reader.tensors)
    if any(_BLOCK.match(t.name) for t in tensors):  # else a vocabulary-only file (tests/gguf_vocabs.py's hold one
        check_blocks(reader, path)                 # tensor): ``check_blocks`` again before a model is built of it
    heads = scalar_value(fields.get(f"{arch}.attention.head_count"))
    kv_field = fields.get(f"{arch}.attention.head_count_kv")
    if kv_field is not None:
        key = f"{arch}.attention.head_count_kv"
        kv = _values(kv_field)
        per_layer = kv_field.types[0].name == "ARRAY"
        if per_layer:
            if blocks is not None and len(kv) != blocks:
                raise _bad(path, key, kv_field, f"an integer, or an array of {blocks} integers (one per block: "
                                                f"{arch}.block_count)")
            if arch not in PER_LAYER_KV_ARCHS:
                raise _bad(path, key, kv_field, "one integer: onnxlm exports a per-layer kv head count only in "
                                                f"{', '.join(PER_LAYER_KV_ARCHS)} files")
            if not any(kv):
                raise _bad(path, key, kv_field, "an array with at least one layer of attention (an entry >= 1)")
        elif kv[0] < 1:
            raise _bad(path, key, kv_field, "an integer >= 1")
        if heads is not None:
            for n in (k for k in kv if k):
                if heads % n:  # grouped-query attention: each kv head serves head_count / head_count_kv query heads
                    raise _bad(path, key, kv_field, f"a divisor of {arch}.attention.head_count ({heads}): each kv "
                                                    "head serves a whole group of query heads")
    if arch == "gpt2":  # its positions are a tensor: the config's count must be its rows
        context = scalar_value(fields.get("gpt2.context_length"))
        table = next((t for t in tensors if t.name == "position_embd.weight"), None)
        if context is not None and table is not None and len(table.shape) == 2 and int(table.shape[1]) != context:
            raise ModelFileError(f"{path}: GGUF metadata gpt2.context_length is {context}, but position_embd.weight "
                                 f"holds {int(table.shape[1])} positions", path=str(path))


def _int_types() -> tuple:
    from gguf.constants import GGUFValueType as T

    return (T.UINT8, T.INT8, T.UINT16, T.INT16, T.UINT32, T.INT32, T.UINT64, T.INT64)


def scalar_value(field):
    """A scalar field's Python value (a string decoded; None for an absent field, an empty or nested array); an
    array's first element. ``gguf_reader.field_value`` reads a reader's key with it."""
    if field is None or not field.data:
        return None
    part = field.parts[field.data[0]]
    kind = field.types[-1].name if field.types[0].name == "ARRAY" else field.types[0].name
    if kind == "STRING":
        return bytes(part).decode("utf-8", errors="replace")
    if kind == "ARRAY":
        return None
    return part[0].item() if len(part) else None


def _values(field) -> list:
    """A number field's values: its one value, or an array's elements."""
    if field.types[0].name != "ARRAY":
        return [scalar_value(field)]
    return [field.parts[i][0].item() for i in field.data]


def _described(field) -> str:
    """A field's type and value, for an error: ``4000000000 (UINT32)``, ``the string 'two'``, ``an array of 2 INT32
    ([2, 2])``."""
    types = [t.name for t in field.types]
    if types[0] == "ARRAY":
        n = len(field.data)
        element = " of arrays" if len(types) > 2 else f" {types[1]}" if len(types) > 1 else ""
        shown = ""
        if 0 < n <= 8 and len(types) == 2:
            values = [_scalar_at(field, i, types[1]) for i in field.data]
            shown = f" ({values!r})"
        return f"an array of {n}{element}{shown}"
    value = scalar_value(field)
    if types[0] == "STRING":
        return f"the string {_short(value)!r}"
    return f"{value!r} ({types[0]})"


def _scalar_at(field, index: int, kind: str):
    part = field.parts[index]
    if kind == "STRING":
        return _short(bytes(part).decode("utf-8", errors="replace"))
    return part[0].item()


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[:n] + "..."

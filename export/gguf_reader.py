"""One parsed ``gguf.GGUFReader`` per GGUF file in an export process, its vocabulary arrays parsed in bulk.

gguf-py's reader parses every metadata field when it is built, element by element (a 262,144-token vocabulary, as
Gemma 3's: ~16 s here), and exporting one GGUF built five of them: the metadata (``gguf.read_gguf_metadata``), the
rope factors (``gguf_config.rope_freq_factors``), transformers' config and weight loads, and the quantizer's tensors
(``gguf_quant.GGUFTensors``). ``gguf_reader(path)`` keeps the last two files' readers (read-only memory maps: nothing
resident but the pages read) while a file is unchanged (same resolved path, size and mtime), and
``readers_shared_with_transformers()`` hands transformers' loader the same one (without the vocabulary arrays only
its tokenizer converter reads). The reader reads its file through a plain ndarray view of the memory map (numpy's
``memmap`` subclass costs ~2 us in each of the millions of small slices the parsing takes), and parses an array of
numbers or strings in one pass instead of gguf-py's recursion per element: Gemma 3's file in 0.7 s instead of 16
(every field's parts, data indices and types and every tensor equal to gguf-py's own reader's). The first file of a
split GGUF (``gguf_splits``) gets its files' readers as one (``SplitReader``).
"""
from __future__ import annotations

import os
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError, ModelFileError

from .gguf_header import architecture_refusal, check_header, scalar_value
from .gguf_splits import SPLIT_NAME, split_files
from .shared_patch import SharedPatch


def gguf_reader(path: str | os.PathLike):
    """path -> its ``gguf.GGUFReader`` (mode "r"), built once while the file is unchanged; for the first file of a
    split GGUF (``gguf_splits``), its files' readers as one (``SplitReader``). A file gguf-py cannot parse (cut short
    like an interrupted download, not a GGUF at all) is a ``ModelFileError`` naming it, whatever gguf-py raised on
    the way (ValueError, IndexError, struct and Unicode errors, a short memory map); so is a split set that does not
    hold together (a file missing, of another set, or a later file given); and so is one whose metadata the import
    reads is of the wrong type or range, or disagrees with its tensors (``gguf_header.check_header``), or whose
    tensor data does not start where GGUF's alignment puts it (``_check_offsets``)."""
    files = split_files(path)
    # a set's files by the names given (a hub cache's links name blobs of other names; errors name what was given)
    keys = tuple((os.path.abspath(p) if len(files) > 1 else str(Path(p).resolve()), *_size_and_mtime(p))
                 for p in files)
    try:
        first = _reader(*keys[0])
        if len(keys) > 1 and (_split_field(first, "split.count") or 1) > 1:  # llama.cpp: the first file's count
            reader = _split_reader(keys)
        else:
            reader = _single(str(path), first)  # a whole file, whatever files of similar names lie beside it
        if not vars(reader).get("header_checked"):  # once a reader (a SplitReader's own, not its first file's)
            check_header(reader, path)
            reader.header_checked = True
        return reader
    except ImportError:
        raise
    except ModelFileError:  # the split checks' own: they name the file
        raise
    except UNREADABLE as e:
        raise _unreadable(str(path), e) from e


def field_value(reader, key: str):
    """A scalar (or string) metadata field of a reader -> its Python value, None when absent (an array's: its first
    element; ``gguf_header.scalar_value``)."""
    return scalar_value(reader.fields.get(key))


def arch_fields(reader, arch: str | None) -> dict:
    """The ``{arch}.*`` metadata of a reader -> {key: ``field_value``} (the header gguf_config's functions read)."""
    return {k: field_value(reader, k) for k in reader.fields if k.startswith(f"{arch}.")}


def _unreadable(path: str, e: BaseException, which: str = "") -> ModelFileError:
    """The error for a file gguf-py could not parse (``which``: its place in a split set, said after its path); the
    hint that it may be cut short only where gguf-py ran past the file's end, not where one of its own checks of what
    the file says refused it (``NOT_CUT_SHORT``)."""
    cut = not any(s in str(e) for s in NOT_CUT_SHORT)
    return ModelFileError(f"{path}{which} is not a readable GGUF file ({type(e).__name__}: {e})"
                          + (": is it whole (a download cut short reads so)?" if cut else ""), path=path)


#: gguf-py's errors for what a whole file says (a wrong magic, a version it does not read, a key or tensor named
#: twice, an unknown value or tensor type, a bad general.alignment), where reading past a cut-short file's end gives
#: an empty array (IndexError, "cannot reshape array of size 0", a short memory map) instead
NOT_CUT_SHORT = ("GGUF magic invalid", "file appears to be version", "Duplicate ", "duplicated tensor",
                 "is not a valid GGMLQuantizationType", "is not a valid GGUFValueType", "general.alignment",
                 "Invalid alignment", "Unknown/unhandled field type", "invalid start byte", "invalid continuation byte")


#: what gguf-py raises on a file it cannot parse
UNREADABLE = (ValueError, IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, struct.error, OSError)


def _size_and_mtime(path) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@lru_cache(maxsize=2)
def _reader(path: str, size: int, mtime_ns: int):
    """One file's reader, kept while its path, size and mtime are these."""
    return _parse(path)


def _parse(path: str):
    from gguf.gguf_reader import GGUFReader  # the class itself, also while gguf.GGUFReader is the shared one

    from gguf.constants import GGUFValueType

    class Reader(GGUFReader):
        """GGUFReader over an ndarray view of its memory map (same bytes, plain slices), its flat arrays parsed in
        bulk."""

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

        def _get_field_parts(self, orig_offs: int, raw_type: int):
            """gguf-py's parts of one field; an array of numbers or of strings (a vocabulary's tokens, scores,
            types and merges) without its per-element recursion: the same parts (one view per number; a length and
            a bytes view per string), data indices and types, ~20x faster. Anything else: gguf-py's own."""
            if GGUFValueType(raw_type) != GGUFValueType.ARRAY or self.byte_order != "I":
                return super()._get_field_parts(orig_offs, raw_type)
            raw_itype = self._get(orig_offs, np.uint32)
            alen = self._get(orig_offs + 4, np.uint64)
            itype, n, offs = GGUFValueType(raw_itype[0]), int(alen[0]), orig_offs + 12
            types = [GGUFValueType.ARRAY, itype] if n else [GGUFValueType.ARRAY]  # an element's type, as gguf-py
            nptype = self.gguf_scalar_to_np.get(itype)
            if nptype is not None:  # n numbers: one [1] view each, as _get gives them
                items = self._get(offs, nptype, n)
                return 12 + items.nbytes, [raw_itype, alen, *(items[i:i + 1] for i in range(n))], \
                    list(range(2, n + 2)), types
            if itype != GGUFValueType.STRING:  # nested arrays: gguf-py's recursion
                return super()._get_field_parts(orig_offs, raw_type)
            data, parts = self.data, [raw_itype, alen]
            for _ in range(n):  # a string: its [1] uint64 length, then its bytes
                length = data[offs:offs + 8].view(np.uint64)
                k = int(length[0])
                parts += (length, data[offs + 8:offs + 8 + k])
                offs += 8 + k
            return offs - orig_offs, parts, list(range(3, 2 * n + 3, 2)), types

    return _check_offsets(path, Reader(path, "r"))


def _check_offsets(path: str, reader):
    """``reader``, once each tensor's data offset is a multiple of the file's alignment (``general.alignment``,
    default 32), as llama.cpp requires ("tensor ... has offset ..., expected a multiple of ..."): gguf-py reads a
    tensor from whatever offset it is given, so a shifted one would be read as shifted weights. ModelFileError naming
    the first tensor that is not."""
    alignment = int(reader.alignment)
    for tensor in reader.tensors:
        offset = int(tensor.field.parts[-1][0])  # relative to the data section (which gguf-py aligns itself)
        if offset % alignment:
            raise ModelFileError(f"{path}: tensor {tensor.name!r} has data offset {offset}, not a multiple of the "
                                 f"file's alignment {alignment}: a damaged or hand-made file (llama.cpp refuses it "
                                 "too)", path=path)
    return reader


def _split_field(reader, key: str) -> int | None:
    field = reader.fields.get(key)
    return None if field is None else int(field.parts[field.data[0]][0])


def _single(path: str, reader):
    """A whole file's reader, refused when its own ``split.count`` says it is one file of several (named so that
    its others cannot be found beside it, or they are not there)."""
    count = _split_field(reader, "split.count") or 1
    if count > 1:
        no = (_split_field(reader, "split.no") or 0) + 1
        m = SPLIT_NAME.match(Path(path).name)
        where = ("its other files are not beside it" if m else
                 f"its name is not llama.cpp's <prefix>-{no:05d}-of-{count:05d}.gguf, by which its other files are "
                 "found (rename the files so)")
        raise ModelFileError(f"{path} is file {no} of a GGUF split into {count} files (its split.no and split.count),"
                             f" and {where}", path=path)
    return reader


class SplitReader:
    """The readers of a split GGUF's files as one reader: the first file's fields (the model's metadata: the others
    hold only their ``split.*`` keys), every file's tensors in order (each a view of its own file's memory map)."""

    def __init__(self, readers: list):
        self.splits = readers
        self.fields = readers[0].fields
        self.tensors = [t for r in readers for t in r.tensors]

    def __getattr__(self, name):
        return getattr(self.splits[0], name)


@lru_cache(maxsize=2)
def _split_reader(keys: tuple) -> SplitReader:
    """The readers of a split set's files (``keys``: each file's absolute path as given, size and mtime, in order) as
    one, each file checked against the set: its ``split.no`` and ``split.count``, and the first file's
    ``split.tensors.count`` against the tensors of all (a file of another set, or of another split of the same
    model, is refused by name)."""
    count = len(keys)

    def read(i: int, key: tuple):
        try:
            return _reader(*key) if i == 0 else _parse(key[0])
        except ModelFileError:  # _check_offsets': it names the file
            raise
        except UNREADABLE as e:
            raise _unreadable(key[0], e, f" (file {i + 1} of {count} of a split GGUF)") from e

    readers = [read(i, key) for i, key in enumerate(keys)]
    for i, (key, reader) in enumerate(zip(keys, readers)):
        no, of = _split_field(reader, "split.no"), _split_field(reader, "split.count")
        if (no, of) != (i, count):
            raise ModelFileError(f"{key[0]} should be file {i + 1} of the {count} of a split GGUF, but its split.no "
                                 f"and split.count say {'none' if no is None else no + 1} of {of}: is it of "
                                 "another split of the model?", path=key[0])
    merged = SplitReader(readers)
    want = _split_field(readers[0], "split.tensors.count")
    if want is None:  # llama.cpp refuses such a set ("corrupted model")
        raise ModelFileError(f"{keys[0][0]} is the first of {count} files of a split GGUF but has no "
                             "split.tensors.count: a damaged or hand-made file (llama.cpp refuses it too)",
                             path=keys[0][0])
    names = [t.name for t in merged.tensors]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ModelFileError(f"{keys[0][0]}: tensors in more than one file of the split GGUF: {', '.join(twice[:5])}"
                             " (are its files of two splits of the model?)", path=keys[0][0])
    if want != len(names):
        raise ModelFileError(f"{keys[0][0]}: its split.tensors.count is {want}, and its {count} files hold "
                             f"{len(names)} tensors (are its files of two splits of the model?)", path=keys[0][0])
    return merged


def forget_readers() -> None:
    """Drop the cached readers and so their memory maps (once nothing else holds them): after a GGUF's blocks are
    rewritten nothing reads the file again, and its mapped pages (840 MB for a Llama-3.2-1B-shaped Q4_K_M file)
    would stay resident through the quality gate."""
    _reader.cache_clear()
    _split_reader.cache_clear()


#: vocabulary arrays only transformers' tokenizer converter reads (onnxlm builds its own tokenizer): its model loader
#: turns every element of every field into a Python value, twice a load (Gemma 3's scores and types: ~2 s)
TOKENIZER_ONLY_FIELDS = ("tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


class ModelFieldsView:
    """A reader as transformers' model loader sees it: the same tensors and fields but ``TOKENIZER_ONLY_FIELDS``
    (the tokens stay: the loader counts them where the file names no vocabulary size)."""

    def __init__(self, reader):
        self.reader = reader
        self.fields = type(reader.fields)((k, f) for k, f in reader.fields.items() if k not in TOKENIZER_ONLY_FIELDS)

    def __getattr__(self, name):
        return getattr(self.reader, name)


def _share_readers() -> tuple:
    """Patch gguf's ``GGUFReader`` and ``get_tensor_name_map`` -> the originals (see below)."""
    import gguf

    original, name_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def shared(path, mode="r"):
        return ModelFieldsView(gguf_reader(path)) if mode == "r" else original(path, mode)

    gguf.GGUFReader, gguf.get_tensor_name_map = shared, lru_cache(maxsize=None)(name_map)
    return original, name_map


def _restore_readers(originals: tuple) -> None:
    import gguf

    gguf.GGUFReader, gguf.get_tensor_name_map = originals


#: ``with readers_shared_with_transformers():`` while transformers loads a GGUF file (its loader calls
#: ``gguf.GGUFReader(path)`` itself, once for the config and once for the weights), it gets the reader ``gguf_reader``
#: holds, as a ``ModelFieldsView``; and ``gguf.get_tensor_name_map(arch, n_blocks)``, which its weight-name mapping
#: calls once per module (314 times for Gemma 3 270M, ~2 s), builds each map once (the loader only reads them).
#: gguf's module globals are patched once for all threads' open blocks and put back when the last one ends.
readers_shared_with_transformers = SharedPatch(_share_readers, _restore_readers)


def refuse_architecture(path) -> str:
    """ExportError (one line: ``gguf_header.architecture_refusal``) when the header of the GGUF file ``path`` names an
    architecture onnxlm does not export -> its architecture. Only the header is read (no tensor data): ``export_model``
    and the GGUF cache refuse such a file before any weight loads and before anything is written or said."""
    arch = field_value(gguf_reader(path), "general.architecture")
    why = architecture_refusal(path, arch)
    if why is not None:
        raise ExportError(why)
    return arch

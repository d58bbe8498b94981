"""One parsed GGUF reader per file (export/gguf_reader.py): the same fields and tensors as gguf-py's own reader, built
once while the file is unchanged and again when it changes, and the same reader handed to transformers' loader only
while it loads (gguf.GGUFReader restored after, also on an error)."""
from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
from gguf_writers import CASES, write_out, write_tiny_gguf

from onnxlm.export.gguf_reader import TOKENIZER_ONLY_FIELDS, gguf_reader, readers_shared_with_transformers


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, next(iter(CASES)))
    return path


def _same_fields(ours, theirs) -> None:
    """Two readers alike: every field's offset, types, data indices and each part's dtype, shape and values; every
    tensor's name, type, offset and data."""
    assert list(ours.fields) == list(theirs.fields)
    for key, field in theirs.fields.items():
        mine = ours.fields[key]
        assert (mine.offset, mine.types, mine.data, len(mine.parts)) == (field.offset, field.types, field.data,
                                                                         len(field.parts)), key
        for a, b in zip(mine.parts, field.parts):
            assert (a.dtype, a.shape) == (b.dtype, b.shape) and np.array_equal(a, b), key
    assert [(t.name, t.tensor_type, t.data_offset) for t in ours.tensors] == \
        [(t.name, t.tensor_type, t.data_offset) for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert np.array_equal(a.data, b.data), a.name


def test_fields_and_tensors_equal_gguf_pys_reader(tiny):
    _same_fields(gguf_reader(tiny), gguf.GGUFReader(str(tiny), "r"))


def test_arrays_parsed_in_bulk_equal_gguf_pys_parts(tmp_path):
    """The bulk parse of arrays (numbers of every width, strings with multi-byte and empty ones, bools, empty
    arrays) gives gguf-py's own parts; nested arrays and scalars take gguf-py's path."""
    from gguf.constants import GGUFValueType

    path = tmp_path / "arrays.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_array("a.strings", ["", "▁the", "<0x0A>", "日本語", "👩‍💻", "a" * 300])
    w.add_array("a.empty", [])
    w.add_array("a.nested", [[1, 2], [3]])
    w.add_key_value("a.bools", [True, False, True], GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
    for name, vtype, values in [("u8", GGUFValueType.UINT8, [0, 255]), ("i16", GGUFValueType.INT16, [-3, 7]),
                                ("u32", GGUFValueType.UINT32, [1, 2, 3]), ("i64", GGUFValueType.INT64, [-(2 ** 40)]),
                                ("f32", GGUFValueType.FLOAT32, [0.5, -1e30]), ("f64", GGUFValueType.FLOAT64, [3.25])]:
        w.add_key_value(f"a.{name}", values, GGUFValueType.ARRAY, sub_type=vtype)
    w.add_string("a.string", "scalar")
    w.add_uint32("a.scalar", 7)
    w.add_tensor("t", np.arange(8, dtype=np.float32))
    write_out(w)
    _same_fields(gguf_reader(path), gguf.GGUFReader(str(path), "r"))


def test_a_real_vocabulary_parses_as_gguf_py_parses_it(tmp_path):
    """SmolLM2's GGUF (49,152 tokens and 48,900 merges): every field and tensor as gguf-py's own reader has them."""
    from onnxlm.export.gguf import find_smollm2_gguf
    from onnxlm.runtime.errors import ModelFileError

    try:
        path = find_smollm2_gguf()
    except ModelFileError as e:
        pytest.skip(str(e))
    _same_fields(gguf_reader(path), gguf.GGUFReader(str(path), "r"))


def test_built_once_while_unchanged_and_again_after_a_change(tiny):
    first = gguf_reader(tiny)
    assert gguf_reader(str(tiny)) is first and gguf_reader(tiny.parent / "." / tiny.name) is first
    write_tiny_gguf(tiny, list(CASES)[-1])  # rewritten: another size or mtime
    st = os.stat(tiny)
    os.utime(tiny, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert gguf_reader(tiny) is not first


def test_transformers_gets_the_shared_reader_only_inside_the_block(tmp_path):
    """Inside the block transformers' loader gets the shared reader without the vocabulary arrays only its
    tokenizer converter reads, and each tensor-name map built once; both restored after."""
    path = tmp_path / "vocab.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["a", "b", "ab"])
    w.add_token_scores([0.0, 0.0, -1.0])
    w.add_token_types([1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_tensor("t", np.zeros(4, np.float32))
    write_out(w)
    original, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    shared = gguf_reader(path)
    with readers_shared_with_transformers():
        view = gguf.GGUFReader(str(path))
        assert view.reader is shared and view.tensors is shared.tensors
        assert list(view.fields) == [k for k in shared.fields if k not in TOKENIZER_ONLY_FIELDS]
        assert "tokenizer.ggml.tokens" in view.fields and all(k in shared.fields for k in TOKENIZER_ONLY_FIELDS)
        arch = gguf.MODEL_ARCH.LLAMA
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (original, name_map)
    assert name_map(arch, 2) is not name_map(arch, 2)
    with pytest.raises(RuntimeError), readers_shared_with_transformers():
        raise RuntimeError("a failed load")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == (original, name_map)


def _part_offset(reader, part) -> int:
    """Where one of a gguf-py reader's parts (a view of its memory map) lies in the file."""
    return part.ctypes.data - reader.data.ctypes.data


def _tensor_info(path, name: str):
    """gguf-py's reader of ``path`` and the parts of tensor ``name``'s info: name length, name, n_dims, dims, type,
    offset."""
    reader = gguf.GGUFReader(str(path), "r")
    return reader, next(t for t in reader.tensors if t.name == name).field.parts


def _patch(path, out, at: int, data: bytes):
    raw = bytearray(path.read_bytes())
    raw[at:at + len(data)] = data
    out.write_bytes(bytes(raw))
    return out


def test_a_tensor_off_the_files_alignment_is_refused_by_name(tiny, tmp_path):
    """A tensor whose data offset is not a multiple of the alignment (32) was read from there: shifted weights,
    exported. llama.cpp refuses such a file; so does the reader, naming the tensor."""
    import struct

    from onnxlm.runtime.errors import ModelFileError

    reader, parts = _tensor_info(tiny, "blk.0.attn_q.weight")
    offset = int(parts[5][0])
    assert offset % 32 == 0 and gguf_reader(tiny) is not None
    shifted = _patch(tiny, tmp_path / "shifted.gguf", _part_offset(reader, parts[5]), struct.pack("<Q", offset + 4))
    with pytest.raises(ModelFileError) as info:
        gguf_reader(shifted)
    assert str(info.value) == (f"{shifted}: tensor 'blk.0.attn_q.weight' has data offset {offset + 4}, not a multiple "
                               "of the file's alignment 32: a damaged or hand-made file (llama.cpp refuses it too)")


@pytest.mark.parametrize("damage,said", [
    ("version-1", "file appears to be version 1"),
    ("version-99", "file appears to be version 99"),
    ("duplicate-tensor", "duplicated tensor with name blk.0.attn_q.weight"),
    ("tensor-type-99", "99) is not a valid GGMLQuantizationType"),
    ("alignment-3", "Invalid alignment"),
    ("cut-short", "cannot reshape"),
])
def test_only_a_file_cut_short_is_asked_whether_it_is_whole(tiny, tmp_path, damage, said):
    """A whole file of a version gguf-py does not read, a tensor named twice, an unknown tensor type or a bad
    general.alignment is not a download cut short: the error says what gguf-py found, without that hint, which a
    file cut short keeps."""
    import struct

    from onnxlm.runtime.errors import ModelFileError

    out = tmp_path / f"{damage}.gguf"
    reader, parts = _tensor_info(tiny, "blk.1.attn_q.weight")
    if damage.startswith("version-"):
        _patch(tiny, out, 4, struct.pack("<I", int(damage.split("-")[1])))
    elif damage == "duplicate-tensor":
        _patch(tiny, out, _part_offset(reader, parts[1]), b"blk.0")
    elif damage == "tensor-type-99":
        _patch(tiny, out, _part_offset(reader, parts[4]), struct.pack("<I", 99))
    elif damage == "alignment-3":
        w = gguf.GGUFWriter(str(out), "llama")
        w.add_uint32("general.alignment", 3)
        w.add_tensor("t", np.zeros(4, np.float32))
        write_out(w)
    else:
        data = tiny.read_bytes()
        out.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ModelFileError) as info:
        gguf_reader(out)
    message = str(info.value)
    assert message.startswith(f"{out} is not a readable GGUF file (") and said in message, message
    assert ("download cut short" in message) == (damage == "cut-short"), message

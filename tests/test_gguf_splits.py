"""A GGUF split over several files (llama.cpp's ``gguf-split`` naming, ``<prefix>-00001-of-00003.gguf``; written here
by gguf-py's writer, which splits as gguf-split does): exported from its first file as llama.cpp loads it, its
blocks kept, its files pinned in the manifest and the cache, and a set that does not hold together refused by name
(export/gguf_splits.py).

Checked by hand (not CI, llama-cpp-python 0.3.36 built here): llama.cpp loads ``tiny-00001-of-00004.gguf`` of the
``llama-rope-freqs`` case split 7 tensors a file, and its logits equal its logits of the whole file (max |diff| 0.0);
the onnxlm artifact exported from the split set is within 1.6e-3 of them (llama.cpp's F16 KV cache).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="GGUF export needs the 'export' extra")
pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra")

import onnxlm  # noqa: E402
from gate_text import SHORT_GATE_TEXT  # noqa: E402
from gguf_writers import IDS, write_tiny_gguf, write_tiny_split_gguf  # noqa: E402
from onnxlm.export import export_model  # noqa: E402
from onnxlm.export import gguf_artifact as GA  # noqa: E402
from onnxlm.export import gguf_cache as GC  # noqa: E402
from onnxlm.export.gguf_reader import forget_readers, gguf_reader  # noqa: E402
from onnxlm.export.gguf_splits import split_files  # noqa: E402
from onnxlm.runtime.errors import ModelFileError  # noqa: E402
from test_gguf_config import ATOL, REFERENCE  # noqa: E402


@pytest.mark.parametrize("case", ["llama-rope-freqs", "granite-multipliers"])
def test_a_split_gguf_exports_from_its_first_file_with_llama_cpps_logits(tmp_path, case):
    """Split 7 tensors a file (3 or 4 files: the metadata, the embedding and Llama 3.1's rope factors in the first), the
    artifact exported from the first file gives llama.cpp's logits of the whole file (stored, test_gguf_config's
    reference; the same bytes of metadata and tensors); its manifest pins every file. Granite: an architecture
    transformers' loader only knows while onnxlm loads it (export/gguf_architectures.py)."""
    assert write_tiny_gguf(tmp_path / "whole.gguf", case) == REFERENCE["cases"][case]["sha256"]
    files = write_tiny_split_gguf(tmp_path / "tiny.gguf", case, 7)
    n = len(files)  # 22 tensors (Llama: rope factors, an untied head) or 20
    assert n >= 3 and [p.name for p in files] == [f"tiny-0000{i}-of-0000{n}.gguf" for i in range(1, n + 1)]
    assert split_files(files[0]) == files
    reader = gguf_reader(files[0])
    whole = gguf_reader(tmp_path / "whole.gguf")
    assert [t.name for t in reader.tensors] == [t.name for t in whole.tensors]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(reader.tensors, whole.tensors))

    out = export_model(files[0], tmp_path / "out", progress=False)
    got = onnxlm.load(out).logits(np.array([IDS]))[0]
    llama_cpp = np.array(REFERENCE["cases"][case]["logits"], np.float32)
    assert float(np.abs(got - llama_cpp).max()) <= ATOL
    source = json.loads((out / "onnxlm.json").read_text())["source"]
    import hashlib

    records = [source] + source["splits"]
    assert [r["name"] for r in records] == [p.name for p in files]
    assert [r["sha256"] for r in records] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files]
    assert [r["bytes"] for r in records] == [p.stat().st_size for p in files]


def test_a_split_gguf_keeps_every_block_of_every_file(tmp_path):
    """test_gguf_quant's mixed Q4_1 / Q4_0 / Q5_0 / Q8_0 Llama split 5 tensors a file: ``--quantize gguf`` keeps
    every block tensor of every file, and at the fidelity level its logits are transformers' on the whole file's
    dequantised weights."""
    import torch

    from onnxlm.export.gguf import load_gguf
    from test_gguf_quant import write_tiny_gguf as write_blocks

    write_blocks(tmp_path / "whole.gguf")
    write_blocks(tmp_path / "kq.gguf", split_max_tensors=5)
    first = tmp_path / "kq-00001-of-00004.gguf"
    out = export_model(first, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["tensors"] == {"Q4_1": 9, "Q4_0": 3, "Q5_0": 1, "Q8_0": 1} and q["fp32_tensors"] == {"F16": 1}
    assert len(q["source_gguf"]["splits"]) == 3
    ids = np.array([[1, 40, 41, 72, 100, 150, 200, 3, 9, 250]])
    with torch.no_grad():
        want = load_gguf(tmp_path / "whole.gguf").model(input_ids=torch.tensor(ids)).logits.numpy()
    assert np.abs(onnxlm.load(out).logits(ids) - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.fixture
def split_set(tmp_path):
    """``llama-rope-freqs`` split 8 tensors a file: 3 files."""
    files = write_tiny_split_gguf(tmp_path / "m.gguf", "llama-rope-freqs", 8)
    assert len(files) == 3
    yield files
    forget_readers()


def test_a_later_file_of_a_split_set_is_refused_naming_the_first(split_set, tmp_path):
    with pytest.raises(ModelFileError, match=r"m-00002-of-00003.gguf is file 2 of a GGUF split into 3 files: give its "
                                             r"first file, .*m-00001-of-00003.gguf"):
        gguf_reader(split_set[1])
    with pytest.raises(ModelFileError, match="give its first file"):
        GA.ensure_gguf_artifact(split_set[1], cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_a_split_set_missing_a_file_is_refused_naming_it(split_set, tmp_path):
    split_set[2].unlink()
    with pytest.raises(ModelFileError, match=r"m-00001-of-00003.gguf is the first of 3 files of a split GGUF, and "
                                             r"m-00003-of-00003.gguf is not beside it .*download complete"):
        gguf_reader(split_set[0])
    # alone (the others moved away), its own split.count says what it is
    split_set[1].unlink()
    with pytest.raises(ModelFileError, match=r"is file 1 of a GGUF split into 3 files \(its split.no and "
                                             r"split.count\), and its other files are not beside it"):
        gguf_reader(split_set[0])


def test_a_split_file_renamed_is_refused_saying_how_it_is_found(split_set, tmp_path):
    renamed = tmp_path / "model.gguf"
    shutil.copy(split_set[0], renamed)
    with pytest.raises(ModelFileError, match=r"model.gguf is file 1 of a GGUF split into 3 files .* its name is not "
                                             r"llama.cpp's <prefix>-00001-of-00003.gguf"):
        gguf_reader(renamed)


def test_a_file_of_another_split_of_the_model_is_refused(split_set, tmp_path):
    """The same model split 10 tensors a file (also 3 files: 10, 10 and 2 tensors) and 8 a file (8, 8, 6): the
    8-split's files with the 10-split's last leave tensors out, which the first file's split.tensors.count says; the
    10-split's with the 8-split's last hold 4 tensors twice."""
    (tmp_path / "other").mkdir()
    other = write_tiny_split_gguf(tmp_path / "other" / "m.gguf", "llama-rope-freqs", 10)
    assert len(other) == 3
    eights_last = shutil.copy(split_set[2], tmp_path / "eights-last.gguf")
    shutil.copy(other[2], split_set[2])
    with pytest.raises(ModelFileError, match=r"its split.tensors.count is 22, and its 3 files hold 18 tensors"):
        gguf_reader(split_set[0])
    shutil.copy(eights_last, other[2])
    with pytest.raises(ModelFileError, match=r"tensors in more than one file of the split GGUF: blk.1.*two splits"):
        gguf_reader(other[0])


def test_a_whole_file_named_as_a_split_is_read_as_it_is(tmp_path):
    """llama.cpp reads a file's own split.count: a whole file named ``-00001-of-00002`` is one model, without its
    others and beside an unrelated file named as its second."""
    path = tmp_path / "m-00001-of-00002.gguf"
    write_tiny_gguf(path, "llama-rope-freqs")
    assert split_files(path) == [path]
    assert len(gguf_reader(path).tensors) == 22
    write_tiny_gguf(tmp_path / "m-00002-of-00002.gguf", "granite-multipliers")
    forget_readers()
    assert len(gguf_reader(path).tensors) == 22


def test_a_split_set_linked_from_a_hub_cache_runs_as_it_is(tmp_path):
    """As huggingface_hub downloads them: ``snapshots/<rev>/<name>-0000i-of-0000N.gguf`` links to blobs named by
    their hashes. ``onnxlm generate FILE.gguf``'s first run exports the set through the links' names (resolved,
    the blobs' names are no split set), on its own blocks; the manifest names the links."""
    from test_gguf_quant import write_blocks_split

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    for i, f in enumerate(write_blocks_split(tmp_path / "kq.gguf", 5)):
        f.rename(blobs / f"{i}a7c")
        (snapshot / f.name).symlink_to(blobs / f"{i}a7c")
    target = GA.ensure_gguf_artifact(snapshot / "kq-00001-of-00004.gguf", cache_dir=tmp_path / "cache", progress=False)
    source = json.loads((target / "onnxlm.json").read_text())["quantization"]["source_gguf"]
    assert [source["name"]] + [s["name"] for s in source["splits"]] == [f"kq-0000{i}-of-00004.gguf" for i in
                                                                         range(1, 5)]
    assert GA.cached_artifact(snapshot / "kq-00001-of-00004.gguf", tmp_path / "cache") == target


def test_a_split_gguf_is_served_under_the_name_of_its_set(tmp_path):
    from onnxlm.cli.serve import served_name

    files = write_tiny_split_gguf(tmp_path / "qwen2.5-7b-instruct-q4_k_m.gguf", "llama-rope-freqs", 8)
    assert served_name(str(files[0]), files[0]) == "qwen2.5-7b-instruct-q4_k_m"
    whole = tmp_path / "m.gguf"
    write_tiny_gguf(whole, "llama-rope-freqs")
    assert served_name(str(whole), whole) == "m"


def test_the_cache_pins_every_file_of_a_split_set(split_set, tmp_path):
    """A first run exports the set into the cache; a later file changed (same size, other bytes, mtime kept) makes
    the entry changed, and a later file gone makes it missing; ``onnxlm info`` gives the set's bytes and count."""
    cache = tmp_path / "cache"
    target = GA.ensure_gguf_artifact(split_set[0], cache_dir=cache, progress=False)
    assert GA.cached_artifact(split_set[0], cache) == target
    assert [e.state for e in GC.cache_entries(cache)] == ["current"]
    stamp = json.loads(GA.stamp_file(target).read_text())
    assert len(stamp["splits"]) == 2

    info = subprocess.run([sys.executable, "-m", "onnxlm", "info", str(split_set[0])], capture_output=True,
                          text=True, timeout=120, env={**os.environ, GA.CACHE_ENV: str(cache)})
    assert info.returncode == 0, info.stderr
    assert "split into 3 files" in info.stdout and f"  artifact        {target} (described below)" in info.stdout

    last = split_set[2]
    data, st = bytearray(last.read_bytes()), last.stat()
    data[-1] ^= 0xFF
    last.write_bytes(bytes(data))
    os.utime(last, ns=(st.st_atime_ns, st.st_mtime_ns))  # the stamp cannot tell: the sha256s do
    GA.stamp_file(target).write_text(json.dumps({**stamp, "splits": [[1, 1], [1, 1]]}))  # force the sha256 path
    assert GA.cached_artifact(split_set[0], cache) is None
    assert [e.state for e in GC.cache_entries(cache)] == ["changed"]
    last.unlink()
    assert [e.state for e in GC.cache_entries(cache)] == ["missing"]
    split_set[1].unlink()  # every other file gone: the first alone is not the set the entry was exported from
    assert [e.state for e in GC.cache_entries(cache)] == ["missing"]


def test_a_split_source_is_checked_file_by_file_when_requantized(tmp_path):
    """An fp32 artifact exported from a split GGUF, quantized later with --gguf: a later file of other bytes is
    refused (the first file's sha256 alone would pass)."""
    from onnxlm.export import ExportError
    from test_gguf_quant import write_tiny_gguf as write_blocks

    write_blocks(tmp_path / "kq.gguf", split_max_tensors=5)
    first, last = tmp_path / "kq-00001-of-00004.gguf", tmp_path / "kq-00004-of-00004.gguf"
    fp32 = export_model(first, tmp_path / "fp32", kv_layout="fused", progress=False)
    data = bytearray(last.read_bytes())
    data[-1] ^= 0xFF
    last.write_bytes(bytes(data))
    with pytest.raises(ExportError, match=r"its split file kq-00004-of-00004.gguf differs from the recorded "
                                          r"'kq-00004-of-00004.gguf'\); pass the GGUF it was exported from"):
        export_model(fp32, tmp_path / "q", quantize="gguf", gguf=first, progress=False)
    assert not (tmp_path / "q").exists()


def test_the_split_sets_first_file_gives_its_header_to_info(split_set):
    from onnxlm.export.gguf_summary import summarize_gguf

    g = summarize_gguf(split_set[0])
    assert g["files"] == 3 and g["bytes"] == sum(p.stat().st_size for p in split_set)
    assert g["parameters"] == sum(int(t.n_elements) for t in gguf_reader(Path(split_set[0])).tensors)
    assert sum(g["tensor_types"].values()) == 22

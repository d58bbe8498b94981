"""export/mapped_weights.py: weights at aligned offsets of an external data file, aliases sharing bytes, and what
onnxruntime keeps resident of them (a prepacked head's bytes leave the process; a lookup over an alias of them maps
only the rows it reads)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from onnxlm.export.mapped_weights import ALIGN, alias, alias_map, save_mapped, write_arrays  # noqa: E402
from onnxlm.export.quantizer_input import load_unaliased  # noqa: E402
from onnxlm.export.nbits import Rewriter, dequantize, q8_blocks, row_parts  # noqa: E402
from onnxlm.runtime.errors import ExportError  # noqa: E402

V, K = 8192, 1024  # an 8-bit tied head / embedding: 8 MiB of codes
OPSETS = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]


def _tied_graph(rng):
    """A head (8-bit MatMulNBits over codes [V, K/32, 32]) and a lookup (GatherBlockQuantized) over an alias of
    the head's codes and scales -> (model, aliases, codes, scales)."""
    codes = rng.integers(0, 256, size=(V, K // 32, 32), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.02, size=(V, K // 32)).astype(np.float32)
    inits = [numpy_helper.from_array(codes, "head.codes"), numpy_helper.from_array(scales, "head.scales")]
    inits += [alias("emb.codes", inits[0], codes.shape), alias("emb.scales", inits[1], (V, K // 32, 1))]
    nodes = [helper.make_node("MatMulNBits", ["x", "head.codes", "head.scales"], ["logits"], domain="com.microsoft",
                              K=K, N=V, bits=8, block_size=32, accuracy_level=4),
             helper.make_node("GatherBlockQuantized", ["emb.codes", "ids", "emb.scales"], ["rows"],
                              domain="com.microsoft", bits=8, block_size=32, gather_axis=0, quantize_axis=2)]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, K]),
                                              helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, V]),
                               helper.make_tensor_value_info("rows", TensorProto.FLOAT, [1, K // 32, 32])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 8
    return model, {"emb.codes": "head.codes", "emb.scales": "head.scales"}, codes, scales


def test_layout_aliases_and_values(tmp_path):
    import onnxruntime as ort

    model, aliases, codes, scales = _tied_graph(np.random.default_rng(0))
    assert save_mapped(model, tmp_path / "m.onnx", aliases) == "m.onnx_data"
    assert alias_map(tmp_path / "m.onnx") == {a: [s] for a, s in aliases.items()}
    stored = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    offsets = {t.name: int({e.key: e.value for e in t.external_data}["offset"]) for t in stored.graph.initializer}
    assert all(o % ALIGN == 0 for o in offsets.values()), offsets
    # stored once: the data file holds the codes and scales, not twice
    assert (tmp_path / "m.onnx_data").stat().st_size < codes.nbytes + scales.nbytes + 2 * ALIGN
    loaded = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    assert np.array_equal(loaded["emb.codes"], codes) and np.array_equal(loaded["emb.scales"][..., 0], scales)
    s = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, K)).astype(np.float32)
    logits, rows = s.run(None, {"x": x, "ids": np.array([5], np.int64)})
    w = (codes.astype(np.float32) - 128) * scales[..., None]  # [V, K/32, 32], the op's default zero point 128
    assert np.allclose(rows[0], w[5], atol=1e-6)
    assert np.allclose(logits[0], w.reshape(V, K) @ x[0], rtol=2e-2, atol=2e-2 * np.abs(w).max() * np.sqrt(K))


def test_bad_aliases_are_refused(tmp_path):
    model, aliases, _, _ = _tied_graph(np.random.default_rng(0))
    with pytest.raises(ExportError, match="do not hold"):
        alias("bad", model.graph.initializer[0], (V, K + 1))
    with pytest.raises(ExportError, match="without their tensors"):
        save_mapped(model, tmp_path / "m.onnx", {**aliases, "emb.codes": "nowhere"})


_RESIDENT = textwrap.dedent("""
    import json, sys, numpy as np, onnxruntime as ort
    def resident_kb(name):  # Rss of every mapping of files called name
        total, hit = 0, False
        for line in open("/proc/self/smaps"):
            if line[0] in "0123456789abcdef" and "-" in line.split()[0]:
                hit = line.rstrip().endswith(name)
            elif hit and line.startswith("Rss:"):
                total += int(line.split()[1])
        return total
    s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    s.run(None, {"x": np.ones((1, %d), np.float32), "ids": np.array([7], np.int64)})
    print(json.dumps({"data_kb": resident_kb("m.onnx_data")}))
""" % K)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_prepacked_head_leaves_and_the_lookup_maps_its_rows(tmp_path):
    """After a run, the data file's resident pages are those around the row the lookup read, not the 8 MiB head:
    onnxruntime dropped the head's mapping once packed, and the alias was never read whole. (The kernel maps file
    pages in folios: on this machine's ext4 a 2 MiB folio around the row.)"""
    model, aliases, codes, _ = _tied_graph(np.random.default_rng(0))
    save_mapped(model, tmp_path / "m.onnx", aliases)
    out = subprocess.run([sys.executable, "-c", _RESIDENT, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                         check=True)
    resident = json.loads(out.stdout.strip().splitlines()[-1])["data_kb"]
    assert resident <= codes.nbytes / 1024 / 2, resident  # 8192 KiB of codes: a row and its scales are ~1 KiB


def _tied_fp32_graph(v: int, k: int, rng):
    """Gather(E, ids) and the head Gemm(x, E, transB) over one fp32 [v, k] weight E -> (model, E)."""
    e = rng.standard_normal((v, k)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["rows"], axis=0),
             helper.make_node("Gemm", ["x", "E"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k]),
                                              helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", v]),
                               helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["n", k])],
                              initializer=[numpy_helper.from_array(e, "E")])
    model = helper.make_model(graph, opset_imports=OPSETS)
    model.ir_version = 8
    return model, e


def _rewritten(tmp_path, name: str, part_bytes):
    """The tied fp32 graph with its head as 8-bit MatMulNBits in two passes (cut by ``part_bytes``) and the lookup
    over aliases of the head's bytes, saved mapped -> (path, blocks, rewriter)."""
    model, e = _tied_fp32_graph(20480, 64, np.random.default_rng(3))
    g = model.graph
    rw = Rewriter(g, accuracy_level=4)
    b = q8_blocks(e)
    gather, head = g.node[0], g.node[1]
    replace = {id(head): rw.matmul("x", b, ["logits"], [e.shape[0]], "lm_head", two_pass=True, lead=1,
                                   part_bytes=part_bytes),
               id(gather): rw.tied_embedding(gather, "lm_head", b)}
    rw.apply(replace)
    path = tmp_path / name / "model.onnx"
    path.parent.mkdir()
    save_mapped(model, path, rw.aliases)
    return path, b, rw


def test_a_head_cut_into_row_parts_equals_the_whole_and_the_lookup_spans_them(tmp_path):
    """``part_bytes``: the head's rows in parts (one MatMulNBits each, concatenated), stored back to back; the
    lookup's alias covers all of them; logits and rows equal the uncut graph's."""
    import onnxruntime as ort

    whole, b, _ = _rewritten(tmp_path, "whole", None)
    cut, _, rw = _rewritten(tmp_path, "cut", 400_000)  # 20,480 rows x 64 code bytes = 1.3 MB
    # parts of whole 4 KiB pages of codes (64 B a row) and scales (8 B a row): multiples of 512 rows
    assert row_parts(b, 400_000) == [(0, 6144), (6144, 12288), (12288, 18432), (18432, 20480)]
    assert row_parts(b, 1_100_000) == [(0, 16896), (16896, 20480)] and row_parts(b, 10 ** 9) == [(0, 20480)]
    assert row_parts(b, 1)[:2] == [(0, 512), (512, 1024)] and len(row_parts(b, 1)) == 40
    assert rw.parts["lm_head"] == ["lm_head.p0", "lm_head.p1", "lm_head.p2", "lm_head.p3"]
    assert alias_map(cut) == {"embed_tokens.codes": [f"lm_head.p{i}.codes" for i in range(4)],
                              "embed_tokens.scales": [f"lm_head.p{i}.scales" for i in range(4)]}
    stored = {t.name: {e.key: e.value for e in t.external_data}
              for t in onnx.load(str(cut), load_external_data=False).graph.initializer}
    parts = [stored[f"lm_head.p{i}.codes"] for i in range(4)]
    for a, nxt in zip(parts, parts[1:]):  # back to back: each part starts where the one before ends
        assert int(a["offset"]) + int(a["length"]) == int(nxt["offset"])
    assert int(stored["embed_tokens.codes"]["length"]) == b.codes.nbytes == sum(int(p["length"]) for p in parts)
    x = np.random.default_rng(4).standard_normal((3, 64)).astype(np.float32)
    ids = np.array([0, 6143, 6144, 20479], np.int64)
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x, "ids": ids})
            for p in (whole, cut)]
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(outs[1][1], outs[0][1])
    np.testing.assert_array_equal(outs[1][1], dequantize(b)[ids])


def test_parts_that_would_not_lie_back_to_back_are_refused(tmp_path):
    model, aliases, _, _ = _tied_graph(np.random.default_rng(0))
    odd = numpy_helper.from_array(np.zeros(ALIGN + 4, np.uint8), "odd")
    model.graph.initializer.extend([odd, alias("both", [odd, model.graph.initializer[0]], (ALIGN + 4 + V * K,))])
    with pytest.raises(ExportError, match="not whole"):
        save_mapped(model, tmp_path / "m.onnx", {**aliases, "both": ["odd", "head.codes"]})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_written_arrays_and_a_tied_fp32_lookup_alias(tmp_path):
    """write_arrays: arrays straight to the data file at aligned offsets (small ones inline), values exact through
    onnxruntime; the fp32 lookup over an alias leaves only its rows' pages resident once the head is packed, and
    load_unaliased gives the quantizers one tied weight again (an alias of row parts it refuses)."""
    import onnxruntime as ort

    model, e = _tied_fp32_graph(V, K // 4, np.random.default_rng(5))  # 8 MiB fp32 table
    del model.graph.initializer[:]
    model.graph.node[0].input[0] = "E.lookup"
    arrays = {"E": e, "small": np.arange(3, dtype=np.int64)}
    inits = write_arrays(arrays, tmp_path / "m.onnx_data", {"E.lookup": "E"})
    assert [t.name for t in inits] == ["E", "small", "E.lookup"] and inits[1].data_location != TensorProto.EXTERNAL
    model.graph.initializer.extend(inits)
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    assert alias_map(tmp_path / "m.onnx") == {"E.lookup": ["E"]}
    x, ids = np.ones((2, K // 4), np.float32), np.array([3, V - 1], np.int64)
    logits, rows = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, "ids": ids})
    np.testing.assert_array_equal(rows, e[ids])
    np.testing.assert_allclose(logits, x @ e.T, rtol=1e-5, atol=1e-4)
    script = _RESIDENT.replace("np.ones((1, %d), np.float32)" % K, "np.ones((1, %d), np.float32)" % (K // 4))
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1])["data_kb"] <= e.nbytes / 1024 / 2
    plain = load_unaliased(tmp_path / "m.onnx")
    assert [n.input[0] for n in plain.graph.node] == ["E", "x"] and "E.lookup" not in {
        t.name for t in plain.graph.initializer}
    with pytest.raises(ExportError, match="alias"):
        write_arrays(arrays, tmp_path / "n.onnx_data", {"E.lookup": "missing"})
    cut, _, _ = _rewritten(tmp_path, "cut", 400_000)
    with pytest.raises(ExportError, match="not one whole tensor"):
        load_unaliased(cut)


def test_the_quantizers_reader_views_or_reads_the_data_file_and_stays_inside_it(tmp_path):
    """quantizer_input: ``load_unaliased(read=False)`` leaves the weights in the data file and ``external_array`` views
    them (np.memmap, the written values); ``read_external`` reads them in (what onnx's loader gives), also from an
    artifact copied with hard links, which onnx 1.23's loader refuses ("multiple hard links"); a data location
    outside the artifact's folder is refused by name."""
    from onnxlm.export.quantizer_input import external_array, read_external
    from onnxlm.runtime.errors import ModelFileError

    e = np.random.default_rng(6).standard_normal((64, 1024)).astype(np.float32)  # 256 KiB: external
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "E"], ["y"], transB=1)], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=OPSETS[:1])
    model.graph.initializer.extend(write_arrays({"E": e}, tmp_path / "m.onnx_data"))
    onnx.save_model(model, str(tmp_path / "m.onnx"))
    lazy = load_unaliased(tmp_path / "m.onnx", read=False)
    t = lazy.graph.initializer[0]
    view = external_array(t, tmp_path)
    assert isinstance(view, np.memmap) and t.data_location == TensorProto.EXTERNAL
    np.testing.assert_array_equal(view, e)
    read_external(lazy, tmp_path)
    assert t.data_location != TensorProto.EXTERNAL and not t.external_data
    np.testing.assert_array_equal(numpy_helper.to_array(t), e)
    np.testing.assert_array_equal(numpy_helper.to_array(load_unaliased(tmp_path / "m.onnx").graph.initializer[0]), e)
    (tmp_path / "linked").mkdir()  # an artifact copied with hard links (cp -al): onnx's own loader refuses those
    for f in ("m.onnx", "m.onnx_data"):
        (tmp_path / "linked" / f).hardlink_to(tmp_path / f)
    linked = load_unaliased(tmp_path / "linked" / "m.onnx").graph.initializer[0]
    np.testing.assert_array_equal(numpy_helper.to_array(linked), e)
    bad = load_unaliased(tmp_path / "m.onnx", read=False)
    next(x for x in bad.graph.initializer[0].external_data if x.key == "location").value = "../m.onnx_data"
    with pytest.raises(ModelFileError, match="outside"):
        external_array(bad.graph.initializer[0], tmp_path / "sub")

"""GGUF-native quantization (`export/gguf_quant.py`) on a tiny Llama GGUF written here with the `gguf` package:
Q4_1 / Q4_0 layers, a Q8_0 tied embedding, a Q5_0 tensor (8-bit codes) and an F16 one (kept fp32); every other
block type (Q5_1, Q2_K..Q6_K) on single products of K=512 against gguf-py's dequantize. Checks that each MatMulNBits weight, read
back from the artifact, dequantises to transformers' loaded (dequantised, q/k un-permuted) weight, that the graph at
accuracy level 1 gives the fp32 model's logits, and the API / manifest / CLI. Real-weight quality: test_smollm2.py."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("gguf", reason="GGUF export needs the 'export' extra (gguf)")
pytest.importorskip("onnx", reason="quantization needs the 'export' extra (onnx)")

import gguf  # noqa: E402
import onnxlm  # noqa: E402
from gate_text import SHORT_GATE_TEXT  # noqa: E402
from gguf_writers import add_tiny_vocabulary, write_out  # noqa: E402
from onnxlm.export import gguf_quant as GQ  # noqa: E402
from onnxlm.export.mapped_weights import alias_map  # noqa: E402
from onnxlm.runtime.errors import ExportError  # noqa: E402

HIDDEN, FFN, LAYERS, HEADS, KV_HEADS, POSITIONS = 64, 96, 2, 4, 2, 64
# per layer: the GGUF type of each weight (layer 1's o_proj is F16: no block form, kept fp32; its down projection
# Q5_0: 8-bit codes)
TYPES = [{"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_0", "attn_output": "Q4_1", "ffn_gate": "Q4_1",
          "ffn_up": "Q4_1", "ffn_down": "Q4_0"},
         {"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "Q4_1", "attn_output": "F16", "ffn_gate": "Q4_0",
          "ffn_up": "Q4_1", "ffn_down": "Q5_0"}]
HF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
            "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
            "ffn_down": "mlp.down_proj"}


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """What llama.cpp's convert_hf_to_gguf does to q/k rows (transformers undoes it when loading)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path, types=None, hidden: int = HIDDEN, ffn: int = FFN, embedding: str = "Q8_0",
                    split_max_tensors: int = 0, pooling_type: int | None = None) -> None:
    """A 2-layer Llama with random weights (offsets in the weights so Q4_1's minimum matters) as a GGUF file;
    ``types`` per layer (default ``TYPES``). A type gguf-py cannot quantize (the K-quants, IQ types) is written as
    valid random blocks (``random_blocks``). ``split_max_tensors``: split as llama.cpp's gguf-split does, at most
    that many tensors a file (``<stem>-00001-of-0000N.gguf``, ...; the same tensors as unsplit). ``pooling_type``:
    ``llama.pooling_type`` (an embedding model's: 1 mean, 2 cls, 3 last)."""
    import gguf
    from gguf import GGMLQuantizationType as T

    types, HIDDEN, FFN = types or TYPES, hidden, ffn  # noqa: N806  (the module's names, for this file)
    rng = np.random.default_rng(0)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    from tokenizers.pre_tokenizers import ByteLevel

    tokens = specials + sorted(ByteLevel.alphabet()) + ["\u0120t"]  # one merge: " t"
    vocab = len(tokens)
    w = gguf.GGUFWriter(str(path), "llama", split_max_tensors=split_max_tensors)
    w.add_context_length(POSITIONS)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(10000.0)
    if pooling_type is not None:
        w.add_pooling_type(gguf.PoolingType(pooling_type))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3] * len(specials) + [1] * (vocab - len(specials)))
    w.add_token_merges(["\u0120 t"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_unk_token_id(0)

    def weight(n: int, k: int) -> np.ndarray:
        return (rng.standard_normal((n, k)) * 0.2 + rng.standard_normal((n, 1)) * 0.1).astype(np.float32)

    def add(name: str, array: np.ndarray, qtype: str) -> None:
        try:
            raw = gguf.quants.quantize(array, T[qtype])
        except NotImplementedError:
            raw = random_blocks(rng, qtype, *array.shape)
        w.add_tensor(name, raw, raw_dtype=T[qtype])

    add("token_embd.weight", weight(vocab, HIDDEN), embedding)
    shapes = {"attn_q": (HIDDEN, HIDDEN), "attn_k": (HIDDEN // HEADS * KV_HEADS, HIDDEN),
              "attn_v": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "attn_output": (HIDDEN, HIDDEN),
              "ffn_gate": (FFN, HIDDEN), "ffn_up": (FFN, HIDDEN), "ffn_down": (HIDDEN, FFN)}
    for i, layer in enumerate(types):
        w.add_tensor(f"blk.{i}.attn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
        for kind, qtype in layer.items():
            array = weight(*shapes[kind])
            if kind in ("attn_q", "attn_k"):
                array = _llama_cpp_permute(array, HEADS if kind == "attn_q" else KV_HEADS)
            add(f"blk.{i}.{kind}.weight", array, qtype)
    w.add_tensor("output_norm.weight", (1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float32))
    write_out(w)


def write_blocks_split(path, tensors_per_file: int) -> list:
    """``write_tiny_gguf``'s file split as llama.cpp's gguf-split does -> the files in order."""
    write_tiny_gguf(path, split_max_tensors=tensors_per_file)
    return sorted(path.parent.glob(f"{path.stem}-*-of-*.gguf"))


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    write_tiny_gguf(path)
    return path


@pytest.fixture(scope="module")
def hf_tiny(tiny_gguf):
    """transformers' model on the dequantised GGUF (the fp32 reference)."""
    from onnxlm.export.gguf import load_gguf

    return load_gguf(tiny_gguf).model


@pytest.fixture(scope="module")
def tiny_fp32(tmp_path_factory, tiny_gguf):
    from onnxlm.export import export_model

    return export_model(tiny_gguf, tmp_path_factory.mktemp("fp32") / "fp32", progress=False)


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory, tiny_gguf, tiny_fp32):
    return {level: GQ.quantize_gguf_artifact(tiny_fp32, tmp_path_factory.mktemp("q") / f"level{level}",
                                             gguf=tiny_gguf, accuracy_level=level, force_quality=True,
                                             quality_text=SHORT_GATE_TEXT, progress=False)
            for level in (1, 4)}


def _graph(path):
    import onnx

    return onnx.load(str(path / "model.onnx"))


def _nbits_weights(path) -> dict:
    """Each MatMulNBits node of the artifact -> its dequantised weight [N, K] (+ blocksum correction), read back
    from the saved initializers."""
    from onnx import helper, numpy_helper

    g = _graph(path).graph
    arrays = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    out = {}
    for n in g.node:
        if n.op_type != "MatMulNBits":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        codes, scales = arrays[n.input[1]], arrays[n.input[2]]
        zp = arrays[n.input[3]] if len(n.input) > 3 else None
        if zp is not None and a["bits"] == 4:  # packed two per byte, low nibble first
            zp = np.stack([zp & 15, zp >> 4], -1).reshape(zp.shape[0], -1)[:, :scales.shape[1]]
        corr = arrays.get(f"{n.name}.correction")
        out[n.name] = GQ.dequantize(GQ.Blocks(a["bits"], codes, scales, zp, None if corr is None else corr.T, (),
                                              a["block_size"]))
    return out


def test_each_weight_dequantises_to_transformers_weight(tiny_native, hf_tiny):
    got = _nbits_weights(tiny_native[4])
    sd = {k: v.detach().numpy() for k, v in hf_tiny.state_dict().items()}
    assert set(got) == {"l0.qkv", "l0.o_proj", "l0.gate_up_proj", "l0.down_proj", "l1.qkv", "l1.down_proj",
                        "l1.gate_up_proj", "lm_head"}  # l1.o_proj is F16: kept fp32
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        want = {"qkv": np.concatenate([sd[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
                "o_proj": sd[p + "self_attn.o_proj.weight"], "down_proj": sd[p + "mlp.down_proj.weight"],
                "gate_up_proj": np.concatenate([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])}
        for part, w in want.items():
            if f"l{i}.{part}" in got:
                assert np.abs(got[f"l{i}.{part}"] - w).max() <= 1e-6, (i, part)
    assert np.abs(got["lm_head"] - sd["model.embed_tokens.weight"]).max() <= 1e-6
    # and the q/k rows really were permuted (without the un-permutation the check would fail)
    assert np.abs(sd["model.layers.0.self_attn.q_proj.weight"]
                  - _llama_cpp_permute(sd["model.layers.0.self_attn.q_proj.weight"], HEADS)).max() > 0.1


def test_graph_layout_and_manifest(tiny_native):
    ops = {}
    g = _graph(tiny_native[4]).graph
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    # 2 layers x (qkv, o, gate_up, down) less the F16 o_proj, + the head (its two passes stacked in one)
    assert ops["MatMulNBits"] == 8 and ops["GatherBlockQuantized"] == 1 and "Gemm" not in ops
    gbq = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in g.node if n.name == "lm_head")
    assert (gbq.input[0], head.input[1]) == ("embed_tokens.codes", "lm_head.codes")
    # the Q8_0 code bytes (and their scales) stored once: the lookup's tensors alias the head's in model.onnx_data
    assert alias_map(tiny_native[4] / "model.onnx") == {"embed_tokens.codes": ["lm_head.codes"],
                                                        "embed_tokens.scales": ["lm_head.scales"]}
    assert head.input[0] == "lm_head.ar"  # the rows of a and x - a in one product
    # one correction per group holding a Q4_1 tensor (l0: qkv, o, gate_up; l1: qkv, gate_up), its blocksum a
    # ReduceSum over [.., K/32, 32]
    assert ops["ReduceSum"] == 5 and sum(n.name.endswith(".Correction") for n in g.node) == 5
    assert ops["MatMul"] == 6  # the 5 corrections and the F16 l1.o_proj kept fp32
    assert not any(i.name == "embed_tokens.weight" for i in g.initializer)
    q = json.loads((tiny_native[4] / "onnxlm.json").read_text())["quantization"]
    assert q["scheme"] == "gguf-q4_1" and q["accuracy_level"] == 4 and q["block_size"] == 32
    assert q["tensors"] == {"Q4_1": 9, "Q4_0": 3, "Q8_0": 1, "Q5_0": 1} and q["fp32_tensors"] == {"F16": 1}
    assert q["max_weight_diff"] <= 1e-6 and q["forced"] and q["quality"]["tokens"] > 100
    q1 = json.loads((tiny_native[1] / "onnxlm.json").read_text())["quantization"]
    assert q1["tensors"] == q["tensors"] and q1["fp32_tensors"] == {"F16": 1}
    # two int8 passes (one MatMulNBits over the stacked rows of a and x - a): the head; the 4-bit MLP in one pass;
    # at the fidelity level the 8-bit (Q5_0) down projection too (8-bit codes run at level 4: two passes = ~fp32)
    assert q["two_pass"] == ["lm_head"] and q1["two_pass"] == ["down_proj", "lm_head"]
    assert next(n for n in g.node if n.name == "l0.gate_up_proj").input[0] != "l0.gate_up_proj.ar"
    levels = {n.name: next(a.i for a in n.attribute if a.name == "accuracy_level") for n in g.node
              if n.op_type == "MatMulNBits"}
    assert {nm for nm, lv in levels.items() if lv == 1} == {"l0.qkv", "l0.o_proj", "l1.qkv"}
    g1 = _graph(tiny_native[1]).graph  # fidelity: the 4-bit MLP at fp32 activations too
    levels1 = {n.name: next(a.i for a in n.attribute if a.name == "accuracy_level") for n in g1.node
               if n.op_type == "MatMulNBits"}
    assert {nm for nm, lv in levels1.items() if lv == 4} == {"lm_head", "l1.down_proj"}  # 8-bit: always level 4
    # the one corrected (Q4_1) projection into the residual stream, l0.o_proj: Add(x, Add(y, corr)) -> one Sum
    assert [n.op_type for n in g.node].count("Sum") == 1


def test_level1_logits_equal_the_fp32_model(tiny_native, tiny_fp32, hf_tiny):
    import torch

    ids = np.array([[1, 40, 41, 72, 100, 150, 200, 3, 9, 250]])
    with torch.no_grad():
        want = hf_tiny(input_ids=torch.tensor(ids)).logits.numpy()
    fp32 = onnxlm.load(tiny_fp32).logits(ids)
    level1 = onnxlm.load(tiny_native[1]).logits(ids)
    assert np.abs(fp32 - want).max() <= 1e-4
    assert np.abs(level1 - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    level4 = onnxlm.load(tiny_native[4])
    assert np.abs(level4.logits(ids) - want).max() <= 0.05 * np.abs(want).max()  # int8 activations: close
    res = level4.generate([[1, 40, 41], [1, 72]], max_new_tokens=4, eos_token_id=[])
    assert all(len(t) == 4 for t in res.new_tokens)


def _run_nodes(rw, nodes, x: np.ndarray, out: str) -> np.ndarray:
    """The nodes of ``_Rewriter.matmul`` (their initializers in ``rw``) as a graph: x -> out."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], rw.new_inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([out], {"x": x})[0]


@pytest.mark.parametrize("level,part,tol", [(4, "qkv", 1e-5), (4, "gate_up_proj", 0.02), (4, "down_proj", 0.02),
                                            (1, "gate_up_proj", 1e-5), (1, "down_proj", 1e-5)])
def test_graph_form_of_the_correction_and_the_two_pass_products(level, part, tol):
    """One rewritten Q4_1 MatMul on its own (x [b=2, s=3, K], the correction, a Split) against x @ W.T with the
    exact weight, relative to max |x @ W.T|: q/k/v and the MLP at accuracy_level 1 at fp32 activations (1e-5), the
    MLP at accuracy_level 4 (int8 activations, one pass) within int8 error. A wrong correction (rows mixed up,
    dropped: off by ~d/2 per weight, ~7 %) is far outside each bound."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from onnx import helper

    rng = np.random.default_rng(3)
    k, n_gate, n_up = 96, 40, 24
    w = (rng.standard_normal((n_gate + n_up, k)) * 0.3 + rng.standard_normal((n_gate + n_up, 1)) * 0.2)
    raw = gguf.quants.quantize(w.astype(np.float32), T.Q4_1)
    exact = gguf.quants.dequantize(raw, T.Q4_1)
    b = GQ.blocks_from_gguf(raw, "Q4_1", n_gate + n_up, k)
    rw = GQ._Rewriter(helper.make_graph([], "empty", [], []), level)
    nodes = rw.matmul("x", b, ["gate", "up"], [n_gate, n_up], f"l0.{part}")
    nbits = [nd for nd in nodes if nd.op_type == "MatMulNBits"]
    assert len(nbits) == 1 and nbits[0].input[0] == "x"  # one pass: only the head goes in two
    nodes.append(helper.make_node("Concat", ["gate", "up"], ["y"], axis=-1))
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    got, want = _run_nodes(rw, nodes, x, "y"), x @ exact.T
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * scale
    without = exact - np.repeat(b.correction, GQ.BLOCK, axis=1)  # what MatMulNBits alone computes
    assert np.abs(x @ without.T - want).max() > 0.05 * scale


@pytest.mark.parametrize("level", [1, 4])
def test_the_two_pass_head(level):
    """The Q8_0 head's two int8 passes (one MatMulNBits over the stacked rows) give fp32-activation logits."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from onnx import helper

    rng = np.random.default_rng(4)
    k, vocab = 96, 64
    raw8 = gguf.quants.quantize((rng.standard_normal((vocab, k)) * 0.5).astype(np.float32), T.Q8_0)
    rw = GQ._Rewriter(helper.make_graph([], "empty", [], []), level)
    nodes = rw.matmul("x", GQ.blocks_from_gguf(raw8, "Q8_0", vocab, k), ["logits"], [vocab], "lm_head", head=True)
    assert [nd.op_type for nd in nodes].count("MatMulNBits") == 1 and rw.two_pass == {"lm_head"}
    x = rng.standard_normal((5, k)).astype(np.float32) * np.array([1, 10, 0.1, 1, 3], np.float32)[:, None]
    got, want = _run_nodes(rw, nodes, x, "logits"), x @ gguf.quants.dequantize(raw8, T.Q8_0).T
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_a_head_over_the_two_pass_size_runs_in_one_pass(monkeypatch):
    """A head with more than HEAD_TWO_PASS_BYTES of codes: one int8 pass (x quantized per block as level 4 does, as
    llama.cpp's Q8_0 products): close to, not equal to, the fp32-activation logits."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from onnx import helper

    rng = np.random.default_rng(4)
    k, vocab = 96, 64
    raw8 = gguf.quants.quantize((rng.standard_normal((vocab, k)) * 0.5).astype(np.float32), T.Q8_0)
    monkeypatch.setattr(GQ, "HEAD_TWO_PASS_BYTES", vocab * k - 1)  # this head's codes are one byte more
    rw = GQ._Rewriter(helper.make_graph([], "empty", [], []), 4)
    nodes = rw.matmul("x", GQ.blocks_from_gguf(raw8, "Q8_0", vocab, k), ["logits"], [vocab], "lm_head", head=True)
    assert [nd.op_type for nd in nodes] == ["MatMulNBits"] and rw.two_pass == set() and nodes[0].input[0] == "x"
    x = rng.standard_normal((5, k)).astype(np.float32)
    got, want = _run_nodes(rw, nodes, x, "logits"), x @ gguf.quants.dequantize(raw8, T.Q8_0).T
    assert 1e-5 * np.abs(want).max() < np.abs(got - want).max() <= 2e-2 * np.abs(want).max()


def test_dropping_the_correction_changes_the_weights():
    """The Q4_1 correction is what makes the weights exact: without R the dequantised weight is off by ~d/2."""
    import gguf
    from gguf import GGMLQuantizationType as T

    w = (np.random.default_rng(1).standard_normal((8, 64)) * 0.3 + 0.5).astype(np.float32)
    raw = gguf.quants.quantize(w, T.Q4_1)
    b = GQ.blocks_from_gguf(raw, "Q4_1", 8, 64)
    exact = gguf.quants.dequantize(raw, T.Q4_1)
    assert np.abs(GQ.dequantize(b) - exact).max() <= 1e-6
    b.correction = None
    assert np.abs(GQ.dequantize(b) - exact).max() > 1e-3


def test_embeddings_of_the_fp32_export_and_its_gguf_variants(tiny_native, tiny_fp32, hf_tiny):
    """embed on a GGUF's exports: the fp32 artifact pools transformers' hidden_states[-1] of the dequantised model
    (<= 1e-4), the variant on the file's blocks at fp32 activations (level 1) as closely as its logits, at int8
    activations (level 4) nearly the same direction; a generative GGUF names no pooling: 'mean'."""
    import torch

    rows = [[1, 40, 41, 72, 100, 150, 200, 3, 9, 250], [1, 72, 5]]
    with torch.no_grad():
        want = np.stack([hf_tiny(input_ids=torch.tensor([r]), output_hidden_states=True).hidden_states[-1][0]
                         .numpy().mean(0) for r in rows])
    fp32 = onnxlm.load(tiny_fp32)
    assert fp32.default_pooling == "mean" and "pooling" not in fp32.manifest
    assert np.abs(fp32.embed(rows, normalize=False).embeddings - want).max() <= 1e-4
    level1 = onnxlm.load(tiny_native[1]).embed(rows, normalize=False).embeddings
    assert np.abs(level1 - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    level4 = onnxlm.load(tiny_native[4]).embed(rows).embeddings
    cosine = (level4 * (want / np.linalg.norm(want, axis=1, keepdims=True))).sum(axis=1)
    assert (cosine > 0.99).all(), cosine


def test_a_gguf_that_names_its_pooling_is_embedded_with_it(tmp_path):
    """An embedding GGUF's ``{arch}.pooling_type`` (3: last, as Qwen3-Embedding's) reaches the manifest, the GGUF
    variant's too, and is embed's default; an explicit pooling still wins."""
    from onnxlm.export import export_model

    path = tmp_path / "tiny-embed.gguf"
    write_tiny_gguf(path, pooling_type=3)
    fp32 = export_model(path, tmp_path / "fp32", progress=False, validate=False)
    native = GQ.quantize_gguf_artifact(fp32, tmp_path / "native", gguf=path, force_quality=True,
                                       quality_text=SHORT_GATE_TEXT, progress=False)
    rows = [[1, 40, 41, 72], [1, 9]]
    for art in (fp32, native):
        model = onnxlm.load(art)
        assert model.manifest["pooling"] == "last" and model.default_pooling == "last"
        got = model.embed(rows)
        assert got.pooling == "last"
        np.testing.assert_array_equal(got.embeddings, model.embed(rows, pooling="last").embeddings)
        assert np.abs(got.embeddings - model.embed(rows, pooling="mean").embeddings).max() > 1e-3


def test_export_model_quantize_gguf_and_cli_info(tmp_path, tiny_gguf, tiny_fp32):
    from onnxlm.export import export_model

    out = export_model(tiny_gguf, tmp_path / "native", quantize="gguf", force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    m = json.loads((out / "onnxlm.json").read_text())
    assert m["quantization"]["scheme"] == "gguf-q4_1" and m["kv_layout"] == "fused-gqa"
    assert m["quantization"]["quality"]["text"] == "the caller's text"  # passed on through the fp32 export
    with pytest.raises(ExportError, match=r"quality_text: \d+ tokens with this artifact's tokenizer; at least 2,000"):
        GQ.quantize_gguf_artifact(tiny_fp32, tmp_path / "short", gguf=tiny_gguf, quality_text=SHORT_GATE_TEXT,
                                  progress=False)  # gated: too short to decide on
    assert not (tmp_path / "short").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["native"]  # the fp32 scratch export is gone
    info = subprocess.run([sys.executable, "-m", "onnxlm", "info", str(out)], capture_output=True, text=True,
                          timeout=120)
    assert info.returncode == 0, info.stderr
    assert "quantization    gguf-q4_1" in info.stdout and "GGUF blocks kept: Q4_1 9, Q4_0 3, Q5_0 1, Q8_0 1; fp32 (dequantised): F16 1" in info.stdout
    assert "GGUF file      tiny-llama.gguf (sha256 " in info.stdout and "fp32 reference fp32 (" in info.stdout
    assert "weight-only, the file's own blocks, accuracy level 4" in info.stdout
    # an fp32 artifact exported from a GGUF re-quantizes without torch: its manifest names the GGUF and its sha256,
    # and the file of that name in the current directory is used
    text = tmp_path / "gate.txt"
    text.write_text(SHORT_GATE_TEXT, encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "export", str(tiny_fp32), str(tmp_path / "cli"),
                           "--quantize", "gguf", "--accuracy-level", "1", "--force-quality", "-q",
                           "--quality-text", str(text)],
                          capture_output=True, text=True, timeout=300, cwd=tiny_gguf.parent)
    assert proc.returncode == 0, proc.stderr
    q = json.loads((tmp_path / "cli" / "onnxlm.json").read_text())["quantization"]
    assert q["accuracy_level"] == 1 and q["quality"]["text"] == "the caller's text"
    # elsewhere, --gguf names it; a file of other bytes is refused by its sha256
    proc = subprocess.run([sys.executable, "-m", "onnxlm", "export", str(tiny_fp32), str(tmp_path / "cli2"),
                           "--quantize", "gguf", "--gguf", str(tiny_gguf), "--force-quality", "-q",
                           "--quality-text", str(text)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with pytest.raises(ExportError, match="gguf: given .*fp32 artifact re-quantized"):
        export_model(tiny_gguf, tmp_path / "x", quantize="gguf", gguf=tiny_gguf, progress=False)


@pytest.mark.parametrize("kw,match", [(dict(accuracy_level=2), "accuracy_level.*1, 4"),
                                      (dict(block_size=64), "block_size.*32")])
def test_bad_settings_are_refused(tmp_path, tiny_fp32, kw, match):
    from onnxlm.export import export_model

    with pytest.raises(ExportError, match=match):
        export_model(tiny_fp32, tmp_path / "q", quantize="gguf", progress=False, **kw)
    assert not (tmp_path / "q").exists()


def test_sources_are_names_and_sha256s(tiny_native, tiny_gguf, tiny_fp32):
    """The quantized manifest pins the GGUF file and the fp32 artifact by name and sha256, never by path."""
    import hashlib

    from test_export import assert_no_machine_paths

    fp32 = json.loads((tiny_fp32 / "onnxlm.json").read_text())
    gguf = {"name": "tiny-llama.gguf", "sha256": hashlib.sha256(tiny_gguf.read_bytes()).hexdigest(),
            "bytes": tiny_gguf.stat().st_size}
    assert fp32["source"] == gguf
    for level, art in tiny_native.items():
        m = json.loads((art / "onnxlm.json").read_text())
        assert m["quantization"]["source_gguf"] == gguf
        assert m["quantization"]["source_fp32"] == {"name": "fp32", "files": fp32["files"]}
        assert_no_machine_paths(m, art.parent, tiny_fp32.parent, tiny_gguf.parent)


def test_the_gguf_must_be_found_and_be_the_recorded_one(tmp_path, tiny_fp32, tiny_gguf):
    with pytest.raises(ExportError, match="needs the GGUF file .*'tiny-llama.gguf'.*gguf=PATH"):
        GQ.quantize_gguf_artifact(tiny_fp32, tmp_path / "q", progress=False)  # not here, nor beside the artifact
    other = tmp_path / "tiny-llama.gguf"
    data = tiny_gguf.read_bytes()
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one byte of the last tensor changed
    with pytest.raises(ExportError, match="not the file the fp32 artifact was exported from"):
        GQ.quantize_gguf_artifact(tiny_fp32, tmp_path / "q", gguf=other, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-llama.gguf"]


def test_a_non_gguf_source_is_refused(tmp_path, tiny_llama):
    from onnxlm.export import export_model

    with pytest.raises(ExportError, match="was not exported from a GGUF file"):
        export_model(tiny_llama.onnx_dir, tmp_path / "q", quantize="gguf", progress=False)


# ---------------------------------------------------------------------------------------- every common block type
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
              "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0], "IQ4_XS": [0],
              "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0], "IQ1_S": [0], "IQ1_M": [],
              "TQ1_0": [52], "TQ2_0": [64], "MXFP4": [], "NVFP4": []}
# ^ byte offsets of each block's fp16s (IQ1_M's lies in the top nibbles of its last 8 bytes; the FP4 types' scales
# are 8-bit floats, see random_blocks)


def random_blocks(rng, qtype: str, n: int, k: int, scales: tuple[float, float] = (0.001, 0.05)) -> np.ndarray:
    """Valid random GGUF blocks of ``qtype`` for an [n, k] weight -> raw bytes [n, row bytes] uint8: every code and
    sub-block scale byte random, the fp16 super-scales small positive numbers drawn from ``scales`` (random bytes
    could be NaN), the FP4 types' 8-bit scales between 2^-8 and 2^-3."""
    from onnxlm.export.gguf_blocks import BLOCK_BYTES, BLOCK_WEIGHTS

    weights, nbytes, halves = BLOCK_WEIGHTS[qtype], BLOCK_BYTES[qtype], F16_FIELDS[qtype]
    nb = k // weights
    raw = rng.integers(0, 256, size=(n, nb, nbytes), dtype=np.uint8)
    for at in halves:
        raw[..., at:at + 2] = rng.uniform(*scales, size=(n, nb, 1)).astype(np.float16).view(np.uint8)
    if qtype == "IQ1_M":  # bits 4i..4i+3 of the fp16 in the top nibble of the block's i-th last uint16
        d = rng.uniform(*scales, size=(n, nb, 1)).astype(np.float16).view(np.uint16)
        sc = raw[..., 48:56].copy().view(np.uint16)
        raw[..., 48:56] = ((sc & 0x0FFF) | (((d >> np.array([0, 4, 8, 12], np.uint16)) & 15) << 12)).view(np.uint8)
    if qtype == "MXFP4":  # an e8m0 exponent: 2^(e - 128)
        raw[..., 0] = rng.integers(120, 126, size=(n, nb), dtype=np.uint8)
    if qtype == "NVFP4":  # four unsigned e4m3 scales (exponent bias 7, halved)
        raw[..., :4] = (rng.integers(0, 5, size=(n, nb, 4)) << 3 | rng.integers(0, 8, size=(n, nb, 4))).astype(np.uint8)
    return raw.reshape(n, -1)


@pytest.mark.parametrize("qtype", list(F16_FIELDS))
def test_every_block_type_dequantises_to_gguf_py_and_runs_in_onnxruntime(qtype):
    """Each type's codes and scales, as MatMulNBits Blocks (4-bit for codes of 4 bits or fewer, 8-bit for 5 to 8;
    the type's own sub-block size), dequantise exactly to gguf-py's ``dequantize`` of the same bytes, also as 8-bit
    codes (``to_8bit``) and in blocks of 16 (``reblock``); one product through onnxruntime gives x @ W.T: at fp32
    activations (level 1, the 4-bit types) within float rounding, at int8 activations within int8 error."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from onnx import helper

    from onnxlm.export.nbits import reblock, to_8bit

    rng = np.random.default_rng(7)
    n, k = 24, 512
    raw = random_blocks(rng, qtype, n, k)
    exact = gguf.quants.dequantize(raw, T[qtype])
    b = GQ.blocks_from_gguf(raw, qtype, n, k)
    assert b.bits == (4 if qtype in ("Q4_0", "Q4_1", "Q2_K", "Q3_K", "Q4_K", "TQ1_0", "TQ2_0") else 8)
    assert b.block_size == (16 if qtype in ("Q2_K", "Q3_K", "Q6_K", "IQ2_XS", "IQ2_S", "IQ1_M", "NVFP4") else 32)
    for form in (b, to_8bit(b), reblock(b, 16)):
        assert np.abs(GQ.dequantize(form) - exact).max() <= 1e-6 * np.abs(exact).max()
    x = rng.standard_normal((2, 3, k)).astype(np.float32)
    want = x @ exact.T
    for level in (1, 4):
        rw = GQ._Rewriter(helper.make_graph([], "empty", [], []), level)
        got = _run_nodes(rw, rw.matmul("x", b, ["y"], [n], "l0.gate_up_proj"), x, "y")
        tol = 1e-5 if level == 1 and b.bits == 4 else 0.02  # 8-bit codes run at int8 activations (level 4)
        assert np.abs(got - want).max() <= tol * np.abs(want).max(), level


def test_a_misread_codebook_scale_fails_the_export(monkeypatch):
    """The codebook types' codes are gguf-py's weights over the decoded sub-block scales: a scale read wrong (here
    tripled) leaves codes that are not integers, and the check refuses the tensor instead of rounding them."""
    from onnxlm.export import gguf_codebooks

    real = gguf_codebooks._scales
    monkeypatch.setattr(gguf_codebooks, "_scales", lambda b, qtype: real(b, qtype) * 3)
    raw = random_blocks(np.random.default_rng(9), "IQ2_XXS", 8, 256)
    with pytest.raises(ExportError, match="IQ2_XXS: its sub-block scales were misread"):
        GQ.blocks_from_gguf(raw, "IQ2_XXS", 8, 256)


def test_a_mixed_group_is_stacked_in_8_bits_at_the_smallest_block():
    """q/k/v of a Q4_K_M file (Q4_K, Q4_K, Q6_K): one MatMulNBits, 8-bit codes in blocks of 16 (the 4-bit parts
    promoted, the 32-blocks cut in two), in two int8 passes (attention at ~fp32 activations)."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from onnx import helper

    rng = np.random.default_rng(8)
    types = ("Q4_K", "Q4_K", "Q6_K")
    raws = [random_blocks(rng, t, 16, 256) for t in types]
    b = GQ.stack([GQ.blocks_from_gguf(r, t, 16, 256) for r, t in zip(raws, types)])
    assert (b.bits, b.block_size, b.types) == (8, 16, types) and b.correction is not None
    exact = np.concatenate([gguf.quants.dequantize(r, T[t]) for r, t in zip(raws, types)])
    assert np.abs(GQ.dequantize(b) - exact).max() <= 1e-6 * np.abs(exact).max()
    rw = GQ._Rewriter(helper.make_graph([], "empty", [], []), 4)
    nodes = rw.matmul("x", b, ["q", "k", "v"], [16, 16, 16], "l0.qkv")
    assert rw.two_pass == {"qkv"} and [nd.op_type for nd in nodes].count("MatMulNBits") == 1
    nodes.append(helper.make_node("Concat", ["q", "k", "v"], ["y"], axis=-1))
    x = rng.standard_normal((2, 3, 256)).astype(np.float32)
    got, want = _run_nodes(rw, nodes, x, "y"), x @ exact.T
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()  # two passes: close to fp32 activations


KQ_TYPES = [{"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "Q6_K", "attn_output": "Q5_K", "ffn_gate": "Q2_K",
             "ffn_up": "Q3_K", "ffn_down": "Q5_1"},
            {"attn_q": "Q4_K", "attn_k": "Q4_K", "attn_v": "IQ3_S", "attn_output": "IQ2_S", "ffn_gate": "IQ4_XS",
             "ffn_up": "IQ4_NL", "ffn_down": "IQ2_XXS"}]


def test_a_k_quant_model_keeps_every_block_and_equals_the_fp32_model(tmp_path, monkeypatch):
    """A Q4_K_M-like Llama (hidden 256: K-quant super-blocks; Q4_K q/k beside a Q6_K v, Q5_K, Q2_K, Q3_K, Q5_1; in
    its second layer Q4_K q/k beside an IQ3_S v, IQ2_S, IQ4_XS, IQ4_NL; a Q6_K tied embedding) and one IQ2_XXS tensor
    standing for a type without a block form (taken off the native list here; a newer llama.cpp type would be one):
    every block tensor kept (checked against transformers' dequantised weights at export), the other one dequantised
    with a warning, and at the fidelity level the logits are the fp32 model's."""
    import torch

    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf

    monkeypatch.setattr(GQ, "NATIVE_TYPES", tuple(t for t in GQ.NATIVE_TYPES if t != "IQ2_XXS"))
    gguf_path = tmp_path / "kq.gguf"
    write_tiny_gguf(gguf_path, KQ_TYPES, hidden=256, ffn=256, embedding="Q6_K")
    with pytest.warns(UserWarning, match="1 IQ2_XXS tensor.*no MatMulNBits form"):
        out = export_model(gguf_path, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                           quality_text=SHORT_GATE_TEXT, progress=False)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["tensors"] == {"Q4_K": 4, "Q6_K": 2, "Q5_K": 1, "Q2_K": 1, "Q3_K": 1, "Q5_1": 1, "IQ3_S": 1, "IQ2_S": 1,
                            "IQ4_XS": 1, "IQ4_NL": 1}
    assert q["fp32_tensors"] == {"IQ2_XXS": 1} and q["max_weight_diff"] <= 1e-5
    assert q["scheme"] == "gguf-q4_k" and q["bits"] == 4
    ids = np.array([[1, 40, 41, 72, 100, 150, 200, 3, 9, 250]])
    with torch.no_grad():
        want = load_gguf(gguf_path).model(input_ids=torch.tensor(ids)).logits.numpy()
    got = onnxlm.load(out).logits(ids)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def write_tiny_arch_gguf(path, arch: str, header: dict, tensors: list, seed: int,
                         scales: tuple[float, float] = (0.001, 0.05)) -> None:
    """A 2-layer GGUF of ``arch`` laid out as llama.cpp writes one: the common hyperparameters (hidden 256, ffn 256,
    2 heads), ``header`` (GGUFWriter method -> value: the architecture's own keys), a byte-level vocabulary, and
    ``tensors``: (name with ``{i}`` for the layer, rows or "vocab", columns, type) in file order, "norm" for an F32
    norm weight near 1, other types as valid random blocks with super-scales in ``scales``."""
    import gguf
    from gguf import GGMLQuantizationType as T
    from tokenizers.pre_tokenizers import ByteLevel

    rng = np.random.default_rng(seed)
    specials = ["<pad>", "<bos>", "<eos>"]
    tokens = specials + sorted(ByteLevel.alphabet()) + ["\u0120t"]  # one merge: " t"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(POSITIONS)
    w.add_embedding_length(256)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(256)
    w.add_head_count(2)
    for method, value in header.items():
        getattr(w, method)(value)
    add_tiny_vocabulary(w, specials, tokens)
    for name, n, k, qtype in tensors:
        n = len(tokens) if n == "vocab" else n
        for i in range(LAYERS) if "{i}" in name else [None]:
            full = name.format(i=i)
            if qtype == "norm":
                w.add_tensor(full, (1 + 0.1 * rng.standard_normal(n)).astype(np.float32))
            else:
                w.add_tensor(full, random_blocks(rng, qtype, n, k, scales), raw_dtype=T[qtype])
    write_out(w)


def _layer(*tensors) -> list:
    """Per-layer tensors (kind, rows, columns, type) -> the file-order entries of ``write_tiny_arch_gguf``."""
    return [(f"blk.{{i}}.{kind}.weight", n, k, t) for kind, n, k, t in tensors]


_NORM = lambda kind, n=256: (kind, n, None, "norm")  # noqa: E731
_OLMO2_HEADER = dict(add_head_count_kv=1, add_rope_dimension_count=128, add_layer_norm_rms_eps=1e-6,
                     add_rope_freq_base=500_000.0)
_OLMO2_TENSORS = ([("token_embd.weight", "vocab", 256, "Q4_K")] + _layer(
    ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"), ("attn_v", 128, 256, "Q6_K"),
    ("attn_output", 256, 256, "Q4_K"), _NORM("post_attention_norm"), _NORM("attn_q_norm", 256),
    _NORM("attn_k_norm", 128), ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"),
    ("ffn_down", 256, 256, "Q6_K"), _NORM("post_ffw_norm"))
    + [("output_norm.weight", 256, None, "norm"), ("output.weight", "vocab", 256, "Q6_K")])
#: per architecture, as a Q4_K_M file of it stores its tensors (tiny): header, tensors, seed, super-scales ->
#: model_type, blocks kept by type. K-quant weights of ~0.01 (Qwen3, Phi-3): their random mins would otherwise grow
#: the activations past float32's reach in the 8-bit path.
ARCHS = {
    # Gemma 3 (the 270M file's types: Q5_0 q/k/gate/up, Q8_0 v and embedding, Q4_K o, Q6_K down); norms stored as
    # 1 + w, which transformers' loader undoes; q/k rows not permuted
    "gemma3": (dict(add_head_count_kv=1, add_key_length=128, add_value_length=128, add_layer_norm_rms_eps=1e-6,
                    add_rope_freq_base=1_000_000.0, add_sliding_window=4),
               [("token_embd.weight", "vocab", 256, "Q8_0")] + _layer(
                   *[_NORM(k) for k in ("attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm")],
                   _NORM("attn_q_norm", 128), _NORM("attn_k_norm", 128), ("attn_q", 256, 256, "Q5_0"),
                   ("attn_k", 128, 256, "Q5_0"), ("attn_v", 128, 256, "Q8_0"), ("attn_output", 256, 256, "Q4_K"),
                   ("ffn_gate", 256, 256, "Q5_0"), ("ffn_up", 256, 256, "Q5_0"), ("ffn_down", 256, 256, "Q6_K"))
               + [("output_norm.weight", 256, None, "norm")], 5, (0.001, 0.05),
               "gemma3_text", {"Q5_0": 8, "Q8_0": 3, "Q4_K": 2, "Q6_K": 2}),
    # Gemma 1 (Q4_K q/k/o/gate/up, Q6_K v, down and the tied embedding): an architecture transformers' loader does
    # not know (export/gguf_architectures.py); norms stored as 1 + w, no post-norms, no rope base, rows not permuted;
    # small K-quant scales: the sqrt(hidden) embedding scale grows the activations, and with them the 8-bit codes'
    # two-pass error (1.4e-4 of the logits' range with 10x the scales, seed 6; 2.3e-5 here)
    "gemma": (dict(add_head_count_kv=1, add_key_length=128, add_value_length=128, add_layer_norm_rms_eps=1e-6),
              [("token_embd.weight", "vocab", 256, "Q6_K")] + _layer(
                  _NORM("attn_norm"), ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"),
                  ("attn_v", 128, 256, "Q6_K"), ("attn_output", 256, 256, "Q4_K"), _NORM("ffn_norm"),
                  ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
              + [("output_norm.weight", 256, None, "norm")], 7, (5e-5, 2e-4),
              "gemma", {"Q4_K": 10, "Q6_K": 5}),
    # Granite 3.x (Q4_K q/k/o/gate/up and the embedding, Q6_K v, down and an untied head): q/k rows permuted as
    # llama.cpp's LlamaModel converter writes them, and the four multipliers; SmolLM3 (the same layout, tied)
    "granite": (dict(add_head_count_kv=1, add_rope_dimension_count=128, add_layer_norm_rms_eps=1e-5,
                     add_rope_freq_base=10000.0, add_attention_scale=0.05, add_embedding_scale=2.0,
                     add_residual_scale=0.3, add_logit_scale=4.0),
                [("token_embd.weight", "vocab", 256, "Q4_K")] + _layer(
                    _NORM("attn_norm"), ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"),
                    ("attn_v", 128, 256, "Q6_K"), ("attn_output", 256, 256, "Q4_K"), _NORM("ffn_norm"),
                    ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
                + [("output_norm.weight", 256, None, "norm"), ("output.weight", "vocab", 256, "Q6_K")], 10,
                (1e-4, 5e-4), "granite", {"Q4_K": 11, "Q6_K": 5}),
    "smollm3": (dict(add_head_count_kv=1, add_rope_dimension_count=128, add_layer_norm_rms_eps=1e-6,
                     add_rope_freq_base=5_000_000.0),
                [("token_embd.weight", "vocab", 256, "Q6_K")] + _layer(
                    _NORM("attn_norm"), ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"),
                    ("attn_v", 128, 256, "Q6_K"), ("attn_output", 256, 256, "Q4_K"), _NORM("ffn_norm"),
                    ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
                + [("output_norm.weight", 256, None, "norm")], 11, (1e-4, 5e-4), "smollm3", {"Q4_K": 10, "Q6_K": 5}),
    # OLMo 2 (Q4_K q/k/o/gate/up and the embedding, Q6_K v, down and an untied head): post-norms, q/k norms over the
    # full projections, rows not permuted; no norm before a product, so the 8-bit codes' two-pass error follows the
    # residual stream's size (seed 12 read 1.0e-4 of the logits' range, here 4.8e-5)
    "olmo2": (_OLMO2_HEADER, _OLMO2_TENSORS, 13, (1e-4, 5e-4), "olmo2", {"Q4_K": 11, "Q6_K": 5}),
    # OLMo 3 (OLMo 2's tensors and types in a file of architecture olmo2): a sliding window of 4 on its first layer,
    # YaRN on the other
    "olmo3": (dict(_OLMO2_HEADER, add_sliding_window=4, add_sliding_window_pattern=[True, False],
                   add_rope_scaling_type=gguf.RopeScalingType.YARN, add_rope_scaling_factor=8.0,
                   add_rope_scaling_orig_ctx_len=32),
              _OLMO2_TENSORS, 13, (1e-4, 5e-4), "olmo3", {"Q4_K": 11, "Q6_K": 5}),
    # ERNIE 4.5 (Q4_K q/k/gate/up, Q8_0 o, Q6_K v, down and the tied embedding): Llama's tensors, q/k rows not
    # permuted (its rotary turns adjacent pairs, in llama.cpp and transformers alike), a head size (64 a head, 2
    # heads) that is not hidden / heads, as ERNIE-4.5-0.3B's 128 against 1024 / 16. Small K-quant scales: seeds 14 to
    # 17 read 2.9e-5 to 5.3e-5 of the logits' range (at 10x the scales 1.0e-4 to 1.5e-4, as Qwen3's layout: the
    # 8-bit codes' two-pass error, as above); a wrong rotary or row order is off by whole units
    "ernie4_5": (dict(add_head_count_kv=1, add_key_length=64, add_value_length=64, add_layer_norm_rms_eps=1e-5,
                      add_rope_freq_base=500_000.0),
                 [("token_embd.weight", "vocab", 256, "Q6_K")] + _layer(
                     _NORM("attn_norm"), ("attn_q", 128, 256, "Q4_K"), ("attn_k", 64, 256, "Q4_K"),
                     ("attn_v", 64, 256, "Q6_K"), ("attn_output", 256, 128, "Q8_0"), _NORM("ffn_norm"),
                     ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
                 + [("output_norm.weight", 256, None, "norm")], 16, (5e-5, 2e-4),
                 "ernie4_5", {"Q4_K": 8, "Q6_K": 5, "Q8_0": 2}),
    # EXAONE 4 (Q4_K q/k/o/gate/up and the embedding, Q6_K v, down and an untied head): OLMo 2's post-norms with
    # per-head q/k norms, rows not permuted; seeds 13 to 16 read 2.2e-4, 3.8e-5, 2.2e-4, 7.4e-5 of the logits' range
    # (no norm before a product, as OLMo 2's)
    "exaone4": (dict(add_head_count_kv=1, add_key_length=128, add_value_length=128, add_layer_norm_rms_eps=1e-5,
                     add_rope_freq_base=1_000_000.0),
                [("token_embd.weight", "vocab", 256, "Q4_K")] + _layer(
                    ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"), ("attn_v", 128, 256, "Q6_K"),
                    ("attn_output", 256, 256, "Q4_K"), _NORM("post_attention_norm"), _NORM("attn_q_norm", 128),
                    _NORM("attn_k_norm", 128), ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"),
                    ("ffn_down", 256, 256, "Q6_K"), _NORM("post_ffw_norm"))
                + [("output_norm.weight", 256, None, "norm"), ("output.weight", "vocab", 256, "Q6_K")], 14,
                (1e-4, 5e-4), "exaone4", {"Q4_K": 11, "Q6_K": 5}),
    # Qwen3 (Q4_K q/k/o/gate/up, Q6_K v, down and the tied embedding): per-head q/k norms, rows not permuted
    "qwen3": (dict(add_head_count_kv=1, add_key_length=128, add_value_length=128, add_layer_norm_rms_eps=1e-6,
                   add_rope_freq_base=1_000_000.0),
              [("token_embd.weight", "vocab", 256, "Q6_K")] + _layer(
                  _NORM("attn_norm"), _NORM("ffn_norm"), _NORM("attn_q_norm", 128), _NORM("attn_k_norm", 128),
                  ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"), ("attn_v", 128, 256, "Q6_K"),
                  ("attn_output", 256, 256, "Q4_K"), ("ffn_gate", 256, 256, "Q4_K"), ("ffn_up", 256, 256, "Q4_K"),
                  ("ffn_down", 256, 256, "Q6_K"))
              + [("output_norm.weight", 256, None, "norm")], 6, (1e-4, 5e-4),
              "qwen3", {"Q4_K": 10, "Q6_K": 5}),
    # Qwen2 / Qwen2.5 (Q4_K q/k/o/gate/up, Q6_K v, down and the tied embedding): F32 q/k/v biases beside the blocks
    "qwen2": (dict(add_head_count_kv=1, add_layer_norm_rms_eps=1e-6, add_rope_freq_base=1_000_000.0),
              [("token_embd.weight", "vocab", 256, "Q6_K")] + _layer(
                  _NORM("attn_norm"), _NORM("ffn_norm"), ("attn_q", 256, 256, "Q4_K"), ("attn_k", 128, 256, "Q4_K"),
                  ("attn_v", 128, 256, "Q6_K"), ("attn_output", 256, 256, "Q4_K"), ("ffn_gate", 256, 256, "Q4_K"),
                  ("ffn_up", 256, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
              + [(f"blk.{{i}}.attn_{p}.bias", n, None, "norm") for p, n in (("q", 256), ("k", 128), ("v", 128))]
              + [("output_norm.weight", 256, None, "norm")], 8, (1e-4, 5e-4),
              "qwen2", {"Q4_K": 10, "Q6_K": 5}),
    # Phi-3 (Q5_K qkv, Q4_K o, gate+up and embedding, Q6_K down and head): q/k/v rows in one attn_qkv, gate then
    # up rows in one ffn_up, an untied head (its embedding looked up on its own blocks)
    "phi3": (dict(add_head_count_kv=1, add_rope_dimension_count=128, add_layer_norm_rms_eps=1e-5,
                  add_rope_freq_base=10000.0),
             [("token_embd.weight", "vocab", 256, "Q4_K")] + _layer(
                 _NORM("attn_norm"), _NORM("ffn_norm"), ("attn_qkv", 512, 256, "Q5_K"),
                 ("attn_output", 256, 256, "Q4_K"), ("ffn_up", 512, 256, "Q4_K"), ("ffn_down", 256, 256, "Q6_K"))
             + [("output_norm.weight", 256, None, "norm"), ("output.weight", "vocab", 256, "Q6_K")], 7, (1e-4, 5e-4),
             "phi3", {"Q5_K": 2, "Q4_K": 5, "Q6_K": 3}),
}


GGUF_ARCH = {"olmo3": "olmo2"}  # an ARCHS case -> its file's general.architecture, where they differ


@pytest.mark.parametrize("arch", list(ARCHS))
def test_an_architectures_gguf_goes_to_the_fused_graph_on_its_own_blocks(tmp_path, arch):
    """A GGUF of each architecture with llama.cpp's tensor layout and a Q4_K_M file's types (Gemma 3 as the 270M
    file has them; Qwen3's per-head q/k norms; Qwen2's q/k/v biases; Phi-3's packed attn_qkv and gate+up ffn_up and
    its untied head): the fused graph, every weight on the file's own blocks (none dequantised: a packed tensor one
    MatMulNBits group, an untied embedding looked up on its own codes), each checked against transformers'
    dequantised weight at export; at the fidelity level the logits are transformers' on the same file, and greedy
    ids equal its generate."""
    import onnx
    import torch

    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf

    header, tensors, seed, scales, model_type, kept = ARCHS[arch]
    gguf_path = tmp_path / f"{arch}.gguf"
    write_tiny_arch_gguf(gguf_path, GGUF_ARCH.get(arch, arch), header, tensors, seed, scales)
    out = export_model(gguf_path, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    m = json.loads((out / "onnxlm.json").read_text())
    q = m["quantization"]
    assert m["model_type"] == model_type and m["kv_layout"] == "fused-gqa"
    assert q["tensors"] == kept and q["fp32_tensors"] == {} and q["max_weight_diff"] <= 1e-5
    graph = onnx.load(out / "model.onnx", load_external_data=False).graph
    assert [n.op_type for n in graph.node].count("MatMulNBits") == 2 * 4 + 1  # qkv, o, gate_up, down a layer; head
    assert all(n.name.endswith(".Correction") for n in graph.node if n.op_type == "MatMul")  # blocksum(x) @ R only
    lookup = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")  # tied: an alias; untied: its own
    assert lookup.input[0] == "embed_tokens.codes" and "embed_tokens.weight" not in {t.name for t in graph.initializer}
    ref = load_gguf(gguf_path).model
    ids = np.array([[1, 40, 41, 72, 100, 150, 200, 3, 9, 250]])
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids)).logits.numpy()
        hf = ref.generate(torch.tensor(ids), max_new_tokens=8, do_sample=False, eos_token_id=None).numpy()
    model = onnxlm.load(out)
    assert np.abs(model.logits(ids) - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=8, eos_token_id=[]).sequences, hf)


def test_a_gguf_without_some_weights_is_refused_by_name(tmp_path):
    """A Qwen2 file without its q/k/v biases: transformers' loader would start them at random (it only logs it), and
    the fp32 export would validate against that model. Refused, naming the missing weights, before anything is
    written."""
    from onnxlm.export import export_model

    header, tensors, seed, scales, *_ = ARCHS["qwen2"]
    path = tmp_path / "qwen2.gguf"
    write_tiny_arch_gguf(path, "qwen2", header, [t for t in tensors if not t[0].endswith(".bias")], seed, scales)
    with pytest.raises(ExportError, match=r"qwen2.gguf: the checkpoint has no values for 6 of the model's weights "
                                          r"\(model.layers.0.self_attn.k_proj.bias, .*\); transformers would start "
                                          "them at random"):
        export_model(path, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qwen2.gguf"]


OFF_BLOCKS = r"quantize='gguf' runs the fused graphs of the Llama, StableLM, Gemma and LFM2 families on a file's own " \
             r"blocks \(.*\); model_type '{}''s graph does not run on them \(a GGUF of it is dequantized to fp32\): " \
             r"export it without quantize, or with quantize='int8'"
#: why a tiny file of these cases does not export onto its blocks (``gguf_quant.off_blocks_reason``)
OFF_BLOCKS_WHY = {"gpt2": "its graph does not run on a file's blocks (those of the Llama, StableLM, Gemma and LFM2 families "
                          "do; model_type 'gpt2' is dequantized to fp32)",
                  "llama-head-12": "head size 12 is not a multiple of 8, which onnxruntime's GroupQueryAttention "
                                   "needs: its graph is the plain one, which does not run on a file's blocks"}


@pytest.mark.parametrize("case", ["gpt2", "llama-head-12"])
def test_a_file_whose_graph_is_not_on_blocks_is_refused_before_the_fp32_export(tmp_path, case, no_weight_loads):
    """A Q8_0 GPT-2 file (its fused graph is not one the rewrite knows), or a Llama one whose head size (12)
    GroupQueryAttention cannot take (its graph is the plain one), with quantize='gguf': refused from its header,
    saying why, before the fp32 export (nothing loads, nothing is written)."""
    import re

    from gguf_writers import write_tiny_gguf
    from onnxlm.export import export_model

    path = tmp_path / f"{case}.gguf"
    write_tiny_gguf(path, case, block_type="Q8_0")
    with pytest.raises(ExportError, match=re.escape(f"{case}.gguf: quantize='gguf' refused: {case.split('-')[0]}: "
                                                    f"{OFF_BLOCKS_WHY[case]}: export it without quantize, or with "
                                                    "quantize='int8'")):
        export_model(path, tmp_path / "q", quantize="gguf", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{case}.gguf"]


@pytest.mark.parametrize("case,layout", [("gpt2", "fused-gqa"), ("llama-head-12", None)])
def test_a_gguf_run_as_it_is_off_its_blocks_is_cached_in_fp32(tmp_path, case, layout, capsys):
    """``onnxlm generate file.gguf``'s cache on such a Q8_0 file: the fp32 artifact of its dequantized blocks,
    saying why, with transformers' logits on that file; quantize='gguf' from that fp32 artifact is refused: GPT-2's
    by model_type as from the file, the head-12 Llama's plain graph by its layout."""
    import torch
    from gguf_writers import IDS, write_tiny_gguf

    from onnxlm.export.gguf import load_gguf
    from onnxlm.export.gguf_artifact import ensure_gguf_artifact

    path = tmp_path / f"{case}.gguf"
    write_tiny_gguf(path, case, block_type="Q8_0")
    out = ensure_gguf_artifact(path, cache_dir=tmp_path / "cache")
    assert f"{case.split('-')[0]}: {OFF_BLOCKS_WHY[case]}: exporting it in fp32 (dequantized)" in capsys.readouterr().err
    model = onnxlm.load(out)
    assert "quantization" not in model.manifest and model.manifest.get("kv_layout") == layout
    with torch.no_grad():
        want = load_gguf(path).model(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(model.logits(np.array([IDS]))[0] - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
    refusal = OFF_BLOCKS.format(case) if case == "gpt2" else "this artifact's kv layout is 'plain'"
    with pytest.raises(ExportError, match=refusal):
        GQ.quantize_gguf_artifact(out, tmp_path / "q", gguf=path, progress=False)
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("case,block_type", [("stablelm-no-rope-dims", "Q8_0"), ("stablelm-bias-parallel", "Q4_1"),
                                             ("stablelm", "Q8_0"), ("stablelm-parallel-residual", "Q4_1")])
def test_a_stablelm_file_runs_on_its_blocks(tmp_path, monkeypatch, case, block_type):
    """StableLM on its own blocks (the fused graph: LayerNorms): a file rotating every head dim (llama.cpp's reading
    of a file without rope.dimension_count; Q8_0), one with q/k/v biases and parallel residuals too (Q4_1: its
    correction added into the parallel Sum), and files rotating 8 and 4 of 16 head dims (StableLM 3B's kind: a
    partial rotary GroupQueryAttention cannot take, turned before it; the first with q/k/v biases, the second with
    parallel residuals), export with quantize='gguf', every matrix kept as its blocks; the fp32 export (fused as
    well) gives transformers' logits on the dequantized file, and at the fidelity level the blocks give the fp32
    export's."""
    import gguf_writers

    from onnxlm.export import export_model

    monkeypatch.setitem(gguf_writers.CASES, "stablelm-bias-parallel",
                        ("stablelm", {"rope.dimension_count": None, "qkv_bias": True, "parallel": True}, None))
    path = tmp_path / "stablelm.gguf"
    gguf_writers.write_tiny_gguf(path, case, block_type=block_type)
    out = export_model(path, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    m = json.loads((out / "onnxlm.json").read_text())
    q = m["quantization"]
    assert (m["model_type"], m["kv_layout"]) == ("stablelm", "fused-gqa")
    assert q["tensors"] == {block_type: 7 * 2 + 2} and q["fp32_tensors"] == {}  # 7 a layer, the head, the embedding
    assert q["max_weight_diff"] <= 1e-5
    _blocks_equal_fp32_and_transformers(path, out, tmp_path)


@pytest.mark.parametrize("block_type", ["Q8_0", "Q4_1"])
def test_an_lfm2_file_runs_on_its_blocks(tmp_path, block_type):
    """LFM2 on its own blocks: its attention layers' q/k/v and output, its convolution layers' in_proj and out_proj
    (the 3-tap convolution stays F32, as in the file), every MLP and the tied embedding kept as the file's blocks; the
    fp32 export (fused) gives transformers' logits on the dequantized file, and at the fidelity level the blocks give
    the fp32 export's, in a prompt pass and in decode steps (the convolution states)."""
    import gguf_writers

    from onnxlm.export import export_model

    path = tmp_path / "lfm2.gguf"
    gguf_writers.write_tiny_gguf(path, "lfm2", block_type=block_type)
    out = export_model(path, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    m = json.loads((out / "onnxlm.json").read_text())
    q = m["quantization"]
    assert (m["model_type"], m["kv_layout"]) == ("lfm2", "fused-gqa")
    assert q["tensors"] == {block_type: 2 * 7 + 2 * 5 + 1} and q["fp32_tensors"] == {}  # attention, convolution
    assert q["max_weight_diff"] <= 1e-5                                                 # layers; the embedding
    # 8-bit codes take two int8 passes (a and x - a), whose rounding compounds through the convolution layers' B * x
    # product: 1.7e-4 of the logits' range measured on Q8_0 (4-bit codes at the fidelity level: fp32 activations)
    _blocks_equal_fp32_and_transformers(path, out, tmp_path, blocks_tol=3 if block_type == "Q8_0" else 1)


def _blocks_equal_fp32_and_transformers(path, out, tmp_path, blocks_tol: float = 1) -> None:
    """A GGUF file's fp32 export (fused) gives transformers' logits on the dequantized file (1e-4 of their range), and
    its on-blocks artifact ``out`` the fp32 export's (``blocks_tol`` times that), in a prompt pass and in decode steps
    (position_ids, convolution states)."""
    import gguf_writers
    import torch

    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf

    fp32 = onnxlm.load(export_model(path, tmp_path / "fp32", progress=False))
    assert fp32.manifest["kv_layout"] == "fused-gqa"
    ids = np.array([gguf_writers.IDS])
    with torch.no_grad():
        hf = load_gguf(path).model(torch.tensor(ids)).logits[0].numpy()
    want = fp32.logits(ids)[0]
    tol = 1e-4 * max(1.0, float(np.abs(want).max()))
    assert np.abs(want - hf).max() <= tol
    blocks = onnxlm.load(out)
    assert np.abs(blocks.logits(ids)[0] - want).max() <= tol * blocks_tol
    states = [m.start(ids, np.ones_like(ids))[0] for m in (fp32, blocks)]
    for token in (5, 77, 120):
        a, b = (s.advance(np.array([token])) for s in states)
        assert np.abs(a - b).max() <= tol * blocks_tol


@pytest.mark.parametrize("embedding", ["Q4_0", "Q4_1", "Q4_K", "IQ4_XS"])
def test_a_4bit_tied_embedding_is_looked_up_exactly(tmp_path, embedding):
    """A tied embedding of 4-bit blocks (a zero point; Q4_1 and Q4_K also a float minimum, the correction R; IQ4_XS
    4-bit indices into its table, as 8-bit codes): the head and the lookup both read the file's blocks, and the
    logits are the fp32 model's (fidelity level)."""
    import torch

    from onnxlm.export import export_model
    from onnxlm.export.gguf import load_gguf

    gguf_path = tmp_path / "e.gguf"
    write_tiny_gguf(gguf_path, hidden=256, ffn=256, embedding=embedding)
    out = export_model(gguf_path, tmp_path / "q", quantize="gguf", accuracy_level=1, force_quality=True,
                       quality_text=SHORT_GATE_TEXT, progress=False)
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["tensors"][embedding] >= 1 and q["fp32_tensors"] == {"F16": 1}
    ids = np.array([[1, 40, 41, 72, 100, 150, 200, 3, 9, 250]])
    with torch.no_grad():
        want = load_gguf(gguf_path).model(input_ids=torch.tensor(ids)).logits.numpy()
    got = onnxlm.load(out).logits(ids)
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_a_group_with_an_f16_tensor_runs_its_blocks_in_fp32_and_says_so(tmp_path):
    """q/k on Q4_1 blocks beside an F16 v, gate on Q4_0 beside an F16 up (llama-quantize --tensor-type
    attn_v=f16): the fused graph multiplies each group as one, so its block tensors run in fp32 with it. They are
    counted apart (fp32_with_group), warned about as such, and never called types without a block form; the header
    summary (onnxlm info) says the same before any export."""
    from onnxlm.export import export_model
    from onnxlm.export.gguf_summary import summarize_gguf

    path = tmp_path / "mixed.gguf"
    write_tiny_gguf(path, types=[{"attn_q": "Q4_1", "attn_k": "Q4_1", "attn_v": "F16", "attn_output": "Q4_1",
                                  "ffn_gate": "Q4_0", "ffn_up": "F16", "ffn_down": "Q4_0"}] * 2)
    assert summarize_gguf(path)["fp32_with_group"] == {"Q4_1": 4, "Q4_0": 2}
    with pytest.warns(UserWarning, match=r"2 Q4_0, 4 Q4_1 tensor\(s\) run in fp32 \(exact values\): their q/k/v or "
                                         r"gate/up product also holds a tensor without blocks \(F16\)") as got:
        out = export_model(path, tmp_path / "q", quantize="gguf", force_quality=True, quality_text=SHORT_GATE_TEXT,
                           progress=False)
    assert not [w for w in got if "no MatMulNBits form" in str(w.message)]
    q = json.loads((out / "onnxlm.json").read_text())["quantization"]
    assert q["tensors"] == {"Q4_1": 2, "Q4_0": 2, "Q8_0": 1} and q["fp32_tensors"] == {"F16": 4}  # Q8_0: the embedding
    assert q["fp32_with_group"] == {"Q4_1": 4, "Q4_0": 2} and q["max_weight_diff"] <= 1e-6

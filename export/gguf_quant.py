"""GGUF-native quantization: the fused fp32 graph's weight MatMuls run on the GGUF file's own blocks.

``quantize_gguf_artifact(fp32_dir, out_dir, gguf=...)`` takes the fused fp32 artifact exported from a GGUF file
(``export/fused_llama.py`` or ``fused_gemma.py``, which name their weights alike; its weights are transformers'
dequantisation of that file) and rewrites each weight
MatMul as onnxruntime's ``MatMulNBits`` whose codes and scales are the GGUF blocks themselves (no re-quantisation):

* Every common block type (``export/gguf_blocks.py``): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
  IQ4_NL, IQ4_XS and the codebook types (IQ1-IQ3, TQ1_0, TQ2_0, MXFP4, NVFP4: ``export/gguf_codebooks.py``), its
  codes and sub-block scales as they are: codes of 4 bits or fewer as bits=4, of 5 to 8 bits as bits=8 (the IQ4 and
  codebook types' integer values as 8-bit codes, the ternary ones as 4-bit); a fixed
  code offset (``w = d*(q - c)``) as the op's default zero point, a float one (``w = d*q + m``: Q4_1, Q5_1, Q2_K,
  Q4_K, Q5_K) as uint8 zero points ``z = clip(round(-m/d))`` plus the exact correction ``blocksum(x) @ R``,
  ``R = m + z*d`` ([K/block, N]; ``blocksum`` sums x over each block along K); blocks of 32, or 16 for Q2_K, Q3_K and
  Q6_K (scales per 16 weights). A group (q/k/v, gate/up) is one ``MatMulNBits`` (then a Split) at its smallest
  block size, in 8 bits where 4- and 8-bit tensors meet (a Q4_K_M file's Q6_K attn_v). One block-sum per input: a
  ``ReduceSum`` over x reshaped to [b, s, K/block, block], a MatMul with R, an Add (into the residual stream: one
  ``Sum``). Measured on SmolLM2 (``python -m benchmarks.graph_ab``, A/B runs under load): block sums as a MatMul
  with a constant [K, K/32] 0/1 matrix were ~4-8 % slower per decode step (their 0/1 matrices are re-read from
  memory: the K=1536 one is 295 KB); a 2-D residual stream with each correction + Add as one ``Gemm(C=y)`` and the
  residual Add + RMSNorm as ``SkipSimplifiedLayerNormalization`` (776 nodes, 60 fewer Add/Sum/norm kernels, 2
  Reshapes per layer more) was no faster (0.97-1.02x): not kept. R stays float32 (``m + z*d`` is exact in
  float32, not in float16). Float zero points in ``MatMulNBits`` (which would need no correction) take onnxruntime
  1.32's dequantise-then-multiply path: ~200x slower than uint8 ones at bits=4, at level 1 and level 4 alike.
* 8-bit codes always run at accuracy level 4 (onnxruntime's 8-bit path at level 1 is ~90x slower); where a product
  should see ~fp32 activations (the attention projections; every product at the fidelity level 1) they run in two
  int8 passes (below). A tied embedding is read by ``GatherBlockQuantized`` bits=8 over aliases of the head's code
  bytes, scales and zero points (stored once, mapped twice: ``mapped_weights.py``; a 4-bit embedding's codes one
  byte each, with its zero points; a float minimum's R gathered by row beside it); an untied model's embedding the
  same way over initializers of its own (8-bit codes: ~1.2 bytes a weight instead of fp32's 4). The output head runs
  in two int8 passes up to ``HEAD_TWO_PASS_BYTES`` (64 MiB) of codes, in one beyond, cut by rows into parts of <= 48
  MiB of codes (``nbits.HEAD_PART_BYTES``: the load's peak). The graph is saved with its weights in
  ``model.onnx_data`` (``mapped_weights.save_mapped``).
* F32 / F16 / BF16 weights keep their (exact) fp32 values; any other type (none that gguf-py 0.19 dequantises):
  that MatMul keeps the fp32 (dequantised) weight of the fp32 graph, named in a warning; the manifest counts both
  under ``fp32_tensors``. The fused graph multiplies q/k/v (and gate/up) as one product, so a block tensor beside
  such a tensor in its group runs in fp32 with it (exact values): counted apart, under ``fp32_with_group``, and said
  in a warning of its own (a file that keeps, say, ``attn_v`` in F16 beside Q4_K ``attn_q``/``attn_k``).

Phi-3 files store q/k/v as one ``attn_qkv`` tensor and gate + up as one ``ffn_up`` (gate rows first), as transformers'
``qkv_proj`` / ``gate_up_proj`` do: each is its group's blocks as it is (``PACKED_TENSORS``).

GGUF rows are the output dimension N; llama.cpp permutes the rows of a Llama's q/k weights for its rotary layout
and transformers undoes it (``LlamaTensorProcessor._reverse_permute_weights``): a row permutation moves whole rows
of blocks, so the packed rows are permuted the same way. Every rewritten weight is dequantised back here and
compared with the fp32 graph's weight (max |diff| recorded as ``max_weight_diff``; above ``WEIGHT_TOLERANCE`` the
export fails: a layout bug, never a user error).

Two int8 passes (``split_int8``; the output head always, the MLP per ``accuracy_level``): ``a @ W + (x - a) @ W``
where ``a`` is x rounded per block exactly as level 4 rounds it, so the first pass is exact and the second carries
the remainder (its own int8 error ~254x smaller than x's): the product as with fp32 activations. Both passes are
one ``MatMulNBits`` over the rows of ``a`` and ``x - a`` stacked ([2T, K] / [2b, s, K]; level 4 quantizes each
row on its own, so the result is the two passes'), its two halves added (Split + Add; a ``ReduceSum`` over the
stacked axis is ~30x slower): the weights are read once, and on SmolLM2 an M=2 level-4 product costs ~1.2x an
M=1 one, much less than level 1 (~3x). For the head (28 MB of Q8_0 codes) this replaced two ``MatMulNBits`` calls
(~4-10 % of a decode step in A/B runs).

``accuracy_level``: 4 (default) = the MLP (gate/up, down) at int8 activations in one pass; 1 (fidelity) = the MLP at
fp32 activations (level 1). The attention projections (q/k/v, o) always run at level 1 (fp32 activations; a quarter
of the weights; at level 4 they cost ~1 % agreement, SmolLM2: 0.962 -> 0.974 on 3,072 README tokens; in two passes
they were no faster than at level 1). The MLP in two int8 passes (``split_int8``: gate/up at level 4, and down at
level 1) was measured and left off: on SmolLM2 (the gate's 652 tokens; and 5,458 tokens: the gate's text, README,
design.md, with the mean KL divergence from fp32) it brought the default from 0.980 / +0.11 % (5,458 tokens 0.9745 /
+0.29 % / KL 0.00145) to 0.980 / +0.07 % (0.9853 / +0.11 % / KL 0.00055) and the decode step to 0.89-1.06x (A/B runs
under load), but the stacked rows double the MLP's rows in a prompt pass and a batch: in the side-by-side run
(docs/benchmarks.md, 2026-11-26) the default's time to first token after 512 tokens rose from 742 to 1009 ms and
its batch-8 step from 26.8 to 36.3 ms; the fidelity variant's from 776 to 1381 ms and 34.4 to 38.0 ms.

Level 4 makes the agreement chaotic at about +-0.5 %: a mere change of summation order (``Sum`` vs two ``Add``)
moved SmolLM2's all-level-4 figure on the gate's text from 0.9785 to 0.968, and the ``ReduceSum`` block sums
(with gate/up still in one pass) moved the default's from 0.980 to 0.977 while the 5,458-token KL stayed put
(0.00145 -> 0.00147): judge a change by the KL on more text, not by the gate's figure alone. 8-bit layers of
other files (a Q8_0 model) run at level 4, single pass.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from onnxlm.runtime.errors import ExportError, ModelFileError
from onnxlm.runtime.gguf_magic import is_gguf_file
from .gguf_architectures import QK_PERMUTED
from .gguf_blocks import CODE_BITS, NATIVE_TYPES, blocks_from_gguf, stack  # noqa: F401  (blocks_from_gguf: public here too)
from .mapped_weights import save_mapped
from .quantizer_input import array_of, load_unaliased, read_external
from .nbits import BLOCK, HEAD_PART_BYTES, Blocks, Rewriter, dequantize, take_rows, to_8bit  # noqa: F401  (Blocks, dequantize: public here too)
from .provenance import bytes_difference, file_record, source_record
from .atomic_dir import refuse_taken
from .quality import check_quality_text
from .quantize import read_fp32_manifest, write_quantized_artifact

LOSSLESS_FP32 = ("F32", "F16", "BF16")  # types whose fp32 copy is the same numbers (no blocks to keep)


def has_blocks(type_names) -> bool:
    """True when a GGUF type name of ``type_names`` is a quantized (block) type: the file has blocks to keep; else
    its export is the fp32 artifact."""
    return any(t not in LOSSLESS_FP32 + ("F64",) for t in type_names)


#: a GGUF architecture -> the model_type transformers builds for it, where the two names differ
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text"}


def model_type_of(architecture: str | None) -> str | None:
    """A GGUF ``general.architecture`` -> the model_type transformers builds for it."""
    return GGUF_MODEL_TYPES.get(architecture, architecture)


def on_blocks_types() -> tuple[str, ...]:
    """The model_types whose fused graph this rewrite knows: the Llama family's (StableLM's among them), Gemma's and
    LFM2's (``fused_llama``, ``fused_gemma``, ``fused_lfm2``). GPT-2's fused graph (``fused_gpt2``) names its weights otherwise and adds a
    bias to every product: its GGUF files export in fp32."""
    from . import fused_gemma, fused_lfm2, fused_llama

    return fused_llama.FUSED_TYPES + fused_gemma.FUSED_TYPES + fused_lfm2.FUSED_TYPES


def on_blocks(architecture: str | None) -> bool:
    """True when a GGUF file of ``architecture`` exports to a graph this rewrite knows (``on_blocks_types``); the
    file's own settings may still keep it off them (``off_blocks_reason``)."""
    return model_type_of(architecture) in on_blocks_types()


def off_blocks_reason(reader) -> str | None:
    """A GGUF file's reader -> why its export does not run on the file's blocks (a phrase), or None when it does:
    an architecture whose graph this rewrite does not know, or what the fused graph's builder refuses that a header
    shows (a head size onnxruntime's GroupQueryAttention cannot take: ``fused.head_multiple``, 16 for Gemma, LFM2 and OLMo 3;
    an odd rotary, ``fused_llama.partial_rotary_refusal``), whose graph is the plain one."""
    from .fused import head_multiple
    from .fused_llama import partial_rotary_refusal
    from .gguf_config import PARTIAL_ROTARY_ARCHS, _head_size, file_model_type, partial_rotary_factor
    from .gguf_reader import arch_fields, field_value

    arch = field_value(reader, "general.architecture")
    if not on_blocks(arch):
        return (f"its graph does not run on a file's blocks (those of the {FAMILIES_ON_BLOCKS} families do; "
                f"model_type {model_type_of(arch)!r} is dequantized to fp32)")
    meta = arch_fields(reader, arch)
    try:
        head = _head_size(meta, arch)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # a header without its shape: the loader's to refuse
        return None
    why = None
    multiple = head_multiple(file_model_type({"general.architecture": arch, **meta}) or model_type_of(arch))
    if head % multiple:  # the builder's fused_graph.check_head_dim
        why = f"head size {head} is not a multiple of {multiple}, which onnxruntime's GroupQueryAttention needs"
    elif arch in PARTIAL_ROTARY_ARCHS:  # the factor config_overrides gives the config, read back as the builder does
        why = partial_rotary_refusal(head, int(head * partial_rotary_factor(meta, arch)))
    return f"{why}: its graph is the plain one, which does not run on a file's blocks" if why else None


FAMILIES_ON_BLOCKS = "Llama, StableLM, Gemma and LFM2"


def refuse_off_blocks(model_type: str, where) -> None:
    """ExportError naming ``where`` (the file or artifact) when ``model_type``'s graph is not one this rewrite
    knows (``on_blocks_types``)."""
    if model_type not in on_blocks_types():
        raise ExportError(f"{where}: quantize='gguf' runs the fused graphs of the {FAMILIES_ON_BLOCKS} families on a "
                          f"file's own blocks ({', '.join(on_blocks_types())}); model_type {model_type!r}'s graph "
                          "does not run on them (a GGUF of it is dequantized to fp32): export it without quantize, "
                          "or with quantize='int8'")


def refuse_file_off_blocks(gguf: Path, where) -> None:
    """ExportError naming ``where`` when a GGUF file of an architecture onnxlm exports does not export onto its
    blocks (``off_blocks_reason``; another architecture is the loader's to refuse, naming those it exports), or not at
    all (``refuse_file``)."""
    from .gguf_reader import field_value, gguf_reader

    if refuse_file(gguf) is None:
        return
    reader = gguf_reader(gguf)
    why = off_blocks_reason(reader)
    if why is not None:
        arch = field_value(reader, "general.architecture")
        raise ExportError(f"{where}: quantize='gguf' refused: {arch}: {why}: export it without quantize, or with "
                          "quantize='int8'")


def refuse_file(gguf: Path) -> str | None:
    """ExportError naming the file when its header shows onnxlm does not export it at all (StableLM 2 12B's q/k
    norms; a fused-only model of a head its graph cannot take), said as the loader says it -> its architecture when
    onnxlm exports it, None for another (the loader's to refuse, naming those it exports)."""
    from .gguf import TESTED_GGUF_ARCHITECTURES
    from .gguf_config import config_overrides, file_model_type, refuse_tensors
    from .gguf_reader import arch_fields, field_value, gguf_reader
    from .onnx_export import FUSED_ONLY_TYPES

    reader = gguf_reader(gguf)
    arch = field_value(reader, "general.architecture")
    if arch not in TESTED_GGUF_ARCHITECTURES:
        return None
    try:
        refuse_tensors(arch, [t.name for t in reader.tensors])
        meta = {"general.architecture": arch, **arch_fields(reader, arch)}
        if (file_model_type(meta) or arch) in FUSED_ONLY_TYPES:  # config_overrides refuses a head its only graph
            config_overrides(meta)                                # cannot take (OLMo 3: a file of architecture olmo2)
    except ExportError as e:
        raise ExportError(f"{Path(gguf).name}: {e}") from e
    return arch


def file_architecture(gguf: Path) -> str | None:
    """A GGUF file's ``general.architecture`` (its header says it)."""
    from .gguf_reader import field_value, gguf_reader

    return field_value(gguf_reader(gguf), "general.architecture")


def file_has_blocks(gguf: Path) -> bool:
    """True when some tensor of the GGUF file is of a quantized (block) type (its header says it)."""
    from .gguf_reader import gguf_reader

    return has_blocks(t.tensor_type.name for t in gguf_reader(gguf).tensors)


ACCURACY_LEVELS = (1, 4)  # 4: the MLP at int8 activations (default); 1: fp32 activations (fidelity)
WEIGHT_TOLERANCE = 1e-5  # max |dequantised MatMulNBits weight - fp32 graph weight|: float rounding only
CHECK_ROWS = 4096  # rows of a weight dequantised at once by the check (Gemma 3's head: 640 x 4096 = 10 MB a share)
# MatMuls that always get fp32 activations (level 1): q/k/v and o, a quarter of the weights, cost ~5 % of a decode
# step and add ~1 % top-1 agreement on SmolLM2 (q/k feed the softmax); measured in docs/benchmarks.md
FP32_ACTIVATIONS = ("qkv", "o_proj", "in_proj", "out_proj")  # LFM2's convolution projections as attention's
# an output head with at most this many code bytes runs in two int8 passes (fp32-like logits); a bigger one in one
# (int8 activations, as llama.cpp's Q8_0 dot products): the second pass's products grow with the head, so Gemma 3's
# 168 MB head made the decode step ~7 % slower for 0.4 % agreement (98.3 % -> 97.9 %, KL 0.0019 -> 0.0023 on the
# gate's 2,679 tokens; llama.cpp 95.3 %), while SmolLM2's 28 MB head costs nothing measurable (docs/benchmarks.md)
HEAD_TWO_PASS_BYTES = 64 << 20
#: a fused graph's product groups -> the GGUF tensor kinds that hold their rows, in order
LAYER_TENSORS = {"qkv": ("attn_q", "attn_k", "attn_v"), "o_proj": ("attn_output",), "gate_up": ("ffn_gate", "ffn_up"),
                 "down_proj": ("ffn_down",), "in_proj": ("shortconv.in_proj",), "out_proj": ("shortconv.out_proj",)}
#: where llama.cpp stores a group as one tensor, by architecture: Phi-3's attn_qkv (q, k, v rows) and ffn_up (gate
#: rows, then up), in transformers' order (``qkv_proj``, ``gate_up_proj``)
PACKED_TENSORS = {"phi3": {"qkv": ("attn_qkv",), "gate_up": ("ffn_up",)}}


def layer_tensors(architecture: str | None, part: str) -> tuple[str, ...]:
    """A product group (a key of ``LAYER_TENSORS``) -> the GGUF tensor kinds that hold its rows in a file of
    ``architecture``, in order."""
    return PACKED_TENSORS.get(architecture, {}).get(part, LAYER_TENSORS[part])


def llama_row_order(n_rows: int, n_head: int) -> np.ndarray:
    """The rows of a GGUF q/k weight in transformers' order: ``LlamaTensorProcessor._reverse_permute_weights``
    applied to row indices ([n_rows] int64)."""
    dim = n_rows // n_head // 2
    return np.arange(n_rows).reshape(n_head, dim, 2).swapaxes(2, 1).reshape(n_rows)


def _file_type(reader) -> str | None:
    """A GGUF's ``general.file_type`` as llama.cpp names the mix ("q4_k_m", "q8_0"), or None when absent/unknown."""
    import gguf

    field = reader.fields.get("general.file_type")
    if field is None:
        return None
    value = int(field.parts[field.data[0]][0]) & ~int(gguf.LlamaFileType.GUESSED)
    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return None
    return name.removeprefix("MOSTLY_").removeprefix("ALL_").lower()


class GGUFTensors:
    """The weight tensors of a GGUF file by name, as Blocks (native types) or None (anything else)."""

    def __init__(self, path: Path, num_heads: int, num_kv_heads: int):
        from .gguf_reader import gguf_reader

        try:
            reader = gguf_reader(path)
        except ModelFileError:  # gguf_reader's own: it names the file
            raise
        except (ValueError, OSError) as e:
            raise ExportError(f"{path}: not a readable GGUF file: {e}") from e
        self.path = path
        self.tensors = {t.name: t for t in reader.tensors}
        arch = reader.fields.get("general.architecture")
        self.architecture = bytes(arch.parts[arch.data[0]]).decode() if arch is not None else None
        self.file_type = _file_type(reader)
        self.heads = {"attn_q": num_heads, "attn_k": num_kv_heads}

    def type_of(self, name: str) -> str | None:
        t = self.tensors.get(name)
        return None if t is None else t.tensor_type.name

    def blocks(self, name: str) -> Blocks | None:
        """``name`` -> Blocks in transformers' row order, or None when its type is not native."""
        t = self.tensors.get(name)
        if t is None:
            raise ExportError(f"{self.path}: has no tensor {name!r}")
        qtype = t.tensor_type.name
        if qtype not in NATIVE_TYPES:
            return None
        k, n = (int(x) for x in t.shape[:2])  # GGUF shapes are (ne0 = K, ne1 = N)
        b = blocks_from_gguf(np.asarray(t.data).reshape(n, -1), qtype, n, k)
        kind = name.split(".")[-2]
        if self.architecture in QK_PERMUTED and kind in self.heads:  # llama.cpp's converter interleaved these rows
            b = take_rows(b, llama_row_order(n, self.heads[kind]))
        return b


class _Rewriter(Rewriter):
    """``Rewriter`` with GGUF's accuracy levels, its two-pass parts and the weight check."""

    def level(self, name: str, bits: int) -> int:
        """The accuracy level of the MatMulNBits ``name``: 8-bit 4 (onnxruntime's 8-bit path at level 1 is ~90x
        slower); the 4-bit attention projections 1 (fp32 activations); the MLP ``accuracy_level``."""
        if bits == 8:
            return 4
        return 1 if name.split(".")[-1] in FP32_ACTIVATIONS else self.accuracy_level

    def matmul(self, x: str, b: Blocks, outputs: list[str], splits: list[int], name: str,
               head: bool = False) -> list:
        """x [b, s, K] (``head``: the output head's [T, K]) -> ``Rewriter.matmul``; the head in two int8 passes
        up to ``HEAD_TWO_PASS_BYTES`` of codes, and every product whose codes are 8-bit where it should see ~fp32
        activations (the attention projections; the MLP too at the fidelity level 1): onnxruntime's 8-bit path at
        level 1 is ~90x slower, two int8 passes give the same (see the module docstring). The 4-bit MLP at level 4
        in one pass."""
        fp32_like = name.split(".")[-1] in FP32_ACTIVATIONS or self.accuracy_level == 1
        two = b.codes.nbytes <= HEAD_TWO_PASS_BYTES if head else b.bits == 8 and fp32_like
        return super().matmul(x, b, outputs, splits, name, two_pass=two, lead=1 if head else 2,
                              part_bytes=HEAD_PART_BYTES if head else None)

    def check(self, b: Blocks, fp32_name: str, transposed: bool, what: str) -> None:
        """The dequantised Blocks must be the fp32 graph's weight (``transposed``: stored [K, N]); compared
        ``CHECK_ROWS`` rows at a time (Gemma 3's head whole: ~3 GB of float32 temporaries, most of its check's time
        spent faulting in fresh memory)."""
        want = self.to_array(self.fp32[fp32_name])
        want = want.T if transposed else want
        shape = (b.codes.shape[0], b.scales.shape[1] * b.block_size)
        if shape != want.shape:
            raise ExportError(f"{what}: GGUF weight {shape} vs fp32 graph weight {want.shape}")
        diff = max(float(np.abs(dequantize(take_rows(b, slice(lo, lo + CHECK_ROWS))) - want[lo:lo + CHECK_ROWS]).max())
                   for lo in range(0, shape[0], CHECK_ROWS))
        if diff > WEIGHT_TOLERANCE:
            raise ExportError(f"{what}: the GGUF blocks dequantise to a weight {diff:.3g} away from transformers' "
                              f"(tolerance {WEIGHT_TOLERANCE}): unsupported layout")
        self.max_diff = max(self.max_diff, diff)


def _residual_sums(nodes: list) -> list:
    """``Add(x, Add(y, corr))`` (a corrected o_proj / down_proj into the residual stream) -> ``Sum(x, y, corr)``:
    one node less per corrected projection."""
    from onnx import helper

    producer = {n.output[0]: n for n in nodes if n.op_type == "Add" and n.name.endswith(".AddCorrection")}
    uses = Counter(i for n in nodes for i in n.input)
    fused, out = set(), []
    for n in nodes:
        inner = next((producer[i] for i in n.input if i in producer and uses[i] == 1), None)
        if n.op_type == "Add" and inner is not None and not n.name.endswith(".AddCorrection"):
            other = [i for i in n.input if i != inner.output[0]]
            out.append(helper.make_node("Sum", [*other, *inner.input], list(n.output), name=n.name + "_Sum"))
            fused.add(id(inner))
        else:
            out.append(n)
    return [n for n in out if id(n) not in fused]


def _group_blocks(tensors: GGUFTensors, names: list[str]) -> Blocks | None:
    """The GGUF tensors ``names`` as one stacked Blocks (``gguf_blocks.stack``), or None when one is not native."""
    parts = [tensors.blocks(nm) for nm in names]
    if any(p is None for p in parts):
        return None
    return stack(parts)


def rewrite_graph(src: Path, dst: Path, tensors: GGUFTensors, accuracy_level: int) -> dict:
    """The fused fp32 graph ``src`` -> ``dst`` with GGUF-native MatMulNBits / GatherBlockQuantized; returns
    {"tensors": {type: n}, "fp32_tensors": {type: n}, "max_weight_diff": x}."""
    model = load_unaliased(src, read=False)  # a tied lookup reads the head's weight again; weights not read yet
    g = model.graph
    rw = _Rewriter(g, accuracy_level, to_array=lambda t: array_of(t, src.parent))  # replaced weights: file views
    inits = set(rw.fp32)
    by_weight = {n.input[1]: n for n in g.node if n.op_type in ("MatMul", "Gemm", "Gather") and len(n.input) > 1
                 and n.input[1] in inits}
    gather = next((n for n in g.node if n.op_type == "Gather" and n.input[0] == "embed_tokens.weight"), None)
    if gather is None or not any(i.startswith("l0.") for i in inits):
        raise ExportError(f"{src}: not a fused graph (export with kv_layout='fused', the default for Llama)")
    replace: dict[int, list] = {}  # id(node) -> the nodes that replace it ([] drops it)

    grouped: Counter = Counter()  # block tensors in fp32 because another tensor of their product has no blocks

    def keep(names: list[str]) -> None:
        for nm in names:
            native = len(names) > 1 and tensors.blocks(nm) is not None
            (grouped if native else rw.kept)[tensors.type_of(nm)] += 1

    layers = sorted({int(i.split(".")[0][1:]) for i in inits if i.startswith("l") and i.split(".")[0][1:].isdigit()})
    for i in layers:
        parts = [p for p in ("qkv", "o_proj", "in_proj", "out_proj", "down_proj") if f"l{i}.{p}.weight" in by_weight]
        if parts not in (["qkv", "o_proj", "down_proj"], ["in_proj", "out_proj", "down_proj"]):  # attention, or LFM2's
            raise ExportError(f"{src}: layer {i} has the products {parts}: not a fused graph this rewrite knows")
        for part in parts:
            node = by_weight[f"l{i}.{part}.weight"]
            names = [f"blk.{i}.{t}.weight" for t in layer_tensors(tensors.architecture, part)]
            b = _group_blocks(tensors, names)
            if b is None:
                keep(names)
                continue
            rw.check(b, node.input[1], True, f"layer {i} {part}")
            replace[id(node)] = rw.matmul(node.input[0], b, [node.output[0]], [b.scales.shape[0]], f"l{i}.{part}")
        gate, up = by_weight[f"l{i}.gate_proj.weight"], by_weight[f"l{i}.up_proj.weight"]
        names = [f"blk.{i}.{t}.weight" for t in layer_tensors(tensors.architecture, "gate_up")]
        b = _group_blocks(tensors, names) if gate.input[0] == up.input[0] else None
        if b is None:
            keep(names)
            continue
        wg, wu = rw.to_array(rw.fp32[gate.input[1]]), rw.to_array(rw.fp32[up.input[1]])
        rw.fp32["gate_up"] = rw.from_array(np.concatenate([wg, wu], axis=1), "gate_up")
        rw.check(b, "gate_up", True, f"layer {i} gate_proj/up_proj")
        replace[id(gate)] = rw.matmul(gate.input[0], b, [gate.output[0], up.output[0]],
                                      [wg.shape[1], wu.shape[1]], f"l{i}.gate_up_proj")
        replace[id(up)] = []

    # the tied embedding / output head
    head = next(n for n in g.node if n.op_type == "Gemm")
    tied = head.input[1] == "embed_tokens.weight"
    emb_blocks = tensors.blocks("token_embd.weight")
    if emb_blocks is None:
        keep(["token_embd.weight"])
    else:
        emb_blocks = to_8bit(emb_blocks)  # GatherBlockQuantized reads 8-bit codes (a tied head's own)
        rw.check(emb_blocks, "embed_tokens.weight", False, "token embedding" + (" / output head" if tied else ""))
        if tied:
            replace[id(head)] = rw.matmul(head.input[0], emb_blocks, [head.output[0]], [emb_blocks.scales.shape[0]],
                                          "lm_head", head=True)
            replace[id(gather)] = rw.tied_embedding(gather, "lm_head", emb_blocks)
        else:  # an untied embedding: its own blocks, looked up as a tied one is
            replace[id(gather)] = rw.embedding(gather, emb_blocks)
    if not tied:  # an untied head: its own tensor, natively where it can be
        out_b = tensors.blocks("output.weight") if "output.weight" in tensors.tensors else None
        if out_b is not None:
            rw.check(out_b, head.input[1], False, "output head")
            replace[id(head)] = rw.matmul(head.input[0], out_b, [head.output[0]], [out_b.scales.shape[0]],
                                          "lm_head", head=True)
        else:
            keep(["output.weight"] if "output.weight" in tensors.tensors else [])

    rw.apply(replace, post=_residual_sums)
    read_external(model, src.parent)  # the fp32 initializers the graph keeps (norms, rotary tables, ...)
    save_mapped(model, dst, rw.aliases)  # weights in dst's _data file, memory-mapped by onnxruntime
    return {"tensors": dict(rw.native), "fp32_tensors": {str(k): v for k, v in rw.kept.items()},
            "fp32_with_group": {str(k): v for k, v in grouped.items()},
            "max_weight_diff": rw.max_diff, "two_pass": sorted(rw.two_pass)}


def check_gguf_args(accuracy_level: int, block_size: int) -> None:
    if accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level: got {accuracy_level!r}; allowed with quantize='gguf': {ACCURACY_LEVELS} "
                          "(4 = the MLP's down projection at int8 activations, 1 = every product at ~fp32 "
                          "activations: the fidelity setting)")
    if block_size != BLOCK:
        raise ExportError(f"block_size: got {block_size!r}; quantize='gguf' keeps the GGUF's own blocks of "
                          f"{BLOCK} weights, so block_size must be {BLOCK}")


def gguf_source(manifest: dict, gguf=None, src: Path | None = None) -> tuple[Path, dict]:
    """The GGUF file the fp32 artifact (its ``manifest``, in directory ``src``) was exported from: ``gguf`` if given,
    else the file of the recorded name found in the current directory, beside ``src`` or as the installed SmolLM2
    package's file (an older manifest's path string is tried as it is) -> (its path, its ``file_record``). Its sha256
    must equal the recorded one; ExportError otherwise, or when no such file is found."""
    record = manifest.get("source")
    if gguf is not None:
        given = Path(gguf).expanduser()
        if not given.is_file():
            raise ExportError(f"gguf: {gguf}: no such file")
        if not is_gguf_file(given):
            raise ExportError(f"gguf: {gguf} is not a GGUF file (it does not start with the GGUF magic)")
        candidates = [given]
    elif isinstance(record, dict) and record.get("name"):
        candidates = [Path.cwd() / record["name"]] + ([src.parent / record["name"]] if src is not None else [])
        try:
            from .gguf import find_smollm2_gguf

            candidates.append(find_smollm2_gguf())
        except ModelFileError:
            pass
    else:  # manifests before provenance records: an absolute path string
        candidates = [Path(str(record or "")).expanduser()]
    name = record.get("name") if isinstance(record, dict) else None
    found = [p for p in candidates if (gguf or not name or p.name == name) and is_gguf_file(p)]
    from_dir = isinstance(record, dict) and "files" in record  # a checkpoint or recipe directory
    if gguf is None and (from_dir or isinstance(record, str) and not record.lower().endswith(".gguf")):  # a hub name
        what = record.get("name") if from_dir else record
        raise ExportError(f"quantize='gguf' keeps a GGUF file's own blocks; {src or 'this artifact'} was not exported "
                          f"from a GGUF file (its source: {what!r}); use quantize='int8' or 'int4', or name the GGUF "
                          "of the same weights with gguf=PATH (--gguf FILE)")
    if not found:
        raise ExportError(f"quantize='gguf' needs the GGUF file the fp32 artifact was exported from "
                          f"({name or record or 'none recorded'!r}); pass gguf=PATH (--gguf FILE), or export the .gguf "
                          "source directly to do both steps at once")
    path = Path(os.path.abspath(found[0]))  # links kept: a hub cache's split files link to blobs of other names
    held = file_record(path)
    why = bytes_difference(held, record) if isinstance(record, dict) and record.get("sha256") else None
    if why:
        raise ExportError(f"gguf: {path.name} is not the file the fp32 artifact was exported from ({why}); pass "
                          "the GGUF it was exported from with gguf=PATH (--gguf FILE), or export the .gguf again")
    return path, held


def quantize_gguf_artifact(src, out_dir, *, gguf=None, accuracy_level: int = 4, force_quality: bool = False,
                           quality_text: str | None = None, force: bool = False, progress: bool = True) -> Path:
    """The fused fp32 artifact ``src`` exported from the GGUF file ``gguf`` (default: the manifest's ``source``)
    -> the GGUF-native artifact ``out_dir``, quality-gated against ``src`` like ``quantize_artifact`` (on
    ``quality_text`` when given)."""
    check_gguf_args(accuracy_level, BLOCK)
    src, out_dir = Path(src).expanduser().absolute(), Path(out_dir).expanduser().absolute()
    manifest = read_fp32_manifest(src, out_dir, force)
    check_quality_text(quality_text, src, gated=not force_quality)  # before the GGUF's sha256 and the rewrite
    path, gguf_record = gguf_source(manifest, gguf, src)
    refuse_taken(out_dir, True, path)  # the GGUF read below must not lie inside what the output replaces
    refuse_off_blocks(manifest.get("model_type"), src)
    if manifest.get("kv_layout") != "fused-gqa":
        raise ExportError(f"{src}: quantize='gguf' rewrites the fused graph; this artifact's kv layout is "
                          f"{manifest.get('kv_layout', 'plain')!r} (export with kv_layout='fused', where the fused "
                          "builder supports the model; `onnxlm info FILE.gguf` says whether a file's blocks run)")
    tensors = GGUFTensors(path, manifest["num_heads"], manifest["num_kv_heads"])
    file_type = tensors.file_type

    def log(msg: str) -> None:
        if progress:
            print(f"[onnxlm quantize] {msg}", file=sys.stderr, flush=True)

    record = {"scheme": None, "method": "GGUF blocks kept: MatMulNBits / GatherBlockQuantized over the file's own "
              "codes and scales (Q4_1: uint8 zero points + exact blocksum(x) @ R correction)",
              "bits": None, "block_size": BLOCK, "accuracy_level": accuracy_level, "accuracy_level_8bit": 4,
              "accuracy_level_attention": 1,
              "source_gguf": gguf_record, "source_fp32": source_record(src), "quality": None, "forced": bool(force_quality)}

    def rewrite(graph_in: Path, graph_out: Path) -> None:
        from .gguf_reader import forget_readers

        nonlocal tensors
        log(f"GGUF-native MatMulNBits from {path.name} (accuracy level {accuracy_level}) ...")
        info = rewrite_graph(graph_in, graph_out, tensors, accuracy_level)
        tensors = None  # the GGUF's map is read no more: the gate's memory need not hold it
        forget_readers()
        if not info["tensors"]:
            raise ExportError(f"{path}: no tensor of a native type ({', '.join(NATIVE_TYPES)}); its types: "
                              f"{sorted(info['fp32_tensors'])}. Use quantize='int8' instead")
        main = max(info["tensors"], key=info["tensors"].get)
        # the file's own name for its mix (Q4_K_M: Q4_K, Q5_0, Q6_K, Q8_0 tensors), else its most common type
        record.update(info, scheme=f"gguf-{file_type or main.lower()}", bits=CODE_BITS[main])
        log(f"native: {info['tensors']}, kept fp32: {info['fp32_tensors'] or 'none'}, max |weight diff| "
            f"{info['max_weight_diff']:.2g}")
        rare = {t: n for t, n in info["fp32_tensors"].items() if t not in LOSSLESS_FP32}
        if rare:  # a type without a block form (a newer llama.cpp type): dequantised, so 4-8x the bytes of the file's blocks
            message = (f"{path.name}: {', '.join(f'{n} {t}' for t, n in sorted(rare.items()))} tensor(s) have no "
                       f"MatMulNBits form (native: {', '.join(NATIVE_TYPES)}): dequantised to fp32 (exact values, "
                       "larger and slower than the file's blocks)")
            log(f"warning: {message}")
            warnings.warn(message, UserWarning, stacklevel=3)
        if info["fp32_with_group"]:  # blocks beside an fp32 tensor in one fused product
            message = (f"{path.name}: {', '.join(f'{n} {t}' for t, n in sorted(info['fp32_with_group'].items()))} "
                       "tensor(s) run in fp32 (exact values): their q/k/v or gate/up product also holds a tensor "
                       f"without blocks ({', '.join(sorted(info['fp32_tensors']))}), and the fused graph multiplies "
                       "the group as one")
            log(f"warning: {message}")
            warnings.warn(message, UserWarning, stacklevel=3)

    write_quantized_artifact(src, manifest, out_dir, record, rewrite, force_quality=force_quality,
                             quality_text=quality_text, force=force, log=log,
                             hint="Try accuracy_level=1 (--accuracy-level 1, the fidelity setting)", progress=progress)
    log(f"wrote {out_dir}")
    return out_dir

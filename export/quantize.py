"""Weight-only quantization of an exported decoder-only artifact, gated by its quality against the fp32 source.

``quantize_artifact(src, out, scheme="int8"|"int4")`` rewrites every MatMul with a constant weight (GPT-2's Gemms
included) but the output head as onnxruntime's ``MatMulNBits`` (symmetric, one scale per ``block_size`` weights along
the input dimension) with onnxruntime's own ``MatMulNBitsQuantizer``. The output head is ``export/head_quant.py``'s:
``quantize_head="auto"`` (default) stores it as 8-bit blocks of 32 (``MatMulNBits`` bits=8, accuracy level 4, in
every scheme) and a tied embedding's lookup as ``GatherBlockQuantized`` over the same code bytes, so the [V, D]
weight is stored once, in 8 bits; ``"no"`` keeps it fp32 (tied: one fp32 tensor, which the fused graphs' head reads
with ``Gemm(transB=1)`` and optimum's through a Transpose); ``"yes"`` refuses a head it cannot rewrite. It then
measures the teacher-forced top-1 agreement and perplexity against ``src`` on the shipped text, or the caller's
``quality_text`` (``export/quality.py``), and refuses a variant below the documented thresholds unless ``force_quality=True``.
``accuracy_level``: onnxruntime's compute type for the activations of the body's MatMuls, 4 = int8 (fast), 1 = fp32
(the fidelity setting: closer to fp32, much slower on CPU for 8-bit).

The 8-bit head, measured on SmolLM2 (the fused fp32 artifact; 652 tokens of the gate's text; agreement / perplexity,
fp32 29.118), against the previous behaviour (a quantized copy of the head at the scheme's bits beside the fp32
embedding) and an fp32 head:

    int8: copy at 8 bits 0.9555 / 29.348 (270 MB); fp32 head 0.9647 / 29.407 (239 MB);
          8-bit head one pass 0.9601 / 29.344, two passes 0.9647 / 29.407 (161 MB)
    int4: copy at 4 bits 0.611 / 38.902 (203 MB); fp32 head 0.6605 / 35.578 (186 MB);
          8-bit head one pass 0.659 / 35.686, two passes 0.6605 / 35.578 (108 MB)
    int8 --accuracy-level 1: 8-bit head one pass 0.9754 / 29.297 (+0.62 %: refused), two passes 0.9770 / 29.254
          (+0.47 %: passes the gate)

(Those figures are from the gate's earlier 652-token text and its 0.975 bound; on today's 2,755-token text: int8
level 4 0.962 / +0.65 % / KL 0.0038, refused; level 1 0.980 / +0.40 % / KL 0.0011, passes: export/quality.py.)
At level 4 the int8 body alone is below the gate on SmolLM2 whatever the head (level-4 agreement moves by
~0.5 % with any change of rounding). Two passes reproduce the fp32 head's figures exactly but cost the head alone
+0.9 ms per token on SmolLM2 (1.1 -> 2.0 ms; GPT-2 small 2.1 -> 2.3 ms; fp32 head 3.4-3.5 ms; min of 60, 2 threads,
under load); at level 4 one pass stays within that noise of the fp32 head (int8: agreement -0.5 pt, perplexity
-0.2 %; int4: -0.15 pt, +0.3 %). So ``head_quant.head_passes``: one pass at accuracy level 4, two at the fidelity
levels, where the single pass would cost the gate.

The result is a complete artifact (manifest ``quantization`` record with the quality figures, the ``head`` record,
the count of ``MatMulNBits`` and the names of the 2-D weights left fp32), written atomically like ``export_model``.
Needs onnx and onnxruntime's quantization tools (the ``export`` extra), not torch.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

from onnxlm.runtime.errors import ExportError, ManifestError, QualityGateError
from onnxlm.runtime.heap import release_free_heap
from onnxlm.runtime.versions import QUANTIZER_ONNXRUNTIME, check_artifact_onnxruntime, check_onnxruntime

from .atomic_dir import move_into_place, refuse_taken, remove_tree, temp_dir_beside
from .manifest import graph_io, versions, write_manifest
from .provenance import source_record
from .quality import check_quality_text, measure_quality, perplexities, quality_failures

SCHEMES = {"int8": 8, "int4": 4}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


BLOCK_SIZES = (16, 32, 64, 128, 256)  # MLAS's MatMulNBits block sizes (others: "Only block sizes ... supported")


def _gate_hint(scheme: str, accuracy_level: int) -> str:
    """What a refused variant may try instead: the settings not already given (fp32 activations, 8-bit weights)."""
    options = ([] if accuracy_level == 1 else ["--accuracy-level 1"]) + (["--quantize int8"] if scheme == "int4" else [])
    return ("Try " + " or ".join(options)) if options else "int8 at accuracy level 1 is the closest variant to fp32"


def _check_args(scheme: str, block_size: int, accuracy_level: int) -> int:
    if scheme not in SCHEMES:
        raise ExportError(f"quantize: got {scheme!r}; allowed: {', '.join(SCHEMES)}")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        raise ExportError(f"block_size: got {block_size!r}; allowed: {', '.join(map(str, BLOCK_SIZES))} (the "
                          "sizes onnxruntime's MatMulNBits kernels take)")
    if accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(f"accuracy_level: got {accuracy_level!r}; allowed: {ACCURACY_LEVELS} "
                          "(4 = int8 activations, 1 = fp32 activations)")
    return SCHEMES[scheme]


def _gemm_to_matmul(model, skip=None) -> int:
    """Rewrite Gemm(A, W, bias) with a constant W (GPT-2's Conv1D export) as MatMul + Add, which the quantizer
    handles (it quantizes MatMul only); ``skip`` (the output head) is left alone. transB=1 gets a transposed copy of
    W. Returns how many were rewritten."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, done = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in inits or node is skip:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            w = numpy_helper.to_array(inits[weight]).T.copy()
            weight = weight + "_transposed_for_matmul"
            model.graph.initializer.append(numpy_helper.from_array(w, weight))
        out = node.output[0]
        if len(node.input) > 2 and node.input[2]:
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [out + "_matmul"], name=node.name + "_MatMul"))
            nodes.append(helper.make_node("Add", [out + "_matmul", node.input[2]], [out], name=node.name + "_Add"))
        else:
            nodes.append(helper.make_node("MatMul", [node.input[0], weight], [out], name=node.name + "_MatMul"))
        done += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return done


def quantize_graph(src: Path, dst: Path, bits: int, block_size: int, accuracy_level: int,
                   quantize_head: str = "auto") -> dict:
    """ONNX file src -> dst with every constant-weight MatMul as MatMulNBits (weights inline) and the output head
    as ``head_quant`` decides; returns the manifest's record of the head."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (DefaultWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    from .head_quant import head_passes, plan_head, rewrite_head
    from .mapped_weights import save_mapped
    from .quantizer_input import load_unaliased

    quiet = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # it logs one INFO line per MatMul
    try:
        model = load_unaliased(src)  # a tied lookup reads the head's weight again
        head, _ = plan_head(model, quantize_head)  # the quantizer leaves it alone; "yes" refuses early
        _gemm_to_matmul(model, skip=None if head is None else head.node)
        config = DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, accuracy_level=accuracy_level,
                                              bits=bits)
        quantizer = MatMulNBitsQuantizer(model, bits=bits, block_size=block_size, is_symmetric=True,
                                         accuracy_level=accuracy_level, algo_config=config,
                                         nodes_to_exclude=[] if head is None else [head.node.name])
        quantizer.process()
        model = quantizer.model.model
        head, reason = plan_head(model, quantize_head)  # found again: the quantizer rebuilt the node list
        aliases = {}
        if reason is None:
            record, aliases = rewrite_head(model, head, head_passes(accuracy_level))
        else:
            record = {"tensor": None if head is None else head.weight, "quantized": False,
                      "tied": head is not None and head.gather is not None, "reason": reason}
        record["matmul_nbits"] = sum(n.op_type == "MatMulNBits" and n.name != "lm_head.Remainder"
                                     for n in model.graph.node)
        read_as_weight = {n.input[1] for n in model.graph.node if n.op_type in ("MatMul", "Gemm")} | \
            {n.input[0] for n in model.graph.node if n.op_type == "Gather"}  # not scales, caches, constants
        record["fp32_weights"] = sorted(i.name for i in model.graph.initializer if i.name in read_as_weight
                                        and i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2)
        save_mapped(model, dst, aliases)  # weights in dst's _data file, memory-mapped by onnxruntime
        return record
    finally:
        quiet.setLevel(level)


def check_quantizer_onnxruntime(needed_by: str) -> None:
    """DependencyError naming ``needed_by`` where onnxruntime is older than its int8 / int4 quantizer needs."""
    check_onnxruntime(QUANTIZER_ONNXRUNTIME, needed_by=needed_by,
                      why="onnxruntime's MatMulNBitsQuantizer takes bits= from 1.24")


def quantize_artifact(src, out_dir, *, scheme: str = "int8", block_size: int = 32, accuracy_level: int = 4,
                      quantize_head: str = "auto", force_quality: bool = False, quality_text: str | None = None,
                      force: bool = False, progress: bool = True) -> Path:
    """An fp32 decoder-only artifact ``src`` -> quantized artifact ``out_dir`` (see the module docstring);
    ``quality_text``: the gate's text instead of the shipped one (``onnxlm.export.quality.check_quality_text``)."""
    from .head_quant import check_quantize_head

    bits = _check_args(scheme, block_size, accuracy_level)  # the caller's mistakes first, then the machine's
    check_quantize_head(quantize_head)
    src, out_dir = Path(src).expanduser().absolute(), Path(out_dir).expanduser().absolute()
    manifest = read_fp32_manifest(src, out_dir, force)
    check_quality_text(quality_text, src, gated=not force_quality)  # before the rewrite: a bad text costs nothing
    check_quantizer_onnxruntime(f"quantize_artifact(scheme={scheme!r})")  # before any work

    def log(msg: str) -> None:
        if progress:
            print(f"[onnxlm quantize] {msg}", file=sys.stderr, flush=True)

    log(f"{scheme} weight-only MatMulNBits (block {block_size}, accuracy level {accuracy_level}; output head: "
        f"{quantize_head}) ...")
    record = {"scheme": scheme, "method": "onnxruntime MatMulNBitsQuantizer: weight-only, symmetric, per block",
              "bits": bits, "block_size": block_size, "accuracy_level": accuracy_level,
              "quantize_head": quantize_head, "head": None,
              "source_fp32": source_record(src), "quality": None, "forced": bool(force_quality)}

    def rewrite(graph_in: Path, graph_out: Path) -> None:
        info = quantize_graph(graph_in, graph_out, bits, block_size, accuracy_level, quantize_head)
        record["matmul_nbits"] = info.pop("matmul_nbits")
        record["fp32_weights"] = info.pop("fp32_weights")
        record["head"] = info
        log("output head: " + (f"8-bit blocks of {info['block_size']}, {info['passes']} int8 pass(es)"
                               + (", tied embedding stored once (GatherBlockQuantized)" if info["tied"] else "")
                               if info["quantized"] else f"fp32 ({info['reason']})"))

    write_quantized_artifact(src, manifest, out_dir, record, rewrite, force_quality=force_quality,
                             quality_text=quality_text, force=force, log=log,
                             hint=_gate_hint(scheme, accuracy_level),
                             progress=progress)
    log(f"wrote {out_dir}")
    return out_dir


def read_fp32_manifest(src: Path, out_dir: Path, force: bool) -> dict:
    """The manifest of the fp32 decoder-only artifact ``src``; ExportError for anything else, or when ``out_dir``
    is taken and not ``force``; DependencyError when this onnxruntime is older than the artifact needs."""
    manifest_path = src / "onnxlm.json"
    if not manifest_path.is_file():
        raise ExportError(f"{src}: not an onnxlm artifact (no onnxlm.json)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{manifest_path}: not a readable manifest ({e}); re-export the artifact") from e
    if not isinstance(manifest, dict):
        raise ExportError(f"{manifest_path}: not a manifest (a JSON {type(manifest).__name__}, not an object); "
                          "re-export the artifact")
    if manifest.get("kind") != "causal-lm":
        raise ExportError(f"{src}: quantization supports decoder-only artifacts (GPT-2, Llama family) for now; "
                          f"this one is {manifest.get('kind')!r}")
    if manifest.get("quantization"):
        raise ExportError(f"{src}: already quantized ({manifest['quantization'].get('scheme')}); quantize the fp32 "
                          "artifact")
    try:  # before the rewrite: the gate runs it and its variant
        check_artifact_onnxruntime(manifest, src)
    except ManifestError as e:
        raise ExportError(str(e)) from e
    refuse_taken(out_dir, force, src)
    return manifest


def write_quantized_artifact(src: Path, manifest: dict, out_dir: Path, record: dict, rewrite, *, force_quality: bool,
                             force: bool, log, hint: str, quality_text: str | None = None,
                             progress: bool = False) -> None:
    """The fp32 artifact ``src`` (its parsed ``manifest``) -> ``out_dir``: side files copied, the decoder graph
    written by ``rewrite(src_graph_path, dst_graph_path)``, the manifest with ``record`` (its ``quality`` filled in by
    the gate, on ``quality_text`` when given: the caller checked it, ``quality.check_quality_text``), all in a temp
    dir moved into place only when the gate passes (or ``force_quality``); ``progress``: the gate's bar of positions
    read."""
    tmp = temp_dir_beside(out_dir, "tmp")
    try:
        graph_file = manifest["graphs"]["decoder"]["file"]
        for f in src.iterdir():  # side files (tokenizer, configs, chat template); the graph is rewritten
            if f.is_file() and f.name not in (graph_file, graph_file + "_data", "onnxlm.json"):
                shutil.copy2(f, tmp / f.name)
        rewrite(src / graph_file, tmp / graph_file)
        release_free_heap()  # the rewrite's freed arrays, before the gate loads both models (1B: 1.3 GB of heap)
        fields = {k: v for k, v in manifest.items() if k not in ("format_version", "files")}
        fields["graphs"] = {"decoder": {"file": graph_file, **graph_io(tmp / graph_file)}}
        fields["versions"] = {**manifest.get("versions", {}), **versions()}
        write_manifest(tmp, {**fields, "quantization": record})
        try:
            log("measuring teacher-forced top-1 agreement, perplexity and mean KL against the fp32 artifact ...")
            record["quality"] = measure_quality(src, tmp, quality_text, stop_when_refused=not force_quality,
                                               progress=progress)
        except ExportError:
            if not force_quality:
                raise
        q = record["quality"]
        if q is not None:
            early = q.get("stopped_early")
            stopped = (f" (read the first {early['positions']:,} of {early['of']:,} positions: the rest could not "
                       "change the refusal)" if early else "")
            ppl, ppl_fp32 = perplexities(q)
            read = "" if early else f" over {q['tokens']} tokens"  # (stopped early: the positions read, below)
            log(f"top-1 agreement {q['top1_agreement']:.4f}, perplexity {ppl:.3f} (fp32 {ppl_fp32:.3f}), "
                f"mean KL {q['mean_kl']:.5f}{read}{stopped}")
            failures = quality_failures(q)
            if (failures or early) and not force_quality:  # an early stop is a decided refusal
                refusal = f"{'; '.join(failures)}{stopped}"
                raise QualityGateError(f"quantized variant refused: {refusal}. {hint}, or pass force_quality=True "
                                       "(--force-quality) to keep it anyway", refusal)
        write_manifest(tmp, {**fields, "quantization": record})
        move_into_place(tmp, out_dir, force)
    except BaseException:
        remove_tree(tmp)
        raise

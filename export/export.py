"""``export_model``: source -> validated ONNX artifact directory, written atomically."""
from __future__ import annotations

import errno
import numbers
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from onnxlm.runtime.errors import ExportError, ExportNotice
from onnxlm.runtime.fused.causal_lm import KV_LAYOUT
from onnxlm.runtime.gguf_magic import is_gguf_file
from onnxlm.runtime.versions import check_onnxruntime

from .atomic_dir import move_into_place, refuse_taken, remove_tree, temp_dir_beside
from .loader import LoadedModel, load_source
from .manifest import check_graph_dims, graph_io, model_dims, versions, write_manifest
from .logits_to_keep import add_logits_to_keep
from .fused import check_fused_supported, fused_supported
from .provenance import source_record
from .sources import is_seq2seq_config, refuse_artifact_without_quantize, refuse_source, seq2seq_refusal
from .onnx_export import FUSED_ONLY_TYPES, check_config, export_onnx, traced_attention
from .validate import validate_export


class _Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def log(self, msg: str) -> None:
        if self.enabled:
            print(f"[onnxlm export] {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def quiet_libraries(self):
        """progress=False also silences transformers' own progress bars (downloads, weight loading) and its GGUF
        loader's de-quantisation bar, a plain ``tqdm`` that transformers' switch does not reach."""
        from functools import partial

        from transformers import modeling_gguf_pytorch_utils as gguf_loading
        from transformers.utils import logging as hf_logging

        was, bar = hf_logging.is_progress_bar_enabled(), gguf_loading.tqdm
        if not self.enabled:
            hf_logging.disable_progress_bar()
            gguf_loading.tqdm = partial(bar, disable=True)
        try:
            yield
        finally:
            gguf_loading.tqdm = bar
            if was and not self.enabled:
                hf_logging.enable_progress_bar()

    @contextmanager
    def step(self, what: str):
        t0 = time.perf_counter()
        self.log(f"{what} ...")
        yield
        self.log(f"{what} done ({time.perf_counter() - t0:.1f}s)")


def _first(x):
    return x[0] if isinstance(x, (list, tuple)) and x else x


def _check_in_vocabulary(key: str, value, where: str, vocab_size: int) -> None:
    """ExportError when a declared special id (int or list) lies at or past ``vocab_size`` (a negative pad id means
    "none", as transformers reads it)."""
    for tid in value if isinstance(value, list) else [value]:
        if tid is not None and int(tid) >= vocab_size:
            raise ExportError(f"{key}={tid} (from the {where}) is outside the vocabulary (vocab_size={vocab_size}): "
                              f"set {key} in the config or generation_config to an id < {vocab_size}")


def _special_tokens(lm: LoadedModel, notices: list[str]) -> dict[str, Any]:
    """bos/eos/pad/decoder_start ids as the source declares them: its generation config, else its model config,
    else the special tokens its tokenizer declares. Nothing is guessed from the vocabulary. Two are derived the
    way transformers derives them at generate time, and ``derived`` records it: pad from EOS, and T5's decoder
    start from pad."""
    gen, cfg = lm.generation_config, lm.model.config
    out: dict[str, Any] = {}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        for where, v in (("generation_config", getattr(gen, key, None)), ("config", getattr(cfg, key, None)),
                         ("tokenizer", lm.tokenizer_specials.get(key))):
            if v is not None:
                break
        out[key] = list(v) if isinstance(v, (list, tuple)) else v
        _check_in_vocabulary(key, out[key], where, cfg.vocab_size)
    derived = {}
    if (out["pad_token_id"] is None or _first(out["pad_token_id"]) < 0) and out["eos_token_id"] is not None:
        out["pad_token_id"] = _first(out["eos_token_id"])  # transformers' generate does the same
        derived["pad_token_id"] = "eos_token_id"
    if lm.family == "t5" and out["decoder_start_token_id"] is None and out["pad_token_id"] is not None:
        out["decoder_start_token_id"] = out["pad_token_id"]
        derived["decoder_start_token_id"] = "pad_token_id"
    if out["eos_token_id"] is None:
        notices.append(f"{lm.source}: the model declares no eos_token_id; generation runs to its length limit "
                       "unless eos_token_id is passed")
    out["derived"] = derived
    if lm.tokenizer is not None:  # the strings too: chat templates use {{ bos_token }} / {{ eos_token }}
        for name in ("bos", "eos", "pad"):
            tid = _first(out[f"{name}_token_id"])
            out[f"{name}_token"] = lm.tokenizer.id_to_token(int(tid)) if tid is not None else None
    return out


def _write_side_files(lm: LoadedModel, d: Path, special: dict[str, Any], notices: list[str]) -> None:
    import copy

    from transformers import GenerationConfig

    if lm.tokenizer is None:  # an ids-only artifact: the runtime works on token ids, text APIs raise
        notices.append(f"{lm.source}: no tokenizer found (tokenizer.json / fast tokenizer); the artifact works "
                       "on token ids only and refuses text (pass tokenizer= to export_model to ship one)")
    else:
        lm.tokenizer.save(str(d / "tokenizer.json"))
    lm.model.config.to_json_file(str(d / "config.json"))
    gen = copy.deepcopy(lm.generation_config) if lm.generation_config is not None else GenerationConfig()
    for k, v in special.items():  # declared ids only: a derived one stays derived (the manifest says so)
        if v is not None and k.endswith("_id") and k not in special["derived"]:
            setattr(gen, k, v)
    if not lm.model.config.is_encoder_decoder and special.get("decoder_start_token_id") is None:
        gen.decoder_start_token_id = None
    gen._from_model_config = False  # the file is authoritative; transformers must not re-derive it from config.json
    gen.to_json_file(str(d / "generation_config.json"), use_diff=True)
    if lm.chat_template:
        (d / "chat_template.jinja").write_text(lm.chat_template, encoding="utf-8")


_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS}  # a write refused: the place, not the model


def export_model(model, out_dir, *, force: bool = False, tolerance: float | None = None, opset: int | None = None,
                 validate: bool = True, progress: bool = True, tokenizer=None, kv_layout: str = "auto",
                 quantize: str | None = None, block_size: int = 32, accuracy_level: int = 4,
                 quantize_head: str = "auto", force_quality: bool = False, quality_text: str | None = None,
                 gguf=None) -> Path:
    """Export ``model`` to an ONNX artifact directory ``out_dir`` (layout and manifest: docs/design.md).

    ``model``: a recipe dir (``recipe.json``), a local transformers dir, a hub name, a ``.gguf`` file, a loaded
    transformers model (then ``tokenizer=`` may give a tokenizers.Tokenizer / fast tokenizer / tokenizer.json path;
    otherwise the tokenizer is loaded from ``model.config._name_or_path``), or what ``loader.load_source`` returned
    for any of these (its source record, tokenizer and chat template kept; a caller that compares with the PyTorch
    model loads it once).
    Supported: GPT-2, T5 and the Llama family (see ``onnxlm.export.onnx_export.SUPPORTED_FAMILIES``); a
    ``rope_scaling`` other than ``SUPPORTED_ROPE_SCALING`` is refused. A model whose config transformers honours only in
    eager attention (``attn_implementation_for``) is traced and validated eager; a passed model gets its setting back.

    Everything is written into a temp dir beside ``out_dir`` and renamed into place only after validation passes;
    any failure (including KeyboardInterrupt) removes it. An existing non-empty ``out_dir`` is refused unless
    ``force=True``, which replaces it atomically. ``tolerance``: absolute logits tolerance for validation (default:
    ``1e-4 + 1e-4 * max|reference logits|``, see ``onnxlm.export.validate``). ``validate=False`` skips the PyTorch vs
    onnxruntime comparison (the manifest then records ``validation: null``). ``kv_layout``: "auto" (the default: "fused"
    where the fused builder supports the model, else "plain"), "plain" (optimum's graph) or "fused" (our own
    GroupQueryAttention graphs with in-place KV buffers: GPT-2, T5, the Llama family and Gemma, see
    ``onnxlm.export.fused``; the manifest records ``"kv_layout": "fused-gqa"``).
    ``quantize="gguf"`` (a ``.gguf`` model: Llama family or Gemma): the fused fp32 export's weight MatMuls then run on the
    GGUF file's own Q4_0 / Q4_1 / Q8_0 blocks (``onnxlm.export.gguf_quant``: no re-quantisation; ``accuracy_level``
    4 = int8 activations, 1 = fp32 activations, the fidelity setting; ``block_size`` is the GGUF's 32), quality-gated
    the same way. ``quantize="int8"|"int4"``: the validated fp32 export is then quantized by ``quantize_artifact`` (weight-only
    MatMulNBits with ``block_size`` and ``accuracy_level``; refused below the quality thresholds of
    ``onnxlm.export.quality`` unless ``force_quality=True``; ``quality_text``: the gate reads this text, at least
    2,000 tokens unless forced, instead of the shipped one); only the quantized artifact is written. ``model`` may then
    also be an fp32 onnxlm artifact dir, which is quantized as it is. ``quantize_head`` ("auto" | "yes" | "no", int8 /
    int4 only): the output head (and a tied embedding, stored once) in 8-bit blocks, or fp32 with "no"
    (``onnxlm.export.head_quant``). ``gguf`` (``quantize="gguf"`` on an fp32 artifact dir only): the .gguf file it was
    exported from, checked against the sha256 its manifest records (default: found by the recorded name, see
    ``gguf_quant.gguf_source``). Returns the path.
    """
    check_onnxruntime()  # before any work: the export's validation and the artifact run on it (runtime/versions.py)
    out_dir = Path(out_dir).expanduser().absolute()
    made = [d for d in out_dir.parents if not d.exists()]  # deepest first: the folders this export will create
    try:
        return _export_model(model, out_dir, force=force, tolerance=tolerance, opset=opset, validate=validate,
                             progress=progress, tokenizer=tokenizer, kv_layout=kv_layout, quantize=quantize,
                             block_size=block_size, accuracy_level=accuracy_level, quantize_head=quantize_head,
                             force_quality=force_quality, quality_text=quality_text, gguf=gguf)
    except BaseException as exc:
        for d in made:  # a failed export leaves no empty folders it made on the way to out_dir either
            try:
                d.rmdir()
            except OSError:  # not empty (someone else's), or gone
                break
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS and not getattr(exc, "filename", None):
            # "No space left on device" alone names nothing: say where the export was writing
            raise ExportError(f"{out_dir}: the export could not write: {exc.strerror or exc} (its files go beside "
                              f"it in {out_dir.parent}, its scratch to the temporary directory "
                              f"{tempfile.gettempdir()}, downloads to the hub cache); nothing of it is left") from exc
        raise


def _export_model(model, out_dir: Path, *, force, tolerance, opset, validate, progress, tokenizer, kv_layout,
                  quantize, block_size, accuracy_level, quantize_head, force_quality, quality_text, gguf,
                  check=None) -> Path:
    """``export_model``'s work, ``out_dir`` absolute; ``check(config)``: the caller's refusal of the model's config,
    run before its weights load (``loader.load_source``'s)."""
    refuse_taken(out_dir, force, model, gguf)
    refuse_source(model, quantize)  # no model in a folder, a GGUF architecture or an encoder-decoder onnxlm does
    #                                 not export (so): one line, before anything loads
    if isinstance(model, (str, Path)) and is_gguf_file(Path(model).expanduser()):
        from .gguf_bert import is_encoder_gguf

        if is_encoder_gguf(Path(model).expanduser()):  # an embedding encoder (BERT family): its own export, fp32 only
            return _export_encoder(model, out_dir, force=force, tolerance=tolerance, opset=opset, validate=validate,
                                   progress=progress, tokenizer=tokenizer, kv_layout=kv_layout, quantize=quantize)
        from .export_resources import check_gguf_export_resources
        from .gguf_quant import refuse_file_off_blocks

        if quantize == "gguf":  # an architecture whose graph has no rewrite onto blocks: said before anything else
            refuse_file_off_blocks(Path(model).expanduser(), model)
        check_gguf_export_resources(Path(model).expanduser(), out_dir,  # refused now rather than killed later
                                    blocks_kept=quantize == "gguf", in_cache=False)
    from .head_quant import check_quantize_head

    artifact = isinstance(model, (str, Path)) and (Path(model).expanduser() / "onnxlm.json").is_file()  # an fp32 one
    if check_quantize_head(quantize_head) != "auto" and quantize not in ("int8", "int4"):
        raise ExportError(f"quantize_head: got {quantize_head!r} with quantize={quantize!r}; it applies to "
                          "quantize='int8' or 'int4' only (leave it 'auto')")
    if gguf is not None and not (quantize == "gguf" and artifact):
        raise ExportError(f"gguf: given {str(gguf)!r}; it names the GGUF of an fp32 artifact re-quantized with "
                          "quantize='gguf' (a .gguf MODEL is its own source)")
    if quantize is None and (block_size != 32 or accuracy_level != 4 or force_quality or quality_text is not None):
        given = {k: v for k, v, default in (("block_size", block_size, 32), ("accuracy_level", accuracy_level, 4),
                                             ("force_quality", force_quality, False),
                                             ("quality_text", quality_text, None)) if v != default}
        raise ExportError(f"{', '.join(f'{k}={v!r:.40}' for k, v in given.items())}: quantization settings, given "
                          "without quantize; pass quantize='int8', 'int4' or 'gguf' (--quantize), or leave them out")
    refuse_artifact_without_quantize(model, quantize)  # nothing to export again (after the settings: they name it)
    if not artifact:  # a source to export has no tokenizer yet (an artifact's text: quantize_*'s first check)
        from .quality import check_quality_text

        check_quality_text(quality_text, None, gated=not force_quality)
    if quantize == "gguf" and opset is not None:
        raise ExportError("opset: quantize='gguf' rewrites the fused graph, which is built at a fixed opset; pass no "
                          "opset")
    if quantize == "gguf":
        return _export_gguf_native(model, out_dir, gguf=gguf, force=force, tolerance=tolerance, validate=validate,
                                   progress=progress, tokenizer=tokenizer, kv_layout=kv_layout,
                                   block_size=block_size, accuracy_level=accuracy_level, force_quality=force_quality,
                                   quality_text=quality_text)
    if quantize is not None:
        from .quantize import _check_args, check_quantizer_onnxruntime, quantize_artifact

        _check_args(quantize, block_size, accuracy_level)  # refuse bad settings before the long export
        if not artifact:  # and an onnxruntime its quantizer cannot run on (quantize_artifact checks it again)
            check_quantizer_onnxruntime(f"quantize={quantize!r}")
        if artifact:
            return quantize_artifact(model, out_dir, scheme=quantize, block_size=block_size,  # no torch needed
                                     accuracy_level=accuracy_level, quantize_head=quantize_head,
                                     force_quality=force_quality, quality_text=quality_text, force=force,
                                     progress=progress)

        def decoder_only(config) -> None:  # a hub name's config, known once loaded: refused before its weights
            if is_seq2seq_config(config.model_type, getattr(config, "is_encoder_decoder", False)):
                raise ExportError(seq2seq_refusal(quantize, model, config.model_type))

        scratch = temp_dir_beside(out_dir, "fp32")
        try:
            fp32 = _export_model(model, scratch / "fp32", force=False, tolerance=tolerance, opset=opset,
                                 validate=validate, progress=progress, tokenizer=tokenizer, kv_layout=kv_layout,
                                 quantize=None, block_size=32, accuracy_level=4, quantize_head="auto",
                                 force_quality=False, quality_text=None, gguf=None, check=decoder_only)
            return quantize_artifact(fp32, out_dir, scheme=quantize, block_size=block_size,
                                     accuracy_level=accuracy_level, quantize_head=quantize_head,
                                     force_quality=force_quality, quality_text=quality_text, force=force,
                                     progress=progress)
        finally:
            remove_tree(scratch)
    if tolerance is not None and not (float(tolerance) > 0):
        raise ExportError(f"tolerance: must be a positive number, got {tolerance!r}")
    if kv_layout not in ("auto", "plain", "fused"):
        raise ExportError(f"kv_layout: got {kv_layout!r}; allowed: 'auto', 'plain', 'fused'")
    if kv_layout == "fused" and opset is not None:
        raise ExportError("opset: the fused graph (kv_layout='fused') is built at a fixed opset; pass no opset")
    prog = _Progress(progress)
    notices: list[str] = []  # warnings for the user, raised after the libraries' chatter is silenced
    tmp = temp_dir_beside(out_dir, "tmp")
    try:
        with warnings.catch_warnings(record=True) as caught, prog.quiet_libraries():
            warnings.simplefilter("ignore")  # torch tracer / transformers deprecation chatter
            warnings.simplefilter("always", ExportNotice)  # but onnxlm's own notices: handed on below
            what = model if isinstance(model, (str, Path)) else getattr(model, "source", type(model).__name__)
            with prog.step(f"loading {what}"):
                # a fused-only family's plain layout or opset, then an opset's range: refused before the weights load
                def checks(config, layout=kv_layout) -> None:
                    if check is not None:
                        check(config)
                    _check_layout(config, layout, opset)

                lm = load_source(model, tokenizer=tokenizer, check=checks)
            cfg = lm.model.config
            check_config(cfg)
            if cfg.model_type in FUSED_ONLY_TYPES:  # no plain graph: the fused one (its layout refused above)
                check_fused_supported(lm.model)  # what the fused builder refuses: its only graph
                kv_layout = "fused"
            elif kv_layout == "auto":  # the fast graph wherever it is built (and proven) for this model
                kv_layout = "fused" if opset is None and fused_supported(lm.model) else "plain"
            elif kv_layout == "fused":  # what the builder refuses, before the special ids and anything written
                check_fused_supported(lm.model)
            dims = model_dims(cfg, lm.family)
            trained = getattr(cfg, "max_position_embeddings", None)
            if dims.get("max_positions") is not None and trained and dims["max_positions"] < trained:
                notices.append(f"{lm.source}: longrope rotary: the artifact holds {dims['max_positions']} positions "
                               f"(original_max_position_embeddings) of the model's {trained}; "
                               "past them transformers switches to the long factors at run time, which a graph "
                               "cannot")
            special = _special_tokens(lm, notices)
            _write_side_files(lm, tmp, special, notices)  # before validation: the fused check loads the runtime
            if kv_layout == "fused":
                graphs, used_opset, validation = _export_fused(lm, tmp, dims, special, validate, tolerance, prog,
                                                               progress, release=isinstance(model, (str, Path)))
            else:
                graphs, used_opset, validation = _export_plain(lm, tmp, dims, special, validate, tolerance, prog,
                                                               progress, opset)
        notices += [str(w.message) for w in caught if issubclass(w.category, ExportNotice)]
        for notice in notices:  # one channel: the CLI prints each as one "onnxlm: warning:" line
            warnings.warn(notice, UserWarning, stacklevel=2)
        write_manifest(tmp, {
            "kind": "seq2seq-lm" if lm.family == "t5" else "causal-lm",
            "model_type": cfg.model_type,
            "graphs": graphs,
            **dims,
            "special_tokens": special,
            "dtype": "float32",
            "opset": used_opset,
            "versions": versions(),
            "validation": validation,
            "source": source_record(lm.source),
            **({"kv_layout": KV_LAYOUT} if kv_layout == "fused" else {}),
            **({"pooling": lm.pooling} if lm.pooling else {}),  # embed()'s default (runtime/embedding.py)
        })
        move_into_place(tmp, out_dir, force)
    except BaseException:
        remove_tree(tmp)
        raise
    prog.log(f"wrote {out_dir}")
    return out_dir


def _export_encoder(model, out_dir: Path, *, force, tolerance, opset, validate, progress, tokenizer, kv_layout,
                    quantize) -> Path:
    """A ``bert`` / ``nomic-bert`` GGUF (export/gguf_bert.py, export/nomic_bert.py) -> an embedding artifact
    (export/encoder_export.py); the settings that only decoders take are refused by name."""
    from .encoder_export import export_encoder_gguf

    given = {k: v for k, v, default in (("quantize", quantize, None), ("opset", opset, None),
                                         ("tokenizer", tokenizer, None), ("kv_layout", kv_layout, "auto"))
             if v is not default and v != default}
    if given:
        raise ExportError(f"{', '.join(f'{k}={v!r:.40}' for k, v in given.items())}: {model} is an embedding "
                          "encoder (BERT family), exported in fp32 with its own graph and tokenizer; leave these out")
    return export_encoder_gguf(model, out_dir, force=force, tolerance=tolerance, validate=validate,
                               progress=progress)


#: the lowest opset the plain exporter takes: every decoder's attention (torch's scaled_dot_product_attention) needs 14
MIN_OPSET = 14


def _check_opset(opset) -> None:
    """ExportError, before the weights load (``_check_layout``), for an opset the plain exporter cannot write: below
    ``MIN_OPSET`` or above the newest that torch's exporter writes."""
    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as newest
    except ImportError:  # no torch (the export then says so) or a torch that moved the constant: no upper bound here
        newest = None
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral) or opset < MIN_OPSET or (
            newest and opset > newest):
        why = f"the attention needs {MIN_OPSET}" + (f"; torch's exporter writes none above {newest}" if newest else "")
        raise ExportError(f"opset: got {opset!r}; allowed: {MIN_OPSET} to {newest or 'the newest torch writes'} "
                          f"({why})")


def _check_layout(config, kv_layout: str, opset: int | None) -> None:
    """ExportError when ``config``'s model_type has no plain graph (``FUSED_ONLY_TYPES``) and the plain layout or an
    opset (which only the plain exporter takes) is asked for; then for an opset outside the plain exporter's range."""
    if config.model_type in FUSED_ONLY_TYPES and kv_layout == "plain":
        raise ExportError(f"kv_layout='plain': model_type {config.model_type!r} has no optimum-onnx export; it "
                          "exports as the fused graph only (kv_layout='auto' or 'fused', no opset)")
    if config.model_type in FUSED_ONLY_TYPES and opset is not None:
        raise ExportError(f"opset: model_type {config.model_type!r} exports as the fused graph only, which is built "
                          "at a fixed opset; pass no opset")
    if opset is not None:
        _check_opset(opset)


def _export_gguf_native(model, out_dir: Path, *, gguf, force, tolerance, validate, progress, tokenizer, kv_layout,
                        block_size, accuracy_level, force_quality, quality_text) -> Path:
    """quantize="gguf": the fused fp32 export of the .gguf ``model`` (or an fp32 artifact exported from one), then
    its weight MatMuls on the GGUF's own blocks (``onnxlm.export.gguf_quant``)."""
    from .gguf_quant import check_gguf_args, file_has_blocks, quantize_gguf_artifact

    check_gguf_args(accuracy_level, block_size)  # refuse bad settings before the long export
    kw = dict(accuracy_level=accuracy_level, force_quality=force_quality, quality_text=quality_text, force=force,
              progress=progress)
    if isinstance(model, (str, Path)) and (Path(model).expanduser() / "onnxlm.json").is_file():
        return quantize_gguf_artifact(model, out_dir, gguf=gguf, **kw)  # no torch needed
    if not (isinstance(model, (str, Path)) and is_gguf_file(model)):
        raise ExportError(f"quantize='gguf' keeps a GGUF file's own blocks: the model must be a .gguf file (or an "
                          f"fp32 artifact exported from one); got {model if isinstance(model, (str, Path)) else type(model).__name__!r}")
    if kv_layout == "plain":
        raise ExportError("kv_layout: quantize='gguf' rewrites the fused graph; use kv_layout='auto' or 'fused'")
    if not file_has_blocks(Path(model).expanduser()):  # the header says it: refused before the long fp32 export
        raise ExportError(f"{model}: no tensor of this GGUF is of a quantized (block) type, so quantize='gguf' has "
                          "no blocks to keep; export it in fp32 (no quantize) or use quantize='int8'")
    scratch = temp_dir_beside(out_dir, "fp32")
    try:
        fp32 = export_model(model, scratch / "fp32", tolerance=tolerance, validate=validate, progress=progress,
                            tokenizer=tokenizer, kv_layout="fused")
        return quantize_gguf_artifact(fp32, out_dir, gguf=Path(model).expanduser(), **kw)
    finally:
        remove_tree(scratch)


def _export_plain(lm, tmp: Path, dims, special, validate, tolerance, prog, progress, opset):
    """optimum's graph (+ logits_to_keep) -> (graphs, opset, validation)."""
    cfg = lm.model.config
    with traced_attention(lm.model):  # export and validation run the attention the graph must match
        with prog.step(f"exporting {cfg.model_type} to ONNX"):
            files, used_opset = export_onnx(lm.model, lm.family, tmp, opset=opset)
            if lm.family != "t5":  # prefill computes the last position's logits only
                add_logits_to_keep(tmp / files["decoder"])
        graphs = {role: {"file": f, **graph_io(tmp / f)} for role, f in files.items()}
        check_graph_dims(graphs, dims, lm.family)
        validation = None
        if validate:
            with prog.step("validating onnxruntime against PyTorch"):
                validation = validate_export(lm.model, tmp, files, {**dims, **special}, tolerance=tolerance,
                                             log=prog.log if progress else None)
    return graphs, used_opset, validation


def _export_fused(lm, tmp: Path, dims, special, validate, tolerance, prog, progress, release: bool = False):
    """Our GroupQueryAttention graphs (export/fused.py) -> (graphs, opset, validation). ``release``: the model is
    the export's own (loaded from a path): a decoder-only model's references are taken first, then its PyTorch weights
    are dropped layer by layer while the graph is built, so the PyTorch weights, the graph's copies and the runtime's
    session are never all held at once (a Llama-3.2-1B-shaped GGUF's fp32 export peaked at 10.9 GB, 7.2 so)."""
    from .fused import build_fused_graphs
    from .fused_graph import OPSET
    from .validate_fused import causal_references, validate_fused_export

    cfg = {**dims, **special}
    references = None
    release = release and lm.family != "t5"  # T5's checks run its PyTorch model after the build
    if validate and release:
        with prog.step("PyTorch's reference logits"), traced_attention(lm.model):
            references = causal_references(lm.model, cfg)
    with prog.step(f"building the fused {lm.model.config.model_type} graph"):
        files = build_fused_graphs(lm.model, tmp, max_positions=dims["max_positions"], release=release)
    graphs = {role: {"file": f, **graph_io(tmp / f)} for role, f in files.items()}
    validation = None
    if validate:
        with prog.step("validating the fused graph (runtime) against PyTorch"):
            manifest = {"kind": "seq2seq-lm" if lm.family == "t5" else "causal-lm",
                        "model_type": lm.model.config.model_type, "graphs": graphs, **dims,
                        "special_tokens": special, "kv_layout": KV_LAYOUT}
            with traced_attention(lm.model):  # the attention whose semantics the graph follows (GPT-2: eager)
                validation = validate_fused_export(lm.model, tmp, manifest, cfg, tolerance=tolerance,
                                                   log=prog.log if progress else None, references=references)
    return graphs, OPSET, validation

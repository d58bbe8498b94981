"""`onnxlm export`: the one command that needs torch (imported lazily, here only)."""
from __future__ import annotations

from onnxlm.runtime.errors import ExportError

from .args import command_parser, positive_int

DESCRIPTION = """\
Export a model to an ONNX artifact directory (needs the export extra: pip install 'onnxlm[export]').

MODEL is a Hugging Face hub name, a local transformers directory, a .gguf file or a recipe directory
(models/recipes/*). The export is validated against PyTorch (logits of the first step, a step with the KV
cache and a left-padded batch) before the directory is written; a failure leaves nothing behind.

examples:
  onnxlm export gpt2 models/gpt2
  onnxlm export google-t5/t5-small models/t5-small --tolerance 1e-3
  onnxlm export models/recipes/tiny-gpt2 models/tiny-gpt2 --force
  onnxlm export models/smollm2-135m-instruct models/smollm2-int8 --quantize int8 --accuracy-level 1
  onnxlm export path/to/model.Q4_1.gguf models/my-llama-q4 --quantize gguf     # keeps the GGUF's own blocks
  onnxlm export model.Q4_K_M.gguf models/my-q4km --quantize gguf --quality-text my_domain.txt  # gate on your text
  onnxlm export bge-small-en-v1.5-q8_0.gguf models/bge-small   # an embedding GGUF (BERT, XLM-R, nomic): fp32, embeds
"""


def add_parser(sub) -> None:
    p = command_parser(sub, "export", help="export a model to ONNX (needs torch)", description=DESCRIPTION)
    p.add_argument("model", metavar="MODEL", help="hub name, local transformers dir, .gguf file or recipe dir")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the artifact directory to write")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    p.add_argument("--tolerance", type=float, metavar="X",
                   help="absolute logits tolerance of the validation (default: 1e-4 + 1e-4 * max|logits|)")
    p.add_argument("--opset", type=positive_int, metavar="N", help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="skip the PyTorch vs onnxruntime comparison")
    p.add_argument("--kv-layout", choices=("auto", "plain", "fused"), default="auto",
                   help="auto (default): fused where supported, else plain; plain: optimum's graph; fused: GroupQueryAttention with in-place KV buffers, "
                        "no per-step cache concatenation (gpt2, t5, mt5, llama, mistral, qwen2, qwen3, phi3, granite, smollm3, "
                        "olmo2, olmo3, ernie4_5, exaone4, lfm2 (the last four fused only), stablelm, gemma, gemma2, "
                        "gemma3_text; CPU)")
    q = p.add_argument_group("quantization (decoder-only; MODEL may also be an fp32 onnxlm artifact dir)")
    q.add_argument("--quantize", choices=("int8", "int4", "gguf"),
                   help="weight-only MatMulNBits (gguf: on a .gguf file's own blocks, no re-quantisation: Q4_0..Q8_0, "
                        "Q2_K..Q6_K, IQ4_NL/IQ4_XS and the codebook types IQ1..IQ3, TQ1_0/TQ2_0, MXFP4, NVFP4); refused below the quality thresholds (on a shipped 2,755-token text: top-1 "
                        "agreement >= 0.97, perplexity within +0.5%%, mean KL <= 0.003 of fp32; or on --quality-text) unless "
                        "--force-quality")
    q.add_argument("--block-size", type=positive_int, default=32, metavar="N",
                   help="weights per quantization block (16, 32, 64, 128 or 256; default: 32)")
    q.add_argument("--accuracy-level", type=int, default=4, choices=(0, 1, 2, 3, 4),
                   help="onnxruntime's activation type: 4 = int8 (fast, default), 1 = fp32 (fidelity, slower; "
                        "with --quantize gguf only 4 and 1)")
    q.add_argument("--quantize-head", choices=("auto", "yes", "no"), default="auto",
                   help="int8/int4: the output head (and a tied embedding, stored once) in 8-bit blocks; auto "
                        "(default): where it can be, yes: or refuse, no: keep it fp32")
    q.add_argument("--gguf", metavar="FILE",
                   help="--quantize gguf on an fp32 artifact: the .gguf it was exported from (checked against the "
                        "sha256 its manifest records; default: the recorded file name in the current directory, "
                        "beside the artifact, or the installed SmolLM2 package)")
    q.add_argument("--force-quality", action="store_true", help="keep a variant below the quality thresholds")
    q.add_argument("--quality-text", metavar="FILE",
                   help="a UTF-8 text file the quality gate reads instead of the shipped one (your own domain or "
                        "language; at least 2,000 tokens unless --force-quality)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def import_export_model():
    """onnxlm.export.export_model, or an ExportError saying how to install torch."""
    try:
        from onnxlm.export import export_model
        import torch  # noqa: F401  - fail here with a clear message rather than deep inside the exporter
    except ImportError as exc:
        raise ExportError(f"exporting needs torch, transformers and optimum-onnx ({exc}); "
                          "install them with: pip install 'onnxlm[export]'") from exc
    return export_model


def read_quality_text(path: str) -> str:
    """--quality-text FILE -> its text; ExportError naming the option for a file that is absent or not UTF-8."""
    from pathlib import Path

    try:  # bytes decoded as they are (no newline translation): the recorded sha256 is the file's
        text = Path(path).expanduser().read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ExportError(f"--quality-text: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except OSError as e:
        raise ExportError(f"--quality-text: cannot read {path} ({e.strerror or e})") from e
    if not text:
        raise ExportError(f"--quality-text: {path} is empty")
    return text


def run(args) -> int:
    from pathlib import Path

    from onnxlm.export.atomic_dir import refuse_taken
    from onnxlm.export.sources import refuse_source

    refuse_taken(Path(args.out_dir), args.force, args.model, args.gguf)  # before torch's import (~2 s): a taken OUT is refused at once
    refuse_source(args.model, args.quantize)  # a folder without a model, a GGUF architecture or an encoder-decoder
    #                                           onnxlm does not export (so): at once too
    quality_text = read_quality_text(args.quality_text) if args.quality_text is not None else None
    export_model = import_export_model()
    path = export_model(args.model, args.out_dir, force=args.force, tolerance=args.tolerance, opset=args.opset,
                        validate=args.validate, progress=not args.quiet, kv_layout=args.kv_layout,
                        quantize=args.quantize, block_size=args.block_size, accuracy_level=args.accuracy_level,
                        quantize_head=args.quantize_head, force_quality=args.force_quality, quality_text=quality_text,
                        gguf=args.gguf)
    print(path)
    _note_leftovers(Path(args.out_dir))
    return 0


def _note_leftovers(out_dir) -> None:
    """Say (stderr) which hidden directories an earlier export of OUT_DIR that was killed left beside it: nothing
    removes them by itself (one could be the scratch of another export of OUT_DIR running now)."""
    import sys

    from onnxlm.export.atomic_dir import leftovers_beside

    from .info import _size

    for p in leftovers_beside(out_dir):
        try:
            size = sum(f.lstat().st_size for f in p.rglob("*") if not f.is_symlink() and f.is_file())
        except OSError:  # going while it is read (another export's scratch, removed as it ends): not left over
            continue
        print(f"onnxlm: note: {p} ({_size(size)}) was left by an export of {out_dir.name} that was killed (or is "
              "another one's, running now); remove it when no export of it runs", file=sys.stderr)

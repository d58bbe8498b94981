"""`onnxlm info`: what an artifact directory holds (manifest summary, graphs, files)."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from onnxlm.runtime.errors import DependencyError, ModelFileError
from onnxlm.runtime.versions import artifact_onnxruntime, dotted

from .args import add_model_args, command_parser, model_path

DESCRIPTION = """\
Describe an exported model: kind and architecture, special tokens, dtype/opset, the library versions it was
exported with, the validation result, every ONNX graph's inputs and outputs (as onnxruntime loads them),
the generation defaults and the files with their sizes.

An artifact the installed onnxruntime (or tokenizers) is too old to run is described from its manifest, without its
graphs' inputs and outputs, with the reason it does not load here.

A .gguf file is described from its header, without exporting it: architecture, shape, tensor types (and which keep
their blocks under --quantize gguf), tokenizer, whether onnxlm runs it, and its cached artifact when an earlier run
made one (then described as above).

example:
  onnxlm info models/gpt2
  onnxlm info models/t5 --json
  onnxlm info path/to/model.gguf
"""

# manifest graph role -> attribute of the loaded model holding its GraphRunner
_ROLE_ATTR = {"decoder": "decoder", "encoder": "encoder", "decoder_with_past": "with_past"}


def add_parser(sub) -> None:
    p = command_parser(sub, "info", help="describe an exported model", description=DESCRIPTION)
    p.add_argument("model_dir", metavar="MODEL_DIR",
                   help="an artifact directory written by `onnxlm export` (or a plain Optimum ONNX export), or a "
                        ".gguf file (its header; never exported here)")
    add_model_args(p, model_dir=False)
    p.add_argument("--json", action="store_true", help="print everything as one JSON object")
    p.set_defaults(func=run)


def collect(model) -> dict:
    """The information `info` prints, as a JSON-able dict."""
    m = model.manifest
    graphs = {}
    for role, spec in (m.get("graphs") or {}).items():
        runner = getattr(model, _ROLE_ATTR.get(role, role), None)
        session = getattr(runner, "session", None)
        entry = {"file": spec.get("file")}
        if session is not None:
            entry["inputs"] = [_arg(a) for a in session.get_inputs()]
            entry["outputs"] = [_arg(a) for a in session.get_outputs()]
            entry["providers"] = list(session.get_providers())
        graphs[role] = entry
    files = {}
    for path in sorted(model.path.iterdir()):
        if path.is_file():
            files[path.name] = path.stat().st_size
    gen = model.generation_config
    defaults = type(gen)()
    gen_set = {k: v for k, v in gen.to_dict().items() if getattr(defaults, k, None) != v}
    return {
        "path": str(model.path.resolve()),
        "kind": m.get("kind"), "model_type": m.get("model_type"), "format_version": m.get("format_version"),
        "source": m.get("source"),
        "num_layers": m.get("num_layers"), "num_heads": m.get("num_heads"), "num_kv_heads": m.get("num_kv_heads"),
        "head_dim": m.get("head_dim"), "hidden_size": m.get("hidden_size"),
        "vocab_size": m.get("vocab_size", model.vocab_size), "max_positions": m.get("max_positions"),
        "special_tokens": m.get("special_tokens"), "dtype": m.get("dtype"), "opset": m.get("opset"),
        "kv_layout": m.get("kv_layout", "plain"),
        "versions": m.get("versions"), "validation": m.get("validation"), "quantization": m.get("quantization"),
        "requires": {"onnxruntime": dotted(artifact_onnxruntime(m, model.path))},  # recorded, or its legacy reading
        "chat_template": model.chat_template is not None,
        "embeddings": _embeddings(model),
        "provider": model.provider,
        "cannot_load": getattr(model, "cannot_load", None),  # why the installed libraries cannot run it, or None
        "windows_narrowed": bool(getattr(model, "narrows_windows", False)),  # onnxruntime 1.23 runs its windows - 1
        "generation_config": gen_set,
        "graphs": graphs,
        "files": files,
    }


def _embeddings(model) -> str | None:
    """What ``embed`` does with this artifact (its default pooling), why it cannot, or None (not loaded)."""
    if not hasattr(model, "check_embeddings"):
        return None
    if getattr(model, "is_reranker", False):
        return ("no: a reranker: it scores (query, document) pairs (model.rerank, onnxlm serve's /rerank); it "
                "neither embeds nor generates")
    try:
        model.check_embeddings()
    except ModelFileError as exc:
        return "no: " + str(exc).split(": ", 1)[-1]
    own = "the model's own" if model.manifest.get("pooling") else "the default"
    only = "; an embedding model: it only embeds (no generate, chat, score)" if (
        model.manifest.get("kind") == "embedding") else ""
    return f"yes, {model.default_pooling} pooling ({own}){only}"


def unloaded(path: Path, reason: DependencyError, verify: bool = True) -> SimpleNamespace:
    """What ``collect`` reads of an artifact the installed onnxruntime or tokenizers cannot run (``reason``): its
    manifest (its files' checksums checked unless ``verify`` is False), config and generation config, no graph
    sessions."""
    from onnxlm.runtime.manifest import load_manifest, read_json
    from onnxlm.runtime.model import artifact_generation_config

    path = Path(path).expanduser()
    manifest = load_manifest(path, verify=verify)
    config = read_json(path / "config.json")
    return SimpleNamespace(path=path, manifest=manifest, vocab_size=config.get("vocab_size"), provider=None,
                           generation_config=artifact_generation_config(path, manifest, config),
                           chat_template=True if (path / "chat_template.jinja").is_file() else None,
                           cannot_load=str(reason))


def _load_or_describe(path, args):
    """The loaded model, or what ``unloaded`` reads where the installed libraries are too old for it."""
    from onnxlm.runtime import load

    try:
        return load(path, provider=args.provider, threads=args.threads, verify=args.verify)
    except DependencyError as exc:
        return unloaded(path, exc, verify=args.verify)


def _arg(a) -> dict:
    return {"name": a.name, "type": a.type, "shape": list(a.shape) if a.shape is not None else None}


def run(args) -> int:
    from onnxlm.runtime.gguf_magic import is_gguf_file

    if is_gguf_file(args.model_dir):
        return _run_gguf(args)
    info = collect(_load_or_describe(model_path(args), args))
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(_render(info))
    return 0


def _run_gguf(args) -> int:
    """A .gguf file: its header (export/gguf_summary.py) and, when the cache holds its artifact, that artifact's
    description; never an export."""
    from onnxlm.export.gguf_artifact import artifact_dir_for, cached_artifact
    from onnxlm.export.gguf_summary import summarize_gguf
    summary = summarize_gguf(args.model_dir)
    cached = cached_artifact(args.model_dir)
    artifact = collect(_load_or_describe(cached, args)) if cached else None
    if args.json:
        print(json.dumps({"gguf": summary, "artifact_dir": str(cached) if cached else None, "artifact": artifact},
                         indent=2, default=str))
        return 0
    print(_render_gguf(args.model_dir, summary, cached or artifact_dir_for(args.model_dir), cached is not None))
    if artifact:
        print(_render(artifact))
    return 0


def _render_gguf(path: str, g: dict, artifact_dir, cached: bool) -> str:
    from onnxlm.export.gguf_header import exported_architectures

    types = ", ".join(f"{t} {n}" for t, n in g["tensor_types"].items())
    on_blocks = g["blocks"] and g["on_blocks"]
    blocks = ("dequantised to fp32 (an embedding encoder exports in fp32 only; --quantize is refused)"
              if g.get("embedding_only") else
              "refused: no tensor is of a quantized (block) type (export it in fp32, or --quantize int8)"
              if not g["blocks"] else
              f"refused: onnxlm does not export {g['architecture']}" if not g["exported"] else
              f"refused: {g['architecture']}: {g['off_blocks']}: export it in fp32, or --quantize int8"
              if not on_blocks else
              "every quantized tensor keeps its blocks" if not g["dequantized_types"] else
              f"dequantised to fp32: {', '.join(g['dequantized_types'])}; the other quantized tensors keep their "
              "blocks")
    grouped = g.get("fp32_with_group") or {}
    if on_blocks and grouped:
        blocks += ("; except " + ", ".join(f"{n} {t}" for t, n in grouped.items()) + " in fp32 (exact): their q/k/v "
                   "or gate/up product also holds a tensor without blocks")
    tok = g["tokenizer"]
    pre = f" / {tok['pre']}" if tok.get("pre") else ""
    arch = (f"{g['architecture']}: onnxlm exports it as a reranker, in fp32 (it scores query/document pairs: "
            "model.rerank, onnxlm serve's /rerank)" if g["exported"] and g.get("reranker") else
            f"{g['architecture']}: onnxlm exports it as an embedding model, in fp32 (it only embeds: onnxlm embed)"
            if g["exported"] and g.get("embedding_only") else
            f"{g['architecture']}: onnxlm exports it" if g["exported"] else
            f"{g['architecture']}: onnxlm does not export this file: {g['refused']}" if g.get("refused") else
            f"{g['architecture']}: onnxlm does not export it (it exports {exported_architectures()})")
    runs = g["exported"] and tok["supported"]
    from onnxlm.export.export_resources import export_needs

    memory, disk = export_needs(g["parameters"], g["bytes"], blocks_kept=on_blocks)
    needs = f"{_size(memory)} of memory and {_size(disk)} of disk at the least, once"
    from onnxlm.export.gguf_artifact import is_outdated
    from onnxlm.export.gguf_cache import first_export_running

    artifact = (f"{artifact_dir} (described below)" if cached else
                f"being exported now by another run, into {artifact_dir} (`onnxlm cache` shows its scratch so far)"
                if runs and first_export_running(artifact_dir) else
                f"{artifact_dir} was exported by an earlier onnxlm whose export has changed since: the next run of a "
                f"command on this file exports it again ({needs})" if runs and is_outdated(artifact_dir) else
                f"not exported yet: the first run of a command on this file (onnxlm generate, chat, serve, ...) "
                f"exports it into {artifact_dir} ({needs})" if runs else "none: onnxlm cannot run this file")
    out = [path,
           f"  GGUF file       {_size(g['bytes'])} (version {g['version']})"
           + (f", split into {g['files']} files" if g.get("files", 1) > 1 else "")
           + (f", general.name {g['name']!r}" if g.get("name") else ""),
           f"  architecture    {arch}",
           f"  shape           {g['layers']} layers, hidden {g['hidden']}, context length {g['context_length']}",
           f"  parameters      {g['parameters'] / 1e6:.1f} M in {sum(g['tensor_types'].values())} tensors: {types}",
           f"  --quantize gguf {blocks}",
           f"  tokenizer       {tok['model']}{pre}, "
           f"{tok['tokens']:,} tokens: {tok['why']}" + ("" if tok["supported"] else " (not supported)"),
           f"  chat template   {'yes' if g['chat_template'] else 'no'}",
           f"  artifact        {artifact}"]
    return "\n".join(out)


def _forced_note(quant: dict) -> str:
    """' (below the quality thresholds: forced)' when ``--force-quality`` let a variant through the gate, '' when it
    passed (forced or not); export/quality.py's own test (numpy only: no torch)."""
    from onnxlm.export.quality import quality_failures

    q = quant.get("quality")
    if not quant.get("forced") or not q:
        return ""
    return " (below the quality thresholds: forced)" if quality_failures(q) else ""


def _ppl(perplexity: float | None) -> str:
    """A recorded perplexity -> text (None: past float64's range, export/quality.py)."""
    return "inf (overflow)" if perplexity is None else f"{perplexity:.3f}"


def source_text(record) -> str:
    """A manifest's source record (docs/design.md) -> one line: name and short sha256, or name and file count; an
    older manifest's path string as it is."""
    if not isinstance(record, dict):
        return str(record)
    if "sha256" in record:
        splits = record.get("splits") or []
        return (f"{record.get('name')} (sha256 {record['sha256'][:12]}, {record.get('bytes')} bytes"
                + (f"; and {len(splits)} more files of its split set" if splits else "") + ")")
    return f"{record.get('name')} ({len(record.get('files', {}))} files)"


def _onnxruntime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _render(info: dict) -> str:
    out = [f"{info['path']}",
           f"  kind            {info['kind']} ({info['model_type']}), format_version {info['format_version']}"]
    if info.get("source"):
        out.append(f"  source          {source_text(info['source'])}")
    kv = f" (kv heads {info['num_kv_heads']})" if info.get("num_kv_heads") not in (None, info.get("num_heads")) \
        else ""
    out.append(f"  layers          {info['num_layers']}, heads {info['num_heads']}{kv}, head_dim {info['head_dim']}, "
               f"hidden {info['hidden_size']}")
    out.append(f"  vocab           {info['vocab_size']}, max positions "
               f"{info['max_positions'] if info['max_positions'] is not None else 'none (relative positions)'}")
    specials = {k: v for k, v in (info.get("special_tokens") or {}).items() if v not in (None, {})}
    out.append(f"  special tokens  {_kv(specials) or '-'}")
    embedding_only = info.get("kind") == "embedding"  # an encoder: no KV, nothing generated
    layout = "" if embedding_only else f", kv layout {info.get('kv_layout', 'plain')}"
    out.append(f"  dtype           {info['dtype']}, opset {info['opset']}{layout}")
    out.append(f"  chat template   {'yes' if info['chat_template'] else 'no'}")
    if info.get("embeddings"):
        out.append(f"  embeddings      {info['embeddings']}")
    if info.get("versions"):
        out.append(f"  exported with   {_kv(info['versions'])}")
    if info.get("requires"):
        narrowed = (f" (onnxruntime {_onnxruntime_version()} here counts a window one position wider: each is handed "
                    "to it one narrower)") if info.get("windows_narrowed") else ""
        out.append(f"  runs on         onnxruntime >= {info['requires']['onnxruntime']}{narrowed}")
    if info.get("cannot_load"):
        out.append(f"  not loaded      {info['cannot_load']}")
    val = info.get("validation")
    if val is None:
        out.append("  validation      none (exported with --no-validate)" if "validation" in info else "")
    else:
        of = " of the fp32 export" if info.get("quantization") else ""
        out.append(f"  validation      max|diff|{of} {_num(val.get('max_abs_diff'))} (tolerance {_num(val.get('tolerance'))})")
        for check in val.get("checks") or []:
            if isinstance(check, dict):
                name = check.get("name", "?")
                diff = check.get("max_abs_diff")
                ok = check.get("ok", check.get("passed"))
                out.append(f"    {name:<32} max|diff| {_num(diff)}" + ("" if ok is None else f"  {'ok' if ok else 'FAIL'}"))
            else:
                out.append(f"    {check}")
    quant = info.get("quantization")
    if quant:
        blocks = ("the file's own blocks" if quant.get("source_gguf")  # Q6_K's are of 16, Q4_K's of 32 ...
                  else f"block {quant['block_size']}")
        out.append(f"  quantization    {quant['scheme']} weight-only, {blocks}, accuracy level "
                   f"{quant['accuracy_level']}{_forced_note(quant)}")
        if quant.get("tensors"):  # quantize="gguf": which GGUF tensors kept their blocks, which run in fp32
            native = ", ".join(f"{t} {n}" for t, n in quant["tensors"].items())
            kept = ", ".join(f"{t} {n}" for t, n in (quant.get("fp32_tensors") or {}).items()) or "none"
            with_group = ", ".join(f"{t} {n}" for t, n in (quant.get("fp32_with_group") or {}).items())
            kept += f"; blocks in fp32 with such a tensor of their q/k/v or gate/up product: {with_group}" \
                if with_group else ""
            out.append(f"    GGUF blocks kept: {native}; fp32 (dequantised): {kept}; attention at accuracy level "
                       f"{quant.get('accuracy_level_attention', 1)}, 8-bit at {quant.get('accuracy_level_8bit', 4)}"
                       + (f"; two int8 passes: {', '.join(quant['two_pass'])}" if quant.get("two_pass") else ""))
        for key, label in (("source_gguf", "GGUF file"), ("source_fp32", "fp32 reference")):
            if quant.get(key):
                out.append(f"    {label:<14} {source_text(quant[key])}")
        head = quant.get("head")
        if head:  # quantize="int8"|"int4": the output head (and a tied embedding) in 8-bit blocks or fp32
            if head.get("quantized"):
                out.append(f"    output head    {head['tensor']} 8-bit, block {head['block_size']}, accuracy level "
                           f"{head['accuracy_level']}, {head['passes']} pass(es)"
                           + ("; tied embedding reads the same codes (stored once)" if head.get("tied") else ""))
            else:
                out.append(f"    output head    {head.get('tensor') or '?'} fp32 ({head.get('reason')})")
        if quant.get("matmul_nbits") is not None:
            out.append(f"    MatMulNBits    {quant['matmul_nbits']}; fp32 weights: "
                       f"{', '.join(quant.get('fp32_weights') or []) or 'none'}")
        q = quant.get("quality")
        if q:
            kl = (f", mean KL {q['mean_kl']:.5f} (max {q['max_mean_kl']})" if q.get("mean_kl") is not None
                  else "")  # artifacts quantized before the KL measure lack it
            out.append(f"    vs fp32        top-1 agreement {q['top1_agreement']:.4f} (min {q['min_top1_agreement']}), "
                       f"perplexity {_ppl(q['perplexity'])} vs {_ppl(q['perplexity_fp32'])} "
                       f"(max +{q['max_perplexity_increase']:.1%}){kl}, {q['tokens']} tokens of {q['text']}"
                       + (f" (sha256 {q['text_sha256'][:12]})" if q.get("text_sha256") else ""))
        else:
            out.append("    vs fp32        not measured (forced without a tokenizer)")
    if not embedding_only:
        out.append(f"  generation      {_kv(info['generation_config']) or 'transformers defaults'}")
    out.append(f"  provider        {info['provider'] or '-'}")
    for role, g in info["graphs"].items():
        out.append(f"  graph {role} ({g['file']})")
        for kind in ("inputs", "outputs"):
            for a in g.get(kind, []):
                arrow = "in " if kind == "inputs" else "out"
                out.append(f"    {arrow} {a['name']:<36} {a['type']:<16} {_shape(a['shape'])}")
    total = sum(info["files"].values())
    out.append(f"  files ({_size(total)} in all)")
    for name, size in info["files"].items():
        out.append(f"    {name:<40} {_size(size):>10}")
    return "\n".join(line for line in out if line)


def _kv(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())


def _num(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else str(x)


def _shape(shape) -> str:
    return "?" if shape is None else "[" + ", ".join(str(s) for s in shape) + "]"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)

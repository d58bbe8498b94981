"""On a GPU host: onnxlm's CUDA path (plain artifacts) against transformers' references computed elsewhere
(prepare.py's refs.npz) and against onnxruntime's CPU provider on the same host. Prints one JSON document and writes
it to OUT/result.json.

    python scripts/cuda_check/run.py DIR [OUT]     # DIR: prepare.py's output; onnxruntime-gpu and onnxlm installed

Any other artifact in DIR (a real-size plain export, e.g. `onnxlm export SmolLM2.gguf DIR/smollm2-plain
--kv-layout plain`) is compared with the CPU provider and timed on both. DEVCHECK_PROVIDER=cpu runs the same checks
on the CPU (a dry run). Run it outside the checkout or with onnxlm
installed (the checkout's onnxlm/ folder alone does not import onnxlm.runtime). docs/design.md, "CUDA", has what it
printed on an H200.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

MODELS = ("tiny-gpt2", "tiny-llama", "tiny-t5")
PORT = 8123


def environment() -> dict:
    """onnxruntime's version, file and providers (its CUDA libraries preloaded from the host's nvidia packages), the
    GPU, and which onnxlm is imported."""
    res = {"ort": ort.__version__, "file": ort.__file__, "available": ort.get_available_providers()}
    try:
        ort.preload_dlls()
        res["preload_dlls"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported
        res["preload_dlls"] = repr(e)
    try:
        res["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError as e:
        res["nvidia_smi"] = repr(e)
    import onnxlm

    res["onnxlm"] = onnxlm.__file__
    return res


def maxdiff(a, b) -> float:
    """Largest |a - b| (float64)."""
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def check(art: Path, provider: str) -> dict:
    """One tiny artifact on ``provider`` against its refs.npz and against the CPU provider."""
    name = art.name
    ref = dict(np.load(art / "refs.npz"))
    out = {}
    import onnxlm

    cuda = onnxlm.load(art, provider=provider)
    cpu = onnxlm.load(art, provider="cpu")
    runners = [getattr(cuda, a) for a in ("encoder", "decoder") if hasattr(cuda, a)]
    out["session_providers"] = [r.session.get_providers() for r in runners]
    out["io_binding"] = [r.io_binding for r in runners]
    ids, mask = ref["ids"], ref["mask"]
    t5 = name == "tiny-t5"
    # 1. logits: start (and three steps for decoder-only) vs transformers, and vs the CPU provider
    state, logits = cuda.start(ids, mask)
    _, logits_cpu = cpu.start(ids, mask)
    out["start_vs_cpu"] = maxdiff(logits, logits_cpu)
    if t5:
        out["start_vs_transformers"] = maxdiff(logits, ref["start_logits"])
    else:
        diffs = [maxdiff(logits, ref["step_logits"][0])]
        for k, tok in enumerate(ref["steps"]):
            diffs.append(maxdiff(state.advance(tok), ref["step_logits"][k + 1]))
        out["steps_vs_transformers"] = diffs
        # scores: per-token log-probs of each row's real tokens vs transformers' log-softmax
        rows = [list(map(int, r[m == 1])) for r, m in zip(ids, mask)]
        sc = cuda.score(rows)
        want = [ref["token_logprobs"][i][-(len(r) - 1):] for i, r in enumerate(rows)]
        out["score_vs_transformers"] = max(maxdiff(a, b) for a, b in zip(sc.token_logprobs, want))
    # 2. greedy and beam ids equal to transformers' generate (left-padded batch / padded sources)
    g = cuda.generate(ids, attention_mask=mask, max_new_tokens=8 if not t5 else 6, eos_token_id=[])
    out["greedy_equal"] = bool(np.array_equal(g.sequences, ref["greedy"]))
    b = cuda.generate(ids, attention_mask=mask, num_beams=4, max_new_tokens=6, eos_token_id=[])
    out["beam4_equal"] = bool(np.array_equal(b.sequences, ref["beam4"]))
    if not out["beam4_equal"]:
        out["beam4_got"], out["beam4_want"] = b.sequences.tolist(), ref["beam4"].tolist()
    # 3. sampling with a seed: the draws read host logits, so the CUDA run should draw what the CPU one drew
    s = cuda.generate(ids, attention_mask=mask, do_sample=True, top_k=20, seed=7, max_new_tokens=8, eos_token_id=[])
    out["sample_equal_cpu"] = bool(np.array_equal(s.sequences, ref["cpu_sample"]))
    # 4. a stream closed early
    stream = cuda.stream(ids[:1], attention_mask=mask[:1], max_new_tokens=6, eos_token_id=[])
    it = iter(stream)
    got = [next(it) for _ in range(3)]
    stream.close()
    out["stream_steps"] = len(got)
    # 5. speed, batch 8 greedy, 32 new tokens (tiny model: overheads only)
    rng = np.random.default_rng(3)
    big = rng.integers(3, cuda.vocab_size - 4, size=(8, 16)).astype(np.int64)
    for label, m in (("cuda", cuda), ("cpu", cpu)):
        m.generate(big, max_new_tokens=4, eos_token_id=[])
        t0 = time.perf_counter()
        m.generate(big, max_new_tokens=33, eos_token_id=[])
        t1 = time.perf_counter()
        m.generate(big, max_new_tokens=1, eos_token_id=[])
        t2 = time.perf_counter()
        out[f"ms_per_step_b8_{label}"] = round(((t1 - t0) - (t2 - t1)) / 32 * 1e3, 3)
    return out


def decode_times(model, batch: int, prompt: int, new: int = 33) -> tuple[float, float]:
    """Greedy on random ids [batch, prompt] -> (ms per decode step, ms to the first token), from t(new) - t(1)."""
    ids = np.random.default_rng(4).integers(min(100, model.vocab_size // 4), max(model.vocab_size - 100, model.vocab_size // 2),
                                            size=(batch, prompt)).astype(np.int64)
    model.generate(ids, max_new_tokens=4, eos_token_id=[])
    t = []
    for n in (1, new, 1, new):
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=n, eos_token_id=[])
        t.append(time.perf_counter() - t0)
    one, many = min(t[0], t[2]), min(t[1], t[3])
    return round((many - one) / (new - 1) * 1e3, 3), round(one * 1e3, 2)


def real_model_check(art: Path, provider: str) -> dict:
    """A real-size plain artifact (e.g. SmolLM2-135M fp32): ``provider`` against the CPU provider on a left-padded
    batch (logits at the start and after 4 steps, greedy ids), and its speed on both."""
    import onnxlm

    dev, cpu = onnxlm.load(art, provider=provider), onnxlm.load(art, provider="cpu")
    rng = np.random.default_rng(5)
    lengths = [40, 12, 27]
    low, high = min(100, dev.vocab_size // 4), max(dev.vocab_size - 100, dev.vocab_size // 2)  # ordinary token ids
    ids = np.full((3, 40), dev.pad_id, np.int64)
    mask = np.zeros((3, 40), np.int64)
    for i, n in enumerate(lengths):
        ids[i, 40 - n:] = rng.integers(low, high, size=n)
        mask[i, 40 - n:] = 1
    (sd, ld), (sc, lc) = dev.start(ids, mask), cpu.start(ids, mask)
    diffs = [maxdiff(ld, lc)]
    for t in range(4):
        tok = np.argmax(lc, -1).astype(np.int64)
        ld, lc = sd.advance(tok), sc.advance(tok)
        diffs.append(maxdiff(ld, lc))
    out = {"layers": dev.manifest.get("num_layers"), "logits_vs_cpu": diffs, "max_abs_logit": float(np.abs(lc).max())}
    g_dev = dev.generate(ids, attention_mask=mask, max_new_tokens=24, eos_token_id=[]).sequences
    g_cpu = cpu.generate(ids, attention_mask=mask, max_new_tokens=24, eos_token_id=[]).sequences
    out["greedy_equal_cpu"] = bool(np.array_equal(g_dev, g_cpu))
    for label, m in ((provider, dev), ("cpu", cpu)):
        for batch, prompt in ((1, 16), (1, 512), (8, 16), (32, 16)):
            if m.max_positions and prompt + 33 > m.max_positions:
                continue
            step, first = decode_times(m, batch, prompt)
            out[f"{label} b{batch} p{prompt}"] = {"ms_per_step": step, "first_token_ms": first,
                                                  "tokens_per_s": round(batch * 1e3 / step, 1)}
    return out


def server_check(art: Path, provider: str) -> dict:
    """`onnxlm serve --provider PROVIDER` on ``art``: 8 greedy completions one at a time, then the same 8 at once
    (one continuous batch); statuses, whether both gave the same texts, the server's log tail."""
    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "onnxlm", "serve", str(art), "--provider", provider, "--port",
                             str(PORT), "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd="/tmp")  # not a checkout: its onnxlm/ folder would shadow the install
    out = {}
    try:
        for _ in range(120):
            try:
                if httpx.get(f"http://127.0.0.1:{PORT}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        prompts = [f"row {i} says" + " hello" * i for i in range(8)]

        def ask(p):
            r = httpx.post(f"http://127.0.0.1:{PORT}/v1/completions", timeout=60,
                           json={"model": art.name, "prompt": p, "max_tokens": 8, "temperature": 0})
            return r.status_code, r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

        seq = [ask(p) for p in prompts]
        with ThreadPoolExecutor(8) as pool:
            conc = list(pool.map(ask, prompts))
        out.update(statuses=sorted({s for s, _ in seq + conc}), concurrent_equal_sequential=seq == conc,
                   sample=seq[:2])
    finally:
        proc.terminate()
        try:
            log = proc.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            log = proc.communicate()[0]
        out["log_tail"] = log[-1500:]
    return out


def main(here: Path, out: Path, provider: str) -> dict:
    res = environment()
    for name in MODELS:
        try:
            res[name] = check(here / name, provider)
        except Exception:  # noqa: BLE001 - reported per model
            res[name] = {"error": traceback.format_exc()[-3000:]}
    for art in sorted(p for p in here.iterdir() if (p / "onnxlm.json").is_file() and p.name not in MODELS):
        try:  # any other artifact in DIR: a real-size one, checked against the CPU and timed
            res[art.name] = real_model_check(art, provider)
        except Exception:  # noqa: BLE001
            res[art.name] = {"error": traceback.format_exc()[-3000:]}
    try:
        res["server"] = server_check(here / "tiny-gpt2", provider)
    except Exception:  # noqa: BLE001
        res["server"] = {"error": traceback.format_exc()[-3000:]}
    text = json.dumps(res, indent=1, default=str)
    print(text)
    (out / "result.json").write_text(text)
    return res


if __name__ == "__main__":
    here = Path(sys.argv[1]).resolve()
    main(here, Path(sys.argv[2]) if len(sys.argv) > 2 else here,
         os.environ.get("DEVCHECK_PROVIDER", "cuda"))  # "cpu": a dry run where CUDA is missing

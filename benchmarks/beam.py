"""Where a beam-search step goes: graph run vs. each piece of the numpy bookkeeping (issue 9, beam 4 ms/token).

Times ``generate(num_beams=4)`` on a fused artifact (default: GPT-2 small, random weights from GPT2Config() with
torch seed 0, exported once into --work) and splits the wall time of the decode steps into the graph run
(``run_with_iobinding``), the rest of ``state.advance`` (binding, ensure), ``state.select`` (the KV reorder; the one
select that repeats the prompt's rows for the beams is its own piece) and the pieces of runtime/decoding/beam.py
(log_softmax, processors, top-k + gather, stopping, next running beams, finished store, heuristic; "not in a
piece" is what is left: the accumulate, the loop's own reshapes). A greedy generate at
batch = num_beams on the same model is timed alongside (its step is the graph run at that batch plus greedy's own
bookkeeping), so "beam step - greedy step" is the beam overhead.

Runs alternate (greedy, beam[, beam at --baseline], greedy, ...) in one process; the table reports the median over
--repeats of each piece's ms per decode step. --baseline GITREF swaps in that ref's beam loop, KV select and
log_softmax for its column (and checks both give the same ids and scores). Timings on a shared machine are noisy:
label them as under load.

    .venv/bin/python -m benchmarks.beam --repeats 5                       # GPT-2 small, random weights
    .venv/bin/python -m benchmarks.beam --model models/NAME --baseline HEAD~3  # an artifact; against a ref
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def export_gpt2_small(work: Path) -> Path:
    """GPT-2 small with random weights (GPT2Config(), torch seed 0) -> a fused onnxlm artifact under ``work``."""
    out = work / "onnxlm"
    if (out / "onnxlm.json").is_file():
        return out
    import torch
    import transformers as tf

    from onnxlm.export import export_model

    torch.manual_seed(0)
    hf = work / "hf"
    tf.GPT2LMHeadModel(tf.GPT2Config()).eval().save_pretrained(hf)
    return Path(export_model(hf, out, progress=False))


def load_baseline(ref: str):
    """The beam loop, KV buffer select and log_softmax as of git ``ref`` -> (its beam module, [(owner, attribute,
    function)] to swap in): the runtime's own modules stay imported; each swapped function runs its ref's code. The
    ref must have the runtime's sub-package layout (runtime/fused/: from the structure change of 2026-12-03 on)."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    root = Path(__file__).resolve().parents[1]
    tmp = Path(tempfile.mkdtemp(prefix="bench-beam-"))
    mods = {}
    for name, rel, package in [("processors", "runtime/processors.py", "onnxlm.runtime"),
                               ("kv_buffers", "runtime/fused/kv_buffers.py", "onnxlm.runtime.fused"),
                               ("fused_seq2seq", "runtime/fused/seq2seq_lm.py", "onnxlm.runtime.fused"),
                               ("beam", "runtime/decoding/beam.py", "onnxlm.runtime.decoding")]:
        src = subprocess.run(["git", "-C", str(root), "show", f"{ref}:{rel}"], check=True, capture_output=True,
                             text=True).stdout
        (tmp / f"{name}.py").write_text(src)
        full = f"{package}._baseline_{name}"
        spec = importlib.util.spec_from_file_location(full, tmp / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
        mods[name] = mod
    mods["beam"].log_softmax = mods["processors"].log_softmax
    from onnxlm.runtime.fused import kv_buffers
    from onnxlm.runtime.fused import seq2seq_lm as fused_seq2seq
    from onnxlm.runtime.decoding import beam
    return mods["beam"], [(beam, "beam_search", mods["beam"].beam_search),
                          (kv_buffers.KVBuffers, "select", mods["kv_buffers"].KVBuffers.select),
                          (fused_seq2seq.FusedSeq2SeqState, "select", mods["fused_seq2seq"].FusedSeq2SeqState.select)]


def swapped(swaps):
    """Swap the given attributes in -> undo()."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in swaps]
    for owner, name, fn in swaps:
        setattr(owner, name, fn)

    def undo():
        for owner, name, fn in saved:
            setattr(owner, name, fn)
    return undo


class Timers:
    """name -> list of per-call seconds of the current run."""

    def __init__(self):
        self.t = defaultdict(float)

    def wrap(self, name, fn):
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.t[name] += time.perf_counter() - t0
        return timed


def instrument(model, timers: Timers, baseline_beam=None, labels=None):
    """Patch the beam module's pieces (and the baseline's), the state's select/advance and the session's run with
    timers; -> undo(). ``labels`` gets {(owner, attribute): label} of what was patched."""
    from onnxlm.runtime import model as model_mod
    from onnxlm.runtime.decoding import beam

    undo = []

    def patch(obj, name, label):
        labels[(obj, name)] = label
        orig = getattr(obj, name)
        setattr(obj, name, timers.wrap(label, orig))
        undo.append(lambda: setattr(obj, name, orig))

    for name, label in [("log_softmax", "log_softmax"), ("_top_k_continuations", "top-k + gather"),
                        ("_stopping_hits", "stopping"), ("_next_running_beams", "next running"),
                        ("_update_finished_beams", "finished store"), ("_early_stop_heuristic", "heuristic"),
                        ("_has_unfinished", "heuristic")]:
        for mod in (beam, baseline_beam):
            if mod is not None and hasattr(mod, name):
                patch(mod, name, label)
    orig_build = model_mod.build_processors

    def build(*a, **k):
        p = orig_build(*a, **k)
        return None if p is None else timers.wrap("processors", p)
    model_mod.build_processors = build
    undo.append(lambda: setattr(model_mod, "build_processors", orig_build))
    state_cls = type(model.start(np.zeros((1, 2), np.int64), np.ones((1, 2), np.int64))[0])
    patch(state_cls, "select", "select (KV reorder)")
    patch(state_cls, "advance", "advance")
    session = model.decoder.session
    session.run_with_iobinding = timers.wrap("graph run", session.run_with_iobinding)
    undo.append(lambda: delattr(session, "run_with_iobinding"))

    def restore():
        for u in reversed(undo):
            u()
    return restore


def run_once(model, ids, new_tokens, num_beams, timers):
    """One generate; -> (seconds after the prefill, pieces in seconds, decode steps, the GenerationResult)."""
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, num_beams=num_beams)
    timers.t.clear()
    start = model.start

    t_start = []

    def timed_start(*a, **k):  # the prefill is not a decode step: neither its time nor its pieces count
        before, t0 = dict(timers.t), time.perf_counter()
        out = start(*a, **k)
        t_start.append(time.perf_counter() - t0)
        timers.t.clear()
        timers.t.update(before)
        return out
    expand = model._start_expanded

    def timed_expand(*a, **k):  # the select that repeats the prompt's rows for the beams: its own piece
        before = timers.t["select (KV reorder)"]
        out = expand(*a, **k)
        timers.t["beam expansion (select)"] += timers.t["select (KV reorder)"] - before
        timers.t["select (KV reorder)"] = before
        return out
    model.start, model._start_expanded = timed_start, timed_expand
    try:
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=np.ones_like(ids), **kw)
        total = time.perf_counter() - t0
    finally:
        del model.start, model._start_expanded
    steps = new_tokens - 1  # the first new token comes from the prefill's logits
    return total - sum(t_start), dict(timers.t), steps, out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.beam", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="a fused onnxlm artifact (default: export GPT-2 small into --work)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "onnxlm-bench-beam-gpt2",
                   help="export dir for the default model (default: onnxlm-bench-beam-gpt2 in the temp folder)")
    p.add_argument("--prompt", type=int, default=16, help="prompt tokens (default 16)")
    p.add_argument("--new-tokens", type=int, default=24, help="new tokens (default 24)")
    p.add_argument("--beams", type=int, default=4, help="num_beams (default 4); greedy runs at this batch")
    p.add_argument("--repeats", type=int, default=5, help="alternating runs of each (default 5), after one warm-up")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: onnxlm's)")
    p.add_argument("--baseline", metavar="GITREF", help="also time beam search with the beam loop, KV select and "
                   "log_softmax of this git ref (e.g. HEAD~3), alternating with the working tree's")
    args = p.parse_args(argv)

    import onnxlm

    path = args.model or export_gpt2_small(args.work)
    kw = {"threads": args.threads} if args.threads else {}
    model = onnxlm.load(str(path), provider="cpu", **kw)
    rng = np.random.default_rng(0)
    V = model.vocab_size
    prompt = rng.integers(3, min(V, 30000), (1, args.prompt))
    greedy_ids = rng.integers(3, min(V, 30000), (args.beams, args.prompt))
    baseline_beam, swaps = load_baseline(args.baseline) if args.baseline else (None, None)
    timers, labels = Timers(), {}
    restore = instrument(model, timers, baseline_beam, labels)
    if swaps:  # a swapped-in method the probe times (the T5 state's select) is timed under the same label
        swaps = [(o, n, timers.wrap(labels[(o, n)], f) if (o, n) in labels else f) for o, n, f in swaps]
    runs = [("greedy b" + str(args.beams), greedy_ids, 1, None), ("beam " + str(args.beams), prompt, args.beams, None)]
    if swaps:
        runs.append((f"beam {args.beams} @{args.baseline}", prompt, args.beams, swaps))
    rows = {label: defaultdict(list) for label, *_ in runs}
    seqs = {}
    try:
        for r in range(args.repeats + 1):
            for label, ids, nb, swap in runs:
                undo = swapped(swap) if swap else None
                try:
                    decode, pieces, steps, out = run_once(model, ids, args.new_tokens, nb, timers)
                finally:
                    if undo:
                        undo()
                seqs.setdefault(label, out)
                if r == 0:
                    continue  # warm-up
                rows[label]["step total"].append(decode / steps)
                for name, sec in pieces.items():
                    rows[label][name].append(sec / steps)
    finally:
        restore()
    ms = lambda xs: 1e3 * statistics.median(xs) if xs else float("nan")  # noqa: E731
    print(f"model {path}; prompt {args.prompt}, {args.new_tokens} new tokens, beams {args.beams}, "
          f"median of {args.repeats} alternating runs; ms per decode step (all rows)")
    names = ["step total", "graph run", "advance", "beam expansion (select)", "select (KV reorder)", "log_softmax", "processors",
             "top-k + gather", "stopping", "next running", "finished store", "heuristic"]
    labels = [label for label, *_ in runs]
    print(f"{'piece':26s}" + "".join(f"{label:>20s}" for label in labels))
    for name in names:
        print(f"{name:26s}" + "".join(f"{ms(rows[label].get(name)):20.2f}" for label in labels))
    for label in labels:
        pieces = sum(statistics.median(v) for k, v in rows[label].items() if k not in ("step total", "graph run"))
        print(f"{'not in a piece':26s} {label}: {1e3 * (statistics.median(rows[label]['step total']) - pieces):.2f}")
    print("(advance includes graph run; the beam expansion is the one select after the prefill, spread over the "
          "steps; the prefill itself is not counted)")
    if swaps:
        a, b = seqs[labels[1]], seqs[labels[2]]
        same = a.sequences.shape == b.sequences.shape and (a.sequences == b.sequences).all() and \
            np.abs(a.sequences_scores - b.sequences_scores).max() <= 1e-4
        print(f"beam ids and scores: working tree {'==' if same else '!='} {args.baseline}")


if __name__ == "__main__":
    main()

"""benchmarks/peers' machinery on tiny inputs: case parsing, the profile's op-type shares, the TARGETS rows, the
floors, and one onnxlm worker process on the tiny GPT-2 (its greedy ids are onnxlm's own). No timing is asserted.
(The repository root is on pytest's pythonpath: benchmarks/ is a source-checkout folder, not part of the package.)"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.peers import floors, op_profile, prepare, report, runner, targets
from benchmarks.peers.results import ModelRun, merge_rounds, round_ratios


def test_parse_cases():
    cases = runner.parse_cases(["b1:p16:greedy", "b8:p512:beam4"])
    assert cases == [{"key": "b1:p16:greedy", "batch": 1, "prompt": 16, "mode": "greedy"},
                     {"key": "b8:p512:beam4", "batch": 8, "prompt": 512, "mode": "beam4"}]
    with pytest.raises(SystemExit, match="bB:pP:MODE"):
        runner.parse_cases(["b1:p16:topk"])


def test_op_shares_leave_out_the_prefill(tmp_path):
    # one session: a prefill run (0-100 us) and two decode runs; kernels of the prefill must not count
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
              {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 50, "args": {"op_name": "MatMul"}},
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 40},
              {"cat": "Node", "name": "b_kernel_time", "ts": 210, "dur": 20, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "b_fence_before", "ts": 209, "dur": 1, "args": {"op_name": "MatMul"}},
              {"cat": "Node", "name": "c_kernel_time", "ts": 230, "dur": 10, "args": {"op_name": "Add"}},
              {"cat": "Session", "name": "model_run", "ts": 300, "dur": 60},
              {"cat": "Node", "name": "d_kernel_time", "ts": 310, "dur": 40, "args": {"op_name": "MatMul"}}]
    f = tmp_path / "profile.json"
    f.write_text(json.dumps(events))
    shares = op_profile._op_shares([str(f)])
    assert shares["run_ms_per_step"] == pytest.approx(0.05)  # (40 + 60) us over 2 decode runs
    assert shares["ops_ms_per_step"] == pytest.approx({"MatMul": 0.03, "Add": 0.005})
    assert list(shares["ops_ms_per_step"]) == ["MatMul", "Add"]  # largest first


def _run(key, results, quality=None, roles=None):
    prep = prepare.Prepared(key, key, Path("."), Path("."), False,
                          [prepare.EngineSpec(label, "onnxlm") for label in results], 0, 2048, None, roles or {})
    cases = {label: {"cases": {k: {"ms_per_token": ms, "ttft_ms": 10 * ms, "tokens_per_s": 1e3 / ms}
                               for k, ms in per_case.items()}} for label, per_case in results.items()}
    return ModelRun(prep, cases, quality or {})


def test_targets_are_computed_from_the_runs():
    cases = runner.parse_cases(["b1:p16:greedy", "b1:p512:greedy", "b4:p16:greedy", "b1:p16:beam4"])
    smol = _run("smollm2", {
        "onnxlm fp32": {"b1:p16:greedy": 20.0, "b1:p512:greedy": 30.0, "b4:p16:greedy": 25.0, "b1:p16:beam4": 8.0},
        "CTranslate2 float32": {"b1:p16:greedy": 40.0, "b1:p512:greedy": 30.0, "b4:p16:greedy": 50.0,
                                "b1:p16:beam4": 10.0},
        "onnxlm int4": {"b1:p16:greedy": 9.0}},
        quality={"onnxlm int4": {"agreement": 0.98, "perplexity": 20.2, "perplexity_fp32": 20.0}},
        roles={"default": "onnxlm int4"})
    rows = {r[0]: r for r in targets.targets({"smollm2": smol}, cases, 8, 0.12, True)}
    assert rows["fp32 b1: onnxlm ms/token / CTranslate2 f32, SmolLM2 (prompt 16)"][1:] == ("0.50×", "<= 0.8×", "met")
    assert rows["long context: onnxlm ms/token at 512 / at 16, SmolLM2"][1:] == ("1.50×", "<= 1.2×", "**missed**")
    assert rows["long context: onnxlm ms/token / CTranslate2 f32 at 512, SmolLM2"][3] == "**missed**"
    assert rows["batch 4 tokens/s: onnxlm fp32 / CTranslate2 f32, SmolLM2"][1:] == ("2.00×", ">= 1.3×", "met")
    assert rows["beam 4 ms/token: onnxlm fp32 / CTranslate2 f32, SmolLM2"][3] == "met"  # 0.8 exactly
    assert rows["quantized SmolLM2 (onnxlm int4): top-1 agreement with fp32"][1:] == ("98.0%", ">= 97.5%", "met")
    assert rows["quantized SmolLM2 (onnxlm int4): perplexity increase"][3] == "**missed**"  # +1.0%
    assert rows["quantized SmolLM2 (onnxlm int4): ms/token / onnxlm fp32 (prompt 16)"][1] == "0.45×"
    assert rows["quantized SmolLM2 (onnxlm int4): ms/token / llama.cpp (GGUF blocks) (prompt 16)"][3] == \
        "not measured"
    assert rows["fp32 b1: onnxlm ms/token / CTranslate2 f32, GPT-2 small (prompt 16)"][3] == "not measured"
    assert rows["`import onnxlm` (median of 5 fresh processes)"][1:] == ("0.120 s", "< 0.3 s", "met")


def _worker_result(ms, ttft, peak, **extra):
    return {"load_s": 1.0, "peak_rss_mb": peak, "cases": {"b1:p16:greedy": {
        "ms_per_token": ms, "ttft_ms": ttft, "tokens_per_s": 1e3 / ms, "ids": [[1, 2]], **extra}}}


def test_rounds_merge_to_medians_and_ratios_pair_each_round():
    """--rounds: medians over the rounds, each round's figures kept, the highest peak, the first round's agreement;
    ratios taken within a round (not of the medians); a round that failed is left out."""
    ours = [_worker_result(5.0, 100.0, 250.0), _worker_result(7.0, 90.0, 260.0),
            _worker_result(6.0, 120.0, 255.0)]
    ours[0]["quality"] = {"top1": [1], "logp": [-0.1]}
    peer = [_worker_result(5.0, 200.0, 160.0), {"note": "worker timed out after 1800 s"},
            _worker_result(8.0, 150.0, 170.0), _worker_result(6.0, 300.0, 165.0)]
    m = merge_rounds(ours)
    assert m["cases"]["b1:p16:greedy"]["ms_per_token"] == 6.0 and m["cases"]["b1:p16:greedy"]["ttft_ms"] == 100.0
    assert m["cases"]["b1:p16:greedy"]["rounds"] == [[5.0, 100.0], [7.0, 90.0], [6.0, 120.0]]
    assert m["peak_rss_mb"] == 260.0 and m["quality"] == {"top1": [1], "logp": [-0.1]} and m["rounds"] == 3
    p = merge_rounds(peer)
    assert p["rounds"] == 3 and p["cases"]["b1:p16:greedy"]["ms_per_token"] == 6.0
    assert merge_rounds([{"note": "x"}, {"note": "y"}]) == {"note": "x"}
    run = _run("smollm2", {"onnxlm gguf": {}, "llama.cpp (GGUF blocks)": {}})
    run.results = {"onnxlm gguf": m, "llama.cpp (GGUF blocks)": p}
    ratios = round_ratios(run, "onnxlm gguf", "llama.cpp (GGUF blocks)", "b1:p16:greedy")
    assert ratios == [[1.0, 0.5], [7.0 / 8.0, 90.0 / 150.0], [1.0, 0.4]]
    table = report.rounds_table(run, runner.parse_cases(["b1:p16:greedy"]))
    assert "| onnxlm gguf | b1:p16:greedy | 5.0, 7.0, 6.0 | 100, 90, 120 | 1.00, 0.88, 1.00 (1.00) | " \
           "0.50, 0.60, 0.40 (0.50) |" in table
    assert "| llama.cpp (GGUF blocks) | b1:p16:greedy | 5.0, 8.0, 6.0 | 200, 150, 300 | – | – |" in table
    assert report.rounds_table(_run("smollm2", {"onnxlm gguf": {"b1:p16:greedy": 5.0}}),
                               runner.parse_cases(["b1:p16:greedy"])) == []  # one round: no table


def test_rounds_take_turns(monkeypatch, tmp_path):
    """run_rounds: the engines alternate within each round, timed without the agreement windows; then one
    agreement-only worker each (no cases), whose figures join the merged result."""
    calls = []

    def fake_worker(eng, prep, cases, prompts, windows, args, tmp):
        calls.append((eng.label, len(cases), bool(windows)))
        if windows:
            return {"load_s": 1.0, "peak_rss_mb": 999.0, "cases": {}, "quality": {"top1": [7], "logp": [-1.0]},
                    "worker_s": 1.0}
        return {**_worker_result(float(len(calls)), 10.0, 100.0), "worker_s": 1.0}
    monkeypatch.setattr(runner, "run_worker", fake_worker)
    engines = [prepare.EngineSpec("onnxlm gguf", "onnxlm"), prepare.EngineSpec("llama.cpp (GGUF blocks)", "llamacpp")]
    prep = prepare.Prepared("smollm2", "smollm2", Path("."), Path("."), False, engines, 0, 2048, None, {})
    args = type("Args", (), {"rounds": 2})()
    cases = runner.parse_cases(["b1:p16:greedy"])
    out = runner.run_rounds(engines, prep, cases, {}, [[1, 2, 3]], args, tmp_path)
    assert calls == [("onnxlm gguf", 1, False), ("llama.cpp (GGUF blocks)", 1, False), ("onnxlm gguf", 1, False),
                     ("llama.cpp (GGUF blocks)", 1, False), ("onnxlm gguf", 0, True),
                     ("llama.cpp (GGUF blocks)", 0, True)]
    assert out["onnxlm gguf"]["cases"]["b1:p16:greedy"]["rounds"] == [[1.0, 10.0], [3.0, 10.0]]
    assert out["onnxlm gguf"]["quality"] == {"top1": [7], "logp": [-1.0]}
    assert out["onnxlm gguf"]["peak_rss_mb"] == 100.0  # the timed workers' peak, not the agreement pass's
    calls.clear()
    runner.run_rounds(engines, prep, cases, {}, [], type("Args", (), {"rounds": 1})(), tmp_path)
    assert calls == [("onnxlm gguf", 1, False), ("llama.cpp (GGUF blocks)", 1, False)]  # no windows: no pass


def test_onnxlm_worker_on_tiny_gpt2(tiny_gpt2, tmp_path):
    """One worker process: every case measured, greedy ids equal to onnxlm's own generate, quality tokens read."""
    import onnxlm

    prep = prepare.Prepared("tiny-gpt2", "tiny", Path(tiny_gpt2.hf_dir), Path(tiny_gpt2.onnx_dir), False, [], 256, 128,
                          None)
    eng = prepare.EngineSpec("onnxlm fp32", "onnxlm", str(tiny_gpt2.onnx_dir))
    cases = runner.parse_cases(["b1:p8:greedy", "b2:p8:greedy", "b1:p8:beam4", "b1:p8:sample"])
    prompts = {f"{c['batch']}x{c['prompt']}": runner.prompt_ids(prep.artifact, c["batch"], c["prompt"]).tolist()
               for c in cases}
    args = type("Args", (), {"threads": 1, "new_tokens": 4, "runs": 1, "worker_timeout": 300})()
    windows = runner.quality_windows(prep)
    res = runner.run_worker(eng, prep, cases, prompts, windows, args, tmp_path)
    assert "note" not in res, res
    assert set(res["cases"]) == {c["key"] for c in cases}
    for c in cases:
        r = res["cases"][c["key"]]
        assert r["shape"] == [c["batch"], 4] and r["ttft_ms"] > 0 and len(r["tn"]) == 1
    model = onnxlm.load(tiny_gpt2.onnx_dir, threads=1)
    ids = np.asarray(prompts["2x8"])
    expected = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False).sequences[:, 8:]
    assert res["cases"]["b2:p8:greedy"]["ids"] == expected.tolist()
    assert len(res["quality"]["top1"]) == sum(len(w) - 1 for w in windows) > 0
    assert res["load_s"] > 0 and res["peak_rss_mb"] >= 0


def test_floor_section_puts_each_figure_against_the_machine_limits(tmp_path):
    # a GPT-2-like config: 2 layers, hidden 8, vocab 10, 4 positions, tied head
    weights = 4 * (10 * 8 + 4 * 8 + 1000)  # the two tables + 1000 other fp32 weights
    run = _run("gpt2-small", {"onnxlm fp32": {"b1:p16:greedy": 2.0, "b1:p512:greedy": 3.0},
                                     "CTranslate2 float32": {"b1:p16:greedy": 4.0, "b1:p512:greedy": 5.0}})
    run.prep.config = {"model_type": "gpt2", "n_embd": 8, "n_layer": 2, "n_head": 2, "vocab_size": 10, "n_positions": 4}
    run.prep.engines[0].weight_bytes = weights
    assert floors._prefill_flops(run.prep, weights, 512) == 2 * 1000 * 512 + 2 * 2 * 512 * 512 * 8
    cases = runner.parse_cases(["b1:p16:greedy", "b1:p512:greedy"])
    rows = floors.floor_section({"gpt2-small": run}, cases, {"gb_per_s": weights / 1e9 / 1e-3, "gflops": 1.0})
    row = next(r for r in rows if r.startswith("| gpt2-small"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    floor_ms = 1.0  # weights / bandwidth = 1 ms
    prefill_ms = (2 * 1000 * 512 + 2 * 2 * 512 * 512 * 8) / 1e9 * 1e3
    assert cells[2] == f"{floor_ms:.1f}" and cells[3] == "3.2"  # 0.8 x CT2's 4.0 ms
    assert cells[4] == "2.0 (2.00x)" and cells[5] == "4.0 (4.00x)" and cells[6] == "–"  # no onnxruntime-genai run
    assert cells[7] == f"{prefill_ms:.0f}" and cells[8] == "40"  # 0.8 x CT2's 50 ms TTFT
    assert cells[9] == f"30 ({30 / prefill_ms:.2f}x) / 50 ({50 / prefill_ms:.2f}x)"
    assert floors.floor_section({"gpt2-small": run}, cases, {}) == []  # no probe figures: no section

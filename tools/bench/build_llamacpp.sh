#!/usr/bin/env bash
# Builds llama.cpp's llama-batched-bench as the batched-decoding peer, into
# .peers/ (git-ignored).
#
# The source is the PyPI sdist of llama-cpp-python (its vendor/llama.cpp):
# the network here reaches PyPI, not GitHub. cmake comes from PyPI too (a
# venv under .peers/) when there is none on the PATH. CPU only,
# -DGGML_NATIVE=ON (the same ISA as our build: AVX-512 here), OpenMP.
#
# Usage: bash tools/bench/build_llamacpp.sh      (PYTHON=... for pip; VERSION=... to pin)
# Then:  .peers/llama-batched-bench -m MODEL.gguf -c 8192 -b 2048 -ub 512 -npp 72 -ntg 128 -npl 1,16 -t 2
# A model: /work/pyref/venv/bin/python tools/bench/hf_to_gguf_f32.py HF_DIR OUT.gguf
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-/work/pyref/venv/bin/python}"
VERSION="${VERSION:-0.3.36}"
DEST=.peers
SRC="$DEST/llama_cpp_python-$VERSION/vendor/llama.cpp"

mkdir -p "$DEST"
if [ ! -f "$DEST/llama_cpp_python-$VERSION.tar.gz" ]; then
    if ! "$PYTHON" -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$DEST" >"$DEST/pip-llamacpp.log" 2>&1; then
        cat "$DEST/pip-llamacpp.log" >&2
        echo "error: pip download of llama-cpp-python==$VERSION failed; HINT: needs access to PyPI, or set PYTHON to a python with pip" >&2
        exit 1
    fi
fi
[ -d "$SRC" ] || tar -xzf "$DEST/llama_cpp_python-$VERSION.tar.gz" -C "$DEST"
CMAKE=cmake
if ! command -v cmake >/dev/null; then
    [ -x "$DEST/cmake-venv/bin/cmake" ] || { "$PYTHON" -m venv "$DEST/cmake-venv" && "$DEST/cmake-venv/bin/pip" install -q cmake; }
    CMAKE="$(pwd)/$DEST/cmake-venv/bin/cmake"
fi
"$CMAKE" -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_OPENMP=ON -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$DEST/cmake-llamacpp.log"
"$CMAKE" --build "$SRC/build" --target llama-batched-bench -j "$(nproc)" >>"$DEST/cmake-llamacpp.log"
cp "$SRC/build/bin/llama-batched-bench" "$DEST/llama-batched-bench"
echo "built $DEST/llama-batched-bench from llama-cpp-python==$VERSION (sha256 $(sha256sum "$DEST/llama_cpp_python-$VERSION.tar.gz" | cut -d' ' -f1))"

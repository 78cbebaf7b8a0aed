#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc 13.0 with its front end, headers and
# runtime headers) from PyPI into the project's own `.cuda/`, so that
# `cargo build --features cuda` can compile every kernel on a machine with
# no GPU and no system CUDA. Idempotent: does nothing when the pinned
# versions are already there. Takes a few seconds.
#
# CUDA 13.0 matches the driver of the GPUs the project runs on (R580).
# kernels/build.rs finds nvcc at .cuda/nvidia/cu13/bin/nvcc.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.cuda
NVCC_VERSION=13.0.88
PKGS=(
  "nvidia-cuda-nvcc==${NVCC_VERSION}"
  "nvidia-nvvm==13.0.*"
  "nvidia-cuda-runtime==13.0.*"
  "nvidia-cuda-crt==13.0.*"
  "nvidia-cuda-cccl==13.0.*"
)
NVCC="$DEST/nvidia/cu13/bin/nvcc"
if [ -x "$NVCC" ] && [ -d "$DEST/nvidia_cuda_nvcc-${NVCC_VERSION}.dist-info" ] \
   && "$NVCC" --version >/dev/null 2>&1; then
  echo "install-cuda: nvcc ${NVCC_VERSION} already in $DEST"
  exit 0
fi
PY=$(command -v python3 || command -v python || true)
if [ -z "$PY" ]; then
  echo "install-cuda: python3 with pip is needed to fetch nvcc from PyPI; HINT: apt-get install python3-pip" >&2
  exit 1
fi
rm -rf "$DEST"
"$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --target "$DEST" "${PKGS[@]}"
"$NVCC" --version | tail -n 2
echo "install-cuda: nvcc installed in $DEST"

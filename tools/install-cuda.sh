#!/usr/bin/env bash
# Installs the CUDA compiler (nvcc 13.0 with its front end, headers and
# runtime headers) from PyPI into the project's own `.cuda/`, so that
# `cargo build --features cuda` can compile every kernel on a machine with
# no GPU and no system CUDA. Idempotent: does nothing when the pinned
# versions are already there. Takes a few seconds.
#
# CUDA 13.0 matches the driver of the GPUs the project runs on (R580).
# kernels/build.rs finds nvcc at .cuda/nvidia/cu13/bin/nvcc.
#
# Also the disassembler (cuobjdump, nvdisasm) into .cuda-tools/, for the SASS
# check of kernels/tests/cuda_build.rs: PyPI has no 13.0 build of it, so the
# oldest 13.x one (13.2.86), which reads 13.0's sm_80 and sm_90a cubins.
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
TOOLS=.cuda-tools
TOOLS_VERSION=13.2.86
TOOL_PKGS=("nvidia-cuda-cuobjdump==${TOOLS_VERSION}" "nvidia-cuda-nvdisasm==${TOOLS_VERSION}")
NVCC="$DEST/nvidia/cu13/bin/nvcc"
CUOBJDUMP="$TOOLS/nvidia/cu13/bin/cuobjdump"
PY=$(command -v python3 || command -v python || true)
need_py() {
  if [ -z "$PY" ]; then
    echo "install-cuda: python3 with pip is needed to fetch the CUDA tools from PyPI; HINT: apt-get install python3-pip" >&2
    exit 1
  fi
}
if [ -x "$NVCC" ] && [ -d "$DEST/nvidia_cuda_nvcc-${NVCC_VERSION}.dist-info" ] \
   && "$NVCC" --version >/dev/null 2>&1; then
  echo "install-cuda: nvcc ${NVCC_VERSION} already in $DEST"
else
  need_py
  rm -rf "$DEST"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --target "$DEST" "${PKGS[@]}"
  "$NVCC" --version | tail -n 2
  echo "install-cuda: nvcc installed in $DEST"
fi
if [ -x "$CUOBJDUMP" ] && [ -d "$TOOLS/nvidia_cuda_cuobjdump-${TOOLS_VERSION}.dist-info" ]; then
  echo "install-cuda: cuobjdump ${TOOLS_VERSION} already in $TOOLS"
else
  need_py
  rm -rf "$TOOLS"
  "$PY" -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-compile --target "$TOOLS" "${TOOL_PKGS[@]}"
  echo "install-cuda: cuobjdump and nvdisasm ${TOOLS_VERSION} installed in $TOOLS"
fi

#!/usr/bin/env bash
# Installs what the `mpi` feature needs to build and run: Open MPI (library,
# headers, `mpirun`) and libclang (the `mpi` crate generates its bindings
# with bindgen), from Debian's packages. Idempotent: does nothing when
# `mpirun`, the MPI headers and libclang are already there. Runs apt-get as
# root (CI), through sudo otherwise.
set -euo pipefail
have() {
  command -v mpirun >/dev/null 2>&1 && command -v mpicc >/dev/null 2>&1 \
    && ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1
}
if have; then
  echo "install-mpi: $(mpirun --version 2>/dev/null | head -n 1) and libclang already installed"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends libopenmpi-dev openmpi-bin libclang-dev >/dev/null
have || { echo "install-mpi: Open MPI or libclang still missing after apt-get; HINT: install libopenmpi-dev openmpi-bin libclang-dev" >&2; exit 1; }
echo "install-mpi: $(mpirun --version | head -n 1) installed"

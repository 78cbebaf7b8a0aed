#!/usr/bin/env bash
# Prepares a device check on a machine WITHOUT a GPU: builds the release
# train-tool with the CUDA kernels and puts it, stripped of debug info, with
# the commit it was built from, in .devbin/ (ignored by git), so that a GPU
# machine without Rust runs it: `bash tools/device-check.sh` there, with
# .devbin carried along.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install-cuda.sh
cargo build --release --features cuda -p llama2-tools
mkdir -p .devbin
cp target/release/train-tool .devbin/train-tool
strip --strip-debug .devbin/train-tool 2>/dev/null || true
# the GPU machine's image is Ubuntu 24.04-like (glibc 2.39): the binary must
# not need a newer glibc than that (Debian bookworm, where it is built, has 2.36)
if command -v objdump >/dev/null; then
  NEED=$(objdump -T .devbin/train-tool | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
  echo "device-build: the binary needs ${NEED:-no versioned glibc symbols}"
  if [ -n "$NEED" ] && [ "$(printf '%s\nGLIBC_2.39\n' "$NEED" | sort -V | tail -n 1)" != "GLIBC_2.39" ]; then
    echo "device-build: $NEED is newer than the GPU machine's glibc 2.39; HINT: build on an older distribution" >&2
    exit 1
  fi
fi
{ git rev-parse HEAD 2>/dev/null || echo unknown; git status --porcelain 2>/dev/null | grep -q . && echo "(with uncommitted changes)" || true; } > .devbin/COMMIT
ls -la .devbin

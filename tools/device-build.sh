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
{ git rev-parse HEAD 2>/dev/null || echo unknown; git status --porcelain 2>/dev/null | grep -q . && echo "(with uncommitted changes)" || true; } > .devbin/COMMIT
ls -la .devbin

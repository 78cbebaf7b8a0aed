#!/usr/bin/env bash
# The device check: run ON the GPU machine (H100/H200, driver R580, CUDA 13,
# PyTorch there), from the binary built elsewhere by tools/device-build.sh
# (.devbin/train-tool; set TRAIN_TOOL to use another). Under 5 minutes:
#   1. train-tool gpu-check: every CUDA kernel vs its CPU counterpart, then
#      the kernel timings at Llama-2 7B shapes (--bench-json)
#   2. train-tool bench train-step: a 1B Llama training step (MFU)
#   3. tools/bench/torch_gpu_peer.py: PyTorch on the same shapes
#   4. tools/bench/gpu_table.py: the table, printed last
# Logs and JSON go to $OUT (the device tool's output folder) or
# /tmp/device-check. Copy the table into docs/gpu-validation.md.
set -uo pipefail
cd "$(dirname "$0")/.."
BIN=${TRAIN_TOOL:-.devbin/train-tool}
DEST=${OUT:-/tmp/device-check}
mkdir -p "$DEST"
if [ ! -x "$BIN" ]; then
  echo "device-check: no $BIN; HINT: run tools/device-build.sh on the build machine and carry .devbin" >&2
  exit 1
fi
# cuBLASLt 13: the machine's PyTorch wheels carry it; cudarc finds it by name
LT=$(python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [os.path.dirname(os.__file__)]
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublasLt.so*"), recursive=True):
        print(os.path.dirname(p)); sys.exit(0)
PY
)
if [ -z "$LT" ]; then
  F=$(find /usr /opt -name 'libcublasLt.so.13*' -print -quit 2>/dev/null)
  [ -n "$F" ] && LT=$(dirname "$F")
fi
[ -n "$LT" ] && export LD_LIBRARY_PATH="$LT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(cat .devbin/COMMIT 2>/dev/null | tr '\n' ' ')"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/card: /'
  echo "cublasLt: ${LT:-not found}"
} | tee "$DEST/env.tmp"
SEED=${SEED:-$(date +%s)}
echo "== gpu-check (seed $SEED)"
timeout 300 "$BIN" gpu-check --seed "$SEED" --json "$DEST/check.json" --bench-json "$DEST/ours.json" 2>&1 | tee "$DEST/gpu-check.log" | grep -v '^bench ' | grep -Ev ' ok$' | tail -n 40
RC=${PIPESTATUS[0]}
echo "== training step, 1B Llama (preset 1b), B=4 T=2048, bf16"
timeout 120 "$BIN" bench train-step --preset 1b --batch-size 4 --seq-len 2048 --steps 5 --warmup 2 --device cuda --json > "$DEST/step1b.json" 2>> "$DEST/aux.log" || echo "train-step bench failed: $(tail -n 3 "$DEST/aux.log")"
echo "== torch peer"
PYTHONUNBUFFERED=1 timeout 150 python3 tools/bench/torch_gpu_peer.py --json "$DEST/peer.json" >> "$DEST/aux.log" 2>&1 || echo "torch peer failed: $(tail -n 3 "$DEST/aux.log")"
echo "== gpu-check exit code: $RC (0 = every check passed)"
{ cat "$DEST/env.tmp"; python3 tools/bench/gpu_table.py "$DEST/check.json" "$DEST/ours.json" "$DEST/peer.json" "$DEST/step1b.json"; } | tee "$DEST/table.txt"
rm -f "$DEST/env.tmp"
# $OUT holds 7 files (the device tool returns at most 8): table.txt,
# gpu-check.log, check.json, ours.json, peer.json, step1b.json, aux.log
exit "$RC"

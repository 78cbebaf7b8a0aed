#!/usr/bin/env bash
# The device check: run ON the GPU machine (H100/H200, driver R580, CUDA 13,
# PyTorch there), from the binary built elsewhere by tools/device-build.sh
# (.devbin/train-tool; set TRAIN_TOOL to use another). Steps, each under
# its own timeout and all inside BUDGET seconds (default 480, so a device
# call of 600 s always gets the table back):
#   1. train-tool gpu-check: every CUDA kernel vs its CPU counterpart, with
#      LLAMA2_SYNC_CHECK=1 (a fault is reported at the kernel that caused it)
#   2. train-tool gpu-check --no-check --bench-json: the kernel timings at
#      Llama-2 7B shapes (a separate run, without the per-launch sync)
#   3. tools/bench/torch_gpu_peer.py: PyTorch on the same shapes
#   4. train-tool bench train-step: a 1B Llama training step (MFU)
#   5. data parallelism over NCCL at world size 1 (LLAMA2_COMM=nccl: the
#      NCCL communicator's init, reduce-scatter, all-gather and bf16 refresh
#      on one GPU, no MPI needed): 10 pretraining steps must give the same
#      weights as the run without a communicator (several GPUs need an MPI
#      build and mpirun, which this machine lacks: docs/distributed.md)
#   6. tools/bench/gpu_table.py: the table, printed last
# Logs and JSON go to $OUT (the device tool's output folder) or
# /tmp/device-check. Copy the table into docs/gpu-validation.md.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${BUDGET:-480}
BIN=${TRAIN_TOOL:-.devbin/train-tool}
DEST=${OUT:-/tmp/device-check}
mkdir -p "$DEST"
if [ ! -x "$BIN" ]; then
  echo "device-check: no $BIN; HINT: run tools/device-build.sh on the build machine and carry .devbin" >&2
  exit 1
fi
# seconds a step may take: its cap, but never past the budget less 20 s
# kept for the table (at least 10, so a late step still reports its error)
limit() {
  local left=$((BUDGET - (SECONDS - START) - 20))
  [ "$left" -lt 10 ] && left=10
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
# TERM at the limit, KILL 10 s later (a process stuck in the driver)
run_for() { local cap=$1; shift; timeout -k 10 "$(limit "$cap")" "$@"; }

# cuBLASLt 13: the machine's PyTorch wheels carry it; cudarc finds it by
# name (libcublasLt.so.13 among others), so its folder goes on the path.
# CUDA 13's first: a CUDA 12 copy elsewhere must not be picked up.
LT=$(timeout 30 python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [os.path.dirname(os.__file__)]
for pat in ("libcublasLt.so.13*", "libcublasLt.so*"):
    for r in roots:
        for p in sorted(glob.glob(os.path.join(r, "nvidia", "**", pat), recursive=True)):
            print(os.path.dirname(p)); sys.exit(0)
PY
)
if [ -z "$LT" ]; then
  F=$(timeout 30 find /usr/local /usr/lib /opt -name 'libcublasLt.so.13*' -print -quit 2>/dev/null)
  [ -n "$F" ] && LT=$(dirname "$F")
fi
[ -n "$LT" ] && export LD_LIBRARY_PATH="$LT${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NCCL (step 5): the PyTorch wheels' nvidia-nccl, found the same way
NC=$(timeout 30 python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [os.path.dirname(os.__file__)]
for r in roots:
    for p in sorted(glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so*"), recursive=True)):
        print(os.path.dirname(p)); sys.exit(0)
PY
)
[ -n "$NC" ] && export LD_LIBRARY_PATH="$NC${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(cat .devbin/COMMIT 2>/dev/null | tr '\n' ' ')"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/card: /'
  echo "cublasLt: ${LT:-not found}"
  # where the loader finds the driver (cudarc dlopens libcuda.so, then .so.1)
  echo "libcuda: $( (timeout 10 ldconfig -p 2>/dev/null | grep -o '/[^ ]*libcuda\.so[.0-9]*' | head -n 2 | tr '\n' ' ') ) LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} | tee "$DEST/env.tmp"
SEED=${SEED:-$(date +%s)}
echo "== gpu-check (seed $SEED, LLAMA2_SYNC_CHECK=1)"
LLAMA2_SYNC_CHECK=1 run_for 240 "$BIN" gpu-check --seed "$SEED" --json "$DEST/check.json" 2>&1 | tee "$DEST/gpu-check.log" | grep -Ev ' ok$' | tail -n 40
RC=${PIPESTATUS[0]}
echo "== kernel timings"
run_for 150 "$BIN" gpu-check --no-check --bench-json "$DEST/ours.json" 2>&1 | tee -a "$DEST/gpu-check.log" | grep -Ev '^bench .* [0-9.]+ ms' | tail -n 10
echo "== torch peer"
PYTHONUNBUFFERED=1 run_for 150 python3 tools/bench/torch_gpu_peer.py --json "$DEST/peer.json" >> "$DEST/aux.log" 2>&1 || echo "torch peer failed (exit $?; 124/137: time limit): $(tail -n 3 "$DEST/aux.log")"
echo "== training step, 1B Llama (preset 1b), B=4 T=2048, bf16"
run_for 150 "$BIN" bench train-step --preset 1b --batch-size 4 --seq-len 2048 --steps 5 --warmup 2 --device cuda --json > "$DEST/step1b.json" 2>> "$DEST/aux.log" || echo "train-step bench failed (exit $?; 124/137: time limit): $(tail -n 3 "$DEST/aux.log")"
echo "== data parallelism over NCCL at world size 1 (nccl: ${NC:-not found})"
{
  python3 - "$DEST/dp-toks.bin" <<'PY'
import struct, sys
n = 60000
toks = [(i * 7 + i // 13) % 500 for i in range(n)]
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *toks))
PY
  DP=(pretrain --preset ref-tiny --vocab 512 --batch-size 4 --seq-len 64 --steps 10 --warmup-steps 2 --lr 1e-3 --seed 7 --quiet --device cuda --data "$DEST/dp-toks.bin")
  LLAMA2_COMM=nccl run_for 60 "$BIN" "${DP[@]}" --out "$DEST/dp-nccl" && run_for 60 "$BIN" "${DP[@]}" --out "$DEST/dp-single" \
    && if cmp -s "$DEST/dp-nccl/final/model.safetensors" "$DEST/dp-single/final/model.safetensors"; then echo "dp nccl world 1: ok (weights identical to the run without a communicator)"; else echo "dp nccl world 1: FAILED (weights differ)"; fi
} > "$DEST/dp.log" 2>&1 || echo "dp nccl world 1: FAILED (exit $?; 124/137: time limit)" >> "$DEST/dp.log"
tail -n 3 "$DEST/dp.log"
rm -rf "$DEST/dp-nccl" "$DEST/dp-single" "$DEST/dp-toks.bin"
echo "== gpu-check exit code: $RC (0 = every check passed; 124/137 = cut at its time limit), $((SECONDS - START)) s in all"
{ cat "$DEST/env.tmp"; timeout 30 python3 tools/bench/gpu_table.py "$DEST/check.json" "$DEST/ours.json" "$DEST/peer.json" "$DEST/step1b.json"; } | tee "$DEST/table.txt"
rm -f "$DEST/env.tmp"
# $OUT holds 8 files (the device tool returns at most 8): table.txt,
# gpu-check.log, check.json, ours.json, peer.json, step1b.json, aux.log,
# dp.log
exit "$RC"

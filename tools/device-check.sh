#!/usr/bin/env bash
# The device check: run ON the GPU machine (H100/H200, driver R580, CUDA 13,
# PyTorch there), from the binary built elsewhere by tools/device-build.sh
# (.devbin/train-tool; set TRAIN_TOOL to use another). One call does it all,
# every step under its own timeout and all inside BUDGET seconds (default
# 480, so a device call of 600 s always gets the table back), in the order
# that keeps the most valuable results if the run is cut short:
#   1. smoke test, 60 s at most: gpu-check --quick --kernels-only (every
#      kernel at T <= 97 against the CPU); smoke.json is written before
#      anything else runs, and the loaded CUDA libraries are printed
#   2. gpu-check --no-curve: every kernel row (T up to 4096) and one training
#      step of a small Llama (loss and every gradient), with
#      LLAMA2_SYNC_CHECK=1 (a fault is reported at the kernel that caused it)
#   3. gpu-check --no-check --bench-json: the kernel timings at Llama-2 7B
#      shapes (a separate run, without the per-launch sync; attention v1, v2
#      and v3 side by side)
#   4. tools/bench/torch_gpu_peer.py: PyTorch on the same shapes
#   5. train-tool bench train-step: a 1B Llama training step (MFU)
#   6. data parallelism over NCCL at world size 1 (LLAMA2_COMM=nccl: the
#      NCCL communicator's init, reduce-scatter, all-gather and bf16 refresh
#      on one GPU, no MPI needed): 10 pretraining steps must give the same
#      weights as the run without a communicator (several GPUs need an MPI
#      build and mpirun: docs/distributed.md); its lines go to device.log
#   7. gpu-check --curve-only: the 200-step loss curves, GPU vs CPU (last:
#      the longest check, recorded after everything above)
#   8. tools/bench/gpu_table.py: the table, printed last
# $OUT (the device tool's output folder; /tmp/device-check elsewhere) gets 8
# files, the most the device tool returns: table.txt, device.log,
# smoke.json, check.json, ours.json, peer.json, step1b.json, curve.json.
# Copy the table into docs/gpu-validation.md.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
BUDGET=${BUDGET:-480}
BIN=${TRAIN_TOOL:-.devbin/train-tool}
DEST=${OUT:-/tmp/device-check}
mkdir -p "$DEST"
LOG="$DEST/device.log"
: > "$LOG"
if [ ! -x "$BIN" ]; then
  echo "device-check: no $BIN; HINT: run tools/device-build.sh on the build machine and carry .devbin" | tee -a "$LOG" >&2
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
step() { echo "== $* ($((SECONDS - START)) s)" | tee -a "$LOG"; }

# cuBLASLt 13: the machine's PyTorch wheels carry it; cudarc finds it by
# name (libcublasLt.so.13 among others), so its folder goes on the path
# (CUDA 13's first: a CUDA 12 copy elsewhere must not be picked up). Which
# file was actually loaded is printed by gpu-check (from /proc/self/maps).
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
# NCCL (step 6): the PyTorch wheels' nvidia-nccl, found the same way
NC=$(timeout 30 python3 - <<'PY' 2>/dev/null
import glob, os, site, sys
roots = site.getsitepackages() + [os.path.dirname(os.__file__)]
for r in roots:
    for p in sorted(glob.glob(os.path.join(r, "nvidia", "**", "libnccl.so*"), recursive=True)):
        print(os.path.dirname(p)); sys.exit(0)
PY
)
[ -n "$NC" ] && export LD_LIBRARY_PATH="$NC${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
ENV=$({
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(cat .devbin/COMMIT 2>/dev/null | tr '\n' ' ')"
  timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/card: /'
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
})
echo "$ENV" | tee -a "$LOG"
SEED=${SEED:-$(date +%s)}

step "1. smoke test: gpu-check --quick --kernels-only (seed $SEED, 60 s at most)"
LLAMA2_SYNC_CHECK=1 run_for 60 "$BIN" gpu-check --quick --kernels-only --seed "$SEED" --json "$DEST/smoke.json" >> "$LOG" 2>&1
SMOKE=$?
# what the process actually loaded and how it allocates (gpu-check prints both first)
LOADED=$(grep -E '^(loaded|allocator|attention kernels): ' "$LOG" | head -n 8)
echo "$LOADED"
echo "smoke: exit $SMOKE (0 = passed; 124/137 = cut at 60 s); failed rows:"; grep -E 'FAIL|error' "$LOG" | head -n 20

step "2. gpu-check --no-curve: every kernel row and one training step (LLAMA2_SYNC_CHECK=1)"
LLAMA2_SYNC_CHECK=1 run_for 200 "$BIN" gpu-check --no-curve --seed "$SEED" --json "$DEST/check.json" 2>&1 | tee -a "$LOG" | grep -Ev ' ok$' | tail -n 30
RC=${PIPESTATUS[0]}

step "3. kernel timings (attention v1, v2, v3)"
run_for 100 "$BIN" gpu-check --no-check --bench-json "$DEST/ours.json" 2>&1 | tee -a "$LOG" | grep -Ev '^bench .* [0-9.]+ ms' | tail -n 10

step "4. torch peer"
PYTHONUNBUFFERED=1 run_for 80 python3 tools/bench/torch_gpu_peer.py --json "$DEST/peer.json" >> "$LOG" 2>&1 || echo "torch peer failed (exit $?; 124/137: time limit): $(tail -n 3 "$LOG")"

step "5. training step, 1B Llama (preset 1b), B=4 T=2048, bf16"
run_for 80 "$BIN" bench train-step --preset 1b --batch-size 4 --seq-len 2048 --steps 5 --warmup 2 --device cuda --json > "$DEST/step1b.json" 2>> "$LOG" || echo "train-step bench failed (exit $?; 124/137: time limit): $(tail -n 3 "$LOG")"

step "6. data parallelism over NCCL at world size 1 (nccl: ${NC:-not found})"
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
  LLAMA2_COMM=nccl run_for 40 "$BIN" "${DP[@]}" --out "$DEST/dp-nccl" && run_for 40 "$BIN" "${DP[@]}" --out "$DEST/dp-single" \
    && if cmp -s "$DEST/dp-nccl/final/model.safetensors" "$DEST/dp-single/final/model.safetensors"; then echo "dp nccl world 1: ok (weights identical to the run without a communicator)"; else echo "dp nccl world 1: FAILED (weights differ)"; fi
} >> "$LOG" 2>&1 || echo "dp nccl world 1: FAILED (exit $?; 124/137: time limit)" >> "$LOG"
grep '^dp nccl' "$LOG" | tail -n 1
rm -rf "$DEST/dp-nccl" "$DEST/dp-single" "$DEST/dp-toks.bin"

step "7. loss curves: gpu-check --curve-only (200 steps, GPU vs CPU)"
run_for 80 "$BIN" gpu-check --curve-only --seed "$SEED" --json "$DEST/curve.json" 2>&1 | tee -a "$LOG" | grep -Ev ' ok$' | tail -n 8
CURVE=${PIPESTATUS[0]}

echo "== exit codes: smoke $SMOKE, checks $RC, curve $CURVE (0 = every check passed; 124/137 = cut at its time limit), $((SECONDS - START)) s in all" | tee -a "$LOG"
{ echo "$ENV"; echo "$LOADED"; timeout 30 python3 tools/bench/gpu_table.py "$DEST/smoke.json,$DEST/check.json,$DEST/curve.json" "$DEST/ours.json" "$DEST/peer.json" "$DEST/step1b.json"; } | tee "$DEST/table.txt"
[ "$SMOKE" -ne 0 ] && exit "$SMOKE"
[ "$RC" -ne 0 ] && exit "$RC"
exit "$CURVE"

#!/usr/bin/env bash
# CPU training step (forward + backward + AdamW), ours vs PyTorch+transformers
# eager, in one command, same machine, same threads, alternating runs.
# Prints one JSON line per run and a table with the ratios last.
#
# Usage: bash tools/bench/train_step_vs_torch.sh [THREADS] [REPEATS]
#   PYTHON=... a Python with torch and transformers (default /work/pyref/venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"
REPEATS="${2:-2}"
PYTHON="${PYTHON:-$( [ -x /work/pyref/venv/bin/python ] && echo /work/pyref/venv/bin/python || echo python3)}"
cargo build --release -q --bin train-tool
TT=target/release/train-tool
declare -A ours torch
for r in $(seq "$REPEATS"); do
  for spec in "ref-tiny 4 256 10" "ref-small 4 512 4"; do
    set -- $spec
    o=$($TT bench train-step --preset "$1" --batch-size "$2" --seq-len "$3" --steps "$4" --warmup 1 --threads "$THREADS" --json)
    echo "ours  $1 run $r: $o"
    p=$("$PYTHON" tools/bench/torch_train_step.py --preset "$1" --threads "$THREADS" --steps "$4" --warmup 1)
    echo "torch $1 run $r: $p"
    ours[$1]+="$(echo "$o" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["step_ms_median"])') "
    torch[$1]+="$(echo "$p" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["step_ms_median"])') "
  done
done
echo
echo "| preset | threads | ours ms/step (runs) | torch ms/step (runs) | speed-up (best vs best) |"
echo "|---|---|---|---|---|"
for k in ref-tiny ref-small; do
  "$PYTHON" - "$k" "$THREADS" "${ours[$k]}" "${torch[$k]}" <<'PY'
import sys
k, th, o, t = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3].split()], [float(x) for x in sys.argv[4].split()]
print(f"| {k} | {th} | {' '.join(f'{x:.0f}' for x in o)} | {' '.join(f'{x:.0f}' for x in t)} | {min(t)/min(o):.2f}x |")
PY
done

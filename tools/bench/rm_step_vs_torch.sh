#!/usr/bin/env bash
# Reward-model training step (forward + backward + AdamW; 8 pairs = 16
# sequences of 256 tokens; the ref-small trunk with a score head; the margin
# ranking loss), ours vs PyTorch + transformers' LlamaForSequenceClassification
# (eager, SDPA attention) with the same loss, in one command, same machine,
# same threads, alternating runs. Prints one JSON line per run and a table
# with the ratio last (wall time, and CPU time per step for a loaded machine).
#
# Usage: bash tools/bench/rm_step_vs_torch.sh [THREADS] [ROUNDS]
#   PYTHON=... a Python with torch and transformers (default /work/pyref/venv/bin/python)
#   PAIRS=8 SEQ_LEN=256 STEPS=3 to change the shape or the timed steps per run
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"
ROUNDS="${2:-3}"
PAIRS="${PAIRS:-8}"
SEQ_LEN="${SEQ_LEN:-256}"
STEPS="${STEPS:-3}"
PYTHON="${PYTHON:-$( [ -x /work/pyref/venv/bin/python ] && echo /work/pyref/venv/bin/python || echo python3)}"
cargo build --release -q --bin train-tool
TT=target/release/train-tool
ours=""
torch=""
ours_cpu=""
torch_cpu=""
for r in $(seq "$ROUNDS"); do
  echo "load before round $r: $(cut -d' ' -f1-3 /proc/loadavg)"
  o=$($TT bench rm-step --preset ref-small --pairs "$PAIRS" --seq-len "$SEQ_LEN" --steps "$STEPS" --warmup 1 --threads "$THREADS" --json)
  echo "ours  run $r: $o"
  p=$("$PYTHON" tools/bench/torch_rm_step.py --preset ref-small --pairs "$PAIRS" --seq-len "$SEQ_LEN" --threads "$THREADS" --steps "$STEPS" --warmup 1)
  echo "torch run $r: $p"
  ours+="$(echo "$o" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["step_ms_median"])') "
  torch+="$(echo "$p" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["step_ms_median"])') "
  ours_cpu+="$(echo "$o" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["cpu_ms_median"])') "
  torch_cpu+="$(echo "$p" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["cpu_ms_median"])') "
done
echo
echo "| trunk | pairs x 2 x tokens | threads | measure | ours ms/step (rounds) | torch ms/step (rounds) | speed-up (best vs best) | speed-up (median vs median) |"
echo "|---|---|---|---|---|---|---|---|"
"$PYTHON" - "$PAIRS" "$SEQ_LEN" "$THREADS" "$ours" "$torch" "$ours_cpu" "$torch_cpu" <<'PY'
import statistics, sys
p, t, th = sys.argv[1:4]
for name, o, q in (("wall", sys.argv[4], sys.argv[5]), ("cpu", sys.argv[6], sys.argv[7])):
    o = [float(x) for x in o.split()]
    q = [float(x) for x in q.split()]
    print(f"| ref-small | {p} x 2 x {t} | {th} | {name} | {' '.join(f'{x:.0f}' for x in o)} | {' '.join(f'{x:.0f}' for x in q)} "
          f"| {min(q)/min(o):.2f}x | {statistics.median(q)/statistics.median(o):.2f}x |")
PY
echo "(wall: the speed-up; cpu: process CPU time per step, which other jobs on the cores do not inflate,"
echo " but which counts OpenMP's spin-waiting: read it at 1 thread)"

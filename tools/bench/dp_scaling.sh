#!/usr/bin/env bash
# Data-parallel scaling on the CPU, in one command: pretraining tokens/s of
# 2 ranks x 1 thread (mpirun) against 1 rank x 1 thread on ref-small, the
# same micro-batch per rank (weak scaling: the global batch doubles), and
# the seconds each rank spends in collectives per step (metrics `comm_s`:
# reduce-scatter of the gradients, the norm's partials, all-gather of the
# weights, the count and the sums; waiting for the slower rank included).
# Steps after the first are averaged (the first pays allocation).
#
# Usage: bash tools/bench/dp_scaling.sh [STEPS] [BATCH] [SEQ]   (default 6 2 256)
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS="${1:-6}"
B="${2:-2}"
T="${3:-256}"
bash tools/install-mpi.sh >/dev/null
cargo build --release -q --features mpi --bin train-tool
TT=$PWD/target/release/train-tool
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# random tokens of a 32000-piece vocabulary: enough for every step of both runs
python3 - "$W/toks.bin" <<'PY'
import random, struct, sys
random.seed(1)
n = 2_000_000
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<256i", 20240520, 1, n, *([0] * 253)))
    f.write(struct.pack(f"<{n}H", *(random.randrange(32000) for _ in range(n))))
PY
common=(pretrain --preset ref-small --vocab 32000 --batch-size "$B" --seq-len "$T" --steps "$STEPS" --warmup-steps 1 --threads 1 --quiet --data "$W/toks.bin")
"$TT" "${common[@]}" --out "$W/one" 2>/dev/null
mpirun --allow-run-as-root --oversubscribe --bind-to core -np 2 "$TT" "${common[@]}" --out "$W/two" 2>/dev/null
python3 - "$W/one/metrics.jsonl" "$W/two/metrics.jsonl" "$B" "$T" <<'PY'
import json, sys
def recs(p):
    return [json.loads(l) for l in open(p)][1:]
one, two = recs(sys.argv[1]), recs(sys.argv[2])
tps1 = sum(r["tokens_per_s"] for r in one) / len(one)
tps2 = sum(r["tokens_per_s"] for r in two) / len(two)
comm = sum(r["comm_s"] for r in two) / len(two)
step2 = sum(r["tokens"] - p["tokens"] for p, r in zip(two, two[1:])) / max(len(two) - 1, 1) / tps2 if len(two) > 1 else float("nan")
out = {"preset": "ref-small", "micro_batch_per_rank": f"{sys.argv[3]}x{sys.argv[4]}", "steps_averaged": len(one),
       "tokens_per_s_1x1": round(tps1, 1), "tokens_per_s_2x1": round(tps2, 1), "speedup": round(tps2 / tps1, 3),
       "comm_s_per_step_2x1": round(comm, 4), "step_s_2x1": round(step2, 4), "comm_share": round(comm / step2, 4)}
print(json.dumps(out))
print()
print("| ranks x threads | tokens/s | speed-up | comm s/step (share) |")
print("|---|---|---|---|")
print(f"| 1 x 1 | {tps1:.0f} | 1.00 | - |")
print(f"| 2 x 1 | {tps2:.0f} | {tps2 / tps1:.2f} | {comm:.3f} ({100 * comm / step2:.1f}%) |")
PY

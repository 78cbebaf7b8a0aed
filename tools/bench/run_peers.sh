#!/usr/bin/env bash
# Runs every peer benchmark once and prints one JSON line each:
#   PyTorch training step (ref-tiny, ref-small), PyTorch greedy decoding
#   (ref-tiny, stories15m) and llama2.c run.c greedy decoding (stories15m,
#   the same random weights as PyTorch's stories15m run would use in shape).
# Run it in the same command as the Rust benches it is compared with.
#
# Usage: bash tools/bench/run_peers.sh [THREADS]     (default 2)
#        PYTHON=... to choose the Python with torch+transformers
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS="${1:-2}"
PYTHON="${PYTHON:-$( [ -x /work/pyref/venv/bin/python ] && echo /work/pyref/venv/bin/python || echo python3)}"

"$PYTHON" tools/bench/torch_train_step.py --preset ref-tiny --threads "$THREADS" --steps 10 --warmup 2
"$PYTHON" tools/bench/torch_train_step.py --preset ref-small --threads "$THREADS" --steps 5 --warmup 1
"$PYTHON" tools/bench/torch_generate.py --preset ref-tiny --threads "$THREADS"
"$PYTHON" tools/bench/torch_generate.py --preset stories15m --threads "$THREADS"

# llama2.c run.c (the early run.c of llamac2py 0.1.4: no GQA, so the MHA
# stories15m shape) on a random model in its early layout
[ -x .peers/run ] || bash tools/bench/build_llama2c.sh >&2
if [ ! -f .peers/bench/early.bin ]; then
    "$PYTHON" tools/scripts/llama2c_ref.py bench-model --preset stories15m --seq-len 512 --out .peers/bench >&2
fi
RUN="$(pwd)/.peers/run"
out=$(cd .peers/bench && OMP_NUM_THREADS="$THREADS" "$RUN" early.bin 0.0 257)
tps=$(printf '%s\n' "$out" | sed -n 's/^achieved tok\/s: //p')
if [ -z "$tps" ]; then
    echo "error: run.c printed no 'achieved tok/s'; HINT: rebuild with bash tools/bench/build_llama2c.sh" >&2
    exit 1
fi
# 257 steps = BOS + 256 generated; run.c times steps 2..257 (256 forwards after the first)
printf '{"peer": "llama2.c run.c (llamac2py 0.1.4)", "preset": "stories15m", "new_tokens": 256, "threads": %s, "tokens_per_s": %s}\n' "$THREADS" "$tps"

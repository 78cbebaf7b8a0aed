#!/usr/bin/env bash
# The Ghost Attention demonstration of docs/gatt.md, on a tiny model that
# trains on 2 CPU cores (about an hour in all; steps whose output exists
# are not redone):
#  1. `train-tool pipeline --pretrain-steps 300 --until sft`: BPE vocabulary, pretraining
#     on Jane Austen, SFT on the short alpaca dialogs (runs/NAME/data/sft.jsonl);
#  2. single-turn system-message demonstrations (two per SFT dialog, the
#     checkable families) and an SFT of the pretrained model on the SFT
#     dialogs + demonstrations: the policy, which follows a system message
#     in the turn it is given (what Llama-2-chat did before GAtt);
#  3. `train-tool gatt stage`: GAtt samples from the policy, fine-tuning with
#     GAtt and, with the same steps, on the same dialogs without GAtt, then
#     adherence by turn and attention on the system message for the policy,
#     the no-GAtt model and the GAtt model, on held-out alpaca prompts.
# Usage: bash tools/scripts/gatt_demo.sh [NAME]   (THREADS=2, TRAIN_TOOL=path)
set -euo pipefail
cd "$(dirname "$0")/../.."
T=${TRAIN_TOOL:-target/release/train-tool}
[ -x "$T" ] || cargo build --release --bin train-tool
NAME=${1:-gatt-demo}
R=runs/$NAME
TH=${THREADS:-2}
FAM=end_word,max_words,mention,case
INST=data/gatt/instructions.json
[ -f "$R/sft/final/model.safetensors" ] || "$T" pipeline --name "$NAME" --pretrain-steps 300 --until sft --threads "$TH"
[ -f "$R/gatt/demos.jsonl" ] || "$T" gatt demos --dialogs "$R/data/sft.jsonl" "$R/data/sft.jsonl" --instructions $INST --families $FAM --out "$R/gatt/demos.jsonl"
[ -f "$R/p0/final/model.safetensors" ] || "$T" sft --init "$R/pretrain/final" --tokenizer "$R/tokenizer.model" \
    --data "$R/data/sft.jsonl" "$R/gatt/demos.jsonl" --epochs 6 --lr 1e-3 --batch-size 8 --seq-len 256 --val-fraction 0.03 \
    --samples 0 --out "$R/p0" --threads "$TH"
"$T" gatt stage --policy "$R/p0/final" --dialogs "$R/data/sft.jsonl" --instructions $INST --families $FAM \
    --prompts data/sft/alpaca_en_demo.json --exclude-from "$R/data/sft.jsonl" --eval-dialogs 96 --out "$R/stage" --threads "$TH"
echo "report: $R/stage/eval/gatt_eval.md"

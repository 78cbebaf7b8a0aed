#!/usr/bin/env bash
# Batched generation speed: `train-tool generate-batch` against transformers'
# batched `generate` (left padding, the same batches) and against our own
# one-prompt-at-a-time decoding, on the same model, prompts and threads.
#
# Model: random ref-small weights (vocab 32000, C 512, 8 layers, 8 heads,
# 4 KV heads, ffn 1376), drawn by `train-tool init --init unit` (logits of
# order 1, so greedy tokens have clear winners and the two sides can be
# compared token for token). Prompts: 32, of 16 to 128 tokens (BOS + ids
# drawn with a fixed seed). Each answer: exactly 128 new tokens (EOS off on
# both sides: our --ignore-eos; generate() with eos_token_id=None and
# min_new_tokens=128). Greedy.
#
# What is timed, the same way on both sides: generated tokens (32 x 128) /
# wall time of the whole pass over all prompts, prefills included; model
# loading is outside both. Ours: the "tokens_per_s" of generate-batch's
# totals (--batch-size 16, and --batch-size 1: one prompt at a time, the
# same code with one row). transformers: tools/bench/torch_generate_batch.py
# (batches of 16 in the order ours admits them, longest first, so both pad
# the same groups; sdpa attention; after a warm-up call). Each round runs
# the three in fresh processes, interleaved, so load from other work hits
# them alike; medians over the rounds are compared, with min and max, and
# the ratios of the maxima (the least disturbed rounds).
#
# llama.cpp (when LLAMA_BATCHED_BENCH, default .peers/llama-batched-bench
# from tools/bench/build_llamacpp.sh, exists): `llama-batched-bench` on the
# same weights as an f32 GGUF (tools/bench/hf_to_gguf_f32.py), 16 parallel
# sequences with prompts of 74 tokens (the mean of ours) and 128 new tokens
# each, same threads. It reports the decoding phase (S_TG: generated
# tokens / time after the prefill) and the prefill apart; compared with our
# decoding phase (generated tokens after each answer's first / time after
# the prefills) and with the whole pass.
#
# Usage: bash tools/bench/generate_batch_vs_torch.sh [THREADS]   (default 2)
#        ROUNDS=3 (rounds), PYTHON=... (a Python with torch + transformers)
set -euo pipefail
cd "$(dirname "$0")/../.."
TH="${1:-2}"
ROUNDS="${ROUNDS:-3}"
PY="${PYTHON:-/work/pyref/venv/bin/python}"
[ -x "$PY" ] || PY=python3
DIR=.peers/generate_batch
TT=target/release/train-tool
NEW=128

cargo build --release -p llama2-tools >&2
mkdir -p "$DIR"
[ -f "$DIR/hf/config.json" ] || "$TT" init --preset ref-small --init unit --seed 1 --out "$DIR/hf" >&2
python3 - "$DIR/prompts.jsonl" <<'EOF'
import json, random, sys
# 32 prompts of 16..128 tokens: BOS, then ids from 3..31999 (never PAD/BOS/EOS)
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(32):
        n = rng.randint(16, 128)
        f.write(json.dumps({"prompt_ids": [1] + [rng.randint(3, 31999) for _ in range(n - 1)]}) + "\n")
EOF

LCPP="${LLAMA_BATCHED_BENCH:-.peers/llama-batched-bench}"
if [ -x "$LCPP" ] && [ ! -f "$DIR/model-f32.gguf" ]; then
    "$PY" tools/bench/hf_to_gguf_f32.py "$DIR/hf" "$DIR/model-f32.gguf" >&2
fi

OUT="$DIR/results.jsonl"
: >"$OUT"
for r in $(seq "$ROUNDS"); do
    load=$(cut -d' ' -f1 /proc/loadavg)
    "$TT" generate-batch --model "$DIR/hf" --input "$DIR/prompts.jsonl" --out "$DIR/ours16.jsonl" --max-new-tokens $NEW \
        --batch-size 16 --ignore-eos --threads "$TH" --device cpu --quiet >"$DIR/ours16.json"
    "$PY" tools/bench/torch_generate_batch.py --model "$DIR/hf" --input "$DIR/prompts.jsonl" --batch-size 16 \
        --max-new-tokens $NEW --threads "$TH" --ids "$DIR/torch16.jsonl" >"$DIR/torch16.json"
    "$TT" generate-batch --model "$DIR/hf" --input "$DIR/prompts.jsonl" --out "$DIR/ours1.jsonl" --max-new-tokens $NEW \
        --batch-size 1 --ignore-eos --threads "$TH" --device cpu --quiet >"$DIR/ours1.json"
    if [ -x "$LCPP" ]; then
        "$LCPP" -m "$DIR/model-f32.gguf" -c 8192 -b 2048 -ub 512 -npp 74 -ntg $NEW -npl 16 -t "$TH" >"$DIR/llamacpp.txt" 2>"$DIR/llamacpp.err"
    else
        : >"$DIR/llamacpp.txt"
    fi
    python3 - "$DIR" "$TH" "$r" "$load" >>"$OUT" <<'EOF'
import json, sys
d, th, r, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rd = lambda f: json.loads(open(f"{d}/{f}").read().strip().splitlines()[-1])
ids = lambda f: [json.loads(l)["ids"] for l in open(f"{d}/{f}")]
o16, o1, t16 = rd("ours16.json"), rd("ours1.json"), rd("torch16.json")
a, b, c = ids("ours16.jsonl"), ids("ours1.jsonl"), ids("torch16.jsonl")
# llama-batched-bench's table row: |PP|TG|B|N_KV|T_PP s|S_PP t/s|T_TG s|S_TG t/s|T s|S t/s|
lc = None
for line in open(f"{d}/llamacpp.txt"):
    f = [x.strip() for x in line.strip().strip("|").split("|")]
    if len(f) == 10 and f[0].isdigit():
        pp, tg, npl, _, tpp, spp, ttg, stg, tt, st = f
        lc = {"decode_tok_s": float(stg), "whole_tok_s": int(npl) * int(tg) / (float(tpp) + float(ttg)), "prefill_s": float(tpp)}
ours_decode = (o16["generated_tokens"] - o16["answers"]) / (o16["seconds"] - o16["prefill_seconds"])
print(json.dumps({"threads": th, "round": r, "load_before": load, "ours16_tok_s": o16["tokens_per_s"], "ours1_tok_s": o1["tokens_per_s"],
                  "torch16_tok_s": t16["tokens_per_s"], "tokens": o16["generated_tokens"], "ours16_decode_tok_s": ours_decode,
                  "llamacpp16_decode_tok_s": lc and lc["decode_tok_s"], "llamacpp16_whole_tok_s": lc and lc["whole_tok_s"],
                  "ours16_eq_ours1": a == b, "answers_eq_torch": sum(x == y for x, y in zip(a, c)), "answers": len(a)}))
EOF
    tail -n1 "$OUT" >&2
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def s(k):
    x = [r[k] for r in rows]
    return statistics.median(x), min(x), max(x)
o16, o1, t16 = s("ours16_tok_s"), s("ours1_tok_s"), s("torch16_tok_s")
fmt = lambda t: f"{t[0]:8.1f} [{t[1]:7.1f}, {t[2]:7.1f}]"
print(f"\nbatched greedy generation, ref-small, 32 prompts of 16-128 tokens, {rows[0]['tokens'] // 32} new tokens each, "
      f"{rows[0]['threads']} threads, {len(rows)} rounds; generated tok/s, median [min, max]; load before each round: "
      f"{[r['load_before'] for r in rows]}")
print(f"  ours, batch 16          {fmt(o16)}")
print(f"  transformers, batch 16  {fmt(t16)}")
print(f"  ours, one at a time     {fmt(o1)}")
print(f"  ours16 / transformers16: {o16[0] / t16[0]:.2f} (of the maxima {o16[2] / t16[2]:.2f})")
print(f"  ours16 / ours one at a time: {o16[0] / o1[0]:.2f} (of the maxima {o16[2] / o1[2]:.2f})")
if all(r["llamacpp16_decode_tok_s"] for r in rows):
    od, ld, lw = s("ours16_decode_tok_s"), s("llamacpp16_decode_tok_s"), s("llamacpp16_whole_tok_s")
    print(f"  decoding phase: ours {fmt(od)}, llama.cpp {fmt(ld)}: ratio {od[0] / ld[0]:.2f} (of the maxima {od[2] / ld[2]:.2f})")
    print(f"  whole pass: llama.cpp (16 prompts of 74 tokens) {fmt(lw)}: ours16 / llama.cpp {o16[0] / lw[0]:.2f} (of the maxima {o16[2] / lw[2]:.2f})")
print(f"  ours batch 16 == ours one at a time, token for token: {all(r['ours16_eq_ours1'] for r in rows)}; "
      f"answers equal to transformers': {rows[-1]['answers_eq_torch']}/{rows[-1]['answers']}")
print(json.dumps({"bench": "generate_batch_vs_torch", "threads": rows[0]["threads"], "rounds": len(rows), "ours16_tok_s": o16,
                  "torch16_tok_s": t16, "ours1_tok_s": o1, "ratio_vs_torch": o16[0] / t16[0], "ratio_vs_torch_of_max": o16[2] / t16[2],
                  "ratio_vs_one_at_a_time": o16[0] / o1[0], "ratio_vs_one_at_a_time_of_max": o16[2] / o1[2],
                  "loads": [r["load_before"] for r in rows]}))
EOF

#!/usr/bin/env bash
# Greedy decoding speed: our `train-tool bench generate` against llama2.c's
# run.c (the early run.c of llamac2py 0.1.4, built by build_llama2c.sh with
# gcc -O3 -fopenmp -march=native) on the same weights and thread count, and
# a check that both decode the same tokens.
#
# Model: random ref-small weights with 8 KV heads (that run.c has no GQA):
# vocab 32000, hidden 512, ffn 1376, 8 layers, 8 heads, seq_len 512, untied,
# drawn by `train-tool init --init unit` (logits of order 1, so greedy
# tokens have clear winners), converted to the early llama2.c layout by
# `train-tool convert`. run.c needs a tokenizer.bin in its working
# directory; ours has piece "[i]" for id i, so its printed text maps back
# to the ids.
#
# What is timed, on both sides the same way: from BOS, 257 greedy tokens;
# run.c starts its clock after the first forward (position 0) and reports
# (steps - 1) / elapsed = 256 tokens over the 256 forwards at positions
# 1..256 (with argmax and printing each); ours reports decode_tokens_per_s =
# the 256 tokens after the first over the time after the prefill forward
# (position 0) until the last token is sampled. Startup (loading, mmap page
# faults, allocation) is outside both. Each round runs each peer once in a
# fresh process, interleaved, so load from other work hits both alike; the
# medians over the rounds are compared, with min and max, and the maxima
# (the least disturbed rounds: run.c's OpenMP threads wait for each other at
# every matmul, so one descheduled thread stalls both).
#
# As an extra row, the same run.c built with -Ofast (the flags of
# llama2.c's own `make runfast` / `runomp`): fast-math lets gcc vectorise
# its dot products; it may reorder sums enough to change a greedy token, so
# its tokens are reported, not required to match.
#
# Usage: bash tools/bench/decode_vs_llama2c.sh [THREADS ...]   (default: 1 2)
#        ROUNDS=5 (rounds per thread count), OFAST=0 to skip the -Ofast row
# Needs: cargo, gcc, python3 (standard library only), PyPI access the first
# time (build_llama2c.sh downloads the llamac2py sdist).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ $# -eq 0 ]; then THREADS=(1 2); else THREADS=("$@"); fi
ROUNDS="${ROUNDS:-5}"
OFAST="${OFAST:-1}"
STEPS=257
DIR=.peers/decode_vs_llama2c
TT=target/release/train-tool

# (a) run.c
[ -x .peers/run ] || bash tools/bench/build_llama2c.sh >&2
if [ "$OFAST" = 1 ] && [ ! -x .peers/run_ofast ]; then
    gcc -Ofast -fopenmp -march=native .peers/llamac2py-*/run.c -lm -o .peers/run_ofast
fi

# (b) weights, converted by our tools
cargo build --release -p llama2-tools >&2
mkdir -p "$DIR"
if [ ! -f "$DIR/early.bin" ]; then
    "$TT" init --preset ref-small --kv-heads 8 --max-seq-len 512 --init unit --seed 1 --out "$DIR/hf" >&2
    "$TT" convert --from hf "$DIR/hf" --to llama2c "$DIR/early.bin" --layout early >&2
fi
python3 - "$DIR/tokenizer.bin" 32000 <<'EOF'
import struct, sys
# run.c's tokenizer.bin: int32 max_token_length, then per id: float32 score,
# int32 byte length, the bytes; piece i is "[i]"
path, n = sys.argv[1], int(sys.argv[2])
pieces = [f"[{i}]".encode() for i in range(n)]
with open(path, "wb") as f:
    f.write(struct.pack("<i", max(map(len, pieces))))
    for p in pieces:
        f.write(struct.pack("<fi", 0.0, len(p)) + p)
EOF

RUN="$(pwd)/.peers/run"
RUN_OFAST="$(pwd)/.peers/run_ofast"
OUT="$DIR/results.jsonl"
: >"$OUT"
for th in "${THREADS[@]}"; do
    for r in $(seq "$ROUNDS"); do
        # (c) both peers, interleaved
        (cd "$DIR" && OMP_NUM_THREADS="$th" "$RUN" early.bin 0.0 "$STEPS") >"$DIR/runc.txt"
        "$TT" bench generate --model "$DIR/hf" --new-tokens "$STEPS" --threads "$th" --repeats 1 --device cpu --json >"$DIR/ours.json"
        if [ "$OFAST" = 1 ]; then
            (cd "$DIR" && OMP_NUM_THREADS="$th" "$RUN_OFAST" early.bin 0.0 "$STEPS") >"$DIR/runc_ofast.txt"
        else
            : >"$DIR/runc_ofast.txt"
        fi
        python3 - "$DIR" "$th" "$r" >>"$OUT" <<'EOF'
import json, re, sys
d, th, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def runc(path):
    text = open(path).read()
    if not text:
        return None, None
    m = re.search(r"achieved tok/s: ([0-9.]+)", text)
    if not m:
        sys.exit(f"error: {path}: run.c printed no 'achieved tok/s'; HINT: rebuild with bash tools/bench/build_llama2c.sh")
    return [int(x) for x in re.findall(r"\[(\d+)\]", text.split("achieved tok/s:")[0])], float(m.group(1))
ids, tps = runc(f"{d}/runc.txt")
fids, ftps = runc(f"{d}/runc_ofast.txt")
ours = json.load(open(f"{d}/ours.json"))
def first_diff(a, b):
    return next((i for i in range(max(len(a), len(b))) if i >= len(a) or i >= len(b) or a[i] != b[i]), None)
print(json.dumps({"threads": th, "round": r, "runc_tok_s": tps, "ours_tok_s": ours["decode_tokens_per_s"],
                  "runc_ofast_tok_s": ftps, "tokens": len(ours["ids"]),
                  "same_tokens": ids == ours["ids"], "first_diff": first_diff(ids, ours["ids"]),
                  "ofast_same_tokens": None if fids is None else fids == ours["ids"]}))
EOF
        tail -n1 "$OUT" >&2
    done
done

# (d) + (e): medians, spreads, ratios, token check
python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
bad = False
print(f"\ngreedy decoding, ref-small with 8 KV heads (vocab 32000, C 512, 8 layers), {rows[0]['tokens']} tokens from BOS, "
      "tok/s over the 256 forwards after the first (median [min, max] of the rounds)")
print("ratios: of the medians, and in brackets of the maxima (the rounds least disturbed by other work on the machine)")
print(f"{'threads':>7}  {'ours':>22}  {'run.c -O3':>22}  {'ours/run.c':>12}  {'run.c -Ofast':>22}  {'ours/Ofast':>12}  same tokens")
for th in sorted({r["threads"] for r in rows}):
    rs = [r for r in rows if r["threads"] == th]
    def s(key):
        x = [r[key] for r in rs if r[key] is not None]
        return (statistics.median(x), min(x), max(x)) if x else None
    o, c, f = s("ours_tok_s"), s("runc_tok_s"), s("runc_ofast_tok_s")
    fmt = lambda t: f"{t[0]:7.1f} [{t[1]:6.1f}, {t[2]:6.1f}]" if t else "-"
    same = all(r["same_tokens"] for r in rs)
    bad |= not same
    fsame = [r["ofast_same_tokens"] for r in rs if r["ofast_same_tokens"] is not None]
    rat = lambda a, b: f"{a[0] / b[0]:5.2f} [{a[2] / b[2]:4.2f}]" if a and b else "-"
    print(f"{th:>7}  {fmt(o):>22}  {fmt(c):>22}  {rat(o, c):>12}  {fmt(f):>22}  {rat(o, f):>12}  "
          f"{'yes' if same else 'NO'} (-O3, all {len(rs)} rounds)" + (f"; -Ofast {'yes' if all(fsame) else 'no'}" if fsame else ""))
    print(json.dumps({"bench": "decode_vs_llama2c", "threads": th, "rounds": len(rs), "ours_tok_s": o, "runc_tok_s": c,
                      "ratio": o[0] / c[0], "ratio_of_max": o[2] / c[2], "runc_ofast_tok_s": f,
                      "ratio_ofast": (o[0] / f[0]) if f else None, "ratio_ofast_of_max": (o[2] / f[2]) if f else None,
                      "same_tokens": same, "ofast_same_tokens": all(fsame) if fsame else None}))
if bad:
    sys.exit("error: run.c and train-tool decoded different tokens")
EOF

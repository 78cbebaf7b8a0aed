#!/usr/bin/env python3
"""Tokenizer encode throughput, ours beside the `sentencepiece` package, in one command.

Runs `train-tool tokenizer bench` (our Rust encoder) and sentencepiece's
C++ encoder (through its Python API, `encode(list, num_threads=N)`) on the
same texts, the same tokenizer (a GGUF vocabulary is first written as a
SentencePiece .model by `train-tool tokenizer convert`) and the same thread
count, on this machine; checks both produce the same number of tokens
(encoding is exact, so the counts must agree); prints both MB/s (best of
--repeat runs after a warm-up, MB = 1e6 bytes) and the ratio.

Usage (from the repository root, after `cargo build --release -p llama2-tools`):
  /work/pyref/venv/bin/python tools/bench/tokenizer_peer.py \
      --tokenizer tests/data/tokenizer/ggml-vocab-llama-spm.gguf \
      --input /work/shared/data/corpora/shakespeare/*.txt --threads 1
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import sentencepiece as spm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="GGUF vocabulary or SentencePiece .model")
    ap.add_argument("--input", required=True, nargs="+", help="text files")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--unit", choices=["file", "line"], default="file", help="one encode per file or per line")
    ap.add_argument("--train-tool", default="target/release/train-tool")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.threads < 1 or args.repeat < 1:
        sys.exit("error: --threads and --repeat must be >= 1")
    if not os.path.exists(args.train_tool):
        sys.exit(f"error: {args.train_tool} not found; HINT: cargo build --release -p llama2-tools")

    with tempfile.TemporaryDirectory() as tmp:
        model = args.tokenizer
        if not model.endswith(".model"):
            model = os.path.join(tmp, "tokenizer.model")
            subprocess.run([args.train_tool, "tokenizer", "convert", "--tokenizer", args.tokenizer, "--out", model],
                           check=True, capture_output=True)
        ours = subprocess.run(
            [args.train_tool, "tokenizer", "bench", "--tokenizer", args.tokenizer, "--input", *args.input,
             "--threads", str(args.threads), "--repeat", str(args.repeat), "--unit", args.unit, "--json"],
            check=True, capture_output=True, text=True)
        ours = json.loads(ours.stdout)

        sp = spm.SentencePieceProcessor(model_file=model)
        texts = []
        for p in args.input:
            s = open(p, encoding="utf-8").read()
            texts.extend([s] if args.unit == "file" else s.splitlines())
        nbytes = sum(len(t.encode("utf-8")) for t in texts)
        sp.encode(texts, num_threads=args.threads)  # warm-up
        secs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            ids = sp.encode(texts, num_threads=args.threads)
            secs.append(time.perf_counter() - t0)
        tokens = sum(len(x) for x in ids)

    peer_best = nbytes / 1e6 / min(secs)
    peer_median = nbytes / 1e6 / statistics.median(secs)
    res = {
        "texts": len(texts), "unit": args.unit, "bytes": nbytes, "threads": args.threads, "repeat": args.repeat,
        "ours_mb_per_s_best": ours["mb_per_s_best"], "ours_mb_per_s_median": ours["mb_per_s_median"],
        "sentencepiece_mb_per_s_best": peer_best, "sentencepiece_mb_per_s_median": peer_median,
        "ratio_best": ours["mb_per_s_best"] / peer_best, "ratio_median": ours["mb_per_s_median"] / peer_median,
        "tokens_ours": ours["tokens"], "tokens_sentencepiece": tokens, "sentencepiece_version": spm.__version__,
    }
    if ours["bytes"] != nbytes or ours["tokens"] != tokens:
        print(f"error: the two encoders disagree: bytes {ours['bytes']} vs {nbytes}, tokens {ours['tokens']} vs {tokens}",
              file=sys.stderr)
        print(json.dumps(res))
        sys.exit(1)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{len(texts)} texts ({args.unit}), {nbytes / 1e6:.2f} MB, {tokens} tokens, {args.threads} thread(s), best of {args.repeat}")
        print(f"  ours (train-tool)       {ours['mb_per_s_best']:8.2f} MB/s   (median {ours['mb_per_s_median']:.2f})")
        print(f"  sentencepiece {spm.__version__:<9} {peer_best:8.2f} MB/s   (median {peer_median:.2f})")
        print(f"  ratio ours/sentencepiece {res['ratio_best']:.2f}x  (median {res['ratio_median']:.2f}x)")


if __name__ == "__main__":
    main()

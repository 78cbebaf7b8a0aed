#!/usr/bin/env python3
"""PyTorch + transformers peer for batched generation, on CPU.

Reads the prompts of a `train-tool generate-batch` input file
({"prompt_ids": [...]} per line), groups them into batches of --batch-size
in the order our scheduler admits them (longest first, so both sides pad the
same groups), left-pads each batch (pad id 0, attention_mask 0 there: the
way transformers batches decoder-only generation) and runs
`model.generate(do_sample=False, use_cache=True)` for exactly
--max-new-tokens new tokens per prompt (EOS disabled, as our --ignore-eos).

Prints one JSON line: {"tokens_per_s": generated tokens / wall time of the
whole pass over all batches (prefill included, as ours), ...}; with --ids
F, writes the generated ids of each prompt (input order) as JSON Lines.

Usage: /work/pyref/venv/bin/python tools/bench/torch_generate_batch.py \
           --model DIR --input prompts.jsonl --batch-size 16 --max-new-tokens 128 --threads 2
"""

import argparse
import json
import os
import time

import torch
import transformers


def positive(s):
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main():
    ap = argparse.ArgumentParser(description="transformers batched generate() peer (CPU, float32)")
    ap.add_argument("--model", required=True, help="HF model directory")
    ap.add_argument("--input", required=True, help='JSON Lines of {"prompt_ids": [...]}')
    ap.add_argument("--batch-size", type=positive, default=16)
    ap.add_argument("--max-new-tokens", type=positive, default=128)
    ap.add_argument("--threads", type=positive, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa", help="transformers attention implementation")
    ap.add_argument("--ids", help="write the generated ids here (JSON Lines, input order)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    prompts = []
    with open(args.input) as f:
        for i, line in enumerate(f):
            if line.strip():
                rec = json.loads(line)
                if "prompt_ids" not in rec or not rec["prompt_ids"]:
                    raise SystemExit(f"error: {args.input}: line {i + 1}: needs a non-empty prompt_ids")
                prompts.append(rec["prompt_ids"])
    model = transformers.LlamaForCausalLM.from_pretrained(args.model, attn_implementation=args.attn, dtype=torch.float32)
    model.eval()
    n = args.max_new_tokens
    # generate() merges its config with model.generation_config: clear the
    # model's EOS too, or decoding would stop at the first EOS
    model.generation_config = transformers.GenerationConfig(eos_token_id=None, pad_token_id=0)
    gc = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, min_new_tokens=n, use_cache=True,
                                       eos_token_id=None, pad_token_id=0)
    # longest first (stable), as train-tool generate-batch schedules them
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    batches = [order[i:i + args.batch_size] for i in range(0, len(order), args.batch_size)]

    def run(batch, new):
        t = max(len(prompts[i]) for i in batch)
        ids = torch.zeros(len(batch), t, dtype=torch.long)
        mask = torch.zeros(len(batch), t, dtype=torch.long)
        for r, i in enumerate(batch):
            p = prompts[i]
            ids[r, t - len(p):] = torch.tensor(p)
            mask[r, t - len(p):] = 1
        g = transformers.GenerationConfig(**{**gc.to_dict(), "max_new_tokens": new, "min_new_tokens": new})
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=g)
        assert out.shape[1] == t + new, out.shape
        return out[:, t:]

    run(batches[0], 2)  # warm-up (allocator, lazy init)
    t0 = time.perf_counter()
    results = {}
    for batch in batches:
        out = run(batch, n)
        for r, i in enumerate(batch):
            results[i] = out[r].tolist()
    secs = time.perf_counter() - t0
    if args.ids:
        with open(args.ids, "w") as f:
            for i in range(len(prompts)):
                f.write(json.dumps({"prompt_index": i, "ids": results[i]}) + "\n")
    total = len(prompts) * n
    print(json.dumps({
        "tokens_per_s": round(total / secs, 2), "generated_tokens": total, "seconds": round(secs, 3),
        "prompts": len(prompts), "batch_size": args.batch_size, "max_new_tokens": n,
        "prompt_tokens": sum(len(p) for p in prompts),
        "padded_prompt_tokens": sum(len(b) * max(len(prompts[i]) for i in b) for b in batches),
        "threads": torch.get_num_threads(), "attn": args.attn, "torch": torch.__version__, "transformers": transformers.__version__,
    }))


if __name__ == "__main__":
    main()

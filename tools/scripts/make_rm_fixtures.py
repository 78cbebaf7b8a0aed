#!/usr/bin/env python3
"""Golden fixtures for reward models, made with Hugging Face transformers'
LlamaForSequenceClassification (num_labels 1, eager attention, float32,
CPU) and torch autograd of the paper's margin ranking loss, written here
from the formula (PAPER.md section 5, Table 27), not from the Rust code:

    L = mean_i -log sigmoid(r_c,i - r_r,i - m(rating_i)) + C * mean_i (r_c,i + r_r,i)^2

Writes tests/fixtures/rm/:
- rm/: a reward model saved by transformers' save_pretrained (so the Rust
  loader reads what transformers writes), pairs.jsonl (token-id pairs with
  ratings), score.jsonl (every sequence as {"prompt_ids", "response_ids"})
  and reference.safetensors:
    scores             f32 (2P,)  pooled score of each sequence: chosen 0..P, rejected P..2P
    loss.none|small|large  f32 (1,)  L with that margin table, C = 0
    grad.small.<name>  d L(small, C=0) / d param, every parameter
    loss.large_center  f32 (1,)  L with the large margins and C = CENTER
    grad.large_center.<name>  its gradient
    golden             f32 (5,)  -log sigmoid(1 - m) (computed in float64) for m = 0, 1/3, 2/3, 1, 3
- lm/: a causal LM of the same shapes (pad_token_id = eos on purpose: a
  reward model made from it must choose another pad id), for `rm init`.

Usage (from the repository root):

    /work/pyref/venv/bin/python tools/scripts/make_rm_fixtures.py
    # after `train-tool rm init --init tests/fixtures/rm/lm --out R` and
    # `train-tool rm score --model R --input tests/fixtures/rm/rm/score.jsonl > S`:
    /work/pyref/venv/bin/python tools/scripts/make_rm_fixtures.py check-init --lm tests/fixtures/rm/lm --rm R --ours S
"""

import argparse
import json
import math
import os
import platform
import sys

import numpy
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "rm")
PAD = 0  # never drawn as a real token below
BOS, EOS = 1, 2
CENTER = 0.05
SPEC = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5)
# Table 27 of the paper, by rating level (3 = significantly better ... 0 = negligibly better / unsure)
MARGINS = {
    "none": {3: 0.0, 2: 0.0, 1: 0.0, 0: 0.0},
    "small": {3: 1.0, 2: 2.0 / 3.0, 1: 1.0 / 3.0, 0: 0.0},
    "large": {3: 3.0, 2: 2.0, 1: 1.0, 0: 0.0},
}
LEVEL = {"significantly better": 3, "better": 2, "slightly better": 1, "negligibly better": 0, "unsure": 0}
# (prompt length, chosen length, rejected length, rating as written in the record)
PAIRS = [(5, 7, 4, "significantly better"), (9, 3, 11, "better"), (3, 12, 12, 1),
         (12, 2, 6, "negligibly better"), (6, 8, 2, "unsure"), (4, 5, 9, None)]


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def config(seqcls):
    kw = dict(SPEC, max_position_embeddings=64,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
              bos_token_id=BOS, eos_token_id=EOS, tie_word_embeddings=False)
    if seqcls:
        kw.update(num_labels=1, pad_token_id=PAD)
    else:
        kw.update(pad_token_id=EOS)  # as many chat checkpoints ship it; rm init must not keep it
    return LlamaConfig(**kw)


def init_weights(model, gen):
    """As make_fixtures.py: Linear N(0, 1/in), embedding N(0, 1), norms
    1 + 0.1 N(0, 1): scores of order 1, attention far from uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def clean_dir(d):
    p = os.path.join(d, "generation_config.json")
    if os.path.exists(p):
        os.remove(p)


def margin_of(rating, kind):
    if rating is None:
        return 0.0
    level = rating if isinstance(rating, int) else LEVEL[rating]
    return MARGINS[kind][level]


def ranking_loss(rc, rr, m, center):
    return (-F.logsigmoid(rc - rr - m)).mean() + center * ((rc + rr) ** 2).mean()


def make_rm():
    gen = torch.Generator().manual_seed(21)
    model = LlamaForSequenceClassification._from_config(config(True), attn_implementation="eager", dtype=torch.float32)
    init_weights(model, gen)
    model.eval()
    d = os.path.join(OUT, "rm")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    clean_dir(d)

    v = SPEC["vocab_size"]
    draw = lambda n: torch.randint(3, v, (n,), generator=gen).tolist()  # never PAD, BOS, EOS
    records, chosen, rejected, score_lines = [], [], [], []
    for (lp, lc, lr, rating) in PAIRS:
        prompt = [BOS] + draw(lp - 1)
        c, r = draw(lc - 1) + [EOS], draw(lr - 1) + [EOS]
        rec = {"prompt_ids": prompt, "chosen_ids": c, "rejected_ids": r}
        if rating is not None:
            rec["rating"] = rating
        records.append(rec)
        chosen.append(prompt + c)
        rejected.append(prompt + r)
    for rec in records:
        score_lines.append({"prompt_ids": rec["prompt_ids"], "response_ids": rec["chosen_ids"]})
    for rec in records:
        score_lines.append({"prompt_ids": rec["prompt_ids"], "response_ids": rec["rejected_ids"]})
    seqs = chosen + rejected
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), t, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    p = len(PAIRS)

    def scores():
        return model(input_ids=ids, attention_mask=mask).logits[:, 0]  # pooled at the last token != PAD

    ref = {}
    with torch.no_grad():
        s = scores()
    ref["scores"] = s.clone()
    for kind in MARGINS:
        m = torch.tensor([margin_of(x[3], kind) for x in PAIRS], dtype=torch.float32)
        ref[f"loss.{kind}"] = ranking_loss(s[:p], s[p:], m, 0.0).reshape(1)
    for tag, kind, center in (("small", "small", 0.0), ("large_center", "large", CENTER)):
        model.zero_grad()
        sc = scores()
        m = torch.tensor([margin_of(x[3], kind) for x in PAIRS], dtype=torch.float32)
        loss = ranking_loss(sc[:p], sc[p:], m, center)
        loss.backward()
        if tag == "large_center":
            ref["loss.large_center"] = loss.detach().reshape(1)
        for n, prm in model.named_parameters():
            ref[f"grad.{tag}.{n}"] = prm.grad.detach().clone()
    ref["golden"] = torch.tensor([-F.logsigmoid(torch.tensor(1.0 - m, dtype=torch.float64)).item()
                                  for m in (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 3.0)], dtype=torch.float32)
    meta = {"versions": versions(), "pairs": PAIRS, "center": CENTER, "margins": MARGINS, "pad_token_id": PAD,
            "what": "LlamaForSequenceClassification num_labels 1; chosen rows 0..P, rejected P..2P, right-padded with attention_mask",
            "loss": "(-F.logsigmoid(rc - rr - m)).mean() + C * ((rc + rr) ** 2).mean()"}
    save_file({k: x.contiguous() for k, x in ref.items()}, os.path.join(d, "reference.safetensors"),
              metadata={"meta": json.dumps(meta)})
    with open(os.path.join(d, "pairs.jsonl"), "w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    with open(os.path.join(d, "score.jsonl"), "w") as f:
        for rec in score_lines:
            f.write(json.dumps(rec) + "\n")


def make_lm():
    gen = torch.Generator().manual_seed(22)
    model = LlamaForCausalLM._from_config(config(False), attn_implementation="eager", dtype=torch.float32)
    init_weights(model, gen)
    d = os.path.join(OUT, "lm")
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    clean_dir(d)


def check_init(args):
    """A directory made by `rm init` from --lm, loaded by transformers: the
    trunk bit-identical to the LM's, score.weight (1, hidden) with std near
    1/sqrt(hidden+1), a pad id that is neither EOS nor BOS, pooled scores of
    a right-padded batch equal to the scores of each sequence alone, and
    (with --ours) equal to `train-tool rm score` within 1e-4 relative."""
    lm = LlamaForCausalLM.from_pretrained(args.lm, dtype=torch.float32)
    rm = LlamaForSequenceClassification.from_pretrained(args.rm, dtype=torch.float32, attn_implementation="eager")
    rm.eval()
    fails = 0
    lm_sd, rm_sd = lm.state_dict(), rm.state_dict()
    trunk = [k for k in lm_sd if k.startswith("model.")]
    same = [k for k in trunk if torch.equal(lm_sd[k], rm_sd[k])]
    print(f"trunk tensors bit-identical: {len(same)}/{len(trunk)}")
    fails += len(same) != len(trunk)
    extra = sorted(set(rm_sd) - set(trunk))
    print(f"reward model tensors beyond the trunk: {extra}")
    fails += extra != ["score.weight"]
    w = rm_sd["score.weight"]
    h = rm.config.hidden_size
    print(f"score.weight {tuple(w.shape)} std {w.std().item():.4f} (1/sqrt(hidden+1) = {1 / math.sqrt(h + 1):.4f})")
    fails += tuple(w.shape) != (1, h)
    pad, eos, bos = rm.config.pad_token_id, rm.config.eos_token_id, rm.config.bos_token_id
    print(f"pad_token_id {pad} (eos {eos}, bos {bos}, the LM's pad {lm.config.pad_token_id})")
    fails += pad is None or pad in (eos, bos)
    lines = [json.loads(x) for x in open(args.inputs or os.path.join(OUT, "rm", "score.jsonl"))]
    seqs = [x["prompt_ids"] + x["response_ids"] for x in lines]
    t = max(map(len, seqs))
    ids = torch.full((len(seqs), t), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
    with torch.no_grad():
        pooled = rm(input_ids=ids).logits[:, 0]  # no attention_mask: the pad id alone must locate the last token
        alone = torch.stack([rm(input_ids=torch.tensor([s])).logits[0, 0] for s in seqs])
    e = ((pooled - alone).abs().max() / alone.abs().max()).item()
    print(f"padded batch (pooled by pad id, no mask) vs each sequence alone: max rel err {e:.2e}")
    fails += e > 1e-4
    if args.ours:
        ours = torch.tensor([json.loads(x)["score"] for x in open(args.ours)])
        e = ((ours - alone).abs().max() / alone.abs().max()).item()
        print(f"train-tool rm score vs transformers: max rel err {e:.2e} over {len(seqs)} sequences")
        fails += e > 1e-4
    print("OK" if fails == 0 else f"{fails} check(s) FAILED")
    return 1 if fails else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "check-init":
        ap = argparse.ArgumentParser(description="check a directory made by train-tool rm init in transformers")
        ap.add_argument("--lm", required=True, help="the causal LM rm init started from")
        ap.add_argument("--rm", required=True, help="the directory rm init wrote")
        ap.add_argument("--inputs", help="score.jsonl lines to score (default: the rm fixture's)")
        ap.add_argument("--ours", help="train-tool rm score output for --inputs")
        sys.exit(check_init(ap.parse_args(sys.argv[2:])))
    torch.use_deterministic_algorithms(True)
    make_rm()
    make_lm()
    print("wrote", os.path.abspath(OUT))

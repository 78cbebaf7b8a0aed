#!/usr/bin/env python3
"""Fixture for `train-tool debug ppo-grads`: the gradients of one PPO step,
computed by torch autograd on transformers models from the formulas of
issue 11 (written here, independently of the Rust code).

Policy: tests/fixtures/heads/lm (LlamaForCausalLM); value model:
tests/fixtures/heads/seqcls (LlamaForSequenceClassification, 1 label),
both made by make_head_fixtures.py. Writes tests/fixtures/ppo/grads/:
  rollouts.jsonl         the rollout lines ppo-grads reads (random prompts and
                         answers; old log-probs, reference log-probs and values
                         are the models' own plus noise, so ratios differ from
                         1 and both clip branches are taken)
  reference.safetensors  policy.<name> = d policy_loss / d param,
                         value.<name> = d value_loss / d param, and the two losses
The advantages and returns come from tools/scripts/ppo_ref.py (numpy).

Usage: /work/pyref/venv/bin/python tools/scripts/make_ppo_fixtures.py
"""

import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

sys.path.insert(0, os.path.dirname(__file__))
import ppo_ref  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
HEADS = os.path.join(ROOT, "tests", "fixtures", "heads")
OUT = os.path.join(ROOT, "tests", "fixtures", "ppo", "grads")
MATH = {"beta": 0.01, "gamma": 1.0, "lam": 0.95, "clip": 0.2, "value_clip": 0.2, "score_transform": "logit-whiten",
        "safety_threshold": 0.15, "missing_eos_penalty": 0.5}
PAD, EOS = 0, 2


def batch(rollouts):
    b = len(rollouts)
    t = max(len(r["prompt_ids"]) + len(r["response_ids"]) for r in rollouts)
    ids = torch.full((b, t), PAD, dtype=torch.long)
    mask = torch.zeros(b, t, dtype=torch.long)
    rows, toks = [], []
    for i, r in enumerate(rollouts):
        seq = r["prompt_ids"] + r["response_ids"]
        ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        p = len(r["prompt_ids"])
        for k, tok in enumerate(r["response_ids"]):
            rows.append((i, p + k - 1))  # the position that predicts answer token k
            toks.append(tok)
    return ids, mask, rows, torch.tensor(toks)


def new_logp(policy, ids, mask, rows, toks):
    logits = policy(input_ids=ids, attention_mask=mask).logits
    lp = torch.log_softmax(logits, dim=-1)
    return torch.stack([lp[i, p, tok] for (i, p), tok in zip(rows, toks)])


def new_values(value, ids, mask, rows):
    hidden = value.model(input_ids=ids, attention_mask=mask).last_hidden_state
    v = value.score(hidden)[..., 0]
    return torch.stack([v[i, p] for i, p in rows])


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(7)
    policy = LlamaForCausalLM.from_pretrained(os.path.join(HEADS, "lm"), attn_implementation="eager", dtype=torch.float32).eval()
    value = LlamaForSequenceClassification.from_pretrained(os.path.join(HEADS, "seqcls"), attn_implementation="eager", dtype=torch.float32).eval()
    rollouts = []
    for k in range(6):
        prompt = [1] + rng.integers(3, 128, int(rng.integers(1, 6))).tolist()
        eos = bool(k % 3 != 2)
        resp = rng.integers(3, 128, int(rng.integers(1, 8))).tolist() + ([EOS] if eos else [])
        rollouts.append({"prompt_ids": prompt, "response_ids": resp, "eos": eos, "score_helpful": float(rng.normal(0, 2)),
                         **({"score_safety": float(rng.normal(-1, 2)), "unsafe": bool(k == 1)} if k % 2 else {})})
    ids, mask, rows, toks = batch(rollouts)
    with torch.no_grad():
        lp0 = new_logp(policy, ids, mask, rows, toks).double().numpy()
        v0 = new_values(value, ids, mask, rows).double().numpy()
    i = 0
    for r in rollouts:
        n = len(r["response_ids"])
        r["logprobs"] = (lp0[i:i + n] + rng.normal(0, 0.15, n)).tolist()
        r["ref_logprobs"] = (lp0[i:i + n] + rng.normal(0, 0.3, n)).tolist()
        r["values"] = (v0[i:i + n] + rng.normal(0, 0.3, n)).tolist()
        i += n
    # advantages and returns from the numpy reference (new_* are unused by them)
    eps = [dict(e, new_logprobs=e["logprobs"], new_values=e["values"]) for e in
           [{k: r[k] for k in ("logprobs", "ref_logprobs", "values", "score_helpful", "eos") } | ({"score_safety": r["score_safety"], "unsafe": r["unsafe"]} if "score_safety" in r else {}) for r in rollouts]]
    ref = ppo_ref.reference(dict(MATH, episodes=eps))
    A = torch.tensor(np.concatenate(ref["advantages"]))
    R = torch.tensor(np.concatenate(ref["returns"]))
    old = torch.tensor(np.concatenate([r["logprobs"] for r in rollouts]))
    vo = torch.tensor(np.concatenate([r["values"] for r in rollouts]))

    lp = new_logp(policy, ids, mask, rows, toks).double()
    rho = torch.exp(lp - old)
    c = MATH["clip"]
    policy_loss = torch.maximum(-A * rho, -A * torch.clamp(rho, 1 - c, 1 + c)).mean()
    policy_loss.backward()
    vn = new_values(value, ids, mask, rows).double()
    vc = MATH["value_clip"]
    value_loss = (0.5 * torch.maximum((vn - R) ** 2, (vo + torch.clamp(vn - vo, -vc, vc) - R) ** 2)).mean()
    value_loss.backward()
    clipped = int((-A * torch.clamp(rho, 1 - c, 1 + c) > -A * rho).sum())
    vclipped = int((((vo + torch.clamp(vn - vo, -vc, vc) - R) ** 2) > (vn - R) ** 2).sum())
    assert 0 < clipped < len(A) and 0 < vclipped < len(A), (clipped, vclipped, len(A))

    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "rollouts.jsonl"), "w") as f:
        for r in rollouts:
            f.write(json.dumps(r) + "\n")
    t = {"policy_loss": policy_loss.detach().float().reshape(1), "value_loss": value_loss.detach().float().reshape(1)}
    for n, p in policy.named_parameters():
        t["policy." + n] = p.grad.detach().clone()
    for n, p in value.named_parameters():
        t["value." + n] = p.grad.detach().clone()
    meta = dict(MATH, policy="tests/fixtures/heads/lm", value="tests/fixtures/heads/seqcls", clipped_tokens=clipped,
                value_clipped_tokens=vclipped, tokens=len(A), torch=torch.__version__)
    save_file(t, os.path.join(OUT, "reference.safetensors"), metadata={"meta": json.dumps(meta)})
    print("wrote", os.path.abspath(OUT), meta)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An independent numpy implementation of the PPO arithmetic of issue 11
(Llama 2 paper section 3.2.3), written from the formulas in the issue, not
from the Rust code, and the fixture it writes for the Rust tests.

  score:      s = s_safety if (unsafe or sigmoid(s_safety) < threshold) else s_helpful
              transform "logit-whiten": (s - mean) / sqrt(var + 1e-8) over the batch (population var)
              minus missing_eos_penalty where the answer has no EOS
  rewards:    r_t = -beta * (logp_old - logp_ref), + score on the last token
  GAE:        delta_t = r_t + gamma V_{t+1} - V_t (V after the end = 0); A_t = delta_t + gamma lam A_{t+1}
  returns:    R_t = A_t + V_t; advantages whitened over all tokens of the batch
  losses:     policy mean_t max(-A rho, -A clip(rho, 1-c, 1+c)), rho = exp(new - old)
              value  mean_t 0.5 max((Vn - R)^2, (Vo + clip(Vn - Vo, -vc, vc) - R)^2)
  kl:         mean over episodes of sum_t (logp_old - logp_ref)
  clip_frac:  fraction of tokens with -A clip(rho) > -A rho

Usage: /work/pyref/venv/bin/python tools/scripts/ppo_ref.py
       writes tests/fixtures/ppo/math_cases.json: a list of {"input": ..., "output": ...}
       where "input" is what `train-tool debug ppo-math --input` reads.
"""

import json
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "ppo", "math_cases.json")


def whiten(x):
    x = np.asarray(x, dtype=np.float64)
    return (x - x.mean()) / np.sqrt(x.var() + 1e-8)  # numpy var: population (ddof=0)


def reference(inp):
    eps = inp["episodes"]
    beta, gamma, lam = inp["beta"], inp["gamma"], inp["lam"]
    raw = []
    for e in eps:
        ss = e.get("score_safety")
        use_safety = ss is not None and (e.get("unsafe", False) or 1.0 / (1.0 + np.exp(-ss)) < inp["safety_threshold"])
        raw.append(ss if use_safety else e["score_helpful"])
    scores = whiten(raw) if inp["score_transform"] == "logit-whiten" else np.asarray(raw, dtype=np.float64)
    scores = np.array([s - (0.0 if e["eos"] else inp["missing_eos_penalty"]) for s, e in zip(scores, eps)])
    rewards, advs, rets = [], [], []
    for e, s in zip(eps, scores):
        lp, rf, v = (np.asarray(e[k], dtype=np.float64) for k in ("logprobs", "ref_logprobs", "values"))
        r = -beta * (lp - rf)
        r[-1] += s
        n = len(r)
        a = np.zeros(n)
        nxt_a = 0.0
        for t in reversed(range(n)):
            nxt_v = v[t + 1] if t + 1 < n else 0.0
            nxt_a = r[t] + gamma * nxt_v - v[t] + gamma * lam * nxt_a
            a[t] = nxt_a
        rewards.append(r)
        advs.append(a)
        rets.append(a + v)
    flat = whiten(np.concatenate(advs))
    wadv, i = [], 0
    for a in advs:
        wadv.append(flat[i:i + len(a)])
        i += len(a)
    A = np.concatenate(wadv)
    old = np.concatenate([e["logprobs"] for e in eps])
    new = np.concatenate([e["new_logprobs"] for e in eps])
    vo = np.concatenate([e["values"] for e in eps])
    vn = np.concatenate([e["new_values"] for e in eps])
    R = np.concatenate(rets)
    rho = np.exp(new - old)
    c = inp["clip"]
    pg1, pg2 = -A * rho, -A * np.clip(rho, 1 - c, 1 + c)
    vc = inp["value_clip"]
    v_clipped = vo + np.clip(vn - vo, -vc, vc)
    vl = 0.5 * np.maximum((vn - R) ** 2, (v_clipped - R) ** 2)
    kl = float(np.mean([np.sum(np.asarray(e["logprobs"]) - np.asarray(e["ref_logprobs"])) for e in eps]))
    return {
        "scores": [float(s) for s in scores],
        "rewards": [list(map(float, r)) for r in rewards],
        "advantages": [list(map(float, a)) for a in wadv],
        "returns": [list(map(float, r)) for r in rets],
        "policy_loss": float(np.mean(np.maximum(pg1, pg2))),
        "value_loss": float(np.mean(vl)),
        "kl": kl,
        "clip_frac": float(np.mean(pg2 > pg1)),
    }


def random_case(rng, safety, transform, penalty):
    eps = []
    for _ in range(rng.integers(2, 7)):
        n = int(rng.integers(1, 12))
        lp = rng.normal(-2.0, 1.0, n)
        e = {
            "logprobs": lp.tolist(),
            "ref_logprobs": (lp + rng.normal(0, 0.3, n)).tolist(),
            "values": rng.normal(0, 1, n).tolist(),
            "new_logprobs": (lp + rng.normal(0, 0.3, n)).tolist(),
            "new_values": rng.normal(0, 1, n).tolist(),
            "score_helpful": float(rng.normal(0, 2)),
            "eos": bool(rng.random() < 0.7),
        }
        if safety:
            e["score_safety"] = float(rng.normal(-0.5, 2))
            e["unsafe"] = bool(rng.random() < 0.3)
        eps.append(e)
    return {"beta": float(rng.choice([0.01, 0.005, 0.1])), "gamma": float(rng.choice([1.0, 0.99])), "lam": float(rng.choice([0.95, 0.9])),
            "clip": 0.2, "value_clip": float(rng.choice([0.2, 0.5])), "score_transform": transform, "safety_threshold": 0.15,
            "missing_eos_penalty": penalty, "episodes": eps}


def main():
    rng = np.random.default_rng(2026)
    cases = []
    for k in range(12):
        inp = random_case(rng, safety=k % 2 == 1, transform="logit-whiten" if k % 3 else "none", penalty=[0.0, 1.0][k % 4 == 3])
        cases.append({"input": inp, "output": reference(inp)})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"generator": "tools/scripts/ppo_ref.py", "numpy": np.__version__, "cases": cases}, f, indent=1)
    print("wrote", os.path.abspath(OUT), len(cases), "cases")


if __name__ == "__main__":
    main()

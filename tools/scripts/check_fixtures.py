#!/usr/bin/env python3
"""Re-check golden fixtures written by make_fixtures.py (a cheap sanity check).

For each fixture directory this
  1. reloads the model with transformers' from_pretrained (so config.json and
     model.safetensors are read the way a user's would be) and checks its
     parameters are the ones the reference was made from;
  2. re-runs the float32 reference (logits, loss, every grad, grad norm, one
     AdamW step, the 10-step trajectory, greedy decoding) and compares;
  3. checks the stored tensors against each other without torch's optimizer
     or autograd: loss = CE(stored logits, stored targets) in float64;
     grad_norm = L2 norm of the stored grads; adamw.* = the AdamW formula
     applied in float64 to the stored weights and grads; greedy_ids are the
     argmax of a float64 forward pass;
  4. re-runs forward and backward in float64 and bounds the float32 error of
     the stored logits and grads.

Usage: /work/pyref/venv/bin/python tools/scripts/check_fixtures.py [DIR ...]
With no DIR: $LLAMA2_FIXTURES_DIR if set, else tests/fixtures; a directory
holding fixtures (sub-directories with reference.safetensors) is expanded.
Exit status 1 if any check fails.
"""

import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import LlamaForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_fixtures as mf  # noqa: E402

# Re-running the same float32 computation with the same torch build: results
# can differ only by summation order (thread count), a few ulps of the
# largest magnitude involved.
F32_RERUN_RTOL = 1e-5
# float32 vs float64 (transformers' float64 model still computes RMSNorm in
# float32, which only lowers the bar) on these small models: rounding of ~1e-7 per operation,
# accumulated over sums of <= ~1000 terms and a few layers, stays far below
# 1e-4 of each tensor's largest magnitude; a real bug is O(1).
F64_REL_TOL = 1e-4
# AdamW recomputed in float64 from the stored float32 weights and grads: the
# only float32 roundings are those of the stored result (|p| <= ~5, so a few
# 1e-7) and of torch's float32 intermediate moments; bounded by 1e-6 here.
ADAMW_ABS_TOL = 1e-6
# The stored grad norm vs the float64 norm of the stored grads.
GRAD_NORM_RTOL = 1e-5


class Checker:
    def __init__(self, name):
        self.name = name
        self.failures = 0
        self.count = 0

    def close(self, what, got, want, rtol_of_max=None, atol=None):
        """|got - want| <= tol everywhere; tol = rtol * max|want| (+ atol)."""
        self.count += 1
        got = torch.as_tensor(got, dtype=torch.float64)
        want = torch.as_tensor(want, dtype=torch.float64)
        if got.shape != want.shape:
            self.fail(f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
            return
        scale = float(want.abs().max()) if want.numel() else 0.0
        tol = (rtol_of_max or 0.0) * scale + (atol or 0.0)
        err = float((got - want).abs().max()) if want.numel() else 0.0
        if not err <= tol:
            self.fail(f"{what}: max abs err {err:.3e} > tol {tol:.3e} (max|ref| {scale:.3e})")

    def equal(self, what, got, want):
        self.count += 1
        if got != want:
            self.fail(f"{what}: {got!r} != {want!r}")

    def fail(self, msg):
        self.failures += 1
        print(f"  FAIL {self.name}: {msg}")


def load_reference(d):
    path = os.path.join(d, "reference.safetensors")
    with safe_open(path, framework="pt") as f:
        meta = json.loads(f.metadata()["meta"])
        ref = {k: f.get_tensor(k) for k in f.keys()}
    return ref, meta


def adamw_f64(p, g, lr, wd, b1, b2, eps, clip_coef):
    """One AdamW step from zero moments (t = 1), float64, on the clipped grad."""
    p = p.double()
    g = g.double() * clip_coef
    p = p * (1.0 - lr * wd)
    m = (1.0 - b1) * g
    v = (1.0 - b2) * g * g
    bc1 = 1.0 - b1
    bc2 = 1.0 - b2
    return p - (lr / bc1) * m / (v.sqrt() / math.sqrt(bc2) + eps)


def check_dir(d):
    c = Checker(os.path.basename(os.path.normpath(d)))
    ref, meta = load_reference(d)
    b, t, v = meta["B"], meta["T"], meta["V"]
    tokens = ref["tokens"].long()
    c.equal("tokens shape", tuple(tokens.shape), (b, t + 1))
    c.equal("tokens dtype", ref["tokens"].dtype, torch.int32)
    c.equal("logits shape", tuple(ref["logits"].shape), (b, t, v))
    inputs, targets = tokens[:, :t], tokens[:, 1:]

    model = LlamaForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=torch.float32)
    model.eval()
    names = [n for n, _ in model.named_parameters()]
    c.equal("parameter names", names, meta["param_names"])
    for n in names:
        for kind in ("grad", "adamw"):
            if f"{kind}.{n}" not in ref:
                c.fail(f"missing {kind}.{n}")
    init = {n: p.detach().clone() for n, p in model.named_parameters()}

    # ---- 3. consistency of the stored tensors (no torch optimizer/autograd) ----
    logits64 = ref["logits"].double()
    ce = F.cross_entropy(logits64.reshape(-1, v), targets.reshape(-1))
    c.close("loss == CE(stored logits) [f64]", ref["loss"], ce.reshape(1), rtol_of_max=1e-6)
    c.close("traj_loss[0] == loss", ref["traj_loss"][:1], ref["loss"], rtol_of_max=0.0)
    gn = math.sqrt(sum(float(ref[f"grad.{n}"].double().pow(2).sum()) for n in names))
    c.close("grad_norm == ||stored grads|| [f64]", ref["grad_norm"], [gn], rtol_of_max=GRAD_NORM_RTOL)
    ad = meta["adamw"]
    clip_coef = min(1.0, mf.CLIP_MAX_NORM / (float(ref["grad_norm"]) + 1e-6))
    for n in names:
        wd = ad["weight_decay"] if init[n].ndim >= 2 else 0.0
        want = adamw_f64(init[n], ref[f"grad.{n}"], ad["lr"], wd, ad["betas"][0], ad["betas"][1],
                         ad["eps"], clip_coef)
        c.close(f"adamw.{n} == AdamW formula [f64]", ref[f"adamw.{n}"], want, atol=ADAMW_ABS_TOL)
    tl = ref["traj_loss"]
    c.equal("traj_loss length", tuple(tl.shape), (mf.TRAJ_STEPS,))
    c.equal("trajectory falls", bool(tl[-1] < tl[0]), True)

    # ---- 2. float32 rerun ----
    spec = dict(meta["spec"])
    opt = mf.make_optimizer(model)
    traj = []
    for step in range(mf.TRAJ_STEPS):
        opt.zero_grad(set_to_none=True)
        logits, loss = mf.ce_loss(model, inputs, targets)
        loss.backward()
        traj.append(loss.item())
        if step == 0:
            c.close("logits [f32 rerun]", logits.detach(), ref["logits"], rtol_of_max=F32_RERUN_RTOL)
            c.close("loss [f32 rerun]", loss.detach().reshape(1), ref["loss"], rtol_of_max=F32_RERUN_RTOL)
            for n, p in model.named_parameters():
                c.close(f"grad.{n} [f32 rerun]", p.grad, ref[f"grad.{n}"], rtol_of_max=F32_RERUN_RTOL)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), mf.CLIP_MAX_NORM)
        if step == 0:
            c.close("grad_norm [f32 rerun]", gnorm.reshape(1), ref["grad_norm"], rtol_of_max=F32_RERUN_RTOL)
        opt.step()
        if step == 0:
            for n, p in model.named_parameters():
                c.close(f"adamw.{n} [f32 rerun]", p.detach(), ref[f"adamw.{n}"], atol=ADAMW_ABS_TOL)
    # later steps amplify rounding differences a little: compare to the loss scale
    c.close("traj_loss [f32 rerun]", torch.tensor(traj), ref["traj_loss"], rtol_of_max=1e-4)

    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init[n])
    prompt = ref["greedy_prompt"].long()
    greedy, _ = mf.greedy_loop(model, prompt, mf.GREEDY_NEW_TOKENS)
    c.equal("greedy_ids [f32 rerun]", greedy, ref["greedy_ids"].tolist())
    c.equal("meta: generate matched the greedy loop", meta["greedy"]["generate_matches"], True)

    # ---- 4. float64 rerun ----
    model64 = model.double()
    model64.zero_grad(set_to_none=True)
    logits64r = model64(input_ids=inputs).logits
    loss64 = F.cross_entropy(logits64r.reshape(-1, v), targets.reshape(-1))
    loss64.backward()
    c.close("logits [f64 rerun]", ref["logits"], logits64r.detach(), rtol_of_max=F64_REL_TOL)
    c.close("loss [f64 rerun]", ref["loss"], loss64.detach().reshape(1), rtol_of_max=F64_REL_TOL)
    for n, p in model64.named_parameters():
        c.close(f"grad.{n} [f64 rerun]", ref[f"grad.{n}"], p.grad, rtol_of_max=F64_REL_TOL)
    greedy64, _ = mf.greedy_loop(model64, prompt, mf.GREEDY_NEW_TOKENS)
    c.equal("greedy_ids [f64 rerun]", greedy64, ref["greedy_ids"].tolist())
    status = "ok" if c.failures == 0 else f"{c.failures} FAILED"
    print(f"{c.name}: {c.count} checks, {status} (spec {json.dumps(spec, sort_keys=True)})")
    return c.failures


def expand(paths):
    out = []
    for p in paths:
        if os.path.isfile(os.path.join(p, "reference.safetensors")):
            out.append(p)
            continue
        subs = sorted(os.path.join(p, s) for s in os.listdir(p)
                      if os.path.isfile(os.path.join(p, s, "reference.safetensors")))
        if not subs:
            sys.exit(f"{p}: no fixture directories (no */reference.safetensors); "
                     "HINT: make them with tools/scripts/make_fixtures.py")
        out.extend(subs)
    return out


def main():
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = sys.argv[1:] or [os.environ.get("LLAMA2_FIXTURES_DIR") or os.path.join(repo, "tests", "fixtures")]
    failures = sum(check_dir(d) for d in expand(paths))
    if failures:
        print(f"{failures} check(s) failed")
        sys.exit(1)
    print("all fixtures consistent")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden fixtures for the Llama model, made with Hugging Face transformers.

For each small Llama config this writes a directory holding the model in HF
format (config.json + model.safetensors) and reference.safetensors with what
transformers' LlamaForCausalLM (eager attention, float32, CPU) computes from
it: logits, the mean cross-entropy loss, the gradient of every parameter, the
pre-clip global gradient norm, the parameters after one AdamW step, a 10-step
loss trajectory and a 50-token greedy continuation. The Rust model is checked
against these files (tests/fixtures/README.md says what each tensor means).

Usage (from the repository root):

    /work/pyref/venv/bin/python tools/scripts/make_fixtures.py
        regenerates the committed fixtures tests/fixtures/{gqa,odd,mha}

    /work/pyref/venv/bin/python tools/scripts/make_fixtures.py \
        --random-configs 5 --seed 7 --out /tmp/fx
        draws 5 new random small configs and writes /tmp/fx/rand_000 ... ;
        point the Rust tests at them with LLAMA2_FIXTURES_DIR=/tmp/fx

Everything is seeded: the same command writes the same numbers on the same
torch build (bit-identical across torch versions is not promised).
"""

import argparse
import json
import math
import os
import platform
import random
import shutil
import sys

import numpy
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

# The training hyper-parameters of the paper (PAPER.md section 3), with a
# small fixed learning rate so ten steps stay in a regime where the loss falls.
ADAMW_LR = 1e-3
ADAMW_BETAS = (0.9, 0.95)
ADAMW_EPS = 1e-5
ADAMW_WEIGHT_DECAY = 0.1
CLIP_MAX_NORM = 1.0
TRAJ_STEPS = 10
GREEDY_NEW_TOKENS = 50
GREEDY_PROMPT_LEN = 8
# A greedy step whose top-1 and top-2 logits are closer than this could flip
# under float32 reordering (the Rust model sums in a different order); the
# prompt is redrawn until every one of the 50 steps has at least this margin,
# so the committed greedy sequence is robust to ~1e-4 logit noise.
GREEDY_MIN_MARGIN = 1e-3
GREEDY_PROMPT_TRIES = 50

# The committed configs. `config_style` says how rope_theta is written in
# config.json: "rope_parameters" is what transformers 5.x writes
# ({"rope_parameters": {"rope_type": "default", "rope_theta": X}}),
# "top_level" is the transformers 4.x layout ("rope_theta": X at top level,
# no head_dim), which the Rust loader must also accept (DESIGN.md, Formats).
COMMITTED = {
    # Sizes are kept small so the three directories stay a few MB in all:
    # each holds the weights three times (model, gradients, AdamW result).
    "gqa": dict(
        vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, B=2, T=48, seed=1,
        config_style="rope_parameters",
    ),
    # odd sizes everywhere (hidden 96, 3 heads of 32, one KV head, ffn 136,
    # vocab 1000, T 97), tied embeddings, theta 5e5, eps 1e-6
    "odd": dict(
        vocab_size=1000, hidden_size=96, intermediate_size=136, num_hidden_layers=2,
        num_attention_heads=3, num_key_value_heads=1, rms_norm_eps=1e-6,
        rope_theta=500000.0, tie_word_embeddings=True, B=1, T=97, seed=2,
        config_style="rope_parameters",
    ),
    # multi-head (KV heads = heads), untied, transformers 4.x config layout
    "mha": dict(
        vocab_size=256, hidden_size=64, intermediate_size=100, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, B=3, T=33, seed=3,
        config_style="top_level",
    ),
}


def versions():
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": numpy.__version__,
    }


def hf_config(spec):
    """LlamaConfig from a spec dict (the keys of COMMITTED)."""
    kw = dict(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        rms_norm_eps=spec["rms_norm_eps"],
        tie_word_embeddings=spec["tie_word_embeddings"],
        max_position_embeddings=spec.get("max_position_embeddings", 256),
        rope_parameters={"rope_type": "default", "rope_theta": float(spec["rope_theta"])},
        bos_token_id=1,
        eos_token_id=2,
    )
    if spec.get("head_dim") is not None:
        kw["head_dim"] = spec["head_dim"]
    return LlamaConfig(**kw)


def init_weights(model, spec, gen):
    """Random weights whose logits have magnitude ~1.

    HF's own init (normal, std 0.02; norms at 1) gives logits of ~1e-2 and an
    almost uniform attention, which would hide errors in the softmax, the
    rotary embedding and the norm gradients. Instead:
      Linear weights [out, in]: N(0, 1/in), so every projection keeps unit
        scale (q.k/sqrt(hd) ~ 1: attention is far from uniform; logits ~ 1);
      embedding: N(0, 1), or N(0, 1/hidden) when tied to the lm_head (so the
        logits stay ~1);
      RMSNorm weights: 1 + 0.1 * N(0, 1), so their gradients are exercised.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                std = 1.0 / math.sqrt(spec["hidden_size"]) if spec["tie_word_embeddings"] else 1.0
                p.copy_(std * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


INIT_RULE = ("Linear [out,in]: N(0, 1/in); embed_tokens: N(0,1) (N(0,1/hidden) if tied); "
             "RMSNorm weights: 1 + 0.1*N(0,1); drawn in model.named_parameters() order "
             "from torch.Generator seeded with meta.seed")


def build_model(spec):
    cfg = hf_config(spec)
    gen = torch.Generator().manual_seed(spec["seed"])
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    init_weights(model, spec, gen)
    model.eval()  # no dropout anywhere in Llama, but be explicit
    return model, gen


def param_groups(model):
    """The paper's AdamW groups: decay on matrices, none on 1-D norm weights."""
    decay = [p for _, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.ndim < 2]
    return [
        {"params": decay, "weight_decay": ADAMW_WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model):
    # foreach=False selects torch's plain per-parameter loop (_single_tensor_adamw),
    # the textbook formula the Rust AdamW follows; foreach/fused agree to rounding.
    return torch.optim.AdamW(param_groups(model), lr=ADAMW_LR, betas=ADAMW_BETAS,
                             eps=ADAMW_EPS, foreach=False)


def ce_loss(model, inputs, targets):
    logits = model(input_ids=inputs).logits  # (B, T, V)
    v = logits.shape[-1]
    loss = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1))
    return logits, loss


def greedy_loop(model, prompt, n):
    """Plain greedy decoding: full forward each step, argmax of the last logits.

    Returns the new ids and the smallest top1-top2 logit gap over the steps."""
    ids = prompt.clone()
    out, margins = [], []
    with torch.no_grad():
        for _ in range(n):
            last = model(input_ids=ids[None]).logits[0, -1]
            top2 = torch.topk(last, 2).values
            margins.append(float(top2[0] - top2[1]))
            nxt = int(torch.argmax(last))
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([nxt], dtype=ids.dtype)])
    return out, min(margins)


def greedy_generate(model, prompt, n):
    """The same with model.generate (KV cache), EOS disabled.

    generate() merges the passed GenerationConfig with model.generation_config,
    where eos_token_id=None means "not given" and the model's EOS (2) would
    still stop decoding; so the model's own generation config is cleared too."""
    saved = model.generation_config
    model.generation_config = transformers.GenerationConfig(eos_token_id=None, pad_token_id=0)
    gc = transformers.GenerationConfig(
        do_sample=False, max_new_tokens=n, min_new_tokens=0, use_cache=True,
        eos_token_id=None, pad_token_id=0, bos_token_id=1,
    )
    try:
        with torch.no_grad():
            out = model.generate(input_ids=prompt[None], generation_config=gc,
                                 attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    finally:
        model.generation_config = saved
    return out[0, len(prompt):].tolist()


def write_config_json(model, spec, out_dir):
    """config.json as transformers saves it, or rewritten in the 4.x layout."""
    path = os.path.join(out_dir, "config.json")
    if spec["config_style"] == "rope_parameters":
        return
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    assert rp["rope_type"] == "default"
    cfg["rope_theta"] = rp["rope_theta"]
    cfg["rope_scaling"] = None
    cfg.pop("head_dim", None)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    # transformers must read the rewritten file back to the same model config
    back = LlamaConfig.from_pretrained(out_dir)
    assert back.rope_parameters["rope_theta"] == spec["rope_theta"], back.rope_parameters
    assert back.head_dim == model.config.head_dim


def make_fixture(spec, out_dir, log=print):
    os.makedirs(out_dir, exist_ok=True)
    model, gen = build_model(spec)
    b, t = spec["B"], spec["T"]
    v = spec["vocab_size"]

    # ---- save the model in HF format (before any training step) ----
    model.save_pretrained(out_dir, safe_serialization=True)
    write_config_json(model, spec, out_dir)
    names = [n for n, _ in model.named_parameters()]
    init_params = {n: p.detach().clone() for n, p in model.named_parameters()}

    # ---- data: B rows of T+1 random ids ----
    tokens = torch.randint(0, v, (b, t + 1), generator=gen, dtype=torch.int64)
    inputs, targets = tokens[:, :t], tokens[:, 1:]

    # ---- forward, loss, backward, clip, 10 AdamW steps on the same batch ----
    opt = make_optimizer(model)
    traj, grads, logits0, loss0, grad_norm0, after1 = [], None, None, None, None, None
    for step in range(TRAJ_STEPS):
        opt.zero_grad(set_to_none=True)
        logits, loss = ce_loss(model, inputs, targets)
        loss.backward()
        traj.append(loss.item())
        if step == 0:
            logits0 = logits.detach().clone()
            loss0 = loss.detach().clone()
            grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP_MAX_NORM)
        if step == 0:
            grad_norm0 = gn.detach().clone()
        opt.step()
        if step == 0:
            after1 = {n: p.detach().clone() for n, p in model.named_parameters()}

    # ---- greedy decoding from the ORIGINAL weights ----
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(init_params[n])
    tries = 0
    while True:
        tries += 1
        prompt = torch.randint(0, v, (GREEDY_PROMPT_LEN,), generator=gen, dtype=torch.int64)
        greedy, margin = greedy_loop(model, prompt, GREEDY_NEW_TOKENS)
        if margin >= GREEDY_MIN_MARGIN or tries >= GREEDY_PROMPT_TRIES:
            break
    if margin < GREEDY_MIN_MARGIN:
        log(f"WARNING {out_dir}: greedy min margin {margin:.2e} < {GREEDY_MIN_MARGIN} "
            f"after {tries} prompts")
    gen_ids = greedy_generate(model, prompt, GREEDY_NEW_TOKENS)
    generate_matches = gen_ids == greedy
    if not generate_matches:
        log(f"WARNING {out_dir}: model.generate differs from the plain greedy loop")

    meta = {
        "name": os.path.basename(os.path.normpath(out_dir)),
        "B": b, "T": t, "V": v, "P": GREEDY_PROMPT_LEN, "greedy_new_tokens": GREEDY_NEW_TOKENS,
        "seed": spec["seed"],
        "spec": {k: spec[k] for k in sorted(spec)},
        "config_style": spec["config_style"],
        "versions": versions(),
        "model": "transformers LlamaForCausalLM, attn_implementation=eager, float32, CPU",
        "init": INIT_RULE,
        "param_names": names,
        "tied_note": ("tie_word_embeddings: lm_head.weight IS model.embed_tokens.weight; "
                      "it is absent from model.safetensors and from grad.*/adamw.*; "
                      "grad.model.embed_tokens.weight holds both uses"
                      if spec["tie_word_embeddings"] else None),
        "loss": "F.cross_entropy(logits.view(-1,V), targets.view(-1)), mean over B*T",
        "clip": ("torch.nn.utils.clip_grad_norm_(params, 1.0): total = L2 norm over all "
                 "grads; grads *= min(1, 1.0 / (total + 1e-6)); grad_norm = total"),
        "adamw": {
            "impl": "torch.optim.AdamW(foreach=False)",
            "lr": ADAMW_LR, "betas": list(ADAMW_BETAS), "eps": ADAMW_EPS,
            "weight_decay": ADAMW_WEIGHT_DECAY,
            "param_groups": "weight_decay 0.1 on params with ndim >= 2, 0.0 on ndim < 2 (RMSNorm)",
            "formula": ("p *= 1 - lr*wd; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; "
                        "p -= (lr/(1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps); t from 1"),
        },
        "traj": ("traj_loss[i] = loss before update i on the same batch, from the original "
                 "weights; adamw.* = params after update 0; every update = zero_grad, "
                 "forward, backward, clip_grad_norm_(1.0), AdamW step"),
        "greedy": {
            "rule": ("plain loop: full forward of prompt+generated, argmax of last logits, "
                     "append; 50 steps; never stops at EOS"),
            "min_top2_margin": margin,
            "min_margin_required": GREEDY_MIN_MARGIN,
            "prompts_tried": tries,
            "generate_matches": generate_matches,
            "generate_call": ("model.generate(do_sample=False, max_new_tokens=50, use_cache=True, "
                              "eos_token_id=None)"),
        },
        "stats": {
            "loss": float(loss0),
            "ln_V": math.log(v),
            "logits_std": float(logits0.std()),
            "grad_norm": float(grad_norm0),
            "clip_active": bool(float(grad_norm0) > CLIP_MAX_NORM),
            "traj_first_last": [traj[0], traj[-1]],
        },
    }

    ref = {
        "tokens": tokens.to(torch.int32).contiguous(),
        "logits": logits0.contiguous(),
        "loss": loss0.reshape(1).contiguous(),
        "grad_norm": grad_norm0.reshape(1).to(torch.float32).contiguous(),
        "traj_loss": torch.tensor(traj, dtype=torch.float32),
        "greedy_prompt": prompt.to(torch.int32).contiguous(),
        "greedy_ids": torch.tensor(greedy, dtype=torch.int32),
    }
    for n in names:
        ref[f"grad.{n}"] = grads[n].contiguous()
        ref[f"adamw.{n}"] = after1[n].contiguous()
    save_file(ref, os.path.join(out_dir, "reference.safetensors"), metadata={"meta": json.dumps(meta)})
    log(f"wrote {out_dir}: loss {float(loss0):.4f} (ln V {math.log(v):.3f}), logits std "
        f"{float(logits0.std()):.3f}, grad_norm {float(grad_norm0):.3f}, traj "
        f"{traj[0]:.4f} -> {traj[-1]:.4f}, greedy margin {margin:.2e} "
        f"(tries {tries}), generate_matches {generate_matches}")
    return meta


def random_spec(rng, index, seed):
    """A random small config: every knob the Rust model must honour."""
    hd = rng.choice([8, 16, 32, 64])
    n_heads = rng.randint(1, 6)
    divisors = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
    n_kv = rng.choice(divisors)
    spec = dict(
        vocab_size=rng.randint(50, 1200),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        num_hidden_layers=rng.randint(1, 3),
        rms_norm_eps=rng.choice([1e-5, 1e-6]),
        rope_theta=rng.choice([10000.0, 500000.0, float(rng.randint(100, 1000000))]),
        tie_word_embeddings=rng.random() < 0.4,
        B=rng.randint(1, 3),
        T=rng.randint(1, 100),
        seed=seed * 1000 + index,
        config_style=rng.choice(["rope_parameters", "top_level"]),
        head_dim=None,
    )
    if rng.random() < 0.2 and spec["config_style"] == "rope_parameters":
        # an explicit head_dim that differs from hidden/heads (valid in HF, which
        # still requires hidden % heads == 0)
        spec["hidden_size"] = n_heads * (hd + rng.choice([-4, 4, 8]))
        spec["head_dim"] = hd
    else:
        spec["hidden_size"] = n_heads * hd
    spec["intermediate_size"] = rng.randint(max(8, spec["hidden_size"] // 2), 3 * spec["hidden_size"])
    return spec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None,
                    help="output directory (default: tests/fixtures of this repository)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="committed configs to write (default: all of " + ", ".join(COMMITTED) + ")")
    ap.add_argument("--random-configs", type=int, default=0, metavar="N",
                    help="instead of the committed configs, draw N random small configs")
    ap.add_argument("--seed", type=int, default=0, help="seed for --random-configs")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = args.out or os.path.join(repo, "tests", "fixtures")
    if args.random_configs < 0:
        sys.exit("--random-configs must be >= 0; HINT: pass a count such as 5")
    if args.random_configs:
        rng = random.Random(args.seed)
        for i in range(args.random_configs):
            spec = random_spec(rng, i, args.seed)
            d = os.path.join(out, f"rand_{i:03d}")
            if os.path.isdir(d):
                shutil.rmtree(d)
            make_fixture(spec, d)
        return
    names = args.only or list(COMMITTED)
    for name in names:
        if name not in COMMITTED:
            sys.exit(f"unknown config {name!r}; HINT: choose from {', '.join(COMMITTED)}")
        d = os.path.join(out, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        make_fixture(COMMITTED[name], d)


if __name__ == "__main__":
    main()

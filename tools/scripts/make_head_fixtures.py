#!/usr/bin/env python3
"""Golden fixtures for the trunk + heads and ragged batches, made with
Hugging Face transformers (eager attention, float32, CPU).

Writes tests/fixtures/heads/{lm,seqcls}/ (config.json, model.safetensors,
reference.safetensors); tests/fixtures/README.md says what each tensor means.

- lm: a LlamaForCausalLM on a RAGGED batch (right padding with
  pad_token_id, attention_mask marking the valid tokens): the
  log-probability of every target token (log_softmax gathered at the
  target), the entropy of every valid row's softmax, the mean
  cross-entropy over the valid targets and the gradient of every parameter.
- seqcls: a LlamaForSequenceClassification (num_labels 1, pad_token_id 0):
  the pooled score of each sequence (transformers reads the last token that
  is not the pad id), the score head at every position (a value model),
  and the gradients of two linear losses: sum_i w_i * score_i (the reward
  model's path) and sum_{i,t valid} u_it * value_it (the value model's).

Usage (from the repository root):

    /work/pyref/venv/bin/python tools/scripts/make_head_fixtures.py
"""

import json
import math
import os
import platform

import numpy
import safetensors
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "heads")
PAD = 0  # pad_token_id: never drawn as a real token below
B, T = 3, 20
LENS = [20, 13, 6]  # valid input tokens per sequence (right padding after)
SPEC = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5)


def versions():
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__}


def config(seqcls):
    kw = dict(SPEC, max_position_embeddings=64,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
              bos_token_id=1, eos_token_id=2, pad_token_id=PAD, tie_word_embeddings=False)
    if seqcls:
        kw["num_labels"] = 1
    return LlamaConfig(**kw)


def init_weights(model, gen):
    """As make_fixtures.py: Linear N(0, 1/in), embedding N(0, 1), norms
    1 + 0.1 N(0, 1), so logits and scores are ~1 and attention is far from
    uniform."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            elif name == "model.embed_tokens.weight":
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[1]))


def ragged_tokens(gen):
    """tokens (B, T+1) drawn from 3..V (never PAD, BOS or EOS); input rows
    past each length are PAD, targets there are -100."""
    toks = torch.randint(3, SPEC["vocab_size"], (B, T + 1), generator=gen)
    inputs = toks[:, :T].clone()
    targets = toks[:, 1:].clone()
    mask = torch.zeros(B, T, dtype=torch.long)
    for i, n in enumerate(LENS):
        inputs[i, n:] = PAD
        targets[i, n:] = -100
        mask[i, :n] = 1
    return inputs, targets, mask


def save_dir(model, name, tensors, meta):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("generation_config.json",):
        p = os.path.join(d, f)
        if os.path.exists(p):
            os.remove(p)
    meta = dict(meta, versions=versions(), B=B, T=T, lens=LENS, pad_token_id=PAD)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(d, "reference.safetensors"),
              metadata={"meta": json.dumps(meta)})


def make_lm():
    gen = torch.Generator().manual_seed(11)
    model = LlamaForCausalLM._from_config(config(False), attn_implementation="eager", dtype=torch.float32)
    init_weights(model, gen)
    model.eval()
    inputs, targets, mask = ragged_tokens(gen)
    logits = model(input_ids=inputs, attention_mask=mask).logits  # (B, T, V)
    logp = F.log_softmax(logits.double(), dim=-1)
    valid = targets >= 0
    gathered = logp.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    logprobs = torch.where(valid, gathered, torch.zeros_like(gathered))
    ent = -(logp.exp() * logp).sum(-1)
    entropy = torch.where(valid, ent, torch.zeros_like(ent))
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    loss.backward()
    t = {"inputs": inputs.to(torch.int32), "targets": targets.to(torch.int32), "lens": torch.tensor(LENS, dtype=torch.int32),
         "logprobs": logprobs.float(), "entropy": entropy.float(), "loss": loss.detach().reshape(1)}
    for n, p in model.named_parameters():
        t["grad." + n] = p.grad.detach().clone()
    save_dir(model, "lm", t, {"what": "LlamaForCausalLM on a right-padded batch with attention_mask",
                              "logprobs": "log_softmax(logits, float64).gather(target); 0 where target = -100",
                              "entropy": "-(p * log p).sum(-1) in float64; 0 where target = -100",
                              "loss": "F.cross_entropy(logits, targets, ignore_index=-100): mean over valid targets",
                              "grad": "d loss / d param"})


def make_seqcls():
    gen = torch.Generator().manual_seed(12)
    model = LlamaForSequenceClassification._from_config(config(True), attn_implementation="eager", dtype=torch.float32)
    init_weights(model, gen)
    model.eval()
    inputs, _, mask = ragged_tokens(gen)
    w = torch.randn(B, generator=gen)
    u = torch.randn(B, T, generator=gen) * mask
    out = model(input_ids=inputs, attention_mask=mask)
    scores = out.logits[:, 0]  # (B,) pooled at the last non-pad token
    (w * scores).sum().backward()
    t = {"inputs": inputs.to(torch.int32), "lens": torch.tensor(LENS, dtype=torch.int32), "scores": scores.detach(),
         "w": w, "u": u}
    for n, p in model.named_parameters():
        t["grad_scores." + n] = p.grad.detach().clone()
    model.zero_grad()
    hidden = model.model(input_ids=inputs, attention_mask=mask).last_hidden_state
    values = model.score(hidden)[..., 0]  # (B, T): the head at every position
    (u * values).sum().backward()
    t["values"] = (values * mask).detach()
    for n, p in model.named_parameters():
        t["grad_values." + n] = p.grad.detach().clone()
    save_dir(model, "seqcls", t, {"what": "LlamaForSequenceClassification, num_labels 1, on a right-padded batch",
                                  "scores": "model(...).logits[:, 0]: the score at the last token != pad_token_id",
                                  "values": "model.score(model.model(...).last_hidden_state): every position; 0 on padding",
                                  "grad_scores": "d sum_i w_i * scores_i / d param",
                                  "grad_values": "d sum_it u_it * values_it / d param (u is 0 on padding)"})


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    make_lm()
    make_seqcls()
    print("wrote", os.path.abspath(OUT))

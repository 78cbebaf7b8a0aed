#!/usr/bin/env python3
"""Independent reader/writer for llama2.c checkpoints (.bin) <-> HF directories.

The three float32 layouts of docs/llama2c-formats.md:
  legacy  export.py version 0: 7 x int32 header, weights grouped by kind,
          freq_cis tables after the final norm, negative vocab = own classifier
  v1      export.py version 1: 256-byte header (magic "ak42", version 1,
          7 x int32, shared-classifier byte, zero padding), norms first,
          no freq_cis tables
  early   what llamac2py 0.1.4's run.c (an early llama2.c) reads: the legacy
          layout WITHOUT GQA (wk, wv are dim x dim; n_kv_heads is ignored) and
          RoPE computed FROM the stored freq_cis tables
Weights are written from an HF directory (config.json + model.safetensors)
with q/k un-permuted from HF's rotate-half layout to llama2.c's interleaved
pairs, and read back with the inverse permutation.

Commands (run from the repository root with /work/pyref/venv/bin/python):
  export  --hf DIR --layout {legacy,v1,early} --out FILE.bin [--force]
  import  --bin FILE.bin [--layout auto|legacy|v1|early] --out DIR
  fixtures [--out tests/fixtures/llama2c]   write the committed fixtures
  check    [--dir tests/fixtures/llama2c]   round trips + a float64 llama2.c-
           style forward (interleaved RoPE from the tables) vs transformers
  verify-runc [--run .peers/run]            greedy tokens of llama2.c's run.c
           vs transformers on the same weights (needs build_llama2c.sh)
  bench-model --preset stories15m --out DIR HF dir + early .bin + tokenizer.bin
           with random weights, for the run.c / PyTorch / Rust decode peers

Written for this project from the formats as documented; no llama2.c code.
"""

import argparse
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

MAGIC = 0x616B3432  # "ak42" as a uint32; little-endian on disk: b"24ka"
V1_HEADER_BYTES = 256
LEGACY_HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
V1_HEADER = struct.Struct("<Ii7iB")  # magic, version, the 7 params, shared-classifier flag
LAYOUTS = ("legacy", "v1", "early")
# llama2.c's run.c hard-codes these (rmsnorm: `ss += 1e-5f`; newer run.c RoPE:
# `powf(10000.0f, ...)`), so they are what a .bin file means.
RUNC_RMS_EPS = 1e-5
RUNC_THETA = 10000.0

# l2c_forward (float64 with float32 tables) vs transformers in float64 (whose
# RMSNorm still rounds to float32): see cmd_check
L2C_FORWARD_RTOL = 1e-5

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class FormatError(Exception):
    pass


# ---------------------------------------------------------------------------
# configuration


def hf_to_params(cfg):
    """llama2.c header params from an HF config.json dict, with checks."""
    dim = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    hd = cfg.get("head_dim") or dim // n_heads
    if hd * n_heads != dim:
        raise FormatError(f"head_dim {hd} * heads {n_heads} != hidden {dim}: llama2.c derives "
                          "head_size = dim / n_heads; HINT: such a model has no llama2.c form")
    if hd % 2:
        raise FormatError(f"head_dim {hd} is odd; RoPE pairs need it even")
    theta = cfg.get("rope_theta")
    rp = cfg.get("rope_parameters") or {}
    if theta is None:
        theta = rp.get("rope_theta", RUNC_THETA)
    if rp.get("rope_type", "default") != "default" or cfg.get("rope_scaling"):
        raise FormatError("rope scaling is not representable in llama2.c files")
    return dict(dim=dim, hidden_dim=cfg["intermediate_size"], n_layers=cfg["num_hidden_layers"],
                n_heads=n_heads, n_kv_heads=n_kv, vocab_size=cfg["vocab_size"],
                seq_len=cfg.get("max_position_embeddings", 2048),
                shared=bool(cfg.get("tie_word_embeddings", False)),
                theta=float(theta), eps=float(cfg.get("rms_norm_eps", 1e-6)))


def params_to_hf_config(p):
    """An HF config.json dict (transformers 5.x layout) for llama2.c params."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p["dim"],
        "intermediate_size": p["hidden_dim"],
        "num_hidden_layers": p["n_layers"],
        "num_attention_heads": p["n_heads"],
        "num_key_value_heads": p["n_kv_heads"],
        "head_dim": p["dim"] // p["n_heads"],
        "vocab_size": p["vocab_size"],
        "max_position_embeddings": p["seq_len"],
        "rms_norm_eps": p["eps"],
        "rope_parameters": {"rope_type": "default", "rope_theta": p["theta"]},
        "tie_word_embeddings": p["shared"],
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "dtype": "float32",
    }


def rope_tables(seq_len, hd, theta):
    """freq_cis_real / _imag, each (seq_len, hd/2) float32: cos / sin of t*theta^(-2j/hd).

    The angle is computed as transformers' LlamaRotaryEmbedding and llama2.c's
    model.py compute it (float32 exponent 2j/hd, float32 power rounded from
    the exact value, float32 reciprocal, float32 product t * inv_freq); cos
    and sin are then evaluated in float64 and rounded to float32, i.e.
    correctly rounded. torch's own float32 cos/sin (SLEEF, <= 1 ulp) cannot
    be reproduced outside torch, so this rule is the one both this script and
    the Rust exporter (model/src/llama2c.rs) implement, bit for bit; it differs
    from torch's tables by at most 1 ulp in about 1% of the entries."""
    x = np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)
    inv_freq = np.float32(1.0) / np.power(np.float64(theta), x.astype(np.float64)).astype(np.float32)
    ang = np.arange(seq_len, dtype=np.float32)[:, None] * inv_freq[None, :]
    a64 = ang.astype(np.float64)
    return np.cos(a64).astype(np.float32), np.sin(a64).astype(np.float32)


def theta_from_tables(real, imag, hd):
    """Recover theta from stored tables; None if the tables cannot tell (seq_len < 2)."""
    if real.shape[0] < 2 or hd < 4:
        return None
    ang = math.atan2(float(imag[1, 1]), float(real[1, 1]))  # = theta^(-2/hd)
    theta = math.exp(-math.log(ang) * hd / 2.0)
    r = round(theta)
    if abs(theta - r) <= 1e-4 * theta:
        theta = float(r)
    c, s = rope_tables(real.shape[0], hd, theta)
    # the tables must be the standard RoPE ones (float32 cos/sin; Meta's
    # complex polar() and HF's cos/sin agree to a few ulps)
    if not (np.allclose(c, real, atol=1e-5) and np.allclose(s, imag, atol=1e-5)):
        raise FormatError("freq_cis tables are not standard RoPE tables for any theta")
    return theta


# ---------------------------------------------------------------------------
# q/k permutation between HF (rotate-half) and llama2.c / Meta (interleaved pairs)


def hf_to_interleaved(w, n_heads):
    """HF q_proj/k_proj [n_heads*hd, dim] -> llama2.c/Meta rows.

    HF row h*hd + half*(hd/2) + i  holds Meta row  h*hd + 2*i + half."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def interleaved_to_hf(w, n_heads):
    """Inverse of hf_to_interleaved (transformers' convert_llama_weights_to_hf permute)."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, hd // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# ---------------------------------------------------------------------------
# tensor order of each layout


def layout_tensors(layout, p):
    """[(name, shape)] in file order; name is the llama2.c name (per-layer
    tensors are stacked over layers: (L, ...))."""
    L, dim, hdim, v = p["n_layers"], p["dim"], p["hidden_dim"], p["vocab_size"]
    hd = dim // p["n_heads"]
    q_rows = p["n_heads"] * hd
    kv_rows = dim if layout == "early" else p["n_kv_heads"] * hd
    emb = ("tok_embeddings", (v, dim))
    att_norm = ("attention_norm", (L, dim))
    ffn_norm = ("ffn_norm", (L, dim))
    norm = ("norm", (dim,))
    mats = [("wq", (L, q_rows, dim)), ("wk", (L, kv_rows, dim)), ("wv", (L, kv_rows, dim)),
            ("wo", (L, dim, q_rows))]
    ffn = [("w1", (L, hdim, dim)), ("w2", (L, dim, hdim)), ("w3", (L, hdim, dim))]
    out = [] if p["shared"] else [("output", (v, dim))]
    if layout in ("legacy", "early"):
        tables = [("freq_cis_real", (p["seq_len"], hd // 2)), ("freq_cis_imag", (p["seq_len"], hd // 2))]
        return [emb, att_norm] + mats + [ffn_norm] + ffn + [norm] + tables + out
    if layout == "v1":
        return [att_norm, ffn_norm, norm, emb] + mats + ffn + out
    raise ValueError(layout)


def header_bytes(layout, p):
    v = p["vocab_size"]
    fields = [p["dim"], p["hidden_dim"], p["n_layers"], p["n_heads"], p["n_kv_heads"]]
    if layout in ("legacy", "early"):
        return LEGACY_HEADER.pack(*fields, v if p["shared"] else -v, p["seq_len"])
    h = V1_HEADER.pack(MAGIC, 1, *fields, v, p["seq_len"], int(p["shared"]))
    return h + b"\0" * (V1_HEADER_BYTES - len(h))


# ---------------------------------------------------------------------------
# HF <-> llama2.c tensors


def load_hf(hf_dir):
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    path = os.path.join(hf_dir, "model.safetensors")
    if not os.path.isfile(path):
        raise FormatError(f"{path}: missing; HINT: only single-file safetensors models are handled here")
    return cfg, load_file(path)


def hf_to_l2c(cfg, w):
    p = hf_to_params(cfg)
    L = p["n_layers"]

    def stack(fmt, fn=lambda x: x):
        return np.stack([fn(w[fmt.format(i)].astype(np.float32)) for i in range(L)])

    t = {
        "tok_embeddings": w["model.embed_tokens.weight"],
        "attention_norm": stack("model.layers.{}.input_layernorm.weight"),
        "wq": stack("model.layers.{}.self_attn.q_proj.weight", lambda x: hf_to_interleaved(x, p["n_heads"])),
        "wk": stack("model.layers.{}.self_attn.k_proj.weight", lambda x: hf_to_interleaved(x, p["n_kv_heads"])),
        "wv": stack("model.layers.{}.self_attn.v_proj.weight"),
        "wo": stack("model.layers.{}.self_attn.o_proj.weight"),
        "ffn_norm": stack("model.layers.{}.post_attention_layernorm.weight"),
        "w1": stack("model.layers.{}.mlp.gate_proj.weight"),
        "w2": stack("model.layers.{}.mlp.down_proj.weight"),
        "w3": stack("model.layers.{}.mlp.up_proj.weight"),
        "norm": w["model.norm.weight"],
    }
    if not p["shared"]:
        t["output"] = w["lm_head.weight"]
    hd = p["dim"] // p["n_heads"]
    t["freq_cis_real"], t["freq_cis_imag"] = rope_tables(p["seq_len"], hd, p["theta"])
    return p, {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}


def l2c_to_hf(p, t):
    L = p["n_layers"]
    w = {"model.embed_tokens.weight": t["tok_embeddings"], "model.norm.weight": t["norm"]}
    for i in range(L):
        pre = f"model.layers.{i}."
        w[pre + "input_layernorm.weight"] = t["attention_norm"][i]
        w[pre + "self_attn.q_proj.weight"] = interleaved_to_hf(t["wq"][i], p["n_heads"])
        w[pre + "self_attn.k_proj.weight"] = interleaved_to_hf(t["wk"][i], p["n_kv_heads"])
        w[pre + "self_attn.v_proj.weight"] = t["wv"][i]
        w[pre + "self_attn.o_proj.weight"] = t["wo"][i]
        w[pre + "post_attention_layernorm.weight"] = t["ffn_norm"][i]
        w[pre + "mlp.gate_proj.weight"] = t["w1"][i]
        w[pre + "mlp.down_proj.weight"] = t["w2"][i]
        w[pre + "mlp.up_proj.weight"] = t["w3"][i]
    if not p["shared"]:
        w["lm_head.weight"] = t["output"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


def write_bin(path, layout, p, t, force=False):
    """Write tensors t (llama2.c names) in `layout`; refuses what the layout cannot mean."""
    problems = []
    if layout == "early" and p["n_kv_heads"] != p["n_heads"]:
        raise FormatError(f"{path}: the early layout has no GQA (n_kv_heads {p['n_kv_heads']} != "
                          f"n_heads {p['n_heads']}); HINT: use --layout legacy or v1")
    if layout == "v1" and p["theta"] != RUNC_THETA:
        problems.append(f"rope theta {p['theta']} (v1 stores no tables; readers use {RUNC_THETA})")
    if layout == "legacy" and p["theta"] != RUNC_THETA:
        problems.append(f"rope theta {p['theta']} (stored in the tables, but karpathy/llama2.c's "
                        f"current run.c ignores them and uses {RUNC_THETA})")
    if p["eps"] != RUNC_RMS_EPS:
        problems.append(f"rms_norm_eps {p['eps']} (run.c hard-codes {RUNC_RMS_EPS})")
    if problems and not force:
        raise FormatError(f"{path}: {layout} cannot faithfully carry " + "; ".join(problems)
                          + "; HINT: pass --force to write it anyway")
    with open(path, "wb") as f:
        f.write(header_bytes(layout, p))
        for name, shape in layout_tensors(layout, p):
            a = t[name]
            if a.shape != shape:
                raise FormatError(f"{path}: tensor {name} has shape {a.shape}, layout needs {shape}")
            f.write(a.astype("<f4").tobytes())


def sniff(path):
    with open(path, "rb") as f:
        head = f.read(V1_HEADER_BYTES)
    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        if version != 1:
            raise FormatError(f"{path}: llama2.c version {version} file; only float32 version 1 is "
                              "handled (version 2 is Q8_0); HINT: re-export with export.py --version 1")
        return "v1"
    return "legacy"


def read_bin(path, layout="auto"):
    """Returns (params, tensors, layout) with validation against the file size."""
    size = os.path.getsize(path)
    if layout == "auto":
        layout = sniff(path)
    with open(path, "rb") as f:
        data = f.read()
    if layout == "v1":
        if size < V1_HEADER_BYTES:
            raise FormatError(f"{path}: {size} bytes, shorter than the 256-byte v1 header")
        magic, version, dim, hdim, L, nh, nkv, v, seq, shared = V1_HEADER.unpack_from(data)
        if magic != MAGIC or version != 1:
            raise FormatError(f"{path}: bad magic/version {magic:#x}/{version}, not a v1 file")
        off = V1_HEADER_BYTES
    else:
        if size < LEGACY_HEADER.size:
            raise FormatError(f"{path}: {size} bytes, shorter than the 28-byte header")
        dim, hdim, L, nh, nkv, v, seq = LEGACY_HEADER.unpack_from(data)
        shared = v > 0
        v = abs(v)
        off = LEGACY_HEADER.size
    for name, val in (("dim", dim), ("hidden_dim", hdim), ("n_layers", L), ("n_heads", nh),
                      ("n_kv_heads", nkv), ("vocab_size", v), ("seq_len", seq)):
        if val <= 0:
            raise FormatError(f"{path}: header field {name} = {val} must be > 0")
    if dim % nh or nh % nkv:
        raise FormatError(f"{path}: dim {dim}, n_heads {nh}, n_kv_heads {nkv} do not divide")
    p = dict(dim=dim, hidden_dim=hdim, n_layers=L, n_heads=nh, n_kv_heads=nkv, vocab_size=v,
             seq_len=seq, shared=bool(shared), theta=RUNC_THETA, eps=RUNC_RMS_EPS)

    def expected(lay):
        return off + 4 * sum(int(np.prod(s)) for _, s in layout_tensors(lay, p))

    if layout == "legacy" and nkv != nh and size == expected("early") and size != expected("legacy"):
        layout = "early"  # a GQA header but dim x dim k/v: written for the early run.c
    if size != expected(layout):
        raise FormatError(f"{path}: {size} bytes, but a {layout} file with this header has "
                          f"{expected(layout)}; HINT: wrong --layout, or a truncated/corrupt file")
    t = {}
    for name, shape in layout_tensors(layout, p):
        n = int(np.prod(shape))
        t[name] = np.frombuffer(data, dtype="<f4", count=n, offset=off).reshape(shape).astype(np.float32)
        off += 4 * n
    if layout == "early" and nkv != nh:
        p["n_kv_heads"] = nh  # the early run.c ignores the field: k/v have n_heads heads
    if "freq_cis_real" in t:
        th = theta_from_tables(t["freq_cis_real"], t["freq_cis_imag"], dim // nh)
        if th is not None:
            p["theta"] = th
    return p, t, layout


def save_hf(out_dir, p, w):
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(params_to_hf_config(p), f, indent=2, sort_keys=True)
        f.write("\n")
    save_file(w, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})


# ---------------------------------------------------------------------------
# a float64 llama2.c-style forward (interleaved RoPE from the tables), for `check`


def l2c_forward(p, t, tokens):
    """Logits (T, V) for a token sequence, computed the way run.c does, in float64."""
    dim, nh, nkv = p["dim"], p["n_heads"], p["n_kv_heads"]
    hd = dim // nh
    T = len(tokens)
    f = {k: v.astype(np.float64) for k, v in t.items()}
    cos, sin = f["freq_cis_real"][:T], f["freq_cis_imag"][:T]  # (T, hd/2)

    def rms(x, w):
        return w * x / np.sqrt((x * x).mean(-1, keepdims=True) + p["eps"])

    def rope(x, heads):  # x (T, heads*hd), pairs (2i, 2i+1) of each head rotated by angle i
        x = x.reshape(T, heads, hd // 2, 2)
        a, b = x[..., 0], x[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([a * c - b * s, a * s + b * c], -1).reshape(T, heads * hd)

    x = f["tok_embeddings"][tokens]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(p["n_layers"]):
        h = rms(x, f["attention_norm"][l])
        q = rope(h @ f["wq"][l].T, nh).reshape(T, nh, hd)
        k = rope(h @ f["wk"][l].T, nkv).reshape(T, nkv, hd)
        v = (h @ f["wv"][l].T).reshape(T, nkv, hd)
        rep = nh // nkv
        out = np.zeros((T, nh, hd))
        for hh in range(nh):
            s = q[:, hh] @ k[:, hh // rep].T / math.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // rep]
        x = x + out.reshape(T, dim) @ f["wo"][l].T
        h = rms(x, f["ffn_norm"][l])
        g = h @ f["w1"][l].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ f["w3"][l].T)) @ f["w2"][l].T
    x = rms(x, f["norm"])
    return x @ (f["tok_embeddings"] if p["shared"] else f["output"]).T


def hf_logits(hf_dir, tokens):
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float64)
    with torch.no_grad():
        return m(input_ids=torch.tensor([tokens])).logits[0].numpy()


# ---------------------------------------------------------------------------
# fixtures


FIXTURES = {
    # GQA, untied: legacy and v1 only (the early run.c has no GQA)
    "gqa": dict(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False, seed=11),
    # no GQA, tied: all three layouts (legacy and early are then the same bytes)
    "mha": dict(vocab_size=64, hidden_size=32, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, seed=12),
}
FIXTURE_SEQ_LEN = 64


def random_hf_model(out_dir, spec, seq_len, theta=RUNC_THETA):
    """A random HF Llama (weights with logits ~1, as make_fixtures.py) saved to out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import make_fixtures as mf

    cfg = LlamaConfig(
        vocab_size=spec["vocab_size"], hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"], num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"], num_key_value_heads=spec["num_key_value_heads"],
        tie_word_embeddings=spec["tie_word_embeddings"], rms_norm_eps=RUNC_RMS_EPS,
        max_position_embeddings=seq_len, bos_token_id=1, eos_token_id=2,
        rope_parameters={"rope_type": "default", "rope_theta": float(theta)},
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32)
    mf.init_weights(model, dict(spec, hidden_size=spec["hidden_size"]), torch.Generator().manual_seed(spec["seed"]))
    model.save_pretrained(out_dir, safe_serialization=True)
    gcfg = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gcfg):
        os.remove(gcfg)
    return model


def manifest_for(layout, p, path):
    off = V1_HEADER_BYTES if layout == "v1" else LEGACY_HEADER.size
    ents = []
    for name, shape in layout_tensors(layout, p):
        n = int(np.prod(shape))
        ents.append({"name": name, "shape": list(shape), "offset": off, "bytes": 4 * n})
        off += 4 * n
    return {"file": os.path.basename(path), "layout": layout, "bytes": off,
            "header": {k: p[k] for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                          "vocab_size", "seq_len", "shared")},
            "tensors": ents}


def cmd_fixtures(args):
    out = args.out
    for name, spec in FIXTURES.items():
        d = os.path.join(out, name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        hf = os.path.join(d, "hf")
        random_hf_model(hf, spec, FIXTURE_SEQ_LEN)
        cfg, w = load_hf(hf)
        p, t = hf_to_l2c(cfg, w)
        layouts = [l for l in LAYOUTS if not (l == "early" and p["n_kv_heads"] != p["n_heads"])]
        man = {"hf_dir": "hf", "note": "written by tools/scripts/llama2c_ref.py fixtures; "
               "see docs/llama2c-formats.md", "files": []}
        for lay in layouts:
            path = os.path.join(d, f"{lay}.bin")
            write_bin(path, lay, p, t)
            man["files"].append(manifest_for(lay, p, path))
        man["rope_theta"] = p["theta"]
        man["rms_norm_eps"] = p["eps"]
        ids, margins = hf_greedy(hf, [1], FIXTURE_SEQ_LEN)
        man["greedy_from_bos"] = {
            "rule": "prompt [1] (BOS) at position 0, then seq_len greedy tokens, as run.c does "
                    "with temperature 0 and steps = seq_len; from transformers (float32)",
            "ids": ids, "min_top2_margin": min(margins),
        }
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(man, f, indent=1)
            f.write("\n")
        print(f"wrote {d}: {', '.join(l + '.bin' for l in layouts)} + hf/ ({sum(os.path.getsize(os.path.join(d, l + '.bin')) for l in layouts)} bytes of .bin)")


def cmd_check(args):
    failures = 0

    def expect(ok, what):
        nonlocal failures
        print(("  ok   " if ok else "  FAIL ") + what)
        failures += 0 if ok else 1

    for name in sorted(os.listdir(args.dir)):
        d = os.path.join(args.dir, name)
        if not os.path.isfile(os.path.join(d, "manifest.json")):
            continue
        print(name)
        with open(os.path.join(d, "manifest.json")) as f:
            man = json.load(f)
        hf = os.path.join(d, man["hf_dir"])
        cfg, w = load_hf(hf)
        p_hf, t_hf = hf_to_l2c(cfg, w)
        tokens = list(range(1, min(p_hf["vocab_size"], 40)))  # T = 39: odd, not a power of two
        ref = hf_logits(hf, tokens)
        mine = l2c_forward(p_hf, t_hf, tokens)
        # both float64, except that transformers' LlamaRMSNorm computes in
        # float32 even in a float64 model and the RoPE tables are float32:
        # ~1e-7 relative; a wrong permutation or table is O(1)
        expect(np.abs(ref - mine).max() <= L2C_FORWARD_RTOL * np.abs(ref).max(),
               f"float64 llama2.c-style forward (interleaved RoPE, un-permuted q/k) == transformers, "
               f"max err {np.abs(ref - mine).max():.2e}")
        blobs = {}
        for ent in man["files"]:
            path = os.path.join(d, ent["file"])
            with open(path, "rb") as f:
                blobs[ent["layout"]] = f.read()
            p, t, lay = read_bin(path)
            expect(lay == ent["layout"] or (ent["layout"] == "early" and lay == "legacy"),
                   f"{ent['file']}: sniffed as {lay}")
            expect(len(blobs[ent["layout"]]) == ent["bytes"], f"{ent['file']}: {ent['bytes']} bytes")
            back = l2c_to_hf(p, t)
            same = set(back) == set(w) and all(np.array_equal(back[k], w[k]) for k in w)
            expect(same, f"{ent['file']}: import gives the HF tensors bit-identically")
            expect(params_to_hf_config(p)["rope_parameters"]["rope_theta"] == p_hf["theta"],
                   f"{ent['file']}: theta {p['theta']}")
            tmp = path + ".tmp"
            write_bin(tmp, ent["layout"], p_hf, t_hf)
            with open(tmp, "rb") as f:
                expect(f.read() == blobs[ent["layout"]], f"{ent['file']}: export from hf/ is byte-identical")
            os.remove(tmp)
        if "early" in blobs:
            expect(blobs["early"] == blobs["legacy"], "early.bin == legacy.bin byte for byte (no GQA)")
    if failures:
        sys.exit(f"{failures} check(s) failed")
    print("all llama2.c fixtures consistent")


# ---------------------------------------------------------------------------
# run.c


def write_tokenizer_bin(path, vocab_size):
    """A tokenizer.bin that run.c can load: int32 max_token_length, then per
    token: float32 score, int32 byte length, the bytes (no NUL). Each piece is
    "[id]", so run.c's printed text parses back to the token ids."""
    pieces = [f"[{i}]".encode() for i in range(vocab_size)]
    with open(path, "wb") as f:
        f.write(struct.pack("<i", max(len(x) for x in pieces)))
        for x in pieces:
            f.write(struct.pack("<fi", 0.0, len(x)))
            f.write(x)


def run_runc(run, model_bin, vocab_size, steps, threads=2):
    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer_bin(os.path.join(tmp, "tokenizer.bin"), vocab_size)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        res = subprocess.run([os.path.abspath(run), os.path.abspath(model_bin), "0.0", str(steps)],
                             cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{run} exited {res.returncode}: {res.stdout[-500:]} {res.stderr[-500:]}")
    body = res.stdout.split("achieved tok/s:")[0]
    ids = [int(x) for x in re.findall(r"\[(\d+)\]", body)]
    m = re.search(r"achieved tok/s: ([0-9.]+)", res.stdout)
    return ids, float(m.group(1)) if m else None


def hf_greedy(hf_dir, prompt, n):
    """Plain greedy loop in transformers (float32) with per-step top-2 margins."""
    from transformers import LlamaForCausalLM

    m = LlamaForCausalLM.from_pretrained(hf_dir, attn_implementation="eager", dtype=torch.float32)
    m.eval()
    ids, out, margins = list(prompt), [], []
    with torch.no_grad():
        cache = None
        x = torch.tensor([ids])
        for _ in range(n):
            o = m(input_ids=x, past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            last = o.logits[0, -1]
            top = torch.topk(last, 2).values
            margins.append(float(top[0] - top[1]))
            nxt = int(last.argmax())
            out.append(nxt)
            x = torch.tensor([[nxt]])
    return out, margins


def compare(label, runc_ids, hf_ids, margins, tps=None):
    n = len(hf_ids)
    first = next((i for i in range(n) if i >= len(runc_ids) or runc_ids[i] != hf_ids[i]), None)
    ok = first is None and len(runc_ids) == n
    res = {"case": label, "tokens": n, "equal": ok, "min_top2_margin": min(margins),
           "distinct_ids": len(set(hf_ids)), "runc_tok_per_s": tps}
    if not ok:
        res["first_diff"] = first
        res["margin_at_diff"] = margins[first] if first is not None and first < n else None
    print(("  ok   " if ok else "  DIFF ") + json.dumps(res))
    return res


def cmd_verify_runc(args):
    if not os.path.isfile(args.run):
        sys.exit(f"{args.run}: not found; HINT: build it with bash tools/bench/build_llama2c.sh")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            # the committed no-GQA fixture: tied, theta 1e4, seq_len 64: decode all 64 positions
            ("fixture mha (tied, theta 1e4)", os.path.join(args.fixtures, "mha", "hf"),
             os.path.join(args.fixtures, "mha", "early.bin"), FIXTURE_SEQ_LEN),
        ]
        # untied (negative vocab in the header) with theta 5e5: RoPE must come from the tables
        spec = dict(FIXTURES["mha"], tie_word_embeddings=False, seed=21, vocab_size=200,
                    hidden_size=64, intermediate_size=160, num_hidden_layers=3)
        hf2 = os.path.join(tmp, "untied_theta5e5")
        random_hf_model(hf2, spec, 128, theta=500000.0)
        cfg, w = load_hf(hf2)
        p, t = hf_to_l2c(cfg, w)
        b2 = os.path.join(tmp, "untied.bin")
        write_bin(b2, "early", p, t, force=True)  # theta != 1e4 is fine for the early layout's tables
        cases.append(("random untied, theta 5e5, 3 layers", hf2, b2, 128))
        # a stories15M-shaped model (vocab 32000), 256 steps
        if not args.quick:
            hf3, b3 = write_bench_model(os.path.join(tmp, "stories15m"), "stories15m", seq_len=256)
            cases.append(("random stories15m shape (vocab 32000), 256 steps", hf3, b3, 256))
        with open(os.path.join(args.fixtures, "mha", "manifest.json")) as f:
            stored = json.load(f)["greedy_from_bos"]["ids"]
        for label, hf, binf, steps in cases:
            p, _, _ = read_bin(binf, "early")
            runc_ids, tps = run_runc(args.run, binf, p["vocab_size"], steps)
            if binf == cases[0][2]:
                ok = runc_ids == stored
                print(("  ok   " if ok else "  DIFF ") + "run.c == greedy_from_bos stored in mha/manifest.json")
                if not ok:
                    sys.exit("run.c disagrees with the committed greedy ids")
            hf_ids, margins = hf_greedy(hf, [1], steps)
            results.append(compare(label, runc_ids, hf_ids, margins, tps))
    if not all(r["equal"] for r in results):
        sys.exit("run.c and transformers disagree")
    print("run.c greedy == transformers greedy on every case")


def write_bench_model(out_dir, preset, seq_len=None):
    """Random HF model of a preset + its early .bin + tokenizer.bin in out_dir."""
    sys.path.insert(0, os.path.join(REPO, "tools", "bench"))
    from torch_presets import PRESETS

    pr = PRESETS[preset]
    if pr["num_key_value_heads"] != pr["num_attention_heads"]:
        raise FormatError(f"preset {preset} uses GQA; the early run.c cannot run it")
    spec = dict(vocab_size=pr["vocab_size"], hidden_size=pr["hidden_size"],
                intermediate_size=pr["intermediate_size"], num_hidden_layers=pr["num_hidden_layers"],
                num_attention_heads=pr["num_attention_heads"], num_key_value_heads=pr["num_key_value_heads"],
                tie_word_embeddings=False, seed=31)
    hf = os.path.join(out_dir, "hf")
    random_hf_model(hf, spec, seq_len or pr["T"])
    cfg, w = load_hf(hf)
    p, t = hf_to_l2c(cfg, w)
    b = os.path.join(out_dir, "early.bin")
    write_bin(b, "early", p, t)
    write_tokenizer_bin(os.path.join(out_dir, "tokenizer.bin"), p["vocab_size"])
    return hf, b


def cmd_bench_model(args):
    hf, b = write_bench_model(args.out, args.preset, args.seq_len)
    print(f"wrote {hf}, {b}, {args.out}/tokenizer.bin")
    print(f"run: cd {args.out} && OMP_NUM_THREADS=2 {os.path.join(REPO, '.peers', 'run')} early.bin 0.0 256")


def cmd_export(args):
    cfg, w = load_hf(args.hf)
    p, t = hf_to_l2c(cfg, w)
    write_bin(args.out, args.layout, p, t, force=args.force)
    print(f"wrote {args.out} ({args.layout}, {os.path.getsize(args.out)} bytes)")


def cmd_import(args):
    p, t, lay = read_bin(args.bin, args.layout)
    save_hf(args.out, p, l2c_to_hf(p, t))
    print(f"read {args.bin} as {lay}; wrote {args.out} (theta {p['theta']}, eps {p['eps']})")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="HF dir -> .bin")
    e.add_argument("--hf", required=True)
    e.add_argument("--layout", choices=LAYOUTS, required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true", help="write even if theta/eps differ from run.c's constants")
    i = sub.add_parser("import", help=".bin -> HF dir")
    i.add_argument("--bin", required=True)
    i.add_argument("--layout", choices=("auto",) + LAYOUTS, default="auto")
    i.add_argument("--out", required=True)
    fx = sub.add_parser("fixtures", help="write tests/fixtures/llama2c")
    fx.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "llama2c"))
    c = sub.add_parser("check", help="check the llama2c fixtures")
    c.add_argument("--dir", default=os.path.join(REPO, "tests", "fixtures", "llama2c"))
    v = sub.add_parser("verify-runc", help="run.c greedy vs transformers greedy")
    v.add_argument("--run", default=os.path.join(REPO, ".peers", "run"))
    v.add_argument("--fixtures", default=os.path.join(REPO, "tests", "fixtures", "llama2c"))
    v.add_argument("--quick", action="store_true", help="skip the vocab-32000 case")
    bm = sub.add_parser("bench-model", help="random preset model for the decode peers")
    bm.add_argument("--preset", default="stories15m")
    bm.add_argument("--seq-len", type=int, default=None)
    bm.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    try:
        {"export": cmd_export, "import": cmd_import, "fixtures": cmd_fixtures, "check": cmd_check,
         "verify-runc": cmd_verify_runc, "bench-model": cmd_bench_model}[args.cmd](args)
    except FormatError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()

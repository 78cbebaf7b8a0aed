#!/usr/bin/env python3
"""GGUF fixtures for tests/gguf.rs, written with llama.cpp's own Python
package (`gguf`: GGUFWriter, its quantizers and dequantizer) and checked
against transformers loading the same files.

What it writes to tests/fixtures/gguf/ (small, committed):

- quants.gguf: one (4, 512) tensor of every type we read (F32, F16, BF16,
  Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K); and
  quants_ref.safetensors: gguf.quants.dequantize of each (the f32 values
  tests/gguf.rs must reproduce bit for bit).
- mixed_a.gguf (untied) and mixed_b.gguf (tied embeddings, GQA, another
  RoPE base): random 2-layer Llama models (hidden 256, 4 heads of 64, 2 KV
  heads, ffn 256, vocabulary 300) in which the 16 (15) matrices cycle
  through all 13 types, so every type sits in some matrix of a real model,
  q and k included (with llama.cpp's q/k permutation); norms F32. Each
  carries a byte-level BPE vocabulary (256 bytes + merges + ChatML tokens)
  and a ChatML chat template, so the file is a complete model.
  mixed_*_ref.safetensors: `logits` of transformers'
  `LlamaForCausalLM.from_pretrained(dir, gguf_file=...)` on `input_ids`
  (2 x 16), and `fnv.<tensor>`: the FNV-1a 64 digest of every tensor's
  f32 values as gguf's dequantizer gives them (in the file's layout).
- written_ref.json / .safetensors: for the writer (`train-tool convert --to gguf`): the
  model of mixed_a.gguf converted to an HF directory by train-tool, then to
  GGUF in each dtype (f32, f16, bf16, q8_0) by train-tool; for each dtype
  the FNV-1a 64 digest of the whole file and the logits transformers gives
  loading that file (compared in the script with transformers on the HF
  directory, and each tensor's bytes with gguf.quants.quantize of the same
  weights).

The K-quants: the gguf package has no K-quantizer (llama.cpp quantizes
them in C), so their blocks are random bits with the scale fields (f16 d,
dmin) set to values that keep weights within about +-0.1; everything
about them that matters here (layout, dequantization, transformers'
loading) is what llama.cpp's files have.

Run (needs a release build of train-tool for written_ref.json):
  cargo build --release -p llama2-tools
  /work/pyref/venv/bin/python tools/scripts/make_gguf_fixtures.py
"""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "gguf")
TRAIN_TOOL = os.path.join(ROOT, "target", "release", "train-tool")
QK_K = 256

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def fnv1a64(a: np.ndarray) -> str:
    """FNV-1a 64 of the little-endian bytes of `a` (as a hex string)."""
    h = 0xCBF29CE484222325
    data = np.ascontiguousarray(a).tobytes()
    # vectorising FNV is awkward; the arrays are small
    prime = 0x100000001B3
    mask = (1 << 64) - 1
    for b in data:
        h = ((h ^ b) * prime) & mask
    return f"{h:016x}"


def f16_bytes(x, n):
    return np.full((n, 1), x, dtype=np.float16).view(np.uint8)


def k_blocks(qtype, n_blocks, rng):
    """Random K-quant blocks with bounded scales (see the module doc)."""
    _, tsize = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, tsize), dtype=np.uint8)
    if qtype == Q.Q2_K:  # scales[16], qs[64], d, dmin
        b[:, 80:82] = f16_bytes(0.002, n_blocks)
        b[:, 82:84] = f16_bytes(0.002, n_blocks)
    elif qtype == Q.Q3_K:  # hmask[32], qs[64], scales[12], d
        b[:, 108:110] = f16_bytes(0.001, n_blocks)
    elif qtype in (Q.Q4_K, Q.Q5_K):  # d, dmin, scales[12], ...
        b[:, 0:2] = f16_bytes(1e-4 if qtype == Q.Q4_K else 5e-5, n_blocks)
        b[:, 2:4] = f16_bytes(1e-4, n_blocks)
    elif qtype == Q.Q6_K:  # ql[128], qh[64], scales[16], d
        b[:, 208:210] = f16_bytes(2.5e-5, n_blocks)
    return b


def encode(qtype, w, rng):
    """(data for GGUFWriter.add_tensor, raw_dtype) of an f32 matrix `w`."""
    if qtype == Q.F32:
        return w.astype(np.float32), None
    if qtype == Q.F16:
        return w.astype(np.float16), None
    if qtype in (Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K):
        rows, cols = w.shape
        blocks = k_blocks(qtype, rows * cols // QK_K, rng)
        _, tsize = gguf.GGML_QUANT_SIZES[qtype]
        return blocks.reshape(rows, cols // QK_K * tsize), qtype
    return quantize(w, qtype), qtype


def quants_file(rng):
    path = os.path.join(OUT, "quants.gguf")
    w = gguf.GGUFWriter(path, "llama")
    for t in TYPES:
        x = (rng.standard_normal((4, 512)) * 0.05).astype(np.float32)
        data, raw = encode(t, x, rng)
        w.add_tensor(f"t.{t.name}", data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # the reference: gguf's dequantizer on the file as its reader sees it
    # (what transformers does)
    ref = {}
    rd = gguf.GGUFReader(path)
    for t in rd.tensors:
        ref[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(4, 512)
    assert len(ref) == len(TYPES)
    save_file(ref, os.path.join(OUT, "quants_ref.safetensors"))
    print(f"quants.gguf: {len(TYPES)} types, {os.path.getsize(path)} bytes")


def byte_vocab():
    """A byte-level BPE vocabulary: the 256 stand-in characters, merges of
    frequent pairs of a small English text, and three special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    text = open(os.path.join(ROOT, "tests", "data", "corpora", "botchan", "botchan.txt"), encoding="utf-8").read()[:200000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tr = trainers.BpeTrainer(vocab_size=297, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[], show_progress=False)
    tok.train_from_iterator([text], tr)
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in j["model"]["merges"]]
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens += specials
    types = [1] * (len(tokens) - 3) + [3, 3, 3]
    assert len(tokens) == 300, len(tokens)
    return tokens, types, merges


def mixed_model(name, dims, slot_types, theta, eps, rng, vocab):
    """A random Llama in GGUF; `slot_types[i]` is the type of the i-th matrix
    (token_embd, then per block q, k, v, output, gate, up, down, then
    output unless tied, i.e. when slot_types is one short)."""
    tokens, types, merges = vocab
    L, C, H, KV, HD, F, V = dims
    path = os.path.join(OUT, f"{name}.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_context_length(64)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_rope_dimension_count(HD)
    w.add_rope_freq_base(theta)
    w.add_layer_norm_rms_eps(eps)
    w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(297)
    w.add_eos_token_id(299)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    mats = [("token_embd.weight", (V, C))]
    for l in range(L):
        mats += [(f"blk.{l}.attn_q.weight", (H * HD, C)), (f"blk.{l}.attn_k.weight", (KV * HD, C)), (f"blk.{l}.attn_v.weight", (KV * HD, C)),
                 (f"blk.{l}.attn_output.weight", (C, H * HD)), (f"blk.{l}.ffn_gate.weight", (F, C)), (f"blk.{l}.ffn_up.weight", (F, C)),
                 (f"blk.{l}.ffn_down.weight", (C, F))]
    mats.append(("output.weight", (V, C)))
    assert len(slot_types) in (len(mats), len(mats) - 1)
    mats = mats[:len(slot_types)]
    kinds = {}
    for (n, shape), t in zip(mats, slot_types):
        x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        data, raw = encode(t, x, rng)
        w.add_tensor(n, data, raw_dtype=raw)
        kinds[n] = t.name
    for n in ["output_norm.weight"] + [f"blk.{l}.{k}.weight" for l in range(L) for k in ("attn_norm", "ffn_norm")]:
        w.add_tensor(n, (1.0 + 0.1 * rng.standard_normal(C)).astype(np.float32))
        kinds[n] = "F32"
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    ref = {}
    rd = gguf.GGUFReader(path)
    for t in rd.tensors:
        deq = dequantize(t.data, t.tensor_type).astype(np.float32)
        ref[f"fnv.{t.name}"] = np.frombuffer(bytes.fromhex(fnv1a64(deq)), dtype=np.uint8).astype(np.int64)
    ids = rng.integers(0, V, size=(2, 16))
    logits = transformers_logits(OUT, f"{name}.gguf", ids)
    ref["input_ids"] = ids.astype(np.int64)
    ref["logits"] = logits
    save_file(ref, os.path.join(OUT, f"{name}_ref.safetensors"))
    print(f"{name}.gguf: {os.path.getsize(path)} bytes, types {sorted(set(kinds.values()))}")
    return path, ids, logits


def transformers_logits(d, gguf_file, ids):
    m = AutoModelForCausalLM.from_pretrained(d, gguf_file=gguf_file, dtype=torch.float32)
    m.eval()
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.float().numpy()


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute: HF rotate-half rows to interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_tensor(sd, gname, cfg):
    """The HF tensor (in llama.cpp's layout) that GGUF tensor `gname` holds."""
    if gname == "token_embd.weight":
        return sd["model.embed_tokens.weight"]
    if gname == "output.weight":
        return sd["lm_head.weight"]
    if gname == "output_norm.weight":
        return sd["model.norm.weight"]
    _, l, k, _ = gname.split(".")
    hfk = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
           "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
           "ffn_norm": "post_attention_layernorm"}[k]
    x = sd[f"model.layers.{l}.{hfk}.weight"]
    if k == "attn_q":
        return llama_cpp_permute(x, cfg["num_attention_heads"])
    if k == "attn_k":
        return llama_cpp_permute(x, cfg["num_key_value_heads"])
    return x


def written(src_gguf, ids, logits_src):
    """train-tool's GGUF writer, checked by transformers."""
    if not os.path.exists(TRAIN_TOOL):
        sys.exit(f"{TRAIN_TOOL} missing; build it first (cargo build --release -p llama2-tools)")
    ids = ids[:1, :12]
    logits_src = logits_src[:1, :12]
    out = {"source": os.path.basename(src_gguf), "dtypes": {}}
    tensors = {"input_ids": ids.astype(np.int64)}
    with tempfile.TemporaryDirectory() as tmp:
        hf = os.path.join(tmp, "hf")
        subprocess.run([TRAIN_TOOL, "convert", "--from", "gguf", src_gguf, "--to", "hf", hf], check=True, stdout=subprocess.DEVNULL)
        m = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()
        with torch.no_grad():
            via_hf = m(torch.tensor(ids)).logits.numpy()
        err = float(np.abs(via_hf - logits_src).max())
        print(f"  --to hf: transformers on the HF dir vs on the GGUF: max |dlogit| {err:.2e}")
        assert err < 1e-4, err
        sd = {k: v.numpy() for k, v in m.state_dict().items()}
        for dt in ["f32", "f16", "bf16", "q8_0"]:
            g = os.path.join(tmp, f"{dt}.gguf")
            subprocess.run([TRAIN_TOOL, "convert", "--from", "hf", hf, "--to", "gguf", g, "--dtype", dt], check=True, stdout=subprocess.DEVNULL)
            lg = transformers_logits(tmp, f"{dt}.gguf", ids)
            # each matrix's bytes are gguf's own quantization of the weights
            rd = gguf.GGUFReader(g)
            qt = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dt]
            checked = 0
            cfg = json.load(open(os.path.join(hf, "config.json")))
            for t in rd.tensors:
                x = hf_tensor(sd, t.name, cfg)
                if x.ndim == 1:
                    continue
                want = x.astype(np.float16) if qt == Q.F16 else (x if qt == Q.F32 else quantize(x, qt))
                assert np.array_equal(np.asarray(t.data).view(np.uint8).ravel(), want.view(np.uint8).ravel()), (dt, t.name)
                checked += 1
            d = float(np.abs(lg - via_hf).max())
            print(f"  --to gguf --dtype {dt}: transformers on it vs on the HF dir: max |dlogit| {d:.2e} ({checked} tensors byte-equal to gguf's quantizer)")
            if dt == "f32":
                assert d < 1e-4, d
            out["dtypes"][dt] = {"fnv": fnv1a64(np.frombuffer(open(g, "rb").read(), dtype=np.uint8)), "max_abs_vs_hf_dir": d}
            tensors[f"logits.{dt}"] = lg
    with open(os.path.join(OUT, "written_ref.json"), "w") as f:
        json.dump(out, f, indent=1)
    save_file(tensors, os.path.join(OUT, "written_ref.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    rng = np.random.default_rng(20240520)
    quants_file(rng)
    vocab = byte_vocab()
    # every type once or more; the costly F32/F16/BF16 on the small k/v matrices
    a_types = [Q.Q6_K, Q.Q4_0, Q.F32, Q.F16, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q2_K,
               Q.Q3_K, Q.BF16, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_K]
    assert set(a_types) == set(TYPES)
    pa, ids_a, lg_a = mixed_model("mixed_a", (2, 256, 4, 2, 64, 256, 300), a_types, 10000.0, 1e-5, rng, vocab)
    # tied embeddings, 4:1 GQA, another RoPE base and epsilon; rows of 64 (no K-quants)
    b_types = [Q.Q8_0, Q.Q5_1, Q.BF16, Q.Q4_0, Q.F16, Q.Q5_0, Q.Q4_1, Q.F32]
    mixed_model("mixed_b", (1, 64, 4, 1, 16, 96, 300), b_types, 500000.0, 1e-6, rng, vocab)
    written(pa, ids_a, lg_a)


if __name__ == "__main__":
    main()

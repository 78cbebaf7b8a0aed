#!/usr/bin/env python3
"""Writes a Hugging Face Llama directory (config.json + model.safetensors,
no tokenizer: the random benchmark models) as an f32 GGUF that llama.cpp
loads, for llama.cpp's own benchmarks (llama-batched-bench).

What llama.cpp's convert_hf_to_gguf.py does for a Llama, minus the
tokenizer: the same metadata keys, the same tensor names, q_proj / k_proj
rows permuted from HF's rotate-half layout to llama.cpp's interleaved one
(`LlamaModel.permute`), every tensor float32. The vocabulary is a
placeholder of the model's size (piece "[i]" for id i, SentencePiece
"llama" model, BOS 1, EOS 2): the benchmark feeds token ids, never text.

Usage: /work/pyref/venv/bin/python tools/bench/hf_to_gguf_f32.py HF_DIR OUT.gguf
"""

import json
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file


def permute(w, n_head, n_head_kv):
    """HF rotate-half rows -> llama.cpp's interleaved pairs (per head)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{src}/config.json"))
    t = load_file(f"{src}/model.safetensors")
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    c, layers, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    hd = cfg.get("head_dim") or c // nh
    theta = cfg.get("rope_theta") or cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    w = gguf.GGUFWriter(out, "llama")
    w.add_name("llama2 benchmark model")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(c)
    w.add_block_count(layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(float(theta))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"[{i}]".encode() for i in range(v)])
    w.add_token_scores([0.0] * v)
    w.add_token_types([gguf.TokenType.NORMAL] * v)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))

    def put(name, arr):
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    put("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(layers):
        p = f"model.layers.{i}."
        put(f"blk.{i}.attn_norm.weight", t[p + "input_layernorm.weight"])
        put(f"blk.{i}.attn_q.weight", permute(t[p + "self_attn.q_proj.weight"], nh, nh))
        put(f"blk.{i}.attn_k.weight", permute(t[p + "self_attn.k_proj.weight"], nh, nkv))
        put(f"blk.{i}.attn_v.weight", t[p + "self_attn.v_proj.weight"])
        put(f"blk.{i}.attn_output.weight", t[p + "self_attn.o_proj.weight"])
        put(f"blk.{i}.ffn_norm.weight", t[p + "post_attention_layernorm.weight"])
        put(f"blk.{i}.ffn_gate.weight", t[p + "mlp.gate_proj.weight"])
        put(f"blk.{i}.ffn_up.weight", t[p + "mlp.up_proj.weight"])
        put(f"blk.{i}.ffn_down.weight", t[p + "mlp.down_proj.weight"])
    put("output_norm.weight", t["model.norm.weight"])
    put("output.weight", t["lm_head.weight"] if "lm_head.weight" in t else t["model.embed_tokens.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}: {layers} layers, C {c}, vocab {v}, f32")


if __name__ == "__main__":
    main()

"""Model presets shared by the PyTorch peer benchmarks (torch_train_step.py,
torch_generate.py) and by tools/scripts/llama2c_ref.py's bench model.

The Rust benches use the same names and shapes, so a speed ratio compares the
same model on the same machine.
"""

PRESETS = {
    # A few-MB model: a step is dominated by per-op overheads, not GEMM.
    "ref-tiny": dict(vocab_size=512, hidden_size=256, intermediate_size=688,
                     num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                     B=4, T=256),
    # ~56M parameters with the Llama-2 vocabulary: GEMM-bound, a 32000-wide head.
    "ref-small": dict(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                      num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                      B=4, T=512),
    # The shape of llama2.c's stories15M (dim 288, 6 layers, 6 heads, no GQA,
    # seq_len 256), so llama2.c's run.c can decode the same weights.
    "stories15m": dict(vocab_size=32000, hidden_size=288, intermediate_size=768,
                       num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=6,
                       B=4, T=256),
}


def llama_config(preset, max_position_embeddings=None):
    """transformers LlamaConfig for a preset (Llama-2 defaults otherwise)."""
    from transformers import LlamaConfig

    p = PRESETS[preset]
    return LlamaConfig(
        vocab_size=p["vocab_size"], hidden_size=p["hidden_size"],
        intermediate_size=p["intermediate_size"], num_hidden_layers=p["num_hidden_layers"],
        num_attention_heads=p["num_attention_heads"], num_key_value_heads=p["num_key_value_heads"],
        max_position_embeddings=max_position_embeddings or max(p["T"], 512),
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
    )

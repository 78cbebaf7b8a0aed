//! File formats: Hugging Face safetensors checkpoints, GGUF (llama.cpp),
//! llama2.c `.bin` files, llm.c token shards, and the one atomic writer all
//! of them use.

pub mod atomic;
pub mod ggml_quants;
pub mod gguf;
pub mod llama2c;
pub mod shards;
pub mod weights;

//! llama2-model: the Llama 2 model written layer by layer against the
//! `Backend` trait of llama2-runtime.
//!
//! The source is grouped by concern: [`graph`] (parameters, activations,
//! forward, backward, generation), [`formats`] (safetensors, llama2.c, token
//! shards, the atomic writer) and [`text`] (tokenizer, chat format); each
//! module is also reachable by its short name (`llama2_model::weights`).
//!
//! Public items:
//! - [`config::Config`]: shapes, HF config.json, presets
//! - [`weights`]: safetensors checkpoints (read, write atomically)
//! - [`llama2c`]: llama2.c `.bin` checkpoints (legacy, v1, early layouts)
//! - [`gguf`]: GGUF files (llama.cpp): Llama models read (every quant type
//!   of [`formats::ggml_quants`] dequantized) and written (F32/F16/BF16/Q8_0)
//! - [`params`]: the parameter arena with one named field per tensor
//! - [`model::Model`], [`model::KvCache`]: parameters on a backend, load/save
//! - [`acts`]: activations and activation gradients
//! - forward ([`forward`]), backward ([`backward`]), the LM head and loss
//!   in row chunks ([`chunked`])
//! - [`chat`]: chat formats with loss masks: Llama-2-chat built in, or the
//!   model's own Jinja template ([`template`])
//! - [`generate`]: sampling and generation with the KV cache
//! - [`attn_probe`]: attention probabilities of chosen rows, recomputed (debug)
//! - [`shards`]: llm.c token shards (streaming writer, validated reader)
//! - [`tokenizer`]: the tokenizer (SentencePiece BPE from GGUF, `.model` or
//!   `tokenizer.json`; byte-level BPE from `tokenizer.json` or GGUF; BPE
//!   training)

pub mod config;
pub mod error;
pub mod formats;
pub mod graph;
pub mod text;

// the modules by their short names (the paths every crate uses)
pub use formats::{atomic, gguf, llama2c, shards, weights};
pub use graph::{acts, attn_probe, backward, chunked, forward, generate, model, params};
pub use text::{chat, template, tokenizer};

pub use acts::{Acts, GradActs, LogitRows};
pub use config::Config;
pub use error::{ModelError, Result};
pub use model::{KvCache, Model};
pub use params::{ParamId, ParamLayout, ParamTensors, ARENA_ORDER};

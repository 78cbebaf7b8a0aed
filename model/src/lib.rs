//! llama2-model: the Llama 2 model written layer by layer against the
//! `Backend` trait of llama2-runtime.
//!
//! Public items:
//! - [`config::Config`]: shapes, HF config.json, presets
//! - [`weights`]: safetensors checkpoints (read, write atomically)
//! - [`llama2c`]: llama2.c `.bin` checkpoints (legacy, v1, early layouts)
//! - [`params`]: the parameter arena with one named field per tensor
//! - [`model::Model`], [`model::KvCache`]: parameters on a backend, load/save
//! - [`acts`]: activations and activation gradients
//! - forward ([`forward`]), backward ([`backward`])
//! - [`chat`]: the Llama-2-chat format with loss masks
//! - [`generate`]: sampling and generation with the KV cache
//! - [`shards`]: llm.c token shards (streaming writer, validated reader)
//! - [`tokenizer`]: the Llama 2 tokenizer (SentencePiece BPE; GGUF and
//!   `.model` vocabularies; BPE training)

pub mod acts;
pub mod backward;
pub mod chat;
pub mod config;
pub mod error;
pub mod forward;
pub mod generate;
pub mod llama2c;
pub mod model;
pub mod params;
pub mod shards;
pub mod tokenizer;
pub mod weights;

pub use acts::{Acts, GradActs, LogitRows};
pub use config::Config;
pub use error::{ModelError, Result};
pub use model::{KvCache, Model};
pub use params::{ParamId, ParamLayout, ParamTensors};

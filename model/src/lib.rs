//! llama2-model: the Llama 2 model written layer by layer against the
//! `Backend` trait of llama2-runtime.
//!
//! Public items:
//! - [`tokenizer`]: the Llama 2 tokenizer (SentencePiece BPE; GGUF and
//!   `.model` vocabularies; BPE training)

pub mod shards;
pub mod tokenizer;

//! llama2-train: the training loops of Llama 2.
//!
//! Public items:
//! - [`optim`]: AdamW with PyTorch semantics, global-norm clipping
//! - [`schedule`]: warm-up + cosine, constant
//! - [`step`]: the language-model training step (micro-batch accumulation)
//! - [`data`]: llm.c token shards, sequential (or shuffled) batches
//! - [`plot`]: training curves as PNG files
//! - [`error`]: [`TrainError`]

pub mod data;
pub mod error;
pub mod optim;
pub mod plot;
pub mod schedule;
pub mod step;

pub use error::{Result, TrainError};

//! llama2-train: the training loops of Llama 2.
//!
//! Public items:
//! - [`optim`]: AdamW with PyTorch semantics, global-norm clipping
//! - [`schedule`]: warm-up + cosine, constant
//! - [`step`]: the language-model training step (micro-batch accumulation)
//! - [`error`]: [`TrainError`]

pub mod error;
pub mod optim;
pub mod schedule;
pub mod step;

pub use error::{Result, TrainError};

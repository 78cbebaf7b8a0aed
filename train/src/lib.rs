//! llama2-train: the training loops of Llama 2.
//!
//! Public items:
//! - [`optim`]: AdamW with PyTorch semantics, global-norm clipping
//! - [`schedule`]: warm-up + cosine, constant
//! - [`checkpoint`]: atomic checkpoint directories, resume
//! - [`metrics`]: JSONL metrics, progress, energy and carbon estimate
//! - [`run`]: the outer training loop (schedule, validation, checkpoints)
//! - [`sft`]: SFT datasets (messages, sharegpt, prompt/completion, Alpaca), chat format, packing
//! - [`step`]: the language-model training step (micro-batch accumulation)
//! - [`data`]: llm.c token shards, sequential (or shuffled) batches
//! - [`error`]: the crate's error type, `TrainError`

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod metrics;
pub mod optim;
pub mod run;
pub mod schedule;
pub mod sft;
pub mod step;

pub use error::{Result, TrainError};

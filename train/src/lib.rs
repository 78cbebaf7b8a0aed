//! llama2-train: the training loops of Llama 2.
//!
//! Public items:
//! - [`optim`]: AdamW with PyTorch semantics, global-norm clipping
//! - [`schedule`]: warm-up + cosine, constant
//! - [`session`]: the run set-up (fresh or resumed) and its resolved
//!   configuration, saved with checkpoints and checked on resume
//! - [`checkpoint`]: atomic checkpoint directories, resume
//! - [`metrics`]: JSONL metrics, progress, energy and carbon estimate
//! - [`run`]: the outer training loop of every objective (schedule,
//!   validation, checkpoints, metrics)
//! - [`reward`]: reward models: the margin ranking loss as an objective,
//!   preference pairs (formats, mixtures, batches), accuracy by rating
//! - [`rejection`]: rejection-sampling fine-tuning (sample K, score, keep
//!   the best per prompt over all iterations, fine-tune), Figures 7 and 8
//! - [`score`]: reward-model scores of sequences, the helpfulness/safety rule
//! - [`sft`]: SFT datasets (messages, sharegpt, prompt/completion, Alpaca), chat format, packing
//! - [`trainer`]: the one training step for every objective (accumulate,
//!   clip, AdamW over one or more trained models)
//! - [`dist`]: data parallelism over ranks (global counts and norms,
//!   ZeRO-1 sharded AdamW, spread validation, configuration check)
//! - [`step`]: the language-modelling objective (pretraining, SFT)
//! - [`data`]: llm.c token shards, sequential (or shuffled) batches
//! - [`ppo`]: the arithmetic, objective and loop of PPO
//! - [`eval`]: the synthetic annotator, safety data, preference
//!   collection, and the paper's evaluations (win rate, safety, Self-BLEU)
//! - [`gatt`]: Ghost Attention: instructions, dialogs, data construction,
//!   adherence by turn and the attention picture
//! - [`error`]: the crate's error type, `TrainError`

pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod error;
pub mod eval;
pub mod gatt;
pub mod metrics;
pub mod optim;
pub mod ppo;
pub mod rejection;
pub mod reward;
pub mod run;
pub mod schedule;
pub mod score;
pub mod session;
pub mod sft;
pub mod step;
pub mod trainer;

pub use error::{Result, TrainError};

//! The paper's evaluations of chat models (PAPER.md section 9) and the
//! synthetic annotator that stands in for its human raters (sections 4-5).
//!
//! - [`annotator`]: gold helpfulness and gold safety of an answer
//!   (programmatic, deterministic, documented with its constants), the
//!   refusal detector, Bradley-Terry labels of pairs with rating buckets;
//! - [`prompts`]: the unsafe and borderline prompt sets (templates x
//!   objects from `data/rlhf/`, seeded train / held-out split), SFT safety
//!   demonstrations, the Self-BLEU prompt sets, prompt files;
//! - [`preferences`]: preference pairs from model variants, labelled and
//!   written in the reward-model trainer's format;
//! - [`models`]: answers from models (the one place evaluations sample),
//!   gold helpfulness, reward, safety rates, win rates, Self-BLEU against
//!   temperature;
//! - [`stats`]: the arithmetic (BLEU, Self-BLEU, win rate with ties and
//!   standard error, rates, means).

pub mod annotator;
pub mod models;
pub mod preferences;
pub mod prompts;
pub mod stats;

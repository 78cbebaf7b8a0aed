//! PPO as Llama 2 does it (paper section 3.2.3, PAPER.md section 6): a
//! policy and a value model trained, a frozen reference policy and frozen
//! reward models read.
//!
//! - [`math`]: the arithmetic (score switch and transform, KL-penalised
//!   rewards, GAE, whitening, clipped losses and their gradients), pure
//!   functions checked against an independent numpy implementation.
//!
//! - [`objective`]: the policy + value optimizer step over a mini-batch of
//!   rollouts, as an objective of the one trainer.
//!
//! - [`rollout`]: the rollout phase (sampling, reward scores, log-probs,
//!   values) over ragged batches.
//!
//! - [`run`]: the loop (rollouts, arithmetic, mini-batch steps, metrics,
//!   held-out evaluation and early stopping, checkpoints, exact resume).
//!
//! Public items: the [`math`], [`objective`], [`rollout`] and [`run`] modules.

pub mod math;
pub mod objective;
pub mod rollout;
pub mod run;

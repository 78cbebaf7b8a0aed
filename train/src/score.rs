//! Reward-model scores of (prompt + response) sequences, and the paper's
//! rule for combining the helpfulness and safety reward models (PAPER.md
//! section 6), shared by rejection sampling, PPO and `rm score`.
//!
//! A reward model is a model with a score head (`Head::Score`,
//! transformers' `LlamaForSequenceClassification` with one label): the
//! trunk, then the score head at each sequence's last token. Sequences are
//! scored in ragged batches (right padding, never attended), longest first,
//! at most `batch_tokens` padded tokens per forward; the CPU kernels are
//! row-invariant, so a score does not depend on the batch it was computed in.
//!
//! The reward of an answer is a probability: `sigmoid(score)` of the reward
//! model's output. With a safety reward model, the paper's rule (PPO,
//! section 3.2.3): the safety reward is used where the prompt is tagged
//! unsafe or the safety reward is below a threshold (the paper's
//! [`SAFETY_THRESHOLD`], 0.15), the helpfulness reward elsewhere.
//!
//! Public items: [`check_reward_model`], [`score_sequences`],
//! [`RewardSource`], [`Reward`], [`combine`], [`sigmoid`],
//! [`SAFETY_THRESHOLD`], [`DEFAULT_SCORE_TOKENS`].

use crate::error::{Result, TrainError};
use llama2_model::config::Head;
use llama2_model::{Acts, LogitRows, Model};
use llama2_runtime::Backend;

/// The paper's threshold on the safety reward (R_s < 0.15: judged by the
/// safety reward model).
pub const SAFETY_THRESHOLD: f32 = 0.15;

/// Padded tokens per scoring forward by default (as generation's prefill).
pub const DEFAULT_SCORE_TOKENS: usize = 4096;

/// Refuses a model that is not a reward model (`what` names it in the
/// message, e.g. "--rm runs/rm/final").
pub fn check_reward_model<B: Backend>(m: &Model<B>, what: &str) -> Result<()> {
    if m.cfg.head != Head::Score {
        return Err(TrainError::Invalid(format!(
            "{what} is not a reward model: it has a language-model head (LlamaForCausalLM), not a score head; HINT: train one with `train-tool rm train`, or make one from a policy with `train-tool rm init`"
        )));
    }
    Ok(())
}

/// The reward model's score (a logit) of each sequence (prompt + response
/// ids), in the order given.
pub fn score_sequences<B: Backend>(be: &B, rm: &Model<B>, seqs: &[Vec<u32>], batch_tokens: usize) -> Result<Vec<f32>> {
    check_reward_model(rm, "this model")?;
    let (v, ctx) = (rm.cfg.vocab_size, rm.rope_len);
    for (i, s) in seqs.iter().enumerate() {
        if s.is_empty() {
            return Err(TrainError::Invalid(format!("score: sequence {i} is empty")));
        }
        if s.len() > ctx {
            return Err(TrainError::Invalid(format!(
                "score: sequence {i} has {} tokens, the reward model's context is {ctx}; HINT: generate shorter answers (--max-new-tokens)",
                s.len()
            )));
        }
        if let Some(&x) = s.iter().find(|&&x| x as usize >= v) {
            return Err(TrainError::Invalid(format!(
                "score: sequence {i} holds id {x}, outside the reward model's vocabulary of {v}; HINT: the policy and the reward model must share a tokenizer"
            )));
        }
    }
    let mut order: Vec<usize> = (0..seqs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(seqs[i].len()));
    let mut out = vec![0f32; seqs.len()];
    let pad = rm.cfg.pad_id.unwrap_or(0);
    let mut start = 0;
    be.run_batched(|| -> Result<()> {
        while start < order.len() {
            let t = seqs[order[start]].len();
            let b = (batch_tokens.max(1) / t).max(1).min(order.len() - start);
            let chunk = &order[start..start + b];
            let lens: Vec<u32> = chunk.iter().map(|&i| seqs[i].len() as u32).collect();
            let mut flat = vec![pad; b * t];
            for (j, &i) in chunk.iter().enumerate() {
                flat[j * t..j * t + seqs[i].len()].copy_from_slice(&seqs[i]);
            }
            let mut acts = Acts::new(be, &rm.cfg, b, t, false, LogitRows::Last)?;
            rm.trunk(be, &mut acts, &flat, Some(&lens), None)?;
            let at = Model::<B>::last_rows(b, t, Some(&lens))?;
            let s = rm.score_rows(be, &mut acts, &at)?;
            for (j, &i) in chunk.iter().enumerate() {
                out[i] = s[j];
            }
            start += b;
        }
        Ok(())
    })?;
    Ok(out)
}

/// `1 / (1 + e^-x)`
pub fn sigmoid(x: f32) -> f32 {
    (1.0 / (1.0 + (-(x as f64)).exp())) as f32
}

/// Which reward model decided an answer's reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RewardSource {
    Helpfulness,
    Safety,
}

impl RewardSource {
    /// "helpfulness" or "safety"
    pub fn as_str(self) -> &'static str {
        match self {
            RewardSource::Helpfulness => "helpfulness",
            RewardSource::Safety => "safety",
        }
    }
}

/// An answer's reward with the scores it came from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Reward {
    /// the reward in (0, 1): sigmoid of the deciding model's score
    pub value: f32,
    pub source: RewardSource,
    /// the helpfulness model's score (a logit)
    pub helpfulness: f32,
    /// the safety model's score (a logit), when there is a safety model
    pub safety: Option<f32>,
}

/// The paper's rule: the safety reward where the prompt is tagged unsafe or
/// `sigmoid(safety) < threshold` (the paper: [`SAFETY_THRESHOLD`]), else the
/// helpfulness reward.
pub fn combine(helpfulness: f32, safety: Option<f32>, tagged_unsafe: bool, threshold: f32) -> Reward {
    match safety {
        Some(s) if tagged_unsafe || sigmoid(s) < threshold => Reward { value: sigmoid(s), source: RewardSource::Safety, helpfulness, safety },
        _ => Reward { value: sigmoid(helpfulness), source: RewardSource::Helpfulness, helpfulness, safety },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_safety_rule_of_the_paper() {
        // logit(0.15) = ln(0.15/0.85) = -1.7346
        let (unsafe_score, safe_score) = (-1.8, -1.6);
        // no safety model: helpfulness, always
        assert_eq!(combine(2.0, None, true, SAFETY_THRESHOLD).source, RewardSource::Helpfulness);
        // safe prompt, safety probability above 0.15: helpfulness
        let r = combine(2.0, Some(safe_score), false, SAFETY_THRESHOLD);
        assert_eq!((r.source, r.value), (RewardSource::Helpfulness, sigmoid(2.0)));
        // safety probability below 0.15: safety, even on an untagged prompt
        let r = combine(2.0, Some(unsafe_score), false, SAFETY_THRESHOLD);
        assert_eq!((r.source, r.value), (RewardSource::Safety, sigmoid(unsafe_score)));
        // a prompt tagged unsafe: safety, whatever its value
        let r = combine(-3.0, Some(4.0), true, SAFETY_THRESHOLD);
        assert_eq!((r.source, r.value), (RewardSource::Safety, sigmoid(4.0)));
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7 && (sigmoid(-1.7346) - 0.15).abs() < 1e-4);
    }
}

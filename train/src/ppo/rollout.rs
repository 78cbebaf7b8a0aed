//! The rollout phase of a PPO iteration, as functions over batches of
//! (prompt, answer) pairs: sampling answers, reward-model scores,
//! per-token log-probabilities and values. Every function works in ragged
//! batches of at most `batch` sequences (right padding, never attended).
//!
//! Sampling runs the batched decoder ([`generate_all`]: many prompts in
//! one KV cache) and draws each answer from its own seeded stream (one per
//! tag and batch position), so an answer never depends on which other
//! prompts share its batch, nor on how a batch is spread over ranks.
//!
//! Public items: [`Answer`], [`sample_answers`], [`sample_answers_at`], [`SAMPLE_BATCH`], [`score_sequences`],
//! [`answer_logprobs`], [`answer_values`].

use super::objective::{pack_pairs, Workspace};
use crate::error::{Result, TrainError};
use llama2_model::config::Head;
use llama2_model::generate::{generate_all, BatchOptions, Finish, Sampling};
use llama2_model::Model;
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;

/// One vector per answer, one value per answer token.
pub type PerToken = Vec<Vec<f32>>;

/// A sampled answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    /// generated ids (EOS included when generated)
    pub ids: Vec<u32>,
    /// ended with EOS
    pub eos: bool,
}

/// Samples one answer per prompt with `s`, prompt `i` from the stream of
/// batch position `i` under `tag` (see [`sample_answers_at`]).
pub fn sample_answers<B: Backend>(be: &B, policy: &Model<B>, prompts: &[Vec<u32>], max_new: usize, s: &Sampling, seed: u64, tag: &str) -> Result<Vec<Answer>> {
    let at: Vec<usize> = (0..prompts.len()).collect();
    sample_answers_at(be, policy, prompts, &at, max_new, s, seed, tag)
}

/// Sequences the batched decoder keeps in its KV cache when sampling
/// rollouts and evaluation answers.
pub const SAMPLE_BATCH: usize = 16;

/// [`sample_answers`] for a share of a batch: `prompts[j]` is prompt
/// `at[j]` of the whole batch and draws from that position's stream
/// (`generate::sample_rng(s0, at[j], 0)` with `s0 = Rng::derive(seed,
/// tag).next_u64()`), so a rank
/// that samples part of a batch (data parallelism) draws what one process
/// sampling all of it draws. Answers stop at EOS or after `max_new` tokens
/// (fewer where the context ends first).
#[allow(clippy::too_many_arguments)]
pub fn sample_answers_at<B: Backend>(
    be: &B,
    policy: &Model<B>,
    prompts: &[Vec<u32>],
    at: &[usize],
    max_new: usize,
    s: &Sampling,
    seed: u64,
    tag: &str,
) -> Result<Vec<Answer>> {
    if at.len() != prompts.len() {
        return Err(TrainError::Invalid(format!("{} prompts with {} batch positions", prompts.len(), at.len())));
    }
    if let Some((j, p)) = prompts.iter().enumerate().find(|(_, p)| p.len() >= policy.rope_len) {
        return Err(TrainError::Invalid(format!(
            "prompt {} ({} tokens) leaves no room to answer in the context of {}; HINT: drop long prompts",
            at[j],
            p.len(),
            policy.rope_len
        )));
    }
    if prompts.is_empty() {
        return Ok(Vec::new());
    }
    let mut o = BatchOptions::new(max_new, *s, Rng::derive(seed, tag).next_u64());
    o.batch = SAMPLE_BATCH;
    o.streams = Some(at.to_vec());
    let (done, _) = generate_all(be, policy, prompts, &o)?;
    Ok(done.into_iter().map(|c| Answer { eos: c.finish == Finish::Eos, ids: c.ids }).collect())
}

/// Reward-model scores (raw, the score head at each sequence's last token)
/// of (prompt, answer) pairs, about `batch` sequences per forward: the
/// pairs joined and scored by [`crate::score::score_sequences`].
pub fn score_sequences<B: Backend>(be: &B, rm: &Model<B>, pairs: &[(Vec<u32>, Vec<u32>)], batch: usize) -> Result<Vec<f32>> {
    if rm.cfg.head != Head::Score {
        return Err(TrainError::Invalid("a reward model must have a score head (LlamaForSequenceClassification); HINT: make one with `train-tool rm init` and train it with `train-tool rm train`".into()));
    }
    let seqs: Vec<Vec<u32>> = pairs.iter().map(|(p, a)| [p.as_slice(), a.as_slice()].concat()).collect();
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(1);
    crate::score::score_sequences(be, rm, &seqs, batch.max(1) * longest)
}

/// Per answer token log-probabilities under `model`, and (with `entropy`)
/// the entropy of each predicting row.
pub fn answer_logprobs<B: Backend>(be: &B, model: &Model<B>, pairs: &[(Vec<u32>, Vec<u32>)], batch: usize, entropy: bool) -> Result<(PerToken, PerToken)> {
    let mut ws: Option<Workspace<B>> = None;
    let (mut lps, mut ents) = (Vec::with_capacity(pairs.len()), Vec::new());
    for chunk in pairs.chunks(batch.max(1)) {
        let p = pack_pairs(chunk.iter().map(|(a, b)| (a.as_slice(), b.as_slice())), model.cfg.pad_id.unwrap_or(0))?;
        let w = Workspace::ensure(&mut ws, be, model, p.b, p.t, false)?;
        model.forward_ragged(be, &mut w.acts, &p.tokens, Some(&p.lens), None)?;
        let st = model.token_logprobs(be, &mut w.acts, &p.targets, entropy)?;
        let mut k = 0;
        for (_, r) in chunk {
            let rows = &p.rows[k..k + r.len()];
            lps.push(rows.iter().map(|&i| st.logprobs[i as usize]).collect());
            if let Some(e) = &st.entropy {
                ents.push(rows.iter().map(|&i| e[i as usize]).collect());
            }
            k += r.len();
        }
    }
    Ok((lps, ents))
}

/// Per answer token values (the score head at each predicting row).
pub fn answer_values<B: Backend>(be: &B, value: &Model<B>, pairs: &[(Vec<u32>, Vec<u32>)], batch: usize) -> Result<Vec<Vec<f32>>> {
    let mut ws: Option<Workspace<B>> = None;
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let p = pack_pairs(chunk.iter().map(|(a, b)| (a.as_slice(), b.as_slice())), value.cfg.pad_id.unwrap_or(0))?;
        let w = Workspace::ensure(&mut ws, be, value, p.b, p.t, false)?;
        value.trunk(be, &mut w.acts, &p.tokens, Some(&p.lens), None)?;
        let v = value.score_rows(be, &mut w.acts, &p.rows)?;
        let mut k = 0;
        for (_, r) in chunk {
            out.push(v[k..k + r.len()].to_vec());
            k += r.len();
        }
    }
    Ok(out)
}

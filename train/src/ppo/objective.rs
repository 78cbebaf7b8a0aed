//! The PPO objective: one optimizer step of the policy and the value model
//! over a mini-batch of rollouts, through the one trainer
//! ([`crate::trainer::train_step`]).
//!
//! A rollout is a prompt and the answer the policy sampled, with, for each
//! answer token, the log-probability under the sampling policy, the value
//! estimate, the whitened advantage and the return ([`Rollout`]). Token `t`
//! of the answer (at sequence position `p`) is predicted at position
//! `p − 1`: its new log-probability is the LM head's at that row, and its
//! value the value model's score head at the same row (the state before
//! the action). Prompt and answer form one right-padded ragged batch per
//! model.
//!
//! Per micro-batch: both models forward; the losses of [`super::math::losses`]
//! over every answer token of the mini-batch; the policy's gradient enters
//! through the fused cross-entropy with one coefficient per row
//! (`d loss / d logit = −(d loss / d logp) (onehot − softmax)`), the value
//! model's through the score head.
//!
//! Public items: [`Rollout`], [`PpoObjective`], [`Workspace`].

use super::math::{losses, PpoMath};
use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWConfig};
use crate::trainer::{Objective, Part, Sums};
use llama2_model::backward::HeadGrad;
use llama2_model::config::Head;
use llama2_model::{Acts, GradActs, LogitRows, Model};
use llama2_runtime::{Backend, BufKind, CeGrad};

/// One episode ready for training.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rollout {
    pub prompt: Vec<u32>,
    pub response: Vec<u32>,
    /// per answer token: log-probability under the sampling policy
    pub logprobs: Vec<f32>,
    /// per answer token: the value model's estimate when it was sampled
    pub values: Vec<f32>,
    /// per answer token: whitened advantage
    pub advantages: Vec<f32>,
    /// per answer token: return (advantage before whitening + value)
    pub returns: Vec<f32>,
}

impl Rollout {
    /// The sequence position of the first answer token.
    pub fn start(&self) -> usize {
        self.prompt.len()
    }
    pub fn len(&self) -> usize {
        self.prompt.len() + self.response.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Activation buffers of one model, reallocated when the batch shape (or
/// the need for gradients) changes.
pub struct Workspace<B: Backend> {
    pub acts: Acts<B>,
    /// activation gradients (training only)
    pub gacts: Option<GradActs<B>>,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for `b` sequences of `t` tokens: training activations with
    /// gradients, or the one-layer activations of a forward-only pass.
    pub fn ensure<'w>(ws: &'w mut Option<Self>, be: &B, model: &Model<B>, b: usize, t: usize, training: bool) -> Result<&'w mut Self> {
        let fits = ws.as_ref().is_some_and(|w| w.acts.b == b && w.acts.t == t && w.gacts.is_some() == training);
        if !fits {
            *ws = None; // free the old buffers first
            let acts = Acts::new(be, &model.cfg, b, t, training, LogitRows::All)?;
            let gacts = if training { Some(GradActs::new(be, &model.cfg, b, t)?) } else { None };
            *ws = Some(Workspace { acts, gacts });
        }
        ws.as_mut().ok_or_else(|| TrainError::Invalid("no workspace".into()))
    }
}

/// A right-padded batch of rollouts: tokens `(b, t)`, lengths, the LM
/// targets (answer tokens at their predicting rows, −1 elsewhere) and the
/// rows that predict answer tokens, in episode and token order.
pub struct Packed {
    pub b: usize,
    pub t: usize,
    pub tokens: Vec<u32>,
    pub lens: Vec<u32>,
    pub targets: Vec<i32>,
    pub rows: Vec<u32>,
}

/// Packs (prompt, answer) pairs into one right-padded batch; every pair
/// needs a non-empty prompt and answer.
pub fn pack_pairs<'a>(pairs: impl ExactSizeIterator<Item = (&'a [u32], &'a [u32])> + Clone, pad: u32) -> Result<Packed> {
    let b = pairs.len();
    let t = pairs.clone().map(|(p, r)| p.len() + r.len()).max().unwrap_or(0);
    let mut out = Packed { b, t, tokens: vec![pad; b * t], lens: Vec::with_capacity(b), targets: vec![-1; b * t], rows: Vec::new() };
    for (i, (prompt, response)) in pairs.enumerate() {
        if response.is_empty() || prompt.is_empty() {
            return Err(TrainError::Invalid(format!("rollout {i} has an empty prompt or answer")));
        }
        let o = i * t;
        out.tokens[o..o + prompt.len()].copy_from_slice(prompt);
        out.tokens[o + prompt.len()..o + prompt.len() + response.len()].copy_from_slice(response);
        out.lens.push((prompt.len() + response.len()) as u32);
        for (k, &tok) in response.iter().enumerate() {
            let row = o + prompt.len() + k - 1; // the position that predicts answer token k
            out.targets[row] = tok as i32;
            out.rows.push(row as u32);
        }
    }
    Ok(out)
}

/// Packs `batch` (every rollout must have an answer and one entry per
/// answer token in each per-token vector).
pub fn pack(batch: &[Rollout], pad: u32) -> Result<Packed> {
    for (i, r) in batch.iter().enumerate() {
        let n = r.response.len();
        if [r.logprobs.len(), r.values.len(), r.advantages.len(), r.returns.len()].iter().any(|&x| x != n) {
            return Err(TrainError::Invalid(format!("rollout {i}: per-token vectors do not have one entry per answer token ({n})")));
        }
    }
    pack_pairs(batch.iter().map(|r| (r.prompt.as_slice(), r.response.as_slice())), pad)
}

/// A model being trained with its buffers.
pub struct TrainedModel<B: Backend> {
    pub model: Model<B>,
    pub grads: B::Buf,
    pub opt: AdamW<B>,
    pub ws: Option<Workspace<B>>,
}

impl<B: Backend> TrainedModel<B> {
    pub fn new(be: &B, model: Model<B>, opt: AdamWConfig) -> Result<Self> {
        let grads = be.alloc(model.layout.total, BufKind::F32)?;
        let opt = AdamW::new(be, &model.layout, opt)?;
        Ok(TrainedModel { model, grads, opt, ws: None })
    }
}

/// The policy and the value model, trained together.
pub struct PpoObjective<B: Backend> {
    pub policy: TrainedModel<B>,
    pub value: TrainedModel<B>,
    pub math: PpoMath,
}

/// What one micro-batch's forward passes give: per answer token, the new
/// log-probability, entropy and value.
struct Fresh {
    logp: Vec<f64>,
    entropy: Vec<f64>,
    values: Vec<f64>,
}

impl<B: Backend> PpoObjective<B> {
    pub fn new(be: &B, policy: Model<B>, value: Model<B>, math: PpoMath, policy_opt: AdamWConfig, value_opt: AdamWConfig) -> Result<Self> {
        if policy.cfg.head != Head::Lm {
            return Err(TrainError::Invalid(
                "the policy must be a causal language model (LlamaForCausalLM); HINT: --policy takes the SFT or RLHF model, --value a reward or value model"
                    .into(),
            ));
        }
        if value.cfg.head != Head::Score {
            return Err(TrainError::Invalid(
                "the value model must have a score head (LlamaForSequenceClassification); HINT: start it from the reward model".into(),
            ));
        }
        if policy.cfg.vocab_size != value.cfg.vocab_size {
            return Err(TrainError::Invalid(format!("policy vocabulary {} and value model vocabulary {} differ", policy.cfg.vocab_size, value.cfg.vocab_size)));
        }
        Ok(PpoObjective { policy: TrainedModel::new(be, policy, policy_opt)?, value: TrainedModel::new(be, value, value_opt)?, math })
    }

    /// Both forward passes of a packed micro-batch (the logits are kept for
    /// the policy's backward).
    fn forward(&mut self, be: &B, p: &Packed) -> Result<Fresh> {
        let pol = &mut self.policy;
        let w = Workspace::ensure(&mut pol.ws, be, &pol.model, p.b, p.t, true)?;
        pol.model.forward_ragged(be, &mut w.acts, &p.tokens, Some(&p.lens), None)?;
        let st = pol.model.token_logprobs(be, &mut w.acts, &p.targets, true)?;
        let ent = st.entropy.unwrap_or_default();
        let logp = p.rows.iter().map(|&r| st.logprobs[r as usize] as f64).collect();
        let entropy = p.rows.iter().map(|&r| ent.get(r as usize).copied().unwrap_or(0.0) as f64).collect();
        let val = &mut self.value;
        let w = Workspace::ensure(&mut val.ws, be, &val.model, p.b, p.t, true)?;
        val.model.trunk(be, &mut w.acts, &p.tokens, Some(&p.lens), None)?;
        let values = val.model.score_rows(be, &mut w.acts, &p.rows)?.into_iter().map(|x| x as f64).collect();
        Ok(Fresh { logp, entropy, values })
    }

    fn flat(batch: &[Rollout], f: impl Fn(&Rollout) -> &Vec<f32>) -> Vec<f64> {
        batch.iter().flat_map(|r| f(r).iter().map(|&x| x as f64)).collect()
    }
}

impl<B: Backend> Objective<B> for PpoObjective<B> {
    type Batch = Vec<Rollout>;

    fn parts(&mut self) -> Vec<Part<'_, B>> {
        vec![
            Part { name: "policy", model: &mut self.policy.model, grads: &mut self.policy.grads, opt: &mut self.policy.opt },
            Part { name: "value", model: &mut self.value.model, grads: &mut self.value.grads, opt: &mut self.value.opt },
        ]
    }

    /// Answer tokens of the mini-batch.
    fn count(&self, micro: &[Vec<Rollout>]) -> usize {
        micro.iter().flatten().map(|r| r.response.len()).sum()
    }

    fn forward_backward(&mut self, be: &B, batch: &Vec<Rollout>, total: usize) -> Result<Sums> {
        let p = pack(batch, self.policy.model.cfg.pad_id.unwrap_or(0))?;
        let f = self.forward(be, &p)?;
        let (old, adv) = (Self::flat(batch, |r| &r.logprobs), Self::flat(batch, |r| &r.advantages));
        let (ov, ret) = (Self::flat(batch, |r| &r.values), Self::flat(batch, |r| &r.returns));
        let l = losses(&self.math, &old, &f.logp, &adv, &ov, &f.values, &ret, total);
        // policy: d loss / d logits = coef · (softmax − onehot), coef = −d loss / d logp
        let mut coef = vec![0f32; p.b * p.t];
        for (&r, d) in p.rows.iter().zip(&l.d_logp) {
            coef[r as usize] = -(*d as f32);
        }
        let pol = &mut self.policy;
        let w = pol.ws.as_mut().ok_or_else(|| TrainError::Invalid("no workspace".into()))?;
        let gacts = w.gacts.as_mut().ok_or_else(|| TrainError::Invalid("no gradient buffers".into()))?;
        pol.model.loss(be, &mut w.acts, &p.targets, CeGrad::PerRow(&coef))?;
        pol.model.backward_from(be, &w.acts, gacts, &mut pol.grads, &p.tokens, Some(&p.lens), HeadGrad::Logits)?;
        let dv: Vec<f32> = l.d_value.iter().map(|&x| x as f32).collect();
        let val = &mut self.value;
        let w = val.ws.as_mut().ok_or_else(|| TrainError::Invalid("no workspace".into()))?;
        let gacts = w.gacts.as_mut().ok_or_else(|| TrainError::Invalid("no gradient buffers".into()))?;
        val.model.backward_from(be, &w.acts, gacts, &mut val.grads, &p.tokens, Some(&p.lens), HeadGrad::Score { at: &p.rows, dscore: &dv })?;
        let c = total as f64;
        let n = p.rows.len();
        Ok(Sums {
            loss: l.policy * c,
            count: n,
            tokens: p.lens.iter().map(|&x| x as usize).sum(),
            metrics: vec![("value_loss", l.value * c), ("clip_frac", l.clip_frac * c), ("approx_kl", l.approx_kl * c), ("entropy", f.entropy.iter().sum())],
        })
    }

    fn evaluate(&mut self, be: &B, batch: &Vec<Rollout>) -> Result<Sums> {
        let p = pack(batch, self.policy.model.cfg.pad_id.unwrap_or(0))?;
        let f = self.forward(be, &p)?;
        let (old, adv) = (Self::flat(batch, |r| &r.logprobs), Self::flat(batch, |r| &r.advantages));
        let (ov, ret) = (Self::flat(batch, |r| &r.values), Self::flat(batch, |r| &r.returns));
        let n = p.rows.len();
        let l = losses(&self.math, &old, &f.logp, &adv, &ov, &f.values, &ret, n);
        let c = n as f64;
        Ok(Sums {
            loss: l.policy * c,
            count: n,
            tokens: p.lens.iter().map(|&x| x as usize).sum(),
            metrics: vec![("value_loss", l.value * c), ("clip_frac", l.clip_frac * c), ("approx_kl", l.approx_kl * c), ("entropy", f.entropy.iter().sum())],
        })
    }
}

//! One trainer for many objectives: the optimizer step (accumulate over
//! micro-batches, clip, AdamW) written once, for any [`Objective`].
//!
//! An objective owns what it trains (one or more [`Part`]s: a model with
//! its gradients and AdamW state, by name) and whatever it only reads
//! (frozen reference or reward models: no gradients, no optimizer state).
//! It says how many items the step's loss is a mean over ([`Objective::count`]:
//! counted targets, pairs, response tokens), and runs forward + backward of
//! one micro-batch with that global count, accumulating into the gradients
//! ([`Objective::forward_backward`]). [`train_step`] does the rest, the same
//! for language modelling (pretraining, SFT, rejection sampling, GAtt),
//! pairwise ranking (reward models) and PPO.
//!
//! The loss of a step is `Σ over micro-batches of the loss sums / count`, so
//! K micro-batches give the same update as one batch K times larger.
//!
//! Public items: [`Part`], [`Objective`], [`Sums`], [`StepStats`],
//! [`train_step`], [`evaluate`].

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, OptStats};
use llama2_model::Model;
use llama2_runtime::{vm, Backend};

/// A trained model as the step sees it: parameters, gradients (F32, laid
/// out like the parameters) and optimizer state, under a name used in
/// checkpoints and logs ("model" when an objective trains one model).
pub struct Part<'a, B: Backend> {
    pub name: &'static str,
    pub model: &'a mut Model<B>,
    pub grads: &'a mut B::Buf,
    pub opt: &'a mut AdamW<B>,
}

/// Sums over the items of one micro-batch (or over a whole step).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sums {
    /// Σ of the per-item losses
    pub loss: f64,
    /// items counted (targets, pairs, response tokens)
    pub count: usize,
    /// input tokens processed
    pub tokens: usize,
    /// other per-objective sums (accuracy, clip fraction, ...), divided by
    /// `count` when reported
    pub metrics: Vec<(&'static str, f64)>,
}

impl Sums {
    /// Adds another micro-batch's sums (metrics by name, in first-seen order).
    pub fn add(&mut self, o: &Sums) {
        self.loss += o.loss;
        self.count += o.count;
        self.tokens += o.tokens;
        for &(k, x) in &o.metrics {
            match self.metrics.iter_mut().find(|m| m.0 == k) {
                Some(m) => m.1 += x,
                None => self.metrics.push((k, x)),
            }
        }
    }

    /// `loss / count` (0 when nothing was counted).
    pub fn mean_loss(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.loss / self.count as f64
        }
    }

    /// Each metric divided by `count`.
    pub fn mean_metrics(&self) -> Vec<(&'static str, f64)> {
        let n = self.count.max(1) as f64;
        self.metrics.iter().map(|&(k, x)| (k, x / n)).collect()
    }
}

/// A training objective.
pub trait Objective<B: Backend> {
    /// One micro-batch.
    type Batch;
    /// The models this objective trains, in a fixed order.
    fn parts(&mut self) -> Vec<Part<'_, B>>;
    /// The number of items the loss of a step over `micro` is a mean over.
    fn count(&self, micro: &[Self::Batch]) -> usize;
    /// Forward + backward of one micro-batch, with the loss of each item
    /// divided by `total` (the step's [`Objective::count`]); gradients are
    /// accumulated (`+=`) into the parts' gradients. Returns the batch's sums.
    fn forward_backward(&mut self, be: &B, batch: &Self::Batch, total: usize) -> Result<Sums>;
    /// The batch's sums without gradients (validation).
    fn evaluate(&mut self, be: &B, batch: &Self::Batch) -> Result<Sums>;
}

/// What one optimizer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepStats {
    /// mean loss over the counted items
    pub loss: f64,
    /// global gradient norm before clipping (the first part's)
    pub grad_norm: f64,
    /// every part's gradient norm, by name
    pub grad_norms: Vec<(&'static str, f64)>,
    /// learning rate of the first part
    pub lr: f64,
    /// counted items (targets, pairs, tokens)
    pub targets: usize,
    /// input tokens processed
    pub tokens: usize,
    /// the objective's metrics, as means over the counted items
    pub metrics: Vec<(&'static str, f64)>,
}

/// One optimizer step of `obj` over `micro`: zero the gradients, forward +
/// backward of every micro-batch, then clip and AdamW on every part.
///
/// ```
/// use llama2_model::{Config, Model};
/// use llama2_runtime::CpuBackend;
/// use llama2_train::optim::AdamWConfig;
/// use llama2_train::step::{LmTrainer, MicroBatch};
/// use llama2_train::trainer::train_step;
///
/// let be = CpuBackend::new(1)?;
/// let model = Model::init_random(&be, Config::new(64, 32, 48, 1, 2, 1), 7)?;
/// let mut tr = LmTrainer::new(&be, model, 1, 4, AdamWConfig::default())?;
/// // your own batch: inputs and next-token targets (-1 = no loss)
/// let mb = MicroBatch { inputs: vec![1, 5, 9, 3], targets: vec![5, 9, 3, -1] };
/// let first = train_step(&be, &mut tr, std::slice::from_ref(&mb), &[1e-2])?;
/// let later = train_step(&be, &mut tr, std::slice::from_ref(&mb), &[1e-2])?;
/// assert_eq!(first.targets, 3);
/// assert!(later.loss < first.loss);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Each part steps at its learning rate (`lrs[i]` for part `i`; one rate
/// is used for all parts when `lrs` holds one). A step that counts nothing
/// changes no weight.
pub fn train_step<B: Backend, O: Objective<B>>(be: &B, obj: &mut O, micro: &[O::Batch], lrs: &[f64]) -> Result<StepStats> {
    let total = obj.count(micro);
    for p in obj.parts() {
        be.zero(vm(p.grads))?;
    }
    let mut sums = Sums::default();
    if total > 0 {
        for mb in micro {
            let s = obj.forward_backward(be, mb, total)?;
            sums.add(&s);
        }
    }
    let loss = sums.mean_loss();
    if !loss.is_finite() {
        return Err(TrainError::Invalid(format!("loss is {loss}; HINT: lower the learning rate")));
    }
    let mut norms = Vec::new();
    let parts = obj.parts();
    if lrs.len() != 1 && lrs.len() != parts.len() {
        return Err(TrainError::Invalid(format!("{} learning rates for {} trained models", lrs.len(), parts.len())));
    }
    for (i, p) in parts.into_iter().enumerate() {
        let lr = if lrs.len() == 1 { lrs[0] } else { lrs[i] };
        let st = if total > 0 { p.opt.update(be, &mut p.model.params, p.grads, &p.model.layout, lr)? } else { OptStats { grad_norm: 0.0, clip_scale: 1.0 } };
        norms.push((p.name, st.grad_norm));
    }
    Ok(StepStats {
        loss,
        grad_norm: norms.first().map_or(0.0, |n| n.1),
        grad_norms: norms,
        lr: lrs.first().copied().unwrap_or(0.0),
        targets: sums.count,
        tokens: sums.tokens,
        metrics: sums.mean_metrics(),
    })
}

/// The sums of `obj` over batches without gradients.
pub fn evaluate<B: Backend, O: Objective<B>>(be: &B, obj: &mut O, batches: impl IntoIterator<Item = Result<O::Batch>>) -> Result<Sums> {
    let mut sums = Sums::default();
    for b in batches {
        sums.add(&obj.evaluate(be, &b?)?);
    }
    Ok(sums)
}

//! The language-modelling objective (pretraining, SFT, rejection-sampling
//! fine-tuning, GAtt): forward, fused loss + dlogits, backward (llm.c
//! `train_gpt2.c` main loop), as an [`Objective`] of the one trainer
//! ([`crate::trainer`]).
//!
//! The loss is the mean over every counted target of every micro-batch
//! (targets < 0 are ignored: the SFT prompt mask), so K micro-batches give
//! the same update as one batch K times larger.
//!
//! With a logit chunk ([`LmTrainer::with_logit_chunk`]) the LM head and
//! the loss run in row chunks ([`Model::lm_loss_chunked`]): the
//! activations hold a `(chunk, V)` scratch, never the `(b*t, V)` logits.
//! Off (0) by default; the default path is the one it always was.
//!
//! Public items: [`LmTrainer`], [`MicroBatch`], [`StepStats`] (re-exported
//! from the trainer).

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWConfig};
pub use crate::trainer::StepStats;
use crate::trainer::{train_step, Objective, Part, Sums};
use llama2_model::backward::HeadGrad;
use llama2_model::{Acts, GradActs, LogitRows, Model};
use llama2_runtime::{vm, Backend, BufKind, CeGrad};

/// One micro-batch: `inputs (b, t)` and `targets (b, t)` (negative = no loss).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MicroBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<i32>,
}

/// A model with everything a training step needs.
pub struct LmTrainer<B: Backend> {
    pub model: Model<B>,
    pub acts: Acts<B>,
    pub gacts: GradActs<B>,
    pub grads: B::Buf,
    pub opt: AdamW<B>,
    pub b: usize,
    pub t: usize,
    /// rows per chunk of the LM head and loss (0: all rows at once)
    pub logit_chunk: usize,
}

impl<B: Backend> LmTrainer<B> {
    pub fn new(be: &B, model: Model<B>, b: usize, t: usize, opt: AdamWConfig) -> Result<Self> {
        Self::with_logit_chunk(be, model, b, t, opt, 0)
    }

    /// [`LmTrainer::new`] with the LM head and loss in chunks of
    /// `logit_chunk` rows (`1..=b*t`; 0: off, every row at once).
    pub fn with_logit_chunk(be: &B, model: Model<B>, b: usize, t: usize, opt: AdamWConfig, logit_chunk: usize) -> Result<Self> {
        if b == 0 || t == 0 {
            return Err(TrainError::Invalid("batch size and sequence length must be positive".into()));
        }
        if logit_chunk > b * t {
            return Err(TrainError::Invalid(format!(
                "--logit-chunk {logit_chunk} is more than the {b} x {t} = {} rows of a micro-batch; HINT: use at most {} (or 0: no chunking)",
                b * t,
                b * t
            )));
        }
        let rows = if logit_chunk == 0 { LogitRows::All } else { LogitRows::Chunked(logit_chunk) };
        let acts = Acts::new(be, &model.cfg, b, t, true, rows)?;
        let gacts = GradActs::new(be, &model.cfg, b, t)?;
        let grads = be.alloc(model.layout.total, BufKind::F32)?;
        let opt = AdamW::new(be, &model.layout, opt)?;
        Ok(LmTrainer { model, acts, gacts, grads, opt, b, t, logit_chunk })
    }

    /// Forward + backward of all micro-batches into zeroed gradients;
    /// returns (mean loss, counted targets).
    pub fn accumulate(&mut self, be: &B, micro: &[MicroBatch]) -> Result<(f64, usize)> {
        let total = self.count(micro);
        be.zero(vm(&mut self.grads))?;
        let mut sums = Sums::default();
        if total > 0 {
            for mb in micro {
                sums.add(&self.forward_backward(be, mb, total)?);
            }
        }
        Ok((sums.mean_loss(), sums.count))
    }

    /// One optimizer step over `micro` at learning rate `lr`
    /// ([`crate::trainer::train_step`]).
    pub fn step(&mut self, be: &B, micro: &[MicroBatch], lr: f64) -> Result<StepStats> {
        train_step(be, self, micro, &[lr])
    }

    fn check(&self, mb: &MicroBatch) -> Result<()> {
        let n = self.b * self.t;
        if mb.inputs.len() != n || mb.targets.len() != n {
            return Err(TrainError::Invalid(format!("micro-batch: {} inputs / {} targets for {}x{}", mb.inputs.len(), mb.targets.len(), self.b, self.t)));
        }
        Ok(())
    }
}

impl<B: Backend> Objective<B> for LmTrainer<B> {
    type Batch = MicroBatch;

    fn parts(&mut self) -> Vec<Part<'_, B>> {
        vec![Part { name: "model", model: &mut self.model, grads: &mut self.grads, opt: &mut self.opt }]
    }

    /// Counted (non-negative) targets of every micro-batch.
    fn count(&self, micro: &[MicroBatch]) -> usize {
        micro.iter().map(|mb| mb.targets.iter().filter(|&&x| x >= 0).count()).sum()
    }

    fn forward_backward(&mut self, be: &B, mb: &MicroBatch, total: usize) -> Result<Sums> {
        self.check(mb)?;
        let grad = CeGrad::Uniform(1.0 / total as f32);
        if self.logit_chunk > 0 {
            self.model.trunk(be, &mut self.acts, &mb.inputs, None, None)?;
            let (loss, count) = self.model.lm_loss_chunked(be, &mut self.acts, &mb.targets, grad, Some((&mut self.gacts, &mut self.grads)))?;
            self.model.backward_from(be, &self.acts, &mut self.gacts, &mut self.grads, &mb.inputs, None, HeadGrad::Hidden)?;
            return Ok(Sums { loss, count, tokens: mb.inputs.len(), metrics: Vec::new() });
        }
        self.model.forward(be, &mut self.acts, &mb.inputs, None)?;
        let (loss, count) = self.model.loss(be, &mut self.acts, &mb.targets, grad)?;
        self.model.backward(be, &self.acts, &mut self.gacts, &mut self.grads, &mb.inputs)?;
        Ok(Sums { loss, count, tokens: mb.inputs.len(), metrics: Vec::new() })
    }

    fn evaluate(&mut self, be: &B, mb: &MicroBatch) -> Result<Sums> {
        self.check(mb)?;
        let (loss, count) = if self.logit_chunk > 0 {
            self.model.trunk(be, &mut self.acts, &mb.inputs, None, None)?;
            self.model.lm_loss_chunked(be, &mut self.acts, &mb.targets, CeGrad::None, None)?
        } else {
            self.model.forward(be, &mut self.acts, &mb.inputs, None)?;
            self.model.loss(be, &mut self.acts, &mb.targets, CeGrad::None)?
        };
        Ok(Sums { loss, count, tokens: mb.inputs.len(), metrics: Vec::new() })
    }
}

//! The language-model training step shared by pretraining and SFT: forward,
//! fused loss + dlogits, backward, accumulated over micro-batches, then
//! gradient clipping and AdamW (llm.c `train_gpt2.c` main loop).
//!
//! The loss is the mean over every counted target of every micro-batch
//! (targets < 0 are ignored: the SFT prompt mask), so K micro-batches give
//! the same update as one batch K times larger.
//!
//! Public items: [`LmTrainer`], [`MicroBatch`], [`StepStats`].

use crate::error::{Result, TrainError};
use crate::optim::{AdamW, AdamWConfig};
use llama2_model::{Acts, GradActs, LogitRows, Model};
use llama2_runtime::{vm, Backend, BufKind, CeGrad};

/// One micro-batch: `inputs (b, t)` and `targets (b, t)` (negative = no loss).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MicroBatch {
    pub inputs: Vec<u32>,
    pub targets: Vec<i32>,
}

/// What one step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// mean loss over the counted targets
    pub loss: f64,
    pub grad_norm: f64,
    pub lr: f64,
    /// counted targets
    pub targets: usize,
    /// input tokens processed
    pub tokens: usize,
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
}

impl<B: Backend> LmTrainer<B> {
    pub fn new(be: &B, model: Model<B>, b: usize, t: usize, opt: AdamWConfig) -> Result<Self> {
        if b == 0 || t == 0 {
            return Err(TrainError::Invalid("batch size and sequence length must be positive".into()));
        }
        let acts = Acts::new(be, &model.cfg, b, t, true, LogitRows::All)?;
        let gacts = GradActs::new(be, &model.cfg, b, t)?;
        let grads = be.alloc(model.layout.total, BufKind::F32)?;
        let opt = AdamW::new(be, &model.layout, opt)?;
        Ok(LmTrainer { model, acts, gacts, grads, opt, b, t })
    }

    /// Forward + backward of all micro-batches into zeroed gradients;
    /// returns (mean loss, counted targets).
    pub fn accumulate(&mut self, be: &B, micro: &[MicroBatch]) -> Result<(f64, usize)> {
        let n = self.b * self.t;
        for (i, mb) in micro.iter().enumerate() {
            if mb.inputs.len() != n || mb.targets.len() != n {
                return Err(TrainError::Invalid(format!(
                    "micro-batch {i}: {} inputs / {} targets for {}x{}",
                    mb.inputs.len(),
                    mb.targets.len(),
                    self.b,
                    self.t
                )));
            }
        }
        let count: usize = micro.iter().map(|mb| mb.targets.iter().filter(|&&x| x >= 0).count()).sum();
        be.zero(vm(&mut self.grads))?;
        if count == 0 {
            return Ok((0.0, 0));
        }
        let scale = 1.0 / count as f32;
        let mut sum = 0.0;
        for mb in micro {
            self.model.forward(be, &mut self.acts, &mb.inputs, None)?;
            let (s, _) = self.model.loss(be, &mut self.acts, &mb.targets, CeGrad::Uniform(scale))?;
            sum += s;
            self.model.backward(be, &self.acts, &mut self.gacts, &mut self.grads, &mb.inputs)?;
        }
        Ok((sum / count as f64, count))
    }

    /// One optimizer step over `micro` at learning rate `lr`.
    pub fn step(&mut self, be: &B, micro: &[MicroBatch], lr: f64) -> Result<StepStats> {
        let (loss, count) = self.accumulate(be, micro)?;
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!("loss is {loss}; HINT: lower the learning rate")));
        }
        let st = if count > 0 {
            self.opt.update(be, &mut self.model.params, &self.grads, &self.model.layout, lr)?
        } else {
            crate::optim::OptStats { grad_norm: 0.0, clip_scale: 1.0 }
        };
        Ok(StepStats { loss, grad_norm: st.grad_norm, lr, targets: count, tokens: micro.len() * self.b * self.t })
    }
}

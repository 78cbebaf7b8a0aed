//! AdamW over the parameter arena with PyTorch's semantics
//! (`torch.optim.AdamW` + `torch.nn.utils.clip_grad_norm_`):
//! - two groups: weight decay on every matrix (2-D tensors: arena elements
//!   `[0, n_decay)`), none on the RMSNorm gains (`[n_decay, total)`);
//! - gradient clipping by the global L2 norm: `coef = max_norm / (norm +
//!   1e-6)`, applied when `coef < 1` (folded into the fused AdamW kernel as
//!   its gradient scale, so the gradients are read once);
//! - bias correction from step 1.
//!
//! The moments `m`, `v` are F32 buffers laid out like the parameters.
//!
//! Public items: [`AdamWConfig`], [`AdamW`], [`OptStats`].

use crate::error::{Result, TrainError};
use llama2_model::ParamLayout;
use llama2_runtime::{v, vm, AdamWStep, Backend, BufKind, View, ViewMut};

/// Hyper-parameters (defaults: the paper's, PAPER.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// clip the global gradient norm to this (0 = no clipping)
    pub grad_clip: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay: 0.1, grad_clip: 1.0 }
    }
}

/// What one optimizer step saw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptStats {
    /// global L2 norm of the gradients before clipping
    pub grad_norm: f64,
    /// the factor the gradients were multiplied by (1 = not clipped)
    pub clip_scale: f32,
}

/// AdamW state: moments and step count.
pub struct AdamW<B: Backend> {
    pub cfg: AdamWConfig,
    pub m: B::Buf, // like the parameters, F32
    pub v: B::Buf, // like the parameters, F32
    /// steps taken so far
    pub step: u64,
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, layout: &ParamLayout, cfg: AdamWConfig) -> Result<Self> {
        Ok(AdamW { cfg, m: be.alloc(layout.total, BufKind::F32)?, v: be.alloc(layout.total, BufKind::F32)?, step: 0 })
    }

    /// Global L2 norm of `grads` and the clipping factor it implies.
    pub fn clip_scale(&self, be: &B, grads: &B::Buf) -> Result<OptStats> {
        let norm = be.sum_squares(v(grads))?.sqrt();
        if !norm.is_finite() {
            return Err(TrainError::Invalid(format!("gradient norm is {norm}; HINT: lower the learning rate or check the data")));
        }
        let clip_scale = if self.cfg.grad_clip > 0.0 {
            // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1
            let coef = self.cfg.grad_clip as f64 / (norm + 1e-6);
            coef.min(1.0) as f32
        } else {
            1.0
        };
        Ok(OptStats { grad_norm: norm, clip_scale })
    }

    /// One step at learning rate `lr`: clip, decay, update.
    pub fn update(&mut self, be: &B, params: &mut B::Buf, grads: &B::Buf, layout: &ParamLayout, lr: f64) -> Result<OptStats> {
        let st = self.clip_scale(be, grads)?;
        self.step += 1;
        let h = AdamWStep {
            lr: lr as f32,
            beta1: self.cfg.beta1,
            beta2: self.cfg.beta2,
            eps: self.cfg.eps,
            weight_decay: self.cfg.weight_decay,
            step: self.step,
            grad_scale: st.clip_scale,
        };
        let (nd, total) = (layout.n_decay, layout.total);
        for (off, len, wd) in [(0, nd, h.weight_decay), (nd, total - nd, 0.0)] {
            if len == 0 {
                continue;
            }
            let p: ViewMut<B> = vm(&mut *params).sub(off, len)?;
            let g: View<B> = v(grads).sub(off, len)?;
            let m: ViewMut<B> = vm(&mut self.m).sub(off, len)?;
            let vv: ViewMut<B> = vm(&mut self.v).sub(off, len)?;
            be.adamw(p, g, m, vv, AdamWStep { weight_decay: wd, ..h })?;
        }
        Ok(st)
    }
}

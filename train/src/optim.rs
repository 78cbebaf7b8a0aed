//! AdamW over the parameter arena with PyTorch's semantics
//! (`torch.optim.AdamW` + `torch.nn.utils.clip_grad_norm_`):
//! - two groups: weight decay on every matrix (2-D tensors: arena elements
//!   `[0, n_decay)`), none on the RMSNorm gains (`[n_decay, total)`);
//! - gradient clipping by the global L2 norm: `coef = max_norm / (norm +
//!   1e-6)`, applied when `coef < 1` (folded into the fused AdamW kernel as
//!   its gradient scale, so the gradients are read once);
//! - bias correction from step 1.
//!
//! The moments `m`, `v` are F32 buffers laid out like the parameters, or
//! (ZeRO-1, data parallelism) like one shard `[off, off + len)` of them:
//! AdamW is element-wise, so a rank that updates its shard with the global
//! clipping factor computes exactly the elements one process computes; the
//! weight-decay split at `n_decay` is applied inside the shard.
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
    pub m: B::Buf, // like the parameters (or the shard), F32
    pub v: B::Buf, // like the parameters (or the shard), F32
    /// steps taken so far
    pub step: u64,
    /// the arena elements `[off, off + len)` this optimizer updates (the
    /// whole arena, or this rank's ZeRO-1 shard); `m`, `v` hold `len`
    pub shard: (usize, usize),
}

impl<B: Backend> AdamW<B> {
    pub fn new(be: &B, layout: &ParamLayout, cfg: AdamWConfig) -> Result<Self> {
        Self::new_shard(be, layout, cfg, (0, layout.total))
    }

    /// AdamW over the elements `[off, off + len)` of the arena only.
    pub fn new_shard(be: &B, layout: &ParamLayout, cfg: AdamWConfig, (off, len): (usize, usize)) -> Result<Self> {
        if off.checked_add(len).is_none_or(|e| e > layout.total) {
            return Err(TrainError::Invalid(format!("optimizer shard [{off}, {off}+{len}) outside {} parameters", layout.total)));
        }
        Ok(AdamW { cfg, m: be.alloc(len, BufKind::F32)?, v: be.alloc(len, BufKind::F32)?, step: 0, shard: (off, len) })
    }

    /// Keeps only the shard `[off, off + len)` (fresh zero moments; the
    /// step count is kept).
    pub fn reshard(&mut self, be: &B, layout: &ParamLayout, shard: (usize, usize)) -> Result<()> {
        // free the old moments before allocating the new ones
        self.m = be.alloc(0, BufKind::F32)?;
        self.v = be.alloc(0, BufKind::F32)?;
        let step = self.step;
        *self = Self::new_shard(be, layout, self.cfg, shard)?;
        self.step = step;
        Ok(())
    }

    /// Whether this optimizer updates every element.
    pub fn is_whole(&self, layout: &ParamLayout) -> bool {
        self.shard == (0, layout.total)
    }

    /// Global L2 norm of `grads` and the clipping factor it implies.
    pub fn clip_scale(&self, be: &B, grads: &B::Buf) -> Result<OptStats> {
        self.clip_from_norm(be.sum_squares(v(grads))?.sqrt())
    }

    /// The clipping factor a global gradient norm implies.
    pub fn clip_from_norm(&self, norm: f64) -> Result<OptStats> {
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
        self.apply(be, params, grads, layout, lr, st)?;
        Ok(st)
    }

    /// One step with the clipping already decided (`st`, from the global
    /// norm): the elements of this optimizer's shard of `params` from the
    /// same elements of `grads` (both laid out like the whole arena).
    pub fn apply(&mut self, be: &B, params: &mut B::Buf, grads: &B::Buf, layout: &ParamLayout, lr: f64, st: OptStats) -> Result<()> {
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
        // the two groups, each cut to the shard [s0, s1)
        let (nd, (s0, slen)) = (layout.n_decay, self.shard);
        let s1 = s0 + slen;
        for (lo, hi, wd) in [(s0, s1.min(nd), h.weight_decay), (s0.max(nd), s1, 0.0)] {
            if hi <= lo {
                continue;
            }
            let len = hi - lo;
            let p: ViewMut<B> = vm(&mut *params).sub(lo, len)?;
            let g: View<B> = v(grads).sub(lo, len)?;
            let m: ViewMut<B> = vm(&mut self.m).sub(lo - s0, len)?;
            let vv: ViewMut<B> = vm(&mut self.v).sub(lo - s0, len)?;
            be.adamw(p, g, m, vv, AdamWStep { weight_decay: wd, ..h })?;
        }
        Ok(())
    }
}

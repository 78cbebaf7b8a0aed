//! AdamW (Loshchilov & Hutter 2019) with PyTorch's `torch.optim.AdamW`
//! semantics, one fused pass: gradient scaled (global-norm clipping folded
//! in), decoupled weight decay, moment updates, bias-corrected step.
//!
//! Per element, with `g = grad · grad_scale`, step `t` (1-based):
//! ```text
//! p ← p · (1 − lr·wd)
//! m ← m + (1 − β1)(g − m)            (torch: exp_avg.lerp_(g, 1 − β1))
//! v ← β2·v + (1 − β2)·g²
//! p ← p − (lr / (1 − β1^t)) · m / (sqrt(v) / sqrt(1 − β2^t) + ε)
//! ```
//! Write rule: params, m, v updated in place.

use crate::{check_len, Result};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 8192;

/// Hyper-parameters of one AdamW step over one group of parameters.
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// decoupled weight decay (0 for the group without decay)
    pub weight_decay: f32,
    /// 1-based step number (bias correction)
    pub step: u64,
    /// multiplies every gradient first (gradient clipping); 1 for none
    pub grad_scale: f32,
}

impl AdamWStep {
    /// `(lr / bias_correction1, sqrt(bias_correction2))`, computed in f64 and
    /// rounded once, as torch does on the host for the single-tensor path.
    pub fn corrections(&self) -> (f32, f32) {
        let t = self.step as i32;
        let bc1 = 1.0 - (self.beta1 as f64).powi(t);
        let bc2 = 1.0 - (self.beta2 as f64).powi(t);
        ((self.lr as f64 / bc1) as f32, bc2.sqrt() as f32)
    }
}

/// One AdamW step over `params`, `grads`, `m`, `v` (all of length n).
pub fn adamw_cpu(params: &mut [f32], grads: &[f32], m: &mut [f32], v: &mut [f32], h: AdamWStep) -> Result<()> {
    const OP: &str = "adamw";
    let n = params.len();
    check_len(OP, "grads", grads.len(), n)?;
    check_len(OP, "m", m.len(), n)?;
    check_len(OP, "v", v.len(), n)?;
    let (step_size, bc2_sqrt) = h.corrections();
    let decay = 1.0 - h.lr * h.weight_decay;
    params.par_chunks_mut(CHUNK).zip(grads.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK))).for_each(|((p, g), (m, v))| {
        // one length for all four, so the loop has no bounds checks and vectorises
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        let (b1, b2, gs, eps) = (h.beta1, h.beta2, h.grad_scale, h.eps);
        for i in 0..n {
            let g = g[i] * gs;
            let mut pi = p[i] * decay;
            let mi = m[i] + (1.0 - b1) * (g - m[i]);
            let vi = v[i] * b2 + (1.0 - b2) * g * g;
            let denom = vi.sqrt() / bc2_sqrt + eps;
            pi -= step_size * (mi / denom);
            p[i] = pi;
            m[i] = mi;
            v[i] = vi;
        }
    });
    Ok(())
}

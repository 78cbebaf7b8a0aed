//! Fused softmax + cross-entropy: one pass over each row of logits computes
//! the loss and (optionally) overwrites the logits with their gradient, as
//! llm.c's `fused_classifier`, so the `(n, v)` probabilities are never stored
//! separately.
//!
//! Per row with target `y`: `loss = logsumexp(x) − x_y`,
//! `dx = coef · (softmax(x) − onehot(y))`. Rows whose target is negative
//! (the ignore index, transformers' −100) get loss 0 and gradient 0.
//! `coef` is one scale for all rows (`1 / number of counted targets` for a
//! mean loss) or one value per row (PPO's per-token weights).
//! Write rule: `losses` overwritten; logits overwritten by dlogits when a
//! gradient is asked for, untouched otherwise.

use crate::math::exp;
use crate::{arg_err, check_len, Result};
use rayon::prelude::*;

/// What the kernel does to the logits.
#[derive(Clone, Copy, Debug)]
pub enum CeGrad<'a> {
    /// loss only; logits untouched
    None,
    /// logits := scale · (softmax − onehot)
    Uniform(f32),
    /// logits[i] := coef[i] · (softmax − onehot), one coefficient per row
    PerRow(&'a [f32]),
}

/// Loss per row and (per `grad`) dlogits in place. `logits (n, v)`,
/// `losses (n)`, `targets (n)` (negative = ignored).
pub fn cross_entropy_cpu(logits: &mut [f32], losses: &mut [f32], targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
    const OP: &str = "cross_entropy";
    let n = targets.len();
    check_len(OP, "logits", logits.len(), n * v)?;
    check_len(OP, "losses", losses.len(), n)?;
    if let CeGrad::PerRow(c) = grad {
        check_len(OP, "coef", c.len(), n)?;
    }
    if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= 0 && t as usize >= v) {
        return arg_err(OP, format!("target {t} at row {i} is out of range for vocabulary {v}"));
    }
    if v == 0 {
        return Ok(());
    }
    logits.par_chunks_mut(v).zip(losses.par_iter_mut()).enumerate().for_each(|(i, (x, loss))| {
        let t = targets[i];
        let coef = match grad {
            CeGrad::None => None,
            CeGrad::Uniform(s) => Some(s),
            CeGrad::PerRow(c) => Some(c[i]),
        };
        if t < 0 {
            *loss = 0.0;
            if coef.is_some() {
                x.fill(0.0);
            }
            return;
        }
        let m = crate::max(x);
        let mut sum = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let mut tail = 0f32;
        for &xi in chunks.remainder() {
            tail += exp(xi - m);
        }
        for c in chunks {
            for j in 0..16 {
                sum[j] += exp(c[j] - m);
            }
        }
        let lse = m + (crate::sum(&sum) + tail).ln();
        *loss = lse - x[t as usize];
        if let Some(c) = coef {
            for xi in x.iter_mut() {
                *xi = c * exp(*xi - lse);
            }
            x[t as usize] -= c;
        }
    });
    Ok(())
}

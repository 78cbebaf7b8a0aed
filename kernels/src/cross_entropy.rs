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
    /// `logits[i] := coef[i] · (softmax − onehot)`, one coefficient per row
    PerRow(&'a [f32]),
}

/// Loss per row and (per `grad`) dlogits in place. `logits (n, v)`,
/// `losses (n)`, `targets (n)` (negative = ignored).
pub fn cross_entropy_cpu(logits: &mut [f32], losses: &mut [f32], targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
    cross_entropy_impl(logits, losses, None, targets, v, grad)
}

/// [`cross_entropy_cpu`] that also writes the entropy of each row's
/// softmax, `entropy (n)` (0 on ignored rows), in the same sweep:
/// `H = ln S0 − S1 / S0` with `S0 = Σ e_j`, `S1 = Σ e_j (x_j − m)`,
/// `e_j = exp(x_j − m)`, `m = max x` (so `H = lse − Σ p_j x_j`).
pub fn cross_entropy_entropy_cpu(logits: &mut [f32], losses: &mut [f32], entropy: &mut [f32], targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
    check_len("cross_entropy", "entropy", entropy.len(), targets.len())?;
    cross_entropy_impl(logits, losses, Some(entropy), targets, v, grad)
}

/// `(Σ e_j, Σ e_j (x_j − m))` with `e_j = exp(x_j − m)`, 16 lanes; the
/// second sum only when `ENT` (the entropy), in the same sweep.
#[inline]
fn row_sums<const ENT: bool>(x: &[f32], m: f32) -> (f32, f32) {
    let (mut s0, mut s1) = ([0f32; 16], [0f32; 16]);
    let chunks = x.chunks_exact(16);
    let (mut t0, mut t1) = (0f32, 0f32);
    for &xi in chunks.remainder() {
        let e = exp(xi - m);
        t0 += e;
        if ENT {
            t1 += e * (xi - m);
        }
    }
    for c in chunks {
        for j in 0..16 {
            let e = exp(c[j] - m);
            s0[j] += e;
            if ENT {
                s1[j] += e * (c[j] - m);
            }
        }
    }
    (crate::sum(&s0) + t0, if ENT { crate::sum(&s1) + t1 } else { 0.0 })
}

fn cross_entropy_impl(logits: &mut [f32], losses: &mut [f32], entropy: Option<&mut [f32]>, targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
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
    let ent = entropy.map(crate::SharedMut::from_slice);
    logits.par_chunks_mut(v).zip(losses.par_iter_mut()).enumerate().for_each(|(i, (x, loss))| {
        let t = targets[i];
        // SAFETY: entropy element i belongs to row i's task only
        let mut ent_i: Option<&mut f32> = ent.as_ref().map(|e| unsafe { &mut e.slice(i, 1)[0] });
        let coef = match grad {
            CeGrad::None => None,
            CeGrad::Uniform(s) => Some(s),
            CeGrad::PerRow(c) => Some(c[i]),
        };
        if t < 0 {
            *loss = 0.0;
            if let Some(e) = ent_i.as_deref_mut() {
                *e = 0.0;
            }
            if coef.is_some() {
                x.fill(0.0);
            }
            return;
        }
        let m = crate::max(x);
        let (s0, s1) = if ent_i.is_some() { row_sums::<true>(x, m) } else { row_sums::<false>(x, m) };
        let lse = m + s0.ln();
        *loss = lse - x[t as usize];
        if let Some(e) = ent_i {
            *e = s0.ln() - s1 / s0;
        }
        if let Some(c) = coef {
            for xi in x.iter_mut() {
                *xi = c * exp(*xi - lse);
            }
            x[t as usize] -= c;
        }
    });
    Ok(())
}

//! Debug path: the attention probabilities of chosen query rows,
//! recomputed from what a training forward saved (q and k after RoPE, and
//! each row's log-sum-exp), without touching the fast kernels. The kernels
//! never store the `(t, t)` probability matrix (flash-attention style); the
//! probe rebuilds single rows of it in f64:
//!
//! ```text
//! p[h, i, j] = exp(q[i, h] . k[j, g(h)] / sqrt(hd) - lse[h, i])    for j <= i
//! ```
//!
//! where `g(h) = h / (n_head / n_kv_head)` is the key head of query head
//! `h` (grouped-query attention) and `lse` the forward's row log-sum-exp
//! of the scaled scores. A row of `p` sums to 1 up to f32 rounding of the
//! saved values.
//!
//! Needs [`Acts`] of a forward WITHOUT a KV cache (row `i` sits at position
//! `i`) allocated with `training = true` (every layer's q, k and lse kept).
//! Rows past a ragged sequence's length are padding: the caller asks for
//! valid rows only.
//!
//! Used for the GAtt picture (PAPER.md section 7, Llama 2 Figure 10: the
//! attention mass that the tokens of a late answer put on the system
//! message, per layer).
//!
//! Public items: [`AttnProbe`].

use crate::acts::Acts;
use crate::error::{ModelError, Result};
use crate::model::Model;
use llama2_runtime::{v, Backend};
use std::ops::Range;

/// q, k and lse of every layer of one forward, on the host.
pub struct AttnProbe {
    q: Vec<f32>,   // (L, b*t, n_head*hd)
    k: Vec<f32>,   // (L, b*t, n_kv_head*hd)
    lse: Vec<f32>, // (L, b, n_head, t)
    pub layers: usize,
    pub heads: usize,
    kv_heads: usize,
    hd: usize,
    b: usize,
    t: usize,
}

impl AttnProbe {
    /// Copies what the probe needs out of `acts` (after `model.trunk` or
    /// `model.forward` without a cache, on training activations).
    pub fn new<B: Backend>(be: &B, model: &Model<B>, acts: &Acts<B>) -> Result<Self> {
        let cfg = &model.cfg;
        if acts.layers != cfg.n_layers {
            return Err(ModelError::Invalid(format!(
                "the attention probe reads every layer's q, k and lse, but these activations keep {} of {} layers; HINT: allocate Acts with training = true",
                acts.layers, cfg.n_layers
            )));
        }
        let (b, t) = (acts.b, acts.t);
        let mut q = vec![0f32; cfg.n_layers * b * t * cfg.q_dim()];
        let mut k = vec![0f32; cfg.n_layers * b * t * cfg.kv_dim()];
        let mut lse = vec![0f32; cfg.n_layers * b * cfg.n_heads * t];
        be.download(v(&acts.a.q), &mut q)?;
        be.download(v(&acts.a.k), &mut k)?;
        be.download(v(&acts.a.lse), &mut lse)?;
        Ok(AttnProbe { q, k, lse, layers: cfg.n_layers, heads: cfg.n_heads, kv_heads: cfg.n_kv_heads, hd: cfg.head_dim, b, t })
    }

    fn check(&self, seq: usize, layer: usize, row: usize) -> Result<()> {
        if seq >= self.b || layer >= self.layers || row >= self.t {
            return Err(ModelError::Invalid(format!(
                "attention probe: sequence {seq}, layer {layer}, row {row} outside (b {}, layers {}, t {})",
                self.b, self.layers, self.t
            )));
        }
        Ok(())
    }

    /// The probabilities of query row `row` of sequence `seq`, head `h`, in
    /// `layer`: one value per visible key `0..=row`.
    pub fn probs(&self, seq: usize, layer: usize, row: usize, h: usize) -> Result<Vec<f64>> {
        self.check(seq, layer, row)?;
        if h >= self.heads {
            return Err(ModelError::Invalid(format!("attention probe: head {h} of {}", self.heads)));
        }
        let (n, hd) = (self.b * self.t, self.hd);
        let (qd, kvd) = (self.heads * hd, self.kv_heads * hd);
        let g = h / (self.heads / self.kv_heads);
        let scale = 1.0 / (hd as f64).sqrt();
        let qo = (layer * n + seq * self.t + row) * qd + h * hd;
        let qi = &self.q[qo..qo + hd];
        let lse = self.lse[((layer * self.b + seq) * self.heads + h) * self.t + row] as f64;
        Ok((0..=row)
            .map(|j| {
                let ko = (layer * n + seq * self.t + j) * kvd + g * hd;
                let dot: f64 = qi.iter().zip(&self.k[ko..ko + hd]).map(|(&a, &b)| a as f64 * b as f64).sum();
                (dot * scale - lse).exp()
            })
            .collect())
    }

    /// Attention mass on the keys `keys` (clipped to the visible ones) of
    /// each query row in `rows`, per layer and head: `(L, rows.len(), H)`
    /// flattened, row-major.
    pub fn mass(&self, seq: usize, rows: &[usize], keys: Range<usize>) -> Result<Vec<f64>> {
        let mut out = Vec::with_capacity(self.layers * rows.len() * self.heads);
        for l in 0..self.layers {
            for &r in rows {
                for h in 0..self.heads {
                    let p = self.probs(seq, l, r, h)?;
                    let hi = keys.end.min(r + 1);
                    out.push(if keys.start < hi { p[keys.start..hi].iter().sum() } else { 0.0 });
                }
            }
        }
        Ok(out)
    }
}

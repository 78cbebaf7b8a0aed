//! Rotary position embedding (Su et al. 2021), transformers' rotate-half
//! convention on HF's q/k layout: within each head of `hd` values, element
//! `i < hd/2` is paired with element `i + hd/2`:
//! `y1 = x1·cos − x2·sin`, `y2 = x2·cos + x1·sin`, angle `pos · θ^(−2i/hd)`.
//!
//! Applied in place to `x (b, t, heads, hd)`; row `t` has position `pos0 + t`
//! (ragged batches: per-sequence positions, padding rows untouched).
//! The cos/sin table `(max_t, hd/2, 2)` is built once by [`rope_table`]
//! exactly as transformers builds it (f32 `inv_freq`, f32 product, f32
//! cos/sin). Backward applies the inverse rotation to the gradient in place.

use crate::{arg_err, check_len, check_min_len, Ragged, Result};
use rayon::prelude::*;

/// Shape of a RoPE application.
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub b: usize,
    pub t: usize,
    /// number of heads in the tensor (n_head for q, n_kv_head for k)
    pub heads: usize,
    pub hd: usize,
    /// position of row 0
    pub pos0: usize,
}

/// The cos/sin table `(max_t, hd/2, 2)`: `[p][i] = (cos(p·f_i), sin(p·f_i))`
/// with `f_i = 1 / θ^(2i/hd)`, all in f32 as transformers computes it.
pub fn rope_table(max_t: usize, hd: usize, theta: f32) -> Vec<f32> {
    let half = hd / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0f32 / theta.powf((2 * i) as f32 / hd as f32)).collect();
    let mut tab = vec![0f32; max_t * half * 2];
    for p in 0..max_t {
        for i in 0..half {
            let ang = p as f32 * inv_freq[i];
            tab[(p * half + i) * 2] = ang.cos();
            tab[(p * half + i) * 2 + 1] = ang.sin();
        }
    }
    tab
}

fn check(op: &'static str, x: &[f32], table: &[f32], s: RopeShape, rows: Option<Ragged>) -> Result<()> {
    if let Some(r) = rows {
        check_len(op, "x", x.len(), s.b * s.t * s.heads * s.hd)?;
        r.check(op, s.b, s.t, table.len() / s.hd.max(1))?;
        return Ok(());
    }
    if !s.hd.is_multiple_of(2) {
        return arg_err(op, format!("head_dim {} must be even", s.hd));
    }
    check_len(op, "x", x.len(), s.b * s.t * s.heads * s.hd)?;
    check_min_len(op, "table", table.len(), (s.pos0 + s.t) * s.hd)?;
    Ok(())
}

/// In-place rotation of `x (b, t, heads, hd)`; `inverse` rotates by −angle
/// (the backward). Ragged: row `i` of sequence `bi` at `pos0[bi] + i`, rows
/// past `len[bi]` (padding) untouched.
fn rotate(x: &mut [f32], table: &[f32], s: RopeShape, inverse: bool, rows: Option<Ragged>) {
    let half = s.hd / 2;
    let row = s.heads * s.hd;
    if row == 0 {
        return;
    }
    x.par_chunks_mut(row).enumerate().for_each(|(bt, xr)| {
        let (bi, i) = (bt / s.t, bt % s.t);
        let p = match rows {
            None => s.pos0 + i,
            Some(r) if i < r.len[bi] as usize => r.pos0[bi] as usize + i,
            Some(_) => return,
        };
        let tab = &table[p * s.hd..(p + 1) * s.hd];
        for head in xr.chunks_mut(s.hd) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (c, sn) = (tab[2 * i], tab[2 * i + 1]);
                let (a, b) = (x1[i], x2[i]);
                if inverse {
                    x1[i] = a * c + b * sn;
                    x2[i] = b * c - a * sn;
                } else {
                    x1[i] = a * c - b * sn;
                    x2[i] = b * c + a * sn;
                }
            }
        }
    });
}

/// Forward: rotate `x (b, t, heads, hd)` in place.
pub fn rope_fwd_cpu(x: &mut [f32], table: &[f32], s: RopeShape) -> Result<()> {
    check("rope_fwd", x, table, s, None)?;
    rotate(x, table, s, false, None);
    Ok(())
}

/// Forward on a ragged batch (`s.pos0` unused: positions from `r`).
pub fn rope_fwd_ragged_cpu(x: &mut [f32], table: &[f32], s: RopeShape, r: Ragged) -> Result<()> {
    check("rope_fwd", x, table, s, Some(r))?;
    rotate(x, table, s, false, Some(r));
    Ok(())
}

/// Backward: `dx = R^T dy`, in place on the gradient `(b, t, heads, hd)`.
pub fn rope_bwd_cpu(dx: &mut [f32], table: &[f32], s: RopeShape) -> Result<()> {
    check("rope_bwd", dx, table, s, None)?;
    rotate(dx, table, s, true, None);
    Ok(())
}

/// Backward on a ragged batch.
pub fn rope_bwd_ragged_cpu(dx: &mut [f32], table: &[f32], s: RopeShape, r: Ragged) -> Result<()> {
    check("rope_bwd", dx, table, s, Some(r))?;
    rotate(dx, table, s, true, Some(r));
    Ok(())
}

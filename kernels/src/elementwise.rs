//! Small element-wise kernels: residual add, scale, sum of squares (global
//! gradient norm), row gather/scatter (reward and value heads), KV-cache
//! writes.
//!
//! Write rules: `add` and `kv_write` overwrite their output; `add_assign`,
//! `scatter_add_rows` accumulate.

use crate::{arg_err, check_len, check_min_len, Ragged, Result};
use rayon::prelude::*;

const CHUNK: usize = 8192;

/// `out = a + b`.
pub fn add_cpu(out: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
    check_len("add", "a", a.len(), out.len())?;
    check_len("add", "b", b.len(), out.len())?;
    out.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((o, a), b)| {
        for ((oi, ai), bi) in o.iter_mut().zip(a).zip(b) {
            *oi = ai + bi;
        }
    });
    Ok(())
}

/// `x += y`.
pub fn add_assign_cpu(x: &mut [f32], y: &[f32]) -> Result<()> {
    check_len("add_assign", "y", y.len(), x.len())?;
    x.par_chunks_mut(CHUNK).zip(y.par_chunks(CHUNK)).for_each(|(x, y)| {
        for (xi, yi) in x.iter_mut().zip(y) {
            *xi += yi;
        }
    });
    Ok(())
}

/// `x *= s`.
pub fn scale_cpu(x: &mut [f32], s: f32) -> Result<()> {
    x.par_chunks_mut(CHUNK).for_each(|x| x.iter_mut().for_each(|v| *v *= s));
    Ok(())
}

/// `Σ x²` accumulated in f64 over fixed chunks (deterministic).
pub fn sum_squares_cpu(x: &[f32]) -> f64 {
    let parts: Vec<f64> = x.par_chunks(CHUNK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect();
    parts.iter().sum()
}

/// `out (rows.len(), c) = src (n, c)[rows]`.
pub fn gather_rows_cpu(out: &mut [f32], src: &[f32], rows: &[u32], c: usize) -> Result<()> {
    check_len("gather_rows", "out", out.len(), rows.len() * c)?;
    let n = src.len().checked_div(c).unwrap_or(0);
    for (i, &r) in rows.iter().enumerate() {
        if r as usize >= n {
            return arg_err("gather_rows", format!("row {r} out of range for {n} rows"));
        }
        out[i * c..(i + 1) * c].copy_from_slice(&src[r as usize * c..(r as usize + 1) * c]);
    }
    Ok(())
}

/// `dst (n, c)[rows] += src (rows.len(), c)`, in order.
pub fn scatter_add_rows_cpu(dst: &mut [f32], src: &[f32], rows: &[u32], c: usize) -> Result<()> {
    check_len("scatter_add_rows", "src", src.len(), rows.len() * c)?;
    let n = dst.len().checked_div(c).unwrap_or(0);
    for (i, &r) in rows.iter().enumerate() {
        if r as usize >= n {
            return arg_err("scatter_add_rows", format!("row {r} out of range for {n} rows"));
        }
        for (d, s) in dst[r as usize * c..(r as usize + 1) * c].iter_mut().zip(&src[i * c..(i + 1) * c]) {
            *d += s;
        }
    }
    Ok(())
}

/// Writes the valid rows of a ragged `new (b, t, w)` into `cache (b, cap,
/// w)`: sequence `bi`'s rows `0..r.len[bi]` go to `r.pos0[bi]..`; padding
/// rows are not written.
pub fn kv_write_ragged_cpu(cache: &mut [f32], new: &[f32], b: usize, t: usize, cap: usize, w: usize, r: Ragged) -> Result<()> {
    r.check("kv_write", b, t, cap)?;
    check_len("kv_write", "new", new.len(), b * t * w)?;
    check_min_len("kv_write", "cache", cache.len(), b * cap * w)?;
    for bi in 0..b {
        let (p, l) = (r.pos0[bi] as usize, r.len[bi] as usize);
        let dst = (bi * cap + p) * w;
        cache[dst..dst + l * w].copy_from_slice(&new[bi * t * w..(bi * t + l) * w]);
    }
    Ok(())
}

/// Writes `new (b, t, w)` into `cache (b, cap, w)` at rows `pos0..pos0+t`.
pub fn kv_write_cpu(cache: &mut [f32], new: &[f32], b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
    if pos0 + t > cap {
        return arg_err("kv_write", format!("positions {pos0}..{} exceed the cache length {cap}", pos0 + t));
    }
    check_len("kv_write", "new", new.len(), b * t * w)?;
    check_min_len("kv_write", "cache", cache.len(), b * cap * w)?;
    for bi in 0..b {
        let dst = (bi * cap + pos0) * w;
        cache[dst..dst + t * w].copy_from_slice(&new[bi * t * w..(bi + 1) * t * w]);
    }
    Ok(())
}

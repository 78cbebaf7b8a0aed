//! RMSNorm (Zhang & Sennrich 2019), as transformers' `LlamaRMSNorm`:
//! `y = w ⊙ x · r`, `r = 1 / sqrt(mean(x²) + eps)`, per row of C.
//!
//! Forward saves `r` per row (`rstd`, f32) for the backward.
//! Backward, with `g = w ⊙ dy`:
//! `dx = r·g − (r³/C)·x·Σ_j g_j x_j` (written or accumulated: the input of a
//! norm is the residual stream, whose gradient is accumulated), and
//! `dw += Σ_rows dy ⊙ x·r` (parameter gradient: always accumulated).

use crate::{check_len, GradWrite, Result, SharedMut};
use rayon::prelude::*;

/// Rows per task of the weight-gradient reduction. Fixed (not derived from
/// the thread count) so that the summation order, hence the result, is the
/// same on any number of threads.
const DW_ROWS_PER_CHUNK: usize = 64;

/// `out (n, c) = rmsnorm(inp (n, c)) ⊙ weight (c)`; `rstd (n)` saved.
pub fn rmsnorm_fwd_cpu(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], n: usize, c: usize, eps: f32) -> Result<()> {
    const OP: &str = "rmsnorm_fwd";
    check_len(OP, "out", out.len(), n * c)?;
    check_len(OP, "rstd", rstd.len(), n)?;
    check_len(OP, "inp", inp.len(), n * c)?;
    check_len(OP, "weight", weight.len(), c)?;
    if c == 0 {
        return Ok(());
    }
    out.par_chunks_mut(c).zip(rstd.par_iter_mut()).zip(inp.par_chunks(c)).for_each(|((o, r), x)| {
        let ss = crate::dot(x, x);
        let rs = 1.0 / (ss / c as f32 + eps).sqrt();
        *r = rs;
        for ((oi, xi), wi) in o.iter_mut().zip(x).zip(weight) {
            // transformers: weight * (x * rsqrt(var + eps))
            *oi = wi * (xi * rs);
        }
    });
    Ok(())
}

/// Backward of [`rmsnorm_fwd_cpu`]. `dinp` is written per `dinp_write`,
/// `dweight` is accumulated.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd_cpu(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    n: usize,
    c: usize,
    dinp_write: GradWrite,
) -> Result<()> {
    const OP: &str = "rmsnorm_bwd";
    check_len(OP, "dinp", dinp.len(), n * c)?;
    check_len(OP, "dweight", dweight.len(), c)?;
    check_len(OP, "dout", dout.len(), n * c)?;
    check_len(OP, "inp", inp.len(), n * c)?;
    check_len(OP, "weight", weight.len(), c)?;
    check_len(OP, "rstd", rstd.len(), n)?;
    if c == 0 || n == 0 {
        return Ok(());
    }
    // dx, row-parallel
    dinp.par_chunks_mut(c).zip(dout.par_chunks(c)).zip(inp.par_chunks(c)).zip(rstd.par_iter()).for_each(|(((dx, dy), x), &r)| {
        let mut gx = 0f32;
        for ((dyi, wi), xi) in dy.iter().zip(weight).zip(x) {
            gx += dyi * wi * xi;
        }
        let k = r * r * r * gx / c as f32;
        match dinp_write {
            GradWrite::Overwrite => {
                for (((dxi, dyi), wi), xi) in dx.iter_mut().zip(dy).zip(weight).zip(x) {
                    *dxi = r * dyi * wi - k * xi;
                }
            }
            GradWrite::Accumulate => {
                for (((dxi, dyi), wi), xi) in dx.iter_mut().zip(dy).zip(weight).zip(x) {
                    *dxi += r * dyi * wi - k * xi;
                }
            }
        }
    });
    // dw: partial sums over fixed row chunks, then summed in chunk order
    let chunks = n.div_ceil(DW_ROWS_PER_CHUNK);
    let mut partial = vec![0f32; chunks * c];
    let pp = SharedMut(partial.as_mut_ptr());
    (0..chunks).into_par_iter().for_each(|ch| {
        // SAFETY: chunk `ch` owns partial[ch*c .. (ch+1)*c]
        let acc = unsafe { pp.slice(ch * c, c) };
        let r0 = ch * DW_ROWS_PER_CHUNK;
        let r1 = (r0 + DW_ROWS_PER_CHUNK).min(n);
        for row in r0..r1 {
            let r = rstd[row];
            let dy = &dout[row * c..(row + 1) * c];
            let x = &inp[row * c..(row + 1) * c];
            for ((a, dyi), xi) in acc.iter_mut().zip(dy).zip(x) {
                *a += dyi * (xi * r);
            }
        }
    });
    for ch in 0..chunks {
        for (dw, p) in dweight.iter_mut().zip(&partial[ch * c..(ch + 1) * c]) {
            *dw += p;
        }
    }
    Ok(())
}

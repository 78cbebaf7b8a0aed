//! Token embedding: `out[i] = table[tokens[i]]`, table `(v, c)`.
//!
//! Backward scatters `dout` rows into `dtable` (parameter gradient:
//! accumulated). Deterministic: each task owns a range of columns and walks
//! the rows in order, so the sums never depend on the thread count.

use crate::{arg_err, check_len, Result, SharedMut};
use rayon::prelude::*;

/// Columns per backward task.
const COLS_PER_TASK: usize = 64;

fn check_ids(op: &'static str, tokens: &[u32], v: usize) -> Result<()> {
    if let Some((i, &t)) = tokens.iter().enumerate().find(|(_, &t)| t as usize >= v) {
        return arg_err(op, format!("token {t} at position {i} is out of range for vocabulary {v}"));
    }
    Ok(())
}

/// `out (n, c) = table (v, c)[tokens (n)]`.
pub fn embedding_fwd_cpu(out: &mut [f32], tokens: &[u32], table: &[f32], v: usize, c: usize) -> Result<()> {
    const OP: &str = "embedding_fwd";
    check_len(OP, "out", out.len(), tokens.len() * c)?;
    check_len(OP, "table", table.len(), v * c)?;
    check_ids(OP, tokens, v)?;
    if c == 0 {
        return Ok(());
    }
    out.par_chunks_mut(c).zip(tokens.par_iter()).for_each(|(o, &t)| {
        let t = t as usize;
        o.copy_from_slice(&table[t * c..(t + 1) * c]);
    });
    Ok(())
}

/// `dtable[tokens[i]] += dout[i]` for every row i, in row order.
pub fn embedding_bwd_cpu(dtable: &mut [f32], dout: &[f32], tokens: &[u32], v: usize, c: usize) -> Result<()> {
    const OP: &str = "embedding_bwd";
    check_len(OP, "dout", dout.len(), tokens.len() * c)?;
    check_len(OP, "dtable", dtable.len(), v * c)?;
    check_ids(OP, tokens, v)?;
    let dt = SharedMut(dtable.as_mut_ptr());
    (0..c.div_ceil(COLS_PER_TASK)).into_par_iter().for_each(|task| {
        let c0 = task * COLS_PER_TASK;
        let c1 = (c0 + COLS_PER_TASK).min(c);
        for (i, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            // SAFETY: columns c0..c1 of every row belong to this task only
            let dst = unsafe { dt.slice(t * c + c0, c1 - c0) };
            for (d, s) in dst.iter_mut().zip(&dout[i * c + c0..i * c + c1]) {
                *d += s;
            }
        }
    });
    Ok(())
}

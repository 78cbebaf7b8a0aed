//! SwiGLU feed-forward activation (Shazeer 2020), as transformers'
//! `LlamaMLP`: `h = silu(gate) ⊙ up`, `silu(g) = g·σ(g)`.
//!
//! Backward with `s = σ(g)`: `dgate = dh ⊙ up ⊙ s·(1 + g·(1 − s))`,
//! `dup = dh ⊙ silu(g)`. Both activation gradients are overwritten.

use crate::{check_len, Result};
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 4096;

use crate::math::sigmoid;

/// `out (n) = silu(gate (n)) ⊙ up (n)`.
pub fn swiglu_fwd_cpu(out: &mut [f32], gate: &[f32], up: &[f32]) -> Result<()> {
    const OP: &str = "swiglu_fwd";
    check_len(OP, "gate", gate.len(), out.len())?;
    check_len(OP, "up", up.len(), out.len())?;
    out.par_chunks_mut(CHUNK).zip(gate.par_chunks(CHUNK)).zip(up.par_chunks(CHUNK)).for_each(|((o, g), u)| {
        for ((oi, &gi), &ui) in o.iter_mut().zip(g).zip(u) {
            *oi = gi * sigmoid(gi) * ui;
        }
    });
    Ok(())
}

/// Backward of [`swiglu_fwd_cpu`]: `dgate`, `dup` overwritten.
pub fn swiglu_bwd_cpu(dgate: &mut [f32], dup: &mut [f32], dout: &[f32], gate: &[f32], up: &[f32]) -> Result<()> {
    const OP: &str = "swiglu_bwd";
    let n = dout.len();
    check_len(OP, "dgate", dgate.len(), n)?;
    check_len(OP, "dup", dup.len(), n)?;
    check_len(OP, "gate", gate.len(), n)?;
    check_len(OP, "up", up.len(), n)?;
    dgate.par_chunks_mut(CHUNK).zip(dup.par_chunks_mut(CHUNK)).zip(dout.par_chunks(CHUNK)).zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK))).for_each(
        |(((dg, du), dh), (g, u))| {
            for i in 0..dg.len() {
                let s = sigmoid(g[i]);
                let silu = g[i] * s;
                dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                du[i] = dh[i] * silu;
            }
        },
    );
    Ok(())
}

//! Launcher of `cu/adamw.cu`. CPU counterpart: `crate::adamw::adamw_cpu`
//! (same [`AdamWStep`]; bias corrections and the decay factor are computed
//! on the host exactly as the CPU kernel computes them).

use super::{check_ptr, launch, stride_blocks, to_i64, Bf16, DPtr, Family, LaunchDims, Target};
use crate::adamw::AdamWStep;
use crate::{arg_err, Result};

pub const STEP: &str = "adamw_step_f32";
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 8 * 16;

/// Checks; returns the launch dimensions (grid-stride, 4 elements a trip).
pub fn check(params: DPtr<f32>, params_bf16: DPtr<Bf16>, grads: DPtr<f32>, m: DPtr<f32>, v: DPtr<f32>, n: usize, h: &AdamWStep) -> Result<LaunchDims> {
    for (name, p) in [("params", params), ("grads", grads), ("m", m), ("v", v)] {
        check_ptr(STEP, name, p, n)?;
    }
    check_ptr(STEP, "params_bf16", params_bf16, n)?;
    if h.step == 0 {
        return arg_err(STEP, "step is 1-based (bias correction); got 0");
    }
    let grid = stride_blocks(STEP, n, THREADS as usize * 4, MAX_BLOCKS)?;
    Ok(LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 })
}

/// One AdamW step over `n` fp32 master weights, moments `m`, `v`, writing
/// the bf16 working copy in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn adamw_step_f32(
    tg: Target<'_>,
    params: DPtr<f32>,
    params_bf16: DPtr<Bf16>,
    grads: DPtr<f32>,
    m: DPtr<f32>,
    v: DPtr<f32>,
    n: usize,
    h: &AdamWStep,
) -> Result<()> {
    let dims = check(params, params_bf16, grads, m, v, n, h)?;
    let (step_size, bc2_sqrt) = h.corrections();
    // as adamw_cpu computes it, in f32
    let decay = 1.0 - h.lr * h.weight_decay;
    let (p, pb, g, mp, vp, n) = (params.addr, params_bf16.addr, grads.addr, m.addr, v.addr, to_i64(STEP, "n", n)?);
    let (b1, b2, eps, gs) = (h.beta1, h.beta2, h.eps, h.grad_scale);
    // SAFETY: check(): all five buffers hold >= n elements; grid-stride kernel.
    unsafe { launch!(tg, Family::Adamw, STEP, dims, [p, pb, g, mp, vp, n, b1, b2, eps, decay, step_size, bc2_sqrt, gs]) }
}

//! Launcher of `cu/cross_entropy.cu`. CPU counterpart:
//! `crate::cross_entropy::cross_entropy_cpu` (same `CeGrad` modes).

use super::{check_ptr, launch, to_i32, to_u32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::{arg_err, Result};

pub const FWD_BWD: &str = "cross_entropy_fwd_bwd_bf16";
pub const FWD_BWD_ENT: &str = "cross_entropy_fwd_bwd_ent_bf16";
/// Threads per block (CE_THREADS in the .cu): one block per row.
pub const THREADS: u32 = 512;

/// What the kernel writes over the logits (the device form of `CeGrad`).
#[derive(Clone, Copy, Debug)]
pub enum CeMode {
    /// loss only; logits untouched
    LossOnly,
    /// logits := scale · (softmax − onehot)
    Uniform(f32),
    /// `logits[i] := coef[i] · (softmax − onehot)`, coef (n) f32 on the device
    PerRow(DPtr<f32>),
}

/// Checks; targets (n) are device i32 already checked `< v` on the host.
pub fn check(logits: DPtr<Bf16>, losses: DPtr<f32>, targets: DPtr<i32>, mode: CeMode, n: usize, v: usize) -> Result<LaunchDims> {
    if v == 0 {
        return arg_err(FWD_BWD, "vocabulary of 0");
    }
    check_ptr(FWD_BWD, "logits", logits, n * v)?;
    check_ptr(FWD_BWD, "losses", losses, n)?;
    check_ptr(FWD_BWD, "targets", targets, n)?;
    if let CeMode::PerRow(c) = mode {
        check_ptr(FWD_BWD, "coef", c, n)?;
    }
    Ok(LaunchDims { grid: (to_u32(FWD_BWD, "grid", n.max(1))?, 1, 1), block: THREADS, smem: 0 })
}

/// `losses (n)` and, per `mode`, dlogits over `logits (n, v)`.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fwd_bwd_bf16(tg: Target<'_>, logits: DPtr<Bf16>, losses: DPtr<f32>, targets: DPtr<i32>, mode: CeMode, n: usize, v: usize) -> Result<()> {
    let dims = check(logits, losses, targets, mode, n, v)?;
    if n == 0 {
        return Ok(());
    }
    let (lg, ls, ids) = (logits.addr, losses.addr, targets.addr);
    let (coef, scale, m): (u64, f32, i32) = match mode {
        CeMode::LossOnly => (0, 0.0, 0),
        CeMode::Uniform(sc) => (0, sc, 1),
        CeMode::PerRow(c) => (c.addr, 0.0, 2),
    };
    let (n, v) = (to_i32(FWD_BWD, "n", n)?, to_i32(FWD_BWD, "v", v)?);
    // SAFETY: check(): logits cover n rows of v, losses/targets (and coef in
    // mode 2) n entries; targets < v were checked on the host; one block per row.
    unsafe { launch!(tg, Family::CrossEntropy, FWD_BWD, dims, [lg, ls, ids, coef, scale, m, n, v]) }
}

/// [`cross_entropy_fwd_bwd_bf16`] that also writes `entropy (n)` f32, the
/// entropy of each row's softmax (0 on ignored rows), in the same pass.
#[allow(clippy::too_many_arguments)]
pub fn cross_entropy_fwd_bwd_ent_bf16(
    tg: Target<'_>,
    logits: DPtr<Bf16>,
    losses: DPtr<f32>,
    entropy: DPtr<f32>,
    targets: DPtr<i32>,
    mode: CeMode,
    n: usize,
    v: usize,
) -> Result<()> {
    let dims = check(logits, losses, targets, mode, n, v)?;
    check_ptr(FWD_BWD_ENT, "entropy", entropy, n)?;
    if n == 0 {
        return Ok(());
    }
    let (lg, ls, en, ids) = (logits.addr, losses.addr, entropy.addr, targets.addr);
    let (coef, scale, m): (u64, f32, i32) = match mode {
        CeMode::LossOnly => (0, 0.0, 0),
        CeMode::Uniform(sc) => (0, sc, 1),
        CeMode::PerRow(c) => (c.addr, 0.0, 2),
    };
    let (n, v) = (to_i32(FWD_BWD_ENT, "n", n)?, to_i32(FWD_BWD_ENT, "v", v)?);
    // SAFETY: as cross_entropy_fwd_bwd_bf16; entropy holds n entries.
    unsafe { launch!(tg, Family::CrossEntropy, FWD_BWD_ENT, dims, [lg, ls, en, ids, coef, scale, m, n, v]) }
}

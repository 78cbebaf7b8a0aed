//! Launchers of `cu/rmsnorm.cu`. CPU counterparts: `crate::rmsnorm`
//! (`rmsnorm_fwd_cpu`, `rmsnorm_bwd_cpu`); the fused residual add + norm
//! ([`add_rmsnorm_fwd_bf16`]) is checked against the unfused composition
//! (`crate::elementwise` add, then `rmsnorm_fwd_cpu`).
//!
//! The kernels read rows as 16-byte words of 8 bf16: `c % 8 == 0` and the
//! bf16 buffers 16-byte aligned. Backward keeps a row of weight-gradient
//! partials in shared memory (`c` f32), so `c <= MAX_C`.

use super::{check_align, check_ptr, launch, to_i32, to_u32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::{arg_err, GradWrite, Result};

pub const FWD: &str = "rmsnorm_fwd_bf16";
pub const BWD: &str = "rmsnorm_bwd_bf16";
pub const BWD_DWEIGHT: &str = "rmsnorm_bwd_dweight_f32";
pub const ADD_FWD: &str = "add_rmsnorm_fwd_bf16";

/// Threads per block (RMS_THREADS in the .cu).
pub const THREADS: u32 = 256;
/// Largest row width: the backward's shared f32 row (4c bytes) plus its
/// 128 bytes of static shared memory must fit the 48 KB a block gets
/// without opting in (Llama-2 70B has c = 8192).
pub const MAX_C: usize = 11 * 1024;
/// Blocks of the backward: a function of n only (rows are strided over
/// them), so the weight-gradient sums are the same on every GPU.
pub const BWD_MAX_BLOCKS: usize = 512;

/// Number of partial rows (`(blocks, c)` f32 scratch) the backward writes.
pub fn bwd_blocks(n: usize) -> usize {
    n.clamp(1, BWD_MAX_BLOCKS)
}

fn check_row(op: &'static str, n: usize, c: usize) -> Result<()> {
    if c == 0 || !c.is_multiple_of(8) {
        return arg_err(op, format!("c = {c} must be a positive multiple of 8 (16-byte rows of bf16)"));
    }
    if c > MAX_C {
        return arg_err(op, format!("c = {c} exceeds the supported {MAX_C}"));
    }
    if n == 0 {
        return arg_err(op, "n = 0 rows");
    }
    Ok(())
}

/// Checks of the forward; returns its launch dimensions (one block per row).
pub fn check_fwd(out: DPtr<Bf16>, rstd: DPtr<f32>, inp: DPtr<Bf16>, weight: DPtr<Bf16>, n: usize, c: usize) -> Result<LaunchDims> {
    check_row(FWD, n, c)?;
    check_ptr(FWD, "out", out, n * c)?;
    check_ptr(FWD, "rstd", rstd, n)?;
    check_ptr(FWD, "inp", inp, n * c)?;
    check_ptr(FWD, "weight", weight, c)?;
    for (name, p) in [("out", out), ("inp", inp), ("weight", weight)] {
        check_align(FWD, name, p, 16)?;
    }
    Ok(LaunchDims { grid: (to_u32(FWD, "grid", n)?, 1, 1), block: THREADS, smem: 0 })
}

/// `out (n, c) = rmsnorm(inp) ⊙ weight`, `rstd (n)` saved.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_fwd_bf16(tg: Target<'_>, out: DPtr<Bf16>, rstd: DPtr<f32>, inp: DPtr<Bf16>, weight: DPtr<Bf16>, n: usize, c: usize, eps: f32) -> Result<()> {
    let dims = check_fwd(out, rstd, inp, weight, n, c)?;
    let (o, r, i, w) = (out.addr, rstd.addr, inp.addr, weight.addr);
    let (n, c) = (to_i32(FWD, "n", n)?, to_i32(FWD, "c", c)?);
    // SAFETY: check_fwd: every buffer covers n rows of c (16-byte aligned,
    // c % 8 == 0); one block per row, rows >= n return.
    unsafe { launch!(tg, Family::Rmsnorm, FWD, dims, [o, r, i, w, n, c, eps]) }
}

/// Checks of the fused residual add + forward; returns its launch
/// dimensions (one block per row, as [`check_fwd`]).
#[allow(clippy::too_many_arguments)]
pub fn check_add_fwd(
    res: DPtr<Bf16>,
    out: DPtr<Bf16>,
    rstd: DPtr<f32>,
    a: DPtr<Bf16>,
    b: DPtr<Bf16>,
    weight: DPtr<Bf16>,
    n: usize,
    c: usize,
) -> Result<LaunchDims> {
    check_row(ADD_FWD, n, c)?;
    for (name, p) in [("res", res), ("out", out), ("a", a), ("b", b)] {
        check_ptr(ADD_FWD, name, p, n * c)?;
        check_align(ADD_FWD, name, p, 16)?;
    }
    check_ptr(ADD_FWD, "weight", weight, c)?;
    check_align(ADD_FWD, "weight", weight, 16)?;
    check_ptr(ADD_FWD, "rstd", rstd, n)?;
    Ok(LaunchDims { grid: (to_u32(ADD_FWD, "grid", n)?, 1, 1), block: THREADS, smem: 0 })
}

/// `res (n, c) = a + b` (rounded to bf16), then `out (n, c) = rmsnorm(res) ⊙
/// weight` and `rstd (n)`, in one launch (all `=`): the residual add and
/// the RMSNorm that follows it.
#[allow(clippy::too_many_arguments)]
pub fn add_rmsnorm_fwd_bf16(
    tg: Target<'_>,
    res: DPtr<Bf16>,
    out: DPtr<Bf16>,
    rstd: DPtr<f32>,
    a: DPtr<Bf16>,
    b: DPtr<Bf16>,
    weight: DPtr<Bf16>,
    n: usize,
    c: usize,
    eps: f32,
) -> Result<()> {
    let dims = check_add_fwd(res, out, rstd, a, b, weight, n, c)?;
    let (rs, o, r, ap, bp, w) = (res.addr, out.addr, rstd.addr, a.addr, b.addr, weight.addr);
    let (n, c) = (to_i32(ADD_FWD, "n", n)?, to_i32(ADD_FWD, "c", c)?);
    // SAFETY: check_add_fwd: res, out, a, b cover n rows of c (16-byte aligned,
    // c % 8 == 0), weight c, rstd n; one block per row, rows >= n return.
    unsafe { launch!(tg, Family::Rmsnorm, ADD_FWD, dims, [rs, o, r, ap, bp, w, n, c, eps]) }
}

/// Checks of the backward; `partial` holds `bwd_blocks(n) * c` f32.
#[allow(clippy::too_many_arguments)]
pub fn check_bwd(
    dinp: DPtr<Bf16>,
    partial: DPtr<f32>,
    dout: DPtr<Bf16>,
    inp: DPtr<Bf16>,
    weight: DPtr<Bf16>,
    rstd: DPtr<f32>,
    n: usize,
    c: usize,
) -> Result<LaunchDims> {
    check_row(BWD, n, c)?;
    for (name, p) in [("dinp", dinp), ("dout", dout), ("inp", inp)] {
        check_ptr(BWD, name, p, n * c)?;
        check_align(BWD, name, p, 16)?;
    }
    check_ptr(BWD, "weight", weight, c)?;
    check_align(BWD, "weight", weight, 16)?;
    check_ptr(BWD, "rstd", rstd, n)?;
    let blocks = bwd_blocks(n);
    check_ptr(BWD, "partial", partial, blocks * c)?;
    Ok(LaunchDims { grid: (to_u32(BWD, "grid", blocks)?, 1, 1), block: THREADS, smem: to_u32(BWD, "smem", c * 4)? })
}

/// `dinp (n, c)` (= or += per `write`); `partial (bwd_blocks(n), c)` = the
/// per-block weight-gradient sums, reduced by [`rmsnorm_bwd_dweight_f32`].
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_bwd_bf16(
    tg: Target<'_>,
    dinp: DPtr<Bf16>,
    partial: DPtr<f32>,
    dout: DPtr<Bf16>,
    inp: DPtr<Bf16>,
    weight: DPtr<Bf16>,
    rstd: DPtr<f32>,
    n: usize,
    c: usize,
    write: GradWrite,
) -> Result<()> {
    let dims = check_bwd(dinp, partial, dout, inp, weight, rstd, n, c)?;
    let (di, p, d, i, w, r) = (dinp.addr, partial.addr, dout.addr, inp.addr, weight.addr, rstd.addr);
    let (n, c) = (to_i32(BWD, "n", n)?, to_i32(BWD, "c", c)?);
    let acc: i32 = match write {
        GradWrite::Overwrite => 0,
        GradWrite::Accumulate => 1,
    };
    // SAFETY: check_bwd: rows of c (aligned, c % 8 == 0) for n rows, partial
    // covers grid*c, dynamic smem = c f32 (c <= MAX_C keeps it under 48 KB).
    unsafe { launch!(tg, Family::Rmsnorm, BWD, dims, [di, p, d, i, w, r, n, c, acc]) }
}

/// `dweight (c) += Σ_p partial (nparts, c)[p]`, summed in block order.
pub fn rmsnorm_bwd_dweight_f32(tg: Target<'_>, dweight: DPtr<f32>, partial: DPtr<f32>, nparts: usize, c: usize) -> Result<()> {
    check_ptr(BWD_DWEIGHT, "dweight", dweight, c)?;
    check_ptr(BWD_DWEIGHT, "partial", partial, nparts * c)?;
    if c == 0 {
        return Ok(());
    }
    let dims = LaunchDims { grid: (to_u32(BWD_DWEIGHT, "grid", c.div_ceil(THREADS as usize))?, 1, 1), block: THREADS, smem: 0 };
    let (dw, p) = (dweight.addr, partial.addr);
    let (np, c) = (to_i32(BWD_DWEIGHT, "nparts", nparts)?, to_i32(BWD_DWEIGHT, "c", c)?);
    // SAFETY: one thread per column j < c; partial covers nparts*c, dweight c.
    unsafe { launch!(tg, Family::Rmsnorm, BWD_DWEIGHT, dims, [dw, p, np, c]) }
}

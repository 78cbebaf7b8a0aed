//! Launchers of `cu/attention.cu`. CPU counterparts: `crate::attention`
//! (`attention_fwd_cpu`, `attention_bwd_cpu`), same [`AttnShape`] and
//! layouts: q, out (b, tq, n_head, hd); k, v (b, cap, n_kv_head, hd);
//! lse (b, n_head, tq) f32.
//!
//! v1 kernels (`cu/attention.cu`, warp per row, f32 FMAs) and v2 kernels
//! (`cu/attention_mma.cu`, tensor cores). Compiled head dims: 64 and 128 ([`HEAD_DIMS`]). Rows are read as 16-byte
//! words, so every bf16 buffer must be 16-byte aligned. The grid is
//! (row blocks, heads, batch): heads and batch at most 65535.
//! Backward is three kernels: `delta = rowsum(dout ⊙ out)` into an f32
//! scratch (b, n_head, t), then dq, then dk/dv (the GQA sum inside).

use super::{check_align, check_ptr, launch, to_i32, to_u32, Bf16, DPtr, Family, KernelStore, LaunchDims};
use crate::attention::AttnShape;
use crate::{arg_err, Result};
use cudarc::driver::CudaStream;

pub const FWD_D64: &str = "attention_fwd_d64_bf16";
pub const FWD_D128: &str = "attention_fwd_d128_bf16";
pub const FWD_MMA_D64: &str = "attention_fwd_mma_d64_bf16";
pub const FWD_MMA_D128: &str = "attention_fwd_mma_d128_bf16";
pub const BWD_DQ_MMA_D64: &str = "attention_bwd_dq_mma_d64_bf16";
pub const BWD_DQ_MMA_D128: &str = "attention_bwd_dq_mma_d128_bf16";
pub const BWD_DKDV_MMA_D64: &str = "attention_bwd_dkdv_mma_d64_bf16";
pub const BWD_DKDV_MMA_D128: &str = "attention_bwd_dkdv_mma_d128_bf16";
pub const BWD_PRE_D64: &str = "attention_bwd_pre_d64_bf16";
pub const BWD_PRE_D128: &str = "attention_bwd_pre_d128_bf16";
pub const BWD_DQ_D64: &str = "attention_bwd_dq_d64_bf16";
pub const BWD_DQ_D128: &str = "attention_bwd_dq_d128_bf16";
pub const BWD_DKDV_D64: &str = "attention_bwd_dkdv_d64_bf16";
pub const BWD_DKDV_D128: &str = "attention_bwd_dkdv_d128_bf16";

/// The shape of an attention call as the kernels take it (int32 each),
/// checked to fit.
struct I32Shape {
    b: i32,
    tq: i32,
    tkv: i32,
    cap: i32,
    nh: i32,
    nkv: i32,
}

impl I32Shape {
    fn of(name: &'static str, s: &AttnShape) -> Result<Self> {
        Ok(I32Shape {
            b: to_i32(name, "b", s.b)?,
            tq: to_i32(name, "tq", s.tq)?,
            tkv: to_i32(name, "tkv", s.tkv)?,
            cap: to_i32(name, "cap", s.cap)?,
            nh: to_i32(name, "n_head", s.n_head)?,
            nkv: to_i32(name, "n_kv_head", s.n_kv_head)?,
        })
    }
}

/// Head dims with a compiled kernel.
pub const HEAD_DIMS: [usize; 2] = [64, 128];
/// Warps per block, one query (or key) row each (ATT_WARPS in the .cu).
pub const WARPS: usize = 4;
/// Query rows per block of the tensor-core forward (MMA_BQ in the .cu).
pub const MMA_ROWS: usize = 64;
const MAX_GRID_YZ: usize = 65535;

fn pick(op: &'static str, hd: usize, d64: &'static str, d128: &'static str) -> Result<&'static str> {
    match hd {
        64 => Ok(d64),
        128 => Ok(d128),
        _ => arg_err(op, format!("head_dim {hd} has no compiled kernel (supported: {HEAD_DIMS:?})")),
    }
}

fn dims(op: &'static str, rows: usize, heads: usize, b: usize) -> Result<LaunchDims> {
    if heads > MAX_GRID_YZ || b > MAX_GRID_YZ {
        return arg_err(op, format!("heads {heads} and batch {b} must be <= {MAX_GRID_YZ}"));
    }
    let gx = to_u32(op, "grid.x", rows.div_ceil(WARPS))?;
    Ok(LaunchDims { grid: (gx, to_u32(op, "grid.y", heads)?, to_u32(op, "grid.z", b)?), block: (WARPS * 32) as u32, smem: 0 })
}

fn common(op: &'static str, s: &AttnShape) -> Result<()> {
    s.validate(op)?;
    if s.b == 0 || s.tq == 0 {
        return arg_err(op, format!("empty attention (b {}, tq {})", s.b, s.tq));
    }
    Ok(())
}

/// Checks of the forward; returns the kernel name and launch dimensions.
pub fn check_fwd(out: DPtr<Bf16>, lse: DPtr<f32>, q: DPtr<Bf16>, k: DPtr<Bf16>, v: DPtr<Bf16>, s: &AttnShape) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_fwd";
    common(OP, s)?;
    let name = pick(OP, s.hd, FWD_D64, FWD_D128)?;
    let q_len = s.b * s.tq * s.n_head * s.hd;
    let kv_len = s.b * s.cap * s.n_kv_head * s.hd;
    for (nm, p, len) in [("out", out, q_len), ("q", q, q_len), ("k", k, kv_len), ("v", v, kv_len)] {
        check_ptr(OP, nm, p, len)?;
        check_align(OP, nm, p, 16)?;
    }
    check_ptr(OP, "lse", lse, s.b * s.n_head * s.tq)?;
    Ok((name, dims(OP, s.tq, s.n_head, s.b)?))
}

/// `out (b, tq, n_head, hd)`, `lse (b, n_head, tq)`: causal GQA attention
/// of `q` against rows `0..tkv` of `k, v (b, cap, n_kv_head, hd)`. With
/// `tq = 1` this is the decode step against the KV cache.
pub fn attention_fwd_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    out: DPtr<Bf16>,
    lse: DPtr<f32>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    s: &AttnShape,
) -> Result<()> {
    let (name, d) = check_fwd(out, lse, q, k, v, s)?;
    let f = ks.func(Family::Attention, name)?;
    let (o, l, qp, kp, vp) = (out.addr, lse.addr, q.addr, k.addr, v.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(name, s)?;
    // SAFETY: check_fwd: q/out cover b*tq*n_head*hd, k/v b*cap*n_kv_head*hd
    // (rows < tkv <= cap are read), lse b*n_head*tq; warps past tq return.
    unsafe { launch!(st, f, name, d, [o, l, qp, kp, vp, b, tq, tkv, cap, nh, nkv]) }
}

/// Checks of the tensor-core forward (same buffers and alignment as
/// [`check_fwd`]; 64 query rows per block of 4 warps).
pub fn check_fwd_mma(out: DPtr<Bf16>, lse: DPtr<f32>, q: DPtr<Bf16>, k: DPtr<Bf16>, v: DPtr<Bf16>, s: &AttnShape) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_fwd_mma";
    check_fwd(out, lse, q, k, v, s)?;
    let name = pick(OP, s.hd, FWD_MMA_D64, FWD_MMA_D128)?;
    let d = dims(OP, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_head, s.b)?;
    Ok((name, d))
}

/// The forward on tensor cores (mma.sync bf16, FlashAttention-2 split):
/// same contract as [`attention_fwd_bf16`]; P is rounded to bf16 for P·V.
pub fn attention_fwd_mma_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    out: DPtr<Bf16>,
    lse: DPtr<f32>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    s: &AttnShape,
) -> Result<()> {
    let (name, d) = check_fwd_mma(out, lse, q, k, v, s)?;
    let f = ks.func(Family::AttentionMma, name)?;
    let (o, l, qp, kp, vp) = (out.addr, lse.addr, q.addr, k.addr, v.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(name, s)?;
    // SAFETY: check_fwd: every buffer covers the shape; K/V rows >= tkv are
    // never read (zero-filled in shared memory); rows past tq are not written.
    unsafe { launch!(st, f, name, d, [o, l, qp, kp, vp, b, tq, tkv, cap, nh, nkv]) }
}

/// Checks of the backward (training shape `tq == tkv == cap`). `delta` is
/// the f32 scratch `(b, n_head, t)`.
#[allow(clippy::too_many_arguments)]
pub fn check_bwd(
    dq: DPtr<Bf16>,
    dk: DPtr<Bf16>,
    dv: DPtr<Bf16>,
    delta: DPtr<f32>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    out: DPtr<Bf16>,
    lse: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    common(OP, s)?;
    pick(OP, s.hd, BWD_DQ_D64, BWD_DQ_D128)?;
    if s.tq != s.tkv || s.cap != s.tkv {
        return arg_err(OP, format!("backward needs tq == tkv == cap, got {} {} {}", s.tq, s.tkv, s.cap));
    }
    let q_len = s.b * s.tq * s.n_head * s.hd;
    let kv_len = s.b * s.cap * s.n_kv_head * s.hd;
    for (nm, p) in [("dq", dq), ("dout", dout), ("q", q), ("out", out)] {
        check_ptr(OP, nm, p, q_len)?;
        check_align(OP, nm, p, 16)?;
    }
    for (nm, p) in [("dk", dk), ("dv", dv), ("k", k), ("v", v)] {
        check_ptr(OP, nm, p, kv_len)?;
        check_align(OP, nm, p, 16)?;
    }
    check_ptr(OP, "lse", lse, s.b * s.n_head * s.tq)?;
    check_ptr(OP, "delta", delta, s.b * s.n_head * s.tq)?;
    Ok(())
}

/// `delta (b, n_head, t) = Σ_d dout ⊙ out` (the backward's first kernel).
pub fn attention_bwd_pre_bf16(ks: &KernelStore, st: &CudaStream, delta: DPtr<f32>, dout: DPtr<Bf16>, out: DPtr<Bf16>, s: &AttnShape) -> Result<()> {
    const OP: &str = "attention_bwd_pre";
    common(OP, s)?;
    let name = pick(OP, s.hd, BWD_PRE_D64, BWD_PRE_D128)?;
    let q_len = s.b * s.tq * s.n_head * s.hd;
    for (nm, p) in [("dout", dout), ("out", out)] {
        check_ptr(OP, nm, p, q_len)?;
        check_align(OP, nm, p, 16)?;
    }
    check_ptr(OP, "delta", delta, s.b * s.n_head * s.tq)?;
    let d = dims(OP, s.tq, s.n_head, s.b)?;
    let f = ks.func(Family::Attention, name)?;
    let (dl, dp, op) = (delta.addr, dout.addr, out.addr);
    let I32Shape { b, tq: t, nh, .. } = I32Shape::of(name, s)?;
    // SAFETY: dout/out cover b*t*n_head*hd, delta b*n_head*t (checked above).
    unsafe { launch!(st, f, name, d, [dl, dp, op, b, t, nh]) }
}

/// `dq (b, t, n_head, hd)` overwritten (the backward's second kernel).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dq_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dq: DPtr<Bf16>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    lse: DPtr<f32>,
    delta: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    // the shape checks of check_bwd, restricted to the buffers this kernel touches
    check_bwd(dq, k, v, delta, dout, q, k, v, dout, lse, s)?;
    let name = pick("attention_bwd_dq", s.hd, BWD_DQ_D64, BWD_DQ_D128)?;
    let d = dims(name, s.tq, s.n_head, s.b)?;
    let f = ks.func(Family::Attention, name)?;
    let (dqp, dp, qp, kp, vp, lp, dlp) = (dq.addr, dout.addr, q.addr, k.addr, v.addr, lse.addr, delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; warps
    // past t return.
    unsafe { launch!(st, f, name, d, [dqp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// `dk, dv (b, t, n_kv_head, hd)` overwritten, summed over the query heads
/// of each KV head (the backward's third kernel).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dkdv_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dk: DPtr<Bf16>,
    dv: DPtr<Bf16>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    lse: DPtr<f32>,
    delta: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    check_bwd(q, dk, dv, delta, dout, q, k, v, dout, lse, s)?;
    let name = pick("attention_bwd_dkdv", s.hd, BWD_DKDV_D64, BWD_DKDV_D128)?;
    let d = dims(name, s.tq, s.n_kv_head, s.b)?;
    let f = ks.func(Family::Attention, name)?;
    let (dkp, dvp, dp, qp, kp, vp, lp, dlp) = (dk.addr, dv.addr, dout.addr, q.addr, k.addr, v.addr, lse.addr, delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; warps
    // past t return.
    unsafe { launch!(st, f, name, d, [dkp, dvp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// dq on tensor cores (`cu/attention_mma.cu`): same contract as
/// [`attention_bwd_dq_bf16`]; dS is rounded to bf16 for dS·K.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dq_mma_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dq: DPtr<Bf16>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    lse: DPtr<f32>,
    delta: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    check_bwd(dq, k, v, delta, dout, q, k, v, dout, lse, s)?;
    let name = pick("attention_bwd_dq_mma", s.hd, BWD_DQ_MMA_D64, BWD_DQ_MMA_D128)?;
    let d = dims(name, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_head, s.b)?;
    let f = ks.func(Family::AttentionMma, name)?;
    let (dqp, dp, qp, kp, vp, lp, dlp) = (dq.addr, dout.addr, q.addr, k.addr, v.addr, lse.addr, delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; rows
    // past t are neither read (zero-filled) nor written.
    unsafe { launch!(st, f, name, d, [dqp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// dk, dv on tensor cores (`cu/attention_mma.cu`): same contract as
/// [`attention_bwd_dkdv_bf16`]; P and dS are rounded to bf16 as operands.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_dkdv_mma_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dk: DPtr<Bf16>,
    dv: DPtr<Bf16>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    lse: DPtr<f32>,
    delta: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    check_bwd(q, dk, dv, delta, dout, q, k, v, dout, lse, s)?;
    let name = pick("attention_bwd_dkdv_mma", s.hd, BWD_DKDV_MMA_D64, BWD_DKDV_MMA_D128)?;
    let d = dims(name, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_kv_head, s.b)?;
    let f = ks.func(Family::AttentionMma, name)?;
    let (dkp, dvp, dp, qp, kp, vp, lp, dlp) = (dk.addr, dv.addr, dout.addr, q.addr, k.addr, v.addr, lse.addr, delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; rows
    // past t are neither read (zero-filled) nor written.
    unsafe { launch!(st, f, name, d, [dkp, dvp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// The whole backward on tensor cores: delta (v1 kernel), dq, dk/dv.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_mma_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dq: DPtr<Bf16>,
    dk: DPtr<Bf16>,
    dv: DPtr<Bf16>,
    delta: DPtr<f32>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    out: DPtr<Bf16>,
    lse: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    check_bwd(dq, dk, dv, delta, dout, q, k, v, out, lse, s)?;
    attention_bwd_pre_bf16(ks, st, delta, dout, out, s)?;
    attention_bwd_dq_mma_bf16(ks, st, dq, dout, q, k, v, lse, delta, s)?;
    attention_bwd_dkdv_mma_bf16(ks, st, dk, dv, dout, q, k, v, lse, delta, s)
}

/// The whole backward: delta, dq, dk/dv (`dq, dk, dv` overwritten).
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_bf16(
    ks: &KernelStore,
    st: &CudaStream,
    dq: DPtr<Bf16>,
    dk: DPtr<Bf16>,
    dv: DPtr<Bf16>,
    delta: DPtr<f32>,
    dout: DPtr<Bf16>,
    q: DPtr<Bf16>,
    k: DPtr<Bf16>,
    v: DPtr<Bf16>,
    out: DPtr<Bf16>,
    lse: DPtr<f32>,
    s: &AttnShape,
) -> Result<()> {
    check_bwd(dq, dk, dv, delta, dout, q, k, v, out, lse, s)?;
    attention_bwd_pre_bf16(ks, st, delta, dout, out, s)?;
    attention_bwd_dq_bf16(ks, st, dq, dout, q, k, v, lse, delta, s)?;
    attention_bwd_dkdv_bf16(ks, st, dk, dv, dout, q, k, v, lse, delta, s)
}

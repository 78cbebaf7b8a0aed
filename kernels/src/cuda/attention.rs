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
//!
//! Each direction takes one argument struct, as flash-attention's
//! `Flash_fwd_params` / `Flash_bwd_params`: [`AttnFwdParams`] and
//! [`AttnBwdParams`] name every buffer with its shape and write rule, and
//! carry the [`AttnShape`]; the launchers check them and pass the pointers
//! in the order of the kernels' `extern "C"` signatures.

pub use super::rope::RaggedPtrs;
use super::{check_align, check_ptr, launch, to_i32, to_u32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::attention::AttnShape;
use crate::{arg_err, Result};

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
pub const FWD_RAGGED_D64: &str = "attention_fwd_ragged_d64_bf16";
pub const FWD_RAGGED_D128: &str = "attention_fwd_ragged_d128_bf16";
pub const BWD_PRE_RAGGED_D64: &str = "attention_bwd_pre_ragged_d64_bf16";
pub const BWD_PRE_RAGGED_D128: &str = "attention_bwd_pre_ragged_d128_bf16";
pub const BWD_DQ_RAGGED_D64: &str = "attention_bwd_dq_ragged_d64_bf16";
pub const BWD_DQ_RAGGED_D128: &str = "attention_bwd_dq_ragged_d128_bf16";
pub const BWD_DKDV_RAGGED_D64: &str = "attention_bwd_dkdv_ragged_d64_bf16";
pub const BWD_DKDV_RAGGED_D128: &str = "attention_bwd_dkdv_ragged_d128_bf16";

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

/// The buffers and shape of an attention forward (flash-attention's
/// `Flash_fwd_params`). With `tq = 1` (or a chunk `tq < tkv`) it is a
/// decode / prefill step against a KV cache of `cap` rows, `tkv` valid.
#[derive(Clone, Copy, Debug)]
pub struct AttnFwdParams {
    /// (b, tq, n_head, hd) bf16, overwritten
    pub out: DPtr<Bf16>,
    /// (b, n_head, tq) f32, overwritten: the row log-sum-exp, for backward
    pub lse: DPtr<f32>,
    /// (b, tq, n_head, hd) bf16
    pub q: DPtr<Bf16>,
    /// (b, cap, n_kv_head, hd) bf16, rows 0..tkv read
    pub k: DPtr<Bf16>,
    /// (b, cap, n_kv_head, hd) bf16, rows 0..tkv read
    pub v: DPtr<Bf16>,
    pub shape: AttnShape,
}

/// The buffers and shape of an attention backward (flash-attention's
/// `Flash_bwd_params`), training shape `tq == tkv == cap`.
#[derive(Clone, Copy, Debug)]
pub struct AttnBwdParams {
    /// (b, t, n_head, hd) bf16, overwritten
    pub dq: DPtr<Bf16>,
    /// (b, t, n_kv_head, hd) bf16, overwritten (summed over each KV head's query heads)
    pub dk: DPtr<Bf16>,
    /// (b, t, n_kv_head, hd) bf16, overwritten (summed likewise)
    pub dv: DPtr<Bf16>,
    /// (b, n_head, t) f32 scratch: rowsum(dout ⊙ out), written by the first kernel
    pub delta: DPtr<f32>,
    /// (b, t, n_head, hd) bf16: the gradient of `out`
    pub dout: DPtr<Bf16>,
    /// (b, t, n_head, hd) bf16
    pub q: DPtr<Bf16>,
    /// (b, t, n_kv_head, hd) bf16
    pub k: DPtr<Bf16>,
    /// (b, t, n_kv_head, hd) bf16
    pub v: DPtr<Bf16>,
    /// (b, t, n_head, hd) bf16: the forward's output
    pub out: DPtr<Bf16>,
    /// (b, n_head, t) f32: the forward's log-sum-exp
    pub lse: DPtr<f32>,
    pub shape: AttnShape,
}

/// Checks of the forward; returns the kernel name and launch dimensions.
pub fn check_fwd(p: &AttnFwdParams) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_fwd";
    let s = &p.shape;
    common(OP, s)?;
    let name = pick(OP, s.hd, FWD_D64, FWD_D128)?;
    let q_len = s.b * s.tq * s.n_head * s.hd;
    let kv_len = s.b * s.cap * s.n_kv_head * s.hd;
    for (nm, ptr, len) in [("out", p.out, q_len), ("q", p.q, q_len), ("k", p.k, kv_len), ("v", p.v, kv_len)] {
        check_ptr(OP, nm, ptr, len)?;
        check_align(OP, nm, ptr, 16)?;
    }
    check_ptr(OP, "lse", p.lse, s.b * s.n_head * s.tq)?;
    Ok((name, dims(OP, s.tq, s.n_head, s.b)?))
}

/// `out`, `lse` of [`AttnFwdParams`]: causal GQA attention of `q` against
/// rows `0..tkv` of `k, v`, one warp per query row (v1).
pub fn attention_fwd_bf16(tg: Target<'_>, p: &AttnFwdParams) -> Result<()> {
    let (name, d) = check_fwd(p)?;
    let (o, l, qp, kp, vp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(name, &p.shape)?;
    // SAFETY: check_fwd: q/out cover b*tq*n_head*hd, k/v b*cap*n_kv_head*hd
    // (rows < tkv <= cap are read), lse b*n_head*tq; warps past tq return.
    unsafe { launch!(tg, Family::Attention, name, d, [o, l, qp, kp, vp, b, tq, tkv, cap, nh, nkv]) }
}

/// Checks of the tensor-core forward (same buffers and alignment as
/// [`check_fwd`]; 64 query rows per block of 4 warps).
pub fn check_fwd_mma(p: &AttnFwdParams) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_fwd_mma";
    check_fwd(p)?;
    let s = &p.shape;
    let name = pick(OP, s.hd, FWD_MMA_D64, FWD_MMA_D128)?;
    let d = dims(OP, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_head, s.b)?;
    Ok((name, d))
}

/// The forward on tensor cores (mma.sync bf16, FlashAttention-2 split):
/// same contract as [`attention_fwd_bf16`]; P is rounded to bf16 for P·V.
pub fn attention_fwd_mma_bf16(tg: Target<'_>, p: &AttnFwdParams) -> Result<()> {
    let (name, d) = check_fwd_mma(p)?;
    let (o, l, qp, kp, vp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(name, &p.shape)?;
    // SAFETY: check_fwd: every buffer covers the shape; K/V rows >= tkv are
    // never read (zero-filled in shared memory); rows past tq are not written.
    unsafe { launch!(tg, Family::AttentionMma, name, d, [o, l, qp, kp, vp, b, tq, tkv, cap, nh, nkv]) }
}

/// Checks of the backward (training shape `tq == tkv == cap`): every
/// buffer of [`AttnBwdParams`] against the shape, bf16 ones 16-byte aligned.
pub fn check_bwd(p: &AttnBwdParams) -> Result<()> {
    const OP: &str = "attention_bwd";
    let s = &p.shape;
    common(OP, s)?;
    pick(OP, s.hd, BWD_DQ_D64, BWD_DQ_D128)?;
    if s.tq != s.tkv || s.cap != s.tkv {
        return arg_err(OP, format!("backward needs tq == tkv == cap, got {} {} {}", s.tq, s.tkv, s.cap));
    }
    let q_len = s.b * s.tq * s.n_head * s.hd;
    let kv_len = s.b * s.cap * s.n_kv_head * s.hd;
    for (nm, ptr) in [("dq", p.dq), ("dout", p.dout), ("q", p.q), ("out", p.out)] {
        check_ptr(OP, nm, ptr, q_len)?;
        check_align(OP, nm, ptr, 16)?;
    }
    for (nm, ptr) in [("dk", p.dk), ("dv", p.dv), ("k", p.k), ("v", p.v)] {
        check_ptr(OP, nm, ptr, kv_len)?;
        check_align(OP, nm, ptr, 16)?;
    }
    check_ptr(OP, "lse", p.lse, s.b * s.n_head * s.tq)?;
    check_ptr(OP, "delta", p.delta, s.b * s.n_head * s.tq)?;
    Ok(())
}

/// `delta (b, n_head, t) = Σ_d dout ⊙ out` (the backward's first kernel).
pub fn attention_bwd_pre_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    let name = pick("attention_bwd_pre", s.hd, BWD_PRE_D64, BWD_PRE_D128)?;
    let d = dims(name, s.tq, s.n_head, s.b)?;
    let (dl, dp, op) = (p.delta.addr, p.dout.addr, p.out.addr);
    let I32Shape { b, tq: t, nh, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd: dout/out cover b*t*n_head*hd, delta b*n_head*t.
    unsafe { launch!(tg, Family::Attention, name, d, [dl, dp, op, b, t, nh]) }
}

/// `dq (b, t, n_head, hd)` overwritten (the backward's second kernel).
pub fn attention_bwd_dq_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    let name = pick("attention_bwd_dq", s.hd, BWD_DQ_D64, BWD_DQ_D128)?;
    let d = dims(name, s.tq, s.n_head, s.b)?;
    let (dqp, dp, qp, kp, vp, lp, dlp) = (p.dq.addr, p.dout.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr, p.delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; warps
    // past t return.
    unsafe { launch!(tg, Family::Attention, name, d, [dqp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// `dk, dv (b, t, n_kv_head, hd)` overwritten, summed over the query heads
/// of each KV head (the backward's third kernel).
pub fn attention_bwd_dkdv_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    let name = pick("attention_bwd_dkdv", s.hd, BWD_DKDV_D64, BWD_DKDV_D128)?;
    let d = dims(name, s.tq, s.n_kv_head, s.b)?;
    let (dkp, dvp, dp, qp, kp, vp, lp, dlp) = (p.dk.addr, p.dv.addr, p.dout.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr, p.delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; warps
    // past t return.
    unsafe { launch!(tg, Family::Attention, name, d, [dkp, dvp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// dq on tensor cores (`cu/attention_mma.cu`): same contract as
/// [`attention_bwd_dq_bf16`]; dS is rounded to bf16 for dS·K.
pub fn attention_bwd_dq_mma_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    let name = pick("attention_bwd_dq_mma", s.hd, BWD_DQ_MMA_D64, BWD_DQ_MMA_D128)?;
    let d = dims(name, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_head, s.b)?;
    let (dqp, dp, qp, kp, vp, lp, dlp) = (p.dq.addr, p.dout.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr, p.delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; rows
    // past t are neither read (zero-filled) nor written.
    unsafe { launch!(tg, Family::AttentionMma, name, d, [dqp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// dk, dv on tensor cores (`cu/attention_mma.cu`): same contract as
/// [`attention_bwd_dkdv_bf16`]; P and dS are rounded to bf16 as operands.
pub fn attention_bwd_dkdv_mma_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    let name = pick("attention_bwd_dkdv_mma", s.hd, BWD_DKDV_MMA_D64, BWD_DKDV_MMA_D128)?;
    let d = dims(name, s.tq.div_ceil(MMA_ROWS) * WARPS, s.n_kv_head, s.b)?;
    let (dkp, dvp, dp, qp, kp, vp, lp, dlp) = (p.dk.addr, p.dv.addr, p.dout.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr, p.delta.addr);
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_bwd covers every buffer for the training shape; rows
    // past t are neither read (zero-filled) nor written.
    unsafe { launch!(tg, Family::AttentionMma, name, d, [dkp, dvp, dp, qp, kp, vp, lp, dlp, b, t, nh, nkv]) }
}

/// The whole backward on tensor cores: delta (v1 kernel), dq, dk/dv.
pub fn attention_bwd_mma_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    attention_bwd_pre_bf16(tg, p)?;
    attention_bwd_dq_mma_bf16(tg, p)?;
    attention_bwd_dkdv_mma_bf16(tg, p)
}

/// The whole backward: delta, dq, dk/dv (`dq, dk, dv` overwritten).
pub fn attention_bwd_bf16(tg: Target<'_>, p: &AttnBwdParams) -> Result<()> {
    check_bwd(p)?;
    attention_bwd_pre_bf16(tg, p)?;
    attention_bwd_dq_bf16(tg, p)?;
    attention_bwd_dkdv_bf16(tg, p)
}

// ---- ragged batches (v1 kernels) -------------------------------------------
// The per-sequence `pos0`/`len` values are checked on the host
// (`crate::Ragged::check`: `len <= tq`, `pos0 + len <= cap`) before they are
// uploaded; the launchers check that both arrays hold `b` entries.

fn check_ragged_ptrs(op: &'static str, s: &AttnShape, r: &RaggedPtrs) -> Result<()> {
    check_ptr(op, "pos0", r.pos0, s.b)?;
    check_ptr(op, "len", r.len, s.b)
}

/// The forward of a ragged batch (`p.shape.tkv` unused: each sequence's
/// keys are `0 ..= pos0 + i`, within `cap`), one warp per query row (v1);
/// padding rows get `out` 0 and `lse` 0.
pub fn attention_fwd_ragged_bf16(tg: Target<'_>, p: &AttnFwdParams, r: RaggedPtrs) -> Result<()> {
    let (_, d) = check_fwd(p)?;
    let s = &p.shape;
    check_ragged_ptrs("attention_fwd_ragged", s, &r)?;
    let name = pick("attention_fwd_ragged", s.hd, FWD_RAGGED_D64, FWD_RAGGED_D128)?;
    let (o, l, qp, kp, vp, pp, lp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr, r.pos0.addr, r.len.addr);
    let I32Shape { b, tq, cap, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_fwd: q/out cover b*tq*n_head*hd, k/v b*cap*n_kv_head*hd,
    // lse b*n_head*tq; the host checked pos0 + len <= cap, so the keys read
    // (rows < pos0 + len) are inside k/v; warps past tq or len return.
    unsafe { launch!(tg, Family::Attention, name, d, [o, l, qp, kp, vp, pp, lp, b, tq, cap, nh, nkv]) }
}

/// The backward of a ragged training batch (every `pos0` 0): delta, dq,
/// dk/dv on the v1 kernels; padding rows are read by none of them and get
/// zero gradients.
pub fn attention_bwd_ragged_bf16(tg: Target<'_>, p: &AttnBwdParams, r: RaggedPtrs) -> Result<()> {
    check_bwd(p)?;
    let s = &p.shape;
    check_ragged_ptrs("attention_bwd_ragged", s, &r)?;
    let lp = r.len.addr;
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of("attention_bwd_ragged", s)?;
    let name = pick("attention_bwd_pre_ragged", s.hd, BWD_PRE_RAGGED_D64, BWD_PRE_RAGGED_D128)?;
    let d = dims(name, s.tq, s.n_head, s.b)?;
    let (dl, dp, op) = (p.delta.addr, p.dout.addr, p.out.addr);
    // SAFETY: check_bwd: dout/out cover b*t*n_head*hd, delta b*n_head*t; len b entries.
    unsafe { launch!(tg, Family::Attention, name, d, [dl, dp, op, lp, b, t, nh])? };
    let name = pick("attention_bwd_dq_ragged", s.hd, BWD_DQ_RAGGED_D64, BWD_DQ_RAGGED_D128)?;
    let (dqp, qp, kp, vp, lsp) = (p.dq.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr);
    // SAFETY: check_bwd covers every buffer for the training shape; rows past
    // t or len return after writing their zero dq row.
    unsafe { launch!(tg, Family::Attention, name, d, [dqp, dp, qp, kp, vp, lsp, dl, lp, b, t, nh, nkv])? };
    let name = pick("attention_bwd_dkdv_ragged", s.hd, BWD_DKDV_RAGGED_D64, BWD_DKDV_RAGGED_D128)?;
    let d = dims(name, s.tq, s.n_kv_head, s.b)?;
    let (dkp, dvp) = (p.dk.addr, p.dv.addr);
    // SAFETY: check_bwd covers every buffer for the training shape; query rows
    // read are < len <= t; key rows past len get their zero row.
    unsafe { launch!(tg, Family::Attention, name, d, [dkp, dvp, dp, qp, kp, vp, lsp, dl, lp, b, t, nh, nkv]) }
}

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
//! Split-K decode ([`attention_fwd_splitk_bf16`]: the forward for few query
//! rows against a long cache, chunks of [`SPLITK_CHUNK`] keys merged by a
//! combine kernel; scratch [`AttnSplitKScratch`] of [`splitk_scratch_len`]).
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

// ---- v3 (`cu/attention_v3.cu`): ldmatrix, cp.async stages, 128-row forward
// tiles (heaviest first), one backward kernel with dQ summed in key-tile order

pub const FWD_V3_D64: &str = "attention_fwd_v3_d64_bf16";
pub const FWD_V3_D128: &str = "attention_fwd_v3_d128_bf16";
pub const FWD_V3_RAGGED_D64: &str = "attention_fwd_v3_ragged_d64_bf16";
pub const FWD_V3_RAGGED_D128: &str = "attention_fwd_v3_ragged_d128_bf16";
pub const BWD_V3_D64: &str = "attention_bwd_v3_d64_bf16";
pub const BWD_V3_D128: &str = "attention_bwd_v3_d128_bf16";
pub const BWD_V3_RAGGED_D64: &str = "attention_bwd_v3_ragged_d64_bf16";
pub const BWD_V3_RAGGED_D128: &str = "attention_bwd_v3_ragged_d128_bf16";
pub const BWD_V3_DQ: &str = "attention_bwd_v3_dq_bf16";

/// Query rows per block of the v3 forward (V3_BQ in the .cu), 8 warps.
pub const V3_ROWS: usize = 128;
/// Keys per K/V tile of the v3 forward (V3_BK).
pub const V3_KEYS: usize = 64;
/// Threads of a v3 forward block (V3_FWD_WARPS warps).
pub const V3_FWD_THREADS: u32 = 256;
/// Keys per block of the v3 backward (V3_BWD_BK), 4 warps.
pub const V3_BWD_KEYS: usize = 64;
/// Query rows per step of the v3 backward (V3_BWD_BQ).
pub const V3_BWD_ROWS: usize = 32;
/// Threads of a v3 backward block (V3_BWD_WARPS warps).
pub const V3_BWD_THREADS: u32 = 128;
/// Threads of the dq conversion (V3_DQ_THREADS).
pub const V3_DQ_THREADS: u32 = 256;
/// Padding of a shared row in bf16 (V3_PAD).
const V3_PAD: usize = 8;

/// Dynamic shared memory of the v3 forward (`V3Fwd<HD>::SMEM`): the Q tile
/// and 3 (hd 64) or 2 (hd 128) stages of K and V tiles.
pub fn fwd_v3_smem(hd: usize) -> usize {
    let ld = hd + V3_PAD;
    let stages = if hd == 64 { 3 } else { 2 };
    (V3_ROWS * ld + 2 * stages * V3_KEYS * ld) * 2
}

/// Dynamic shared memory of the v3 backward (`V3Bwd<HD>::SMEM`): K, V, two
/// stages of Q and dO, dSᵀ, two stages of lse and delta, the ticket.
pub fn bwd_v3_smem(hd: usize) -> usize {
    let ld = hd + V3_PAD;
    let lds = V3_BWD_ROWS + V3_PAD;
    (2 * V3_BWD_KEYS * ld + 2 * 2 * V3_BWD_ROWS * ld + V3_BWD_KEYS * lds) * 2 + 2 * 2 * V3_BWD_ROWS * 4 + 16
}

/// Checks of the v3 forward (same buffers and alignment as [`check_fwd`]);
/// the grid is (heads, batch, query tiles of 128), the tiles taken last
/// row first. `ragged` picks the ragged entry point.
pub fn check_fwd_v3(p: &AttnFwdParams, ragged: bool) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_fwd_v3";
    check_fwd(p)?;
    let s = &p.shape;
    let name = if ragged { pick(OP, s.hd, FWD_V3_RAGGED_D64, FWD_V3_RAGGED_D128)? } else { pick(OP, s.hd, FWD_V3_D64, FWD_V3_D128)? };
    let tiles = s.tq.div_ceil(V3_ROWS);
    if s.b > MAX_GRID_YZ || tiles > MAX_GRID_YZ {
        return arg_err(OP, format!("batch {} and query tiles {tiles} must be <= {MAX_GRID_YZ}", s.b));
    }
    let grid = (to_u32(OP, "grid.x", s.n_head)?, to_u32(OP, "grid.y", s.b)?, to_u32(OP, "grid.z", tiles)?);
    Ok((name, LaunchDims { grid, block: V3_FWD_THREADS, smem: to_u32(OP, "smem", fwd_v3_smem(s.hd))? }))
}

/// The v3 forward: same contract as [`attention_fwd_bf16`] (P rounded to
/// bf16 for P·V, as v2).
pub fn attention_fwd_v3_bf16(tg: Target<'_>, p: &AttnFwdParams) -> Result<()> {
    let (name, d) = check_fwd_v3(p, false)?;
    let (o, l, qp, kp, vp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(name, &p.shape)?;
    // SAFETY: check_fwd: every buffer covers the shape; K/V rows >= tkv are
    // zero-filled by cp.async without a read; rows past tq are not written.
    unsafe { launch!(tg, Family::AttentionV3, name, d, [o, l, qp, kp, vp, b, tq, tkv, cap, nh, nkv]) }
}

/// The v3 forward of a ragged batch: same contract as
/// [`attention_fwd_ragged_bf16`].
pub fn attention_fwd_v3_ragged_bf16(tg: Target<'_>, p: &AttnFwdParams, r: RaggedPtrs) -> Result<()> {
    let (name, d) = check_fwd_v3(p, true)?;
    let s = &p.shape;
    check_ragged_ptrs("attention_fwd_v3_ragged", s, &r)?;
    let (o, l, qp, kp, vp, pp, lp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr, r.pos0.addr, r.len.addr);
    let I32Shape { b, tq, cap, nh, nkv, .. } = I32Shape::of(name, s)?;
    // SAFETY: check_fwd covers every buffer; the host checked pos0 + len <= cap,
    // so the keys read (rows < pos0 + len) are inside k/v; rows past tq are not written.
    unsafe { launch!(tg, Family::AttentionV3, name, d, [o, l, qp, kp, vp, pp, lp, b, tq, cap, nh, nkv]) }
}

/// Scratch of the v3 backward, zeroed by the caller before the call:
/// `dq_acc` (b, t, n_head, hd) f32, the dQ sums; `sync` [`bwd_v3_sync_len`]
/// i32, the ticket counter and one counter per (batch, head, query tile).
#[derive(Clone, Copy, Debug)]
pub struct AttnBwdV3Scratch {
    pub dq_acc: DPtr<f32>,
    pub sync: DPtr<i32>,
}

/// Length of [`AttnBwdV3Scratch::sync`] for a shape.
pub fn bwd_v3_sync_len(s: &AttnShape) -> usize {
    1 + s.b * s.n_head * s.tq.div_ceil(V3_BWD_ROWS)
}

/// Checks of the v3 backward: [`check_bwd`] and the scratch; returns the
/// main kernel's name and launch (one block per (key tile, KV head, batch)).
pub fn check_bwd_v3(p: &AttnBwdParams, sc: &AttnBwdV3Scratch, ragged: bool) -> Result<(&'static str, LaunchDims)> {
    const OP: &str = "attention_bwd_v3";
    check_bwd(p)?;
    let s = &p.shape;
    check_ptr(OP, "dq_acc", sc.dq_acc, s.b * s.tq * s.n_head * s.hd)?;
    check_align(OP, "dq_acc", sc.dq_acc, 16)?;
    check_ptr(OP, "sync", sc.sync, bwd_v3_sync_len(s))?;
    let name = if ragged { pick(OP, s.hd, BWD_V3_RAGGED_D64, BWD_V3_RAGGED_D128)? } else { pick(OP, s.hd, BWD_V3_D64, BWD_V3_D128)? };
    let blocks = s.tq.div_ceil(V3_BWD_KEYS) * s.n_kv_head * s.b;
    // tickets and counters are ints in the kernel
    to_i32(OP, "blocks", blocks)?;
    to_i32(OP, "sync", bwd_v3_sync_len(s))?;
    Ok((name, LaunchDims { grid: (to_u32(OP, "grid.x", blocks)?, 1, 1), block: V3_BWD_THREADS, smem: to_u32(OP, "smem", bwd_v3_smem(s.hd))? }))
}

/// The v3 backward: delta (the v1 pre kernel), the main kernel (dk, dv
/// overwritten, dq_acc summed), then dq = bf16(dq_acc·scale). `sc` must be
/// zero. With `r`, a ragged training batch (every pos0 0): padding rows are
/// read by none of the kernels and get zero gradients.
pub fn attention_bwd_v3_bf16(tg: Target<'_>, p: &AttnBwdParams, sc: &AttnBwdV3Scratch, r: Option<RaggedPtrs>) -> Result<()> {
    let (name, d) = check_bwd_v3(p, sc, r.is_some())?;
    let s = &p.shape;
    let I32Shape { b, tq: t, nh, nkv, .. } = I32Shape::of(name, s)?;
    let (dkp, dvp, dqa, syn, dp, qp, kp, vp, lsp, dl) =
        (p.dk.addr, p.dv.addr, sc.dq_acc.addr, sc.sync.addr, p.dout.addr, p.q.addr, p.k.addr, p.v.addr, p.lse.addr, p.delta.addr);
    match r {
        None => {
            attention_bwd_pre_bf16(tg, p)?;
            // SAFETY: check_bwd_v3 covers every buffer and the scratch for the
            // training shape; rows past t are neither read nor written.
            unsafe { launch!(tg, Family::AttentionV3, name, d, [dkp, dvp, dqa, syn, dp, qp, kp, vp, lsp, dl, b, t, nh, nkv])? };
        }
        Some(r) => {
            check_ragged_ptrs("attention_bwd_v3_ragged", s, &r)?;
            let lp = r.len.addr;
            let pre = pick("attention_bwd_pre_ragged", s.hd, BWD_PRE_RAGGED_D64, BWD_PRE_RAGGED_D128)?;
            let pd = dims(pre, s.tq, s.n_head, s.b)?;
            let op = p.out.addr;
            // SAFETY: check_bwd: dout/out cover b*t*n_head*hd, delta b*n_head*t; len b entries.
            unsafe { launch!(tg, Family::Attention, pre, pd, [dl, dp, op, lp, b, t, nh])? };
            // SAFETY: as the dense launch; rows at or past len are not read.
            unsafe { launch!(tg, Family::AttentionV3, name, d, [dkp, dvp, dqa, syn, dp, qp, kp, vp, lsp, dl, lp, b, t, nh, nkv])? };
        }
    }
    let n = s.b * s.tq * s.n_head * s.hd;
    let nd = LaunchDims { grid: (super::stride_blocks(BWD_V3_DQ, n, 8 * V3_DQ_THREADS as usize, 4096)?, 1, 1), block: V3_DQ_THREADS, smem: 0 };
    let (dqp, n64, scale) = (p.dq.addr, super::to_i64(BWD_V3_DQ, "n", n)?, 1.0f32 / (s.hd as f32).sqrt());
    // SAFETY: dq and dq_acc cover n = b*t*n_head*hd elements (checked), n is a
    // multiple of 8 (hd is 64 or 128) and both are 16-byte aligned.
    unsafe { launch!(tg, Family::AttentionV3, BWD_V3_DQ, nd, [dqp, dqa, n64, scale]) }
}

// ---- split-K decode (`cu/attention.cu`, "split-K decode"): few query rows
// against a long cache; the keys split into chunks of SPLITK_CHUNK, one
// block per (chunk, KV head × row block, batch), then a combine kernel

pub const FWD_SPLITK_D64: &str = "attention_fwd_splitk_d64_bf16";
pub const FWD_SPLITK_D128: &str = "attention_fwd_splitk_d128_bf16";
pub const FWD_SPLITK_RAGGED_D64: &str = "attention_fwd_splitk_ragged_d64_bf16";
pub const FWD_SPLITK_RAGGED_D128: &str = "attention_fwd_splitk_ragged_d128_bf16";
pub const SPLITK_COMBINE_D64: &str = "attention_splitk_combine_d64_bf16";
pub const SPLITK_COMBINE_D128: &str = "attention_splitk_combine_d128_bf16";
pub const SPLITK_COMBINE_RAGGED_D64: &str = "attention_splitk_combine_ragged_d64_bf16";
pub const SPLITK_COMBINE_RAGGED_D128: &str = "attention_splitk_combine_ragged_d128_bf16";

/// Keys per split-K block (SK_CHUNK in the .cu): a constant, so a row's
/// chunks, and so its rounding, depend on its own position only (not on the
/// GPU, the batch or the cache's other sequences).
pub const SPLITK_CHUNK: usize = 128;
/// Keys per shared K/V tile (SK_TILE), two tiles per chunk.
pub const SPLITK_TILE: usize = 64;
/// Query rows per split-K block (SK_ROWS): 4 warps of up to 4 rows.
pub const SPLITK_ROWS: usize = 16;
/// Threads of a split-K block (SK_WARPS warps).
pub const SPLITK_THREADS: u32 = 128;
/// Padding of a shared row in bf16 (SK_PAD).
const SPLITK_PAD: usize = 8;

/// Dynamic shared memory of the split-K kernel (`SplitK<HD>::SMEM`): two
/// K and two V tiles in bf16, then 16 query rows in f32.
pub fn splitk_smem(hd: usize) -> usize {
    2 * 2 * SPLITK_TILE * (hd + SPLITK_PAD) * 2 + SPLITK_ROWS * hd * 4
}

/// Chunks of a split-K call: over `tkv` keys (dense), or over the whole
/// cache (`cap`, ragged: each sequence's blocks past its last position
/// return at once).
pub fn splitk_chunks(s: &AttnShape, ragged: bool) -> usize {
    (if ragged { s.cap } else { s.tkv }).div_ceil(SPLITK_CHUNK)
}

/// Scratch of the split-K forward (f32, not zeroed: a chunk's partial is read
/// only where the first kernel wrote it): `opart` (b, n_head, tq, chunks, hd),
/// the unnormalised chunk outputs; `ml` (b, n_head, tq, chunks, 2), each
/// chunk's max and sum (log2 domain).
#[derive(Clone, Copy, Debug)]
pub struct AttnSplitKScratch {
    pub opart: DPtr<f32>,
    pub ml: DPtr<f32>,
}

/// Lengths (elements) of [`AttnSplitKScratch`]'s `opart` and `ml`.
pub fn splitk_scratch_len(s: &AttnShape, ragged: bool) -> (usize, usize) {
    let rows = s.b * s.n_head * s.tq * splitk_chunks(s, ragged);
    (rows * s.hd, rows * 2)
}

/// Checks of the split-K forward ([`check_fwd`]'s and the scratch's);
/// returns the two kernels' names and launches.
pub fn check_fwd_splitk(p: &AttnFwdParams, sc: &AttnSplitKScratch, ragged: bool) -> Result<[(&'static str, LaunchDims); 2]> {
    const OP: &str = "attention_fwd_splitk";
    check_fwd(p)?;
    let s = &p.shape;
    let (split, combine) = if ragged {
        (pick(OP, s.hd, FWD_SPLITK_RAGGED_D64, FWD_SPLITK_RAGGED_D128)?, pick(OP, s.hd, SPLITK_COMBINE_RAGGED_D64, SPLITK_COMBINE_RAGGED_D128)?)
    } else {
        (pick(OP, s.hd, FWD_SPLITK_D64, FWD_SPLITK_D128)?, pick(OP, s.hd, SPLITK_COMBINE_D64, SPLITK_COMBINE_D128)?)
    };
    let (no, nm) = splitk_scratch_len(s, ragged);
    check_ptr(OP, "opart", sc.opart, no)?;
    check_align(OP, "opart", sc.opart, 16)?;
    check_ptr(OP, "ml", sc.ml, nm)?;
    // partial indices are int64 in the kernel; chunks and row blocks are ints
    to_i32(OP, "chunks", splitk_chunks(s, ragged))?;
    let row_blocks = (s.n_head / s.n_kv_head * s.tq).div_ceil(SPLITK_ROWS);
    let gy = s.n_kv_head * row_blocks;
    if gy > MAX_GRID_YZ || s.b > MAX_GRID_YZ {
        return arg_err(OP, format!("KV heads x row blocks {gy} and batch {} must be <= {MAX_GRID_YZ}", s.b));
    }
    let grid = (to_u32(OP, "grid.x", splitk_chunks(s, ragged))?, to_u32(OP, "grid.y", gy)?, to_u32(OP, "grid.z", s.b)?);
    let d_split = LaunchDims { grid, block: SPLITK_THREADS, smem: to_u32(OP, "smem", splitk_smem(s.hd))? };
    Ok([(split, d_split), (combine, dims(OP, s.tq, s.n_head, s.b)?)])
}

/// The split-K forward: same contract as [`attention_fwd_bf16`] (and, with
/// `r`, as [`attention_fwd_ragged_bf16`]), computed in f32 like v1 (no bf16
/// rounding of P); `sc` is scratch (any contents).
pub fn attention_fwd_splitk_bf16(tg: Target<'_>, p: &AttnFwdParams, sc: &AttnSplitKScratch, r: Option<RaggedPtrs>) -> Result<()> {
    let [(split, ds), (combine, dc)] = check_fwd_splitk(p, sc, r.is_some())?;
    let s = &p.shape;
    let nch = to_i32(split, "chunks", splitk_chunks(s, r.is_some()))?;
    let (o, l, qp, kp, vp, op, mp) = (p.out.addr, p.lse.addr, p.q.addr, p.k.addr, p.v.addr, sc.opart.addr, sc.ml.addr);
    let I32Shape { b, tq, tkv, cap, nh, nkv } = I32Shape::of(split, s)?;
    match r {
        None => {
            // SAFETY: check_fwd_splitk: q covers b*tq*n_head*hd, k/v b*cap*n_kv_head*hd
            // (rows < tkv <= cap are read, the rest zero-filled without a read),
            // opart/ml cover b*n_head*tq*chunks rows; blocks past the keys return.
            unsafe { launch!(tg, Family::Attention, split, ds, [op, mp, qp, kp, vp, b, tq, tkv, cap, nh, nkv, nch])? };
            // SAFETY: out covers b*tq*n_head*hd, lse b*n_head*tq; a row reads the
            // chunks < ceil(vis/chunk) <= chunks that the first kernel wrote.
            unsafe { launch!(tg, Family::Attention, combine, dc, [o, l, op, mp, b, tq, tkv, nh, nch]) }
        }
        Some(r) => {
            check_ragged_ptrs("attention_fwd_splitk_ragged", s, &r)?;
            let (pp, lp) = (r.pos0.addr, r.len.addr);
            // SAFETY: as the dense launch; the host checked pos0 + len <= cap, so
            // the keys read (rows < pos0 + len) are inside k/v.
            unsafe { launch!(tg, Family::Attention, split, ds, [op, mp, qp, kp, vp, pp, lp, b, tq, cap, nh, nkv, nch])? };
            // SAFETY: as the dense combine; padding rows read nothing.
            unsafe { launch!(tg, Family::Attention, combine, dc, [o, l, op, mp, pp, lp, b, tq, nh, nch]) }
        }
    }
}

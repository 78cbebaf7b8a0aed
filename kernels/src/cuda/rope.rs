//! Launchers of `cu/rope.cu`. CPU counterparts: `crate::rope`
//! (`rope_fwd_cpu`, `rope_bwd_cpu`); the same [`RopeShape`] and cos/sin
//! table `(max_t, hd/2, 2)` f32 from `crate::rope::rope_table`.
//!
//! The fused QKV projection's split ([`qkv_split_rope_bf16`]) and its
//! backward's pack ([`qkv_rope_bwd_pack_bf16`]), and their ragged forms,
//! are checked against the unfused composition (three products, then
//! `rope_fwd_cpu` on q and k; `rope_bwd_cpu`, then three products each for
//! dx and dW). They take any window (16-byte accesses when hd % 16 == 0 and
//! every pointer is 16-byte aligned, one pair at a time otherwise).

use super::{check_ptr, launch, stride_blocks, to_i32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::rope::RopeShape;
use crate::{arg_err, Result};

pub const FWD: &str = "rope_fwd_bf16";
pub const BWD: &str = "rope_bwd_bf16";
pub const FWD_RAGGED: &str = "rope_fwd_ragged_bf16";
pub const BWD_RAGGED: &str = "rope_bwd_ragged_bf16";
pub const QKV_SPLIT: &str = "qkv_split_rope_bf16";
pub const QKV_SPLIT_RAGGED: &str = "qkv_split_rope_ragged_bf16";
pub const QKV_PACK_BWD: &str = "qkv_rope_bwd_pack_bf16";
pub const QKV_PACK_BWD_RAGGED: &str = "qkv_rope_bwd_pack_ragged_bf16";
const THREADS: u32 = 256;
const MAX_BLOCKS: usize = 132 * 8 * 16;

/// Checks shared by forward and backward; returns the launch dimensions.
pub fn check(op: &'static str, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape) -> Result<LaunchDims> {
    if s.hd == 0 || !s.hd.is_multiple_of(2) {
        return arg_err(op, format!("head_dim {} must be even and > 0", s.hd));
    }
    check_ptr(op, "x", x, s.b * s.t * s.heads * s.hd)?;
    check_ptr(op, "table", table, (s.pos0 + s.t) * s.hd)?;
    let grid = stride_blocks(op, s.b * s.t * s.heads * s.hd / 2, THREADS as usize, MAX_BLOCKS)?;
    Ok(LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 })
}

fn rope(tg: Target<'_>, k: &'static str, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape) -> Result<()> {
    let dims = check(k, x, table, s)?;
    let (xp, tp) = (x.addr, table.addr);
    let (b, t, h, hd, p0) = (to_i32(k, "b", s.b)?, to_i32(k, "t", s.t)?, to_i32(k, "heads", s.heads)?, to_i32(k, "hd", s.hd)?, to_i32(k, "pos0", s.pos0)?);
    // SAFETY: check(): x covers b*t*heads*hd, the table covers positions
    // 0..pos0+t; grid-stride over the pairs.
    unsafe { launch!(tg, Family::Rope, k, dims, [xp, tp, b, t, h, hd, p0]) }
}

/// Rotates `x (b, t, heads, hd)` in place.
pub fn rope_fwd_bf16(tg: Target<'_>, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape) -> Result<()> {
    rope(tg, FWD, x, table, s)
}

/// Rotates the gradient `dx (b, t, heads, hd)` back in place.
pub fn rope_bwd_bf16(tg: Target<'_>, dx: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape) -> Result<()> {
    rope(tg, BWD, dx, table, s)
}

/// The per-sequence positions and lengths of a ragged batch on the device
/// (`(b)` i32 each), checked on the host (`crate::Ragged::check`) before
/// upload: `len[bi] <= t` and `pos0[bi] + len[bi]` within the table/cache.
#[derive(Clone, Copy, Debug)]
pub struct RaggedPtrs {
    pub pos0: DPtr<i32>,
    pub len: DPtr<i32>,
}

/// Checks of the ragged forms: the shape and both (b)-arrays; `max_pos` is
/// the largest position the host checked (`pos0 + len <= max_pos`).
pub fn check_ragged(op: &'static str, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape, r: RaggedPtrs, max_pos: usize) -> Result<LaunchDims> {
    if s.hd == 0 || !s.hd.is_multiple_of(2) {
        return arg_err(op, format!("head_dim {} must be even and > 0", s.hd));
    }
    check_ptr(op, "x", x, s.b * s.t * s.heads * s.hd)?;
    check_ptr(op, "table", table, max_pos * s.hd)?;
    check_ptr(op, "pos0", r.pos0, s.b)?;
    check_ptr(op, "len", r.len, s.b)?;
    let grid = stride_blocks(op, s.b * s.t * s.heads * s.hd / 2, THREADS as usize, MAX_BLOCKS)?;
    Ok(LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 })
}

fn rope_ragged(tg: Target<'_>, k: &'static str, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape, r: RaggedPtrs, max_pos: usize) -> Result<()> {
    let dims = check_ragged(k, x, table, s, r, max_pos)?;
    let (xp, tp, pp, lp) = (x.addr, table.addr, r.pos0.addr, r.len.addr);
    let (b, t, h, hd) = (to_i32(k, "b", s.b)?, to_i32(k, "t", s.t)?, to_i32(k, "heads", s.heads)?, to_i32(k, "hd", s.hd)?);
    // SAFETY: check_ragged(): x covers b*t*heads*hd, pos0/len b entries, and
    // the host checked pos0 + len <= max_pos, which the table covers; rows
    // past len are skipped.
    unsafe { launch!(tg, Family::Rope, k, dims, [xp, tp, pp, lp, b, t, h, hd]) }
}

/// Rotates the valid rows of a ragged `x (b, t, heads, hd)` in place (row
/// `i` of sequence `bi` at position `pos0[bi] + i`).
pub fn rope_fwd_ragged_bf16(tg: Target<'_>, x: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape, r: RaggedPtrs, max_pos: usize) -> Result<()> {
    rope_ragged(tg, FWD_RAGGED, x, table, s, r, max_pos)
}

/// The inverse rotation of [`rope_fwd_ragged_bf16`] on a gradient.
pub fn rope_bwd_ragged_bf16(tg: Target<'_>, dx: DPtr<Bf16>, table: DPtr<f32>, s: RopeShape, r: RaggedPtrs, max_pos: usize) -> Result<()> {
    rope_ragged(tg, BWD_RAGGED, dx, table, s, r, max_pos)
}

/// Shape of a fused QKV split or pack: `b·t` rows, `n_head` query heads and
/// `n_kv_head` key/value heads of `hd`; a packed row holds
/// `(n_head + 2·n_kv_head)·hd` values, `[q | k | v]`. Row `t` of a dense
/// batch is at position `pos0 + t` (a ragged batch: per sequence).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvRopeShape {
    pub b: usize,
    pub t: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hd: usize,
    pub pos0: usize,
}

impl QkvRopeShape {
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.hd
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.hd
    }
    /// Values of a packed row: `q_dim + 2·kv_dim`.
    pub fn width(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
}

/// The buffers of a fused QKV split (`packed` read; `q, k, v` written) or
/// pack (`q, k, v` the gradients dq, dk, dv, read; `packed` written):
/// `packed (rows, width)`, `q (rows, q_dim)`, `k, v (rows, kv_dim)`.
#[derive(Clone, Copy, Debug)]
pub struct QkvPtrs {
    pub packed: DPtr<Bf16>,
    pub q: DPtr<Bf16>,
    pub k: DPtr<Bf16>,
    pub v: DPtr<Bf16>,
}

/// Pairs per thread of the split/pack kernels when they take 16-byte words.
const QKV_VEC_PAIRS: usize = 8;

/// Checks of the split and the pack (dense: `ragged` None, the table covers
/// positions `0..pos0 + t`; ragged: the two `(b)` arrays and the largest
/// position the host checked, `max_pos`); returns the launch dimensions.
pub fn check_qkv(op: &'static str, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape, ragged: Option<(RaggedPtrs, usize)>) -> Result<LaunchDims> {
    if s.hd == 0 || !s.hd.is_multiple_of(2) {
        return arg_err(op, format!("head_dim {} must be even and > 0", s.hd));
    }
    let n = s.rows();
    check_ptr(op, "packed", p.packed, n * s.width())?;
    check_ptr(op, "q", p.q, n * s.q_dim())?;
    check_ptr(op, "k", p.k, n * s.kv_dim())?;
    check_ptr(op, "v", p.v, n * s.kv_dim())?;
    match ragged {
        None => check_ptr(op, "table", table, (s.pos0 + s.t) * s.hd)?,
        Some((r, max_pos)) => {
            check_ptr(op, "table", table, max_pos * s.hd)?;
            check_ptr(op, "pos0", r.pos0, s.b)?;
            check_ptr(op, "len", r.len, s.b)?;
        }
    }
    // the kernel takes 16-byte words when hd % 16 == 0 and the pointers are aligned
    let per_thread = if s.hd.is_multiple_of(2 * QKV_VEC_PAIRS) { QKV_VEC_PAIRS } else { 1 };
    let items = n * (s.n_head + 2 * s.n_kv_head) * (s.hd / 2) / per_thread;
    let grid = stride_blocks(op, items, THREADS as usize, MAX_BLOCKS)?;
    Ok(LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 })
}

fn qkv(tg: Target<'_>, k: &'static str, pack: bool, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape, ragged: Option<(RaggedPtrs, usize)>) -> Result<()> {
    let dims = check_qkv(k, p, table, s, ragged)?;
    let (pk, qp, kp, vp, tp) = (p.packed.addr, p.q.addr, p.k.addr, p.v.addr, table.addr);
    let (b, t, nh, nkv, hd) =
        (to_i32(k, "b", s.b)?, to_i32(k, "t", s.t)?, to_i32(k, "n_head", s.n_head)?, to_i32(k, "n_kv_head", s.n_kv_head)?, to_i32(k, "hd", s.hd)?);
    // the kernel's heads per row (an int); item indices and offsets are int64
    to_i32(k, "heads per row", s.n_head + 2 * s.n_kv_head)?;
    // The four kernels take the same arguments; the split lists its outputs
    // (q, k, v) first, the pack its output (packed) first.
    match (ragged, pack) {
        (None, false) => {
            let p0 = to_i32(k, "pos0", s.pos0)?;
            // SAFETY: check_qkv(): packed covers b·t rows of (n_head +
            // 2·n_kv_head)·hd, q b·t·n_head·hd, k and v b·t·n_kv_head·hd, the
            // table positions 0..pos0 + t; grid-stride over the items.
            unsafe { launch!(tg, Family::Rope, k, dims, [qp, kp, vp, pk, tp, b, t, nh, nkv, hd, p0]) }
        }
        (None, true) => {
            let p0 = to_i32(k, "pos0", s.pos0)?;
            // SAFETY: as the dense split (check_qkv).
            unsafe { launch!(tg, Family::Rope, k, dims, [pk, qp, kp, vp, tp, b, t, nh, nkv, hd, p0]) }
        }
        (Some((r, _)), false) => {
            let (rp, rl) = (r.pos0.addr, r.len.addr);
            // SAFETY: check_qkv(): the buffers as the dense split; pos0/len
            // hold b entries and the host checked pos0 + len <= max_pos, which
            // the table covers (padding rows read no table entry).
            unsafe { launch!(tg, Family::Rope, k, dims, [qp, kp, vp, pk, tp, rp, rl, b, t, nh, nkv, hd]) }
        }
        (Some((r, _)), true) => {
            let (rp, rl) = (r.pos0.addr, r.len.addr);
            // SAFETY: as the ragged split (check_qkv).
            unsafe { launch!(tg, Family::Rope, k, dims, [pk, qp, kp, vp, tp, rp, rl, b, t, nh, nkv, hd]) }
        }
    }
}

/// The fused QKV projection's epilogue: from `p.packed (b·t, width)`, the
/// product against the stacked `[Wq; Wk; Wv]`, writes `p.q`, `p.k` rotated
/// (as [`rope_fwd_bf16`]) and `p.v` copied (all `=`).
pub fn qkv_split_rope_bf16(tg: Target<'_>, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape) -> Result<()> {
    qkv(tg, QKV_SPLIT, false, p, table, s, None)
}

/// [`qkv_split_rope_bf16`] on a ragged batch (`s.pos0` unused): padding rows
/// copied un-rotated.
pub fn qkv_split_rope_ragged_bf16(tg: Target<'_>, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape, r: RaggedPtrs, max_pos: usize) -> Result<()> {
    qkv(tg, QKV_SPLIT_RAGGED, false, p, table, s, Some((r, max_pos)))
}

/// The fused QKV backward's prologue: from the gradients `p.q, p.k` (of the
/// rotated q, k) and `p.v`, writes `p.packed (b·t, width)` = `[dq' | dk' |
/// dv]`, dq' and dk' rotated back (as [`rope_bwd_bf16`]; `=`).
pub fn qkv_rope_bwd_pack_bf16(tg: Target<'_>, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape) -> Result<()> {
    qkv(tg, QKV_PACK_BWD, true, p, table, s, None)
}

/// [`qkv_rope_bwd_pack_bf16`] on a ragged batch (`s.pos0` unused): padding
/// rows copied un-rotated.
pub fn qkv_rope_bwd_pack_ragged_bf16(tg: Target<'_>, p: &QkvPtrs, table: DPtr<f32>, s: QkvRopeShape, r: RaggedPtrs, max_pos: usize) -> Result<()> {
    qkv(tg, QKV_PACK_BWD_RAGGED, true, p, table, s, Some((r, max_pos)))
}

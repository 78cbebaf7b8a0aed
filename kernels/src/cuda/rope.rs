//! Launchers of `cu/rope.cu`. CPU counterparts: `crate::rope`
//! (`rope_fwd_cpu`, `rope_bwd_cpu`); the same [`RopeShape`] and cos/sin
//! table `(max_t, hd/2, 2)` f32 from `crate::rope::rope_table`.

use super::{check_ptr, launch, stride_blocks, to_i32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::rope::RopeShape;
use crate::{arg_err, Result};

pub const FWD: &str = "rope_fwd_bf16";
pub const BWD: &str = "rope_bwd_bf16";
pub const FWD_RAGGED: &str = "rope_fwd_ragged_bf16";
pub const BWD_RAGGED: &str = "rope_bwd_ragged_bf16";
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

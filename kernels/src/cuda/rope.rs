//! Launchers of `cu/rope.cu`. CPU counterparts: `crate::rope`
//! (`rope_fwd_cpu`, `rope_bwd_cpu`); the same [`RopeShape`] and cos/sin
//! table `(max_t, hd/2, 2)` f32 from `crate::rope::rope_table`.

use super::{check_ptr, launch, stride_blocks, to_i32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::rope::RopeShape;
use crate::{arg_err, Result};

pub const FWD: &str = "rope_fwd_bf16";
pub const BWD: &str = "rope_bwd_bf16";
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

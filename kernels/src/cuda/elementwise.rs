//! Launchers of `cu/elementwise.cu`: casts, residual add, scale, sum of
//! squares (global gradient norm), row gather/scatter, KV-cache writes, in
//! bf16 and f32. CPU counterparts: `crate::elementwise` (`add_cpu`, ...).
//! The kernels are grid-stride loops that take any window (16-byte accesses
//! only when aligned), so these launchers check lengths and index ranges only.

use super::rope::RaggedPtrs;
use super::{check_ptr, launch, stride_blocks, to_i64, Bf16, DPtr, Elem, Family, LaunchDims, Target};
use crate::{arg_err, Result};

pub const CAST_F32_TO_BF16: &str = "cast_f32_to_bf16";
pub const CAST_BF16_TO_F32: &str = "cast_bf16_to_f32";
pub const ADD_FWD_BF16: &str = "add_fwd_bf16";
pub const ADD_FWD_F32: &str = "add_fwd_f32";
pub const ADD_ASSIGN_BF16: &str = "add_assign_bf16";
pub const ADD_ASSIGN_F32: &str = "add_assign_f32";
pub const SCALE_BF16: &str = "scale_bf16";
pub const SCALE_F32: &str = "scale_f32";
pub const SUM_SQUARES_BF16: &str = "sum_squares_bf16";
pub const SUM_SQUARES_F32: &str = "sum_squares_f32";
pub const GATHER_ROWS_BF16: &str = "gather_rows_bf16";
pub const GATHER_ROWS_F32: &str = "gather_rows_f32";
pub const SCATTER_ADD_ROWS_BF16: &str = "scatter_add_rows_bf16";
pub const SCATTER_ADD_ROWS_F32: &str = "scatter_add_rows_f32";
pub const KV_WRITE_BF16: &str = "kv_write_bf16";
pub const KV_WRITE_F32: &str = "kv_write_f32";
pub const KV_WRITE_RAGGED_BF16: &str = "kv_write_ragged_bf16";
pub const KV_WRITE_RAGGED_F32: &str = "kv_write_ragged_f32";

/// Threads per block of every element-wise kernel.
pub const THREADS: u32 = 256;
/// Elements per thread per loop trip (one 16-byte word of bf16).
const PER_THREAD: usize = 8;
/// Cap of the grid-stride grids (16 waves of 8 blocks on a 132-SM H100).
const MAX_BLOCKS: usize = 132 * 8 * 16;
/// Blocks of `sum_squares`: a function of n only, never of the device, so
/// the partial sums (and the norm) are the same on every GPU.
pub const SUMSQ_MAX_BLOCKS: usize = 1024;

/// Launch dimensions of an element-wise kernel over `n` elements.
pub fn map_dims(op: &'static str, n: usize) -> Result<LaunchDims> {
    let grid = stride_blocks(op, n, THREADS as usize * PER_THREAD, MAX_BLOCKS)?;
    Ok(LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 })
}

/// Number of partial sums `sum_squares_*` writes for `n` elements.
pub fn sum_squares_blocks(n: usize) -> usize {
    n.div_ceil(THREADS as usize * PER_THREAD).clamp(1, SUMSQ_MAX_BLOCKS)
}

fn map_check<A: Elem, B: Elem>(op: &'static str, out: DPtr<A>, a: DPtr<B>, n: usize) -> Result<LaunchDims> {
    check_ptr(op, "out", out, n)?;
    check_ptr(op, "in", a, n)?;
    map_dims(op, n)
}

/// `out (n) = bf16(in (n))`
pub fn cast_f32_to_bf16(tg: Target<'_>, out: DPtr<Bf16>, inp: DPtr<f32>, n: usize) -> Result<()> {
    let dims = map_check(CAST_F32_TO_BF16, out, inp, n)?;
    let (o, i, n) = (out.addr, inp.addr, to_i64(CAST_F32_TO_BF16, "n", n)?);
    // SAFETY: out and inp hold >= n elements (map_check); grid-stride kernel.
    unsafe { launch!(tg, Family::Elementwise, CAST_F32_TO_BF16, dims, [o, i, n]) }
}

/// `out (n) = f32(in (n))`
pub fn cast_bf16_to_f32(tg: Target<'_>, out: DPtr<f32>, inp: DPtr<Bf16>, n: usize) -> Result<()> {
    let dims = map_check(CAST_BF16_TO_F32, out, inp, n)?;
    let (o, i, n) = (out.addr, inp.addr, to_i64(CAST_BF16_TO_F32, "n", n)?);
    // SAFETY: out and inp hold >= n elements (map_check); grid-stride kernel.
    unsafe { launch!(tg, Family::Elementwise, CAST_BF16_TO_F32, dims, [o, i, n]) }
}

fn add_fwd<T: Elem>(tg: Target<'_>, k: &'static str, out: DPtr<T>, a: DPtr<T>, b: DPtr<T>, n: usize) -> Result<()> {
    let dims = map_check(k, out, a, n)?;
    check_ptr(k, "b", b, n)?;
    let (o, a, b, n) = (out.addr, a.addr, b.addr, to_i64(k, "n", n)?);
    // SAFETY: out, a, b hold >= n elements (checked above); grid-stride kernel.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [o, a, b, n]) }
}
/// `out = a + b` (n bf16)
pub fn add_fwd_bf16(tg: Target<'_>, out: DPtr<Bf16>, a: DPtr<Bf16>, b: DPtr<Bf16>, n: usize) -> Result<()> {
    add_fwd(tg, ADD_FWD_BF16, out, a, b, n)
}
/// `out = a + b` (n f32)
pub fn add_fwd_f32(tg: Target<'_>, out: DPtr<f32>, a: DPtr<f32>, b: DPtr<f32>, n: usize) -> Result<()> {
    add_fwd(tg, ADD_FWD_F32, out, a, b, n)
}

fn add_assign<T: Elem>(tg: Target<'_>, k: &'static str, x: DPtr<T>, y: DPtr<T>, n: usize) -> Result<()> {
    let dims = map_check(k, x, y, n)?;
    let (x, y, n) = (x.addr, y.addr, to_i64(k, "n", n)?);
    // SAFETY: x and y hold >= n elements (map_check); grid-stride kernel.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [x, y, n]) }
}
/// `x += y` (n bf16)
pub fn add_assign_bf16(tg: Target<'_>, x: DPtr<Bf16>, y: DPtr<Bf16>, n: usize) -> Result<()> {
    add_assign(tg, ADD_ASSIGN_BF16, x, y, n)
}
/// `x += y` (n f32)
pub fn add_assign_f32(tg: Target<'_>, x: DPtr<f32>, y: DPtr<f32>, n: usize) -> Result<()> {
    add_assign(tg, ADD_ASSIGN_F32, x, y, n)
}

fn scale<T: Elem>(tg: Target<'_>, k: &'static str, x: DPtr<T>, sc: f32, n: usize) -> Result<()> {
    check_ptr(k, "x", x, n)?;
    let dims = map_dims(k, n)?;
    let (x, n) = (x.addr, to_i64(k, "n", n)?);
    // SAFETY: x holds >= n elements (checked above); grid-stride kernel.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [x, sc, n]) }
}
/// `x *= s` (n bf16)
pub fn scale_bf16(tg: Target<'_>, x: DPtr<Bf16>, sc: f32, n: usize) -> Result<()> {
    scale(tg, SCALE_BF16, x, sc, n)
}
/// `x *= s` (n f32)
pub fn scale_f32(tg: Target<'_>, x: DPtr<f32>, sc: f32, n: usize) -> Result<()> {
    scale(tg, SCALE_F32, x, sc, n)
}

/// Launch dimensions of `sum_squares_*` (a fixed grid of
/// [`sum_squares_blocks`] blocks; `partial` must hold that many f64).
pub fn check_sum_squares<T: Elem>(partial: DPtr<f64>, x: DPtr<T>, n: usize) -> Result<LaunchDims> {
    const OP: &str = "sum_squares";
    check_ptr(OP, "x", x, n)?;
    let blocks = sum_squares_blocks(n);
    check_ptr(OP, "partial", partial, blocks)?;
    Ok(LaunchDims { grid: (super::to_u32(OP, "grid", blocks)?, 1, 1), block: THREADS, smem: 0 })
}
fn sum_squares<T: Elem>(tg: Target<'_>, k: &'static str, partial: DPtr<f64>, x: DPtr<T>, n: usize) -> Result<()> {
    let dims = check_sum_squares(partial, x, n)?;
    let (p, x, n) = (partial.addr, x.addr, to_i64(k, "n", n)?);
    // SAFETY: x holds >= n elements, partial one f64 per block (check_sum_squares).
    unsafe { launch!(tg, Family::Elementwise, k, dims, [p, x, n]) }
}
/// `partial[blk] = Σ x²` over block blk's share (f64); the caller adds the
/// [`sum_squares_blocks`]`(n)` partials in order on the host.
pub fn sum_squares_bf16(tg: Target<'_>, partial: DPtr<f64>, x: DPtr<Bf16>, n: usize) -> Result<()> {
    sum_squares(tg, SUM_SQUARES_BF16, partial, x, n)
}
/// As [`sum_squares_bf16`] for f32 data.
pub fn sum_squares_f32(tg: Target<'_>, partial: DPtr<f64>, x: DPtr<f32>, n: usize) -> Result<()> {
    sum_squares(tg, SUM_SQUARES_F32, partial, x, n)
}

/// Checks of gather/scatter: `rows` (device u32, values range-checked by
/// the caller on the host against `src_rows`) and the two row buffers.
pub fn check_rows<T: Elem>(op: &'static str, many: DPtr<T>, many_rows: usize, picked: DPtr<T>, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    check_ptr(op, "rows", rows, nrows)?;
    check_ptr(op, "picked", picked, nrows * c)?;
    check_ptr(op, "table", many, many_rows * c)?;
    Ok(())
}

fn gather<T: Elem>(tg: Target<'_>, k: &'static str, out: DPtr<T>, src: DPtr<T>, src_rows: usize, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    check_rows(k, src, src_rows, out, rows, nrows, c)?;
    let dims = map_dims(k, nrows * c)?;
    let (o, sp, r, nr, c) = (out.addr, src.addr, rows.addr, to_i64(k, "rows", nrows)?, to_i64(k, "c", c)?);
    // SAFETY: out holds nrows*c, rows nrows values < src_rows (host-checked), src src_rows*c.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [o, sp, r, nr, c]) }
}
/// `out (nrows, c) = src (src_rows, c)[rows]`; every `rows[i] < src_rows`
/// (checked by the caller on the host before the upload).
#[allow(clippy::too_many_arguments)]
pub fn gather_rows_bf16(tg: Target<'_>, out: DPtr<Bf16>, src: DPtr<Bf16>, src_rows: usize, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    gather(tg, GATHER_ROWS_BF16, out, src, src_rows, rows, nrows, c)
}
/// As [`gather_rows_bf16`] for f32.
#[allow(clippy::too_many_arguments)]
pub fn gather_rows_f32(tg: Target<'_>, out: DPtr<f32>, src: DPtr<f32>, src_rows: usize, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    gather(tg, GATHER_ROWS_F32, out, src, src_rows, rows, nrows, c)
}

fn scatter<T: Elem>(tg: Target<'_>, k: &'static str, dst: DPtr<T>, dst_rows: usize, src: DPtr<T>, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    check_rows(k, dst, dst_rows, src, rows, nrows, c)?;
    // one thread per column
    let grid = stride_blocks(k, c, THREADS as usize, MAX_BLOCKS)?;
    let dims = LaunchDims { grid: (grid, 1, 1), block: THREADS, smem: 0 };
    let (d, sp, r, nr, c) = (dst.addr, src.addr, rows.addr, to_i64(k, "rows", nrows)?, to_i64(k, "c", c)?);
    // SAFETY: dst holds dst_rows*c with rows[i] < dst_rows (host-checked), src nrows*c.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [d, sp, r, nr, c]) }
}
/// `dst (dst_rows, c)[rows[i]] += src (nrows, c)[i]`, in row order.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add_rows_bf16(tg: Target<'_>, dst: DPtr<Bf16>, dst_rows: usize, src: DPtr<Bf16>, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    scatter(tg, SCATTER_ADD_ROWS_BF16, dst, dst_rows, src, rows, nrows, c)
}
/// As [`scatter_add_rows_bf16`] for f32.
#[allow(clippy::too_many_arguments)]
pub fn scatter_add_rows_f32(tg: Target<'_>, dst: DPtr<f32>, dst_rows: usize, src: DPtr<f32>, rows: DPtr<u32>, nrows: usize, c: usize) -> Result<()> {
    scatter(tg, SCATTER_ADD_ROWS_F32, dst, dst_rows, src, rows, nrows, c)
}

/// Checks of `kv_write_*`: the rows fit the cache and both buffers hold
/// their shapes.
#[allow(clippy::too_many_arguments)]
pub fn check_kv_write<T: Elem>(cache: DPtr<T>, src: DPtr<T>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<LaunchDims> {
    const OP: &str = "kv_write";
    if pos0 + t > cap {
        return arg_err(OP, format!("positions {pos0}..{} exceed the cache length {cap}", pos0 + t));
    }
    check_ptr(OP, "cache", cache, b * cap * w)?;
    check_ptr(OP, "new", src, b * t * w)?;
    map_dims(OP, b * t * w)
}
#[allow(clippy::too_many_arguments)]
fn kv_write<T: Elem>(tg: Target<'_>, k: &'static str, cache: DPtr<T>, src: DPtr<T>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
    let dims = check_kv_write(cache, src, b, t, cap, w, pos0)?;
    let (cp, sp) = (cache.addr, src.addr);
    let (b, t, cap, w, pos0) = (to_i64(k, "b", b)?, to_i64(k, "t", t)?, to_i64(k, "cap", cap)?, to_i64(k, "w", w)?, to_i64(k, "pos0", pos0)?);
    // SAFETY: check_kv_write: cache holds b*cap*w, src b*t*w, pos0+t <= cap.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [cp, sp, b, t, cap, w, pos0]) }
}
/// `cache (b, cap, w)[:, pos0..pos0+t] = new (b, t, w)` (bf16)
#[allow(clippy::too_many_arguments)]
pub fn kv_write_bf16(tg: Target<'_>, cache: DPtr<Bf16>, src: DPtr<Bf16>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
    kv_write(tg, KV_WRITE_BF16, cache, src, b, t, cap, w, pos0)
}
/// As [`kv_write_bf16`] for f32.
#[allow(clippy::too_many_arguments)]
pub fn kv_write_f32(tg: Target<'_>, cache: DPtr<f32>, src: DPtr<f32>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
    kv_write(tg, KV_WRITE_F32, cache, src, b, t, cap, w, pos0)
}

/// Checks of `kv_write_ragged_*`: both buffers hold their shapes and the
/// per-sequence arrays hold `b` entries (their values, `len <= t` and
/// `pos0 + len <= cap`, are checked on the host before upload).
#[allow(clippy::too_many_arguments)]
pub fn check_kv_write_ragged<T: Elem>(cache: DPtr<T>, src: DPtr<T>, r: RaggedPtrs, b: usize, t: usize, cap: usize, w: usize) -> Result<LaunchDims> {
    const OP: &str = "kv_write_ragged";
    if t > cap {
        return arg_err(OP, format!("{t} rows per sequence exceed the cache length {cap}"));
    }
    check_ptr(OP, "cache", cache, b * cap * w)?;
    check_ptr(OP, "new", src, b * t * w)?;
    check_ptr(OP, "pos0", r.pos0, b)?;
    check_ptr(OP, "len", r.len, b)?;
    map_dims(OP, b * t * w)
}
#[allow(clippy::too_many_arguments)]
fn kv_write_ragged<T: Elem>(
    tg: Target<'_>,
    k: &'static str,
    cache: DPtr<T>,
    src: DPtr<T>,
    r: RaggedPtrs,
    b: usize,
    t: usize,
    cap: usize,
    w: usize,
) -> Result<()> {
    let dims = check_kv_write_ragged(cache, src, r, b, t, cap, w)?;
    let (cp, sp, pp, lp) = (cache.addr, src.addr, r.pos0.addr, r.len.addr);
    let (b, t, cap, w) = (to_i64(k, "b", b)?, to_i64(k, "t", t)?, to_i64(k, "cap", cap)?, to_i64(k, "w", w)?);
    // SAFETY: check_kv_write_ragged: cache holds b*cap*w, src b*t*w, pos0/len
    // b entries with pos0 + len <= cap (host check); rows past len skipped.
    unsafe { launch!(tg, Family::Elementwise, k, dims, [cp, sp, pp, lp, b, t, cap, w]) }
}
/// The valid rows of a ragged `new (b, t, w)` into `cache (b, cap, w)` at
/// `pos0[bi]..` (bf16); padding rows are not written.
#[allow(clippy::too_many_arguments)]
pub fn kv_write_ragged_bf16(tg: Target<'_>, cache: DPtr<Bf16>, src: DPtr<Bf16>, r: RaggedPtrs, b: usize, t: usize, cap: usize, w: usize) -> Result<()> {
    kv_write_ragged(tg, KV_WRITE_RAGGED_BF16, cache, src, r, b, t, cap, w)
}
/// As [`kv_write_ragged_bf16`] for f32.
#[allow(clippy::too_many_arguments)]
pub fn kv_write_ragged_f32(tg: Target<'_>, cache: DPtr<f32>, src: DPtr<f32>, r: RaggedPtrs, b: usize, t: usize, cap: usize, w: usize) -> Result<()> {
    kv_write_ragged(tg, KV_WRITE_RAGGED_F32, cache, src, r, b, t, cap, w)
}

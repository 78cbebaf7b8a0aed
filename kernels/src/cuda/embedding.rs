//! Launchers of `cu/embedding.cu`. CPU counterparts: `crate::embedding`
//! (`embedding_fwd_cpu`, `embedding_bwd_cpu`).
//!
//! Token ids live on the host first: the caller range-checks them against
//! `v` there, and for the backward groups the rows by token with
//! [`group_rows`] (the CSR the deterministic kernel walks).

use super::{check_align, check_ptr, launch, to_i32, to_u32, Bf16, DPtr, Family, LaunchDims, Target};
use crate::{arg_err, Result};

pub const FWD: &str = "embedding_fwd_bf16";
pub const BWD: &str = "embedding_bwd_f32";
const THREADS: u32 = 256;

/// Rows grouped by token: `uniq` (distinct tokens, ascending), `offsets`
/// (`uniq.len() + 1`, into `order`), `order` (row indices, ascending within
/// each token). Rows of token `uniq[u]` are `order[offsets[u]..offsets[u+1]]`.
pub fn group_rows(tokens: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut order: Vec<u32> = (0..tokens.len() as u32).collect();
    // stable: rows of one token stay in ascending order
    order.sort_by_key(|&i| tokens[i as usize]);
    let mut uniq = Vec::new();
    let mut offsets = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let t = tokens[i as usize];
        if uniq.last() != Some(&t) {
            uniq.push(t);
            offsets.push(k as u32);
        }
    }
    offsets.push(order.len() as u32);
    (uniq, offsets, order)
}

/// Checks of the forward (ids already checked `< v` on the host).
pub fn check_fwd(out: DPtr<Bf16>, tokens: DPtr<u32>, table: DPtr<Bf16>, n: usize, v: usize, c: usize) -> Result<LaunchDims> {
    if c == 0 || !c.is_multiple_of(8) {
        return arg_err(FWD, format!("c = {c} must be a positive multiple of 8 (16-byte rows of bf16)"));
    }
    check_ptr(FWD, "out", out, n * c)?;
    check_ptr(FWD, "tokens", tokens, n)?;
    check_ptr(FWD, "table", table, v * c)?;
    check_align(FWD, "out", out, 16)?;
    check_align(FWD, "table", table, 16)?;
    Ok(LaunchDims { grid: (to_u32(FWD, "grid", n.max(1))?, 1, 1), block: THREADS, smem: 0 })
}

/// `out (n, c) = table (v, c)[tokens (n)]`; every token `< v` (host-checked).
#[allow(clippy::too_many_arguments)]
pub fn embedding_fwd_bf16(tg: Target<'_>, out: DPtr<Bf16>, tokens: DPtr<u32>, table: DPtr<Bf16>, n: usize, v: usize, c: usize) -> Result<()> {
    let dims = check_fwd(out, tokens, table, n, v, c)?;
    if n == 0 {
        return Ok(());
    }
    let (o, t, tb) = (out.addr, tokens.addr, table.addr);
    let (n, c) = (to_i32(FWD, "n", n)?, to_i32(FWD, "c", c)?);
    // SAFETY: check_fwd: out covers n rows, table v rows of c (aligned, c % 8
    // == 0), token ids < v were checked on the host before the upload.
    unsafe { launch!(tg, Family::Embedding, FWD, dims, [o, t, tb, n, c]) }
}

/// Checks of the backward: the CSR of [`group_rows`] on the device.
#[allow(clippy::too_many_arguments)]
pub fn check_bwd(
    dtable: DPtr<f32>,
    dout: DPtr<Bf16>,
    uniq: DPtr<u32>,
    offsets: DPtr<u32>,
    order: DPtr<u32>,
    n_uniq: usize,
    n: usize,
    v: usize,
    c: usize,
) -> Result<LaunchDims> {
    check_ptr(BWD, "dtable", dtable, v * c)?;
    check_ptr(BWD, "dout", dout, n * c)?;
    check_ptr(BWD, "uniq", uniq, n_uniq)?;
    check_ptr(BWD, "offsets", offsets, n_uniq + 1)?;
    check_ptr(BWD, "order", order, n)?;
    if n_uniq > n {
        return arg_err(BWD, format!("{n_uniq} distinct tokens among {n} rows"));
    }
    let gy = to_u32(BWD, "grid.y", c.div_ceil(THREADS as usize).max(1))?;
    if gy > 65535 {
        return arg_err(BWD, format!("c = {c} too wide for the grid"));
    }
    Ok(LaunchDims { grid: (to_u32(BWD, "grid.x", n_uniq.max(1))?, gy, 1), block: THREADS, smem: 0 })
}

/// `dtable (v, c)[uniq[u]] += Σ dout[order[offsets[u]..offsets[u+1]]]`.
#[allow(clippy::too_many_arguments)]
pub fn embedding_bwd_f32(
    tg: Target<'_>,
    dtable: DPtr<f32>,
    dout: DPtr<Bf16>,
    uniq: DPtr<u32>,
    offsets: DPtr<u32>,
    order: DPtr<u32>,
    n_uniq: usize,
    n: usize,
    v: usize,
    c: usize,
) -> Result<()> {
    let dims = check_bwd(dtable, dout, uniq, offsets, order, n_uniq, n, v, c)?;
    if n_uniq == 0 || c == 0 {
        return Ok(());
    }
    let (dt, d, u, o, r) = (dtable.addr, dout.addr, uniq.addr, offsets.addr, order.addr);
    let (nu, c) = (to_i32(BWD, "n_uniq", n_uniq)?, to_i32(BWD, "c", c)?);
    // SAFETY: check_bwd: the CSR (built by group_rows from host-checked ids
    // < v) indexes rows < n of dout and rows < v of dtable.
    unsafe { launch!(tg, Family::Embedding, BWD, dims, [dt, d, u, o, r, nu, c]) }
}

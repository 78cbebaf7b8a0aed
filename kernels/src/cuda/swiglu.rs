//! Launchers of `cu/swiglu.cu`. CPU counterparts: `crate::swiglu`
//! (`swiglu_fwd_cpu`, `swiglu_bwd_cpu`). Any window (16-byte accesses
//! only when aligned).
//!
//! The fused gate/up projection's split ([`swiglu_split_fwd_bf16`]) and its
//! backward's pack ([`swiglu_bwd_pack_bf16`]) are checked against the
//! unfused composition (two products, then `swiglu_fwd_cpu`;
//! `swiglu_bwd_cpu`, then two products each for dx and dW).

use super::{check_ptr, elementwise::map_dims, launch, to_i32, to_i64, Bf16, DPtr, Family, LaunchDims, Target};
use crate::Result;

pub const FWD: &str = "swiglu_fwd_bf16";
pub const BWD: &str = "swiglu_bwd_bf16";
pub const SPLIT_FWD: &str = "swiglu_split_fwd_bf16";
pub const BWD_PACK: &str = "swiglu_bwd_pack_bf16";

/// `out (n) = silu(gate) ⊙ up`
pub fn swiglu_fwd_bf16(tg: Target<'_>, out: DPtr<Bf16>, gate: DPtr<Bf16>, up: DPtr<Bf16>, n: usize) -> Result<()> {
    for (name, p) in [("out", out), ("gate", gate), ("up", up)] {
        check_ptr(FWD, name, p, n)?;
    }
    let dims = map_dims(FWD, n)?;
    let (o, g, u, n) = (out.addr, gate.addr, up.addr, to_i64(FWD, "n", n)?);
    // SAFETY: all three hold >= n elements; grid-stride kernel.
    unsafe { launch!(tg, Family::Swiglu, FWD, dims, [o, g, u, n]) }
}

/// `dgate, dup (n)` overwritten from `dout, gate, up (n)`.
#[allow(clippy::too_many_arguments)]
pub fn swiglu_bwd_bf16(tg: Target<'_>, dgate: DPtr<Bf16>, dup: DPtr<Bf16>, dout: DPtr<Bf16>, gate: DPtr<Bf16>, up: DPtr<Bf16>, n: usize) -> Result<()> {
    for (name, p) in [("dgate", dgate), ("dup", dup), ("dout", dout), ("gate", gate), ("up", up)] {
        check_ptr(BWD, name, p, n)?;
    }
    let dims = map_dims(BWD, n)?;
    let (dg, du, d, g, u, n) = (dgate.addr, dup.addr, dout.addr, gate.addr, up.addr, to_i64(BWD, "n", n)?);
    // SAFETY: all five hold >= n elements; grid-stride kernel.
    unsafe { launch!(tg, Family::Swiglu, BWD, dims, [dg, du, d, g, u, n]) }
}

/// Checks of the split and the pack: `packed (n, 2i)` and the three `(n, i)`
/// buffers; returns the launch dimensions (element-wise grid over n·i).
pub fn check_split(op: &'static str, packed: DPtr<Bf16>, parts: [(&'static str, DPtr<Bf16>); 3], n: usize, i: usize) -> Result<LaunchDims> {
    check_ptr(op, "packed", packed, 2 * n * i)?;
    for (name, p) in parts {
        check_ptr(op, name, p, n * i)?;
    }
    to_i32(op, "n", n)?;
    to_i32(op, "2i", 2 * i)?;
    map_dims(op, n * i)
}

/// The fused gate/up projection's epilogue: from `gu (n, 2i)`, rows
/// `[gate | up]` (the product against the stacked `[Wgate; Wup]`), writes
/// `gate`, `up (n, i)` (copies) and `h (n, i) = silu(gate) ⊙ up` (all `=`).
pub fn swiglu_split_fwd_bf16(tg: Target<'_>, gate: DPtr<Bf16>, up: DPtr<Bf16>, h: DPtr<Bf16>, gu: DPtr<Bf16>, n: usize, i: usize) -> Result<()> {
    let dims = check_split(SPLIT_FWD, gu, [("gate", gate), ("up", up), ("h", h)], n, i)?;
    let (g, u, hp, p) = (gate.addr, up.addr, h.addr, gu.addr);
    let (n, i) = (to_i32(SPLIT_FWD, "n", n)?, to_i32(SPLIT_FWD, "i", i)?);
    // SAFETY: check_split: gu holds n rows of 2i, gate, up and h n rows of i;
    // grid-stride kernel.
    unsafe { launch!(tg, Family::Swiglu, SPLIT_FWD, dims, [g, u, hp, p, n, i]) }
}

/// The fused backward's prologue: `dgu (n, 2i)` rows `[dgate | dup]` from
/// `dh, gate, up (n, i)` (`=`).
pub fn swiglu_bwd_pack_bf16(tg: Target<'_>, dgu: DPtr<Bf16>, dh: DPtr<Bf16>, gate: DPtr<Bf16>, up: DPtr<Bf16>, n: usize, i: usize) -> Result<()> {
    let dims = check_split(BWD_PACK, dgu, [("dh", dh), ("gate", gate), ("up", up)], n, i)?;
    let (d, dp, g, u) = (dgu.addr, dh.addr, gate.addr, up.addr);
    let (n, i) = (to_i32(BWD_PACK, "n", n)?, to_i32(BWD_PACK, "i", i)?);
    // SAFETY: check_split: dgu holds n rows of 2i, dh, gate and up n rows of
    // i; grid-stride kernel.
    unsafe { launch!(tg, Family::Swiglu, BWD_PACK, dims, [d, dp, g, u, n, i]) }
}

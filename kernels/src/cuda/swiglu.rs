//! Launchers of `cu/swiglu.cu`. CPU counterparts: `crate::swiglu`
//! (`swiglu_fwd_cpu`, `swiglu_bwd_cpu`). Any window (16-byte accesses
//! only when aligned).

use super::{check_ptr, elementwise::map_dims, launch, to_i64, Bf16, DPtr, Family, Target};
use crate::Result;

pub const FWD: &str = "swiglu_fwd_bf16";
pub const BWD: &str = "swiglu_bwd_bf16";

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

//! Elementary functions the CPU kernels call in their inner loops, written
//! so the compiler vectorises the loops that call them (libm's `expf` is an
//! opaque scalar call: one element at a time, ~20 cycles each).
//!
//! [`exp`]: Cody-Waite range reduction `x = n·ln2 + r`, |r| <= ln2/2, then
//! the degree-7 minimax polynomial of Cephes' `expf` for `e^r`, then the
//! exponent `n` put into the float's bits. Relative error below 2.5e-7
//! (about 2 ulp) on [-87.3, 88.7]; inputs are clamped to that range, so
//! `exp(-inf)` and anything below -87.3 give at most 1.2e-38 (callers that
//! need an exact 0 for masked entries write it themselves), and anything
//! above 88.7 gives 3.4e38 instead of infinity.
//!
//! Public items: [`exp`], [`sigmoid`].

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so `n·LN2_HI` is exact for |n| < 2^8 (Cody-Waite)
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_LO: f32 = -87.336_54;
const EXP_HI: f32 = 88.722_83;
const ROUND_MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23

/// `e^x` (see the module header for its accuracy and range).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    // round to nearest by adding and removing 1.5·2^23 (no floor call: on
    // targets without SSE4.1 `floor` is a libm call, which stops the loop
    // from being vectorised); exact for |x·log2 e| < 2^22
    let n = (x * LOG2E + ROUND_MAGIC) - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5e-1;
    let e = p * r * r + r + 1.0;
    // 2^n: n is in [-126, 128] after the clamp; 128 only at the very top,
    // where e < 1 keeps the product finite, so split 2^n = 2^(n/2)·2^(n-n/2)
    let ni = n as i32;
    let h = ni >> 1;
    let s1 = f32::from_bits(((h + 127) as u32) << 23);
    let s2 = f32::from_bits(((ni - h + 127) as u32) << 23);
    e * s1 * s2
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2.5e-7 relative, about 2 ulp of f32: what the reduction plus a
    /// degree-7 polynomial evaluated in f32 achieves (libm's expf is < 1 ulp).
    const EXP_RTOL: f64 = 2.5e-7;

    #[test]
    fn exp_is_within_two_ulp_over_its_range() {
        let mut worst = 0f64;
        let n = 2_000_000;
        for i in 0..=n {
            let x = EXP_LO + (EXP_HI - EXP_LO) * (i as f32 / n as f32);
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            let e = (got - want).abs() / want;
            worst = worst.max(e);
            assert!(e <= EXP_RTOL, "exp({x}) = {got}, want {want} (rel {e:.2e})");
        }
        assert!(worst > 1e-9, "the comparison compared something");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(f32::NEG_INFINITY) < 1.2e-38 && exp(f32::NEG_INFINITY) >= 0.0);
        assert!(exp(1000.0).is_finite());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7 && sigmoid(-200.0) < 1e-37 && (sigmoid(200.0) - 1.0).abs() < 1e-7);
    }
}

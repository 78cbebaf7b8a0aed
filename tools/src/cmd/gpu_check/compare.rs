//! How gpu-check compares a GPU output with its reference: the rules, the
//! row each comparison produces, and the comparison itself (pure host code,
//! tested here without a GPU).
//!
//! Public items: [`Rule`], [`Row`], [`compare`], [`F32_FLOOR`].

use super::reference::bfr;

/// f32 noise allowed on top of the flash-attn bound, relative to max|ref|.
pub const F32_FLOOR: f64 = 1e-6;

/// How an output is compared.
#[derive(Clone, Copy, Debug)]
pub enum Rule {
    /// per element: |g − r| <= atol + rtol·|r| (`rtol = atol = 0`: bit-exact)
    Elem { rtol: f64, atol: f64 },
    /// max|g − r| <= factor·max|bf16(r) − r| + F32_FLOOR·max|r|
    FlashAttn { factor: f64 },
    /// max|g − r| <= tol·max|r|
    MaxRel { tol: f64 },
    /// max|g − r| <= limit (a limit computed by the caller; valid when the
    /// reference is all zeros, where MaxRel would allow nothing)
    MaxAbs { limit: f64 },
}

/// One compared output.
pub struct Row {
    pub name: String,
    pub max_abs: f64,
    /// fraction of the tolerance used (<= 1 passes)
    pub used: f64,
    pub ok: bool,
    pub first_bad: String,
}

/// Compares `g` with `r` under `rule`. An element equal to its reference
/// uses none of the tolerance, also under a zero tolerance (bit-exact
/// rules); NaN anywhere fails. The negated comparisons are deliberate: a
/// NaN must count as out of tolerance.
#[allow(clippy::neg_cmp_op_on_partial_ord)]
pub fn compare(name: String, g: &[f32], r: &[f32], rule: Rule) -> Row {
    let n = g.len().min(r.len());
    let mut max_abs = 0f64;
    let mut used = 0f64;
    let mut first_bad = String::new();
    let len_ok = g.len() == r.len();
    let max_ref = r.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let limit = match rule {
        Rule::FlashAttn { factor } => {
            let naive = r.iter().fold(0f64, |m, &x| m.max((bfr(x) as f64 - x as f64).abs()));
            factor * naive + F32_FLOOR * max_ref
        }
        Rule::MaxRel { tol } => tol * max_ref,
        Rule::MaxAbs { limit } => limit,
        Rule::Elem { .. } => 1.0,
    };
    let mut bad = 0usize;
    for i in 0..n {
        let (gi, ri) = (g[i] as f64, r[i] as f64);
        let d = (gi - ri).abs();
        let tol = match rule {
            Rule::Elem { rtol, atol } => atol + rtol * ri.abs(),
            _ => limit,
        };
        // d == 0 passes even where tol == 0 (0/0 would be NaN, a failure)
        let u = if d == 0.0 { 0.0 } else { d / tol };
        if !(d <= max_abs) {
            max_abs = if d.is_nan() { f64::NAN } else { d };
        }
        if !(u <= used) {
            used = if u.is_nan() { f64::INFINITY } else { u };
        }
        if !(u <= 1.0) {
            if bad < 3 {
                first_bad.push_str(&format!(" [{i}] gpu {gi:.6e} ref {ri:.6e};"));
            }
            bad += 1;
        }
    }
    if bad > 0 {
        first_bad.push_str(&format!(" {bad} of {n} out of tolerance"));
    }
    if !len_ok {
        first_bad.push_str(&format!(" length {} vs {}", g.len(), r.len()));
    }
    let ok = len_ok && bad == 0 && used <= 1.0;
    Row { name, max_abs, used, ok, first_bad }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXACT: Rule = Rule::Elem { rtol: 0.0, atol: 0.0 };

    #[test]
    fn a_bit_exact_rule_passes_equal_outputs_and_fails_any_difference() {
        let r = [0.0f32, 1.5, -2.25, 3.0e-20];
        let row = compare("exact".into(), &r, &r, EXACT);
        assert!(row.ok && row.used == 0.0 && row.max_abs == 0.0, "{} {}", row.used, row.first_bad);
        assert_eq!(row.name, "exact");
        let mut g = r;
        g[2] = f32::from_bits(g[2].to_bits() + 1); // one ulp
        let row = compare("exact".into(), &g, &r, EXACT);
        assert!(!row.ok && row.used.is_infinite(), "{}", row.first_bad);
    }

    #[test]
    fn nan_and_length_mismatch_fail_under_every_rule() {
        let r = [1.0f32, 2.0, 3.0];
        let g = [1.0f32, f32::NAN, 3.0];
        for rule in [EXACT, Rule::Elem { rtol: 1.0, atol: 1.0 }, Rule::FlashAttn { factor: 100.0 }, Rule::MaxRel { tol: 10.0 }, Rule::MaxAbs { limit: 10.0 }] {
            assert!(!compare("nan".into(), &g, &r, rule).ok, "{rule:?}");
            assert!(!compare("len".into(), &r[..2], &r, rule).ok, "{rule:?}");
            assert!(compare("same".into(), &r, &r, rule).ok, "{rule:?}");
        }
    }

    #[test]
    fn the_element_rule_is_relative_with_an_absolute_floor() {
        let rule = Rule::Elem { rtol: 0.01, atol: 1e-3 };
        assert!(compare("in".into(), &[100.9, 0.0009], &[100.0, 0.0], rule).ok);
        assert!(!compare("rel".into(), &[101.2], &[100.0], rule).ok);
        assert!(!compare("abs".into(), &[0.0011], &[0.0], rule).ok);
    }

    #[test]
    fn the_absolute_rule_holds_at_an_all_zero_reference() {
        let r = [0.0f32; 4];
        assert!(compare("noise".into(), &[1e-7, -2e-7, 0.0, 0.0], &r, Rule::MaxAbs { limit: 3e-7 }).ok);
        assert!(!compare("too big".into(), &[1e-7, -4e-7, 0.0, 0.0], &r, Rule::MaxAbs { limit: 3e-7 }).ok);
        // the relative rules leave nothing at a zero reference
        assert!(!compare("rel".into(), &[1e-7, 0.0, 0.0, 0.0], &r, Rule::MaxRel { tol: 1e6 }).ok);
    }

    #[test]
    fn the_flash_attn_rule_accepts_one_bf16_rounding_and_rejects_a_worse_error() {
        // references that are not bf16-exact, and their bf16 roundings
        let r: Vec<f32> = (0..1000).map(|i| 0.001 + (i as f32 * 0.7311).sin() * 3.0).collect();
        let g: Vec<f32> = r.iter().map(|&x| bfr(x)).collect();
        assert!(compare("bf16".into(), &g, &r, Rule::FlashAttn { factor: 1.0 }).ok);
        let naive = r.iter().fold(0f64, |m, &x| m.max((bfr(x) as f64 - x as f64).abs()));
        let mut worse = g.clone();
        worse[17] = (r[17] as f64 + 2.5 * naive) as f32;
        assert!(!compare("bf16".into(), &worse, &r, Rule::FlashAttn { factor: 2.0 }).ok);
    }
}

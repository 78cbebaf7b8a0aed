//! Every CPU kernel's backward against central finite differences computed
//! in f64 on a naive f64 forward (the specification of the op), and every
//! forward against that naive forward.
//!
//! Each check uses a scalar probe `L = Σ w_i · out_i` with random `w`, so the
//! kernel's backward, fed `dout = w`, must return `dL/dx`.

use llama2_kernels::attention::{attention_bwd_cpu, attention_fwd_cpu, attention_naive_f64, AttnShape};
use llama2_kernels::cross_entropy::{cross_entropy_cpu, CeGrad};
use llama2_kernels::embedding::{embedding_bwd_cpu, embedding_fwd_cpu};
use llama2_kernels::matmul::{matmul_cpu, matmul_naive_f64, Gemm};
use llama2_kernels::rmsnorm::{rmsnorm_bwd_cpu, rmsnorm_fwd_cpu};
use llama2_kernels::rope::{rope_bwd_cpu, rope_fwd_cpu, rope_table, RopeShape};
use llama2_kernels::swiglu::{swiglu_bwd_cpu, swiglu_fwd_cpu};
use llama2_kernels::{GradWrite, Trans};

/// Finite-difference step in f64: the truncation error is O(h²) ≈ 1e-12 and
/// the rounding error O(ε₆₄/h) ≈ 1e-10, both far below f32 resolution.
const FD_STEP: f64 = 1e-6;
/// The kernels compute in f32 (ε = 2^-24 ≈ 6e-8) over sums of tens to
/// hundreds of terms; 1e-4 relative to the largest gradient leaves a margin
/// of ~100x over the expected f32 rounding, and is 1000x smaller than the
/// error any wrong term in a formula produces on these random inputs.
const GRAD_RTOL: f64 = 1e-4;
/// Forward outputs vs the naive f64 forward, same reasoning.
const FWD_RTOL: f64 = 1e-5;

struct Lcg(u64);
impl Lcg {
    fn f(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

fn to64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Central differences of `f` at `x`.
fn fd(f: &dyn Fn(&[f64]) -> f64, x: &[f64]) -> Vec<f64> {
    let mut x = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = x[i];
            x[i] = x0 + FD_STEP;
            let a = f(&x);
            x[i] = x0 - FD_STEP;
            let b = f(&x);
            x[i] = x0;
            (a - b) / (2.0 * FD_STEP)
        })
        .collect()
}

fn probe(w: &[f32], out: &[f64]) -> f64 {
    w.iter().zip(out).map(|(&a, &b)| a as f64 * b).sum()
}

/// `max |got - want| <= rtol * max |want|`, with a report of the worst.
fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f64, |m, &x| m.max(x.abs())).max(1e-30);
    let (mut worst, mut at) = (0f64, 0);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let e = (g as f64 - w).abs();
        assert!(e.is_finite(), "{what}[{i}]: {g} vs {w}");
        if e > worst {
            worst = e;
            at = i;
        }
    }
    assert!(
        worst <= rtol * scale,
        "{what}: max error {worst:.3e} at {at} ({} vs {}), {:.1}% of tolerance {:.1e} x {scale:.3e}",
        got[at],
        want[at],
        100.0 * worst / (rtol * scale),
        rtol
    );
}

// ---------------------------------------------------------------- rmsnorm
fn rmsnorm_naive(x: &[f64], w: &[f64], n: usize, c: usize, eps: f64) -> Vec<f64> {
    let mut out = vec![0.0; n * c];
    for r in 0..n {
        let row = &x[r * c..(r + 1) * c];
        let ms = row.iter().map(|v| v * v).sum::<f64>() / c as f64;
        let rs = 1.0 / (ms + eps).sqrt();
        for j in 0..c {
            out[r * c + j] = w[j] * row[j] * rs;
        }
    }
    out
}

#[test]
fn rmsnorm_matches_naive_and_finite_differences() {
    let (n, c, eps) = (7, 33, 1e-5);
    let mut r = Lcg(1);
    let x = r.vec(n * c);
    let wgt: Vec<f32> = r.vec(c).iter().map(|v| 1.0 + 0.3 * v).collect();
    let probe_w = r.vec(n * c);
    let mut out = vec![0f32; n * c];
    let mut rstd = vec![0f32; n];
    rmsnorm_fwd_cpu(&mut out, &mut rstd, &x, &wgt, n, c, eps as f32).unwrap();
    assert_close("rmsnorm fwd", &out, &rmsnorm_naive(&to64(&x), &to64(&wgt), n, c, eps), FWD_RTOL);

    for write in [GradWrite::Overwrite, GradWrite::Accumulate] {
        let base = r.vec(n * c);
        let mut dx = base.clone();
        let dw0 = r.vec(c);
        let mut dw = dw0.clone();
        rmsnorm_bwd_cpu(&mut dx, &mut dw, &probe_w, &x, &wgt, &rstd, n, c, write).unwrap();
        let w64 = to64(&wgt);
        let want_dx = fd(&|xx| probe(&probe_w, &rmsnorm_naive(xx, &w64, n, c, eps)), &to64(&x));
        let x64 = to64(&x);
        let want_dw = fd(&|ww| probe(&probe_w, &rmsnorm_naive(&x64, ww, n, c, eps)), &w64);
        let got_dx: Vec<f32> = match write {
            GradWrite::Overwrite => dx,
            GradWrite::Accumulate => dx.iter().zip(&base).map(|(a, b)| a - b).collect(),
        };
        let got_dw: Vec<f32> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        assert_close("rmsnorm dx", &got_dx, &want_dx, GRAD_RTOL);
        assert_close("rmsnorm dw", &got_dw, &want_dw, GRAD_RTOL);
    }
}

// ---------------------------------------------------------------- rope
fn rope_naive(x: &[f64], s: RopeShape, theta: f64) -> Vec<f64> {
    let half = s.hd / 2;
    let mut out = x.to_vec();
    for bt in 0..s.b * s.t {
        let p = (s.pos0 + bt % s.t) as f64;
        for h in 0..s.heads {
            let o = (bt * s.heads + h) * s.hd;
            for i in 0..half {
                let ang = p / theta.powf(2.0 * i as f64 / s.hd as f64);
                let (a, b) = (x[o + i], x[o + i + half]);
                out[o + i] = a * ang.cos() - b * ang.sin();
                out[o + i + half] = b * ang.cos() + a * ang.sin();
            }
        }
    }
    out
}

#[test]
fn rope_matches_naive_and_finite_differences() {
    let s = RopeShape { b: 2, t: 5, heads: 3, hd: 8, pos0: 3 };
    let theta = 10000.0;
    let table = rope_table(16, s.hd, theta as f32);
    let mut r = Lcg(2);
    let x = r.vec(s.b * s.t * s.heads * s.hd);
    let mut y = x.clone();
    rope_fwd_cpu(&mut y, &table, s).unwrap();
    // the table is f32 like transformers'; angles up to 8 rad carry ~1e-6
    // relative error from the f32 product, hence 1e-5 here
    assert_close("rope fwd", &y, &rope_naive(&to64(&x), s, theta), 1e-5);
    let w = r.vec(x.len());
    let mut dx = w.clone();
    rope_bwd_cpu(&mut dx, &table, s).unwrap();
    let want = fd(&|xx| probe(&w, &rope_naive(xx, s, theta)), &to64(&x));
    assert_close("rope dx", &dx, &want, 1e-5);
}

// ---------------------------------------------------------------- attention
fn check_attention(s: AttnShape, seed: u64) {
    let mut r = Lcg(seed);
    let qn = s.b * s.tq * s.n_head * s.hd;
    let kn = s.b * s.cap * s.n_kv_head * s.hd;
    let q = r.vec(qn);
    let k = r.vec(kn);
    let v = r.vec(kn);
    let mut out = vec![0f32; qn];
    let mut lse = vec![0f32; s.b * s.n_head * s.tq];
    attention_fwd_cpu(&mut out, &mut lse, &q, &k, &v, s).unwrap();
    let (want_out, want_lse) = attention_naive_f64(&q, &k, &v, s);
    assert_close("attention out", &out, &want_out, FWD_RTOL);
    assert_close("attention lse", &lse, &want_lse, FWD_RTOL);
    if s.tq != s.tkv || s.cap != s.tkv {
        return;
    }
    let w = r.vec(qn);
    let (mut dq, mut dk, mut dv) = (vec![0f32; qn], vec![0f32; kn], vec![0f32; kn]);
    attention_bwd_cpu(&mut dq, &mut dk, &mut dv, &w, &q, &k, &v, &out, &lse, s).unwrap();
    let (q64, k64, v64) = (to64(&q), to64(&k), to64(&v));
    // the naive forward in f64 takes f32 inputs; FD perturbations of 1e-6
    // would be lost in f32, so run the naive math on f64 inputs directly
    let naive = |qq: &[f64], kk: &[f64], vv: &[f64]| -> Vec<f64> {
        let AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd } = s;
        let group = nh / nkv;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut o = vec![0f64; qn];
        for bi in 0..b {
            for h in 0..nh {
                let g = h / group;
                for i in 0..tq {
                    let vis = tkv - tq + i + 1;
                    let qo = ((bi * tq + i) * nh + h) * hd;
                    let sc: Vec<f64> = (0..vis)
                        .map(|j| {
                            let ko = ((bi * cap + j) * nkv + g) * hd;
                            (0..hd).map(|d| qq[qo + d] * kk[ko + d]).sum::<f64>() * scale
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for (j, x) in sc.iter().enumerate() {
                        let p = (x - m).exp() / z;
                        let vo = ((bi * cap + j) * nkv + g) * hd;
                        for d in 0..hd {
                            o[qo + d] += p * vv[vo + d];
                        }
                    }
                }
            }
        }
        o
    };
    assert_close("attention dq", &dq, &fd(&|x| probe(&w, &naive(x, &k64, &v64)), &q64), GRAD_RTOL);
    assert_close("attention dk", &dk, &fd(&|x| probe(&w, &naive(&q64, x, &v64)), &k64), GRAD_RTOL);
    assert_close("attention dv", &dv, &fd(&|x| probe(&w, &naive(&q64, &k64, x)), &v64), GRAD_RTOL);
}

#[test]
fn attention_mha_matches_naive_and_finite_differences() {
    check_attention(AttnShape::causal(2, 9, 2, 2, 8), 3);
}

#[test]
fn attention_gqa_multi_block_matches_naive_and_finite_differences() {
    // t = 70 spans two query blocks of 64; 4 query heads share 2 KV heads
    check_attention(AttnShape::causal(1, 70, 4, 2, 4), 4);
}

#[test]
fn attention_mqa_matches_naive_and_finite_differences() {
    check_attention(AttnShape::causal(1, 13, 3, 1, 6), 5);
}

#[test]
fn attention_decode_shapes_match_naive() {
    // 3 new queries after 10 cached positions, cache of 16
    check_attention(AttnShape { b: 2, tq: 3, tkv: 13, cap: 16, n_head: 4, n_kv_head: 2, hd: 8 }, 6);
    // one query (decoding)
    check_attention(AttnShape { b: 1, tq: 1, tkv: 100, cap: 128, n_head: 2, n_kv_head: 1, hd: 16 }, 7);
    // one query, head width 64 (the AVX-512 decode path where the CPU has it),
    // keys not a multiple of 4 or 8 (its tails)
    check_attention(AttnShape { b: 3, tq: 1, tkv: 37, cap: 40, n_head: 4, n_kv_head: 2, hd: 64 }, 8);
}

// ---------------------------------------------------------------- swiglu
#[test]
fn swiglu_matches_naive_and_finite_differences() {
    let n = 50;
    let mut r = Lcg(8);
    let g: Vec<f32> = r.vec(n).iter().map(|x| 4.0 * x).collect();
    let u = r.vec(n);
    let naive = |g: &[f64], u: &[f64]| -> Vec<f64> { g.iter().zip(u).map(|(&g, &u)| g / (1.0 + (-g).exp()) * u).collect() };
    let mut h = vec![0f32; n];
    swiglu_fwd_cpu(&mut h, &g, &u).unwrap();
    assert_close("swiglu fwd", &h, &naive(&to64(&g), &to64(&u)), FWD_RTOL);
    let w = r.vec(n);
    let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
    swiglu_bwd_cpu(&mut dg, &mut du, &w, &g, &u).unwrap();
    let (g64, u64_) = (to64(&g), to64(&u));
    assert_close("swiglu dgate", &dg, &fd(&|x| probe(&w, &naive(x, &u64_)), &g64), GRAD_RTOL);
    assert_close("swiglu dup", &du, &fd(&|x| probe(&w, &naive(&g64, x)), &u64_), GRAD_RTOL);
}

// ---------------------------------------------------------------- cross-entropy
#[test]
fn cross_entropy_matches_naive_and_finite_differences() {
    let (n, v) = (6, 11);
    let mut r = Lcg(9);
    let logits: Vec<f32> = r.vec(n * v).iter().map(|x| 3.0 * x).collect();
    let targets = [3, -100, 0, 10, 5, -1];
    let naive = |x: &[f64]| -> Vec<f64> {
        (0..n)
            .map(|i| {
                if targets[i] < 0 {
                    return 0.0;
                }
                let row = &x[i * v..(i + 1) * v];
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + row.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
                lse - row[targets[i] as usize]
            })
            .collect()
    };
    let mut losses = vec![0f32; n];
    let mut x = logits.clone();
    cross_entropy_cpu(&mut x, &mut losses, &targets, v, CeGrad::None).unwrap();
    assert_eq!(x, logits, "CeGrad::None must leave the logits untouched");
    assert_close("ce loss", &losses, &naive(&to64(&logits)), FWD_RTOL);
    // per-row coefficients: d(Σ coef_i loss_i)/dx
    let coef = r.vec(n);
    let mut dx = logits.clone();
    cross_entropy_cpu(&mut dx, &mut losses, &targets, v, CeGrad::PerRow(&coef)).unwrap();
    let want = fd(&|xx| probe(&coef, &naive(xx)), &to64(&logits));
    assert_close("ce dlogits (per row)", &dx, &want, GRAD_RTOL);
    // uniform scale = mean over the 4 counted targets
    let mut dx = logits.clone();
    cross_entropy_cpu(&mut dx, &mut losses, &targets, v, CeGrad::Uniform(0.25)).unwrap();
    let want = fd(&|xx| naive(xx).iter().sum::<f64>() * 0.25, &to64(&logits));
    assert_close("ce dlogits (mean)", &dx, &want, GRAD_RTOL);
    assert!(cross_entropy_cpu(&mut logits.clone(), &mut losses, &[0, 0, 0, 11, 0, 0], v, CeGrad::None).is_err(), "target == vocab must be rejected");
}

// ---------------------------------------------------------------- embedding
#[test]
fn embedding_backward_is_the_scatter_add_of_finite_differences() {
    let (v, c) = (9, 70); // c spans two column tasks
    let tokens = [3u32, 1, 3, 8, 0, 3];
    let mut r = Lcg(10);
    let table = r.vec(v * c);
    let mut out = vec![0f32; tokens.len() * c];
    embedding_fwd_cpu(&mut out, &tokens, &table, v, c).unwrap();
    let naive = |tb: &[f64]| -> Vec<f64> { tokens.iter().flat_map(|&t| tb[t as usize * c..(t as usize + 1) * c].to_vec()).collect() };
    assert_close("embedding fwd", &out, &naive(&to64(&table)), 0.0);
    let w = r.vec(out.len());
    let d0 = r.vec(v * c);
    let mut dt = d0.clone();
    embedding_bwd_cpu(&mut dt, &w, &tokens, v, c).unwrap();
    let got: Vec<f32> = dt.iter().zip(&d0).map(|(a, b)| a - b).collect();
    assert_close("embedding dtable", &got, &fd(&|tb| probe(&w, &naive(tb)), &to64(&table)), GRAD_RTOL);
    assert!(embedding_fwd_cpu(&mut out, &[9], &table, v, c).is_err(), "token == vocab must be rejected");
}

// ---------------------------------------------------------------- matmul
#[test]
fn matmul_backward_formulas_match_finite_differences() {
    // y = x W^T (forward of a Linear); dx = dy W; dW = dy^T x
    let (n, i, o) = (5, 7, 6);
    let mut r = Lcg(11);
    let x = r.vec(n * i);
    let w = r.vec(o * i);
    let probe_w = r.vec(n * o);
    let fwd = |x: &[f64], w: &[f64]| -> Vec<f64> {
        let mut y = vec![0f64; n * o];
        for a in 0..n {
            for b in 0..o {
                y[a * o + b] = (0..i).map(|k| x[a * i + k] * w[b * i + k]).sum();
            }
        }
        y
    };
    let g = Gemm { m: n, n: o, k: i, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite };
    let mut y = vec![0f32; n * o];
    matmul_cpu(&mut y, &x, &w, g, 1).unwrap();
    assert_close("linear fwd", &y, &matmul_naive_f64(&x, &w, g), FWD_RTOL);
    let mut dx = vec![0f32; n * i];
    matmul_cpu(&mut dx, &probe_w, &w, Gemm { m: n, n: i, k: o, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite }, 1).unwrap();
    let mut dw = vec![0f32; o * i];
    matmul_cpu(&mut dw, &probe_w, &x, Gemm { m: o, n: i, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate }, 1).unwrap();
    let (x64, w64) = (to64(&x), to64(&w));
    assert_close("linear dx", &dx, &fd(&|xx| probe(&probe_w, &fwd(xx, &w64)), &x64), GRAD_RTOL);
    assert_close("linear dw", &dw, &fd(&|ww| probe(&probe_w, &fwd(&x64, ww)), &w64), GRAD_RTOL);
}

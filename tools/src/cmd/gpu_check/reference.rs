//! Naive references with the rounding points of the tensor-core attention
//! kernels (gpu-check compares those kernels against flash-attn's rule with
//! these as the "naive bf16 reference"), and their CPU tests.
//!
//! Public items: [`bfr`], [`dot8`], [`normals`], [`attention_naive_bf16p`],
//! [`attention_naive_bf16p_ragged`], [`attention_bwd_naive_bf16_ragged`],
//! [`attention_bwd_naive_bf16`], [`AttnBwdNaive`], [`F32_UNIT`].

use half::bf16;
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::rng::Rng;

/// Rounds to the nearest bf16 (ties to even), as the GPU stores it.
pub fn bfr(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The f32 dot product of two rows with 8 independent accumulators (the
/// compiler keeps them in one vector register, so the T = 4096 references
/// run at the CPU's vector rate instead of one dependent add a cycle),
/// summed pairwise at the end.
pub fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// Σ|a_i·b_i| in f64, with 4 independent accumulators (as [`dot8`]).
fn abs_dot4(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            acc[i] += (x[i] as f64 * y[i] as f64).abs();
        }
    }
    (acc[0] + acc[2]) + (acc[1] + acc[3]) + tail
}

/// Elements per independent random stream of [`normals`].
const NORMALS_CHUNK: usize = 1 << 16;

/// `n` standard normal draws times `scale`, from `seed`, generated in
/// parallel: chunk `i` of NORMALS_CHUNK draws comes from its own stream
/// (`Rng::new` of `seed` and `i`), so the values depend on the seed only,
/// never on the thread count. gpu-check draws hundreds of millions of
/// inputs; one sequential Box-Muller stream takes 30-70 ns a draw.
pub fn normals(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    use rayon::prelude::*;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(NORMALS_CHUNK).enumerate().for_each(|(i, ch)| {
        let mut r = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        for x in ch {
            *x = r.normal() * scale;
        }
    });
    out
}

/// Naive attention forward with the rounding points of the tensor-core
/// kernel: scores and softmax in f32, P rounded to bf16 for P·V (row sums
/// from the f32 P), the output rounded to bf16. Rows in parallel.
pub fn attention_naive_bf16p(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> Vec<f32> {
    attention_naive_bf16p_ragged(q, k, v, s, None)
}

/// [`attention_naive_bf16p`] of a ragged batch (`Some((pos0, len))`: row i
/// of sequence s sits at position `pos0[s] + i` and sees keys `0 ..= pos0[s] + i`;
/// rows at or past `len[s]` are 0, as the kernels write them).
pub fn attention_naive_bf16p_ragged(q: &[f32], k: &[f32], v: &[f32], s: AttnShape, ragged: Option<(&[u32], &[u32])>) -> Vec<f32> {
    use rayon::prelude::*;
    let AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd } = s;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; b * tq * nh * hd];
    out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
        let h = row % nh;
        let i = (row / nh) % tq;
        let bi = row / (nh * tq);
        let g = h / (nh / nkv);
        let qr = &q[row * hd..(row + 1) * hd];
        let vis = match ragged {
            None => tkv - tq + i + 1,
            Some((_, len)) if i >= len[bi] as usize => {
                o.fill(0.0);
                return;
            }
            Some((pos0, _)) => pos0[bi] as usize + i + 1,
        };
        let sc: Vec<f32> = (0..vis)
            .map(|j| {
                let kr = &k[((bi * cap + j) * nkv + g) * hd..][..hd];
                dot8(qr, kr) * scale
            })
            .collect();
        let m = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = sc.iter().map(|x| (x - m).exp()).collect();
        let l: f32 = p.iter().sum();
        let mut acc = vec![0f32; hd];
        for (j, &pj) in p.iter().enumerate() {
            let pb = bfr(pj);
            let vr = &v[((bi * cap + j) * nkv + g) * hd..][..hd];
            for (a, &x) in acc.iter_mut().zip(vr) {
                *a += pb * x;
            }
        }
        for (oi, a) in o.iter_mut().zip(acc) {
            *oi = bfr(a / l);
        }
    });
    out
}

/// The unit roundoff of f32 (round to nearest): 2^-24.
pub const F32_UNIT: f64 = 1.0 / (1u64 << 24) as f64;

/// The naive bf16 references of an attention backward, and a bound on the
/// f32 noise of each gradient.
pub struct AttnBwdNaive {
    /// dq, dk, dv with the tensor-core kernels' bf16 rounding points
    pub grads: [Vec<f32>; 3],
    /// For dq, dk, dv: the largest amount by which two correct f32
    /// evaluations of one element may differ because dS = P ⊙ (dP − delta)
    /// cancels. dP_ij = Σ_d dout_id·v_jd and delta_i = Σ_d dout_id·out_id are
    /// sums of hd products; any f32 evaluation order is within
    /// γ·Σ_d |terms| of the exact sum, γ = hd·u/(1 − hd·u), u = 2^-24
    /// (Higham, Accuracy and Stability, (3.5)), so two evaluations (the
    /// kernel's, the reference's) of dS_ij differ by at most
    /// e_ij = 2γ·P_ij·(Σ|dout_i v_j| + Σ|dout_i out_i|); dq_ie = scale·Σ_j dS_ij k_je
    /// moves by at most scale·Σ_j e_ij |k_je|, dk_je (summed over the query
    /// heads of its KV head) by scale·Σ_h Σ_i e_ij |q_ie|; dv has no
    /// cancelling term (0). The bound matters where the true gradient is 0
    /// (a row with one visible key: P = 1 and dP = delta exactly), where a
    /// rule relative to the reference allows nothing at all.
    pub noise: [f64; 3],
}

/// Naive attention backward with the rounding points of the tensor-core
/// kernels: scores, P, dP and delta in f32; P rounded to bf16 for dV = Pᵀ dO,
/// dS rounded to bf16 for dQ = dS K and dK = dSᵀ Q; outputs rounded to bf16.
/// Also the f32 noise bound of each gradient ([`AttnBwdNaive::noise`]).
/// Parallel over (batch, head); the per-head dK/dV are summed over the heads
/// of a group in head order.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_naive_bf16(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], out: &[f32], lse: &[f32], s: AttnShape) -> AttnBwdNaive {
    attention_bwd_naive_bf16_ragged(q, k, v, dout, out, lse, s, None)
}

/// [`attention_bwd_naive_bf16`] of a ragged training batch: sequence s has
/// `lens[s]` valid rows; padding rows are neither read nor given gradients.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_naive_bf16_ragged(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
    lens: Option<&[u32]>,
) -> AttnBwdNaive {
    use rayon::prelude::*;
    let AttnShape { b, tq: t, n_head: nh, n_kv_head: nkv, hd, .. } = s;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let gamma = hd as f64 * F32_UNIT / (1.0 - hd as f64 * F32_UNIT);
    let (dot, abs_dot) = (dot8, abs_dot4);
    // per (b, h): dq rows (t, hd), dk and dv partials (t, hd), the dq noise
    // bound (max over its elements) and dk's per-element noise partials
    type Part = (Vec<f32>, Vec<f32>, Vec<f32>, f64, Vec<f64>);
    let parts: Vec<Part> = (0..b * nh)
        .into_par_iter()
        .map(|bh| {
            let (bi, h) = (bh / nh, bh % nh);
            let g = h / group;
            let row = |x: &'static str, i: usize| -> usize {
                match x {
                    "q" => ((bi * t + i) * nh + h) * hd,
                    _ => ((bi * t + i) * nkv + g) * hd,
                }
            };
            let (mut dq, mut dk, mut dv) = (vec![0f32; t * hd], vec![0f32; t * hd], vec![0f32; t * hd]);
            let mut nk = vec![0f64; t * hd];
            let mut nq_max = 0f64;
            let mut nq = vec![0f64; hd];
            let valid = lens.map_or(t, |l| l[bi] as usize);
            for i in 0..valid {
                let (qi, oi) = (&q[row("q", i)..][..hd], &dout[row("q", i)..][..hd]);
                let outi = &out[row("q", i)..][..hd];
                let d = dot(oi, outi);
                let bd = abs_dot(oi, outi);
                let l = lse[(bi * nh + h) * t + i];
                nq.fill(0.0);
                for j in 0..=i {
                    let (kj, vj) = (&k[row("k", j)..][..hd], &v[row("k", j)..][..hd]);
                    let p = (dot(qi, kj) * scale - l).exp();
                    let ds = bfr(p * (dot(oi, vj) - d));
                    let pb = bfr(p);
                    let e = 2.0 * gamma * p as f64 * (abs_dot(oi, vj) + bd);
                    for x in 0..hd {
                        dq[i * hd + x] += ds * kj[x];
                        dk[j * hd + x] += ds * qi[x];
                        dv[j * hd + x] += pb * oi[x];
                        nq[x] += e * (kj[x] as f64).abs();
                        nk[j * hd + x] += e * (qi[x] as f64).abs();
                    }
                }
                nq_max = nq.iter().fold(nq_max, |m, &x| m.max(x * scale as f64));
            }
            (dq, dk, dv, nq_max, nk)
        })
        .collect();
    let mut dq = vec![0f32; b * t * nh * hd];
    let mut dk = vec![0f32; b * t * nkv * hd];
    let mut dv = vec![0f32; b * t * nkv * hd];
    let mut nk = vec![0f64; b * t * nkv * hd];
    let mut nq_max = 0f64;
    for (bh, (pq, pk, pv, pnq, pnk)) in parts.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        let g = h / group;
        nq_max = nq_max.max(*pnq);
        for i in 0..t {
            for e in 0..hd {
                dq[((bi * t + i) * nh + h) * hd + e] = bfr(pq[i * hd + e] * scale);
                dk[((bi * t + i) * nkv + g) * hd + e] += pk[i * hd + e] * scale;
                dv[((bi * t + i) * nkv + g) * hd + e] += pv[i * hd + e];
                nk[((bi * t + i) * nkv + g) * hd + e] += pnk[i * hd + e] * scale as f64;
            }
        }
    }
    for x in dk.iter_mut().chain(dv.iter_mut()) {
        *x = bfr(*x);
    }
    let nk_max = nk.iter().fold(0f64, |m, &x| m.max(x));
    AttnBwdNaive { grads: [dq, dk, dv], noise: [nq_max, nk_max, 0.0] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llama2_runtime::kernels::attention::{attention_bwd_cpu, attention_fwd_cpu};

    fn max_err(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
    }

    /// The naive references compute the same function as the CPU kernels,
    /// up to bf16 rounding: close, but not identical (their error is the
    /// yardstick of the GPU checks, so it must be neither 0 nor large).
    #[test]
    fn naive_references_match_the_cpu_kernels_to_bf16_rounding() {
        let s = AttnShape::causal(2, 37, 4, 2, 64);
        let mut r = Rng::new(3);
        let mut rnd = |n: usize| (0..n).map(|_| bfr(r.normal())).collect::<Vec<f32>>();
        let (q, k, v, dout) = (rnd(2 * 37 * 4 * 64), rnd(2 * 37 * 2 * 64), rnd(2 * 37 * 2 * 64), rnd(2 * 37 * 4 * 64));
        let mut out = vec![0f32; q.len()];
        let mut lse = vec![0f32; 2 * 4 * 37];
        attention_fwd_cpu(&mut out, &mut lse, &q, &k, &v, s).expect("fwd");
        let naive = attention_naive_bf16p(&q, &k, &v, s);
        let e = max_err(&naive, &out);
        let scale = out.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        assert!(e > 0.0 && e < 0.02 * scale, "fwd naive error {e} (max |out| {scale})");
        let out_bf: Vec<f32> = out.iter().map(|&x| bfr(x)).collect();
        let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; k.len()]);
        attention_bwd_cpu(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out_bf, &lse, s).expect("bwd");
        let [nq, nk, nv] = attention_bwd_naive_bf16(&q, &k, &v, &dout, &out_bf, &lse, s).grads;
        for (name, a, b) in [("dq", &nq, &dq), ("dk", &nk, &dk), ("dv", &nv, &dv)] {
            let e = max_err(a, b);
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
            assert!(e > 0.0 && e < 0.03 * scale, "{name}: naive error {e} (max |ref| {scale})");
        }
    }

    /// Where only one key is visible (t = 1) the true dq and dk are 0 and
    /// two f32 evaluations differ by rounding noise only: the noise bound
    /// covers the CPU kernel vs the naive reference there, and at t = 37 it
    /// stays far below the bf16 error the flash-attn rule allows.
    #[test]
    fn the_noise_bound_covers_f32_noise_where_the_gradient_is_zero() {
        let mut r = Rng::new(5);
        for (t, hd) in [(1usize, 64usize), (1, 128), (37, 64)] {
            let s = AttnShape::causal(2, t, 4, 2, hd);
            let mut rnd = |n: usize| (0..n).map(|_| bfr(r.normal())).collect::<Vec<f32>>();
            let (q, k, v, dout) = (rnd(2 * t * 4 * hd), rnd(2 * t * 2 * hd), rnd(2 * t * 2 * hd), rnd(2 * t * 4 * hd));
            let mut out = vec![0f32; q.len()];
            let mut lse = vec![0f32; 2 * 4 * t];
            attention_fwd_cpu(&mut out, &mut lse, &q, &k, &v, s).expect("fwd");
            let out_bf: Vec<f32> = out.iter().map(|&x| bfr(x)).collect();
            let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; k.len()]);
            attention_bwd_cpu(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out_bf, &lse, s).expect("bwd");
            let n = attention_bwd_naive_bf16(&q, &k, &v, &dout, &out_bf, &lse, s);
            if t == 1 {
                for (ix, cpu) in [(0, &dq), (1, &dk)] {
                    let e = max_err(&n.grads[ix], cpu);
                    assert!(e <= n.noise[ix], "t=1 hd={hd} grad {ix}: {e:e} > noise bound {:e}", n.noise[ix]);
                    assert!(n.noise[ix] < 1e-2, "the bound is still small: {:e}", n.noise[ix]);
                }
            } else {
                for (ix, cpu) in [(0, &dq), (1, &dk)] {
                    let bf16_err = max_err(&n.grads[ix], cpu);
                    assert!(n.noise[ix] < 0.2 * bf16_err, "t={t}: noise bound {:e} vs bf16 error {bf16_err:e}", n.noise[ix]);
                }
            }
            assert_eq!(n.noise[2], 0.0);
        }
    }

    #[test]
    fn dot8_is_the_dot_product() {
        let mut r = Rng::new(11);
        for n in [0usize, 1, 7, 8, 9, 64, 131] {
            let a: Vec<f32> = (0..n).map(|_| r.normal()).collect();
            let b: Vec<f32> = (0..n).map(|_| r.normal()).collect();
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let bound: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum::<f64>() * n as f64 * F32_UNIT * 2.0;
            assert!((dot8(&a, &b) as f64 - exact).abs() <= bound, "n {n}");
            assert!((abs_dot4(&a, &b) - a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum::<f64>()).abs() < 1e-9 * (1.0 + exact.abs()));
        }
    }

    #[test]
    fn normals_depend_on_the_seed_only_and_are_standard() {
        let n = 3 * NORMALS_CHUNK + 17;
        let a = normals(5, n, 1.0);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("pool");
        assert_eq!(a, one.install(|| normals(5, n, 1.0)), "thread count changed the draws");
        assert_ne!(a, normals(6, n, 1.0));
        // chunks are distinct streams, not copies of one another
        assert_ne!(a[..NORMALS_CHUNK], a[NORMALS_CHUNK..2 * NORMALS_CHUNK]);
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        // standard errors at n = 196625: mean 0.0023, variance 0.0032
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "mean {mean} var {var}");
        assert!(a.iter().all(|&x| x != 0.0));
        assert_eq!(normals(5, 10, 3.0), a[..10].iter().map(|&x| x * 3.0).collect::<Vec<_>>());
    }
}

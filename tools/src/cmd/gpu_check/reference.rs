//! Naive references with the rounding points of the tensor-core attention
//! kernels (gpu-check compares those kernels against flash-attn's rule with
//! these as the "naive bf16 reference"), and their CPU tests.
//!
//! Public items: [`bfr`], [`normals`], [`attention_naive_bf16p`],
//! [`attention_bwd_naive_bf16`].

use half::bf16;
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::rng::Rng;

/// Rounds to the nearest bf16 (ties to even), as the GPU stores it.
pub fn bfr(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
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
        let vis = tkv - tq + i + 1;
        let sc: Vec<f32> = (0..vis)
            .map(|j| {
                let kr = &k[((bi * cap + j) * nkv + g) * hd..][..hd];
                qr.iter().zip(kr).map(|(a, b)| a * b).sum::<f32>() * scale
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

/// Naive attention backward with the rounding points of the tensor-core
/// kernels: scores, P, dP and delta in f32; P rounded to bf16 for dV = Pᵀ dO,
/// dS rounded to bf16 for dQ = dS K and dK = dSᵀ Q; outputs rounded to bf16.
/// Returns (dq, dk, dv). Parallel over (batch, head); the per-head dK/dV
/// are summed over the heads of a group in head order.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_naive_bf16(q: &[f32], k: &[f32], v: &[f32], dout: &[f32], out: &[f32], lse: &[f32], s: AttnShape) -> [Vec<f32>; 3] {
    use rayon::prelude::*;
    let AttnShape { b, tq: t, n_head: nh, n_kv_head: nkv, hd, .. } = s;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    // per (b, h): dq rows (t, hd), dk and dv partials (t, hd)
    let parts: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..b * nh)
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
            for i in 0..t {
                let (qi, oi) = (&q[row("q", i)..][..hd], &dout[row("q", i)..][..hd]);
                let d = dot(oi, &out[row("q", i)..][..hd]);
                let l = lse[(bi * nh + h) * t + i];
                for j in 0..=i {
                    let (kj, vj) = (&k[row("k", j)..][..hd], &v[row("k", j)..][..hd]);
                    let p = (dot(qi, kj) * scale - l).exp();
                    let ds = bfr(p * (dot(oi, vj) - d));
                    let pb = bfr(p);
                    for e in 0..hd {
                        dq[i * hd + e] += ds * kj[e];
                        dk[j * hd + e] += ds * qi[e];
                        dv[j * hd + e] += pb * oi[e];
                    }
                }
            }
            (dq, dk, dv)
        })
        .collect();
    let mut dq = vec![0f32; b * t * nh * hd];
    let mut dk = vec![0f32; b * t * nkv * hd];
    let mut dv = vec![0f32; b * t * nkv * hd];
    for (bh, (pq, pk, pv)) in parts.iter().enumerate() {
        let (bi, h) = (bh / nh, bh % nh);
        let g = h / group;
        for i in 0..t {
            for e in 0..hd {
                dq[((bi * t + i) * nh + h) * hd + e] = bfr(pq[i * hd + e] * scale);
                dk[((bi * t + i) * nkv + g) * hd + e] += pk[i * hd + e] * scale;
                dv[((bi * t + i) * nkv + g) * hd + e] += pv[i * hd + e];
            }
        }
    }
    for x in dk.iter_mut().chain(dv.iter_mut()) {
        *x = bfr(*x);
    }
    [dq, dk, dv]
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
        let [nq, nk, nv] = attention_bwd_naive_bf16(&q, &k, &v, &dout, &out_bf, &lse, s);
        for (name, a, b) in [("dq", &nq, &dq), ("dk", &nk, &dk), ("dv", &nv, &dv)] {
            let e = max_err(a, b);
            let scale = b.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
            assert!(e > 0.0 && e < 0.03 * scale, "{name}: naive error {e} (max |ref| {scale})");
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

//! The attention probe (debug path of the GAtt picture) against a naive
//! recomputation: softmax of q.k / sqrt(hd) over the visible keys in f64,
//! from the q and k the forward stored; and against the attention kernel's
//! own output (sum_j p_ij v_j = att_i), which ties the probabilities to
//! what the model computed.

use llama2_model::attn_probe::AttnProbe;
use llama2_model::{Acts, Config, LogitRows, Model};
use llama2_runtime::{v, Backend, CpuBackend};

/// Error bounds, derived rather than tuned. The kernel's score of key j,
/// s_j = scale * q.k_j, is an f32 dot product of hd terms: its rounding
/// error is at most d_j = gamma(hd) * scale * sum_d |q_d k_jd| with
/// gamma(n) = n eps / (1 - n eps) (Higham, Accuracy and Stability of
/// Numerical Algorithms, eq. 3.5). The saved lse = m + ln sum exp(s - m)
/// inherits at most max_j d_j, plus the exp approximation (2.5e-7
/// relative, kernels/src/math.rs) and the f32 sum and log (a few eps).
/// So the probe's p_j = exp(s_j - lse) is within rel_j = d_j + max d +
/// EXP_LOG_SLACK of the exact softmax, relatively.
const EXP_LOG_SLACK: f64 = 1e-6;
/// Absolute floor for probabilities that underflow in f32 (exp below 1e-38).
const PROB_FLOOR: f64 = 1e-30;

fn gamma(n: usize) -> f64 {
    let e = f32::EPSILON as f64 / 2.0; // unit roundoff
    n as f64 * e / (1.0 - n as f64 * e)
}

/// A random model whose attention is far from uniform: every matrix
/// N(0, 0.3) so q.k / sqrt(hd) is of order 10.
fn peaky_model(be: &CpuBackend, n_heads: usize, n_kv: usize) -> Model<CpuBackend> {
    let mut cfg = Config::new(97, 64, 96, 3, n_heads, n_kv);
    cfg.max_seq_len = 64;
    let m = Model::init_random(be, cfg.clone(), 7).unwrap();
    let mut host = m.params_host(be).unwrap();
    for x in host[..m.layout.n_decay].iter_mut() {
        *x *= 15.0;
    }
    Model::from_host(be, cfg, &host).unwrap()
}

/// The exact softmax of row `row_abs` over its visible keys (f64), and
/// the relative error bound of each probability (see the constants).
#[allow(clippy::too_many_arguments)]
fn naive_probs(q: &[f32], k: &[f32], cfg: &Config, layer: usize, n: usize, row_abs: usize, seq_start: usize, h: usize) -> (Vec<f64>, Vec<f64>) {
    let (hd, qd, kvd) = (cfg.head_dim, cfg.q_dim(), cfg.kv_dim());
    let g = h * cfg.n_kv_heads / cfg.n_heads;
    let scale = 1.0 / (hd as f64).sqrt();
    let qi = &q[(layer * n + row_abs) * qd + h * hd..][..hd];
    let (mut s, mut d) = (Vec::new(), Vec::new());
    for j in seq_start..=row_abs {
        let kj = &k[(layer * n + j) * kvd + g * hd..][..hd];
        s.push(qi.iter().zip(kj).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>() * scale);
        d.push(gamma(hd) * scale * qi.iter().zip(kj).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum::<f64>());
    }
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
    let dmax = d.iter().cloned().fold(0.0, f64::max);
    (s.iter().map(|x| (x - m).exp() / z).collect(), d.iter().map(|dj| dj + dmax + EXP_LOG_SLACK).collect())
}

#[test]
fn probe_matches_a_naive_softmax_and_the_kernel_output() {
    let be = CpuBackend::new(1).unwrap();
    for (nh, nkv) in [(4, 4), (4, 2), (4, 1)] {
        let model = peaky_model(&be, nh, nkv);
        let cfg = model.cfg.clone();
        let (b, t) = (2, 37);
        let tokens: Vec<u32> = (0..b * t).map(|i| ((i * 31 + 7) % 97) as u32).collect();
        let mut acts = Acts::new(&be, &cfg, b, t, true, LogitRows::All).unwrap();
        model.forward(&be, &mut acts, &tokens, None).unwrap();
        let probe = AttnProbe::new(&be, &model, &acts).unwrap();
        let n = b * t;
        let mut q = vec![0f32; cfg.n_layers * n * cfg.q_dim()];
        let mut k = vec![0f32; cfg.n_layers * n * cfg.kv_dim()];
        let mut vv = vec![0f32; cfg.n_layers * n * cfg.kv_dim()];
        let mut att = vec![0f32; cfg.n_layers * n * cfg.q_dim()];
        be.download(v(&acts.a.q), &mut q).unwrap();
        be.download(v(&acts.a.k), &mut k).unwrap();
        be.download(v(&acts.a.v), &mut vv).unwrap();
        be.download(v(&acts.a.att), &mut att).unwrap();
        let mut max_p = 0f64;
        for seq in 0..b {
            for l in 0..cfg.n_layers {
                for row in [0, 1, 5, 20, t - 1] {
                    for h in 0..nh {
                        let p = probe.probs(seq, l, row, h).unwrap();
                        let (want, rel) = naive_probs(&q, &k, &cfg, l, n, seq * t + row, seq * t, h);
                        assert_eq!(p.len(), want.len());
                        for (j, (a, w)) in p.iter().zip(&want).enumerate() {
                            let tol = PROB_FLOOR + rel[j] * w;
                            assert!(
                                (a - w).abs() <= tol,
                                "nh {nh} nkv {nkv} seq {seq} layer {l} row {row} head {h} key {j}: probe {a} naive {w} (tolerance {tol:e})"
                            );
                        }
                        max_p = max_p.max(p.iter().cloned().fold(0.0, f64::max));
                        // sum_j p_ij v_j is the kernel's output for this row and head
                        let (hd, kvd, qd) = (cfg.head_dim, cfg.kv_dim(), cfg.q_dim());
                        let g = h * nkv / nh;
                        for d in 0..hd {
                            let vj = |j: usize| vv[(l * n + seq * t + j) * kvd + g * hd + d] as f64;
                            let o: f64 = p.iter().enumerate().map(|(j, &pj)| pj * vj(j)).sum();
                            // the kernel's probabilities are within rel_j of p_j (and
                            // of ours), and its f32 sum of row+1 products adds gamma(row+2)
                            let mag: f64 = p.iter().enumerate().map(|(j, &pj)| pj * vj(j).abs()).sum();
                            let tol: f64 =
                                p.iter().enumerate().map(|(j, &pj)| 2.0 * rel[j] * pj * vj(j).abs()).sum::<f64>() + gamma(row + 2) * mag + PROB_FLOOR;
                            let got = att[(l * n + seq * t + row) * qd + h * hd + d] as f64;
                            assert!((o - got).abs() <= tol, "att mismatch layer {l} row {row} head {h} dim {d}: {o} vs {got} (tolerance {tol:e})");
                        }
                    }
                }
            }
        }
        // the test is only meaningful if attention is far from uniform
        assert!(max_p > 0.5, "attention too flat to test anything (max p {max_p})");
        // mass over a key range = the sum of those probabilities; keys past the row are not visible
        let m = probe.mass(1, &[10, 30], 3..15).unwrap();
        for (li, l) in (0..cfg.n_layers).enumerate() {
            for (ri, &row) in [10usize, 30].iter().enumerate() {
                for h in 0..nh {
                    let p = probe.probs(1, l, row, h).unwrap();
                    let want: f64 = p[3..(15.min(row + 1))].iter().sum();
                    assert!((m[(li * 2 + ri) * nh + h] - want).abs() < 1e-12);
                }
            }
        }
    }
}

#[test]
fn probe_refuses_inference_activations_and_out_of_range_rows() {
    let be = CpuBackend::new(1).unwrap();
    let model = peaky_model(&be, 4, 2);
    let mut acts = Acts::new(&be, &model.cfg, 1, 8, false, LogitRows::All).unwrap();
    model.forward(&be, &mut acts, &[1, 2, 3, 4, 5, 6, 7, 8], None).unwrap();
    let e = AttnProbe::new(&be, &model, &acts).err().expect("one-layer activations must be refused").to_string();
    assert!(e.contains("HINT") && e.contains("training"), "{e}");
    let mut acts = Acts::new(&be, &model.cfg, 1, 8, true, LogitRows::All).unwrap();
    model.forward(&be, &mut acts, &[1, 2, 3, 4, 5, 6, 7, 8], None).unwrap();
    let probe = AttnProbe::new(&be, &model, &acts).unwrap();
    assert!(probe.probs(0, 0, 8, 0).is_err());
    assert!(probe.probs(1, 0, 0, 0).is_err());
    assert!(probe.probs(0, 3, 0, 0).is_err());
    assert!(probe.probs(0, 0, 0, 4).is_err());
}

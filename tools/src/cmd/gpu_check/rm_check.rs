//! Reward-model checks of gpu-check: the scores (score head at each
//! sequence's last token), the margin ranking loss and every parameter
//! gradient of one batch of pairs (`llama2_train::reward::RewardTrainer`)
//! on the GPU against the CPU, for a dense batch (every sequence full) and
//! a ragged one (right padding; needs the ragged attention and RoPE
//! kernels on the GPU).
//!
//! Both backends start from the same weights rounded to bf16 on the host
//! (as [`super::model_check`]), so the comparison isolates the bf16
//! activations.
//!
//! Public items: [`compare`].

use half::bf16;
use llama2_model::{Config, Model, ParamId};
use llama2_runtime::*;
use llama2_train::optim::AdamWConfig;
use llama2_train::reward::data::{Margin, Pair, PairBatch, Rating};
use llama2_train::reward::{init_from_lm, RewardTrainer};
use llama2_train::trainer::Objective;

/// bf16 machine epsilon (8 bits of mantissa).
const BF16_EPS: f64 = 1.0 / 128.0;
/// Relative L2 error of the score vector and of each gradient tensor, GPU
/// vs CPU: the bound of `model_check::GRAD_REL_L2` (a dozen bf16-stored
/// activations on the way, independent roundings adding in quadrature).
const REL_L2: f64 = 4.0 * BF16_EPS;
/// Pairs per batch and tokens of the longest sequence.
const PAIRS: usize = 4;
const T: usize = 48;

fn config() -> Config {
    let mut c = Config::new(512, 256, 688, 2, 4, 2);
    c.max_seq_len = 128;
    c
}

fn rel_l2(g: &[f32], r: &[f32]) -> f64 {
    let num: f64 = g.iter().zip(r).map(|(a, b)| (*a as f64 - *b as f64).powi(2)).sum();
    let den: f64 = r.iter().map(|b| (*b as f64).powi(2)).sum();
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Runs the comparison of backend `g` (checked) against `c` (the CPU
/// reference), reporting each check through `record(name, err, limit)`.
pub fn compare<C: Backend, G: Backend>(c: &C, g: &G, seed: u64, record: &mut dyn FnMut(String, f64, f64)) -> anyhow::Result<()> {
    let cfg = config();
    let (rm_cfg, host) = {
        let lm = Model::init_random(c, cfg, seed)?;
        let rm = init_from_lm(c, &lm, seed)?;
        let host: Vec<f32> = rm.params_host(c)?.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect();
        (rm.cfg.clone(), host)
    };
    let mut r = rng::Rng::derive(seed, "gpu-check rm data");
    let vocab = rm_cfg.vocab_size as u64;
    for (kind, ragged) in [("dense", false), ("ragged", true)] {
        let len = |r: &mut rng::Rng| if ragged { 8 + r.below((T - 8) as u64) as usize } else { T };
        let pairs: Vec<Pair> = (0..PAIRS)
            .map(|i| {
                let (lc, lr) = (len(&mut r), len(&mut r));
                Pair {
                    chosen: (0..lc).map(|_| 3 + r.below(vocab - 3) as u32).collect(),
                    rejected: (0..lr).map(|_| 3 + r.below(vocab - 3) as u32).collect(),
                    rating: Some(Rating::ALL[i % 4]),
                    safety: None,
                    unsafe_prompt: None,
                }
            })
            .collect();
        let refs: Vec<&Pair> = pairs.iter().collect();
        let mb = PairBatch::new(&refs, Margin::Small, rm_cfg.pad_id.unwrap_or(0));
        let mut tc = RewardTrainer::new(c, Model::from_host(c, rm_cfg.clone(), &host)?, AdamWConfig::default(), 0.0)?;
        let mut tg = RewardTrainer::new(g, Model::from_host(g, rm_cfg.clone(), &host)?, AdamWConfig::default(), 0.0)?;
        let (_, sc) = tc.scores(c, &mb)?;
        let (_, sg) = tg.scores(g, &mb)?;
        let e = rel_l2(&sg, &sc);
        record(format!("reward model, {kind} batch of {PAIRS} pairs: scores at the last token, relative L2"), e, REL_L2);
        c.zero(vm(&mut tc.grads))?;
        g.zero(vm(&mut tg.grads))?;
        let (lc, lg) = (tc.forward_backward(c, &mb, PAIRS)?.loss / PAIRS as f64, tg.forward_backward(g, &mb, PAIRS)?.loss / PAIRS as f64);
        // |dL/dx| < 1 per pair, x = r_c - r_r - m: the loss moves by at most
        // the mean |error of r_c - r_r|, bounded by 2 x REL_L2 x the rms score
        let rms = (sc.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / sc.len() as f64).sqrt();
        record(format!("reward model, {kind}: ranking loss {lg:.5} vs cpu {lc:.5}"), (lg - lc).abs(), 2.0 * REL_L2 * rms.max(1e-3));
        let lay = &tc.model.layout;
        let mut gc = vec![0f32; lay.total];
        let mut gg = vec![0f32; lay.total];
        c.download(v(&tc.grads), &mut gc)?;
        g.download(v(&tg.grads), &mut gg)?;
        for id in ParamId::ALL {
            let n = *lay.size.get(id);
            if n == 0 {
                continue;
            }
            record(format!("reward model, {kind}: gradient {id:?} ({n}), relative L2"), rel_l2(&lay.gather(id, &gg), &lay.gather(id, &gc)), REL_L2);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two identical CPU backends agree exactly; the CPU with bf16
    /// activations (as the CUDA backend stores them) stays within every
    /// tolerance (printed: the baseline to read a GPU run against).
    #[test]
    fn passes_against_itself_and_bf16_activations() {
        let a = CpuBackend::new(0).expect("cpu");
        let b = CpuBackend::new(0).expect("cpu");
        let mut rows = Vec::new();
        compare(&a, &b, 3, &mut |n, e, l| rows.push((n, e, l))).expect("runs");
        assert!(rows.len() > 20, "{rows:?}");
        for (n, e, _) in &rows {
            assert!(*e == 0.0, "{n}: {e} between two identical CPU runs");
        }
        let sim = super::super::bf16_sim::Bf16Sim::new(0).expect("sim");
        let mut rows = Vec::new();
        compare(&a, &sim, 3, &mut |n, e, l| rows.push((n, e, l))).expect("runs");
        for (n, e, l) in &rows {
            println!("{:5.1}% of tolerance: {n} ({e:.3e} vs {l:.3e})", 100.0 * e / l);
        }
        for (n, e, l) in &rows {
            assert!(e <= l, "{n}: {e} > {l}");
        }
        assert!(rows.iter().any(|(n, e, _)| n.contains("gradient") && *e > 1e-4), "the bf16 rounding is really there: {rows:?}");
    }
}

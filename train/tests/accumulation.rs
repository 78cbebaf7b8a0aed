//! Gradient accumulation: K micro-batches give the same update as one batch
//! K times larger (the loss is the mean over every counted target of every
//! micro-batch, so even with masked targets the two are the same function).

use llama2_model::{Config, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::CpuBackend;
use llama2_train::optim::AdamWConfig;
use llama2_train::step::{LmTrainer, MicroBatch};

/// The two computations sum the same terms in a different order (per
/// micro-batch vs per batch row block): f32 rounding, ~1e-7 relative per
/// sum; after one AdamW step (lr 1e-3) the weights agree to ~1e-9 absolute.
/// 1e-6 relative to the largest weight leaves a wide margin and is far
/// below the size of one update (1e-3), so a wrong scale would fail.
const ACCUM_RTOL: f32 = 1e-6;

#[test]
fn k_micro_batches_equal_one_batch_k_times_larger() {
    let be = CpuBackend::new(2).unwrap();
    let mut cfg = Config::new(97, 48, 64, 2, 4, 2);
    cfg.max_seq_len = 64;
    let (t, k) = (16, 3);
    let mut rng = Rng::new(5);
    // rows of inputs and targets, some targets masked (as SFT does)
    let rows: Vec<(Vec<u32>, Vec<i32>)> = (0..2 * k)
        .map(|_| {
            let inp: Vec<u32> = (0..t).map(|_| rng.below(97) as u32).collect();
            let tgt: Vec<i32> = (0..t).map(|_| if rng.below(4) == 0 { -1 } else { rng.below(97) as i32 }).collect();
            (inp, tgt)
        })
        .collect();
    let batch = |rs: &[(Vec<u32>, Vec<i32>)]| MicroBatch {
        inputs: rs.iter().flat_map(|r| r.0.clone()).collect(),
        targets: rs.iter().flat_map(|r| r.1.clone()).collect(),
    };
    let opt = AdamWConfig::default();
    let mut small = LmTrainer::new(&be, Model::init_random(&be, cfg.clone(), 1).unwrap(), 2, t, opt).unwrap();
    let mut big = LmTrainer::new(&be, Model::init_random(&be, cfg.clone(), 1).unwrap(), 2 * k, t, opt).unwrap();
    let micro: Vec<MicroBatch> = rows.chunks(2).map(batch).collect();
    let s1 = small.step(&be, &micro, 1e-3).unwrap();
    let s2 = big.step(&be, &[batch(&rows)], 1e-3).unwrap();
    assert_eq!(s1.targets, s2.targets);
    assert!((s1.loss - s2.loss).abs() < 1e-6 * s2.loss, "loss {} vs {}", s1.loss, s2.loss);
    assert!((s1.grad_norm - s2.grad_norm).abs() < 1e-5 * s2.grad_norm, "grad norm {} vs {}", s1.grad_norm, s2.grad_norm);
    let (p1, p2) = (small.model.params_host(&be).unwrap(), big.model.params_host(&be).unwrap());
    let scale = p2.iter().fold(0f32, |m, x| m.max(x.abs()));
    let worst = p1.iter().zip(&p2).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(worst <= ACCUM_RTOL * scale, "weights differ by {worst} (scale {scale})");
    // and the update itself is not trivially small
    let p0 = Model::init_random(&be, cfg, 1).unwrap().params_host(&be).unwrap();
    let moved = p0.iter().zip(&p2).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(moved > 1000.0 * worst.max(1e-9), "the step moved the weights by {moved}");
}

//! The LM head and cross-entropy in row chunks (`--logit-chunk`,
//! `LmTrainer::with_logit_chunk`, `Model::lm_loss_chunked`) against the
//! default path that stores every row's logits: the same loss, the same
//! gradients up to the order of the d(lm_head) sums, for chunk sizes that
//! do and do not divide b*t, with ignored targets and per-row
//! coefficients; bad chunk sizes refused; the activations smaller.

use llama2_model::backward::HeadGrad;
use llama2_model::{Acts, Config, GradActs, LogitRows, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::{v, vm, Backend, BufKind, Buffer, CeGrad, CpuBackend};
use llama2_train::optim::AdamWConfig;
use llama2_train::step::{LmTrainer, MicroBatch};
use llama2_train::trainer::Objective;

/// The chunked path sums d(lm_head) = Σ_rows dlogits^T · lnf chunk by chunk
/// (a partial product per chunk, added into the gradient) where the default
/// path makes one product over every row; every other gradient flows from
/// d(lnf) = dlogits · W_lm, a product of R rows instead of b*t, which the
/// CPU GEMM may block differently over the vocabulary (see LOSS_RTOL): an
/// ulp or two of each d(lnf) entry (~1e-7 relative), carried through the
/// whole backward (RMSNorms, attention, a dozen products, each adding its
/// own rounding). So an entry moves by up to about ten ulps of its tensor's
/// largest gradient, whatever its own size: 1e-6 of that maximum absolute
/// (measured up to 1.7e-7 of it, layer 0's q_proj, on an AVX2 + FMA CPU,
/// whose GEMM kernels block otherwise than AVX-512's, where 1e-7 had held)
/// plus 1e-5 relative. Far below the gradients themselves: a wrong scale,
/// a missed chunk or a dropped row fails by orders of magnitude.
const GRAD_RTOL: f32 = 1e-5;
const GRAD_ATOL_OF_MAX: f32 = 1e-6;

/// The chunk's logits come from a product of m rows instead of b*t: the
/// CPU GEMM may block the reduction over C differently for another m, so
/// a logit can move by an ulp or two (~1e-7 relative) and a row's loss
/// with it. The losses are summed in the same order; 1e-6 relative on the
/// sum is ~10x that and a hundred times below one row's share (~1/22 of
/// the sum: a dropped or doubled row fails).
const LOSS_RTOL: f64 = 1e-6;

const VOCAB: usize = 97;
const B: usize = 2;
const T: usize = 16;

fn cfg() -> Config {
    let mut c = Config::new(VOCAB, 48, 64, 2, 4, 2);
    c.max_seq_len = 64;
    c
}

/// A batch with about a quarter of the targets ignored (-1), as SFT masks.
fn batch(seed: u64) -> MicroBatch {
    let mut rng = Rng::new(seed);
    let inputs = (0..B * T).map(|_| rng.below(VOCAB as u64) as u32).collect();
    let targets = (0..B * T).map(|_| if rng.below(4) == 0 { -1 } else { rng.below(VOCAB as u64) as i32 }).collect();
    MicroBatch { inputs, targets }
}

/// Every parameter tensor of `got` within tolerance of `want`, by name.
fn assert_grads_close(cfg: &Config, model: &Model<CpuBackend>, got: &[f32], want: &[f32], what: &str) {
    for (id, l, name) in model.layout.hf_tensors(cfg) {
        let (off, len) = model.layout.range(id, l);
        let (g, w) = (&got[off..off + len], &want[off..off + len]);
        let max = w.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(max > 0.0, "{what}: {name} has an all-zero reference gradient");
        for (i, (a, b)) in g.iter().zip(w).enumerate() {
            let tol = GRAD_ATOL_OF_MAX * max + GRAD_RTOL * b.abs();
            assert!((a - b).abs() <= tol, "{what}: {name}[{i}] = {a}, unchunked {b} (|diff| {} > tol {tol})", (a - b).abs());
        }
    }
}

fn grads_host(be: &CpuBackend, tr: &LmTrainer<CpuBackend>) -> Vec<f32> {
    let mut h = vec![0f32; tr.grads.len()];
    be.download(v(&tr.grads), &mut h).unwrap();
    h
}

#[test]
fn chunked_step_equals_the_default_step() {
    let be = CpuBackend::new(2).unwrap();
    let cfg = cfg();
    let opt = AdamWConfig::default();
    let micro = [batch(1), batch(2)];
    let mut full = LmTrainer::new(&be, Model::init_random(&be, cfg.clone(), 7).unwrap(), B, T, opt).unwrap();
    let (loss0, count0) = full.accumulate(&be, &micro).unwrap();
    let want = grads_host(&be, &full);
    let eval0 = full.evaluate(&be, &micro[0]).unwrap();
    // 5 and 7 do not divide b*t = 32 (a short last chunk), 8 does, 32 is one chunk, 1 is a row at a time
    for chunk in [1, 5, 7, 8, B * T] {
        let mut tr = LmTrainer::with_logit_chunk(&be, Model::init_random(&be, cfg.clone(), 7).unwrap(), B, T, opt, chunk).unwrap();
        let (loss, count) = tr.accumulate(&be, &micro).unwrap();
        assert_eq!(count, count0, "chunk {chunk}: counted targets");
        assert!((loss - loss0).abs() <= LOSS_RTOL * loss0.abs(), "chunk {chunk}: loss {loss}, unchunked {loss0}");
        assert_grads_close(&cfg, &tr.model, &grads_host(&be, &tr), &want, &format!("chunk {chunk}"));
        let eval = tr.evaluate(&be, &micro[0]).unwrap();
        assert_eq!(eval.count, eval0.count, "chunk {chunk}: validation targets");
        assert!((eval.loss - eval0.loss).abs() <= LOSS_RTOL * eval0.loss.abs(), "chunk {chunk}: validation loss {}, unchunked {}", eval.loss, eval0.loss);
    }
}

#[test]
fn chunked_head_with_per_row_coefficients_and_padding() {
    let be = CpuBackend::new(2).unwrap();
    let cfg = cfg();
    let model = Model::init_random(&be, cfg.clone(), 3).unwrap();
    let mb = batch(9);
    let n = B * T;
    // per-row weights (PPO-style), zero on some rows; a ragged batch: the second sequence has 11 valid tokens
    let coef: Vec<f32> = (0..n).map(|i| if i % 5 == 0 { 0.0 } else { 0.01 * (1 + i % 7) as f32 }).collect();
    let lens = [T as u32, 11];
    let mut targets = mb.targets.clone();
    for x in targets[T + 11..].iter_mut() {
        *x = -1; // padding rows carry no target
    }
    let run = |rows: LogitRows| {
        let mut acts = Acts::new(&be, &cfg, B, T, true, rows).unwrap();
        let mut gacts = GradActs::new(&be, &cfg, B, T).unwrap();
        let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
        be.zero(vm(&mut grads)).unwrap();
        model.trunk(&be, &mut acts, &mb.inputs, Some(&lens), None).unwrap();
        let (loss, count) = match rows {
            LogitRows::Chunked(_) => {
                let r = model.lm_loss_chunked(&be, &mut acts, &targets, CeGrad::PerRow(&coef), Some((&mut gacts, &mut grads))).unwrap();
                model.backward_from(&be, &acts, &mut gacts, &mut grads, &mb.inputs, Some(&lens), HeadGrad::Hidden).unwrap();
                r
            }
            _ => {
                model.lm_head(&be, &mut acts, Some(&lens)).unwrap();
                let r = model.loss(&be, &mut acts, &targets, CeGrad::PerRow(&coef)).unwrap();
                model.backward_from(&be, &acts, &mut gacts, &mut grads, &mb.inputs, Some(&lens), HeadGrad::Logits).unwrap();
                r
            }
        };
        let mut h = vec![0f32; model.layout.total];
        be.download(v(&grads), &mut h).unwrap();
        (loss, count, h)
    };
    let (loss0, count0, want) = run(LogitRows::All);
    for chunk in [3, 16] {
        let (loss, count, got) = run(LogitRows::Chunked(chunk));
        assert_eq!(count, count0, "chunk {chunk}: counted targets");
        assert!((loss - loss0).abs() <= LOSS_RTOL * loss0.abs(), "chunk {chunk}: loss {loss}, unchunked {loss0}");
        assert_grads_close(&cfg, &model, &got, &want, &format!("per-row, chunk {chunk}"));
    }
}

#[test]
fn chunked_acts_are_smaller_by_the_logits() {
    let be = CpuBackend::new(1).unwrap();
    let cfg = cfg();
    let n = B * T;
    let full = Acts::new(&be, &cfg, B, T, true, LogitRows::All).unwrap();
    for r in [1, 8, n] {
        let ch = Acts::new(&be, &cfg, B, T, true, LogitRows::Chunked(r)).unwrap();
        assert_eq!(ch.a.logits.len(), r * VOCAB, "chunk {r}: the logits scratch");
        // logits (n -> r rows of V) and the per-row losses and entropies (n -> r)
        assert_eq!(full.elements() - ch.elements(), (n - r) * (VOCAB + 2), "chunk {r}");
    }
}

#[test]
fn bad_chunks_are_refused_with_a_hint() {
    let be = CpuBackend::new(1).unwrap();
    let cfg = cfg();
    let opt = AdamWConfig::default();
    let model = || Model::init_random(&be, cfg.clone(), 1).unwrap();
    let e = LmTrainer::with_logit_chunk(&be, model(), B, T, opt, B * T + 1).err().expect("a chunk over b*t is refused").to_string();
    assert!(e.contains("--logit-chunk 33") && e.contains("HINT:"), "{e}");
    let e = Acts::new(&be, &cfg, B, T, true, LogitRows::Chunked(0)).err().expect("a chunk of 0 rows is refused").to_string();
    assert!(e.contains("HINT:"), "{e}");
    // the ops that need every row's logits refuse chunked activations
    let m = model();
    let mut acts = Acts::new(&be, &cfg, B, T, true, LogitRows::Chunked(4)).unwrap();
    let mb = batch(4);
    m.trunk(&be, &mut acts, &mb.inputs, None, None).unwrap();
    let e = m.loss(&be, &mut acts, &mb.targets, CeGrad::None).expect_err("loss on chunked acts is refused").to_string();
    assert!(e.contains("lm_loss_chunked") && e.contains("HINT:"), "{e}");
    let e = m.lm_head(&be, &mut acts, None).expect_err("lm_head on chunked acts is refused").to_string();
    assert!(e.contains("HINT:"), "{e}");
    // a gradient without buffers, and the full-logits backward on chunked acts
    let e = m.lm_loss_chunked(&be, &mut acts, &mb.targets, CeGrad::Uniform(1.0), None).expect_err("grad without buffers").to_string();
    assert!(e.contains("no gradient buffers"), "{e}");
    let mut gacts = GradActs::new(&be, &cfg, B, T).unwrap();
    let mut grads = be.alloc(m.layout.total, BufKind::F32).unwrap();
    let e = m.backward(&be, &acts, &mut gacts, &mut grads, &mb.inputs).expect_err("HeadGrad::Logits on chunked acts").to_string();
    assert!(e.contains("HeadGrad::Hidden"), "{e}");
}

//! The trunk with its two heads and ragged batches, against transformers
//! (fixtures from tools/scripts/make_head_fixtures.py, tests/fixtures/heads):
//! - per-token log-probabilities and entropies of a ragged batch against
//!   transformers' `log_softmax` gathers (float64), its mean loss and every
//!   gradient;
//! - the score head (`LlamaForSequenceClassification`, one label): pooled
//!   scores and gradients, and the head at every position (a value model);
//! - a ragged batch gives, sequence by sequence, the losses and gradients of
//!   each sequence run alone;
//! - batched greedy decoding of prompts of different lengths equals
//!   decoding each prompt alone.

use llama2::model::backward::HeadGrad;
use llama2::model::generate::{Generator, Sampling};
use llama2::model::weights::Checkpoint;
use llama2::model::{Acts, GradActs, LogitRows, Model};
use llama2::runtime::rng::Rng;
use llama2::runtime::{v, Backend, BufKind, CeGrad, CpuBackend};
use std::path::{Path, PathBuf};

/// Log-probabilities and entropies: max |ours − ref| / max |ref|. The
/// reference is float64 from float32 logits; ours is float32 throughout,
/// ~1e-6 relative from summation order (as the logits of tests/parity.rs).
const LOGPROB_RTOL: f64 = 1e-4;
/// Scores and values of the score head: as the logits in tests/parity.rs.
const SCORE_RTOL: f64 = 1e-4;
/// Every gradient tensor: the bar of tests/parity.rs.
const GRAD_RTOL: f64 = 1e-4;
/// Ragged batch vs each sequence alone: the same f32 operations on the
/// same rows, in a different grouping of the GEMMs (the weight gradients
/// sum the rows of one batch or of several); measured ~1e-7.
const RAGGED_RTOL: f64 = 1e-5;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/heads").join(name)
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        let d = (a as f64 - b as f64).abs();
        assert!(d.is_finite(), "non-finite value");
        m.max(d)
    });
    diff / scale.max(1e-30)
}

fn ints(r: &Checkpoint, name: &str) -> Vec<i64> {
    r.read_ints(name).unwrap().1
}

fn grads_host(be: &CpuBackend, model: &Model<CpuBackend>, grads: &<CpuBackend as Backend>::Buf) -> llama2::model::weights::HostWeights {
    let mut g = vec![0f32; model.layout.total];
    be.download(v(grads), &mut g).unwrap();
    model.layout.to_host(&model.cfg, &g)
}

fn check_grads(what: &str, got: &llama2::model::weights::HostWeights, reference: &Checkpoint, prefix: &str) {
    let mut worst = (0f64, String::new());
    for (name, t) in got {
        let want = reference.read(&format!("{prefix}{name}")).unwrap();
        assert_eq!(t.shape, want.shape, "{name}");
        let e = rel_err(&t.data, &want.data);
        assert!(e <= GRAD_RTOL, "{what}: grad of {name}: rel err {e:.3e}");
        if e > worst.0 {
            worst = (e, name.clone());
        }
    }
    assert_eq!(reference.names().filter(|k| k.starts_with(prefix)).count(), got.len(), "{what}: every reference gradient is checked");
    eprintln!("{what}: worst gradient rel err {:.2e} ({})", worst.0, worst.1);
}

#[test]
fn lm_head_logprobs_entropy_and_grads_of_a_ragged_batch() {
    let dir = fixture("lm");
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &dir).unwrap();
    let r = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let inputs: Vec<u32> = ints(&r, "inputs").iter().map(|&x| x as u32).collect();
    let targets: Vec<i32> = ints(&r, "targets").iter().map(|&x| if x < 0 { -1 } else { x as i32 }).collect();
    let lens: Vec<u32> = ints(&r, "lens").iter().map(|&x| x as u32).collect();
    let (b, t) = (lens.len(), inputs.len() / lens.len());

    let mut acts = Acts::new(&be, &model.cfg, b, t, true, LogitRows::All).unwrap();
    model.forward_ragged(&be, &mut acts, &inputs, Some(&lens), None).unwrap();
    let st = model.token_logprobs(&be, &mut acts, &targets, true).unwrap();
    let e_lp = rel_err(&st.logprobs, &r.read("logprobs").unwrap().data);
    let e_ent = rel_err(st.entropy.as_ref().unwrap(), &r.read("entropy").unwrap().data);
    assert!(e_lp <= LOGPROB_RTOL, "log-probabilities: rel err {e_lp:.3e}");
    assert!(e_ent <= LOGPROB_RTOL, "entropies: rel err {e_ent:.3e}");

    // the logits are untouched by token_logprobs: the loss and its gradient follow
    let count = targets.iter().filter(|&&x| x >= 0).count();
    let (sum, n) = model.loss(&be, &mut acts, &targets, CeGrad::Uniform(1.0 / count as f32)).unwrap();
    assert_eq!(n, count);
    let want_loss = r.read("loss").unwrap().data[0] as f64;
    let lp_sum: f64 = st.logprobs.iter().map(|&x| x as f64).sum();
    assert!(((sum / n as f64) - want_loss).abs() <= 1e-5 * want_loss, "loss {} vs {want_loss}", sum / n as f64);
    assert!((sum + lp_sum).abs() <= 1e-5 * sum, "loss = -sum of log-probabilities: {sum} vs {lp_sum}");
    let mut gacts = GradActs::new(&be, &model.cfg, b, t).unwrap();
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    model.backward_from(&be, &acts, &mut gacts, &mut grads, &inputs, Some(&lens), HeadGrad::Logits).unwrap();
    check_grads("lm ragged", &grads_host(&be, &model, &grads), &r, "grad.");
    eprintln!("lm ragged: log-probabilities rel err {e_lp:.2e}, entropies {e_ent:.2e}");
}

#[test]
fn ragged_batch_equals_each_sequence_alone() {
    let dir = fixture("lm");
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &dir).unwrap();
    let r = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let inputs: Vec<u32> = ints(&r, "inputs").iter().map(|&x| x as u32).collect();
    let targets: Vec<i32> = ints(&r, "targets").iter().map(|&x| if x < 0 { -1 } else { x as i32 }).collect();
    let lens: Vec<u32> = ints(&r, "lens").iter().map(|&x| x as u32).collect();
    let (b, t) = (lens.len(), inputs.len() / lens.len());
    let count = targets.iter().filter(|&&x| x >= 0).count();
    let scale = CeGrad::Uniform(1.0 / count as f32);

    let mut acts = Acts::new(&be, &model.cfg, b, t, true, LogitRows::All).unwrap();
    let mut gacts = GradActs::new(&be, &model.cfg, b, t).unwrap();
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    model.forward_ragged(&be, &mut acts, &inputs, Some(&lens), None).unwrap();
    let batch_lp = model.token_logprobs(&be, &mut acts, &targets, false).unwrap().logprobs;
    let (batch_sum, _) = model.loss(&be, &mut acts, &targets, scale).unwrap();
    model.backward_from(&be, &acts, &mut gacts, &mut grads, &inputs, Some(&lens), HeadGrad::Logits).unwrap();

    let mut alone = be.alloc(model.layout.total, BufKind::F32).unwrap();
    let mut alone_sum = 0.0;
    for s in 0..b {
        let l = lens[s] as usize;
        let (x, y) = (&inputs[s * t..s * t + l], &targets[s * t..s * t + l]);
        let mut a1 = Acts::new(&be, &model.cfg, 1, l, true, LogitRows::All).unwrap();
        let mut g1 = GradActs::new(&be, &model.cfg, 1, l).unwrap();
        model.forward(&be, &mut a1, x, None).unwrap();
        let lp = model.token_logprobs(&be, &mut a1, y, false).unwrap().logprobs;
        let e = rel_err(&lp, &batch_lp[s * t..s * t + l]);
        assert!(e <= RAGGED_RTOL, "sequence {s}: log-probabilities alone vs in the batch: {e:.3e}");
        alone_sum += model.loss(&be, &mut a1, y, scale).unwrap().0;
        model.backward(&be, &a1, &mut g1, &mut alone, x).unwrap();
    }
    assert!((alone_sum - batch_sum).abs() <= RAGGED_RTOL * batch_sum, "loss sums: {alone_sum} alone vs {batch_sum} batched");
    let (ga, gb) = (grads_host(&be, &model, &alone), grads_host(&be, &model, &grads));
    for (name, t) in &ga {
        let e = rel_err(&gb[name].data, &t.data);
        assert!(e <= RAGGED_RTOL, "grad of {name}: ragged batch vs alone: {e:.3e}");
    }
}

#[test]
fn score_head_matches_sequence_classification() {
    let dir = fixture("seqcls");
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &dir).unwrap();
    assert_eq!(model.cfg.head, llama2::model::config::Head::Score);
    let r = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let inputs: Vec<u32> = ints(&r, "inputs").iter().map(|&x| x as u32).collect();
    let lens: Vec<u32> = ints(&r, "lens").iter().map(|&x| x as u32).collect();
    let (b, t) = (lens.len(), inputs.len() / lens.len());
    let mut acts = Acts::new(&be, &model.cfg, b, t, true, LogitRows::All).unwrap();
    let mut gacts = GradActs::new(&be, &model.cfg, b, t).unwrap();

    // the reward model's path: the score at the last token of each sequence
    model.trunk(&be, &mut acts, &inputs, Some(&lens), None).unwrap();
    let at = Model::<CpuBackend>::last_rows(b, t, Some(&lens)).unwrap();
    let scores = model.score_rows(&be, &mut acts, &at).unwrap();
    let e = rel_err(&scores, &r.read("scores").unwrap().data);
    assert!(e <= SCORE_RTOL, "scores: rel err {e:.3e}");
    let w = r.read("w").unwrap().data;
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    model.backward_from(&be, &acts, &mut gacts, &mut grads, &inputs, Some(&lens), HeadGrad::Score { at: &at, dscore: &w }).unwrap();
    check_grads("score head (last token)", &grads_host(&be, &model, &grads), &r, "grad_scores.");

    // the value model's path: the head at every valid position
    let at: Vec<u32> = (0..b).flat_map(|s| (0..lens[s]).map(move |i| (s * t) as u32 + i)).collect();
    let values = model.score_rows(&be, &mut acts, &at).unwrap();
    let want = r.read("values").unwrap().data;
    let want: Vec<f32> = at.iter().map(|&i| want[i as usize]).collect();
    let e = rel_err(&values, &want);
    assert!(e <= SCORE_RTOL, "values: rel err {e:.3e}");
    let u = r.read("u").unwrap().data;
    let du: Vec<f32> = at.iter().map(|&i| u[i as usize]).collect();
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    model.backward_from(&be, &acts, &mut gacts, &mut grads, &inputs, Some(&lens), HeadGrad::Score { at: &at, dscore: &du }).unwrap();
    check_grads("score head (every position)", &grads_host(&be, &model, &grads), &r, "grad_values.");

    // a score model has no LM head, and says so
    let err = model.lm_head(&be, &mut acts, Some(&lens)).unwrap_err().to_string();
    assert!(err.contains("score head"), "{err}");
}

#[test]
fn score_model_round_trips_in_hf_format() {
    let be = CpuBackend::new(1).unwrap();
    let model = Model::load(&be, &fixture("seqcls")).unwrap();
    let tmp = std::env::temp_dir().join(format!("llama2-heads-{}", std::process::id()));
    model.save(&be, &tmp, llama2::model::weights::SaveDtype::F32).unwrap();
    let again = Model::load(&be, &tmp).unwrap();
    assert_eq!(again.cfg, model.cfg);
    assert_eq!(again.params_host(&be).unwrap(), model.params_host(&be).unwrap());
    let names: Vec<String> = Checkpoint::open(&tmp).unwrap().names().map(String::from).collect();
    assert!(names.iter().any(|n| n == "score.weight") && !names.iter().any(|n| n == "lm_head.weight"), "{names:?}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn batched_greedy_of_ragged_prompts_equals_one_at_a_time() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa");
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, &dir).unwrap();
    let mut rng = Rng::new(5);
    let prompts: Vec<Vec<u32>> = [1usize, 7, 30, 12, 2].iter().map(|&n| (0..n).map(|_| 3 + (rng.next_u64() % 250) as u32).collect()).collect();
    let new = 24;
    let cap = 30 + new;
    let mut gen = Generator::new(&be, &model, prompts.len(), cap).unwrap();
    let batched = gen.generate(&be, &model, &prompts, new, &Sampling::GREEDY, &mut Rng::new(0), false).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let mut one = Generator::new(&be, &model, 1, cap).unwrap();
        let alone = one.generate(&be, &model, std::slice::from_ref(p), new, &Sampling::GREEDY, &mut Rng::new(0), false).unwrap();
        assert_eq!(batched.ids[i], alone.ids[0], "prompt {i} (length {})", p.len());
    }
}

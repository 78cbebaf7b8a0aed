//! Golden parity with transformers' `LlamaForCausalLM` (fp32, CPU): logits,
//! loss, every parameter gradient and 50 greedy tokens, on the fixtures that
//! tools/scripts/make_fixtures.py writes (tests/fixtures/<name>/; see the
//! README there). Set `LLAMA2_FIXTURES_DIR` to a directory of freshly
//! generated fixtures (`--random-configs N`) to check those as well.

use llama2::model::generate::{Generator, Sampling};
use llama2::model::weights::Checkpoint;
use llama2::model::{Acts, GradActs, LogitRows, Model, ParamLayout};
use llama2::runtime::rng::Rng;
use llama2::runtime::{v, vm, Backend, BufKind, CeGrad, CpuBackend};
use std::path::{Path, PathBuf};

/// Logits: max |ours − ref| / max |ref| (the definition). f32
/// forward of a few layers: differences come from summation order only,
/// ~1e-6 relative; 1e-4 is the bar.
const LOGITS_RTOL: f64 = 1e-4;
/// Loss: relative difference, the bar.
const LOSS_RTOL: f64 = 1e-5;
/// Every gradient tensor: max abs diff / max abs ref, the bar.
const GRAD_RTOL: f64 = 1e-4;

fn fixture_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for name in ["gqa", "odd", "mha"] {
        dirs.push(root.join(name));
    }
    if let Ok(extra) = std::env::var("LLAMA2_FIXTURES_DIR") {
        let mut more: Vec<PathBuf> = std::fs::read_dir(&extra)
            .expect("LLAMA2_FIXTURES_DIR is not a readable directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("reference.safetensors").is_file())
            .collect();
        more.sort();
        assert!(!more.is_empty(), "no fixtures under LLAMA2_FIXTURES_DIR={extra}");
        dirs.extend(more);
    }
    dirs
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

fn check_fixture(dir: &Path) {
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, dir).unwrap();
    let cfg = model.cfg.clone();
    let reference = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let (tshape, tokens) = reference.read_ints("tokens").unwrap();
    let (b, t) = (tshape[0], tshape[1] - 1);
    let inputs: Vec<u32> = (0..b).flat_map(|r| tokens[r * (t + 1)..r * (t + 1) + t].iter().map(|&x| x as u32)).collect();
    let targets: Vec<i32> = (0..b).flat_map(|r| tokens[r * (t + 1) + 1..(r + 1) * (t + 1)].iter().map(|&x| x as i32)).collect();

    // forward: logits
    let mut acts = Acts::new(&be, &cfg, b, t, true, LogitRows::All).unwrap();
    model.forward(&be, &mut acts, &inputs, None).unwrap();
    let mut logits = vec![0f32; b * t * cfg.vocab_size];
    be.download(v(&acts.a.logits), &mut logits).unwrap();
    let want_logits = reference.read("logits").unwrap().data;
    let logits_err = rel_err(&logits, &want_logits);
    assert!(logits_err <= LOGITS_RTOL, "{}: logits rel err {logits_err:.3e}", dir.display());

    // loss and dlogits
    let count = targets.len();
    let (sum, n) = model.loss(&be, &mut acts, &targets, CeGrad::Uniform(1.0 / count as f32)).unwrap();
    assert_eq!(n, count);
    let loss = sum / n as f64;
    let want_loss = reference.read("loss").unwrap().data[0] as f64;
    let e = (loss - want_loss).abs() / want_loss.abs();
    assert!(e <= LOSS_RTOL, "{}: loss {loss} vs {want_loss} (rel {e:.3e})", dir.display());

    // backward: every parameter gradient
    let mut gacts = GradActs::new(&be, &cfg, b, t).unwrap();
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    model.backward(&be, &acts, &mut gacts, &mut grads, &inputs).unwrap();
    let mut g = vec![0f32; model.layout.total];
    be.download(v(&grads), &mut g).unwrap();
    let lay = ParamLayout::new(&cfg);
    let named = lay.to_host(&cfg, &g);
    let mut worst = (0f64, String::new());
    for (name, got) in &named {
        let want = reference.read(&format!("grad.{name}")).unwrap();
        assert_eq!(got.shape, want.shape, "{name}");
        let e = rel_err(&got.data, &want.data);
        if e > worst.0 {
            worst = (e, name.clone());
        }
        assert!(e <= GRAD_RTOL, "{}: grad of {name}: rel err {e:.3e}", dir.display());
    }
    assert!(reference.names().filter(|k| k.starts_with("grad.")).count() == named.len(), "every reference gradient is checked");
    eprintln!("{}: logits rel err {logits_err:.2e}, loss {loss:.6} vs {want_loss:.6}, worst grad {:.2e} ({})", dir.display(), worst.0, worst.1);

    // 50 greedy tokens through the KV cache
    let (_, prompt) = reference.read_ints("greedy_prompt").unwrap();
    let (_, want_ids) = reference.read_ints("greedy_ids").unwrap();
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let mut gen = Generator::new(&be, &model, 1, prompt.len() + want_ids.len()).unwrap();
    let out = gen.generate(&be, &model, &[prompt], want_ids.len(), &Sampling::GREEDY, &mut Rng::new(0), false).unwrap();
    let want: Vec<u32> = want_ids.iter().map(|&x| x as u32).collect();
    assert_eq!(out.ids[0], want, "{}: greedy tokens", dir.display());
}

#[test]
fn parity_with_transformers_on_every_fixture() {
    for dir in fixture_dirs() {
        check_fixture(&dir);
    }
}

#[test]
fn save_and_reload_round_trip_bit_exactly() {
    let be = CpuBackend::new(1).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa");
    let model = Model::load(&be, &dir).unwrap();
    let tmp = std::env::temp_dir().join(format!("llama2-roundtrip-{}", std::process::id()));
    model.save(&be, &tmp, llama2::model::weights::SaveDtype::F32).unwrap();
    let again = Model::load(&be, &tmp).unwrap();
    assert_eq!(again.cfg, model.cfg);
    assert_eq!(again.params_host(&be).unwrap(), model.params_host(&be).unwrap());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// One AdamW step (lr 1e-3, betas (0.9, 0.95), eps 1e-5, weight decay 0.1 on
/// matrices, clip 1.0) equals torch.optim.AdamW + clip_grad_norm_.
/// Optimizer alone (fed torch's own gradients): every weight within 1e-5
/// relative, the bar, plus an absolute floor `ADAMW_ATOL` for
/// weights that end up near zero, where a relative bound is meaningless.
/// The floor: the clipping factor comes from the global norm, which torch
/// sums in f32 and we in f64 (they agree to `GRAD_NORM_RTOL`); at step 1 the
/// update is lr·g/(|g| + eps), so a relative change of the factor moves a
/// weight by at most that much of lr: `GRAD_NORM_RTOL · lr` = 1e-8.
const ADAMW_RTOL: f64 = 1e-5;
const ADAMW_ATOL: f64 = GRAD_NORM_RTOL * 1e-3;
/// End to end (our gradients): per tensor, max abs diff / max abs ref
/// within 1e-5. Per element is not meaningful here: at step 1 the update is
/// lr·g/(|g| + eps), which for |g| near eps = 1e-5 amplifies the ~1e-6
/// gradient differences of two f32 implementations.
const STEP_RTOL: f64 = 1e-5;
/// Global gradient norm: torch sums the squares in f32 (per tensor, then
/// the norm of the norms), a relative rounding error up to ~log2(n)·2^-24
/// ≈ 1.2e-6 for n ≈ 1e6 elements; ours sums in f64. 1e-5 covers that with
/// margin and is far below any real difference (a missing tensor or a
/// wrong scale changes the norm by percents).
const GRAD_NORM_RTOL: f64 = 1e-5;
/// The 10-step loss trajectory: each step's loss within 1e-5 relative, plus
/// an absolute floor for runs that memorise their batch (losses of ~1e-3):
/// a token's loss is `lse - x_target` in f32 with logits of magnitude ~10,
/// whose rounding is ~10·2^-24 ≈ 6e-7 in either implementation.
const TRAJ_RTOL: f64 = 1e-5;
const TRAJ_ATOL: f64 = 1e-6;

fn fixture_batch(reference: &Checkpoint) -> (usize, usize, llama2::train::step::MicroBatch) {
    let (tshape, tokens) = reference.read_ints("tokens").unwrap();
    let (b, t) = (tshape[0], tshape[1] - 1);
    let mb = llama2::train::step::MicroBatch {
        inputs: (0..b).flat_map(|r| tokens[r * (t + 1)..r * (t + 1) + t].iter().map(|&x| x as u32)).collect(),
        targets: (0..b).flat_map(|r| tokens[r * (t + 1) + 1..(r + 1) * (t + 1)].iter().map(|&x| x as i32)).collect(),
    };
    (b, t, mb)
}

const TORCH_ADAMW: llama2::train::optim::AdamWConfig =
    llama2::train::optim::AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay: 0.1, grad_clip: 1.0 };

fn check_optimizer_alone(dir: &Path) {
    use llama2::train::optim::AdamW;
    let be = CpuBackend::new(2).unwrap();
    let mut model = Model::load(&be, dir).unwrap();
    let cfg = model.cfg.clone();
    let reference = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    // torch's gradients, laid out in our arena
    let mut gw = llama2::model::weights::HostWeights::new();
    for (_, _, name) in model.layout.hf_tensors(&cfg) {
        gw.insert(name.clone(), reference.read(&format!("grad.{name}")).unwrap());
    }
    let mut g = vec![0f32; model.layout.total];
    model.layout.load_host(&cfg, &gw, &mut g).unwrap();
    let mut grads = be.alloc(model.layout.total, BufKind::F32).unwrap();
    be.upload(vm(&mut grads), &g).unwrap();
    let mut opt = AdamW::new(&be, &model.layout, TORCH_ADAMW).unwrap();
    let st = opt.update(&be, &mut model.params, &grads, &model.layout, 1e-3).unwrap();
    let want_norm = reference.read("grad_norm").unwrap().data[0] as f64;
    assert!((st.grad_norm - want_norm).abs() <= GRAD_NORM_RTOL * want_norm, "grad norm {} vs {want_norm}", st.grad_norm);
    let after = model.layout.to_host(&cfg, &model.params_host(&be).unwrap());
    for (name, got) in &after {
        let want = reference.read(&format!("adamw.{name}")).unwrap();
        for (j, (&a, &w)) in got.data.iter().zip(&want.data).enumerate() {
            let d = (a as f64 - w as f64).abs();
            assert!(d <= ADAMW_RTOL * (w as f64).abs() + ADAMW_ATOL, "{}: {name}[{j}] after one AdamW step from torch's gradients: {a} vs {w}", dir.display());
        }
    }
}

fn check_optimizer(dir: &Path) {
    use llama2::train::step::LmTrainer;
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load(&be, dir).unwrap();
    let cfg = model.cfg.clone();
    let reference = Checkpoint::open(&dir.join("reference.safetensors")).unwrap();
    let (b, t, mb) = fixture_batch(&reference);
    let mut tr = LmTrainer::new(&be, model, b, t, TORCH_ADAMW).unwrap();
    let traj = reference.read("traj_loss").unwrap().data;
    for (i, &want) in traj.iter().enumerate() {
        let st = tr.step(&be, std::slice::from_ref(&mb), 1e-3).unwrap();
        let d = (st.loss - want as f64).abs();
        assert!(d <= TRAJ_RTOL * (want as f64).abs() + TRAJ_ATOL, "{}: step {i} loss {} vs {want} (rel {:.2e})", dir.display(), st.loss, d / want as f64);
        if i == 0 {
            let after = tr.model.layout.to_host(&cfg, &tr.model.params_host(&be).unwrap());
            for (name, got) in &after {
                let want = reference.read(&format!("adamw.{name}")).unwrap();
                let e = rel_err(&got.data, &want.data);
                assert!(e <= STEP_RTOL, "{}: {name} after one training step: rel err {e:.2e}", dir.display());
            }
        }
    }
}

#[test]
fn adamw_step_and_ten_step_trajectory_match_torch() {
    for dir in fixture_dirs() {
        check_optimizer_alone(&dir);
        check_optimizer(&dir);
    }
}

/// A model saved as bf16, f16 and as shards with `model.safetensors.index.json`
/// loads to the same weights (bf16/f16: the same values rounded).
#[test]
fn sharded_and_half_precision_checkpoints_load() {
    use llama2::model::weights::{save_safetensors, HostWeights, SaveDtype};
    let be = CpuBackend::new(1).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gqa");
    let model = Model::load(&be, &src).unwrap();
    let want = model.params_host(&be).unwrap();
    let named = model.to_hf(&be).unwrap();
    let tmp = std::env::temp_dir().join(format!("llama2-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(src.join("config.json"), tmp.join("config.json")).unwrap();
    // two shards and an index, as transformers writes them
    let (mut a, mut b) = (HostWeights::new(), HostWeights::new());
    let mut map = serde_json::Map::new();
    for (i, (k, t)) in named.iter().enumerate() {
        let (dst, file) = if i % 2 == 0 { (&mut a, "model-00001-of-00002.safetensors") } else { (&mut b, "model-00002-of-00002.safetensors") };
        dst.insert(k.clone(), t.clone());
        map.insert(k.clone(), serde_json::json!(file));
    }
    save_safetensors(&tmp.join("model-00001-of-00002.safetensors"), &a, SaveDtype::F32, None).unwrap();
    save_safetensors(&tmp.join("model-00002-of-00002.safetensors"), &b, SaveDtype::F32, None).unwrap();
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(tmp.join("model.safetensors.index.json"), index.to_string()).unwrap();
    assert_eq!(Model::load(&be, &tmp).unwrap().params_host(&be).unwrap(), want, "sharded");
    // bf16 and f16: each weight equals the f32 one rounded to that type
    for f in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"] {
        std::fs::remove_file(tmp.join(f)).unwrap();
    }
    save_safetensors(&tmp.join("model.safetensors"), &named, SaveDtype::BF16, None).unwrap();
    let got = Model::load(&be, &tmp).unwrap().params_host(&be).unwrap();
    assert!(got.iter().zip(&want).all(|(g, w)| *g == half::bf16::from_f32(*w).to_f32()), "bf16");
    // f16 by hand (SaveDtype has no f16; transformers writes it)
    let mut bytes_of: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (k, t) in &named {
        bytes_of.push((k.clone(), t.shape.clone(), t.data.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        bytes_of.iter().map(|(k, s, d)| (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), d).unwrap())).collect();
    std::fs::write(tmp.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let got = Model::load(&be, &tmp).unwrap().params_host(&be).unwrap();
    assert!(got.iter().zip(&want).all(|(g, w)| *g == half::f16::from_f32(*w).to_f32()), "f16");
    let _ = std::fs::remove_dir_all(&tmp);
}

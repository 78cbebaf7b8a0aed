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
    for name in ["gqa", "odd", "tied"] {
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
    let e = rel_err(&logits, &want_logits);
    assert!(e <= LOGITS_RTOL, "{}: logits rel err {e:.3e}", dir.display());

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
    eprintln!("{}: logits ok, loss {loss:.6} vs {want_loss:.6}, worst grad {:.2e} ({})", dir.display(), worst.0, worst.1);

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
    let _ = vm::<llama2::runtime::CpuBuf>;
}

//! `train-tool ppo` end to end on a task whose reward the test knows: a
//! reward model built by hand scores a sequence by how often it holds the
//! token G (its attention averages an indicator of G over the sequence; no
//! training), so the gold reward of an answer is its share of G tokens,
//! computed here independently of any model.
//!
//! - PPO raises the reward model's mean reward on held-out prompts over the
//!   iterations, the KL to the reference stays finite and is reported, and
//!   the gold share of G in held-out answers of the final policy exceeds
//!   the starting policy's;
//! - with a large beta the policy stays near the reference (smaller KL,
//!   smaller gain);
//! - N iterations straight equal N/2 + resume + N/2, bit for bit.

use llama2_model::config::Head;
use llama2_model::generate::{Generator, Sampling};
use llama2_model::weights::{HostTensor, HostWeights, SaveDtype};
use llama2_model::{Config, Model, ParamLayout};
use llama2_runtime::rng::Rng;
use llama2_runtime::CpuBackend;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const G: u32 = 5;
const VOCAB: usize = 32;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-ppo-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The hand-built reward model: score = 3 · norm(x_last + mean_pos(1[G]) e2)[2].
fn write_rm(dir: &Path) {
    let be = CpuBackend::new(1).unwrap();
    let mut cfg = Config::new(VOCAB, 16, 16, 1, 2, 1);
    cfg.head = Head::Score;
    cfg.pad_id = Some(0);
    cfg.max_seq_len = 64;
    let lay = ParamLayout::new(&cfg);
    let mut w = HostWeights::new();
    for (id, _, name) in lay.hf_tensors(&cfg) {
        let shape = id.hf_shape(&cfg);
        w.insert(name, HostTensor::new(shape.clone(), vec![0.0; shape.iter().product()]));
    }
    let set = |w: &mut HostWeights, name: &str, idx: usize, val: f32| w.get_mut(name).unwrap().data[idx] = val;
    for t in 0..VOCAB {
        set(&mut w, "model.embed_tokens.weight", t * 16 + 1, 1.0); // a constant component
    }
    set(&mut w, "model.embed_tokens.weight", G as usize * 16, 1.0); // the indicator of G
    for n in ["model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight", "model.norm.weight"] {
        w.get_mut(n).unwrap().data.fill(1.0);
    }
    // q = k = 0: uniform attention over the visible positions; v[0] = x[0]
    set(&mut w, "model.layers.0.self_attn.v_proj.weight", 0, 1.0);
    // the attention output's dim 0 (head 0) into residual dim 2
    set(&mut w, "model.layers.0.self_attn.o_proj.weight", 2 * 16, 1.0);
    set(&mut w, "score.weight", 2, 3.0);
    let mut host = vec![0f32; lay.total];
    lay.load_host(&cfg, &w, &mut host).unwrap();
    Model::from_host(&be, cfg, &host).unwrap().save(&be, dir, SaveDtype::F32).unwrap();
}

fn write_policy(dir: &Path) {
    let be = CpuBackend::new(1).unwrap();
    let mut cfg = Config::new(VOCAB, 32, 64, 1, 2, 1);
    cfg.max_seq_len = 64;
    Model::init_random(&be, cfg, 3).unwrap().save(&be, dir, SaveDtype::F32).unwrap();
}

fn prompts(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| std::iter::once(1).chain((0..2 + rng.below(4)).map(|_| 6 + rng.below(VOCAB as u64 - 6) as u32)).collect()).collect()
}

fn write_prompts(path: &Path, ps: &[Vec<u32>]) {
    let lines: Vec<String> = ps.iter().map(|p| serde_json::json!({ "prompt_ids": p }).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Share of G among the answer tokens of the policy on `ps` (sampled at
/// temperature 1 from fixed streams): the gold reward.
fn gold(policy: &Path, ps: &[Vec<u32>]) -> f64 {
    let be = CpuBackend::new(2).unwrap();
    let m = Model::load(&be, policy).unwrap();
    let s = Sampling { temperature: 1.0, top_k: None, top_p: None };
    let (mut g, mut n) = (0usize, 0usize);
    for (i, p) in ps.iter().enumerate() {
        for k in 0..4 {
            let mut gen = Generator::new(&be, &m, 1, p.len() + 8).unwrap();
            let out = gen.generate(&be, &m, std::slice::from_ref(p), 8, &s, &mut Rng::derive(99, &format!("gold/{i}/{k}")), true).unwrap();
            g += out.ids[0].iter().filter(|&&x| x == G).count();
            n += out.ids[0].len();
        }
    }
    g as f64 / n as f64
}

fn ppo(root: &Path, out: &Path, beta: &str, iterations: &str, extra: &[&str]) -> Vec<Value> {
    let s = |p: PathBuf| p.to_str().unwrap().to_string();
    let args = [
        "ppo",
        "--policy",
        &s(root.join("policy")),
        "--rm",
        &s(root.join("rm")),
        "--prompts",
        &s(root.join("train.jsonl")),
        "--val-prompts",
        &s(root.join("val.jsonl")),
        "--iterations",
        iterations,
        "--prompts-per-iter",
        "32",
        "--minibatch",
        "16",
        "--micro-batch",
        "8",
        "--max-new-tokens",
        "8",
        "--lr",
        "3e-3",
        "--value-lr",
        "3e-3",
        "--beta",
        beta,
        "--out",
        &s(out.to_path_buf()),
        "--seed",
        "11",
        "--threads",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_train-tool")).args(args).args(extra).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "ppo failed: {err}");
    assert!(err.contains("memory plan"), "the memory plan is printed: {err}");
    std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn ppo_raises_the_held_out_reward_and_beta_keeps_it_near_the_reference() {
    let root = tmpdir("learn");
    write_rm(&root.join("rm"));
    write_policy(&root.join("policy"));
    write_prompts(&root.join("train.jsonl"), &prompts(64, 1));
    let val = prompts(16, 2);
    write_prompts(&root.join("val.jsonl"), &val);

    let recs = ppo(&root, &root.join("run"), "0.01", "8", &[]);
    assert_eq!(recs.len(), 8);
    let vr: Vec<f64> = recs.iter().map(|r| r["val_reward"].as_f64().unwrap()).collect();
    let kl: Vec<f64> = recs.iter().map(|r| r["kl"].as_f64().unwrap()).collect();
    eprintln!("held-out reward by iteration {vr:?}\nKL {kl:?}");
    assert!(kl.iter().all(|k| k.is_finite()), "KL reported and finite");
    assert!(vr[7] > vr[0] + 0.1, "held-out reward rises: {vr:?}");
    for k in ["clip_frac", "approx_kl", "entropy", "answer_len", "eos_rate", "explained_variance", "value_loss", "policy_loss"] {
        assert!(recs[7][k].as_f64().is_some_and(|x| x.is_finite()), "{k} logged");
    }
    assert!(recs[7]["seconds"]["generate"].as_f64().is_some());
    for f in ["ppo_reward.png", "ppo_kl.png", "final/policy/model.safetensors", "final/value/model.safetensors"] {
        assert!(root.join("run").join(f).is_file(), "{f}");
    }
    let (g0, g1) = (gold(&root.join("policy"), &val), gold(&root.join("run/final/policy"), &val));
    eprintln!("gold share of G on held-out prompts: {g0:.3} -> {g1:.3}");
    assert!(g1 > g0 + 0.05, "the gold reward rises: {g0} -> {g1}");

    // beta large: the KL penalty holds the policy near the reference
    let tight = ppo(&root, &root.join("tight"), "2.0", "8", &[]);
    let kl_tight = tight[7]["kl"].as_f64().unwrap();
    let gt = gold(&root.join("tight/final/policy"), &val);
    eprintln!("beta 2.0: KL {kl_tight:.4} (beta 0.01: {:.4}), gold {gt:.3}", kl[7]);
    assert!(kl_tight < kl[7], "KL with beta 2.0 {kl_tight} vs beta 0.01 {}", kl[7]);
    assert!(gt < g1, "the gain is smaller with beta large: {gt} vs {g1}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn ppo_resume_is_exact() {
    let root = tmpdir("resume");
    write_rm(&root.join("rm"));
    write_policy(&root.join("policy"));
    write_prompts(&root.join("train.jsonl"), &prompts(40, 4));
    write_prompts(&root.join("val.jsonl"), &prompts(8, 5));
    ppo(&root, &root.join("straight"), "0.01", "4", &[]);
    ppo(&root, &root.join("halves"), "0.01", "4", &["--stop-after", "2"]);
    let halves = root.join("halves");
    ppo(&root, &halves, "0.01", "4", &["--resume", halves.to_str().unwrap()]);
    for m in ["policy", "value"] {
        let a = std::fs::read(root.join("straight/final").join(m).join("model.safetensors")).unwrap();
        let b = std::fs::read(root.join("halves/final").join(m).join("model.safetensors")).unwrap();
        assert!(a == b, "{m}: 4 straight vs 2 + resume + 2 differ");
    }
    let (a, b) = (std::fs::read_to_string(root.join("straight/metrics.jsonl")).unwrap(), std::fs::read_to_string(root.join("halves/metrics.jsonl")).unwrap());
    let strip = |s: &str| -> Vec<Value> {
        s.lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().retain(|k, _| k != "seconds" && k != "elapsed_s");
                v
            })
            .collect()
    };
    assert_eq!(strip(&a), strip(&b), "the metrics of the two runs agree");
    let _ = std::fs::remove_dir_all(&root);
}

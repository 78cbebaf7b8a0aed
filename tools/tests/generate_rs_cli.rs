//! `train-tool generate-batch` and `train-tool rs` from the command line:
//! output format and order, the same answers at any batch size, every
//! stage file of a rejection-sampling run, continuing a run with more
//! iterations (finished stages are not redone; the pool keeps the best of
//! all iterations), and clear errors for bad input.

use llama2_model::config::Head;
use llama2_model::weights::SaveDtype;
use llama2_model::{Config, Model};
use llama2_runtime::CpuBackend;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
}

/// The batched-generation fixture: a LlamaForCausalLM, vocab 256, 256 positions.
fn policy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gen")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-genrs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A random reward model (score head) with the policy's vocabulary.
fn reward_model(dir: &Path) -> PathBuf {
    let be = CpuBackend::new(1).unwrap();
    let mut cfg = Config::new(256, 32, 48, 1, 2, 1);
    cfg.max_seq_len = 128;
    cfg.head = Head::Score;
    let m = Model::init_random(&be, cfg, 7).unwrap();
    let p = dir.join("rm");
    m.save(&be, &p, SaveDtype::F32).unwrap();
    p
}

fn write_prompts(path: &Path, prompts: &[Vec<u32>]) {
    let text: String = prompts.iter().map(|p| format!("{}\n", serde_json::json!({"prompt_ids": p}))).collect();
    std::fs::write(path, text).unwrap();
}

fn prompts(n: usize, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = llama2_runtime::rng::Rng::new(seed);
    (0..n).map(|i| std::iter::once(1).chain((0..2 + i % 5).map(|_| 3 + rng.below(250) as u32)).collect()).collect()
}

fn run_ok(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?} failed: {err}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn fails(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    err
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn generate_batch_writes_answers_in_input_order_whatever_the_batch() {
    let d = tmpdir("gb");
    let input = d.join("in.jsonl");
    write_prompts(&input, &prompts(5, 1));
    let mut outs = Vec::new();
    for b in ["1", "4"] {
        let out = d.join(format!("out{b}.jsonl"));
        let stdout = run_ok(&[
            "generate-batch",
            "--model",
            s(&policy()),
            "--input",
            s(&input),
            "--out",
            s(&out),
            "--max-new-tokens",
            "6",
            "--samples-per-prompt",
            "3",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            "5",
            "--batch-size",
            b,
            "--logprobs",
            "--threads",
            "1",
            "--quiet",
        ]);
        let totals: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        let recs = lines(&out);
        assert_eq!(recs.len(), 15);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!((r["prompt_index"].as_u64(), r["sample"].as_u64()), (Some(i as u64 / 3), Some(i as u64 % 3)), "{r}");
            let n = r["ids"].as_array().unwrap().len();
            let fin = r["finish"].as_str().unwrap();
            assert!((fin == "length" && n == 6) || (fin == "eos" && r["ids"][n - 1] == 2), "{r}");
            assert_eq!(r["logprobs"].as_array().unwrap().len(), n);
        }
        let tokens: usize = recs.iter().map(|r| r["ids"].as_array().unwrap().len()).sum();
        assert_eq!(totals["generated_tokens"].as_u64(), Some(tokens as u64), "{totals}");
        assert_eq!(totals["answers"].as_u64(), Some(15));
        assert!(totals["tokens_per_s"].as_f64().unwrap() > 0.0);
        outs.push(std::fs::read_to_string(&out).unwrap());
    }
    assert_eq!(outs[0], outs[1], "batch 1 and batch 4 wrote different answers");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn generate_batch_bad_input_is_a_clear_error() {
    let d = tmpdir("gbbad");
    let out = d.join("out.jsonl");
    let pol = policy();
    let gen = |input: &str, extra: &[&str]| {
        let p = d.join("in.jsonl");
        std::fs::write(&p, input).unwrap();
        let mut a = vec!["generate-batch", "--model", s(&pol), "--input", s(&p), "--out", s(&out), "--max-new-tokens", "4", "--threads", "1"];
        a.extend_from_slice(extra);
        fails(&a)
    };
    let e = gen("{\"prompt_ids\": [1, 5]}\n{\"prompt_ids\": []}\n", &[]);
    assert!(e.contains("line 2") && e.contains("empty") && e.contains("HINT"), "{e}");
    let long = serde_json::json!({"prompt_ids": vec![5u32; 256]}).to_string();
    let e = gen(&long, &[]);
    assert!(e.contains("256 tokens") && e.contains("context is 256") && e.contains("HINT"), "{e}");
    let e = gen("{\"prompt_ids\": [1, 5]\n", &[]);
    assert!(e.contains("line 1") && e.contains("not valid JSON"), "{e}");
    let e = gen("{\"prompt\": \"hello\"}\n", &[]);
    assert!(e.contains("needs a tokenizer"), "{e}");
    let e = gen("{\"prompt_ids\": [1, 300]}\n", &[]);
    assert!(e.contains("outside the vocabulary"), "{e}");
    let e = gen("{\"prompt_ids\": [1, 5]}\n", &["--samples-per-prompt", "0"]);
    assert!(e.contains("--samples-per-prompt"), "{e}");
    let e = gen("{\"prompt_ids\": [1, 5]}\n", &["--samples-per-prompt", "2"]);
    assert!(e.contains("temperature 0") && e.contains("HINT"), "{e}");
    // a reward model is not a policy
    let rm = reward_model(&d);
    let p = d.join("in.jsonl");
    std::fs::write(&p, "{\"prompt_ids\": [1, 5]}\n").unwrap();
    let e = fails(&["generate-batch", "--model", s(&rm), "--input", s(&p), "--out", s(&out), "--max-new-tokens", "4", "--threads", "1"]);
    assert!(e.contains("score head") && e.contains("HINT"), "{e}");
    assert!(!out.exists(), "no output after an error");
    std::fs::remove_dir_all(&d).unwrap();
}

fn rs_args(d: &Path, rm: &Path, iterations: &str, k: &str) -> Vec<String> {
    rs_args_in(d, "run", rm, iterations, k)
}

fn rs_args_in(d: &Path, run: &str, rm: &Path, iterations: &str, k: &str) -> Vec<String> {
    let run = d.join(run);
    [
        "rs",
        "--policy",
        s(&policy()),
        "--rm",
        s(rm),
        "--prompts",
        s(&d.join("train.jsonl")),
        "--eval-prompts",
        s(&d.join("held.jsonl")),
        "--k",
        k,
        "--iterations",
        iterations,
        "--out",
        s(&run),
        "--max-new-tokens",
        "8",
        "--batch-size",
        "2",
        "--seq-len",
        "16",
        "--epochs",
        "1",
        "--lr",
        "1e-3",
        "--eval-samples",
        "2",
        "--temperatures",
        "0.7,1.0",
        "--threads",
        "1",
        "--quiet",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect()
}

fn rs(args: &[String]) -> std::process::Output {
    tool().args(args).output().unwrap()
}

#[test]
fn rs_writes_every_stage_and_continues_with_more_iterations() {
    let d = tmpdir("rs");
    let rm = reward_model(&d);
    write_prompts(&d.join("train.jsonl"), &prompts(6, 2));
    write_prompts(&d.join("held.jsonl"), &prompts(3, 3));
    let out = rs(&rs_args(&d, &rm, "1", "3"));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = d.join("run");
    let it1 = run.join("iter-1");
    for f in ["samples.jsonl", "pool.jsonl", "figure7.json", "figure7.png", "figure8.json", "figure8.png", "rewards.json", "eval.json", "sft/final/config.json"]
    {
        assert!(it1.join(f).is_file(), "missing iter-1/{f}");
    }
    for f in ["eval-0.json", "summary.json", "rs_rewards.png", "rs.config.json"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let samples = lines(&it1.join("samples.jsonl"));
    assert_eq!(samples.len(), 18);
    for r in &samples {
        let x = r["reward"].as_f64().unwrap();
        assert!(x > 0.0 && x < 1.0 && r["rm"] == "helpfulness" && r["helpfulness"].is_number(), "{r}");
    }
    let pool1 = lines(&it1.join("pool.jsonl"));
    assert_eq!(pool1.len(), 6);
    // each prompt's kept answer is its best sample (ties: the first)
    for p in &pool1 {
        let i = p["prompt_index"].as_u64().unwrap();
        let best = samples.iter().filter(|r| r["prompt_index"].as_u64() == Some(i)).map(|r| r["reward"].as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert_eq!(p["reward"].as_f64().unwrap(), best, "{p}");
    }
    let fig7: Value = serde_json::from_str(&std::fs::read_to_string(it1.join("figure7.json")).unwrap()).unwrap();
    assert_eq!(fig7["best_of_n"]["n"].as_array().unwrap().len(), 3);
    let fig8: Value = serde_json::from_str(&std::fs::read_to_string(it1.join("figure8.json")).unwrap()).unwrap();
    assert_eq!(fig8["curves"].as_array().unwrap().len(), 2);
    let samples_text = std::fs::read_to_string(it1.join("samples.jsonl")).unwrap();

    // continue: iteration 1 is not redone, iteration 2 is added
    let out = rs(&rs_args(&d, &rm, "2", "3"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("continuing the run"), "{err}");
    assert!(!err.contains("rs-sft-1"), "iteration 1 was fine-tuned again: {err}");
    assert_eq!(std::fs::read_to_string(it1.join("samples.jsonl")).unwrap(), samples_text);
    let pool2 = lines(&run.join("iter-2/pool.jsonl"));
    assert_eq!(pool2.len(), 6);
    for p in &pool2 {
        let i = p["prompt_index"].as_u64();
        let old = pool1.iter().find(|q| q["prompt_index"].as_u64() == i).unwrap();
        assert!(p["reward"].as_f64() >= old["reward"].as_f64(), "the pool lost a better answer: {p} vs {old}");
    }
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["iterations"].as_array().unwrap().len(), 2);
    assert!(summary["eval_mean_reward_start"].is_number());

    // other settings in the same run directory: refused
    let out = rs(&rs_args(&d, &rm, "2", "4"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--k") && err.contains("HINT"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn rs_bad_input_is_a_clear_error() {
    let d = tmpdir("rsbad");
    write_prompts(&d.join("train.jsonl"), &prompts(4, 2));
    write_prompts(&d.join("held.jsonl"), &prompts(2, 3));
    // the policy as the reward model
    let e = rs(&rs_args(&d, &policy(), "1", "2"));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("not a reward model") && err.contains("HINT") && !err.contains("panicked"), "{err}");
    let rm = reward_model(&d);
    let e = rs(&rs_args_in(&d, "run0", &rm, "1", "0"));
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("--k"), "{err}");
    // answers longer than the reward model's context (128)
    let a: Vec<String> = rs_args_in(&d, "run1", &rm, "1", "2").into_iter().map(|x| if x == "8" { "200".into() } else { x }).collect();
    let e = rs(&a);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && err.contains("context of 128") && err.contains("HINT"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
}

//! Reward models end to end through `train-tool rm ...`:
//! - parity with transformers' `LlamaForSequenceClassification` and torch
//!   autograd of the margin ranking loss (fixtures from
//!   tools/scripts/make_rm_fixtures.py, a directory saved by transformers):
//!   `rm score`, `debug rm-grads` (two margin/centring settings), the mean
//!   loss of `rm eval` for each margin table, the golden losses;
//! - `rm init` copies the trunk bit for bit, draws the score head seeded
//!   and picks a pad id that is not EOS;
//! - it learns: a tiny reward model trained on a synthetic preference set
//!   (a hidden scoring function, Bradley-Terry noise, ratings binned from
//!   the gold gap) reaches >= 75% held-out accuracy, and its accuracy falls
//!   from "significantly better" to "negligibly better" (the paper's Table 8);
//! - text pairs in LLaMA-Factory's format (dpo_en_demo.json) train with the
//!   Llama 2 tokenizer; a run resumes exactly;
//! - bad input: a clear error naming the file and record, non-zero exit, no
//!   panic, nothing written.

use llama2_model::weights::Checkpoint;
use llama2_runtime::rng::Rng;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Scores: max |ours - transformers| / max |transformers| (the bar of
/// tests/heads.rs: f32 throughout, ~1e-7 from summation order).
const SCORE_RTOL: f64 = 1e-4;
/// Every gradient tensor against torch autograd: the bar of tests/parity.rs.
const GRAD_RTOL: f64 = 1e-4;
/// Mean losses: f32 scores, the loss in f64 here and f32 in torch: a few
/// f32 ulps of values ~1.
const LOSS_RTOL: f64 = 1e-5;
/// The golden losses of the issue are given to 7 decimals.
const GOLDEN_ATOL: f64 = 5e-8;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/rm").join(name)
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-rm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the tool, expects success; returns stdout.
fn ok(args: &[&str]) -> String {
    let o = tool().args(args).output().unwrap();
    assert!(o.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// Runs the tool, expects failure without a panic; returns stderr.
fn fails(args: &[&str]) -> String {
    let o = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert!(err.contains("HINT"), "no HINT for {args:?}: {err}");
    err
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

fn reference() -> Checkpoint {
    Checkpoint::open(&fixture("rm/reference.safetensors")).unwrap()
}

#[test]
fn score_matches_transformers_on_a_directory_it_saved() {
    let out = ok(&["rm", "score", "--model", s(&fixture("rm")), "--input", s(&fixture("rm/score.jsonl")), "--threads", "2", "--batch-size", "5"]);
    let lines: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let got: Vec<f32> = lines.iter().map(|v| v["score"].as_f64().unwrap() as f32).collect();
    let want = reference().read("scores").unwrap().data;
    let e = rel_err(&got, &want);
    assert!(e <= SCORE_RTOL, "rm score vs transformers: rel err {e:.3e}");
    for v in &lines {
        let (sc, p) = (v["score"].as_f64().unwrap(), v["prob"].as_f64().unwrap());
        assert!((p - 1.0 / (1.0 + (-sc).exp())).abs() < 1e-12, "prob is sigmoid(score): {v}");
    }
    eprintln!("rm score vs transformers: {} sequences, rel err {e:.2e}", got.len());
}

#[test]
fn rm_grads_match_torch_autograd_of_the_margin_loss() {
    let d = tmpdir("grads");
    let r = reference();
    for (tag, margin, center) in [("small", "small", "0"), ("large_center", "large", "0.05")] {
        let g = d.join(format!("{tag}.safetensors"));
        let out = ok(&[
            "debug",
            "rm-grads",
            "--model",
            s(&fixture("rm")),
            "--pairs",
            s(&fixture("rm/pairs.jsonl")),
            "--margin",
            margin,
            "--center-coef",
            center,
            "--out",
            s(&g),
            "--threads",
            "2",
        ]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        let loss = v["loss"].as_f64().unwrap();
        let want = r.read(&format!("loss.{tag}")).unwrap().data[0] as f64;
        assert!((loss - want).abs() <= LOSS_RTOL * want, "{tag}: loss {loss} vs torch {want}");
        let ours = Checkpoint::open(&g).unwrap();
        let prefix = format!("grad.{tag}.");
        let names: Vec<String> = r.names().filter(|n| n.starts_with(&prefix)).map(String::from).collect();
        assert_eq!(names.len(), ours.names().count(), "{tag}: every parameter has a reference gradient");
        let mut worst = (0f64, String::new());
        for n in &names {
            let hf = &n[prefix.len()..];
            let (a, b) = (ours.read(hf).unwrap(), r.read(n).unwrap());
            assert_eq!(a.shape, b.shape, "{hf}");
            let e = rel_err(&a.data, &b.data);
            assert!(e <= GRAD_RTOL, "{tag}: grad of {hf}: rel err {e:.3e}");
            if e > worst.0 {
                worst = (e, hf.to_string());
            }
        }
        eprintln!("{tag}: loss {loss:.7} (torch {want:.7}); {} gradients, worst rel err {:.2e} ({})", names.len(), worst.0, worst.1);
    }
}

#[test]
fn eval_losses_per_margin_table_and_golden_losses() {
    let r = reference();
    for m in ["none", "small", "large"] {
        let out = ok(&["rm", "eval", "--model", s(&fixture("rm")), "--data", s(&fixture("rm/pairs.jsonl")), "--margin", m, "--threads", "2"]);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        let (loss, want) = (v["loss"].as_f64().unwrap(), r.read(&format!("loss.{m}")).unwrap().data[0] as f64);
        assert!((loss - want).abs() <= LOSS_RTOL * want, "margin {m}: eval loss {loss} vs torch {want}");
        assert_eq!(v["overall"]["pairs"], 6);
    }
    // the issue's numbers, torch's -logsigmoid (float64, stored as f32) and ours
    #[allow(clippy::approx_constant)] // 0.6931472 is log 2 as the issue writes it, to 7 decimals
    let issue = [0.3132617, 0.4143701, 0.5403056, 0.6931472, 2.1269280];
    let torch = r.read("golden").unwrap().data;
    for (i, m) in [0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 3.0].into_iter().enumerate() {
        let ours = llama2_train::reward::ranking_loss(1.0 - m).0;
        assert!((ours - issue[i]).abs() <= GOLDEN_ATOL, "m = {m}: ours {ours} vs {}", issue[i]);
        assert!((torch[i] as f64 - issue[i]).abs() <= GOLDEN_ATOL + 1e-7, "m = {m}: torch {} vs {}", torch[i], issue[i]);
    }
}

#[test]
fn init_copies_the_trunk_and_draws_a_seeded_head() {
    let d = tmpdir("init");
    let (a, b, c) = (d.join("a"), d.join("b"), d.join("c"));
    ok(&["rm", "init", "--init", s(&fixture("lm")), "--out", s(&a), "--seed", "5"]);
    ok(&["rm", "init", "--init", s(&fixture("lm")), "--out", s(&b), "--seed", "5"]);
    ok(&["rm", "init", "--init", s(&fixture("lm")), "--out", s(&c), "--seed", "6"]);
    let (lm, rm) = (Checkpoint::open(&fixture("lm")).unwrap(), Checkpoint::open(&a).unwrap());
    let mut trunk = 0;
    for n in lm.names().filter(|n| n.starts_with("model.")) {
        let (x, y) = (lm.read(n).unwrap(), rm.read(n).unwrap());
        assert_eq!(x.shape, y.shape, "{n}");
        assert!(x.data.iter().zip(&y.data).all(|(p, q)| p.to_bits() == q.to_bits()), "{n} is not bit-identical");
        trunk += 1;
    }
    let extra: Vec<&str> = rm.names().filter(|n| !n.starts_with("model.")).collect();
    assert_eq!(extra, vec!["score.weight"]);
    assert_eq!(rm.names().count(), trunk + 1);
    let w = rm.read("score.weight").unwrap();
    assert_eq!(w.shape, vec![1, 64]);
    // std 1/sqrt(65) = 0.124; 64 draws estimate it within ~9% (1/sqrt(2n)); 4 sigma
    let std = (w.data.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / 64.0).sqrt();
    assert!((std * 65f64.sqrt() - 1.0).abs() < 0.36, "score.weight std {std}");
    let (wb, wc) = (Checkpoint::open(&b).unwrap().read("score.weight").unwrap(), Checkpoint::open(&c).unwrap().read("score.weight").unwrap());
    assert_eq!(w.data, wb.data, "the same seed draws the same head");
    assert_ne!(w.data, wc.data, "another seed draws another head");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(a.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForSequenceClassification");
    // the LM ships pad_token_id = eos (2); transformers would then pool before EOS
    assert_eq!(cfg["pad_token_id"], 0, "pad must be neither EOS nor BOS");
}

/// A synthetic preference task: prompts and answers of random content
/// tokens; the hidden quality of an answer is the mean of a fixed random
/// value per token; the chosen answer is drawn by Bradley-Terry with
/// P(a preferred) = sigmoid(BETA * (g(a) - g(b))); the rating is the
/// quartile of |g(a) - g(b)| (largest: significantly better).
struct Synthetic {
    w: Vec<f64>,
}

const VOCAB: usize = 64;
const BETA: f64 = 6.0;
const ANSWER: usize = 6;

impl Synthetic {
    fn new(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        Synthetic { w: (0..VOCAB).map(|i| if i < 3 { 0.0 } else { rng.normal() as f64 }).collect() }
    }

    fn quality(&self, answer: &[u32]) -> f64 {
        answer.iter().map(|&t| self.w[t as usize]).sum::<f64>() / answer.len() as f64
    }

    /// (record, gold gap of chosen minus rejected) per pair.
    fn pairs(&self, n: usize, seed: u64) -> Vec<(Value, f64)> {
        let mut rng = Rng::new(seed);
        let tok = |rng: &mut Rng| 3 + rng.below(VOCAB as u64 - 3) as u32;
        let mut raw = Vec::new();
        for _ in 0..n {
            let prompt: Vec<u32> = std::iter::once(1).chain((0..3).map(|_| tok(&mut rng))).collect();
            let mut ans = || (0..ANSWER).map(|_| tok(&mut rng)).collect::<Vec<u32>>();
            let (a, b) = (ans(), ans());
            let gap = self.quality(&a) - self.quality(&b);
            let p_a = 1.0 / (1.0 + (-BETA * gap).exp());
            let a_wins = rng.next_f64() < p_a;
            let (c, r) = if a_wins { (a, b) } else { (b, a) };
            raw.push((prompt, c, r, if a_wins { gap } else { -gap }));
        }
        raw.into_iter()
            .map(|(p, mut c, mut r, g)| {
                c.push(2);
                r.push(2);
                (json!({"prompt_ids": p, "chosen_ids": c, "rejected_ids": r}), g)
            })
            .collect()
    }
}

fn write_jsonl(path: &Path, recs: &[Value]) {
    let text: String = recs.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A causal LM with random weights (vocab 64, C 64, 2 layers, 4 heads / 2 KV).
fn tiny_lm(dir: &Path, vocab: usize, max_seq: usize) {
    let be = llama2_runtime::CpuBackend::new(1).unwrap();
    let mut cfg = llama2_model::Config::new(vocab, 64, 128, 2, 4, 2);
    cfg.max_seq_len = max_seq;
    let m = llama2_model::Model::init_random(&be, cfg, 3).unwrap();
    m.save(&be, dir, llama2_model::weights::SaveDtype::F32).unwrap();
}

#[test]
fn learns_preferences_and_accuracy_falls_with_the_rating() {
    let d = tmpdir("learn");
    let task = Synthetic::new(1);
    let (train, test) = (task.pairs(4000, 2), task.pairs(1000, 3));
    // ratings from the quartiles of the gold |gap| of all pairs
    let mut gaps: Vec<f64> = train.iter().chain(&test).map(|x| x.1.abs()).collect();
    gaps.sort_by(f64::total_cmp);
    let q = |f: f64| gaps[(f * gaps.len() as f64) as usize];
    let cuts = [q(0.25), q(0.5), q(0.75)];
    let rate = |g: f64| match cuts.iter().filter(|&&c| g.abs() >= c).count() {
        3 => "significantly better",
        2 => "better",
        1 => "slightly better",
        _ => "negligibly better",
    };
    let label = |set: &[(Value, f64)]| -> Vec<Value> {
        set.iter()
            .map(|(r, g)| {
                let mut r = r.clone();
                r["rating"] = json!(rate(*g));
                r
            })
            .collect()
    };
    let (train_f, test_f, lm, out) = (d.join("train.jsonl"), d.join("test.jsonl"), d.join("lm"), d.join("run"));
    write_jsonl(&train_f, &label(&train));
    write_jsonl(&test_f, &label(&test));
    tiny_lm(&lm, VOCAB, 64);
    let mut args = vec!["rm", "train", "--init", s(&lm), "--data", s(&train_f), "--val-data", s(&test_f), "--out", s(&out)];
    args.extend(["--batch-size", "16", "--epochs", "2", "--lr", "2e-3", "--weight-decay", "0", "--threads", "2", "--quiet", "--seed", "4"]);
    ok(&args);
    let v: Value = serde_json::from_str(ok(&["rm", "eval", "--model", s(&out.join("final")), "--data", s(&test_f), "--threads", "2"]).trim()).unwrap();
    let acc = |b: &Value| b["accuracy"].as_f64().unwrap();
    let overall = acc(&v["overall"]);
    let buckets: Vec<f64> = v["by_rating"].as_array().unwrap().iter().map(acc).collect();
    // the gold scorer on the same held-out pairs: the best any model can do against noisy labels
    let gold: Vec<f64> = ["significantly better", "better", "slightly better", "negligibly better"]
        .iter()
        .map(|name| {
            let sel: Vec<f64> = test.iter().filter(|(_, g)| rate(*g) == *name).map(|x| x.1).collect();
            sel.iter().filter(|&&g| g > 0.0).count() as f64 / sel.len() as f64
        })
        .collect();
    eprintln!("held-out accuracy {:.1}%; by rating (significantly .. negligibly) ours {:?}, gold scorer {:?}", 100.0 * overall, buckets, gold);
    assert!(overall >= 0.75, "held-out accuracy {overall}");
    for w in buckets.windows(2) {
        assert!(w[0] >= w[1], "accuracy must not rise as pairs get closer: {buckets:?}");
    }
    assert!(buckets[0] - buckets[3] >= 0.15, "significantly better vs negligibly better: {buckets:?}");
    // the run's own artefacts: metrics with accuracy, curves
    for f in ["metrics.jsonl", "rm_loss.png", "rm_accuracy.png", "final/config.json", "config.run.json", "val_eval.json", "val_eval.png"] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let m = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let (first, last): (Value, Value) = (serde_json::from_str(m.lines().next().unwrap()).unwrap(), serde_json::from_str(m.lines().last().unwrap()).unwrap());
    assert!(first["accuracy"].is_number() && first["reward_gap"].is_number(), "{first}");
    assert!(last["val_accuracy"].as_f64().unwrap() >= 0.75 && last["val_loss"].is_number(), "{last}");
    // the run's own held-out report covers every held-out pair, as rm eval does
    let ve: Value = serde_json::from_str(&std::fs::read_to_string(out.join("val_eval.json")).unwrap()).unwrap();
    assert_eq!((ve["overall"]["pairs"].as_u64(), ve["overall"]["accuracy"].as_f64()), (Some(1000), Some(overall)));
}

fn synthetic_file(dir: &Path, n: usize) -> PathBuf {
    let task = Synthetic::new(7);
    let recs: Vec<Value> = task.pairs(n, 8).into_iter().map(|x| x.0).collect();
    let f = dir.join("pairs.jsonl");
    write_jsonl(&f, &recs);
    f
}

#[test]
fn half_and_resume_equals_straight_bit_for_bit() {
    let d = tmpdir("resume");
    let (data, lm) = (synthetic_file(&d, 200), d.join("lm"));
    tiny_lm(&lm, VOCAB, 64);
    let train = |out: &Path, extra: &[&str]| {
        let mut args = vec!["rm", "train", "--init", s(&lm), "--data", s(&data), "--out", s(out), "--batch-size", "4", "--grad-accum", "2"];
        args.extend_from_slice(&["--steps", "6", "--save-every", "3", "--lr", "1e-3", "--threads", "2", "--quiet", "--seed", "9"]);
        args.extend_from_slice(extra);
        ok(&args);
    };
    let (a, b) = (d.join("a"), d.join("b"));
    train(&a, &[]);
    train(&b, &["--stop-after", "3"]);
    assert!(!b.join("final").exists(), "the first half must stop early");
    train(&b, &["--resume", s(&b)]);
    for f in ["final/model.safetensors", "ckpt-000006/model.safetensors", "ckpt-000006/optimizer.safetensors"] {
        assert!(std::fs::read(a.join(f)).unwrap() == std::fs::read(b.join(f)).unwrap(), "{f} differs between the straight run and the resumed one");
    }
    // another margin is another objective: resuming with it is refused
    let e = fails(&[
        "rm",
        "train",
        "--init",
        s(&lm),
        "--data",
        s(&data),
        "--out",
        s(&b),
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--steps",
        "6",
        "--margin",
        "large",
        "--resume",
        s(&b),
        "--threads",
        "2",
        "--quiet",
        "--seed",
        "9",
    ]);
    assert!(e.contains("margin"), "{e}");
}

#[test]
fn llama_factory_text_pairs_encode_in_the_chat_format_and_train() {
    use llama2_model::tokenizer::Tokenizer;
    use llama2_train::reward::data::{load_pairs, parse_pair, read_records, RawBody};
    let d = tmpdir("text");
    let dpo = repo().join("tests/data/sft/dpo_en_demo.json");
    let gguf = repo().join("tests/data/tokenizer/ggml-vocab-llama-spm.gguf");
    let tok = Tokenizer::load(&gguf).unwrap();
    // every record: BOS ... [/INST] answer EOS, the two sequences sharing the encoded prompt
    let set = load_pairs(&dpo, Some(&tok), 32000, usize::MAX).unwrap();
    assert_eq!((set.records, set.pairs.len(), set.dropped), (300, 300, 0));
    let recs = read_records(&dpo, "").unwrap();
    for ((at, v), p) in recs.iter().zip(&set.pairs) {
        let RawBody::Text { prompt, .. } = parse_pair(v).unwrap().body else { panic!("{at}: not text") };
        let ids = llama2_model::chat::encode_prompt(&tok, &prompt).unwrap();
        for x in [&p.chosen, &p.rejected] {
            assert!(x.starts_with(&ids), "{at}: the sequence does not start with the encoded prompt");
            assert!(x.len() > ids.len() + 1 && x[0] == 1 && *x.last().unwrap() == 2, "{at}: BOS ... answer EOS");
        }
    }
    let max_len = 256;
    let too_long = set.pairs.iter().filter(|p| p.chosen.len().max(p.rejected.len()) > max_len).count();
    assert!(too_long > 0 && too_long < 300, "the test needs some long pairs: {too_long}");
    // train a few steps on it with a tiny model of the Llama 2 vocabulary
    let (lm, out) = (d.join("lm"), d.join("run"));
    tiny_lm(&lm, 32000, 512);
    let o = tool()
        .args(["rm", "train", "--init", s(&lm), "--tokenizer", s(&gguf), "--data", s(&dpo), "--out", s(&out), "--max-len", "256"])
        .args(["--batch-size", "2", "--steps", "2", "--threads", "2", "--quiet"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("dropped {too_long} of 300 pairs longer than 256 tokens")), "{err}");
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.run.json")).unwrap()).unwrap();
    assert_eq!((cfg["pairs_train"].as_u64(), cfg["pairs_dropped_too_long"].as_u64()), (Some(300 - too_long as u64), Some(too_long as u64)));
    // text lines score as the token ids they encode to
    let final_dir = out.join("final");
    let lines = [
        json!({"prompt": "What is 2+2?", "response": "4."}),
        json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "response": "Hello!"}),
    ];
    let txt = d.join("text.jsonl");
    write_jsonl(&txt, &lines);
    let a = ok(&["rm", "score", "--model", s(&final_dir), "--tokenizer", s(&gguf), "--input", s(&txt), "--threads", "2"]);
    let seq = |msgs: Vec<llama2_model::chat::Message>| llama2_model::chat::encode_dialog(&tok, &msgs).unwrap().0;
    use llama2_model::chat::{Message, Role};
    let ids = [
        seq(vec![Message::new(Role::User, "What is 2+2?"), Message::new(Role::Assistant, "4.")]),
        seq(vec![Message::new(Role::System, "Be brief."), Message::new(Role::User, "Hi"), Message::new(Role::Assistant, "Hello!")]),
    ];
    let idf = d.join("ids.jsonl");
    write_jsonl(&idf, &ids.iter().map(|x| json!({"prompt_ids": [], "response_ids": x})).collect::<Vec<_>>());
    let b = ok(&["rm", "score", "--model", s(&final_dir), "--input", s(&idf), "--threads", "2"]);
    assert_eq!(a, b, "text and token-id inputs score the same sequences");
    // the tokenizer given to rm train is saved beside the model, and found there
    assert!(final_dir.join("tokenizer.gguf").is_file());
    assert_eq!(ok(&["rm", "score", "--model", s(&final_dir), "--input", s(&txt), "--threads", "2"]), a);
}

#[test]
fn bad_input_is_reported_with_file_and_record() {
    let d = tmpdir("bad");
    let rm = fixture("rm");
    let good = r#"{"prompt_ids": [1, 5], "chosen_ids": [6, 2], "rejected_ids": [7, 2], "rating": "better"}"#;
    let cases = [
        ("no_rejected", r#"{"prompt_ids": [1, 5], "chosen_ids": [6, 2]}"#, "no `rejected_ids`"),
        ("no_chosen_text", r#"{"prompt": "q", "rejected": "b"}"#, "no `chosen`"),
        ("rating", r#"{"prompt_ids": [1], "chosen_ids": [6, 2], "rejected_ids": [7, 2], "rating": "way better"}"#, "unknown rating"),
        ("empty", r#"{"prompt": "q", "chosen": "", "rejected": "b"}"#, "empty response"),
        ("empty_ids", r#"{"prompt_ids": [1], "chosen_ids": [], "rejected_ids": [7, 2]}"#, "empty response"),
        ("vocab", r#"{"prompt_ids": [1], "chosen_ids": [600, 2], "rejected_ids": [7, 2]}"#, "vocabulary size 128"),
        ("json", r#"{"prompt_ids": [1], "#, "line 2: not valid JSON"),
        ("text_no_tokenizer", r#"{"prompt": "q", "chosen": "a", "rejected": "b"}"#, "needs a tokenizer"),
    ];
    for (name, line, want) in cases {
        let f = d.join(format!("{name}.jsonl"));
        std::fs::write(&f, format!("{good}\n{line}\n")).unwrap();
        let g = d.join(format!("{name}.safetensors"));
        for args in [
            vec!["rm", "eval", "--model", s(&rm), "--data", s(&f), "--threads", "1"],
            vec!["debug", "rm-grads", "--model", s(&rm), "--pairs", s(&f), "--out", s(&g), "--threads", "1"],
        ] {
            let e = fails(&args);
            assert!(e.contains(want) && e.contains(s(&f)) && e.contains("line 2"), "{name}: {e}");
        }
        assert!(!g.exists(), "{name}: nothing may be written");
        let out = d.join(format!("{name}-run"));
        let e = fails(&["rm", "train", "--init", s(&rm), "--data", s(&f), "--out", s(&out), "--threads", "1", "--quiet"]);
        assert!(e.contains(want), "{name}: {e}");
        assert!(!out.exists(), "{name}: rm train wrote {} before failing", out.display());
    }

    // a causal LM where a reward model is required, and the reverse
    let pairs = fixture("rm/pairs.jsonl");
    for args in [
        vec!["rm", "score", "--model", s(&fixture("lm")), "--input", s(&fixture("rm/score.jsonl"))],
        vec!["rm", "eval", "--model", s(&fixture("lm")), "--data", s(&pairs)],
        vec!["debug", "rm-grads", "--model", s(&fixture("lm")), "--pairs", s(&pairs), "--out", "/dev/null"],
    ] {
        let e = fails(&args);
        assert!(e.contains("causal LM") && e.contains("rm init"), "{e}");
    }
    let out = d.join("init-of-rm");
    let e = fails(&["rm", "init", "--init", s(&rm), "--out", s(&out)]);
    assert!(e.contains("already a reward model") && !out.exists(), "{e}");

    // a score.weight of the wrong shape
    let bad = d.join("bad_score");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(rm.join("config.json"), bad.join("config.json")).unwrap();
    let mut w = Checkpoint::open(&rm).unwrap().read_all().unwrap();
    w.insert("score.weight".into(), llama2_model::weights::HostTensor::new(vec![2, 64], vec![0.5; 128]));
    llama2_model::weights::save_safetensors(&bad.join("model.safetensors"), &w, llama2_model::weights::SaveDtype::F32, None).unwrap();
    let e = fails(&["rm", "score", "--model", s(&bad), "--input", s(&fixture("rm/score.jsonl"))]);
    assert!(e.contains("score.weight") && e.contains("[2, 64]") && e.contains("model.safetensors"), "{e}");

    // flags: --max-len beyond the model, --mix without labels, an unknown label
    let run = d.join("flags-run");
    let e = fails(&["rm", "train", "--init", s(&rm), "--data", s(&pairs), "--out", s(&run), "--max-len", "65"]);
    assert!(e.contains("--max-len 65") && e.contains("64 positions"), "{e}");
    let e = fails(&["rm", "train", "--init", s(&rm), "--data", s(&pairs), "--out", s(&run), "--mix", "safety"]);
    assert!(e.contains("labelled"), "{e}");
    let e = fails(&["rm", "train", "--init", s(&rm), "--data", &format!("helpfull={}", s(&pairs)), "--out", s(&run)]);
    assert!(e.contains("unknown label `helpfull`"), "{e}");
    assert!(!run.exists());
    // rm score: an empty response, names the line
    let f = d.join("score_bad.jsonl");
    std::fs::write(&f, "{\"prompt_ids\": [1, 4], \"response_ids\": [5, 2]}\n\n{\"prompt_ids\": [1], \"response_ids\": []}\n").unwrap();
    let e = fails(&["rm", "score", "--model", s(&rm), "--input", s(&f)]);
    assert!(e.contains("line 3") && e.contains("empty response"), "{e}");
}

#[test]
fn mixtures_and_safety_categories_reach_the_report() {
    let d = tmpdir("mix");
    let mk = |name: &str, n: usize, safety: Option<(bool, bool)>| {
        let task = Synthetic::new(11);
        let recs: Vec<Value> = task
            .pairs(n, name.len() as u64)
            .into_iter()
            .map(|(mut r, _)| {
                if let Some((c, x)) = safety {
                    r["chosen_safe"] = json!(c);
                    r["rejected_safe"] = json!(x);
                    r["unsafe_prompt"] = json!(true);
                }
                r
            })
            .collect();
        let f = d.join(format!("{name}.jsonl"));
        write_jsonl(&f, &recs);
        f
    };
    let (h, sf, o) = (mk("help", 40, None), mk("safety", 90, Some((true, false))), mk("other", 30, None));
    let lm = d.join("lm");
    tiny_lm(&lm, VOCAB, 64);
    let out = d.join("run");
    ok(&[
        "rm",
        "train",
        "--init",
        s(&lm),
        "--out",
        s(&out),
        "--mix",
        "safety",
        "--data",
        &format!("helpful={}", s(&h)),
        &format!("safety={}", s(&sf)),
        &format!("other={}", s(&o)),
        "--batch-size",
        "4",
        "--steps",
        "1",
        "--threads",
        "2",
        "--quiet",
    ]);
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.run.json")).unwrap()).unwrap();
    // 90 safety pairs are 90% of the mixture: 10 more drawn from the 70 helpful and other pairs
    assert_eq!(cfg["pairs_train"], 100, "{cfg}");
    assert_eq!(cfg["mixture"]["safety"], 90);
    assert_eq!(cfg["mixture"]["helpful"].as_u64().unwrap() + cfg["mixture"]["other"].as_u64().unwrap(), 10);
    let ev = d.join("eval");
    let v: Value =
        serde_json::from_str(ok(&["rm", "eval", "--model", s(&out.join("final")), "--data", s(&sf), s(&h), "--out", s(&ev), "--threads", "2"]).trim()).unwrap();
    let cats: Vec<(&str, u64)> = v["by_safety"].as_array().unwrap().iter().map(|b| (b["name"].as_str().unwrap(), b["pairs"].as_u64().unwrap())).collect();
    assert_eq!(cats, vec![("chosen safe, other unsafe", 90), ("both safe", 0), ("both unsafe", 0)]);
    assert_eq!(v["overall"]["pairs"], 130);
    assert_eq!(v["by_rating"].as_array().unwrap().last().unwrap()["name"], "no rating");
    assert!(ev.join("rm_eval.json").is_file() && ev.join("rm_eval.png").is_file());
}

//! The main job runs end to end on its built-in data (a micro
//! configuration here: the default is about 15 minutes), stops where asked,
//! skips finished stages on a restart, refuses unknown stage names, and is
//! deterministic: two runs with the same seed give the same results.json
//! (apart from its `seconds`).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The micro configuration: every stage runs, on a few prompts and steps.
const MICRO: &[&str] = &[
    "--pretrain-steps",
    "12",
    "--sft-epochs",
    "1",
    "--samples",
    "3",
    "--vocab-size",
    "1024",
    "--threads",
    "2",
    "--eval-prompts",
    "6",
    "--rlhf-prompts",
    "12",
    "--safety-demos",
    "4",
    "--max-new-tokens",
    "12",
    "--rm-epochs",
    "1",
    "--rs-k",
    "2",
    "--rs-epochs",
    "1",
    "--ppo-iterations",
    "2",
    "--ppo-prompts-per-iter",
    "8",
    "--ppo-minibatch",
    "8",
    "--gatt-count",
    "4",
    "--gatt-steps",
    "2",
    "--gatt-turns",
    "1,2",
    "--gatt-eval-dialogs",
    "3",
    "--gatt-max-new-tokens",
    "8",
    "--gatt-batch-size",
    "2",
    "--gatt-k",
    "2",
    "--eval-samples",
    "2",
    "--self-bleu-samples",
    "2",
    "--self-bleu-temperatures",
    "0.5,1.0",
];

const STAGES: [&str; 9] = ["tokenizer", "pretrain", "sft", "preferences", "rm", "rs", "ppo", "gatt", "eval"];

fn pipeline(runs: &Path, name: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["pipeline", "--name", name])
        .arg("--runs-dir")
        .arg(runs)
        .args(MICRO)
        .args(extra)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{err}");
    err
}

fn mtime(p: &Path) -> std::time::SystemTime {
    std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).modified().unwrap()
}

fn results(run: &Path) -> Value {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert!(v["seconds"].as_f64().is_some_and(|s| s > 0.0), "seconds: {}", v["seconds"]);
    v.as_object_mut().unwrap().remove("seconds");
    v
}

#[test]
fn pipeline_runs_every_stage_resumes_and_is_deterministic() {
    let runs: PathBuf = std::env::temp_dir().join(format!("llama2-pipeline-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runs);
    let run = runs.join("ci");

    // --until stops after the reward models
    let err = ok(&pipeline(&runs, "ci", &["--until", "rm"]));
    assert!(err.contains("stopped after `rm`"), "{err}");
    for s in &STAGES[..5] {
        assert!(run.join(s).join("DONE.json").is_file(), "no marker for {s}");
    }
    for s in &STAGES[5..] {
        assert!(!run.join(s).join("DONE.json").exists(), "{s} ran despite --until rm");
    }
    assert!(!run.join("results.json").exists());
    let before: Vec<_> = STAGES[..5].iter().map(|s| mtime(&run.join(s).join("DONE.json"))).collect();

    // a restart skips the finished stages and runs the rest
    let err = ok(&pipeline(&runs, "ci", &[]));
    for (s, t) in STAGES[..5].iter().zip(&before) {
        assert!(err.contains(&format!("[pipeline] {s}: done before, skipped")), "{s} not skipped:\n{err}");
        assert_eq!(mtime(&run.join(s).join("DONE.json")), *t, "the marker of {s} was rewritten");
    }
    for s in &STAGES[5..] {
        assert!(run.join(s).join("DONE.json").is_file(), "no marker for {s}");
    }

    // both files, with the keys of issue 13
    let r = results(&run);
    for rm in ["helpful", "safety"] {
        assert!(r["rm"][rm]["accuracy"].is_number(), "rm.{rm}.accuracy: {}", r["rm"][rm]);
        let by = r["rm"][rm]["by_rating"].as_object().unwrap();
        let keys: Vec<&str> = by.keys().map(|k| k.as_str()).collect();
        for k in ["significantly better", "better", "slightly better", "negligibly better / unsure"] {
            assert!(keys.contains(&k), "rm.{rm}.by_rating lacks {k:?}: {keys:?}");
        }
    }
    for s in ["sft", "rs", "ppo", "gatt"] {
        let st = &r["stages"][s];
        for k in ["gold_helpfulness", "rm_reward", "violation_rate", "false_refusal_rate", "win_rate_vs_sft_gold"] {
            assert!(st[k].is_number(), "stages.{s}.{k}: {st}");
        }
        let sb = st["self_bleu"].as_object().unwrap();
        assert_eq!(sb.keys().collect::<Vec<_>>(), ["0.5", "1"], "stages.{s}.self_bleu");
    }
    assert_eq!(r["stages"]["sft"]["win_rate_vs_sft_gold"].as_f64(), Some(0.5), "SFT against itself ties every prompt");
    for g in ["baseline", "gatt"] {
        let turns = r["gatt"][g].as_object().unwrap();
        assert_eq!(turns.keys().collect::<Vec<_>>(), ["1", "2"], "gatt.{g}");
        assert!(turns.values().all(|x| x.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))));
    }
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for part in [
        "Did every stage do what it is for?",
        "Table 8",
        "rm/helpful/eval/rm_eval.png",
        "rs/iter-1/figure7.png",
        "ppo/ppo_reward.png",
        "Self-BLEU",
        "gatt/eval/gatt_attention.png",
        "## Timings",
        "kg CO2eq",
        "pretrain_loss.png",
        "Resolved configuration",
    ] {
        assert!(report.contains(part), "report lacks {part:?}");
    }
    for png in [
        "pretrain_loss.png",
        "rm/helpful/eval/rm_eval.png",
        "rs/iter-1/figure7.png",
        "ppo/ppo_reward.png",
        "eval/self_bleu.png",
        "gatt/eval/gatt_attention.png",
    ] {
        assert!(run.join(png).is_file(), "missing {png}");
    }

    // bad stage names and impossible orders fail with a hint, before any work
    let o = pipeline(&runs, "ci", &["--from", "rlhf"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("HINT") && err.contains("tokenizer, pretrain"), "{err}");
    let o = pipeline(&runs, "other", &["--from", "ppo"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("HINT") && err.contains("`tokenizer` is not done"), "{err}");
    let o = pipeline(&runs, "fresh", &["--gatt-families", "astrology"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("astrology") && err.contains("HINT"), "{err}");
    assert!(!runs.join("fresh").exists(), "an unknown family is refused before the run starts");
    let o = pipeline(&runs, "ci", &["--seed", "7"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--seed") && err.contains("HINT"), "{err}");

    // the same seed from scratch gives the same results
    ok(&pipeline(&runs, "again", &[]));
    assert_eq!(results(&run), results(&runs.join("again")), "two runs with the same seed differ");
    let _ = std::fs::remove_dir_all(&runs);
}

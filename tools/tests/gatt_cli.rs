//! `train-tool gatt` end to end on a small random model (seconds):
//! demos -> build (GAtt and baseline files) -> sft --packing whole ->
//! eval of baseline and GAtt side by side (JSON, Markdown, PNG); and bad
//! input: an empty instruction list, dialogs without a user turn, turns
//! that cannot fit, flags out of range: clear errors, never a panic.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-gatt-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ok(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{args:?} failed: {err}");
    err
}

fn fails(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    err
}

/// A random model with the botchan vocabulary (1000 pieces) and its tokenizer.
fn model(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    ok(&["init", "--preset", "tiny", "--vocab", "1000", "--max-seq-len", "512", "--out", m.to_str().unwrap()]);
    std::fs::copy(root().join("tests/data/tokenizer/botchan_spm_llama_settings_1000.model"), m.join("tokenizer.model")).unwrap();
    m
}

fn dialogs(dir: &Path) -> PathBuf {
    let p = dir.join("dialogs.jsonl");
    let mut s = String::new();
    for i in 0..12 {
        s.push_str(&format!("{{\"instruction\": \"Tell me about the river number {i}.\", \"output\": \"It is long and cold, and it runs to the sea.\"}}\n"));
    }
    s.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"hello\"}, {\"role\": \"assistant\", \"content\": \"hi\"}, {\"role\": \"user\", \"content\": \"and now?\"}, {\"role\": \"assistant\", \"content\": \"now more\"}]}\n");
    std::fs::write(&p, s).unwrap();
    p
}

#[test]
fn demos_build_sft_and_eval_end_to_end() {
    let d = tmpdir("e2e");
    let m = model(&d);
    let data = dialogs(&d);
    let inst = root().join("data/gatt/instructions.json");
    let (m_s, data_s, inst_s) = (m.to_str().unwrap(), data.to_str().unwrap(), inst.to_str().unwrap());
    let demos = d.join("demos.jsonl");
    ok(&["gatt", "demos", "--dialogs", data_s, "--instructions", inst_s, "--out", demos.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&demos).unwrap().lines().count(), 13);
    let (g, b) = (d.join("gatt.jsonl"), d.join("baseline.jsonl"));
    let err = ok(&[
        "gatt",
        "build",
        "--policy",
        m_s,
        "--dialogs",
        data_s,
        "--instructions",
        inst_s,
        "--out",
        g.to_str().unwrap(),
        "--baseline-out",
        b.to_str().unwrap(),
        "--count",
        "4",
        "--max-turns",
        "3",
        "--max-new-tokens",
        "4",
        "--max-tokens",
        "256",
        "--threads",
        "1",
    ]);
    assert!(err.contains("samples ->"), "{err}");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&g).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!recs.is_empty());
    for r in &recs {
        assert_eq!(r["loss"], "last");
        assert_eq!(r["messages"][0]["role"], "system");
        assert_eq!(r["messages"][0]["content"], r["gatt"]["instruction"]);
    }
    assert_eq!(std::fs::read_to_string(&b).unwrap().lines().count(), recs.len());
    let ft = d.join("ft");
    ok(&[
        "sft",
        "--init",
        m_s,
        "--data",
        g.to_str().unwrap(),
        "--packing",
        "whole",
        "--seq-len",
        "256",
        "--batch-size",
        "2",
        "--steps",
        "2",
        "--samples",
        "0",
        "--val-fraction",
        "0",
        "--quiet",
        "--threads",
        "1",
        "--out",
        ft.to_str().unwrap(),
    ]);
    let ev = d.join("eval");
    let base = format!("base={m_s}");
    let tuned = format!("gatt={}", ft.join("final").to_str().unwrap());
    ok(&[
        "gatt",
        "eval",
        "--baseline",
        &base,
        "--model",
        &tuned,
        "--instructions",
        inst_s,
        "--prompts",
        data_s,
        "--turns",
        "1,3,50",
        "--dialogs",
        "3",
        "--max-new-tokens",
        "4",
        "--max-tokens",
        "200",
        "--threads",
        "1",
        "--out",
        ev.to_str().unwrap(),
    ]);
    let rep: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ev.join("gatt_eval.json")).unwrap()).unwrap();
    let turns: Vec<u64> = rep["turns"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(&turns[..2], &[1, 3]);
    assert!(turns.len() == 3 && turns[2] > 3 && turns[2] < 50, "turn 50 cannot fit in 200 tokens: the last reached turn is measured instead: {turns:?}");
    assert_eq!(rep["models"][0]["label"], "base");
    assert_eq!(rep["models"][1]["label"], "gatt");
    assert_eq!(rep["models"][1]["adherence"].as_array().unwrap().len(), 3);
    assert_eq!(rep["models"][1]["attention"].as_array().unwrap().len(), 3, "one per measured turn");
    assert_eq!(rep["models"][1]["attention_shared"].as_array().unwrap().len(), 3);
    let md = std::fs::read_to_string(ev.join("gatt_eval.md")).unwrap();
    assert!(md.contains("| all checks | base (baseline) |") && md.contains("layer 3"), "{md}");
    let png = std::fs::read(ev.join("gatt_attention.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(ev.join("transcripts_gatt.jsonl").is_file());
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tmpdir("bad");
    let m = model(&d);
    let data = dialogs(&d);
    let inst = root().join("data/gatt/instructions.json");
    let (m_s, data_s, inst_s) = (m.to_str().unwrap(), data.to_str().unwrap(), inst.to_str().unwrap());
    let out = d.join("o.jsonl");
    let out_s = out.to_str().unwrap();
    // an empty instruction list
    let empty = d.join("empty.json");
    std::fs::write(&empty, "{\"families\": []}").unwrap();
    let e = fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", empty.to_str().unwrap(), "--out", out_s]);
    assert!(e.contains("empty") && e.contains("HINT"), "{e}");
    let e = fails(&["gatt", "demos", "--dialogs", data_s, "--instructions", empty.to_str().unwrap(), "--out", out_s]);
    assert!(e.contains("empty") && e.contains("HINT"), "{e}");
    // dialogs without a user turn
    let no_user = d.join("no_user.jsonl");
    std::fs::write(&no_user, "{\"messages\": [{\"role\": \"system\", \"content\": \"s\"}, {\"role\": \"assistant\", \"content\": \"a\"}]}\n").unwrap();
    let e = fails(&["gatt", "build", "--policy", m_s, "--dialogs", no_user.to_str().unwrap(), "--instructions", inst_s, "--out", out_s]);
    assert!(e.contains("user turn") && e.contains("HINT"), "{e}");
    // no turn fits the sample budget
    let e = fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", inst_s, "--out", out_s, "--max-tokens", "20"]);
    assert!(e.contains("HINT") && e.contains("--max-tokens"), "{e}");
    assert!(!out.exists(), "no output file on failure");
    // flags
    let e = fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", inst_s, "--out", out_s, "--k", "4"]);
    assert!(e.contains("--rm"), "{e}");
    fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", inst_s, "--out", out_s, "--k", "0"]);
    fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", inst_s, "--out", out_s, "--top-p", "0"]);
    let e = fails(&["gatt", "build", "--policy", m_s, "--dialogs", data_s, "--instructions", inst_s, "--out", out_s, "--min-turns", "5", "--max-turns", "2"]);
    assert!(e.contains("--min-turns"), "{e}");
    let e = fails(&["gatt", "eval", "--model", m_s, "--instructions", inst_s, "--prompts", data_s, "--turns", "0,2", "--out", out_s]);
    assert!(e.contains("--turns"), "{e}");
    let e = fails(&["gatt", "eval", "--model", m_s, "--instructions", inst_s, "--families", "hobby", "--prompts", data_s, "--out", out_s]);
    assert!(e.contains("checked") && e.contains("HINT"), "{e}");
    let e = fails(&["gatt", "eval", "--model", m_s, "--model", m_s, "--instructions", inst_s, "--prompts", data_s, "--out", out_s]);
    assert!(e.contains("labelled") && e.contains("HINT"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

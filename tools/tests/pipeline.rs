//! The main job runs end to end on its built-in data (shortened here: the
//! full default is a few minutes) and writes its report.

use std::process::Command;

#[test]
fn pipeline_runs_end_to_end_and_writes_its_report() {
    let runs = std::env::temp_dir().join(format!("llama2-pipeline-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_train-tool"))
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["pipeline", "--name", "ci", "--pretrain-steps", "12", "--sft-epochs", "1", "--samples", "3", "--vocab-size", "1024", "--threads", "2"])
        .arg("--runs-dir")
        .arg(&runs)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let run = runs.join("ci");
    let report = std::fs::read_to_string(run.join("report.md")).unwrap();
    for part in ["final pretraining validation loss", "held-out chat answers ending with EOS", "pretrain_loss.png", "kg CO2eq", "## Chat samples"] {
        assert!(report.contains(part), "report lacks {part:?}:\n{report}");
    }
    for f in
        ["tokenizer.model", "pretrain/final/model.safetensors", "sft/final/model.safetensors", "sft/final/tokenizer.model", "pretrain_loss.png", "sft_loss.png"]
    {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    // the SFT model chats in the terminal with the same template
    let mut child = Command::new(env!("CARGO_BIN_EXE_train-tool"))
        .args(["chat", "--json", "--threads", "1", "--max-new-tokens", "8", "--model"])
        .arg(run.join("sft/final"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"Hello!\nHow are you?\n").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let answers: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(answers.len(), 2, "one answer per user line");
    assert!(answers.iter().all(|a| a["answer"].is_string()));
    let _ = std::fs::remove_dir_all(&runs);
}

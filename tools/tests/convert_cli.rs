//! `train-tool convert` and `train-tool init` from the command line: the
//! llama2.c fixtures convert both ways (byte- and bit-identical), a random
//! model survives HF -> v1 -> HF, and bad input exits non-zero with a
//! message naming the file and a hint, never a panic.

use llama2_model::weights::Checkpoint;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama2c")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-convert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let (o, e) = (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{args:?} failed: {e}");
    o
}

fn fails(args: &[&str], parts: &[&str]) {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    for p in parts {
        assert!(err.contains(p), "error for {args:?} does not mention {p:?}: {err}");
    }
}

fn same_tensors(a: &Path, b: &Path) {
    let (x, y) = (Checkpoint::open(a).unwrap().read_all().unwrap(), Checkpoint::open(b).unwrap().read_all().unwrap());
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (k, t) in &x {
        assert_eq!(t.shape, y[k].shape, "{k}");
        assert!(t.data.iter().zip(&y[k].data).all(|(p, q)| p.to_bits() == q.to_bits()), "{k} differs");
    }
}

#[test]
fn fixtures_convert_both_ways() {
    let d = tmpdir("fixtures");
    let gqa = fixtures().join("gqa");
    for layout in ["legacy", "v1"] {
        let bin = d.join(format!("{layout}.bin"));
        let out = ok(&["convert", "--from", "hf", s(&gqa.join("hf")), "--to", "llama2c", s(&bin), "--layout", layout]);
        assert!(out.contains("[Llama]") && out.contains(&format!("{layout} layout")), "{out}");
        assert!(std::fs::read(&bin).unwrap() == std::fs::read(gqa.join(format!("{layout}.bin"))).unwrap(), "{layout}: not byte-identical");
        let hf = d.join(format!("{layout}-hf"));
        ok(&["convert", "--from", "llama2c", s(&gqa.join(format!("{layout}.bin"))), "--to", "hf", s(&hf)]);
        same_tensors(&hf, &gqa.join("hf"));
        let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["rms_norm_eps"], 1e-5);
        assert_eq!((cfg["bos_token_id"].as_u64(), cfg["eos_token_id"].as_u64()), (Some(1), Some(2)));
        assert_eq!(cfg["max_position_embeddings"].as_u64(), Some(64));
        assert_eq!(cfg["tie_word_embeddings"], false);
        assert_eq!(cfg["rope_theta"], 10000.0);
    }
    // default layout when writing: legacy
    let bin = d.join("default.bin");
    ok(&["convert", "--from", "hf", s(&gqa.join("hf")), "--to", "llama2c", s(&bin)]);
    assert!(std::fs::read(&bin).unwrap() == std::fs::read(gqa.join("legacy.bin")).unwrap());
}

#[test]
fn init_model_survives_hf_v1_hf() {
    let d = tmpdir("init");
    let hf = d.join("hf");
    ok(&["init", "--preset", "tiny", "--vocab", "300", "--max-seq-len", "64", "--init", "unit", "--seed", "3", "--out", s(&hf)]);
    let bin = d.join("m.bin");
    ok(&["convert", "--from", "hf", s(&hf), "--to", "llama2c", s(&bin), "--layout", "v1"]);
    let back = d.join("back");
    ok(&["convert", "--from", "llama2c", s(&bin), "--to", "hf", s(&back)]);
    same_tensors(&hf, &back);
    // tiny has GQA (4 heads, 2 KV heads): no early form
    fails(&["convert", "--from", "hf", s(&hf), "--to", "llama2c", s(&d.join("e.bin")), "--layout", "early"], &["e.bin", "GQA", "HINT"]);
    assert!(!d.join("e.bin").exists());
}

#[test]
fn bad_input_is_refused() {
    let d = tmpdir("bad");
    let legacy = std::fs::read(fixtures().join("gqa/legacy.bin")).unwrap();
    let trunc = d.join("trunc.bin");
    std::fs::write(&trunc, &legacy[..legacy.len() - 8]).unwrap();
    fails(&["convert", "--from", "llama2c", s(&trunc), "--to", "hf", s(&d.join("out"))], &["trunc.bin", "bytes", "HINT"]);
    assert!(!d.join("out").join("model.safetensors").exists());
    fails(
        &["convert", "--from", "llama2c", s(&fixtures().join("gqa/v1.bin")), "--to", "hf", s(&d.join("o2")), "--layout", "legacy"],
        &["v1.bin", "ak42", "HINT"],
    );
    fails(&["convert", "--from", "onnx", "x", "--to", "hf", "y"], &["unknown format", "HINT"]);
    fails(&["convert", "--from", "hf", "x", "--to", "hf", "y"], &["between hf and llama2c or gguf"]);
    fails(&["convert", "--from", "llama2c", s(&trunc), "--to", "hf", "y", "--force"], &["--force"]);
    fails(&["convert", "--from", "llama2c", s(&d.join("missing.bin")), "--to", "hf", "y"], &["missing.bin"]);
    fails(&["convert", "--from", "hf"], &["FORMAT"]);
    fails(&["init", "--preset", "ref-tiny", "--kv-heads", "3", "--out", s(&d.join("i"))], &["multiple of num_key_value_heads"]);
}

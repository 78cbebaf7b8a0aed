//! Bad input gets a clear error naming the file and what is wrong, a
//! non-zero exit code, and never a panic: damaged safetensors (truncated,
//! header length, offsets past the end, wrong dtype, wrong shape, missing
//! tensor), damaged token shards (magic, length, ids), flags out of range.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_train-tool"))
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gqa")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the gqa fixture model in a fresh directory.
fn model_copy(name: &str) -> PathBuf {
    let d = tmpdir(name);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture().join(f), d.join(f)).unwrap();
    }
    d
}

/// A valid shard of `n` tokens below 250 (the gqa vocab is 256).
fn shard(dir: &Path, n: usize) -> PathBuf {
    let p = dir.join("data.bin");
    let toks: Vec<u32> = (0..n).map(|i| (i * 7 % 250) as u32).collect();
    llama2_model::shards::write_shard(&p, &toks).unwrap();
    p
}

/// Runs the tool, expects failure; returns stderr.
fn fails(args: &[&str]) -> String {
    let out = tool().args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "expected failure for {args:?}; stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    err
}

fn eval(model: &Path, data: &Path) -> String {
    fails(&["eval-loss", "--model", model.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch-size", "1", "--seq-len", "8", "--threads", "1"])
}

fn assert_mentions(err: &str, parts: &[&str]) {
    for p in parts {
        assert!(err.contains(p), "error does not mention {p:?}: {err}");
    }
}

#[test]
fn the_fixture_itself_is_accepted() {
    let d = model_copy("ok");
    let data = shard(&d, 100);
    let out = tool()
        .args(["eval-loss", "--model", d.to_str().unwrap(), "--data", data.to_str().unwrap(), "--batch-size", "2", "--seq-len", "8", "--threads", "1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 99 usable tokens / 16 per batch = 6 batches
    assert_eq!(v["batches"], 6);
    assert_eq!(v["tokens"], 96);
    assert!(v["loss"].as_f64().unwrap() > 0.0);
}

#[test]
fn truncated_safetensors() {
    let d = model_copy("trunc");
    let f = d.join("model.safetensors");
    let len = std::fs::metadata(&f).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
    file.set_len(len / 2).unwrap();
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.safetensors", "invalid safetensors", "HINT"]);
}

#[test]
fn safetensors_header_length_beyond_the_file() {
    let d = model_copy("hdr");
    let f = d.join("model.safetensors");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[..8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    std::fs::write(&f, &bytes).unwrap();
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.safetensors", "invalid safetensors"]);
}

/// (name, dtype, shape, data offsets) of one tensor in a safetensors header.
type Entry<'a> = (&'a str, &'a str, Vec<usize>, (usize, usize));

/// Writes a safetensors file by hand: the header of `tensors`, then
/// `data_len` zero bytes.
fn handmade(path: &Path, tensors: &[Entry], data_len: usize) {
    let mut hdr = serde_json::Map::new();
    for (name, dt, shape, (a, b)) in tensors {
        hdr.insert(name.to_string(), serde_json::json!({"dtype": dt, "shape": shape, "data_offsets": [a, b]}));
    }
    let mut h = serde_json::to_vec(&serde_json::Value::Object(hdr)).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend(std::iter::repeat_n(0u8, data_len));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn safetensors_offsets_past_the_end() {
    let d = model_copy("offsets");
    handmade(&d.join("model.safetensors"), &[("model.embed_tokens.weight", "F32", vec![256, 64], (0, 256 * 64 * 4))], 1000);
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.safetensors", "invalid safetensors"]);
}

/// Rewrites the fixture with one tensor changed (or dropped, if `None`).
fn rewrite(d: &Path, name: &str, replace: Option<(&str, Vec<usize>)>) {
    let ck = llama2_model::weights::Checkpoint::open(&fixture().join("model.safetensors")).unwrap();
    let mut all = ck.read_all().unwrap();
    match replace {
        None => {
            all.remove(name);
            llama2_model::weights::save_safetensors(&d.join("model.safetensors"), &all, llama2_model::weights::SaveDtype::F32, None).unwrap();
        }
        Some((dtype, shape)) => {
            // hand-write every tensor so one can carry an unsupported dtype
            let mut tensors = Vec::new();
            let mut off = 0;
            let mut data = Vec::new();
            for (n, t) in &all {
                let (dt, sh, bytes): (&str, Vec<usize>, Vec<u8>) = if n == name {
                    let count: usize = shape.iter().product();
                    (dtype, shape.clone(), vec![0u8; count * 4])
                } else {
                    ("F32", t.shape.clone(), t.data.iter().flat_map(|x| x.to_le_bytes()).collect())
                };
                tensors.push((n.clone(), dt, sh, (off, off + bytes.len())));
                off += bytes.len();
                data.extend(bytes);
            }
            let refs: Vec<Entry> = tensors.iter().map(|(n, dt, s, o)| (n.as_str(), *dt, s.clone(), *o)).collect();
            let p = d.join("model.safetensors");
            handmade(&p, &refs, 0);
            let mut bytes = std::fs::read(&p).unwrap();
            bytes.extend(data);
            std::fs::write(&p, bytes).unwrap();
        }
    }
}

#[test]
fn missing_tensor() {
    let d = model_copy("missing");
    rewrite(&d, "model.layers.1.mlp.up_proj.weight", None);
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.layers.1.mlp.up_proj.weight", "missing"]);
}

#[test]
fn wrong_dtype() {
    let d = model_copy("dtype");
    rewrite(&d, "model.norm.weight", Some(("I32", vec![64])));
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.safetensors", "model.norm.weight", "I32"]);
}

#[test]
fn shape_not_matching_config() {
    let d = model_copy("shape");
    rewrite(&d, "model.layers.0.self_attn.k_proj.weight", Some(("F32", vec![64, 64])));
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["model.safetensors", "k_proj", "[64, 64]", "config.json"]);
}

#[test]
fn config_json_not_json() {
    let d = model_copy("cfg");
    std::fs::write(d.join("config.json"), "{ not json").unwrap();
    let err = eval(&d, &shard(&d, 100));
    assert_mentions(&err, &["config.json", "JSON"]);
}

#[test]
fn shard_with_bad_magic() {
    let d = model_copy("magic");
    let p = shard(&d, 100);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&p, bytes).unwrap();
    assert_mentions(&eval(&d, &p), &["data.bin", "bad magic", "HINT"]);
}

#[test]
fn shard_shorter_than_its_header_says() {
    let d = model_copy("short");
    let p = shard(&d, 100);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    assert_mentions(&eval(&d, &p), &["data.bin", "header says 100 tokens"]);
    std::fs::write(&p, &bytes[..500]).unwrap();
    assert_mentions(&eval(&d, &p), &["data.bin", "header"]);
}

#[test]
fn shard_with_ids_outside_the_vocabulary() {
    let d = model_copy("ids");
    let p = d.join("data.bin");
    let mut toks: Vec<u32> = (0..100).collect();
    toks[5] = 600; // vocab is 256
    llama2_model::shards::write_shard(&p, &toks).unwrap();
    assert_mentions(&eval(&d, &p), &["data.bin", "600", "vocabulary size 256"]);
}

#[test]
fn flags_out_of_range_are_rejected_not_clamped() {
    let d = model_copy("flags");
    let m = d.to_str().unwrap();
    let data = shard(&d, 100);
    let s = data.to_str().unwrap();
    for args in [
        vec!["eval-loss", "--model", m, "--data", s, "--batch-size", "0", "--seq-len", "8"],
        vec!["eval-loss", "--model", m, "--data", s, "--batch-size", "1", "--seq-len", "-3"],
        vec!["eval-loss", "--model", m, "--data", s, "--batch-size", "1", "--seq-len", "8", "--threads", "0"],
        vec!["generate", "--model", m, "--prompt-ids", "1,2", "--max-new-tokens", "4", "--temperature", "-1"],
        vec!["generate", "--model", m, "--prompt-ids", "1,2", "--max-new-tokens", "4", "--top-p", "1.5"],
        vec!["generate", "--model", m, "--prompt-ids", "1,x", "--max-new-tokens", "4"],
    ] {
        let err = fails(&args);
        assert!(err.contains("invalid value") || err.contains("error"), "{args:?}: {err}");
    }
    // a prompt id outside the vocabulary
    assert_mentions(&fails(&["generate", "--model", m, "--prompt-ids", "1,256", "--max-new-tokens", "4", "--threads", "1"]), &["256", "vocabulary"]);
    // a batch larger than the data
    assert_mentions(&fails(&["eval-loss", "--model", m, "--data", s, "--batch-size", "64", "--seq-len", "8", "--threads", "1"]), &["data.bin", "HINT"]);
}

/// `info --logit-chunk`: the training estimate shrinks by exactly the
/// logits (and their loss and entropy) of the rows not stored, and a chunk
/// longer than the batch is refused with a hint.
#[test]
fn info_logit_chunk() {
    let json = |extra: &[&str]| -> serde_json::Value {
        let o = tool().args(["info", "--preset", "ref-small", "--batch-size", "4", "--seq-len", "256", "--json"]).args(extra).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (full, chunked) = (json(&[]), json(&["--logit-chunk", "128"]));
    let gib = |v: &serde_json::Value| v["activations_gib"]["cpu_f32"].as_f64().unwrap() * (1u64 << 30) as f64;
    let vocab = 32000.0; // ref-small
    let saved = (4.0 * 256.0 - 128.0) * (vocab + 2.0) * 4.0;
    assert!((gib(&full) - gib(&chunked) - saved).abs() < 1.0, "{} - {} vs {saved}", gib(&full), gib(&chunked));
    assert_eq!(chunked["logit_chunk"], 128);
    let err = fails(&["info", "--preset", "ref-small", "--batch-size", "1", "--seq-len", "8", "--logit-chunk", "9"]);
    assert_mentions(&err, &["--logit-chunk 9", "HINT"]);
}

//! `train-tool tokenizer ...` and `train-tool tokenize` end to end: real
//! files in, outputs read back with the library, bad input rejected with a
//! message naming the file and a HINT and a non-zero exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use llama2_model::shards::ShardReader;
use llama2_model::tokenizer::{EncodeOptions, Tokenizer};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn gguf() -> PathBuf {
    repo("tests/data/tokenizer/ggml-vocab-llama-spm.gguf")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2_cli_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tool(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_train-tool")).args(args).output().expect("run train-tool");
    (o.status.success(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn encode_decode_jsonl_round_trip() {
    let d = tmp("encdec");
    let texts = ["Hello world", "", " two  spaces\tand tab\n", "🦙 Cửa Việt 333", "\"quotes\" \\ backslash"];
    let input = d.join("in.jsonl");
    std::fs::write(&input, texts.iter().map(|t| serde_json::json!({ "text": t }).to_string() + "\n").collect::<String>()).unwrap();
    let ids = d.join("ids.jsonl");
    let (ok, _, err) = tool(&["tokenizer", "encode", "--tokenizer", s(&gguf()), "--input", s(&input), "--output", s(&ids), "--bos", "--eos"]);
    assert!(ok, "{err}");
    let t = Tokenizer::load(gguf()).unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&ids).unwrap().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), texts.len());
    for (line, text) in lines.iter().zip(texts) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let got: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(got, t.encode(text, EncodeOptions { bos: true, eos: true }).unwrap());
    }
    let (ok, out, err) = tool(&["tokenizer", "decode", "--tokenizer", s(&gguf()), "--input", s(&ids)]);
    assert!(ok, "{err}");
    let back: Vec<String> = out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["text"].as_str().unwrap().to_string()).collect();
    assert_eq!(back, texts);
}

#[test]
fn bad_jsonl_is_rejected_with_line_and_hint() {
    let d = tmp("bad");
    for (name, content, want) in [
        ("notjson", "{\"text\": \"a\"}\nnot json\n", ":2: not valid JSON"),
        ("notext", "{\"txt\": \"a\"}\n", ":1: no \"text\" field"),
        ("number", "{\"text\": 5}\n", "\"text\" is a number"),
    ] {
        let p = d.join(format!("{name}.jsonl"));
        std::fs::write(&p, content).unwrap();
        let (ok, _, err) = tool(&["tokenizer", "encode", "--tokenizer", s(&gguf()), "--input", s(&p)]);
        assert!(!ok && err.contains(want) && err.contains("HINT") && err.contains(s(&p)), "{name}: {err}");
    }
    let p = d.join("ids.jsonl");
    std::fs::write(&p, "{\"ids\": [1, -3]}\n").unwrap();
    let (ok, _, err) = tool(&["tokenizer", "decode", "--tokenizer", s(&gguf()), "--input", s(&p)]);
    assert!(!ok && err.contains(":1: an id is not a non-negative integer") && err.contains("HINT"), "{err}");
    let (ok, _, err) = tool(&["tokenizer", "encode", "--tokenizer", s(&d.join("missing.gguf")), "--input", s(&p)]);
    assert!(!ok && err.contains("missing.gguf") && err.contains("HINT"), "{err}");
    let (ok, _, err) = tool(&["tokenize", "--tokenizer", s(&gguf()), "--input", s(&p), "--out-dir", s(&d), "--val-fraction", "1"]);
    assert!(!ok && err.contains("not in [0, 1)"), "{err}");
    let (ok, _, err) = tool(&["tokenizer", "train", "--input", s(&p), "--vocab-size", "2", "--out", s(&d.join("x.model"))]);
    assert!(!ok && err.contains("--vocab-size"), "{err}");
}

#[test]
fn tokenize_writes_shards_that_decode_to_the_documents() {
    let d = tmp("shards");
    let plays = ["hamlet_gut.txt", "macbeth_gut.txt", "sonnets_gut.txt"];
    let mut inputs: Vec<PathBuf> = plays.iter().map(|p| repo("tests/data/corpora/shakespeare").join(p)).collect();
    let jsonl = d.join("docs.jsonl");
    let jdocs = ["first record", "second\nrecord 🦙", "third"];
    std::fs::write(&jsonl, jdocs.iter().map(|t| serde_json::json!({ "text": t }).to_string() + "\n").collect::<String>()).unwrap();
    inputs.push(jsonl);
    let out = d.join("out");
    let g = gguf();
    let mut args = vec!["tokenize", "--tokenizer", s(&g), "--out-dir", s(&out), "--val-fraction", "0.34", "--shard-tokens", "50000", "--input"];
    args.extend(inputs.iter().map(|p| s(p)));
    // small segments exercise the streaming reader of long plain-text files
    args.extend(["--segment-bytes", "5000"]);
    let (ok, _, err) = tool(&args);
    assert!(ok, "{err}");
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("tokenize.json")).unwrap()).unwrap();
    // 6 documents, val takes those where floor((i+1)*0.34) steps: i = 2 and 5
    assert_eq!(meta["train"]["documents"], 4);
    assert_eq!(meta["val"]["documents"], 2);
    let t = Tokenizer::load(gguf()).unwrap();
    let read_split = |name: &str| -> Vec<u32> {
        let mut all = vec![];
        for sh in meta[name]["shards"].as_array().unwrap() {
            let r = ShardReader::open(out.join(sh[0].as_str().unwrap())).unwrap();
            r.check_ids(t.vocab_size()).unwrap();
            assert!(r.len() as u64 <= 50000);
            assert_eq!(r.len() as u64, sh[1].as_u64().unwrap());
            all.extend(r.tokens().iter().map(|&x| u32::from(x)));
        }
        all
    };
    let train = read_split("train");
    let val = read_split("val");
    assert!(meta["train"]["shards"].as_array().unwrap().len() > 1, "shards must rotate at 50000 tokens");
    // documents: <s> ids </s>, in order, split by document index
    let docs: Vec<String> = plays
        .iter()
        .map(|p| std::fs::read_to_string(repo("tests/data/corpora/shakespeare").join(p)).unwrap())
        .chain(jdocs.iter().map(|s| s.to_string()))
        .collect();
    let enc = |i: usize| t.encode(&docs[i], EncodeOptions { bos: true, eos: true }).unwrap();
    let want_train: Vec<u32> = [0, 1, 3, 4].iter().flat_map(|&i| enc(i)).collect();
    let want_val: Vec<u32> = [2, 5].iter().flat_map(|&i| enc(i)).collect();
    assert_eq!(train, want_train);
    assert_eq!(val, want_val);
}

#[test]
fn train_writes_a_model_that_loads_and_round_trips() {
    let d = tmp("train");
    let model = d.join("botchan.model");
    let (ok, _, err) = tool(&["tokenizer", "train", "--input", s(&repo("tests/data/corpora/botchan/botchan.txt")), "--vocab-size", "600", "--out", s(&model)]);
    assert!(ok, "{err}");
    let t = Tokenizer::load(&model).unwrap();
    assert_eq!(t.vocab_size(), 600);
    // deterministic: a second run writes the same bytes
    let again = d.join("again.model");
    let (ok, _, err) = tool(&["tokenizer", "train", "--input", s(&repo("tests/data/corpora/botchan/botchan.txt")), "--vocab-size", "600", "--out", s(&again)]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(&model).unwrap(), std::fs::read(&again).unwrap());
    let text = std::fs::read_to_string(repo("tests/data/corpora/botchan/botchan.txt")).unwrap();
    for line in text.lines().take(500) {
        assert_eq!(t.decode(&t.encode(line, EncodeOptions::default()).unwrap()).unwrap(), line);
    }
    let (ok, out, err) = tool(&["tokenizer", "info", "--tokenizer", s(&model), "--json"]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["vocab_size"], 600);
    assert_eq!(info["byte_fallback"], true);
}

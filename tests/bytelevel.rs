//! Byte-level BPE against the `tokenizers` library (what transformers
//! uses), on three vocabularies with different pre-tokenizers: the real
//! StarCoder2 vocabulary (GGUF from llama.cpp; Digits + ByteLevel, the
//! SmolLM / StarCoder family), and vocabularies in tokenizer.json trained
//! with GPT-2's and Llama 3's pre-tokenizers. Cases: 349 texts (scripts,
//! emoji, digits, whitespace runs, code, special tokens in text) and 100
//! random id sequences per vocabulary, made by
//! tools/scripts/make_bytelevel_cases.py; plus llama.cpp's own test texts
//! with the ids the real HF tokenizer gives them.
//!
//! Set `LLAMA2_VOCAB_DIR` to llama.cpp's `models/` directory (the
//! llama-cpp-python sdist has it) to check the real GPT-2, Llama 3
//! (`llama-bpe`) and StarCoder vocabularies against its `.inp`/`.out` too.

use llama2::model::tokenizer::{DecodeOptions, EncodeOptions, Kind, Tokenizer};
use serde_json::Value;
use std::path::{Path, PathBuf};

const NONE: EncodeOptions = EncodeOptions { bos: false, eos: false };
const KEEP: DecodeOptions = DecodeOptions { keep_control: true, strip_dummy_prefix: false };
const SKIP: DecodeOptions = DecodeOptions { keep_control: false, strip_dummy_prefix: false };

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn check_vocab(name: &str) {
    let cases: Value = serde_json::from_str(&std::fs::read_to_string(data("tokenizer/bytelevel_cases.json")).unwrap()).unwrap();
    let texts = cases["texts"].as_array().unwrap();
    let c = &cases["vocabs"][name];
    let tok = Tokenizer::load(data(&format!("tokenizer/{}", c["file"].as_str().unwrap()))).unwrap();
    assert_eq!(tok.kind(), Kind::ByteLevel);
    let mut bad = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let t = t.as_str().unwrap();
        let want = ids_of(&c["ids"][i]);
        let got = tok.encode_special(t, NONE).unwrap();
        if got != want {
            bad.push(format!("encode {t:?}: got {got:?}, tokenizers {want:?}"));
        }
        for (opts, key) in [(KEEP, "decode"), (SKIP, "decode_skip")] {
            let d = tok.decode_with(&want, opts).unwrap();
            if d != c[key][i].as_str().unwrap() {
                bad.push(format!("{key} {want:?}: got {d:?}, tokenizers {:?}", c[key][i]));
            }
        }
    }
    for (i, r) in c["random_ids"].as_array().unwrap().iter().enumerate() {
        let r = ids_of(r);
        for (opts, key) in [(KEEP, "random_decode"), (SKIP, "random_decode_skip")] {
            let d = tok.decode_with(&r, opts).unwrap();
            if d != c[key][i].as_str().unwrap() {
                bad.push(format!("{key} {r:?}: got {d:?}, tokenizers {:?}", c[key][i]));
            }
        }
    }
    let n = texts.len();
    assert!(bad.is_empty(), "{name}: {} of {n} texts / 100 random sequences differ from tokenizers:\n{}", bad.len(), bad[..bad.len().min(10)].join("\n"));
    eprintln!(
        "{name} ({}): {n} texts encode and decode as tokenizers, 100 random id sequences decode as tokenizers",
        tok.info().pre_tokenizer.unwrap_or_default()
    );
}

#[test]
fn starcoder_gguf_matches_tokenizers() {
    check_vocab("starcoder");
}

#[test]
fn gpt2_pretokenizer_matches_tokenizers() {
    check_vocab("gpt2");
    let t = Tokenizer::load(data("tokenizer/bytelevel_gpt2.tokenizer.json")).unwrap();
    assert_eq!(t.info().pre_tokenizer.as_deref(), Some("gpt-2"));
}

#[test]
fn llama3_pretokenizer_matches_tokenizers() {
    check_vocab("llama3");
    let t = Tokenizer::load(data("tokenizer/bytelevel_llama3.tokenizer.json")).unwrap();
    assert_eq!(t.info().pre_tokenizer.as_deref(), Some("llama3"));
    // the TemplateProcessing-less file has no BOS; its specials are CONTROL
    let eot = t.piece_to_id("<|eot_id|>").unwrap();
    assert_eq!(t.encode_special("a<|eot_id|>", NONE).unwrap().last(), Some(&eot));
    // plain encode keeps typed special tokens as text
    assert!(!t.encode("a<|eot_id|>", NONE).unwrap().contains(&eot));
}

/// llama.cpp's tokenizer test: `.inp` texts separated by
/// "\n__ggml_vocab_test__\n", `.out` the real HF tokenizer's ids per line.
fn check_llama_cpp_test(gguf: &Path) -> usize {
    let tok = Tokenizer::load(gguf).unwrap();
    let inp = std::fs::read_to_string(format!("{}.inp", gguf.display())).unwrap();
    let out = std::fs::read_to_string(format!("{}.out", gguf.display())).unwrap();
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let lines: Vec<&str> = out.split('\n').collect();
    for (t, o) in texts.iter().zip(&lines) {
        let want: Vec<u32> = o.split_whitespace().map(|x| x.parse().unwrap()).collect();
        assert_eq!(tok.encode_special(t, NONE).unwrap(), want, "{}: {t:?}", gguf.display());
    }
    texts.len()
}

#[test]
fn starcoder_matches_the_real_hf_tokenizer_on_llama_cpp_tests() {
    let n = check_llama_cpp_test(&data("tokenizer/ggml-vocab-starcoder.gguf"));
    assert!(n >= 40);
}

#[test]
fn real_vocabularies_in_llama2_vocab_dir() {
    let Ok(dir) = std::env::var("LLAMA2_VOCAB_DIR") else {
        eprintln!("LLAMA2_VOCAB_DIR not set: the extra real vocabularies are not checked (see the module doc)");
        return;
    };
    for v in ["gpt-2", "llama-bpe", "starcoder"] {
        let p = Path::new(&dir).join(format!("ggml-vocab-{v}.gguf"));
        let n = check_llama_cpp_test(&p);
        eprintln!("{v}: {n} llama.cpp test texts encode as the real HF tokenizer");
    }
}

#[test]
fn byte_level_round_trips_any_text() {
    let tok = Tokenizer::load(data("tokenizer/ggml-vocab-starcoder.gguf")).unwrap();
    for t in ["plain", "  \t\n\r\n", "🦙👨‍👩‍👧‍👦 中文 ٣٤٥", "\u{0}\u{1f}\u{7f}", "<|endoftext|> typed"] {
        let ids = tok.encode(t, NONE).unwrap();
        assert_eq!(tok.decode_with(&ids, KEEP).unwrap(), t);
    }
}

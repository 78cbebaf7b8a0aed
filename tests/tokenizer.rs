//! Tokenizer tests against real reference outputs (tests/data/tokenizer,
//! see its PROVENANCE.md): llama.cpp's Llama 2 vocabulary test (46 texts),
//! llama-tokenizer-js's cases, a generated set from the `sentencepiece`
//! package (tools/scripts/make_tokenizer_cases.py), sentencepiece's own
//! botchan models; round trips on the corpora; malformed files.

use std::path::{Path, PathBuf};

use llama2_model::tokenizer::{DecodeOptions, EncodeCache, EncodeOptions, Tokenizer, TokenizerError};
use serde_json::Value;

fn data(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn llama() -> Tokenizer {
    Tokenizer::load(data("tokenizer/ggml-vocab-llama-spm.gguf")).expect("load the Llama 2 GGUF vocabulary")
}

const NO_SPECIALS: EncodeOptions = EncodeOptions { bos: false, eos: false };

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids array").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn json(p: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(p)).expect("read fixture")).expect("parse fixture")
}

#[test]
fn llama_vocab_metadata() {
    let t = llama();
    assert_eq!(t.vocab_size(), 32000);
    assert_eq!((t.unk_id(), t.bos_id(), t.eos_id()), (0, Some(1), Some(2)));
    assert_eq!(t.id_to_piece(29871), Some("\u{2581}"));
    assert_eq!(t.id_to_piece(3), Some("<0x00>"));
    assert!(t.add_bos_default() && !t.add_eos_default());
    let info = t.info();
    assert!(info.byte_fallback && info.split_digits && info.word_split, "{info:?}");
}

#[test]
fn llama_cpp_vocab_test_46_texts() {
    let t = llama();
    let inp = std::fs::read_to_string(data("tokenizer/ggml-vocab-llama-spm.gguf.inp")).unwrap();
    let out = std::fs::read_to_string(data("tokenizer/ggml-vocab-llama-spm.gguf.out")).unwrap();
    // texts are separated by this line; the file ends with one too
    let texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    let expected: Vec<&str> = out.split('\n').collect();
    let texts = &texts[..texts.len() - 1];
    assert_eq!(texts.len(), 46);
    let mut failed = vec![];
    for (i, text) in texts.iter().enumerate() {
        let want: Vec<u32> = expected[i].split_whitespace().map(|x| x.parse().unwrap()).collect();
        let got = t.encode(text, NO_SPECIALS).unwrap();
        if got != want {
            failed.push(format!("case {i} {text:?}: got {got:?} want {want:?}"));
        }
        assert_eq!(&t.decode(&got).unwrap(), text, "round trip of case {i}");
    }
    assert!(failed.is_empty(), "{} of 46 differ:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn llama_tokenizer_js_cases() {
    let t = llama();
    let cases = json("tokenizer/llama_tokenizer_js_cases.json");
    let enc = cases["encode_cases"].as_array().unwrap();
    assert_eq!(enc.len(), 12);
    for c in enc {
        let text = c["text"].as_str().unwrap();
        let got = t.encode(text, EncodeOptions { bos: true, eos: false }).unwrap();
        assert_eq!(got, ids_of(&c["ids_with_bos"]), "{text:?}");
    }
    // llama-tokenizer-js decode(ids, add_bos_token, add_preceding_space):
    // add_bos_token=true hides a leading BOS, false writes it as "<s>";
    // add_preceding_space=true drops the dummy-prefix space. In our terms:
    // keep_control = !add_bos_token, strip_dummy_prefix = add_preceding_space.
    let dec = cases["decode_cases"].as_array().unwrap();
    assert_eq!(dec.len(), 8);
    for c in dec {
        let opts = DecodeOptions { keep_control: !c["add_bos_token"].as_bool().unwrap(), strip_dummy_prefix: c["add_preceding_space"].as_bool().unwrap() };
        let got = t.decode_with(&ids_of(&c["ids"]), opts).unwrap();
        assert_eq!(got, c["text"].as_str().unwrap(), "{c}");
    }
}

#[test]
fn sentencepiece_generated_cases() {
    let t = llama();
    let cases = json("tokenizer/llama_spm_generated_cases.json");
    let enc = cases["encode_cases"].as_array().unwrap();
    assert!(enc.len() >= 400, "fixture too small: {}", enc.len());
    let mut cache = EncodeCache::new();
    let mut failed = vec![];
    for c in enc {
        let text = c["text"].as_str().unwrap();
        let want = ids_of(&c["ids"]);
        let got = t.encode(text, NO_SPECIALS).unwrap();
        // the word cache, shared across texts, must not change anything
        let cached = t.encode_with(text, NO_SPECIALS, &mut cache).unwrap();
        if got != want || cached != want {
            failed.push(format!("{text:?}: got {got:?} want {want:?}"));
            continue;
        }
        assert_eq!(t.decode(&got).unwrap(), c["decoded"].as_str().unwrap(), "decode of {text:?}");
    }
    assert!(failed.is_empty(), "{} of {} differ:\n{}", failed.len(), enc.len(), failed[..failed.len().min(10)].join("\n"));
    let dec = cases["decode_cases"].as_array().unwrap();
    assert!(dec.len() >= 50);
    for c in dec {
        let got = t.decode(&ids_of(&c["ids"])).unwrap();
        assert_eq!(got, c["text"].as_str().unwrap(), "decode of {}", c["ids"]);
    }
}

#[test]
fn botchan_models_read_and_bpe_encodes_like_sentencepiece() {
    let bpe = Tokenizer::load(data("corpora/botchan/botchan_en_bpe_1000.model")).unwrap();
    let uni = Tokenizer::load(data("corpora/botchan/botchan_en_unigram_1000.model")).unwrap();
    for (t, kind) in [(&bpe, "Bpe"), (&uni, "Unigram")] {
        let info = t.info();
        assert_eq!(info.vocab_size, 1000);
        assert_eq!(info.model_type, kind);
        assert!(info.normalizer.ends_with("nfkc"), "{}", info.normalizer);
        assert!(info.remove_extra_whitespaces && info.add_dummy_prefix && !info.byte_fallback, "{info:?}");
        assert_eq!((t.unk_id(), t.bos_id(), t.eos_id()), (0, Some(1), Some(2)));
        assert_eq!(t.id_to_piece(1), Some("<s>"));
    }
    assert_eq!(bpe.id_to_piece(3), Some("\u{2581}t"));
    // unigram models are read (pieces, specs) but not encoded
    assert!(matches!(uni.encode("x", NO_SPECIALS), Err(TokenizerError::Unsupported { .. })));
    let cases = json("tokenizer/llama_spm_generated_cases.json");
    let cases = cases["botchan_bpe_cases"].as_array().unwrap();
    assert!(cases.len() >= 400);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = bpe.encode(text, NO_SPECIALS).unwrap();
        assert_eq!(got, ids_of(&c["ids"]), "{text:?}");
        assert_eq!(bpe.decode(&got).unwrap(), c["decoded"].as_str().unwrap(), "decode of {text:?}");
    }
}

fn corpus_files() -> Vec<PathBuf> {
    let mut v = vec![];
    for d in ["corpora/shakespeare", "corpora/janeausten", "corpora/botchan"] {
        for e in std::fs::read_dir(data(d)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "txt") {
                v.push(p);
            }
        }
    }
    v.sort();
    assert!(v.len() >= 5);
    v
}

#[test]
fn round_trip_corpora_llama() {
    let t = llama();
    let mut cache = EncodeCache::new();
    for p in corpus_files() {
        let text = std::fs::read_to_string(&p).unwrap();
        // whole file as one document, and each line on its own
        let ids = t.encode_with(&text, NO_SPECIALS, &mut cache).unwrap();
        assert!(ids.len() > text.len() / 8, "{}: suspiciously few tokens", p.display());
        assert!(t.decode(&ids).unwrap() == text, "{} does not round-trip", p.display());
        for line in text.lines() {
            let ids = t.encode_with(line, NO_SPECIALS, &mut cache).unwrap();
            assert_eq!(t.decode(&ids).unwrap(), line, "{}", p.display());
        }
    }
}

#[test]
fn word_cache_and_segments_change_nothing() {
    let t = llama();
    assert!(t.segment_safe());
    let text = std::fs::read_to_string(data("corpora/shakespeare/sonnets_gut.txt")).unwrap();
    let plain = t.encode(&text, NO_SPECIALS).unwrap();
    let mut cache = EncodeCache::new();
    let mut no_cache = vec![];
    t.encode_into(&text, NO_SPECIALS, true, false, &mut cache, &mut no_cache).unwrap();
    assert_eq!(plain, no_cache);
    // cut before every 1000th space that follows a non-space; continuation
    // segments are encoded without the dummy prefix
    let mut segs = vec![];
    let mut start = 0;
    let b = text.as_bytes();
    for i in 1..b.len() {
        if b[i] == b' ' && b[i - 1] != b' ' && i - start > 1000 {
            segs.push(&text[start..i]);
            start = i;
        }
    }
    segs.push(&text[start..]);
    assert!(segs.len() > 10);
    let mut joined = vec![];
    for (k, s) in segs.iter().enumerate() {
        t.encode_into(s, NO_SPECIALS, k == 0, true, &mut cache, &mut joined).unwrap();
    }
    assert_eq!(plain, joined);
}

#[test]
fn bos_eos_and_batch() {
    let t = llama();
    let ids = t.encode("Hello world", EncodeOptions { bos: true, eos: true }).unwrap();
    assert_eq!(ids, vec![1, 15043, 3186, 2]);
    assert_eq!(t.decode(&ids).unwrap(), "Hello world");
    let texts = ["a", "", "Hello world", " x "];
    let batch = t.encode_batch(&texts, EncodeOptions { bos: true, eos: false }).unwrap();
    for (s, ids) in texts.iter().zip(&batch) {
        assert_eq!(ids, &t.encode(s, EncodeOptions { bos: true, eos: false }).unwrap());
    }
    assert!(matches!(t.decode(&[32000]), Err(TokenizerError::IdOutOfRange { id: 32000, .. })));
}

#[test]
fn spm_model_written_by_us_round_trips() {
    let t = llama();
    let dir = tempdir("spm_write");
    let path = dir.join("llama.model");
    t.save_spm_model(&path).unwrap();
    let back = Tokenizer::load(&path).unwrap();
    assert_eq!(back.pieces(), t.pieces());
    assert_eq!(back.model_proto().normalizer, t.model_proto().normalizer);
    let text = "Hello, y'all! 🦙 3333 \t\n  x";
    assert_eq!(back.encode(text, NO_SPECIALS).unwrap(), t.encode(text, NO_SPECIALS).unwrap());
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2_tok_test_{name}_{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Every error names the file and ends with a HINT.
fn assert_clear(e: &TokenizerError, path: &Path) {
    let m = e.to_string();
    assert!(m.contains(&path.display().to_string()), "message lacks the path: {m}");
    assert!(m.contains("HINT"), "message lacks a hint: {m}");
}

#[test]
fn truncated_files_are_rejected_with_a_clear_error() {
    let dir = tempdir("trunc");
    for src in ["tokenizer/ggml-vocab-llama-spm.gguf", "corpora/botchan/botchan_en_bpe_1000.model"] {
        let bytes = std::fs::read(data(src)).unwrap();
        let n = bytes.len();
        // cut points: inside the header, inside the pieces, near the end
        for cut in [0, 3, 7, 20, 100, n / 3, n / 2, n - 40, n - 5, n - 1] {
            let p = dir.join(format!("cut_{cut}"));
            std::fs::write(&p, &bytes[..cut]).unwrap();
            match Tokenizer::load(&p) {
                Ok(_) => panic!("{src} cut at {cut} of {n} bytes loaded"),
                Err(e) => assert_clear(&e, &p),
            }
        }
    }
    let missing = dir.join("does_not_exist.model");
    assert_clear(&Tokenizer::load(&missing).unwrap_err(), &missing);
}

/// One GGUF metadata entry: key, value type code, encoded value.
type Kv = (&'static str, u32, Vec<u8>);

/// A minimal GGUF writer for the wrong-type tests.
fn gguf(kvs: &[Kv]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend(0u64.to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, t, v) in kvs {
        b.extend((k.len() as u64).to_le_bytes());
        b.extend(k.as_bytes());
        b.extend(t.to_le_bytes());
        b.extend(v);
    }
    b
}

fn gstr(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_le_bytes().to_vec();
    v.extend(s.as_bytes());
    v
}

fn garr(elem_type: u32, items: &[Vec<u8>]) -> Vec<u8> {
    let mut v = elem_type.to_le_bytes().to_vec();
    v.extend((items.len() as u64).to_le_bytes());
    for i in items {
        v.extend(i);
    }
    v
}

#[test]
fn gguf_with_wrong_types_is_rejected() {
    let dir = tempdir("gguf_types");
    let tokens = garr(8, &[gstr("<unk>"), gstr("a")]);
    let scores = garr(6, &[0f32.to_le_bytes().to_vec(), (-1f32).to_le_bytes().to_vec()]);
    let types = garr(5, &[2i32.to_le_bytes().to_vec(), 1i32.to_le_bytes().to_vec()]);
    let good = vec![
        ("tokenizer.ggml.model", 8, gstr("llama")),
        ("tokenizer.ggml.tokens", 9, tokens.clone()),
        ("tokenizer.ggml.scores", 9, scores.clone()),
        ("tokenizer.ggml.token_type", 9, types.clone()),
    ];
    let p = dir.join("good.gguf");
    std::fs::write(&p, gguf(&good)).unwrap();
    let t = Tokenizer::load(&p).unwrap();
    assert_eq!(t.encode("a", NO_SPECIALS).unwrap(), vec![0, 1]); // "▁" is unknown, no byte fallback
    let cases: Vec<(&str, Vec<Kv>, &str)> = vec![
        ("tokens_ints", vec![good[0].clone(), ("tokenizer.ggml.tokens", 9, types.clone()), good[2].clone(), good[3].clone()], "expected an array of string"),
        ("model_int", vec![("tokenizer.ggml.model", 4, 7u32.to_le_bytes().to_vec()), good[1].clone(), good[2].clone(), good[3].clone()], "expected a string"),
        (
            "scores_short",
            vec![good[0].clone(), good[1].clone(), ("tokenizer.ggml.scores", 9, garr(6, &[0f32.to_le_bytes().to_vec()])), good[3].clone()],
            "2 tokens but 1 scores",
        ),
        ("gpt2_no_merges", vec![("tokenizer.ggml.model", 8, gstr("gpt2")), good[1].clone(), good[2].clone(), good[3].clone()], "without tokenizer.ggml.merges"),
        ("bert", vec![("tokenizer.ggml.model", 8, gstr("bert")), good[1].clone(), good[2].clone(), good[3].clone()], "only \"llama\""),
        (
            "bad_type_code",
            vec![
                good[0].clone(),
                good[1].clone(),
                good[2].clone(),
                ("tokenizer.ggml.token_type", 9, garr(5, &[9i32.to_le_bytes().to_vec(), 1i32.to_le_bytes().to_vec()])),
            ],
            "unknown token type 9",
        ),
        (
            "no_unk",
            vec![
                good[0].clone(),
                good[1].clone(),
                good[2].clone(),
                ("tokenizer.ggml.token_type", 9, garr(5, &[1i32.to_le_bytes().to_vec(), 1i32.to_le_bytes().to_vec()])),
            ],
            "UNKNOWN",
        ),
        (
            "bos_range",
            vec![good[0].clone(), good[1].clone(), good[2].clone(), good[3].clone(), ("tokenizer.ggml.bos_token_id", 4, 5u32.to_le_bytes().to_vec())],
            "out of range",
        ),
        (
            "huge_array",
            vec![
                good[0].clone(),
                ("tokenizer.ggml.tokens", 9, {
                    let mut v = 8u32.to_le_bytes().to_vec();
                    v.extend(u64::MAX.to_le_bytes());
                    v
                }),
                good[2].clone(),
                good[3].clone(),
            ],
            "cannot fit",
        ),
    ];
    for (name, kvs, want) in cases {
        let p = dir.join(format!("{name}.gguf"));
        std::fs::write(&p, gguf(&kvs)).unwrap();
        let e = Tokenizer::load(&p).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert_clear(&e, &p);
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
}

#[test]
fn spm_model_with_wrong_types_is_rejected() {
    let dir = tempdir("proto_types");
    let good = std::fs::read(data("corpora/botchan/botchan_en_bpe_1000.model")).unwrap();
    // field 1 (pieces) as a varint instead of a message
    let mut bad_wire = vec![0x08, 0x01];
    bad_wire.extend(&good);
    // a piece whose score is a varint (wire type 0) instead of fixed32
    let bad_score = vec![0x0a, 0x04, 0x0a, 0x00, 0x10, 0x01];
    // a piece with an undefined type code
    let bad_kind = vec![0x0a, 0x05, 0x0a, 0x01, b'a', 0x18, 0x09];
    for (name, bytes, want) in [("wire", bad_wire, "wire type"), ("score", bad_score, "score"), ("kind", bad_kind, "unknown piece type 9")] {
        let p = dir.join(format!("{name}.model"));
        std::fs::write(&p, &bytes).unwrap();
        let e = Tokenizer::from_spm_file(&p).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert_clear(&e, &p);
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
}

/// Bytes per token of `t` over the lines of `text` (each line encoded alone,
/// as sentencepiece's botchan models were trained on lines).
fn bytes_per_token(t: &Tokenizer, text: &str) -> f64 {
    let mut cache = EncodeCache::new();
    let (mut bytes, mut tokens) = (0usize, 0usize);
    for line in text.lines() {
        bytes += line.len();
        tokens += t.encode_with(line, NO_SPECIALS, &mut cache).unwrap().len();
    }
    bytes as f64 / tokens as f64
}

/// The bound on compression: bytes per token within 3% of the peer.
const COMPRESSION_TOLERANCE: f64 = 0.03;

#[test]
fn trained_botchan_vocab_compresses_like_sentencepiece() {
    use llama2_model::tokenizer::train::{TrainConfig, Trainer};
    let text = std::fs::read_to_string(data("corpora/botchan/botchan.txt")).unwrap();
    // Peers: sentencepiece's own botchan_en_bpe_1000.model (nfkc, no byte
    // fallback: all 997 non-special ids are pieces), and sentencepiece's
    // trainer run with our default Llama settings (byte fallback spends 256
    // of the 1000 ids on bytes), both V=1000.
    let peers = [
        ("botchan_en_bpe_1000.model", "corpora/botchan/botchan_en_bpe_1000.model", false),
        ("sentencepiece, Llama settings", "tokenizer/botchan_spm_llama_settings_1000.model", true),
    ];
    for (name, peer_path, byte_fallback) in peers {
        let peer = Tokenizer::load(data(peer_path)).unwrap();
        let mut tr = Trainer::new(TrainConfig { vocab_size: 1000, byte_fallback, ..Default::default() }).unwrap();
        tr.add_text(&text);
        let ours = tr.train(&mut |_| {}).unwrap();
        assert_eq!(ours.vocab_size(), 1000);
        let (bpt, peer_bpt) = (bytes_per_token(&ours, &text), bytes_per_token(&peer, &text));
        let common = ours.pieces().iter().filter(|p| peer.piece_to_id(&p.text).is_some()).count();
        eprintln!("vs {name}: ours {bpt:.4} bytes/token, peer {peer_bpt:.4}; {common}/1000 pieces in common");
        assert!(bpt >= peer_bpt * (1.0 - COMPRESSION_TOLERANCE), "vs {name}: {bpt} < {peer_bpt} - 3%");
        if byte_fallback {
            // identity normalisation + byte fallback: every line round-trips
            let mut cache = EncodeCache::new();
            for line in text.lines() {
                let ids = ours.encode_with(line, NO_SPECIALS, &mut cache).unwrap();
                assert_eq!(ours.decode(&ids).unwrap(), line);
            }
        }
    }
}

#[test]
fn hf_tokenizer_json_encodes_like_tokenizers() {
    // tokenizer.json written by `tokenizers` (transformers' Llama layout with
    // the Metaspace pre-tokenizer) from a SentencePiece BPE model, and the
    // ids `tokenizers` gives (tools/scripts/make_hf_tokenizer_cases.py)
    let path = data("tokenizer/botchan_llama_settings_tokenizer.json");
    let t = Tokenizer::load(&path).unwrap();
    let spm = Tokenizer::load(data("tokenizer/botchan_spm_llama_settings_1000.model")).unwrap();
    assert_eq!(t.info().format, "HfJson");
    assert_eq!(t.vocab_size(), spm.vocab_size());
    assert_eq!((t.unk_id(), t.bos_id(), t.eos_id()), (0, Some(1), Some(2)));
    let cases = json("tokenizer/botchan_llama_settings_tokenizer.cases.json");
    let cases = cases["encode_cases"].as_array().unwrap();
    assert!(cases.len() >= 400);
    let mut differ_from_spm = 0;
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = t.encode(text, NO_SPECIALS).unwrap();
        assert_eq!(got, ids_of(&c["ids"]), "{text:?}");
        // the only difference from SentencePiece: no "▁" is added before a leading space
        if got != spm.encode(text, NO_SPECIALS).unwrap() {
            differ_from_spm += 1;
            assert!(text.starts_with(' ') || text.starts_with('\u{2581}'), "{text:?}");
        }
    }
    assert!(differ_from_spm > 0);
    // the Metaspace prefix rule has no .model equivalent: refused, not silently changed
    let e = t.save_spm_model(tempdir("hf").join("x.model")).unwrap_err();
    assert_clear(&e, &path);
}

#[test]
fn hf_tokenizer_json_bad_input() {
    let dir = tempdir("hf_bad");
    let good: Value = json("tokenizer/botchan_llama_settings_tokenizer.json");
    let mut cases: Vec<(&str, Value, &str)> = vec![];
    let mut v = good.clone();
    v["model"]["type"] = "Unigram".into();
    cases.push(("unigram", v, "model.type \"Unigram\""));
    let mut v = good.clone();
    v["pre_tokenizer"] = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false});
    cases.push(("bytelevel", v, "byte_fallback in a byte-level model"));
    let mut v = good.clone();
    v["model"]["merges"][3] = 7.into();
    cases.push(("merge", v, "merge 3 is 7"));
    let mut v = good.clone();
    v["model"]["vocab"].as_object_mut().unwrap().remove("<0x41>");
    cases.push(("gap", v, "without gaps"));
    for (name, v, want) in cases {
        let p = dir.join(format!("{name}.json"));
        std::fs::write(&p, v.to_string()).unwrap();
        let e = Tokenizer::load(&p).err().unwrap_or_else(|| panic!("{name} loaded"));
        assert_clear(&e, &p);
        assert!(e.to_string().contains(want), "{name}: {e}");
    }
}

#[test]
fn unused_user_defined_and_control_pieces_like_sentencepiece() {
    // exotic_pieces.model: UNUSED pieces (merged, then split back),
    // USER_DEFINED pieces (matched whole; one holds U+2581 inside, which turns
    // word splitting off), an extra CONTROL piece (never matched in text)
    let t = Tokenizer::load(data("tokenizer/exotic_pieces.model")).unwrap();
    let info = t.info();
    assert!(!info.word_split, "{info:?}");
    assert!(info.piece_kinds.contains(&("unused".to_string(), 4)), "{info:?}");
    assert!(info.piece_kinds.contains(&("user_defined".to_string(), 4)), "{info:?}");
    let cases = json("tokenizer/llama_spm_generated_cases.json");
    let cases = cases["exotic_cases"].as_array().unwrap();
    assert!(cases.len() >= 100);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let got = t.encode(text, NO_SPECIALS).unwrap();
        assert_eq!(got, ids_of(&c["ids"]), "{text:?}");
        assert_eq!(t.decode(&got).unwrap(), c["decoded"].as_str().unwrap(), "decode of {text:?}");
    }
}

#[test]
fn corrupted_files_never_panic() {
    // random byte changes in the headers and pieces: loading may succeed or
    // fail, but a failure must be a clear error, and a loaded vocabulary must
    // encode and decode without panicking
    let dir = tempdir("corrupt");
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (src, span) in [("tokenizer/ggml-vocab-llama-spm.gguf", 4096usize), ("corpora/botchan/botchan_en_bpe_1000.model", 251_564)] {
        let good = std::fs::read(data(src)).unwrap();
        for k in 0..60 {
            let mut b = good.clone();
            for _ in 0..1 + rnd() % 4 {
                let i = 1 + (rnd() as usize) % span.min(b.len() - 1);
                b[i] = rnd() as u8;
            }
            let p = dir.join(format!("c{k}"));
            std::fs::write(&p, &b).unwrap();
            match Tokenizer::load(&p) {
                Ok(t) => {
                    if let Ok(ids) = t.encode("Hello wörld 🦙 333  x", NO_SPECIALS) {
                        t.decode(&ids).unwrap();
                    }
                }
                Err(e) => assert_clear(&e, &p),
            }
        }
    }
}

//! GGUF (llama.cpp) against the reference implementations: the `gguf` Python
//! package (llama.cpp's writer, quantizers and dequantizer) and transformers
//! loading the same files. Fixtures: tests/fixtures/gguf/, written by
//! tools/scripts/make_gguf_fixtures.py (see its header; tests/fixtures/README.md).
//!
//! - every ggml type we read (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
//!   Q2_K..Q6_K) dequantizes to exactly gguf's f32 values (bit for bit);
//! - the two mixed-type models (every type in some matrix, q/k included)
//!   dequantize tensor by tensor to gguf's values (FNV-1a digests of the
//!   f32 bytes) and give transformers' logits (`from_pretrained(...,
//!   gguf_file=...)`) within [`LOGITS_RTOL`];
//! - `convert --from gguf --to hf` then `--to gguf --dtype D` (the library
//!   functions train-tool calls) writes, for every D, the very bytes that
//!   transformers was shown to load with the logits of the committed
//!   reference, and we give those logits from the file too;
//! - unsupported files fail with errors naming the file and the key.

use llama2::model::formats::ggml_quants::GgmlType;
use llama2::model::gguf::{self, GgufFile, WriteDtype};
use llama2::model::weights::Checkpoint;
use llama2::model::{Acts, LogitRows, Model};
use llama2::runtime::{v, Backend, CpuBackend};
use std::path::{Path, PathBuf};

/// Logits: max |ours - transformers| / max |transformers|. Both run the
/// same f32 weights in f32; they differ in summation order only (~1e-6
/// relative on the parity fixtures); 1e-4 is the bar.
const LOGITS_RTOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf").join(name)
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("llama2_gguf_{name}_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// FNV-1a 64 of bytes (the digest the fixture script writes).
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
    let diff = got.iter().zip(want).fold(0f64, |m, (&a, &b)| {
        let d = (f64::from(a) - f64::from(b)).abs();
        assert!(d.is_finite(), "non-finite logit");
        m.max(d)
    });
    diff / scale.max(1e-30)
}

/// Logits of `ids (b, t)` from a GGUF model file, all positions.
fn logits_of(path: &Path, ids: &[u32], b: usize, t: usize) -> Vec<f32> {
    let be = CpuBackend::new(2).unwrap();
    let model = Model::load_path(&be, path).unwrap();
    let mut acts = Acts::new(&be, &model.cfg, b, t, false, LogitRows::All).unwrap();
    model.forward(&be, &mut acts, ids, None).unwrap();
    let mut out = vec![0f32; b * t * model.cfg.vocab_size];
    be.download(v(&acts.a.logits), &mut out).unwrap();
    out
}

#[test]
fn every_quant_type_dequantizes_as_the_gguf_package() {
    let f = GgufFile::open(&fixture("quants.gguf")).unwrap();
    let reference = Checkpoint::open(&fixture("quants_ref.safetensors")).unwrap();
    let mut seen = Vec::new();
    for t in &f.tensors {
        let ty = GgmlType::from_code(t.type_code).unwrap();
        let (shape, got) = f.read(&t.name).unwrap();
        let want = reference.read(&t.name).unwrap();
        assert_eq!(shape, want.shape, "{}", t.name);
        let bad = got.iter().zip(&want.data).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
        assert_eq!(bad, 0, "{} ({}): {bad} of {} values differ from gguf's dequantizer", t.name, ty.name(), got.len());
        seen.push(ty);
    }
    for ty in GgmlType::ALL {
        assert!(seen.contains(&ty), "quants.gguf lacks {}", ty.name());
    }
}

fn check_mixed(name: &str) {
    let path = fixture(&format!("{name}.gguf"));
    let reference = Checkpoint::open(&fixture(&format!("{name}_ref.safetensors"))).unwrap();
    // every tensor, in the file's layout, as gguf's dequantizer gives it
    let f = GgufFile::open(&path).unwrap();
    let mut types = std::collections::BTreeSet::new();
    for t in &f.tensors {
        let (_, got) = f.read(&t.name).unwrap();
        let (_, want) = reference.read_ints(&format!("fnv.{}", t.name)).unwrap();
        let want = want.iter().fold(0u64, |h, &b| (h << 8) | b as u64);
        assert_eq!(fnv1a64(&f32_bytes(&got)), want, "{name}: tensor {} differs from gguf's dequantizer", t.name);
        types.insert(t.type_code);
    }
    eprintln!("{name}: {} tensors of {} ggml types bit-identical to gguf's dequantizer", f.tensors.len(), types.len());
    // transformers' logits
    let (shape, ids) = reference.read_ints("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let got = logits_of(&path, &ids, shape[0], shape[1]);
    let want = reference.read("logits").unwrap().data;
    let e = rel_err(&got, &want);
    eprintln!("{name}: logits vs transformers: rel err {e:.2e}");
    assert!(e <= LOGITS_RTOL, "{name}: logits rel err {e:.3e}");
}

#[test]
fn mixed_type_model_untied_gives_transformers_logits() {
    check_mixed("mixed_a");
    // all 13 types are in this one model
    let f = GgufFile::open(&fixture("mixed_a.gguf")).unwrap();
    for ty in GgmlType::ALL {
        assert!(f.tensors.iter().any(|t| t.type_code == ty.code()), "mixed_a lacks {}", ty.name());
    }
}

#[test]
fn mixed_type_model_tied_gqa_gives_transformers_logits() {
    check_mixed("mixed_b");
    let g = gguf::LlamaGguf::open(&fixture("mixed_b.gguf")).unwrap();
    assert!(g.cfg.tie_embeddings);
    assert_eq!((g.cfg.n_heads, g.cfg.n_kv_heads, g.cfg.rope_theta, g.cfg.rms_eps), (4, 1, 500000.0, f64::from(1e-6f32)));
}

#[test]
fn written_gguf_is_the_file_transformers_loaded() {
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(fixture("written_ref.json")).unwrap()).unwrap();
    let reference = Checkpoint::open(&fixture("written_ref.safetensors")).unwrap();
    let (shape, ids) = reference.read_ints("input_ids").unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    let dir = tempdir("written");
    // the script's steps: gguf -> HF directory named "hf" -> gguf per dtype
    let hf = dir.join("hf");
    let (_, tok) = gguf::gguf_to_hf_dir(&fixture(want["source"].as_str().unwrap()), &hf).unwrap();
    assert!(tok.is_some_and(|p| p.ends_with("tokenizer.json")));
    for dt in ["f32", "f16", "bf16", "q8_0"] {
        let out = dir.join(format!("{dt}.gguf"));
        let w = gguf::hf_dir_to_gguf(&hf, &out, dt.parse::<WriteDtype>().unwrap()).unwrap();
        assert!(w.with_tokenizer);
        let bytes = std::fs::read(&out).unwrap();
        let h = format!("{:016x}", fnv1a64(&bytes));
        assert_eq!(h, want["dtypes"][dt]["fnv"].as_str().unwrap(), "{dt}: the written file differs from the one transformers loaded");
        let got = logits_of(&out, &ids, shape[0], shape[1]);
        let e = rel_err(&got, &reference.read(&format!("logits.{dt}")).unwrap().data);
        eprintln!("written {dt}: same bytes as the file transformers loaded; logits rel err {e:.2e}");
        assert!(e <= LOGITS_RTOL, "{dt}: logits rel err {e:.3e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal GGUF: metadata (key, type code, encoded value) and tensors
/// (name, dims, type code), zero data.
fn gguf_bytes(kvs: &[(&str, u32, Vec<u8>)], tensors: &[(&str, Vec<u64>, u32, usize)]) -> Vec<u8> {
    let s = |x: &str| {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend(x.as_bytes());
        v
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, t, val) in kvs {
        b.extend(s(k));
        b.extend(t.to_le_bytes());
        b.extend(val);
    }
    let mut off = 0u64;
    for (name, dims, ty, nbytes) in tensors {
        b.extend(s(name));
        b.extend((dims.len() as u32).to_le_bytes());
        for d in dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
        off += (*nbytes as u64).div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.resize(b.len() + off as usize, 0);
    b
}

fn gstr(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend(x.as_bytes());
    v
}

#[test]
fn unsupported_files_fail_naming_the_file_and_key() {
    let dir = tempdir("errors");
    let be = CpuBackend::new(1).unwrap();
    let check = |name: &str, bytes: Vec<u8>, want: &[&str]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = Model::load_path(&be, &p).err().unwrap_or_else(|| panic!("{name} loaded")).to_string();
        assert!(e.contains(&p.display().to_string()), "{name}: no path in {e}");
        assert!(e.contains("HINT"), "{name}: no hint in {e}");
        for w in want {
            assert!(e.contains(w), "{name}: {e:?} lacks {w:?}");
        }
    };
    check("arch.gguf", gguf_bytes(&[("general.architecture", 8, gstr("qwen2"))], &[]), &["general.architecture", "qwen2"]);
    check("no_keys.gguf", gguf_bytes(&[("general.architecture", 8, gstr("llama"))], &[]), &["llama.embedding_length", "missing"]);
    check(
        "scaling.gguf",
        gguf_bytes(&[("general.architecture", 8, gstr("llama")), ("llama.rope.scaling.type", 8, gstr("yarn"))], &[]),
        &["llama.rope.scaling.type", "yarn"],
    );
    // a real model with one tensor's type code turned into IQ2_XXS (16)
    let f = GgufFile::open(&fixture("mixed_b.gguf")).unwrap();
    let mut bytes = std::fs::read(fixture("mixed_b.gguf")).unwrap();
    let t = f.tensors.iter().find(|t| t.name == "blk.0.ffn_up.weight").unwrap();
    // the info: name, n_dims u32, dims u64 x n, type u32, offset u64
    let name_at = bytes.windows(t.name.len()).position(|w| w == t.name.as_bytes()).unwrap();
    let type_at = name_at + t.name.len() + 4 + 8 * t.dims.len();
    assert_eq!(u32::from_le_bytes(bytes[type_at..type_at + 4].try_into().unwrap()), t.type_code);
    bytes[type_at..type_at + 4].copy_from_slice(&16u32.to_le_bytes());
    check("iq2.gguf", bytes, &["blk.0.ffn_up.weight", "IQ2_XXS", "not supported"]);
    // truncated
    let full = std::fs::read(fixture("mixed_b.gguf")).unwrap();
    check("short.gguf", full[..full.len() / 2].to_vec(), &["malformed GGUF", "beyond the end"]);
    // a tensor of a type we know but with a row that is not whole blocks
    check(
        "rows.gguf",
        gguf_bytes(&[("general.architecture", 8, gstr("llama"))], &[("token_embd.weight", vec![100, 3], GgmlType::Q8_0.code(), 34 * 10)]),
        &["not a multiple", "Q8_0"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! llama2.c `.bin` import/export (model/src/llama2c.rs):
//! - the committed fixtures (tests/fixtures/llama2c/, written by
//!   tools/scripts/llama2c_ref.py, an independent Python implementation):
//!   every .bin imports to the HF tensors bit for bit, and exporting the HF
//!   directory gives every .bin byte for byte;
//! - round trips HF -> bin -> HF (bit-exact) and bin -> HF -> bin
//!   (byte-exact) for every layout, on random configs (GQA, tied, θ 5e5,
//!   odd sizes);
//! - the converted model computes the same logits as the original, and its
//!   greedy tokens are transformers' (manifest.json `greedy_from_bos`);
//! - corrupt, truncated and mislabelled files, and configs a layout cannot
//!   hold, are refused with errors that name the file and give a hint;
//!   mutated files never panic.

use llama2_model::config::Config;
use llama2_model::generate::{Generator, Sampling};
use llama2_model::llama2c::{self, Layout, Llama2cError};
use llama2_model::weights::{Checkpoint, HostWeights};
use llama2_model::{Acts, LogitRows, Model, ParamLayout};
use llama2_runtime::rng::Rng;
use llama2_runtime::{v, Backend, CpuBackend};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/llama2c")
}

/// A fresh empty directory under the target dir.
fn tmpdir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("llama2c-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load_hf(dir: &Path) -> (Config, HostWeights) {
    let cfg = Config::from_hf_file(&dir.join("config.json")).unwrap();
    let w = Checkpoint::open(dir).unwrap().read_all().unwrap();
    (cfg, w)
}

/// The .bin files of a fixture dir with the layout each was written in.
fn fixture_files(name: &str) -> Vec<(PathBuf, Layout)> {
    let d = fixtures().join(name);
    let mut out = Vec::new();
    for l in Layout::ALL {
        let p = d.join(format!("{l}.bin"));
        if p.is_file() {
            out.push((p, l));
        }
    }
    out
}

fn assert_same_weights(got: &HostWeights, want: &HostWeights, what: &str) {
    let gk: Vec<&String> = got.keys().collect();
    let wk: Vec<&String> = want.keys().collect();
    assert_eq!(gk, wk, "{what}: tensor names differ");
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.shape, w.shape, "{what}: {name} shape");
        // bit-identical, not merely equal (-0.0 vs 0.0, NaN payloads)
        let same = g.data.iter().zip(&w.data).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{what}: {name} differs");
    }
}

#[test]
fn fixtures_import_bit_identical() {
    for name in ["gqa", "mha"] {
        let (cfg, want) = load_hf(&fixtures().join(name).join("hf"));
        let files = fixture_files(name);
        assert!(files.len() >= 2, "{name}: fixture files missing");
        for (path, written_as) in files {
            let imp = llama2c::read_bin(&path, None).unwrap();
            // without GQA early and legacy are the same bytes; θ = 1e4 makes it legacy
            let expect = if written_as == Layout::Early { Layout::Legacy } else { written_as };
            assert_eq!(imp.layout, expect, "{}", path.display());
            assert_eq!(imp.cfg, cfg, "{}: config", path.display());
            assert_same_weights(&imp.weights, &want, &path.display().to_string());
            if written_as != Layout::V1 {
                assert_eq!(imp.table_theta, Some(10000.0));
            }
            // the layout it was written as reads the same
            let again = llama2c::read_bin(&path, Some(written_as)).unwrap();
            assert_eq!(again.layout, written_as);
            assert_same_weights(&again.weights, &want, "explicit layout");
        }
    }
}

#[test]
fn fixtures_export_byte_identical() {
    let out = tmpdir("export");
    for name in ["gqa", "mha"] {
        let (cfg, w) = load_hf(&fixtures().join(name).join("hf"));
        for (path, layout) in fixture_files(name) {
            let dst = out.join(format!("{name}-{layout}.bin"));
            let n = llama2c::write_bin(&dst, &cfg, &w, layout, false).unwrap();
            let (got, want) = (std::fs::read(&dst).unwrap(), std::fs::read(&path).unwrap());
            assert_eq!(n as usize, want.len());
            assert!(
                got == want,
                "{name} {layout}: export differs from {} (first diff at byte {:?})",
                path.display(),
                got.iter().zip(&want).position(|(a, b)| a != b)
            );
        }
    }
}

/// Random weights with logits of order 1 (Linear N(0, 1/in)), as HF names.
fn random_model(cfg: &Config, seed: u64) -> HostWeights {
    let lay = ParamLayout::new(cfg);
    let mut rng = Rng::new(seed);
    let host: Vec<f32> = (0..lay.total).map(|i| if i < lay.n_decay { rng.normal() * 0.3 } else { 1.0 + 0.1 * rng.normal() }).collect();
    lay.to_host(cfg, &host)
}

fn cfg(v: usize, c: usize, i: usize, l: usize, h: usize, kv: usize, seq: usize) -> Config {
    let mut x = Config::new(v, c, i, l, h, kv);
    x.max_seq_len = seq;
    x
}

/// (config, layouts it can be written in without --force)
fn round_trip_cases() -> Vec<(&'static str, Config, Vec<Layout>)> {
    let gqa = cfg(97, 48, 100, 2, 4, 2, 33); // hd 12, odd vocab and seq_len
    let mut tied = cfg(50, 32, 72, 3, 2, 2, 16); // hd 16, MHA, shared classifier
    tied.tie_embeddings = true;
    let mut theta = cfg(64, 64, 96, 2, 4, 4, 40); // θ 5e5: only the early layout carries it
    theta.rope_theta = 500000.0;
    let mqa = cfg(40, 32, 40, 1, 8, 1, 8); // hd 4, one KV head
    vec![
        ("gqa", gqa, vec![Layout::Legacy, Layout::V1]),
        ("tied", tied, vec![Layout::Legacy, Layout::V1, Layout::Early]),
        ("theta5e5", theta, vec![Layout::Early]),
        ("mqa", mqa, vec![Layout::Legacy, Layout::V1]),
    ]
}

#[test]
fn round_trips_hf_bin_hf_and_bin_hf_bin() {
    let out = tmpdir("roundtrip");
    for (name, c, layouts) in round_trip_cases() {
        let w = random_model(&c, 5);
        for layout in layouts {
            let p = out.join(format!("{name}-{layout}.bin"));
            llama2c::write_bin(&p, &c, &w, layout, false).unwrap();
            let imp = llama2c::read_bin(&p, Some(layout)).unwrap();
            assert_eq!(imp.layout, layout);
            assert_eq!(imp.cfg, c, "{name} {layout}: config after the round trip");
            assert_same_weights(&imp.weights, &w, &format!("{name} {layout}"));
            // bin -> HF -> bin
            let p2 = out.join(format!("{name}-{layout}-again.bin"));
            llama2c::write_bin(&p2, &imp.cfg, &imp.weights, layout, false).unwrap();
            assert!(std::fs::read(&p).unwrap() == std::fs::read(&p2).unwrap(), "{name} {layout}: bin -> HF -> bin differs");
        }
    }
    // θ 5e5 in a legacy file (forced): its tables carry θ, read as early they give it back
    let (_, c, _) = round_trip_cases().into_iter().find(|x| x.0 == "theta5e5").unwrap();
    let w = random_model(&c, 6);
    let p = out.join("theta-legacy-forced.bin");
    llama2c::write_bin(&p, &c, &w, Layout::Legacy, true).unwrap();
    let early = llama2c::read_bin(&p, Some(Layout::Early)).unwrap();
    assert_eq!(early.cfg.rope_theta, 500000.0);
    let legacy = llama2c::read_bin(&p, Some(Layout::Legacy)).unwrap();
    assert_eq!((legacy.cfg.rope_theta, legacy.table_theta), (10000.0, Some(500000.0)));
}

/// Logits `(t, V)` of `model` on `tokens`, full-sequence forward.
fn logits(be: &CpuBackend, model: &Model<CpuBackend>, tokens: &[u32]) -> Vec<f32> {
    let mut acts = Acts::new(be, &model.cfg, 1, tokens.len(), false, LogitRows::All).unwrap();
    model.forward(be, &mut acts, tokens, None).unwrap();
    let mut out = vec![0f32; tokens.len() * model.cfg.vocab_size];
    be.download(v(&acts.a.logits), &mut out).unwrap();
    out
}

fn model_from(be: &CpuBackend, c: &Config, w: &HostWeights) -> Model<CpuBackend> {
    let lay = ParamLayout::new(c);
    let mut host = vec![0f32; lay.total];
    lay.load_host(c, w, &mut host).unwrap();
    Model::from_host(be, c.clone(), &host).unwrap()
}

#[test]
fn converted_models_compute_the_same_logits_and_transformers_greedy_tokens() {
    let be = CpuBackend::new(2).unwrap();
    for name in ["gqa", "mha"] {
        let dir = fixtures().join(name);
        let original = Model::load(&be, &dir.join("hf")).unwrap();
        let tokens: Vec<u32> = (0..37u32).map(|i| (i * 7 + 1) % original.cfg.vocab_size as u32).collect();
        let want = logits(&be, &original, &tokens);
        let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
        let greedy: Vec<u32> = manifest["greedy_from_bos"]["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        for (path, _) in fixture_files(name) {
            let imp = llama2c::read_bin(&path, None).unwrap();
            let model = model_from(&be, &imp.cfg, &imp.weights);
            let got = logits(&be, &model, &tokens);
            // same weights bit for bit and the same code: the same bits
            assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: logits differ", path.display());
            // greedy from BOS through the KV cache, against transformers'
            // ids: seq_len 64 positions hold BOS and 63 new tokens
            let mut gen = Generator::new(&be, &model, 1, imp.cfg.max_seq_len).unwrap();
            let out = gen.generate(&be, &model, &[vec![1]], imp.cfg.max_seq_len - 1, &Sampling::GREEDY, &mut Rng::new(0), false).unwrap();
            assert_eq!(out.ids[0], greedy[..imp.cfg.max_seq_len - 1], "{}: greedy tokens differ from transformers'", path.display());
        }
    }
    // θ 5e5 through the early layout: θ recovered exactly, so identical logits
    let (_, c, _) = round_trip_cases().into_iter().find(|x| x.0 == "theta5e5").unwrap();
    let w = random_model(&c, 9);
    let p = tmpdir("logits").join("theta.bin");
    llama2c::write_bin(&p, &c, &w, Layout::Early, false).unwrap();
    let imp = llama2c::read_bin(&p, Some(Layout::Early)).unwrap();
    let tokens: Vec<u32> = (0..c.max_seq_len as u32).map(|i| (i * 13 + 3) % 64).collect();
    let (a, b) = (logits(&be, &model_from(&be, &c, &w), &tokens), logits(&be, &model_from(&be, &imp.cfg, &imp.weights), &tokens));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "θ 5e5 early: logits differ");
}

// ---------------------------------------------------------------------------
// bad input

/// The error of reading `bytes` as a .bin (written to a temp file).
fn read_err(dir: &Path, name: &str, bytes: &[u8], layout: Option<Layout>) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    match llama2c::read_bin(&p, layout) {
        Ok(imp) => panic!("{name}: read as {} although it is bad", imp.layout),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&p.display().to_string()), "{name}: error does not name the file: {msg}");
            assert!(msg.contains("HINT"), "{name}: error has no hint: {msg}");
            msg
        }
    }
}

fn set_i32(b: &mut [u8], off: usize, x: i32) {
    b[off..off + 4].copy_from_slice(&x.to_le_bytes());
}

#[test]
fn corrupt_truncated_and_mislabelled_files_are_refused() {
    let d = tmpdir("corrupt");
    let legacy = std::fs::read(fixtures().join("gqa/legacy.bin")).unwrap();
    let v1 = std::fs::read(fixtures().join("gqa/v1.bin")).unwrap();
    let must = |msg: String, what: &str| assert!(msg.contains(what), "expected `{what}` in: {msg}");

    must(read_err(&d, "empty.bin", &[], None), "shorter than the 28-byte");
    must(read_err(&d, "short.bin", &legacy[..20], None), "shorter than the 28-byte");
    must(read_err(&d, "trunc.bin", &legacy[..legacy.len() - 4], None), "bytes, but this header");
    must(read_err(&d, "trunc_v1.bin", &v1[..v1.len() - 1], None), "in the v1 layout means");
    must(read_err(&d, "v1_header_only.bin", &v1[..100], None), "shorter than the 256-byte");
    let mut long = legacy.clone();
    long.extend_from_slice(&[0; 4]);
    must(read_err(&d, "long.bin", &long, None), "truncated or corrupt");

    let mut b = v1.clone();
    set_i32(&mut b, 4, 2);
    must(read_err(&d, "q80.bin", &b, None), "Q8_0");
    set_i32(&mut b, 4, 7);
    must(read_err(&d, "v7.bin", &b, None), "unknown llama2.c file version 7");
    let mut b = v1.clone();
    b[36] = 2;
    must(read_err(&d, "flag.bin", &b, None), "shared-classifier byte");
    let mut b = v1.clone();
    b[100] = 1;
    must(read_err(&d, "pad.bin", &b, None), "padding");
    let mut b = v1.clone();
    set_i32(&mut b, 8 + 20, -64);
    must(read_err(&d, "v1neg.bin", &b, None), "negative");

    for (off, val, what) in [
        (0, 0, "dim = 0"),
        (8, -2, "n_layers = -2"),
        (24, 0, "seq_len = 0"),
        (0, 33, "not a multiple of n_heads"),
        (0, 36, "is odd"),          // hd 9
        (16, 3, "does not divide"), // 3 kv heads of 4
        (20, 0, "vocab_size = 0"),
        (0, i32::MAX - 1, "not a multiple"),
        (4, i32::MAX, "bytes, but this header"), // huge: no allocation, a size error
    ] {
        let mut b = legacy.clone();
        set_i32(&mut b, off, val);
        must(read_err(&d, &format!("hdr{off}_{val}.bin"), &b, None), what);
    }
    // a vocabulary without room for BOS 1 and EOS 2
    let mut b = legacy[..28].to_vec();
    set_i32(&mut b, 0, 8);
    set_i32(&mut b, 4, 8);
    set_i32(&mut b, 8, 1);
    set_i32(&mut b, 12, 1);
    set_i32(&mut b, 16, 1);
    set_i32(&mut b, 20, 2);
    set_i32(&mut b, 24, 1);
    let h = llama2c::Header { dim: 8, hidden_dim: 8, n_layers: 1, n_heads: 1, n_kv_heads: 1, vocab_size: 2, seq_len: 1, shared: true };
    b.resize(llama2c::expected_file_size(&h, Layout::Legacy) as usize, 0);
    let row0 = 28 + 4 * (16 + 8 + 4 * 64 + 8 + 3 * 64 + 8); // cos table: row 0 must be 1
    for j in 0..4 {
        b[row0 + 4 * j..row0 + 4 * j + 4].copy_from_slice(&1f32.to_le_bytes());
    }
    must(read_err(&d, "vocab2.bin", &b, None), "cannot run");

    // damaged RoPE tables (legacy: tables start after the final norm)
    let tab = legacy.len() - 2 * 64 * 4 * 4 - 64 * 32 * 4; // gqa: seq 64, hd/2 4, untied
    let mut b = legacy.clone();
    b[tab + 4 * 40..tab + 4 * 41].copy_from_slice(&0.5f32.to_le_bytes());
    must(read_err(&d, "tables.bin", &b, None), "RoPE tables");
    let mut b = legacy.clone();
    b[tab + 4 * 41..tab + 4 * 42].copy_from_slice(&f32::NAN.to_le_bytes());
    must(read_err(&d, "nan.bin", &b, None), "non-finite");

    // the wrong --layout
    must(read_err(&d, "v1_as_legacy.bin", &v1, Some(Layout::Legacy)), "ak42");
    must(read_err(&d, "legacy_as_v1.bin", &legacy, Some(Layout::V1)), "not a version-1 file");
    must(read_err(&d, "gqa_as_early.bin", &legacy, Some(Layout::Early)), "in the early layout means");
}

#[test]
fn ambiguous_mha_file_needs_an_explicit_layout() {
    let d = tmpdir("ambiguous");
    let mut c = cfg(64, 32, 48, 1, 4, 4, 24);
    c.rope_theta = 500000.0;
    let p = d.join("mha-theta.bin");
    llama2c::write_bin(&p, &c, &random_model(&c, 1), Layout::Early, false).unwrap();
    let msg = llama2c::read_bin(&p, None).unwrap_err().to_string();
    assert!(msg.contains("--layout early") && msg.contains("500000"), "{msg}");
    assert_eq!(llama2c::read_bin(&p, Some(Layout::Early)).unwrap().cfg.rope_theta, 500000.0);
    // GQA written for the early run.c with dim x dim k/v is told apart by size:
    // a legacy file of the same header would be smaller
    let mut g = cfg(64, 32, 48, 1, 4, 4, 24);
    g.rope_theta = 10000.0;
    let p = d.join("early-gqa-header.bin");
    llama2c::write_bin(&p, &g, &random_model(&g, 2), Layout::Early, false).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    set_i32(&mut b, 16, 2); // claim 2 KV heads; the early run.c ignores the field
    std::fs::write(&p, &b).unwrap();
    let imp = llama2c::read_bin(&p, None).unwrap();
    assert_eq!((imp.layout, imp.cfg.n_kv_heads), (Layout::Early, 4));
}

#[test]
fn mutated_files_never_panic() {
    // every header byte of each fixture set to a few values, and random
    // truncations: read_bin returns Ok or Err, never panics
    let d = tmpdir("mutate");
    let mut rng = Rng::new(3);
    let mut ok = 0;
    let mut tried = 0;
    for f in ["gqa/legacy.bin", "gqa/v1.bin", "mha/early.bin"] {
        let orig = std::fs::read(fixtures().join(f)).unwrap();
        let p = d.join("m.bin");
        for pos in 0..64.min(orig.len()) {
            for val in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut b = orig.clone();
                b[pos] = val;
                std::fs::write(&p, &b).unwrap();
                ok += llama2c::read_bin(&p, None).is_ok() as usize;
                tried += 1;
            }
        }
        for _ in 0..50 {
            let n = rng.below(orig.len() as u64) as usize;
            std::fs::write(&p, &orig[..n]).unwrap();
            assert!(llama2c::read_bin(&p, None).is_err(), "{f} truncated to {n} bytes was accepted");
        }
    }
    // some mutations only touch weights or padding-free values and stay valid
    assert!(ok < tried, "every mutation was accepted: the validation checks nothing");
}

#[test]
fn configs_a_layout_cannot_hold_are_refused() {
    let d = tmpdir("refuse");
    let gqa = cfg(64, 32, 48, 1, 4, 2, 16);
    let w = random_model(&gqa, 1);
    let refuse = |c: &Config, w: &HostWeights, layout: Layout, force: bool, what: &str| {
        let p = d.join(format!("refused-{layout}.bin"));
        let e = llama2c::write_bin(&p, c, w, layout, force).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(what) && msg.contains("HINT") && msg.contains("refused-"), "expected `{what}`: {msg}");
        assert!(!p.exists(), "a refused write left {}", p.display());
        e
    };
    let e = refuse(&gqa, &w, Layout::Early, true, "GQA");
    assert!(matches!(e, Llama2cError::Unsupported { layout: Layout::Early, .. }));

    let mut hd = gqa.clone();
    hd.head_dim = 16; // 4 heads x 16 != 32
    refuse(&hd, &random_model(&hd, 1), Layout::Legacy, true, "head_dim 16 * n_heads 4 != hidden 32");

    let mut theta = gqa.clone();
    theta.rope_theta = 1e6;
    for l in [Layout::Legacy, Layout::V1] {
        refuse(&theta, &w, l, false, "rope_theta 1000000");
        assert!(llama2c::write_bin(&d.join("forced.bin"), &theta, &w, l, true).is_ok());
    }
    let mut eps = gqa.clone();
    eps.rms_eps = 1e-6;
    refuse(&eps, &w, Layout::V1, false, "rms_norm_eps");
    let mut bos = gqa.clone();
    bos.bos_id = 0;
    refuse(&bos, &w, Layout::Legacy, false, "bos_token_id 0");

    // sizes beyond the header's int32, and the early run.c's int overflow
    let p = Path::new("big.bin");
    let mut big = cfg(i32::MAX as usize + 1, 64, 64, 1, 1, 1, 8);
    big.head_dim = 64;
    let msg = llama2c::check_writable(p, &big, Layout::V1, true).unwrap_err().to_string();
    assert!(msg.contains("vocab_size") && msg.contains("int32"), "{msg}");
    let huge = cfg(32000, 8192, 22016, 48, 64, 64, 4096);
    let msg = llama2c::check_writable(p, &huge, Layout::Early, true).unwrap_err().to_string();
    assert!(msg.contains("overflows the C int"), "{msg}");
    assert!(llama2c::check_writable(p, &huge, Layout::Legacy, false).is_ok());

    // weights that do not match the config
    let mut missing = w.clone();
    missing.remove("model.layers.0.self_attn.k_proj.weight");
    let e = llama2c::write_bin(&d.join("missing.bin"), &gqa, &missing, Layout::Legacy, false).unwrap_err();
    assert!(matches!(e, Llama2cError::Tensor { .. }) && e.to_string().contains("k_proj"), "{e}");
    let mut shape = w.clone();
    shape.get_mut("model.norm.weight").unwrap().shape = vec![31];
    let e = llama2c::write_bin(&d.join("shape.bin"), &gqa, &shape, Layout::V1, false).unwrap_err();
    assert!(e.to_string().contains("model.norm.weight"), "{e}");
    assert!(!d.join("missing.bin").exists() && !d.join("shape.bin").exists());

    // an unwritable target is an I/O error naming it
    let e = llama2c::write_bin(&d.join("no/such/dir/x.bin"), &gqa, &w, Layout::Legacy, false).unwrap_err();
    assert!(matches!(e, Llama2cError::Io { .. }) && e.to_string().contains("x.bin"), "{e}");
}

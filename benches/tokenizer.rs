//! Criterion bench of the tokenizer: encode Shakespeare with the Llama 2
//! vocabulary (throughput in bytes of text). The peer, sentencepiece, is
//! measured beside it by tools/bench/tokenizer_peer.py (same texts, same
//! threads, one command); criterion has no Python peer, so this bench is for
//! tracking our own speed across changes.
//!
//! Corpus: $LLAMA2_SHAKESPEARE_DIR if set, else the shared corpus
//! (../shared/data/corpora/shakespeare, 43 files, 5 MB) if present, else the
//! three plays in tests/data/corpora/shakespeare.

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llama2_model::tokenizer::{EncodeCache, EncodeOptions, Tokenizer};

fn corpus() -> (PathBuf, Vec<String>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("LLAMA2_SHAKESPEARE_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(root.join("../shared/data/corpora/shakespeare")).filter(|p| p.is_dir()))
        .unwrap_or_else(|| root.join("tests/data/corpora/shakespeare"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("read the Shakespeare directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with("_gut.txt"))
        .collect();
    files.sort();
    let texts = files.iter().map(|p| std::fs::read_to_string(p).expect("read a play")).collect();
    (dir, texts)
}

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tok = Tokenizer::load(root.join("tests/data/tokenizer/ggml-vocab-llama-spm.gguf")).expect("load vocabulary");
    let (dir, texts) = corpus();
    let bytes: usize = texts.iter().map(String::len).sum();
    eprintln!("corpus {}: {} files, {:.2} MB", dir.display(), texts.len(), bytes as f64 / 1e6);
    let opts = EncodeOptions::default();
    let mut g = c.benchmark_group("tokenizer_encode");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.sample_size(10);
    for (name, use_cache) in [("llama2_shakespeare_1thread", true), ("llama2_shakespeare_1thread_nocache", false)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0;
                for t in &texts {
                    let mut cache = EncodeCache::new();
                    let mut out = Vec::with_capacity(t.len() / 3);
                    tok.encode_into(t, opts, true, use_cache, &mut cache, &mut out).expect("encode");
                    n += out.len();
                }
                n
            })
        });
    }
    g.bench_function("llama2_shakespeare_batch_all_threads", |b| b.iter(|| tok.encode_batch(&texts, opts).expect("encode").len()));
    g.finish();
    let mut g = c.benchmark_group("tokenizer_decode");
    let ids: Vec<Vec<u32>> = tok.encode_batch(&texts, opts).expect("encode");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.sample_size(10);
    g.bench_function("llama2_shakespeare_1thread", |b| b.iter(|| ids.iter().map(|x| tok.decode(x).expect("decode").len()).sum::<usize>()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);

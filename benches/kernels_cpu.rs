//! Criterion benches of every CPU kernel at the shapes of the `ref-small`
//! benchmark model (C 512, ffn 1376, 8 heads / 4 KV heads, hd 64, vocab
//! 32000, B 4, T 512: N = 2048 rows), the config whose training step is
//! compared with PyTorch. Memory-bound kernels report bytes read + written
//! (`Throughput::BytesDecimal`); matrix-bound ones report FLOPs in groups
//! whose names end in `_flop` (criterion's elem/s reads as FLOP/s).
//!
//! Run: `cargo bench --bench kernels_cpu` (threads: LLAMA2_BENCH_THREADS,
//! default all cores).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use llama2::kernels::adamw::{adamw_cpu, AdamWStep};
use llama2::kernels::attention::{attention_bwd_cpu, attention_fwd_cpu, AttnShape};
use llama2::kernels::cross_entropy::{cross_entropy_cpu, CeGrad};
use llama2::kernels::matmul::{matmul_cpu, Gemm};
use llama2::kernels::matmul_rows::matmul_rows_cpu;
use llama2::kernels::rmsnorm::{rmsnorm_bwd_cpu, rmsnorm_fwd_cpu};
use llama2::kernels::rope::{rope_fwd_cpu, rope_table, RopeShape};
use llama2::kernels::swiglu::{swiglu_bwd_cpu, swiglu_fwd_cpu};
use llama2::kernels::{GradWrite, Trans};

const B: usize = 4;
const T: usize = 512;
const N: usize = B * T;
const C: usize = 512;
const FFN: usize = 1376;
const NH: usize = 8;
const NKV: usize = 4;
const HD: usize = 64;
const V: usize = 32000;

fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn pool() -> rayon::ThreadPool {
    let n = std::env::var("LLAMA2_BENCH_THREADS").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap()
}

fn matmul(c: &mut Criterion) {
    let pool = pool();
    let threads = pool.current_num_threads();
    let mut g = c.benchmark_group("matmul_fwd_f32_flop");
    // the three products of a Linear layer (C -> FFN), and the output head
    for (name, m, n, k, ta, tb) in [
        ("fwd_N2048_C512_F1376", N, FFN, C, Trans::N, Trans::T),
        ("dinp_N2048_F1376_C512", N, C, FFN, Trans::N, Trans::N),
        ("dw_F1376_C512_N2048", FFN, C, N, Trans::T, Trans::N),
        ("head_N2048_V32000_C512", N, V, C, Trans::N, Trans::T),
    ] {
        let a = data(m * k, 1);
        let bm = data(k * n, 2);
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::from_parameter(name), |bch| {
            bch.iter(|| pool.install(|| matmul_cpu(&mut out, &a, &bm, Gemm { m, n, k, ta, tb, write: GradWrite::Overwrite }, threads).unwrap()))
        });
    }
    g.finish();
}

/// The row-invariant product of inference (`matmul_rows`) next to the
/// general one, at a decode step of 16 sequences (the weights are read from
/// memory once per step), one sequence, and a prefill of 2048 rows.
fn matmul_rows(c: &mut Criterion) {
    let pool = pool();
    let threads = pool.current_num_threads();
    let mut g = c.benchmark_group("matmul_rows_fwd_f32_flop");
    for (m, n, k) in [(16, FFN, C), (16, C, FFN), (16, V, C), (1, V, C), (N, FFN, C)] {
        let a = data(m * k, 16);
        let bm = data(k * n, 17);
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(BenchmarkId::new("rows", format!("M{m}_N{n}_K{k}")), |bch| {
            bch.iter(|| pool.install(|| matmul_rows_cpu(&mut out, &a, &bm, m, n, k, GradWrite::Overwrite).unwrap()))
        });
        g.bench_function(BenchmarkId::new("gemm", format!("M{m}_N{n}_K{k}")), |bch| {
            bch.iter(|| {
                pool.install(|| matmul_cpu(&mut out, &a, &bm, Gemm { m, n, k, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite }, threads).unwrap())
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let pool = pool();
    let s = AttnShape::causal(B, T, NH, NKV, HD);
    let q = data(N * NH * HD, 3);
    let k = data(N * NKV * HD, 4);
    let v = data(N * NKV * HD, 5);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; B * NH * T];
    // causal: 4·B·T²·NH·hd / 2 FLOPs forward, 2.5x that backward
    let fwd_flops = (4 * B * T * T * NH * HD / 2) as u64;
    let mut g = c.benchmark_group("attention_fwd_f32_flop");
    g.throughput(Throughput::Elements(fwd_flops));
    g.bench_function(BenchmarkId::from_parameter(format!("B{B}_T{T}_H{NH}_KV{NKV}_hd{HD}")), |bch| {
        bch.iter(|| pool.install(|| attention_fwd_cpu(&mut out, &mut lse, &q, &k, &v, s).unwrap()))
    });
    g.finish();
    pool.install(|| attention_fwd_cpu(&mut out, &mut lse, &q, &k, &v, s).unwrap());
    let dout = data(q.len(), 6);
    let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; k.len()], vec![0f32; v.len()]);
    let mut g = c.benchmark_group("attention_bwd_f32_flop");
    g.throughput(Throughput::Elements(fwd_flops * 5 / 2));
    g.bench_function(BenchmarkId::from_parameter(format!("B{B}_T{T}_H{NH}_KV{NKV}_hd{HD}")), |bch| {
        bch.iter(|| pool.install(|| attention_bwd_cpu(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, s).unwrap()))
    });
    g.finish();
}

fn memory_bound(c: &mut Criterion) {
    let pool = pool();
    let x = data(N * C, 7);
    let w = data(C, 8);
    let mut out = vec![0f32; N * C];
    let mut rstd = vec![0f32; N];
    let mut g = c.benchmark_group("rmsnorm_f32");
    g.throughput(Throughput::BytesDecimal((4 * (2 * N * C + C + N)) as u64));
    g.bench_function(BenchmarkId::new("fwd", format!("N{N}_C{C}")), |bch| {
        bch.iter(|| pool.install(|| rmsnorm_fwd_cpu(&mut out, &mut rstd, &x, &w, N, C, 1e-5).unwrap()))
    });
    let dy = data(N * C, 9);
    let (mut dx, mut dw) = (vec![0f32; N * C], vec![0f32; C]);
    g.throughput(Throughput::BytesDecimal((4 * (3 * N * C + 2 * C + N)) as u64));
    g.bench_function(BenchmarkId::new("bwd", format!("N{N}_C{C}")), |bch| {
        bch.iter(|| pool.install(|| rmsnorm_bwd_cpu(&mut dx, &mut dw, &dy, &x, &w, &rstd, N, C, GradWrite::Overwrite).unwrap()))
    });
    g.finish();

    let table = rope_table(T, HD, 10000.0);
    let mut qx = data(N * NH * HD, 10);
    let mut g = c.benchmark_group("rope_f32");
    g.throughput(Throughput::BytesDecimal((4 * 2 * qx.len()) as u64));
    g.bench_function(BenchmarkId::new("fwd", format!("N{N}_H{NH}_hd{HD}")), |bch| {
        bch.iter(|| pool.install(|| rope_fwd_cpu(&mut qx, &table, RopeShape { b: B, t: T, heads: NH, hd: HD, pos0: 0 }).unwrap()))
    });
    g.finish();

    let gate = data(N * FFN, 11);
    let up = data(N * FFN, 12);
    let mut h = vec![0f32; N * FFN];
    let mut g = c.benchmark_group("swiglu_f32");
    g.throughput(Throughput::BytesDecimal((4 * 3 * N * FFN) as u64));
    g.bench_function(BenchmarkId::new("fwd", format!("N{N}_F{FFN}")), |bch| bch.iter(|| pool.install(|| swiglu_fwd_cpu(&mut h, &gate, &up).unwrap())));
    let (mut dg, mut du) = (vec![0f32; N * FFN], vec![0f32; N * FFN]);
    g.throughput(Throughput::BytesDecimal((4 * 5 * N * FFN) as u64));
    g.bench_function(BenchmarkId::new("bwd", format!("N{N}_F{FFN}")), |bch| {
        bch.iter(|| pool.install(|| swiglu_bwd_cpu(&mut dg, &mut du, &h, &gate, &up).unwrap()))
    });
    g.finish();

    let logits0 = data(N * V, 13);
    let targets: Vec<i32> = (0..N).map(|i| ((i * 7919) % V) as i32).collect();
    let mut losses = vec![0f32; N];
    let mut g = c.benchmark_group("cross_entropy_f32");
    g.sample_size(10);
    g.throughput(Throughput::BytesDecimal((4 * 2 * N * V) as u64));
    g.bench_function(BenchmarkId::new("fwd_bwd", format!("N{N}_V{V}")), |bch| {
        bch.iter_batched_ref(
            || logits0.clone(),
            |l| pool.install(|| cross_entropy_cpu(l, &mut losses, &targets, V, CeGrad::Uniform(1.0 / N as f32)).unwrap()),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    let n = 56_000_000 / 4; // a quarter of ref-small's parameters
    let mut p = data(n, 14);
    let gr = data(n, 15);
    let (mut m, mut vv) = (vec![0f32; n], vec![0f32; n]);
    let mut g = c.benchmark_group("adamw_f32");
    g.sample_size(10);
    // reads p, g, m, v; writes p, m, v
    g.throughput(Throughput::BytesDecimal((4 * 7 * n) as u64));
    let h = AdamWStep { lr: 1e-4, beta1: 0.9, beta2: 0.95, eps: 1e-5, weight_decay: 0.1, step: 10, grad_scale: 1.0 };
    g.bench_function(BenchmarkId::from_parameter(format!("n{n}")), |bch| bch.iter(|| pool.install(|| adamw_cpu(&mut p, &gr, &mut m, &mut vv, h).unwrap())));
    g.finish();
}

criterion_group!(benches, matmul, matmul_rows, attention, memory_bound);
criterion_main!(benches);

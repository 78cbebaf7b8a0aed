//! Criterion benches of the CUDA kernels (feature `cuda`, needs a GPU):
//! one group per launcher, `<family>_<pass>_<dtype>/<shape>`, at Llama-2
//! shapes (7B: C = 4096, hd = 128, 32 heads, T = 4096, FFN 11008; 70B GQA:
//! 8 KV heads). Timed with CUDA events around the launches (`iter_custom`);
//! memory-bound kernels flush L2 first and report bytes read + written,
//! matrix-bound ones report FLOPs in a group ending in `_flop` (criterion's
//! elem/s reads as FLOP/s). The device copy bandwidth, measured first, is
//! printed so each GB/s can be read as a fraction of it.
//!
//! Run: `cargo bench --features cuda --bench kernels_cuda`. On a GPU machine
//! without Rust, `tools/device-check.sh` gives the same numbers next to
//! PyTorch's.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::kernels::rope::rope_table;
use llama2_runtime::*;
use std::time::Duration;

/// Bytes written between timed batches to evict the L2 (50-60 MB on Hopper).
const L2_FLUSH_BYTES: usize = 256 << 20;

fn rand_buf(g: &CudaBackend, n: usize, kind: BufKind, seed: u64) -> CudaBuf {
    let mut r = rng::Rng::new(seed);
    let data: Vec<f32> = (0..n).map(|_| r.normal()).collect();
    let mut b = g.alloc(n, kind).expect("alloc");
    g.upload(vm(&mut b), &data).expect("upload");
    b
}

/// Device time of `iters` launches of `op`, after an L2 flush when `flush`.
fn timed(g: &CudaBackend, flush: Option<&mut CudaBuf>, iters: u64, mut op: impl FnMut() -> Result<()>) -> Duration {
    if let Some(f) = flush {
        g.zero(vm(f)).expect("flush");
    }
    let ms = g
        .time_ms(|| {
            for _ in 0..iters {
                op()?;
            }
            Ok(())
        })
        .expect("timed launches");
    Duration::from_secs_f64(ms as f64 * 1e-3)
}

fn benches(c: &mut Criterion) {
    let g = CudaBackend::new(0).expect("a CUDA device (these benches need a GPU)");
    let mut flush = g.alloc(L2_FLUSH_BYTES / 4, BufKind::F32).expect("alloc");
    let (bt, cw, ffn, vocab, nh, hd) = (4 * 4096usize, 4096usize, 11008usize, 32000usize, 32usize, 128usize);

    // the ceiling: a device-to-device copy of 1 GiB
    let n = 1 << 28;
    let src = rand_buf(&g, n, BufKind::F32, 1);
    let mut dst = g.alloc(n, BufKind::F32).expect("alloc");
    let ms = g.time_ms(|| g.copy(vm(&mut dst), v(&src))).expect("copy");
    println!("device copy bandwidth: {:.0} GB/s (read + write)", 8.0 * n as f64 / (ms as f64 * 1e-3) / 1e9);
    drop((src, dst));

    let x = rand_buf(&g, bt * cw, BufKind::Act, 2);
    let w = rand_buf(&g, cw, BufKind::Param, 3);
    let (mut o, mut r) = (g.alloc(bt * cw, BufKind::Act).expect("alloc"), g.alloc(bt, BufKind::F32).expect("alloc"));
    let mut grp = c.benchmark_group("rmsnorm_fwd_bf16");
    grp.throughput(Throughput::BytesDecimal((2 * bt * cw * 2) as u64));
    grp.bench_function("16384x4096", |b| {
        b.iter_custom(|it| timed(&g, Some(&mut flush), it, || g.rmsnorm_fwd(vm(&mut o), vm(&mut r), v(&x), v(&w), bt, cw, 1e-5)))
    });
    grp.finish();
    let dy = rand_buf(&g, bt * cw, BufKind::Act, 4);
    let (mut dx, mut dw) = (g.alloc(bt * cw, BufKind::Act).expect("alloc"), g.alloc(cw, BufKind::F32).expect("alloc"));
    let mut grp = c.benchmark_group("rmsnorm_bwd_bf16");
    grp.throughput(Throughput::BytesDecimal((3 * bt * cw * 2) as u64));
    grp.bench_function("16384x4096", |b| {
        b.iter_custom(|it| {
            timed(&g, Some(&mut flush), it, || g.rmsnorm_bwd(vm(&mut dx), vm(&mut dw), v(&dy), v(&x), v(&w), v(&r), bt, cw, GradWrite::Overwrite))
        })
    });
    grp.finish();
    drop((x, w, o, r, dy, dx, dw));

    let nn = bt * ffn;
    let (gt, up) = (rand_buf(&g, nn, BufKind::Act, 5), rand_buf(&g, nn, BufKind::Act, 6));
    let mut h = g.alloc(nn, BufKind::Act).expect("alloc");
    let mut grp = c.benchmark_group("swiglu_fwd_bf16");
    grp.throughput(Throughput::BytesDecimal((3 * nn * 2) as u64));
    grp.bench_function("16384x11008", |b| b.iter_custom(|it| timed(&g, Some(&mut flush), it, || g.swiglu_fwd(vm(&mut h), v(&gt), v(&up)))));
    grp.finish();
    drop((gt, up, h));

    let mut q = rand_buf(&g, bt * nh * hd, BufKind::Act, 7);
    let mut tab = g.alloc(4096 * hd, BufKind::F32).expect("alloc");
    g.upload(vm(&mut tab), &rope_table(4096, hd, 10000.0)).expect("upload");
    let rs = RopeShape { b: 4, t: 4096, heads: nh, hd, pos0: 0 };
    let mut grp = c.benchmark_group("rope_fwd_bf16");
    grp.throughput(Throughput::BytesDecimal((2 * bt * nh * hd * 2) as u64));
    grp.bench_function("4x4096x32x128", |b| b.iter_custom(|it| timed(&g, Some(&mut flush), it, || g.rope_fwd(vm(&mut q), v(&tab), rs))));
    grp.finish();
    drop((q, tab));

    let rows = 4096;
    let mut logits = rand_buf(&g, rows * vocab, BufKind::Act, 8);
    let targets: Vec<i32> = (0..rows as i32).map(|i| (i * 7919) % vocab as i32).collect();
    let mut losses = g.alloc(rows, BufKind::F32).expect("alloc");
    let mut grp = c.benchmark_group("cross_entropy_fwd_bwd_bf16");
    grp.throughput(Throughput::BytesDecimal((2 * rows * vocab * 2) as u64));
    grp.bench_function("4096x32000", |b| {
        b.iter_custom(|it| {
            timed(&g, Some(&mut flush), it, || g.cross_entropy(vm(&mut logits), vm(&mut losses), &targets, vocab, CeGrad::Uniform(1.0 / rows as f32)))
        })
    });
    grp.finish();
    drop((logits, losses));

    let np = 1usize << 28;
    let mut p = rand_buf(&g, np, BufKind::Param, 9);
    let gr = rand_buf(&g, np, BufKind::F32, 10);
    let (mut m, mut vv) = (g.alloc(np, BufKind::F32).expect("alloc"), g.alloc(np, BufKind::F32).expect("alloc"));
    let hp = AdamWStep { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 10, grad_scale: 1.0 };
    let mut grp = c.benchmark_group("adamw_step_f32");
    grp.throughput(Throughput::BytesDecimal((np * 30) as u64));
    grp.bench_function("2^28", |b| b.iter_custom(|it| timed(&g, None, it, || g.adamw(vm(&mut p), v(&gr), vm(&mut m), vm(&mut vv), hp))));
    grp.finish();
    drop((p, gr, m, vv));

    for nkv in [32usize, 8] {
        let t = 4096;
        let s = AttnShape::causal(1, t, nh, nkv, hd);
        let (q, k, vv) =
            (rand_buf(&g, t * nh * hd, BufKind::Act, 11), rand_buf(&g, t * nkv * hd, BufKind::Act, 12), rand_buf(&g, t * nkv * hd, BufKind::Act, 13));
        let (mut o, mut l) = (g.alloc(t * nh * hd, BufKind::Act).expect("alloc"), g.alloc(nh * t, BufKind::F32).expect("alloc"));
        let flops = 4.0 * (t * t * nh * hd) as f64 / 2.0;
        let mut grp = c.benchmark_group("attention_fwd_d128_bf16_flop");
        grp.throughput(Throughput::Elements(flops as u64));
        grp.sample_size(10);
        grp.bench_function(format!("t4096_h32_kv{nkv}_causal"), |b| {
            b.iter_custom(|it| timed(&g, None, it, || g.attention_fwd(vm(&mut o), vm(&mut l), v(&q), v(&k), v(&vv), s)))
        });
        grp.finish();
        let d = rand_buf(&g, t * nh * hd, BufKind::Act, 14);
        let (mut dq, mut dk, mut dv) = (
            g.alloc(t * nh * hd, BufKind::Act).expect("alloc"),
            g.alloc(t * nkv * hd, BufKind::Act).expect("alloc"),
            g.alloc(t * nkv * hd, BufKind::Act).expect("alloc"),
        );
        let mut grp = c.benchmark_group("attention_bwd_d128_bf16_flop");
        grp.throughput(Throughput::Elements((2.5 * flops) as u64));
        grp.sample_size(10);
        grp.bench_function(format!("t4096_h32_kv{nkv}_causal"), |b| {
            b.iter_custom(|it| timed(&g, None, it, || g.attention_bwd(vm(&mut dq), vm(&mut dk), vm(&mut dv), v(&d), v(&q), v(&k), v(&vv), v(&o), v(&l), s)))
        });
        grp.finish();
    }

    let mm = 8192;
    let (a, bm) = (rand_buf(&g, mm * mm, BufKind::Act, 15), rand_buf(&g, mm * mm, BufKind::Param, 16));
    let mut cc = g.alloc(mm * mm, BufKind::Act).expect("alloc");
    let gm = Gemm { m: mm, n: mm, k: mm, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite };
    let mut grp = c.benchmark_group("matmul_bf16_flop");
    grp.throughput(Throughput::Elements(2 * (mm as u64).pow(3)));
    grp.bench_function("8192x8192x8192_NT", |b| b.iter_custom(|it| timed(&g, None, it, || g.matmul(vm(&mut cc), v(&a), v(&bm), gm))));
    grp.finish();
}

criterion_group!(kernels_cuda, benches);
criterion_main!(kernels_cuda);

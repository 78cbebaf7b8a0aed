//! `gpu-check --bench-json`: device time of every kernel at Llama-2 7B
//! shapes (C = 4096, hd = 128, 32 heads, T = 4096, FFN 11008, V = 32000),
//! measured with CUDA events around each launch (warm-up first, median of
//! REPS, the L2 cache flushed before each timed launch of a memory-bound
//! kernel), plus the two ceilings: device copy bandwidth and the bf16
//! matmul rate. tools/bench/torch_gpu_peer.py times PyTorch on the same
//! shapes with the same keys; tools/bench/gpu_table.py joins the two.
//!
//! Each entry: `{"key", "ms", "bytes"}` (memory-bound: bytes read + written
//! once) or `{"key", "ms", "flops"}` (matrix-bound; causal attention counts
//! half the score matrix, backward 2.5x forward as flash-attn does).

use anyhow::Context;
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::kernels::rope::rope_table;
use llama2_runtime::rng::Rng;
use llama2_runtime::*;
use serde_json::json;

/// Timed repetitions per kernel (the median is reported).
const REPS: usize = 15;
/// Warm-up launches before timing (module load, cuBLASLt heuristics).
const WARMUP: usize = 3;
/// Bytes of the buffer written between timed launches to evict L2 (50 MB on H100, 60 MB on H200).
const L2_FLUSH_BYTES: usize = 256 << 20;

struct Bench<'a> {
    gpu: &'a CudaBackend,
    flush: CudaBuf,
    out: Vec<serde_json::Value>,
    rng: Rng,
}

fn median(mut x: Vec<f32>) -> f32 {
    x.sort_by(|a, b| a.total_cmp(b));
    x[x.len() / 2]
}

impl<'a> Bench<'a> {
    fn buf(&mut self, n: usize, kind: BufKind) -> anyhow::Result<CudaBuf> {
        // random data, never zeros (zeros can run faster than real data)
        // (about 2.5e9 draws in all: parallel streams, seconds instead of minutes)
        let data = super::reference::normals(self.rng.next_u64(), n, 1.0);
        let mut b = self.gpu.alloc(n, kind)?;
        self.gpu.upload(vm(&mut b), &data)?;
        Ok(b)
    }

    /// Times `f` (one launch sequence) REPS times after WARMUP runs.
    fn time(&mut self, flush: bool, mut f: impl FnMut(&CudaBackend) -> Result<()>) -> anyhow::Result<f32> {
        for _ in 0..WARMUP {
            f(self.gpu)?;
        }
        let mut ts = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            if flush {
                self.gpu.zero(vm(&mut self.flush))?;
            }
            let gpu = self.gpu;
            ts.push(gpu.time_ms(|| f(gpu))?);
        }
        Ok(median(ts))
    }

    /// Runs one group of benches; an error is printed and the run goes
    /// on (the JSON keeps what was measured).
    fn section(&mut self, name: &str, f: impl FnOnce(&mut Self) -> anyhow::Result<()>) {
        if let Err(e) = f(self) {
            println!("bench {name}: error {e:#}");
        }
    }

    fn record(&mut self, key: &str, ms: f32, bytes: Option<f64>, flops: Option<f64>) {
        let rate = match (bytes, flops) {
            (Some(b), _) => format!("{:8.1} GB/s", b / (ms as f64 * 1e-3) / 1e9),
            (_, Some(f)) => format!("{:8.1} TFLOP/s", f / (ms as f64 * 1e-3) / 1e12),
            _ => String::new(),
        };
        println!("bench {key:<40} {ms:10.4} ms {rate}");
        self.out.push(json!({"key": key, "ms": ms, "bytes": bytes, "flops": flops}));
    }
}

pub fn run(gpu: &CudaBackend, path: &std::path::Path) -> anyhow::Result<()> {
    let flush = gpu.alloc(L2_FLUSH_BYTES / 4, BufKind::F32)?;
    let mut b = Bench { gpu, flush, out: Vec::new(), rng: Rng::derive(7, "gpu-bench") };
    let (bt, c, ffn, vocab, nh, hd) = (4 * 4096usize, 4096usize, 11008usize, 32000usize, 32usize, 128usize);

    b.section("ceilings", |b| {
        let gpu = b.gpu;
        // ceilings: device copy (bytes read + written) and a bf16 matmul
        let n_copy = 1usize << 28; // 1 GiB of f32
        let src = b.buf(n_copy, BufKind::F32)?;
        let mut dst = gpu.alloc(n_copy, BufKind::F32)?;
        let ms = b.time(false, |g| g.copy(vm(&mut dst), v(&src)))?;
        b.record("copy_1GiB", ms, Some(2.0 * 4.0 * n_copy as f64), None);
        drop((src, dst));
        let mm = 8192usize;
        let (ma, mb) = (b.buf(mm * mm, BufKind::Act)?, b.buf(mm * mm, BufKind::Act)?);
        let mut mc = gpu.alloc(mm * mm, BufKind::Act)?;
        let g = Gemm { m: mm, n: mm, k: mm, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite };
        let ms = b.time(false, |gp| gp.matmul(vm(&mut mc), v(&ma), v(&mb), g))?;
        b.record("matmul_8192_bf16", ms, None, Some(2.0 * (mm as f64).powi(3)));
        drop((ma, mb, mc));
        // the Linear layers of a 7B block at B*T = 16384: x W^T
        let (x, w) = (b.buf(bt * c, BufKind::Act)?, b.buf(ffn * c, BufKind::Param)?);
        let mut y = gpu.alloc(bt * ffn, BufKind::Act)?;
        let g = Gemm { m: bt, n: ffn, k: c, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite };
        let ms = b.time(false, |gp| gp.matmul(vm(&mut y), v(&x), v(&w), g))?;
        b.record("matmul_linear_16384x11008x4096", ms, None, Some(2.0 * (bt * ffn * c) as f64));
        drop((x, w, y));
        Ok(())
    });
    b.section("rmsnorm and add", |b| {
        let gpu = b.gpu;
        // rmsnorm (B*T = 16384 rows of 4096)
        let (x, wt) = (b.buf(bt * c, BufKind::Act)?, b.buf(c, BufKind::Param)?);
        let (mut o, mut r) = (gpu.alloc(bt * c, BufKind::Act)?, gpu.alloc(bt, BufKind::F32)?);
        let ms = b.time(true, |g| g.rmsnorm_fwd(vm(&mut o), vm(&mut r), v(&x), v(&wt), bt, c, 1e-5))?;
        b.record("rmsnorm_fwd", ms, Some((2 * bt * c * 2 + bt * 4 + c * 2) as f64), None);
        let dy = b.buf(bt * c, BufKind::Act)?;
        let (mut dx, mut dw) = (gpu.alloc(bt * c, BufKind::Act)?, gpu.alloc(c, BufKind::F32)?);
        let ms = b.time(true, |g| g.rmsnorm_bwd(vm(&mut dx), vm(&mut dw), v(&dy), v(&x), v(&wt), v(&r), bt, c, GradWrite::Overwrite))?;
        b.record("rmsnorm_bwd", ms, Some((3 * bt * c * 2 + bt * 4 + c * 2 + c * 4) as f64), None);
        // residual add
        let ms = b.time(true, |g| g.add(vm(&mut o), v(&x), v(&dy)))?;
        b.record("add_bf16", ms, Some((3 * bt * c * 2) as f64), None);
        drop((x, wt, o, r, dy, dx, dw));
        Ok(())
    });
    b.section("rope", |b| {
        let gpu = b.gpu;
        // rope on q (B*T, 32, 128), in place
        let table = gpu.alloc(4096 * hd, BufKind::F32)?;
        let mut tb = table;
        gpu.upload(vm(&mut tb), &rope_table(4096, hd, 10000.0))?;
        let mut q = b.buf(bt * nh * hd, BufKind::Act)?;
        let rs = RopeShape { b: 4, t: 4096, heads: nh, hd, pos0: 0 };
        let ms = b.time(true, |g| g.rope_fwd(vm(&mut q), v(&tb), rs))?;
        b.record("rope_fwd", ms, Some((2 * bt * nh * hd * 2) as f64), None);
        drop((q, tb));
        Ok(())
    });
    b.section("swiglu", |b| {
        let gpu = b.gpu;
        // swiglu on (B*T, 11008)
        let n = bt * ffn;
        let (gt, up, dh) = (b.buf(n, BufKind::Act)?, b.buf(n, BufKind::Act)?, b.buf(n, BufKind::Act)?);
        let mut h = gpu.alloc(n, BufKind::Act)?;
        let ms = b.time(true, |g| g.swiglu_fwd(vm(&mut h), v(&gt), v(&up)))?;
        b.record("swiglu_fwd", ms, Some((3 * n * 2) as f64), None);
        let mut dg = gpu.alloc(n, BufKind::Act)?;
        let ms = b.time(true, |g| g.swiglu_bwd(vm(&mut dg), vm(&mut h), v(&dh), v(&gt), v(&up)))?;
        b.record("swiglu_bwd", ms, Some((5 * n * 2) as f64), None);
        drop((gt, up, dh, h, dg));
        Ok(())
    });
    b.section("fused projections", |b| {
        let gpu = b.gpu;
        // a 7B block's input projections at B*T = 16384: [q|k|v] (MHA: 3 x 4096
        // rows) with RoPE, and [gate|up] (2 x 11008 rows) with SwiGLU, forward
        // and backward, as the backend runs them (fused: one GEMM each and one
        // split/pack kernel) and as the unfused composition (three or two
        // GEMMs and the separate kernels) on the same buffers
        let (b_, t) = (4usize, 4096usize);
        let qd = nh * hd;
        let s = QkvShape { b: b_, t, c, n_head: nh, n_kv_head: nh, hd, pos0: 0 };
        let wd = s.width();
        let mut tb = gpu.alloc(t * hd, BufKind::F32)?;
        gpu.upload(vm(&mut tb), &rope_table(t, hd, 10000.0))?;
        let x = b.buf(bt * c, BufKind::Act)?;
        let w = b.buf(wd * c, BufKind::Param)?;
        let mut scratch = gpu.alloc(bt * wd.max(2 * ffn), BufKind::Act)?;
        let (mut q, mut k, mut vv) = (gpu.alloc(bt * qd, BufKind::Act)?, gpu.alloc(bt * qd, BufKind::Act)?, gpu.alloc(bt * qd, BufKind::Act)?);
        let flops = 2.0 * (bt * wd * c) as f64;
        let ms = b.time(false, |g| g.qkv_fwd(vm(&mut q), vm(&mut k), vm(&mut vv), vm(&mut scratch), v(&x), v(&w), v(&tb), s, None, false))?;
        b.record("qkv_fwd_7b", ms, None, Some(flops));
        let ms = b.time(false, |g| unfused::qkv_fwd(g, vm(&mut q), vm(&mut k), vm(&mut vv), vm(&mut scratch), v(&x), v(&w), v(&tb), s, None, false))?;
        b.record("qkv_fwd_7b_unfused", ms, None, Some(flops));
        let (mut dx, mut dw) = (gpu.alloc(bt * c, BufKind::Act)?, gpu.alloc(wd * c, BufKind::F32)?);
        let ms = b.time(false, |g| g.qkv_bwd(vm(&mut dx), vm(&mut dw), vm(&mut q), vm(&mut k), v(&vv), vm(&mut scratch), v(&x), v(&w), v(&tb), s, None))?;
        b.record("qkv_bwd_7b", ms, None, Some(2.0 * flops));
        let ms =
            b.time(false, |g| unfused::qkv_bwd(g, vm(&mut dx), vm(&mut dw), vm(&mut q), vm(&mut k), v(&vv), vm(&mut scratch), v(&x), v(&w), v(&tb), s, None))?;
        b.record("qkv_bwd_7b_unfused", ms, None, Some(2.0 * flops));
        drop((w, q, k, vv, dw));
        let w = b.buf(2 * ffn * c, BufKind::Param)?;
        let (mut gt, mut up, mut h) = (gpu.alloc(bt * ffn, BufKind::Act)?, gpu.alloc(bt * ffn, BufKind::Act)?, gpu.alloc(bt * ffn, BufKind::Act)?);
        let flops = 2.0 * (bt * 2 * ffn * c) as f64;
        let ms = b.time(false, |g| g.mlp_in_fwd(vm(&mut gt), vm(&mut up), vm(&mut h), vm(&mut scratch), v(&x), v(&w), (bt, ffn, c), false))?;
        b.record("mlp_in_fwd_7b", ms, None, Some(flops));
        let ms = b.time(false, |g| unfused::mlp_in_fwd(g, vm(&mut gt), vm(&mut up), vm(&mut h), vm(&mut scratch), v(&x), v(&w), (bt, ffn, c), false))?;
        b.record("mlp_in_fwd_7b_unfused", ms, None, Some(flops));
        let dh = b.buf(bt * ffn, BufKind::Act)?;
        let mut dw = gpu.alloc(2 * ffn * c, BufKind::F32)?;
        let (mut dg, mut du) = (gpu.alloc(bt * ffn, BufKind::Act)?, gpu.alloc(bt * ffn, BufKind::Act)?);
        let ms = b.time(false, |g| {
            g.mlp_in_bwd(vm(&mut dx), vm(&mut dw), vm(&mut dg), vm(&mut du), vm(&mut scratch), v(&dh), v(&gt), v(&up), v(&x), v(&w), (bt, ffn, c))
        })?;
        b.record("mlp_in_bwd_7b", ms, None, Some(2.0 * flops));
        let ms = b.time(false, |g| {
            unfused::mlp_in_bwd(g, vm(&mut dx), vm(&mut dw), vm(&mut dg), vm(&mut du), vm(&mut scratch), v(&dh), v(&gt), v(&up), v(&x), v(&w), (bt, ffn, c))
        })?;
        b.record("mlp_in_bwd_7b_unfused", ms, None, Some(2.0 * flops));
        Ok(())
    });
    b.section("embedding", |b| {
        let gpu = b.gpu;
        // embedding forward (B*T tokens of 4096) and backward
        let table = b.buf(vocab * c, BufKind::Param)?;
        let tokens: Vec<u32> = (0..bt).map(|_| b.rng.below(vocab as u64) as u32).collect();
        let mut e = gpu.alloc(bt * c, BufKind::Act)?;
        let ms = b.time(true, |g| g.embedding_fwd(vm(&mut e), &tokens, v(&table), vocab, c))?;
        b.record("embedding_fwd", ms, Some((2 * bt * c * 2) as f64), None);
        let mut dt = gpu.alloc(vocab * c, BufKind::F32)?;
        let ms = b.time(true, |g| g.embedding_bwd(vm(&mut dt), v(&e), &tokens, vocab, c))?;
        b.record("embedding_bwd", ms, Some((bt * c * 2 + 2 * bt * c * 4) as f64), None);
        drop((table, e, dt));
        Ok(())
    });
    b.section("cross-entropy", |b| {
        let gpu = b.gpu;
        // fused cross-entropy over (B*T/4 = 4096 rows, 32000), loss + dlogits
        let rows = 4096;
        let mut logits = b.buf(rows * vocab, BufKind::Act)?;
        let targets: Vec<i32> = (0..rows).map(|_| b.rng.below(vocab as u64) as i32).collect();
        let mut losses = gpu.alloc(rows, BufKind::F32)?;
        let ms = b.time(true, |g| g.cross_entropy(vm(&mut logits), vm(&mut losses), &targets, vocab, CeGrad::Uniform(1.0 / rows as f32)))?;
        b.record("cross_entropy_fwd_bwd", ms, Some((2 * rows * vocab * 2 + rows * 8) as f64), None);
        drop((logits, losses));
        Ok(())
    });
    b.section("adamw", |b| {
        let gpu = b.gpu;
        // AdamW over 2^28 parameters (fp32 master, m, v, grads; bf16 copy)
        let np = 1usize << 28;
        let mut p = b.buf(np, BufKind::Param)?;
        let gr = b.buf(np, BufKind::F32)?;
        let (mut m, mut vv) = (gpu.alloc(np, BufKind::F32)?, gpu.alloc(np, BufKind::F32)?);
        let h = AdamWStep { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 10, grad_scale: 1.0 };
        let ms = b.time(false, |g| g.adamw(vm(&mut p), v(&gr), vm(&mut m), vm(&mut vv), h))?;
        // read p, g, m, v (16 B); write p, m, v (12 B) and the bf16 copy (2 B)
        b.record("adamw_2^28", ms, Some((np * 30) as f64), None);
        drop((p, gr, m, vv));
        Ok(())
    });
    b.section("attention", |b| {
        let gpu = b.gpu;
        // attention, T = 4096, 32 heads of 128, causal, B = 1, and GQA kv = 8
        let attn0 = gpu.attention_impl();
        for (nkv, imp, suffix) in [(32usize, AttnImpl::V3, ""), (8, AttnImpl::V3, ""), (32, AttnImpl::Mma, "_v2"), (32, AttnImpl::Simple, "_v1")] {
            // v3 is what the backend runs at these shapes (Auto); v2 and v1 are timed
            // beside it, so the run shows whether that choice is the fastest
            gpu.set_attention_impl(imp);
            let s = AttnShape::causal(1, 4096, nh, nkv, hd);
            let t = 4096;
            let (q, k, vv) = (b.buf(t * nh * hd, BufKind::Act)?, b.buf(t * nkv * hd, BufKind::Act)?, b.buf(t * nkv * hd, BufKind::Act)?);
            let (mut o, mut l) = (gpu.alloc(t * nh * hd, BufKind::Act)?, gpu.alloc(nh * t, BufKind::F32)?);
            let ms = b.time(false, |g| g.attention_fwd(vm(&mut o), vm(&mut l), v(&q), v(&k), v(&vv), s))?;
            let fwd_flops = 4.0 * (t * t * nh * hd) as f64 / 2.0;
            b.record(&format!("attention_fwd_t4096_d128_kv{nkv}{suffix}"), ms, None, Some(fwd_flops));
            let d = b.buf(t * nh * hd, BufKind::Act)?;
            let (mut dq, mut dk, mut dv) =
                (gpu.alloc(t * nh * hd, BufKind::Act)?, gpu.alloc(t * nkv * hd, BufKind::Act)?, gpu.alloc(t * nkv * hd, BufKind::Act)?);
            let ms = b.time(false, |g| g.attention_bwd(vm(&mut dq), vm(&mut dk), vm(&mut dv), v(&d), v(&q), v(&k), v(&vv), v(&o), v(&l), s))?;
            b.record(&format!("attention_bwd_t4096_d128_kv{nkv}{suffix}"), ms, None, Some(2.5 * fwd_flops));
        }
        gpu.set_attention_impl(attn0);
        Ok(())
    });
    b.section("decode", |b| {
        let gpu = b.gpu;
        // decode: one query against 4096 cached keys, batch 8; what the backend
        // runs there (Auto: split-K) and v1 beside it (the path before split-K)
        let s = AttnShape { b: 8, tq: 1, tkv: 4096, cap: 4096, n_head: nh, n_kv_head: nh, hd };
        let (q, k, vv) = (b.buf(8 * nh * hd, BufKind::Act)?, b.buf(8 * 4096 * nh * hd, BufKind::Act)?, b.buf(8 * 4096 * nh * hd, BufKind::Act)?);
        let (mut o, mut l) = (gpu.alloc(8 * nh * hd, BufKind::Act)?, gpu.alloc(8 * nh, BufKind::F32)?);
        let attn0 = gpu.attention_impl();
        for (imp, suffix) in [(AttnImpl::Auto, ""), (AttnImpl::Simple, "_v1")] {
            gpu.set_attention_impl(imp);
            let ms = b.time(true, |g| g.attention_fwd(vm(&mut o), vm(&mut l), v(&q), v(&k), v(&vv), s))?;
            b.record(&format!("attention_decode_b8_t4096_d128{suffix}"), ms, Some((2 * 8 * 4096 * nh * hd * 2) as f64), None);
        }
        gpu.set_attention_impl(attn0);
        Ok(())
    });
    std::fs::write(path, serde_json::Value::Array(b.out).to_string()).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

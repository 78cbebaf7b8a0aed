//! The kernel-level checks of `gpu-check`: each op runs through the
//! `Backend` trait on the CPU backend (the f32 reference) and on the device
//! under test ([`Dut`]: the CUDA backend on a GPU, or with `--sim` the same
//! kernels on the CPU layer) with the same inputs, and each output is
//! compared, with the same rules and tolerances either way.
//!
//! Inputs are drawn from the seeded RNG and rounded to bf16, so both
//! backends see exactly the same values (the GPU stores activations in
//! bf16). GPU outputs are poisoned with NaN first; NaN never passes.
//!
//! Tolerances (STYLE.md section 5):
//! - kernels that compute in f32 and round once to bf16: per element
//!   `|gpu − ref| <= ATOL_BF16 + RTOL_BF16·|ref|`;
//! - low-precision kernels with long reductions (attention, matmul, RMSNorm
//!   backward): flash-attn's rule, max error vs the f32 reference at most
//!   FA_FWD (forward) or FA_BWD (backward) times the max error of the naive
//!   bf16 reference (the f32 reference rounded to bf16 where the kernel
//!   stores bf16), plus F32_FLOOR·max|ref| for f32 rounding noise;
//! - f32 outputs (rstd, lse, losses, weight gradients, optimizer state):
//!   per element with RTOL_F32/ATOL_F32, or relative to the tensor's max
//!   for reductions over many rows (F32_SUM).
//!
//! Why one file of ~1000 lines: it is the table of kernel rows, one method
//! per op in one `Checker`, read top to bottom as the list of what
//! gpu-check covers; the comparison rules and naive references are already
//! their own modules, and the fused projections' rows (which build their
//! naive references from several CPU ops) are in `checks/proj.rs`.

use super::compare::{compare, Row, Rule, F32_FLOOR};
use super::reference::{
    attention_bwd_naive_bf16, attention_bwd_naive_bf16_ragged, attention_naive_bf16p, attention_naive_bf16p_ragged, bfr, normals, AttnBwdNaive,
};
use llama2_runtime::kernels::attention::AttnShape;
use llama2_runtime::kernels::rope::rope_table;
use llama2_runtime::rng::Rng;
use llama2_runtime::*;

mod proj;

/// bf16 machine epsilon: the spacing of bf16 numbers at 1.0 (8 bits of mantissa).
const BF16_EPS: f64 = 1.0 / 128.0;
/// One rounding to bf16 costs at most BF16_EPS/2 relative; a different f32
/// order can move a value across a rounding boundary, one more BF16_EPS.
/// 4·BF16_EPS (STYLE.md) leaves margin over that 1.5·BF16_EPS.
const RTOL_BF16: f64 = 4.0 * BF16_EPS;
/// Absolute floor for values near 0 from cancelling f32 terms of O(1)
/// inputs (rope's a·cos − b·sin, rmsnorm's r·g − k·x): a few f32 ulps of the
/// terms (~1e-7 each); 1e-5 is 100x that and still far below BF16_EPS.
const ATOL_BF16: f64 = 1e-5;
/// f32 statistics (rstd, lse, per-row losses) computed in another order:
/// a few ulps of f32 (1.2e-7) per reduction level of up to 32k terms.
const RTOL_F32: f64 = 1e-5;
const ATOL_F32: f64 = 1e-6;
/// f32 sums over up to 16k rows in another order (weight gradients): the
/// error grows like sqrt(n)·eps_f32·Σ|terms| ~ 1e-5 of the largest value.
const F32_SUM: f64 = 1e-4;
/// flash-attn's rule: forward error <= 2x, backward <= 3x the naive bf16 error.
const FA_FWD: f64 = 2.0;
const FA_BWD: f64 = 3.0;
/// AdamW mirrors the CPU kernel operation by operation (no FMA
/// contraction, IEEE sqrt and division): bit-identical is expected; allow
/// one f32 ulp in case a compiler rewrites anyway.
const RTOL_ADAMW: f64 = 1.2e-7;

const BF: Rule = Rule::Elem { rtol: RTOL_BF16, atol: ATOL_BF16 };

/// The attention kernels every attention row runs: v1 (warp per row), v2
/// (tensor cores), v3 (ldmatrix, cp.async stages, one backward pass).
const ATTN_IMPLS: [AttnImpl; 3] = [AttnImpl::Simple, AttnImpl::Mma, AttnImpl::V3];
/// The kernels with a ragged form (v2 has none).
const RAGGED_IMPLS: [AttnImpl; 2] = [AttnImpl::Simple, AttnImpl::V3];
/// Forwards against a cache: every version and the split-K decode kernels.
pub(super) const DECODE_IMPLS: [AttnImpl; 4] = [AttnImpl::Simple, AttnImpl::Mma, AttnImpl::V3, AttnImpl::SplitK];
/// Ragged forwards against a cache: the ragged kernels and split-K.
const RAGGED_DECODE_IMPLS: [AttnImpl; 3] = [AttnImpl::Simple, AttnImpl::V3, AttnImpl::SplitK];
/// Long caches on the CPU layer: v1 (the reference GPU path) and split-K only,
/// so the simulated check stays quick (the tensor-core kernels' decode rows
/// run at tkv <= 1000).
const LONG_DECODE_IMPLS: [AttnImpl; 2] = [AttnImpl::Simple, AttnImpl::SplitK];
const F32: Rule = Rule::Elem { rtol: RTOL_F32, atol: ATOL_F32 };

/// What gpu-check needs of the device under test beyond [`Backend`].
pub trait Dut: Backend {
    fn attention_impl(&self) -> AttnImpl;
    fn set_attention_impl(&self, a: AttnImpl);
    /// the bf16 working copy of a `Param` window, as f32
    fn download_work(&self, src: View<Self>) -> Result<Vec<f32>>;
    /// whether matmul runs (cuBLASLt): not on the CPU layer
    fn has_blas(&self) -> bool;
}

impl Dut for CudaBackend {
    fn attention_impl(&self) -> AttnImpl {
        CudaBackend::attention_impl(self)
    }
    fn set_attention_impl(&self, a: AttnImpl) {
        CudaBackend::set_attention_impl(self, a)
    }
    fn download_work(&self, src: View<Self>) -> Result<Vec<f32>> {
        CudaBackend::download_work(self, src)
    }
    fn has_blas(&self) -> bool {
        true
    }
}

#[cfg(feature = "cuda-sim")]
impl Dut for super::sim_backend::SimBackend {
    fn attention_impl(&self) -> AttnImpl {
        super::sim_backend::SimBackend::attention_impl(self)
    }
    fn set_attention_impl(&self, a: AttnImpl) {
        super::sim_backend::SimBackend::set_attention_impl(self, a)
    }
    fn download_work(&self, src: View<Self>) -> Result<Vec<f32>> {
        super::sim_backend::SimBackend::download_work(self, src)
    }
    fn has_blas(&self) -> bool {
        false
    }
}

/// Which shapes the checks use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shapes {
    /// real Llama-2 shapes (T up to 4096) and ragged ones: a GPU run
    Full,
    /// T <= 97: a fast smoke test on a GPU
    Quick,
    /// the CPU layer's set (`--sim`): every kernel and code path of the
    /// quick set at sizes the CPU runs in minutes (T <= 97 and decode
    /// against caches of up to 1024 rows; rmsnorm with more rows than the
    /// backward has blocks; no 4096x32000 embedding, no cuBLASLt)
    Sim,
}

pub struct Checker<G: Dut> {
    cpu: CpuBackend,
    gpu: G,
    rng: Rng,
    shapes: Shapes,
    rows: Vec<Row>,
    /// the attention kernels the backend started with (LLAMA2_ATTN), restored
    /// after each check group, so the model-level checks run on them
    attn0: AttnImpl,
    /// where the rows so far are rewritten as JSON after each row, so a run
    /// cut short by a timeout or a hang still leaves its results
    json_path: Option<std::path::PathBuf>,
}

fn put<B: Backend>(be: &B, data: &[f32], kind: BufKind) -> Result<B::Buf> {
    let mut b = be.alloc(data.len(), kind)?;
    be.upload(vm(&mut b), data)?;
    Ok(b)
}

fn nan_buf<B: Backend>(be: &B, n: usize, kind: BufKind) -> Result<B::Buf> {
    put(be, &vec![f32::NAN; n], kind)
}

fn get<B: Backend>(be: &B, b: &B::Buf) -> Result<Vec<f32>> {
    let mut out = vec![0f32; b.len()];
    be.download(v(b), &mut out)?;
    Ok(out)
}

impl<G: Dut> Checker<G> {
    pub fn new(cpu: CpuBackend, gpu: G, seed: u64, shapes: Shapes) -> Self {
        let attn0 = gpu.attention_impl();
        Checker { cpu, gpu, rng: Rng::derive(seed, "gpu-check"), shapes, rows: Vec::new(), attn0, json_path: None }
    }

    /// The rows recorded so far.
    #[cfg_attr(not(feature = "cuda-sim"), allow(dead_code))]
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Rewrites `path` with the rows so far after every row (see `json_path`).
    pub fn set_json_path(&mut self, path: Option<std::path::PathBuf>) {
        self.json_path = path;
    }

    /// Prints a row at once (a run that hangs or times out still shows how
    /// far it got) and records it.
    fn push(&mut self, r: Row) {
        println!("{}", Self::line(&r));
        self.rows.push(r);
        if let Some(p) = &self.json_path {
            // best effort here; the final write in gpu_check::run reports errors
            let _ = std::fs::write(p, self.json());
        }
    }

    fn line(r: &Row) -> String {
        format!("{:<58} {:>12.3e} {:>8.1}%  {}{}", r.name, r.max_abs, 100.0 * r.used, if r.ok { "ok" } else { "FAIL" }, r.first_bad)
    }

    pub fn into_gpu(self) -> G {
        self.gpu
    }
    pub fn backends(&self) -> (&CpuBackend, &G) {
        (&self.cpu, &self.gpu)
    }
    #[cfg_attr(not(feature = "cuda-sim"), allow(dead_code))]
    pub fn gpu(&self) -> &G {
        &self.gpu
    }

    /// Records a scalar check: passes when `err <= limit` (NaN fails).
    pub fn record(&mut self, name: String, err: f64, limit: f64) {
        let used = if limit > 0.0 {
            err / limit
        } else if err == 0.0 {
            0.0
        } else {
            f64::INFINITY
        };
        let ok = used <= 1.0;
        let used = if used.is_nan() { f64::INFINITY } else { used };
        self.push(Row { name, max_abs: err, used, ok, first_bad: if ok { String::new() } else { format!(" {err:.4e} > limit {limit:.4e}") } });
    }

    /// `n` normal draws times `scale`, rounded to bf16 (parallel streams
    /// seeded from the checker's RNG: fresh on every call).
    fn randn(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let mut x = normals(self.rng.next_u64(), n, scale);
        x.iter_mut().for_each(|e| *e = bfr(*e));
        x
    }

    /// Compares `g` with `r` under `rule` ([`compare`]) and records the row.
    fn cmp(&mut self, name: String, g: &[f32], r: &[f32], rule: Rule) {
        self.push(compare(name, g, r, rule));
    }

    /// flash-attn's rule against an explicit naive bf16 reference `naive`
    /// (computed with the kernel's own bf16 rounding points): max|g − r| <=
    /// factor·max|naive − r| + F32_FLOOR·max|r|.
    fn cmp_naive(&mut self, name: String, g: &[f32], r: &[f32], naive: &[f32], factor: f64) {
        self.cmp_naive_plus(name, g, r, naive, factor, 0.0);
    }

    /// [`Self::cmp_naive`] plus an absolute `noise` term (f32 rounding the
    /// naive reference does not show, e.g. [`AttnBwdNaive::noise`]).
    fn cmp_naive_plus(&mut self, name: String, g: &[f32], r: &[f32], naive: &[f32], factor: f64, noise: f64) {
        let max_ref = r.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
        let naive_err = naive.iter().zip(r).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
        let limit = factor * naive_err + F32_FLOOR * max_ref + noise;
        self.cmp(name, g, r, Rule::MaxAbs { limit });
    }

    /// Prints the failed rows again (every row was printed as it came) and
    /// the count; returns the number of failed rows.
    pub fn report(&self) -> usize {
        let failed: Vec<&Row> = self.rows.iter().filter(|r| !r.ok).collect();
        if !failed.is_empty() {
            println!("failed checks:");
            for r in &failed {
                println!("{}", Self::line(r));
            }
        }
        println!("{} passed, {} failed", self.rows.len() - failed.len(), failed.len());
        failed.len()
    }

    pub fn json(&self) -> String {
        let rows: Vec<serde_json::Value> =
            self.rows.iter().map(|r| serde_json::json!({"check": r.name, "max_abs_err": r.max_abs, "tol_used": r.used, "ok": r.ok})).collect();
        serde_json::Value::Array(rows).to_string()
    }

    /// Runs one group of checks; an error (a refused launch, a CUDA fault)
    /// becomes a failed row instead of ending the run, so one broken kernel
    /// does not hide the results of the others.
    pub(super) fn guard(&mut self, name: &str, f: impl FnOnce(&mut Self) -> anyhow::Result<()>) {
        let res = f(self);
        // an attention check that failed half-way leaves its kernel choice set
        self.gpu.set_attention_impl(self.attn0);
        if let Err(e) = res {
            self.push(Row { name: format!("{name}: error"), max_abs: f64::NAN, used: f64::INFINITY, ok: false, first_bad: format!(" {e:#}") });
        }
    }

    pub fn run_all(&mut self) -> anyhow::Result<()> {
        let (quick, sim) = (self.shapes != Shapes::Full, self.shapes == Shapes::Sim);
        println!("{:<58} {:>12} {:>9}  result", "check", "max |err|", "tol used");
        self.guard("elementwise", |s| s.elementwise());
        self.guard("embedding", |s| s.embedding(97, 1000, 256));
        if !sim {
            self.guard("embedding", |s| s.embedding(4096, 32000, 4096));
        }
        // (600, 512): more rows than the backward's BWD_MAX_BLOCKS (rows strided over blocks)
        let norms: &[(usize, usize)] = if sim { &[(1, 256), (97, 4096), (600, 512)] } else { &[(1, 256), (97, 4096), (4096, 4096), (333, 8192)] };
        for &(n, c) in norms {
            if quick && !sim && n > 97 {
                continue;
            }
            self.guard("rmsnorm", |s| s.rmsnorm(n, c));
            self.guard("add_rmsnorm", |s| s.add_rmsnorm(n, c));
        }
        for (b, t, heads, hd, pos0) in [(3, 97, 4, 64, 0), (1, 97, 8, 128, 5), (2, 1024, 32, 128, 0)] {
            if quick && t > 97 {
                continue;
            }
            self.guard("rope", |s| s.rope(b, t, heads, hd, pos0));
        }
        self.guard("swiglu", |s| s.swiglu(97 * 1000 + 3));
        if !quick {
            self.guard("swiglu", |s| s.swiglu(4096 * 11008));
        }
        self.fused_projections(quick);
        self.guard("cross_entropy", |s| s.cross_entropy(97, 97));
        let rows = if quick { 37 } else { 1024 };
        self.guard("cross_entropy", |s| s.cross_entropy(rows, 32000));
        self.guard("cross_entropy_entropy", |s| s.cross_entropy_entropy(97, 97));
        self.guard("cross_entropy_entropy", |s| s.cross_entropy_entropy(rows, 32000));
        self.guard("ragged rope / kv_write", |s| s.ragged_rope_kv());
        for hd in [64, 128] {
            self.guard("attention ragged", |s| s.attention_ragged(hd));
        }
        self.guard("adamw", |s| s.adamw(1_000_003));
        if self.gpu.has_blas() {
            for (m, n, k) in [(97, 96, 128), (1024, 4096, 4096), (333, 1000, 520)] {
                if quick && m > 97 {
                    continue;
                }
                self.guard("matmul", |s| s.matmul(m, n, k));
            }
        } else {
            println!("(matmul: cuBLASLt, not one of our kernels, does not run on the CPU layer: its rows need a GPU)");
        }
        let ts: &[usize] = if quick { &[1, 97] } else { &[1, 97, 1024, 4096] };
        for &t in ts {
            for hd in [64, 128] {
                for nkv in [16, 8, 1] {
                    // T = 4096: one configuration (the bench's: hd 128, GQA); its
                    // CPU references cost about 4·T²·hd·H/2 flops each
                    if t == 4096 && (hd, nkv) != (128, 8) {
                        continue;
                    }
                    let b = if t <= 97 { 3 } else { 1 };
                    // named as the rows it records, so the table finds its error row
                    self.guard(&format!("attention b={b} t={t} hd={hd} h=16 kv={nkv}"), |s| s.attention(AttnShape::causal(b, t, 16, nkv, hd)));
                }
            }
        }
        // decoding (one query) and a prefill chunk against a cache
        for (tq, tkv, cap, hd) in [(1, 97, 128, 128), (1, 1000, 1024, 128), (1, 33, 40, 64), (37, 100, 128, 128), (70, 70, 96, 64)] {
            self.guard("attention decode", |s| s.attention_decode(AttnShape { b: 2, tq, tkv, cap, n_head: 16, n_kv_head: 8, hd }, &DECODE_IMPLS));
        }
        // split-K over long caches: many chunks, a last chunk with one tile empty
        // (700 = 5·128 + 60), GQA groups of 8 over several query rows (24 rows: two
        // row blocks), MQA; v1 beside it as the unsplit GPU path
        for (b, tq, tkv, cap, nh, nkv, hd) in [(2, 1, 2000, 2048, 16, 8, 64), (2, 3, 700, 768, 32, 4, 128), (1, 1, 300, 320, 16, 1, 64)] {
            self.guard("attention decode", |s| s.attention_decode(AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd }, &LONG_DECODE_IMPLS));
        }
        if !quick {
            // T = 4096: the decode the split-K rule is for (one sequence, 32 heads of 128, GQA 8)
            self.guard("attention decode", |s| {
                s.attention_decode(AttnShape { b: 1, tq: 1, tkv: 4096, cap: 4096, n_head: 32, n_kv_head: 8, hd: 128 }, &DECODE_IMPLS)
            });
            self.guard("attention decode", |s| {
                s.attention_decode(AttnShape { b: 4, tq: 4, tkv: 4000, cap: 4096, n_head: 32, n_kv_head: 8, hd: 128 }, &DECODE_IMPLS)
            });
        }
        Ok(())
    }

    /// The fused projections (`checks/proj.rs`): QKV with RoPE (MHA, GQA,
    /// MQA, a head dim of 6 that takes the kernels' one-pair path, decode at
    /// pos0 > 0 on the inference product, ragged prefill with padding rows and
    /// ragged decode) and gate/up with SwiGLU (i % 8 == 0 and not).
    fn fused_projections(&mut self, quick: bool) {
        let qkv = |b, t, c, nh, nkv, hd, pos0| QkvShape { b, t, c, n_head: nh, n_kv_head: nkv, hd, pos0 };
        // (shape, invariant, backward too, also with a short scratch)
        for (s, inv, bwd, fb) in [
            (qkv(2, 37, 256, 4, 4, 64, 0), false, true, true),
            (qkv(3, 20, 256, 8, 2, 128, 0), false, true, false),
            (qkv(2, 9, 192, 8, 1, 64, 0), false, true, false),
            (qkv(1, 5, 40, 3, 1, 6, 2), false, true, false),
            (qkv(2, 1, 256, 8, 2, 128, 50), true, false, false),
        ] {
            self.guard("qkv", |c| c.qkv(s, None, inv, bwd, fb));
        }
        // ragged: a prefill with padding rows (one sequence at an offset) and a decode step
        let (p0, l0) = ([0u32, 5, 0], [24u32, 14, 3]);
        self.guard("qkv ragged", |c| c.qkv(qkv(3, 24, 256, 4, 2, 64, 0), Some((&p0, &l0)), false, true, false));
        let (p1, l1) = ([40u32, 3, 0], [1u32, 1, 0]);
        self.guard("qkv ragged", |c| c.qkv(qkv(3, 1, 256, 8, 2, 128, 0), Some((&p1, &l1)), true, false, false));
        self.guard("mlp_in", |c| c.mlp_in(74, 352, 256, true));
        self.guard("mlp_in", |c| c.mlp_in(37, 100, 64, false));
        if !quick {
            // Llama-2 widths (7B's c and i, GQA 8 as 70B), 512 rows; decode on MHA at pos0 1000
            self.guard("qkv", |c| c.qkv(qkv(2, 256, 4096, 32, 8, 128, 0), None, false, true, false));
            self.guard("qkv", |c| c.qkv(qkv(4, 1, 4096, 32, 32, 128, 1000), None, true, false, false));
            self.guard("mlp_in", |c| c.mlp_in(512, 11008, 4096, false));
        }
    }

    pub(super) fn elementwise(&mut self) -> anyhow::Result<()> {
        let n = 100_003; // odd: exercises the scalar tails
        for kind in [BufKind::Act, BufKind::F32] {
            let k = if kind == BufKind::Act { "bf16" } else { "f32" };
            let (a, b) = (self.randn(n, 1.0), self.randn(n, 1.0));
            let rule = if kind == BufKind::Act { BF } else { F32 };
            // add
            let (ca, cb, mut co) = (put(&self.cpu, &a, kind)?, put(&self.cpu, &b, kind)?, put(&self.cpu, &vec![0.0; n], kind)?);
            self.cpu.add(vm(&mut co), v(&ca), v(&cb))?;
            let (ga, gb, mut go) = (put(&self.gpu, &a, kind)?, put(&self.gpu, &b, kind)?, nan_buf(&self.gpu, n, kind)?);
            self.gpu.add(vm(&mut go), v(&ga), v(&gb))?;
            let (g, r) = (get(&self.gpu, &go)?, get(&self.cpu, &co)?);
            self.cmp(format!("add_{k} n={n}"), &g, &r, rule);
            // add_assign on an odd window (offset 3: unaligned path)
            let mut cx = put(&self.cpu, &a, kind)?;
            let mut gx = put(&self.gpu, &a, kind)?;
            self.cpu.add_assign(vm(&mut cx).sub(3, n - 3)?, v(&cb).sub(0, n - 3)?)?;
            self.gpu.add_assign(vm(&mut gx).sub(3, n - 3)?, v(&gb).sub(0, n - 3)?)?;
            let (g, r) = (get(&self.gpu, &gx)?, get(&self.cpu, &cx)?);
            self.cmp(format!("add_assign_{k} n={} (offset 3)", n - 3), &g, &r, rule);
            // scale
            self.cpu.scale(vm(&mut cx), 0.37)?;
            self.gpu.scale(vm(&mut gx), 0.37)?;
            let (g, r) = (get(&self.gpu, &gx)?, get(&self.cpu, &cx)?);
            self.cmp(format!("scale_{k} n={n}"), &g, &r, rule);
            // sum of squares (f64 on the host)
            let (cs, gs) = (self.cpu.sum_squares(v(&ca))?, self.gpu.sum_squares(v(&ga))?);
            self.cmp(format!("sum_squares_{k} n={n}"), &[gs as f32], &[cs as f32], F32);
            // gather / scatter-add of rows (repeated rows in order)
            let c = 100;
            let rows: Vec<u32> = vec![5, 0, 999, 5, 17];
            let mut cg = put(&self.cpu, &vec![0.0; rows.len() * c], kind)?;
            let mut gg = nan_buf(&self.gpu, rows.len() * c, kind)?;
            self.cpu.gather_rows(vm(&mut cg), v(&ca), &rows, c)?;
            self.gpu.gather_rows(vm(&mut gg), v(&ga), &rows, c)?;
            let (g, r) = (get(&self.gpu, &gg)?, get(&self.cpu, &cg)?);
            self.cmp(format!("gather_rows_{k}"), &g, &r, rule);
            // scatter-add into the same fresh values on both sides (cx and gx
            // already differ by the GPU's bf16 roundings, which a sum that
            // cancels would magnify past any per-element tolerance)
            let base = self.randn(n, 1.0);
            let (mut cs, mut gs) = (put(&self.cpu, &base, kind)?, put(&self.gpu, &base, kind)?);
            self.cpu.scatter_add_rows(vm(&mut cs), v(&cg), &rows, c)?;
            self.gpu.scatter_add_rows(vm(&mut gs), v(&gg), &rows, c)?;
            let (g, rs) = (get(&self.gpu, &gs)?, get(&self.cpu, &cs)?);
            if kind == BufKind::Act {
                // the kernel rounds to bf16 after every add (a repeated row
                // twice); the naive reference rounds at the same points
                let mut naive = base.clone();
                for (i, &row) in rows.iter().enumerate() {
                    for j in 0..c {
                        let d = &mut naive[row as usize * c + j];
                        *d = bfr(*d + r[i * c + j]);
                    }
                }
                self.cmp_naive(format!("scatter_add_rows_{k}"), &g, &rs, &naive, FA_FWD);
            } else {
                self.cmp(format!("scatter_add_rows_{k}"), &g, &rs, rule);
            }
            // KV-cache write
            let (b, t, cap, w, pos0) = (2, 7, 16, 256, 5);
            let new = self.randn(b * t * w, 1.0);
            let base = self.randn(b * cap * w, 1.0);
            let (mut cc, cn) = (put(&self.cpu, &base, kind)?, put(&self.cpu, &new, kind)?);
            let (mut gc, gn) = (put(&self.gpu, &base, kind)?, put(&self.gpu, &new, kind)?);
            self.cpu.kv_write(vm(&mut cc), v(&cn), b, t, cap, w, pos0)?;
            self.gpu.kv_write(vm(&mut gc), v(&gn), b, t, cap, w, pos0)?;
            let (g, r) = (get(&self.gpu, &gc)?, get(&self.cpu, &cc)?);
            self.cmp(format!("kv_write_{k}"), &g, &r, rule);
        }
        // casts: a Param upload keeps master and bf16 copy; copy F32 -> Act rounds
        let x: Vec<f32> = (0..n).map(|_| self.rng.normal()).collect(); // not bf16-exact
        let gp = put(&self.gpu, &x, BufKind::Param)?;
        let master = get(&self.gpu, &gp)?;
        self.cmp("param upload: fp32 master".into(), &master, &x, Rule::Elem { rtol: 0.0, atol: 0.0 });
        let work = self.gpu.download_work(v(&gp))?;
        let rounded: Vec<f32> = x.iter().map(|&e| bfr(e)).collect();
        self.cmp("param upload: bf16 copy = bf16(master)".into(), &work, &rounded, Rule::Elem { rtol: 0.0, atol: 0.0 });
        let gf = put(&self.gpu, &x, BufKind::F32)?;
        let mut ga = nan_buf(&self.gpu, n, BufKind::Act)?;
        self.gpu.copy(vm(&mut ga), v(&gf))?;
        let g = get(&self.gpu, &ga)?;
        self.cmp("cast_f32_to_bf16 (copy F32 -> Act)".into(), &g, &rounded, Rule::Elem { rtol: 0.0, atol: 0.0 });
        // and back: bf16 -> f32 is exact
        let mut gb = nan_buf(&self.gpu, n, BufKind::F32)?;
        self.gpu.copy(vm(&mut gb), v(&ga))?;
        let g = get(&self.gpu, &gb)?;
        self.cmp("cast_bf16_to_f32 (copy Act -> F32)".into(), &g, &rounded, Rule::Elem { rtol: 0.0, atol: 0.0 });
        Ok(())
    }

    pub(super) fn embedding(&mut self, n: usize, vocab: usize, c: usize) -> anyhow::Result<()> {
        let table = self.randn(vocab * c, 1.0);
        // a skewed draw, so many tokens repeat (the backward's hard case)
        let tokens: Vec<u32> = (0..n).map(|_| (self.rng.below(vocab as u64).min(self.rng.below(vocab as u64))) as u32).collect();
        let ct = put(&self.cpu, &table, BufKind::Param)?;
        let gt = put(&self.gpu, &table, BufKind::Param)?;
        let mut co = put(&self.cpu, &vec![0.0; n * c], BufKind::Act)?;
        let mut go = nan_buf(&self.gpu, n * c, BufKind::Act)?;
        self.cpu.embedding_fwd(vm(&mut co), &tokens, v(&ct), vocab, c)?;
        self.gpu.embedding_fwd(vm(&mut go), &tokens, v(&gt), vocab, c)?;
        let (g, r) = (get(&self.gpu, &go)?, get(&self.cpu, &co)?);
        self.cmp(format!("embedding_fwd n={n} v={vocab} c={c}"), &g, &r, BF);
        let dout = self.randn(n * c, 1.0);
        let init = self.randn(vocab * c, 0.1);
        let (cd, gd) = (put(&self.cpu, &dout, BufKind::Act)?, put(&self.gpu, &dout, BufKind::Act)?);
        let mut cdt = put(&self.cpu, &init, BufKind::F32)?;
        let mut gdt = put(&self.gpu, &init, BufKind::F32)?;
        self.cpu.embedding_bwd(vm(&mut cdt), v(&cd), &tokens, vocab, c)?;
        self.gpu.embedding_bwd(vm(&mut gdt), v(&gd), &tokens, vocab, c)?;
        let (g, r) = (get(&self.gpu, &gdt)?, get(&self.cpu, &cdt)?);
        self.cmp(format!("embedding_bwd n={n} v={vocab} c={c} (+=)"), &g, &r, Rule::MaxRel { tol: F32_SUM });
        Ok(())
    }

    pub(super) fn rmsnorm(&mut self, n: usize, c: usize) -> anyhow::Result<()> {
        let eps = 1e-5;
        let x = self.randn(n * c, 1.0);
        let w: Vec<f32> = (0..c).map(|_| bfr(1.0 + 0.1 * self.rng.normal())).collect();
        let (cx, gx) = (put(&self.cpu, &x, BufKind::Act)?, put(&self.gpu, &x, BufKind::Act)?);
        let (cw, gw) = (put(&self.cpu, &w, BufKind::Param)?, put(&self.gpu, &w, BufKind::Param)?);
        let mut co = put(&self.cpu, &vec![0.0; n * c], BufKind::Act)?;
        let mut cr = put(&self.cpu, &vec![0.0; n], BufKind::F32)?;
        let mut go = nan_buf(&self.gpu, n * c, BufKind::Act)?;
        let mut gr = nan_buf(&self.gpu, n, BufKind::F32)?;
        self.cpu.rmsnorm_fwd(vm(&mut co), vm(&mut cr), v(&cx), v(&cw), n, c, eps)?;
        self.gpu.rmsnorm_fwd(vm(&mut go), vm(&mut gr), v(&gx), v(&gw), n, c, eps)?;
        let (g, r) = (get(&self.gpu, &go)?, get(&self.cpu, &co)?);
        self.cmp(format!("rmsnorm_fwd n={n} c={c}: out"), &g, &r, BF);
        let (g, r) = (get(&self.gpu, &gr)?, get(&self.cpu, &cr)?);
        self.cmp(format!("rmsnorm_fwd n={n} c={c}: rstd"), &g, &r, F32);
        // backward from the CPU's rstd, both write rules
        let rstd = get(&self.cpu, &cr)?;
        let dy = self.randn(n * c, 1.0);
        for write in [GradWrite::Overwrite, GradWrite::Accumulate] {
            let dinit = self.randn(n * c, 1.0);
            let dwinit = self.randn(c, 1.0);
            let (cd, gd) = (put(&self.cpu, &dy, BufKind::Act)?, put(&self.gpu, &dy, BufKind::Act)?);
            let (crs, grs) = (put(&self.cpu, &rstd, BufKind::F32)?, put(&self.gpu, &rstd, BufKind::F32)?);
            let mut cdi = put(&self.cpu, &dinit, BufKind::Act)?;
            let mut gdi = if write == GradWrite::Overwrite { nan_buf(&self.gpu, n * c, BufKind::Act)? } else { put(&self.gpu, &dinit, BufKind::Act)? };
            let mut cdw = put(&self.cpu, &dwinit, BufKind::F32)?;
            let mut gdw = put(&self.gpu, &dwinit, BufKind::F32)?;
            self.cpu.rmsnorm_bwd(vm(&mut cdi), vm(&mut cdw), v(&cd), v(&cx), v(&cw), v(&crs), n, c, write)?;
            self.gpu.rmsnorm_bwd(vm(&mut gdi), vm(&mut gdw), v(&gd), v(&gx), v(&gw), v(&grs), n, c, write)?;
            let (g, r) = (get(&self.gpu, &gdi)?, get(&self.cpu, &cdi)?);
            self.cmp(format!("rmsnorm_bwd n={n} c={c} {write:?}: dinp"), &g, &r, Rule::FlashAttn { factor: FA_BWD });
            let (g, r) = (get(&self.gpu, &gdw)?, get(&self.cpu, &cdw)?);
            self.cmp(format!("rmsnorm_bwd n={n} c={c} {write:?}: dweight (+=)"), &g, &r, Rule::MaxRel { tol: F32_SUM });
        }
        Ok(())
    }

    /// The residual add fused with the next RMSNorm (`add_rmsnorm_fwd`)
    /// against the unfused CPU path (the trait's default there: add, then
    /// rmsnorm_fwd). `res` and `out` per element as bf16 results; `rstd`
    /// against the CPU norm of bf16(res), the value the kernel normalises
    /// (the CPU's f32 sum is not bf16-exact, and its rounding moves rstd by
    /// far more than RTOL_F32). On the CPU layer also: the fused kernel equals
    /// the device's own add + rmsnorm bit for bit (the same arithmetic; the
    /// layer compiles both without FMA contraction, so this holds there; on a
    /// GPU nvcc may contract the two kernels differently).
    pub(super) fn add_rmsnorm(&mut self, n: usize, c: usize) -> anyhow::Result<()> {
        let eps = 1e-5;
        let tag = format!("add_rmsnorm_fwd n={n} c={c}");
        let (a, bb) = (self.randn(n * c, 1.0), self.randn(n * c, 1.0));
        let w: Vec<f32> = (0..c).map(|_| bfr(1.0 + 0.1 * self.rng.normal())).collect();
        let (ca, cb, cw) = (put(&self.cpu, &a, BufKind::Act)?, put(&self.cpu, &bb, BufKind::Act)?, put(&self.cpu, &w, BufKind::Param)?);
        let (ga, gb, gw) = (put(&self.gpu, &a, BufKind::Act)?, put(&self.gpu, &bb, BufKind::Act)?, put(&self.gpu, &w, BufKind::Param)?);
        let (mut cres, mut co, mut cr) =
            (put(&self.cpu, &vec![0.0; n * c], BufKind::Act)?, put(&self.cpu, &vec![0.0; n * c], BufKind::Act)?, put(&self.cpu, &vec![0.0; n], BufKind::F32)?);
        let (mut gres, mut go, mut gr) =
            (nan_buf(&self.gpu, n * c, BufKind::Act)?, nan_buf(&self.gpu, n * c, BufKind::Act)?, nan_buf(&self.gpu, n, BufKind::F32)?);
        self.cpu.add_rmsnorm_fwd(vm(&mut cres), vm(&mut co), vm(&mut cr), v(&ca), v(&cb), v(&cw), n, c, eps)?;
        self.gpu.add_rmsnorm_fwd(vm(&mut gres), vm(&mut go), vm(&mut gr), v(&ga), v(&gb), v(&gw), n, c, eps)?;
        let (g, r) = (get(&self.gpu, &gres)?, get(&self.cpu, &cres)?);
        self.cmp(format!("{tag}: res"), &g, &r, BF);
        let (g, r) = (get(&self.gpu, &go)?, get(&self.cpu, &co)?);
        self.cmp(format!("{tag}: out"), &g, &r, BF);
        // rstd: the CPU norm of the residual rounded where the kernel stores it
        let res_bf: Vec<f32> = get(&self.cpu, &cres)?.iter().map(|&x| bfr(x)).collect();
        let cx = put(&self.cpu, &res_bf, BufKind::Act)?;
        let (mut co2, mut cr2) = (put(&self.cpu, &vec![0.0; n * c], BufKind::Act)?, put(&self.cpu, &vec![0.0; n], BufKind::F32)?);
        self.cpu.rmsnorm_fwd(vm(&mut co2), vm(&mut cr2), v(&cx), v(&cw), n, c, eps)?;
        let (g, r) = (get(&self.gpu, &gr)?, get(&self.cpu, &cr2)?);
        self.cmp(format!("{tag}: rstd"), &g, &r, F32);
        if self.shapes == Shapes::Sim {
            let (mut ures, mut uo, mut ur) =
                (nan_buf(&self.gpu, n * c, BufKind::Act)?, nan_buf(&self.gpu, n * c, BufKind::Act)?, nan_buf(&self.gpu, n, BufKind::F32)?);
            self.gpu.add(vm(&mut ures), v(&ga), v(&gb))?;
            self.gpu.rmsnorm_fwd(vm(&mut uo), vm(&mut ur), v(&ures), v(&gw), n, c, eps)?;
            let exact = Rule::Elem { rtol: 0.0, atol: 0.0 };
            for (name, f, u) in [("res", &gres, &ures), ("out", &go, &uo), ("rstd", &gr, &ur)] {
                let (x, y) = (get(&self.gpu, f)?, get(&self.gpu, u)?);
                self.cmp(format!("{tag}: {name} = the device's add + rmsnorm_fwd (bit-exact)"), &x, &y, exact);
            }
        }
        Ok(())
    }

    pub(super) fn rope(&mut self, b: usize, t: usize, heads: usize, hd: usize, pos0: usize) -> anyhow::Result<()> {
        let table = rope_table(pos0 + t, hd, 10000.0);
        let s = RopeShape { b, t, heads, hd, pos0 };
        let x = self.randn(b * t * heads * hd, 1.0);
        let (ct, gt) = (put(&self.cpu, &table, BufKind::F32)?, put(&self.gpu, &table, BufKind::F32)?);
        let (mut cx, mut gx) = (put(&self.cpu, &x, BufKind::Act)?, put(&self.gpu, &x, BufKind::Act)?);
        self.cpu.rope_fwd(vm(&mut cx), v(&ct), s)?;
        self.gpu.rope_fwd(vm(&mut gx), v(&gt), s)?;
        let (g, r) = (get(&self.gpu, &gx)?, get(&self.cpu, &cx)?);
        self.cmp(format!("rope_fwd b={b} t={t} heads={heads} hd={hd} pos0={pos0}"), &g, &r, BF);
        let (mut cx, mut gx) = (put(&self.cpu, &x, BufKind::Act)?, put(&self.gpu, &x, BufKind::Act)?);
        self.cpu.rope_bwd(vm(&mut cx), v(&ct), s)?;
        self.gpu.rope_bwd(vm(&mut gx), v(&gt), s)?;
        let (g, r) = (get(&self.gpu, &gx)?, get(&self.cpu, &cx)?);
        self.cmp(format!("rope_bwd b={b} t={t} heads={heads} hd={hd} pos0={pos0}"), &g, &r, BF);
        Ok(())
    }

    pub(super) fn swiglu(&mut self, n: usize) -> anyhow::Result<()> {
        let (gate, up, dy) = (self.randn(n, 2.0), self.randn(n, 1.0), self.randn(n, 1.0));
        let c: Vec<CpuBuf> = vec![put(&self.cpu, &gate, BufKind::Act)?, put(&self.cpu, &up, BufKind::Act)?, put(&self.cpu, &dy, BufKind::Act)?];
        let g: Vec<G::Buf> = vec![put(&self.gpu, &gate, BufKind::Act)?, put(&self.gpu, &up, BufKind::Act)?, put(&self.gpu, &dy, BufKind::Act)?];
        let mut co = put(&self.cpu, &vec![0.0; n], BufKind::Act)?;
        let mut go = nan_buf(&self.gpu, n, BufKind::Act)?;
        self.cpu.swiglu_fwd(vm(&mut co), v(&c[0]), v(&c[1]))?;
        self.gpu.swiglu_fwd(vm(&mut go), v(&g[0]), v(&g[1]))?;
        let (a, b) = (get(&self.gpu, &go)?, get(&self.cpu, &co)?);
        self.cmp(format!("swiglu_fwd n={n}"), &a, &b, BF);
        let (mut cdg, mut cdu) = (put(&self.cpu, &vec![0.0; n], BufKind::Act)?, put(&self.cpu, &vec![0.0; n], BufKind::Act)?);
        let (mut gdg, mut gdu) = (nan_buf(&self.gpu, n, BufKind::Act)?, nan_buf(&self.gpu, n, BufKind::Act)?);
        self.cpu.swiglu_bwd(vm(&mut cdg), vm(&mut cdu), v(&c[2]), v(&c[0]), v(&c[1]))?;
        self.gpu.swiglu_bwd(vm(&mut gdg), vm(&mut gdu), v(&g[2]), v(&g[0]), v(&g[1]))?;
        let (a, b) = (get(&self.gpu, &gdg)?, get(&self.cpu, &cdg)?);
        self.cmp(format!("swiglu_bwd n={n}: dgate"), &a, &b, BF);
        let (a, b) = (get(&self.gpu, &gdu)?, get(&self.cpu, &cdu)?);
        self.cmp(format!("swiglu_bwd n={n}: dup"), &a, &b, BF);
        Ok(())
    }

    pub(super) fn cross_entropy(&mut self, n: usize, vocab: usize) -> anyhow::Result<()> {
        let logits = self.randn(n * vocab, 3.0);
        let targets: Vec<i32> = (0..n).map(|i| if i % 7 == 3 { -100 } else { self.rng.below(vocab as u64) as i32 }).collect();
        let coef: Vec<f32> = (0..n).map(|_| self.rng.next_f32()).collect();
        for (mode, grad) in [("loss only", CeGrad::None), ("uniform", CeGrad::Uniform(1.0 / n as f32)), ("per-row", CeGrad::PerRow(&coef))] {
            let (mut cl, mut gl) = (put(&self.cpu, &logits, BufKind::Act)?, put(&self.gpu, &logits, BufKind::Act)?);
            let mut cls = put(&self.cpu, &vec![0.0; n], BufKind::F32)?;
            let mut gls = nan_buf(&self.gpu, n, BufKind::F32)?;
            self.cpu.cross_entropy(vm(&mut cl), vm(&mut cls), &targets, vocab, grad)?;
            self.gpu.cross_entropy(vm(&mut gl), vm(&mut gls), &targets, vocab, grad)?;
            let (g, r) = (get(&self.gpu, &gls)?, get(&self.cpu, &cls)?);
            self.cmp(format!("cross_entropy n={n} v={vocab} {mode}: losses"), &g, &r, F32);
            let (g, r) = (get(&self.gpu, &gl)?, get(&self.cpu, &cl)?);
            // dlogits are c·p − c·onehot: tiny probabilities are relative-exact,
            // the atol covers p ≈ 1e-9 values computed from an lse that differs
            // in the last f32 bits
            self.cmp(format!("cross_entropy n={n} v={vocab} {mode}: logits/dlogits"), &g, &r, Rule::Elem { rtol: RTOL_BF16, atol: 1e-8 });
        }
        Ok(())
    }

    pub(super) fn adamw(&mut self, n: usize) -> anyhow::Result<()> {
        let p: Vec<f32> = (0..n).map(|_| self.rng.normal()).collect();
        let gr: Vec<f32> = (0..n).map(|_| self.rng.normal() * 0.01).collect();
        let m: Vec<f32> = (0..n).map(|_| self.rng.normal() * 0.001).collect();
        let vv: Vec<f32> = (0..n).map(|_| (self.rng.normal() * 0.001).powi(2)).collect();
        for (wd, step, gs) in [(0.1f32, 1u64, 1.0f32), (0.0, 1000, 0.5)] {
            let h = AdamWStep { lr: 3e-4, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: wd, step, grad_scale: gs };
            let (mut cp, mut gp) = (put(&self.cpu, &p, BufKind::Param)?, put(&self.gpu, &p, BufKind::Param)?);
            let (cg, gg) = (put(&self.cpu, &gr, BufKind::F32)?, put(&self.gpu, &gr, BufKind::F32)?);
            let (mut cm, mut gm) = (put(&self.cpu, &m, BufKind::F32)?, put(&self.gpu, &m, BufKind::F32)?);
            let (mut cv, mut gv) = (put(&self.cpu, &vv, BufKind::F32)?, put(&self.gpu, &vv, BufKind::F32)?);
            self.cpu.adamw(vm(&mut cp), v(&cg), vm(&mut cm), vm(&mut cv), h)?;
            self.gpu.adamw(vm(&mut gp), v(&gg), vm(&mut gm), vm(&mut gv), h)?;
            let tag = format!("adamw n={n} wd={wd} step={step} clip={gs}");
            let rule = Rule::Elem { rtol: RTOL_ADAMW, atol: 0.0 };
            let r = get(&self.cpu, &cp)?;
            self.cmp(format!("{tag}: master"), &get(&self.gpu, &gp)?, &r, rule);
            self.cmp(format!("{tag}: m"), &get(&self.gpu, &gm)?, &get(&self.cpu, &cm)?, rule);
            self.cmp(format!("{tag}: v"), &get(&self.gpu, &gv)?, &get(&self.cpu, &cv)?, rule);
            let work = self.gpu.download_work(v(&gp))?;
            let rounded: Vec<f32> = get(&self.gpu, &gp)?.iter().map(|&x| bfr(x)).collect();
            self.cmp(format!("{tag}: bf16 copy = bf16(master)"), &work, &rounded, Rule::Elem { rtol: 0.0, atol: 0.0 });
        }
        Ok(())
    }

    fn matmul(&mut self, m: usize, n: usize, k: usize) -> anyhow::Result<()> {
        for (ta, tb) in [(Trans::N, Trans::T), (Trans::N, Trans::N), (Trans::T, Trans::N), (Trans::T, Trans::T)] {
            let a = self.randn(m * k, 1.0);
            let b = self.randn(k * n, 1.0);
            let (ca, ga) = (put(&self.cpu, &a, BufKind::Act)?, put(&self.gpu, &a, BufKind::Act)?);
            let (cb, gb) = (put(&self.cpu, &b, BufKind::Param)?, put(&self.gpu, &b, BufKind::Param)?);
            // activation output: bf16, overwritten
            let g = Gemm { m, n, k, ta, tb, write: GradWrite::Overwrite };
            let mut cc = put(&self.cpu, &vec![0.0; m * n], BufKind::Act)?;
            let mut gc = nan_buf(&self.gpu, m * n, BufKind::Act)?;
            self.cpu.matmul(vm(&mut cc), v(&ca), v(&cb), g)?;
            self.gpu.matmul(vm(&mut gc), v(&ga), v(&gb), g)?;
            let (x, y) = (get(&self.gpu, &gc)?, get(&self.cpu, &cc)?);
            self.cmp(format!("matmul {m}x{n}x{k} {ta:?}{tb:?} -> bf16 (=)"), &x, &y, Rule::FlashAttn { factor: FA_FWD });
            // parameter-gradient output: f32, accumulated (beta = 1)
            let init = self.randn(m * n, 1.0);
            let g = Gemm { m, n, k, ta, tb, write: GradWrite::Accumulate };
            let mut cc = put(&self.cpu, &init, BufKind::F32)?;
            let mut gc = put(&self.gpu, &init, BufKind::F32)?;
            self.cpu.matmul(vm(&mut cc), v(&ca), v(&cb), g)?;
            self.gpu.matmul(vm(&mut gc), v(&ga), v(&gb), g)?;
            let (x, y) = (get(&self.gpu, &gc)?, get(&self.cpu, &cc)?);
            self.cmp(format!("matmul {m}x{n}x{k} {ta:?}{tb:?} -> f32 (+=)"), &x, &y, Rule::MaxRel { tol: F32_SUM });
        }
        Ok(())
    }

    pub(super) fn attention(&mut self, s: AttnShape) -> anyhow::Result<()> {
        let AttnShape { b, tq: t, n_head: nh, n_kv_head: nkv, hd, .. } = s;
        let tag = format!("attention b={b} t={t} hd={hd} h={nh} kv={nkv}");
        let q = self.randn(b * t * nh * hd, 1.0);
        let k = self.randn(b * t * nkv * hd, 1.0);
        let vv = self.randn(b * t * nkv * hd, 1.0);
        let dout = self.randn(b * t * nh * hd, 1.0);
        let cq = put(&self.cpu, &q, BufKind::Act)?;
        let ck = put(&self.cpu, &k, BufKind::Act)?;
        let cv = put(&self.cpu, &vv, BufKind::Act)?;
        let gq = put(&self.gpu, &q, BufKind::Act)?;
        let gk = put(&self.gpu, &k, BufKind::Act)?;
        let gv = put(&self.gpu, &vv, BufKind::Act)?;
        let mut co = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
        let mut cl = put(&self.cpu, &vec![0.0; b * nh * t], BufKind::F32)?;
        self.cpu.attention_fwd(vm(&mut co), vm(&mut cl), v(&cq), v(&ck), v(&cv), s)?;
        let (out_ref, lse_ref) = (get(&self.cpu, &co)?, get(&self.cpu, &cl)?);
        // the tensor-core kernel rounds P to bf16: its naive reference does too
        let naive_p = attention_naive_bf16p(&q, &k, &vv, s);
        for imp in ATTN_IMPLS {
            self.gpu.set_attention_impl(imp);
            let mut go = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
            let mut gl = nan_buf(&self.gpu, b * nh * t, BufKind::F32)?;
            self.gpu.attention_fwd(vm(&mut go), vm(&mut gl), v(&gq), v(&gk), v(&gv), s)?;
            let g = get(&self.gpu, &go)?;
            let name = format!("{tag} fwd {imp:?}: out");
            match imp {
                AttnImpl::Mma | AttnImpl::V3 => self.cmp_naive(name, &g, &out_ref, &naive_p, FA_FWD),
                _ => self.cmp(name, &g, &out_ref, Rule::FlashAttn { factor: FA_FWD }),
            }
            self.cmp(format!("{tag} fwd {imp:?}: lse"), &get(&self.gpu, &gl)?, &lse_ref, F32);
        }
        self.gpu.set_attention_impl(self.attn0);
        // backward from the same (bf16-rounded) forward output on both sides
        let out_bf: Vec<f32> = out_ref.iter().map(|&x| bfr(x)).collect();
        let (cout, gout) = (put(&self.cpu, &out_bf, BufKind::Act)?, put(&self.gpu, &out_bf, BufKind::Act)?);
        let (clse, glse) = (put(&self.cpu, &lse_ref, BufKind::F32)?, put(&self.gpu, &lse_ref, BufKind::F32)?);
        let (cd, gd) = (put(&self.cpu, &dout, BufKind::Act)?, put(&self.gpu, &dout, BufKind::Act)?);
        let mut cdq = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
        let mut cdk = put(&self.cpu, &vec![0.0; k.len()], BufKind::Act)?;
        let mut cdv = put(&self.cpu, &vec![0.0; k.len()], BufKind::Act)?;
        self.cpu.attention_bwd(vm(&mut cdq), vm(&mut cdk), vm(&mut cdv), v(&cd), v(&cq), v(&ck), v(&cv), v(&cout), v(&clse), s)?;
        let refs = [get(&self.cpu, &cdq)?, get(&self.cpu, &cdk)?, get(&self.cpu, &cdv)?];
        // the tensor-core backward rounds P and dS to bf16: its naive reference does too
        let naive: AttnBwdNaive = attention_bwd_naive_bf16(&q, &k, &vv, &dout, &out_bf, &lse_ref, s);
        for imp in ATTN_IMPLS {
            self.gpu.set_attention_impl(imp);
            let mut gdq = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
            let mut gdk = nan_buf(&self.gpu, k.len(), BufKind::Act)?;
            let mut gdv = nan_buf(&self.gpu, k.len(), BufKind::Act)?;
            self.gpu.attention_bwd(vm(&mut gdq), vm(&mut gdk), vm(&mut gdv), v(&gd), v(&gq), v(&gk), v(&gv), v(&gout), v(&glse), s)?;
            for (ix, (name, g)) in [("dq", &gdq), ("dk", &gdk), ("dv", &gdv)].into_iter().enumerate() {
                let x = get(&self.gpu, g)?;
                let label = format!("{tag} bwd {imp:?}: {name}");
                // flash-attn's rule plus the f32 noise of dS (0 where nothing cancels)
                let noise = naive.noise[ix];
                match imp {
                    AttnImpl::Mma | AttnImpl::V3 => self.cmp_naive_plus(label, &x, &refs[ix], &naive.grads[ix], FA_BWD, noise),
                    _ => {
                        let rounded: Vec<f32> = refs[ix].iter().map(|&e| bfr(e)).collect();
                        self.cmp_naive_plus(label, &x, &refs[ix], &rounded, FA_BWD, noise)
                    }
                }
            }
        }
        self.gpu.set_attention_impl(self.attn0);
        Ok(())
    }

    /// The fused cross-entropy that also writes each row's entropy (PPO's
    /// per-token statistics): losses, entropies and dlogits against the CPU.
    pub(super) fn cross_entropy_entropy(&mut self, n: usize, vocab: usize) -> anyhow::Result<()> {
        let logits = self.randn(n * vocab, 3.0);
        let targets: Vec<i32> = (0..n).map(|i| if i % 7 == 3 { -100 } else { self.rng.below(vocab as u64) as i32 }).collect();
        let coef: Vec<f32> = (0..n).map(|_| self.rng.next_f32()).collect();
        for (mode, grad) in [("loss only", CeGrad::None), ("per-row", CeGrad::PerRow(&coef))] {
            let (mut cl, mut gl) = (put(&self.cpu, &logits, BufKind::Act)?, put(&self.gpu, &logits, BufKind::Act)?);
            let (mut cls, mut cen) = (put(&self.cpu, &vec![0.0; n], BufKind::F32)?, put(&self.cpu, &vec![0.0; n], BufKind::F32)?);
            let (mut gls, mut gen) = (nan_buf(&self.gpu, n, BufKind::F32)?, nan_buf(&self.gpu, n, BufKind::F32)?);
            self.cpu.cross_entropy_entropy(vm(&mut cl), vm(&mut cls), vm(&mut cen), &targets, vocab, grad)?;
            self.gpu.cross_entropy_entropy(vm(&mut gl), vm(&mut gls), vm(&mut gen), &targets, vocab, grad)?;
            let tag = format!("cross_entropy_entropy n={n} v={vocab} {mode}");
            let (g, r) = (get(&self.gpu, &gls)?, get(&self.cpu, &cls)?);
            self.cmp(format!("{tag}: losses"), &g, &r, F32);
            let (g, r) = (get(&self.gpu, &gen)?, get(&self.cpu, &cen)?);
            self.cmp(format!("{tag}: entropy"), &g, &r, F32);
            let (g, r) = (get(&self.gpu, &gl)?, get(&self.cpu, &cl)?);
            self.cmp(format!("{tag}: logits/dlogits"), &g, &r, Rule::Elem { rtol: RTOL_BF16, atol: 1e-8 });
        }
        Ok(())
    }

    /// RoPE and KV-cache writes of a ragged batch: per-sequence positions,
    /// padding rows untouched (RoPE) or not written (the cache).
    pub(super) fn ragged_rope_kv(&mut self) -> anyhow::Result<()> {
        let (b, t, heads, hd) = (3, 20, 4, 64);
        let (pos0, len) = ([0u32, 5, 11], [20u32, 13, 1]);
        let r = Ragged { pos0: &pos0, len: &len };
        let table = rope_table(40, hd, 10000.0);
        let s = RopeShape { b, t, heads, hd, pos0: 0 };
        let x = self.randn(b * t * heads * hd, 1.0);
        let (ct, gt) = (put(&self.cpu, &table, BufKind::F32)?, put(&self.gpu, &table, BufKind::F32)?);
        for inverse in [false, true] {
            let (mut cx, mut gx) = (put(&self.cpu, &x, BufKind::Act)?, put(&self.gpu, &x, BufKind::Act)?);
            if inverse {
                self.cpu.rope_bwd_ragged(vm(&mut cx), v(&ct), s, r)?;
                self.gpu.rope_bwd_ragged(vm(&mut gx), v(&gt), s, r)?;
            } else {
                self.cpu.rope_fwd_ragged(vm(&mut cx), v(&ct), s, r)?;
                self.gpu.rope_fwd_ragged(vm(&mut gx), v(&gt), s, r)?;
            }
            let (g, c) = (get(&self.gpu, &gx)?, get(&self.cpu, &cx)?);
            self.cmp(format!("rope_{} ragged b={b} t={t} heads={heads} hd={hd} pos0={pos0:?} len={len:?}", if inverse { "bwd" } else { "fwd" }), &g, &c, BF);
        }
        let (cap, w) = (32, 48);
        for kind in [BufKind::Act, BufKind::F32] {
            let k = if kind == BufKind::Act { "bf16" } else { "f32" };
            let cache = self.randn(b * cap * w, 1.0);
            let new = self.randn(b * t * w, 1.0);
            let (mut cc, mut gc) = (put(&self.cpu, &cache, kind)?, put(&self.gpu, &cache, kind)?);
            let (cn, gn) = (put(&self.cpu, &new, kind)?, put(&self.gpu, &new, kind)?);
            self.cpu.kv_write_ragged(vm(&mut cc), v(&cn), b, t, cap, w, r)?;
            self.gpu.kv_write_ragged(vm(&mut gc), v(&gn), b, t, cap, w, r)?;
            let (g, c) = (get(&self.gpu, &gc)?, get(&self.cpu, &cc)?);
            // a copy: bit-exact
            self.cmp(format!("kv_write_ragged_{k} pos0={pos0:?} len={len:?}"), &g, &c, Rule::Elem { rtol: 0.0, atol: 0.0 });
        }
        Ok(())
    }

    /// Attention of ragged batches on the v1 and v3 kernels (v2 has no
    /// ragged form): a training batch (forward and backward; padding rows of
    /// `dout` hold values that must be ignored), and decode / prefill steps
    /// against a cache with one length per sequence whose rows past it hold
    /// garbage (1e4 keys, NaN values) that must not be read. v3 rounds P and
    /// dS to bf16 as mma operands: its naive references round there too.
    pub(super) fn attention_ragged(&mut self, hd: usize) -> anyhow::Result<()> {
        let (nh, nkv) = (8, 2);
        // training shape
        let (b, t) = (3, 37);
        let s = AttnShape::causal(b, t, nh, nkv, hd);
        let (zeros, lens) = ([0u32; 3], [37u32, 20, 6]);
        let r = Ragged { pos0: &zeros, len: &lens };
        let tag = format!("attention ragged b={b} t={t} lens={lens:?} hd={hd} h={nh} kv={nkv}");
        let q = self.randn(b * t * nh * hd, 1.0);
        let k = self.randn(b * t * nkv * hd, 1.0);
        let vv = self.randn(b * t * nkv * hd, 1.0);
        let dout = self.randn(b * t * nh * hd, 1.0);
        let (cq, ck, cv) = (put(&self.cpu, &q, BufKind::Act)?, put(&self.cpu, &k, BufKind::Act)?, put(&self.cpu, &vv, BufKind::Act)?);
        let (gq, gk, gv) = (put(&self.gpu, &q, BufKind::Act)?, put(&self.gpu, &k, BufKind::Act)?, put(&self.gpu, &vv, BufKind::Act)?);
        let mut co = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
        let mut cl = put(&self.cpu, &vec![0.0; b * nh * t], BufKind::F32)?;
        self.cpu.attention_fwd_ragged(vm(&mut co), vm(&mut cl), v(&cq), v(&ck), v(&cv), s, r)?;
        let (out_ref, lse_ref) = (get(&self.cpu, &co)?, get(&self.cpu, &cl)?);
        let naive_p = attention_naive_bf16p_ragged(&q, &k, &vv, s, Some((&zeros, &lens)));
        for imp in RAGGED_IMPLS {
            self.gpu.set_attention_impl(imp);
            let mut go = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
            let mut gl = nan_buf(&self.gpu, b * nh * t, BufKind::F32)?;
            self.gpu.attention_fwd_ragged(vm(&mut go), vm(&mut gl), v(&gq), v(&gk), v(&gv), s, r)?;
            let g = get(&self.gpu, &go)?;
            match imp {
                AttnImpl::V3 => self.cmp_naive(format!("{tag} fwd {imp:?}: out"), &g, &out_ref, &naive_p, FA_FWD),
                _ => self.cmp(format!("{tag} fwd {imp:?}: out"), &g, &out_ref, Rule::FlashAttn { factor: FA_FWD }),
            }
            self.cmp(format!("{tag} fwd {imp:?}: lse"), &get(&self.gpu, &gl)?, &lse_ref, F32);
        }
        self.gpu.set_attention_impl(self.attn0);
        let out_bf: Vec<f32> = out_ref.iter().map(|&x| bfr(x)).collect();
        let (cout, gout) = (put(&self.cpu, &out_bf, BufKind::Act)?, put(&self.gpu, &out_bf, BufKind::Act)?);
        let (clse, glse) = (put(&self.cpu, &lse_ref, BufKind::F32)?, put(&self.gpu, &lse_ref, BufKind::F32)?);
        let (cd, gd) = (put(&self.cpu, &dout, BufKind::Act)?, put(&self.gpu, &dout, BufKind::Act)?);
        let mut cdq = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
        let mut cdk = put(&self.cpu, &vec![0.0; k.len()], BufKind::Act)?;
        let mut cdv = put(&self.cpu, &vec![0.0; k.len()], BufKind::Act)?;
        self.cpu.attention_bwd_ragged(vm(&mut cdq), vm(&mut cdk), vm(&mut cdv), v(&cd), v(&cq), v(&ck), v(&cv), v(&cout), v(&clse), s, r)?;
        let refs = [get(&self.cpu, &cdq)?, get(&self.cpu, &cdk)?, get(&self.cpu, &cdv)?];
        let naive = attention_bwd_naive_bf16_ragged(&q, &k, &vv, &dout, &out_bf, &lse_ref, s, Some(&lens));
        for imp in RAGGED_IMPLS {
            self.gpu.set_attention_impl(imp);
            let mut gdq = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
            let mut gdk = nan_buf(&self.gpu, k.len(), BufKind::Act)?;
            let mut gdv = nan_buf(&self.gpu, k.len(), BufKind::Act)?;
            self.gpu.attention_bwd_ragged(vm(&mut gdq), vm(&mut gdk), vm(&mut gdv), v(&gd), v(&gq), v(&gk), v(&gv), v(&gout), v(&glse), s, r)?;
            for (ix, (name, g)) in [("dq", &gdq), ("dk", &gdk), ("dv", &gdv)].into_iter().enumerate() {
                let x = get(&self.gpu, g)?;
                let label = format!("{tag} bwd {imp:?}: {name}");
                match imp {
                    AttnImpl::V3 => self.cmp_naive_plus(label, &x, &refs[ix], &naive.grads[ix], FA_BWD, naive.noise[ix]),
                    _ => {
                        // flash-attn's rule against the reference rounded once to bf16 (the v1
                        // kernels compute in f32); the many rows of each tensor set the scale
                        let rounded: Vec<f32> = refs[ix].iter().map(|&e| bfr(e)).collect();
                        self.cmp_naive(label, &x, &refs[ix], &rounded, FA_BWD)
                    }
                }
            }
        }
        self.gpu.set_attention_impl(self.attn0);
        // decode and prefill against a cache with one length per sequence
        // (the last: several split-K chunks, a sequence whose last row opens chunk 1)
        for (tq, pos0, len, cap) in [
            (1usize, [96u32, 40, 3], [1u32, 1, 0], 128usize),
            (9, [0, 30, 50], [9, 4, 2], 64),
            (40, [0, 30, 70], [40, 17, 3], 128),
            (2, [450, 127, 0], [2, 2, 1], 512),
        ] {
            let s = AttnShape { b, tq, tkv: cap, cap, n_head: nh, n_kv_head: nkv, hd };
            let r = Ragged { pos0: &pos0, len: &len };
            let tag = format!("attention ragged cache tq={tq} pos0={pos0:?} len={len:?} cap={cap} hd={hd}");
            let q = self.randn(b * tq * nh * hd, 1.0);
            let mut k = self.randn(b * cap * nkv * hd, 1.0);
            let mut vv = self.randn(b * cap * nkv * hd, 1.0);
            for bi in 0..b {
                for row in (pos0[bi] + len[bi]) as usize..cap {
                    let o = (bi * cap + row) * nkv * hd;
                    k[o..o + nkv * hd].fill(1e4);
                    vv[o..o + nkv * hd].fill(f32::NAN);
                }
            }
            let (cq, ck, cv) = (put(&self.cpu, &q, BufKind::Act)?, put(&self.cpu, &k, BufKind::Act)?, put(&self.cpu, &vv, BufKind::Act)?);
            let (gq, gk, gv) = (put(&self.gpu, &q, BufKind::Act)?, put(&self.gpu, &k, BufKind::Act)?, put(&self.gpu, &vv, BufKind::Act)?);
            let mut co = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
            let mut cl = put(&self.cpu, &vec![0.0; b * nh * tq], BufKind::F32)?;
            self.cpu.attention_fwd_ragged(vm(&mut co), vm(&mut cl), v(&cq), v(&ck), v(&cv), s, r)?;
            let (out_ref, lse_ref) = (get(&self.cpu, &co)?, get(&self.cpu, &cl)?);
            let naive_p = attention_naive_bf16p_ragged(&q, &k, &vv, s, Some((&pos0, &len)));
            for imp in RAGGED_DECODE_IMPLS {
                self.gpu.set_attention_impl(imp);
                let mut go = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
                let mut gl = nan_buf(&self.gpu, b * nh * tq, BufKind::F32)?;
                self.gpu.attention_fwd_ragged(vm(&mut go), vm(&mut gl), v(&gq), v(&gk), v(&gv), s, r)?;
                let g = get(&self.gpu, &go)?;
                match imp {
                    AttnImpl::V3 => self.cmp_naive(format!("{tag} {imp:?}: out"), &g, &out_ref, &naive_p, FA_FWD),
                    _ => self.cmp(format!("{tag} {imp:?}: out"), &g, &out_ref, Rule::FlashAttn { factor: FA_FWD }),
                }
                self.cmp(format!("{tag} {imp:?}: lse"), &get(&self.gpu, &gl)?, &lse_ref, F32);
            }
            self.gpu.set_attention_impl(self.attn0);
        }
        Ok(())
    }

    /// A forward against a cache (`tq` new rows at positions `tkv − tq ..`)
    /// on each kernel version of `impls`; cache rows past `tkv` hold garbage
    /// (1e4 keys, NaN values) that must not be read.
    pub(super) fn attention_decode(&mut self, s: AttnShape, impls: &[AttnImpl]) -> anyhow::Result<()> {
        let AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd } = s;
        let tag = format!("attention decode b={b} tq={tq} tkv={tkv} cap={cap} hd={hd} h={nh} kv={nkv}");
        let q = self.randn(b * tq * nh * hd, 1.0);
        // rows past tkv hold garbage that must not be read
        let mut k = self.randn(b * cap * nkv * hd, 1.0);
        let mut vv = self.randn(b * cap * nkv * hd, 1.0);
        for bi in 0..b {
            for r in tkv..cap {
                let o = (bi * cap + r) * nkv * hd;
                k[o..o + nkv * hd].fill(1e4);
                vv[o..o + nkv * hd].fill(f32::NAN);
            }
        }
        let (cq, ck, cv) = (put(&self.cpu, &q, BufKind::Act)?, put(&self.cpu, &k, BufKind::Act)?, put(&self.cpu, &vv, BufKind::Act)?);
        let (gq, gk, gv) = (put(&self.gpu, &q, BufKind::Act)?, put(&self.gpu, &k, BufKind::Act)?, put(&self.gpu, &vv, BufKind::Act)?);
        let mut co = put(&self.cpu, &vec![0.0; q.len()], BufKind::Act)?;
        let mut cl = put(&self.cpu, &vec![0.0; b * nh * tq], BufKind::F32)?;
        self.cpu.attention_fwd(vm(&mut co), vm(&mut cl), v(&cq), v(&ck), v(&cv), s)?;
        let (out_ref, lse_ref) = (get(&self.cpu, &co)?, get(&self.cpu, &cl)?);
        let naive_p = attention_naive_bf16p(&q, &k, &vv, s);
        for &imp in impls {
            self.gpu.set_attention_impl(imp);
            let mut go = nan_buf(&self.gpu, q.len(), BufKind::Act)?;
            let mut gl = nan_buf(&self.gpu, b * nh * tq, BufKind::F32)?;
            self.gpu.attention_fwd(vm(&mut go), vm(&mut gl), v(&gq), v(&gk), v(&gv), s)?;
            let g = get(&self.gpu, &go)?;
            match imp {
                AttnImpl::Mma | AttnImpl::V3 => self.cmp_naive(format!("{tag} {imp:?}: out"), &g, &out_ref, &naive_p, FA_FWD),
                _ => self.cmp(format!("{tag} {imp:?}: out"), &g, &out_ref, Rule::FlashAttn { factor: FA_FWD }),
            }
            self.cmp(format!("{tag} {imp:?}: lse"), &get(&self.gpu, &gl)?, &lse_ref, F32);
        }
        self.gpu.set_attention_impl(self.attn0);
        Ok(())
    }
}

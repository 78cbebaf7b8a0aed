//! The CPU backend: f32 everywhere, rayon over rows and heads, the `gemm`
//! crate for matrix products. Every op is the `_cpu` kernel of the same
//! family in `llama2_kernels`, run on this backend's own thread pool.

use crate::backend::*;
use crate::error::{Result, RtError};
use llama2_kernels as k;
use rayon::prelude::*;

/// A host buffer.
pub struct CpuBuf {
    pub data: Vec<f32>,
    kind: BufKind,
}

impl Buffer for CpuBuf {
    type Be = CpuBackend;
    fn len(&self) -> usize {
        self.data.len()
    }
    fn kind(&self) -> BufKind {
        self.kind
    }
}

impl CpuBuf {
    /// Wraps host data as a buffer.
    pub fn from_vec(data: Vec<f32>, kind: BufKind) -> Self {
        CpuBuf { data, kind }
    }
}

/// The CPU backend with its thread pool.
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
}

impl CpuBackend {
    /// A backend on `threads` threads (0: one per available core).
    pub fn new(threads: usize) -> Result<Self> {
        let threads = if threads == 0 { std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) } else { threads };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("llama2-cpu-{i}"))
            .build()
            .map_err(|e| RtError::ThreadPool { threads, msg: e.to_string() })?;
        Ok(CpuBackend { pool, threads })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on this backend's pool (for callers' own parallel work).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> k::Result<R> + Send) -> Result<R> {
        Ok(self.pool.install(f)?)
    }
}

/// Elements per partial sum of `Σ x²` (`llama2_kernels::elementwise`'s
/// fixed chunk): [`Backend::sum_squares`] adds the partials of these blocks
/// in order.
pub const SUMSQ_BLOCK: usize = 8192;

/// Buffers at least this large ask for transparent huge pages.
const HUGE_PAGE_MIN_BYTES: usize = 8 << 20;

/// Asks Linux to back the 2 MiB-aligned interior of a large buffer with
/// transparent huge pages (`madvise(MADV_HUGEPAGE)`; honoured where THP is
/// `always` or `madvise`). Decoding streams every weight once per token:
/// with 4 KiB pages each 4 KiB costs a TLB miss, and in a VM a nested page
/// walk. Measured on this project's 2-core EPYC VM: a 256 MB matrix-vector
/// product streams at 22 GB/s with 4 KiB pages and 31-34 GB/s with huge
/// pages. Called before the buffer is first written (a fresh zeroed
/// allocation is not yet backed), so the pages are huge from the start.
/// Advisory only: contents and failures (ignored) do not change results.
fn advise_huge_pages(data: &mut [f32]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let bytes = std::mem::size_of_val(data);
        if bytes < HUGE_PAGE_MIN_BYTES {
            return;
        }
        let start = data.as_mut_ptr() as usize;
        let (a, b) = (start.next_multiple_of(HUGE), (start + bytes) / HUGE * HUGE);
        if b > a {
            // SAFETY: [a, b) lies inside `data`'s allocation, which we own
            // mutably; MADV_HUGEPAGE changes how it is backed, not its contents.
            unsafe {
                libc::madvise(a as *mut libc::c_void, b - a, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (data, HUGE_PAGE_MIN_BYTES);
}

/// The host slice of a shared window.
#[inline]
pub fn sl<'a>(v: View<'a, CpuBackend>) -> &'a [f32] {
    &v.buf.data[v.off..v.off + v.len]
}

/// The host slice of an exclusive window.
#[inline]
pub fn sl_mut<'a>(v: ViewMut<'a, CpuBackend>) -> &'a mut [f32] {
    &mut v.buf.data[v.off..v.off + v.len]
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn alloc(&self, n: usize, kind: BufKind) -> Result<CpuBuf> {
        let mut data = vec![0.0; n];
        advise_huge_pages(&mut data);
        Ok(CpuBuf { data, kind })
    }

    fn upload(&self, dst: ViewMut<Self>, src: &[f32]) -> Result<()> {
        let d = sl_mut(dst);
        k::check_len("upload", "src", src.len(), d.len())?;
        d.copy_from_slice(src);
        Ok(())
    }

    fn download(&self, src: View<Self>, dst: &mut [f32]) -> Result<()> {
        let s = sl(src);
        k::check_len("download", "dst", dst.len(), s.len())?;
        dst.copy_from_slice(s);
        Ok(())
    }

    fn zero(&self, dst: ViewMut<Self>) -> Result<()> {
        sl_mut(dst).fill(0.0);
        Ok(())
    }

    fn copy(&self, dst: ViewMut<Self>, src: View<Self>) -> Result<()> {
        let (d, s) = (sl_mut(dst), sl(src));
        k::check_len("copy", "src", s.len(), d.len())?;
        d.copy_from_slice(s);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn run_batched<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        // ops called from inside the pool run inline (rayon's `install`
        // from one of its own workers does not switch threads)
        self.pool.install(f)
    }

    fn embedding_fwd(&self, out: ViewMut<Self>, tokens: &[u32], table: View<Self>, v: usize, c: usize) -> Result<()> {
        self.run(|| k::embedding::embedding_fwd_cpu(sl_mut(out), tokens, sl(table), v, c))
    }

    fn embedding_bwd(&self, dtable: ViewMut<Self>, dout: View<Self>, tokens: &[u32], v: usize, c: usize) -> Result<()> {
        self.run(|| k::embedding::embedding_bwd_cpu(sl_mut(dtable), sl(dout), tokens, v, c))
    }

    fn matmul(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, g: Gemm) -> Result<()> {
        let threads = self.threads;
        self.run(|| k::matmul::matmul_cpu(sl_mut(c), sl(a), sl(b), g, threads))
    }

    fn matmul_rows(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, m: usize, n: usize, k: usize) -> Result<()> {
        self.run(|| k::matmul_rows::matmul_rows_cpu(sl_mut(c), sl(a), sl(b), m, n, k, GradWrite::Overwrite))
    }

    fn rmsnorm_fwd(&self, out: ViewMut<Self>, rstd: ViewMut<Self>, inp: View<Self>, weight: View<Self>, n: usize, c: usize, eps: f32) -> Result<()> {
        self.run(|| k::rmsnorm::rmsnorm_fwd_cpu(sl_mut(out), sl_mut(rstd), sl(inp), sl(weight), n, c, eps))
    }

    fn rmsnorm_bwd(
        &self,
        dinp: ViewMut<Self>,
        dweight: ViewMut<Self>,
        dout: View<Self>,
        inp: View<Self>,
        weight: View<Self>,
        rstd: View<Self>,
        n: usize,
        c: usize,
        dinp_write: GradWrite,
    ) -> Result<()> {
        self.run(|| k::rmsnorm::rmsnorm_bwd_cpu(sl_mut(dinp), sl_mut(dweight), sl(dout), sl(inp), sl(weight), sl(rstd), n, c, dinp_write))
    }

    fn rope_fwd(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        self.run(|| k::rope::rope_fwd_cpu(sl_mut(x), sl(table), s))
    }

    fn rope_bwd(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        self.run(|| k::rope::rope_bwd_cpu(sl_mut(dx), sl(table), s))
    }

    fn attention_fwd(&self, out: ViewMut<Self>, lse: ViewMut<Self>, q: View<Self>, kk: View<Self>, v: View<Self>, s: AttnShape) -> Result<()> {
        self.run(|| k::attention::attention_fwd_cpu(sl_mut(out), sl_mut(lse), sl(q), sl(kk), sl(v), s))
    }

    fn attention_bwd(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        kk: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
    ) -> Result<()> {
        self.run(|| k::attention::attention_bwd_cpu(sl_mut(dq), sl_mut(dk), sl_mut(dv), sl(dout), sl(q), sl(kk), sl(v), sl(out), sl(lse), s))
    }

    fn rope_fwd_ragged(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.run(|| k::rope::rope_fwd_ragged_cpu(sl_mut(x), sl(table), s, r))
    }

    fn rope_bwd_ragged(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.run(|| k::rope::rope_bwd_ragged_cpu(sl_mut(dx), sl(table), s, r))
    }

    fn attention_fwd_ragged(
        &self,
        out: ViewMut<Self>,
        lse: ViewMut<Self>,
        q: View<Self>,
        kk: View<Self>,
        v: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()> {
        self.run(|| k::attention::attention_fwd_ragged_cpu(sl_mut(out), sl_mut(lse), sl(q), sl(kk), sl(v), s, r))
    }

    fn attention_bwd_ragged(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        kk: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()> {
        self.run(|| k::attention::attention_bwd_ragged_cpu(sl_mut(dq), sl_mut(dk), sl_mut(dv), sl(dout), sl(q), sl(kk), sl(v), sl(out), sl(lse), s, r))
    }

    fn swiglu_fwd(&self, out: ViewMut<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        self.run(|| k::swiglu::swiglu_fwd_cpu(sl_mut(out), sl(gate), sl(up)))
    }

    fn swiglu_bwd(&self, dgate: ViewMut<Self>, dup: ViewMut<Self>, dout: View<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        self.run(|| k::swiglu::swiglu_bwd_cpu(sl_mut(dgate), sl_mut(dup), sl(dout), sl(gate), sl(up)))
    }

    fn cross_entropy(&self, logits: ViewMut<Self>, losses: ViewMut<Self>, targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
        self.run(|| k::cross_entropy::cross_entropy_cpu(sl_mut(logits), sl_mut(losses), targets, v, grad))
    }

    fn cross_entropy_entropy(
        &self,
        logits: ViewMut<Self>,
        losses: ViewMut<Self>,
        entropy: ViewMut<Self>,
        targets: &[i32],
        v: usize,
        grad: CeGrad,
    ) -> Result<()> {
        self.run(|| k::cross_entropy::cross_entropy_entropy_cpu(sl_mut(logits), sl_mut(losses), sl_mut(entropy), targets, v, grad))
    }

    fn add(&self, out: ViewMut<Self>, a: View<Self>, b: View<Self>) -> Result<()> {
        self.run(|| k::elementwise::add_cpu(sl_mut(out), sl(a), sl(b)))
    }

    fn add_assign(&self, x: ViewMut<Self>, y: View<Self>) -> Result<()> {
        self.run(|| k::elementwise::add_assign_cpu(sl_mut(x), sl(y)))
    }

    fn scale(&self, x: ViewMut<Self>, s: f32) -> Result<()> {
        self.run(|| k::elementwise::scale_cpu(sl_mut(x), s))
    }

    fn gather_rows(&self, out: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        self.run(|| k::elementwise::gather_rows_cpu(sl_mut(out), sl(src), rows, c))
    }

    fn scatter_add_rows(&self, dst: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        self.run(|| k::elementwise::scatter_add_rows_cpu(sl_mut(dst), sl(src), rows, c))
    }

    fn kv_write(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
        self.run(|| k::elementwise::kv_write_cpu(sl_mut(cache), sl(new), b, t, cap, w, pos0))
    }

    fn kv_write_ragged(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, r: Ragged) -> Result<()> {
        self.run(|| k::elementwise::kv_write_ragged_cpu(sl_mut(cache), sl(new), b, t, cap, w, r))
    }

    fn sum_squares(&self, x: View<Self>) -> Result<f64> {
        Ok(self.pool.install(|| k::elementwise::sum_squares_cpu(sl(x))))
    }

    fn sum_squares_partials(&self, x: View<Self>) -> Result<Vec<f64>> {
        // the same blocks and the same per-block sum as `sum_squares_cpu`
        // (a test checks that the in-order sum is bit-identical)
        Ok(self.pool.install(|| sl(x).par_chunks(SUMSQ_BLOCK).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>()).collect()))
    }

    fn adamw(&self, params: ViewMut<Self>, grads: View<Self>, m: ViewMut<Self>, v: ViewMut<Self>, h: AdamWStep) -> Result<()> {
        self.run(|| k::adamw::adamw_cpu(sl_mut(params), sl(grads), sl_mut(m), sl_mut(v), h))
    }
}

//! llama2-kernels: every kernel of the Llama 2 model, one module per family.
//!
//! Each family module holds the CPU implementation (`<family>_<pass>_cpu`),
//! which is both the CPU backend's kernel and the specification the CUDA
//! kernel of the same name is checked against. With the `cuda` feature the
//! family's CUDA C source (`cu/<family>.cu`) and its typed launcher sit next
//! to it.
//!
//! Public items:
//! - [`Trans`], [`GradWrite`]: flags that reach kernels (enums, not bools)
//! - [`Ragged`]: per-sequence lengths and positions of a right-padded batch
//! - [`KernelError`]: shape and argument errors of the CPU kernels
//! - [`dot`] (run-time dispatched AVX-512F / AVX2+FMA / portable), [`axpy`]:
//!   inner loops shared by the families
//! - families: [`matmul`], [`matmul_rows`] (row-invariant products for
//!   inference), [`embedding`], [`rmsnorm`], [`rope`], [`attention`],
//!   [`swiglu`], [`cross_entropy`], [`adamw`], [`elementwise`]
//! - `cuda` (feature `cuda`): the embedded CUDA images, the per-device module
//!   store and one typed launcher per CUDA kernel
//!
//! Conventions shared by all families: row-major storage, f32 on CPU, shapes
//! named `b, t, c, n_head, n_kv_head, hd, v` and written in a comment at every
//! buffer. CPU kernels run on the caller's rayon pool.

pub mod adamw;
pub mod attention;
pub mod cross_entropy;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod elementwise;
pub mod embedding;
pub mod math;
pub mod matmul;
pub mod matmul_rows;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

/// Whether an operand of a matrix product is read as stored or transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// use the matrix as stored (row-major)
    N,
    /// use the transpose of the stored matrix
    T,
}

/// How a kernel writes its output.
///
/// Parameter gradients use `Accumulate` (`+=`, needed for gradient
/// accumulation over micro-batches); activation gradients use `Overwrite`
/// (`=`); the residual stream's gradient uses `Accumulate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GradWrite {
    /// `out = result`
    Overwrite,
    /// `out += result`
    Accumulate,
}

/// Where the sequences of a ragged batch sit. A batch of `b` sequences is
/// stored as `(b, t, ..)` rows with right padding: sequence `s` has valid
/// rows `0..len[s]` (the rest is padding, never read as keys and written as
/// zeros where a kernel produces rows), and its row `i` sits at position
/// `pos0[s] + i` (0 for training; the cached length when decoding).
#[derive(Clone, Copy, Debug)]
pub struct Ragged<'a> {
    /// position of each sequence's row 0 `(b)`
    pub pos0: &'a [u32],
    /// valid rows of each sequence `(b)`, each `<= t`
    pub len: &'a [u32],
}

impl Ragged<'_> {
    /// Checks `b` sequences of at most `t` rows whose positions stay below
    /// `max_pos`.
    pub fn check(&self, op: &'static str, b: usize, t: usize, max_pos: usize) -> Result<()> {
        check_len(op, "ragged.pos0", self.pos0.len(), b)?;
        check_len(op, "ragged.len", self.len.len(), b)?;
        for s in 0..b {
            let (p, l) = (self.pos0[s] as usize, self.len[s] as usize);
            if l > t {
                return arg_err(op, format!("sequence {s} has {l} valid rows, more than the {t} of the batch"));
            }
            if p + l > max_pos {
                return arg_err(op, format!("sequence {s}: positions {p}..{} exceed {max_pos}", p + l));
            }
        }
        Ok(())
    }
}

/// Errors of the kernels: a buffer that does not match the shape the kernel
/// was told, or an argument outside what the kernel supports.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{op}: buffer `{buf}` has {got} elements, expected {expected}")]
    Shape { op: &'static str, buf: &'static str, expected: usize, got: usize },
    #[error("{op}: {msg}")]
    Arg { op: &'static str, msg: String },
    /// a device buffer that is not aligned as the kernel's vector accesses need
    #[error("{op}: buffer `{buf}` at {addr:#x} is not {need}-byte aligned; HINT: start the window at a multiple of {need} bytes")]
    Align { op: &'static str, buf: &'static str, addr: u64, need: u64 },
    /// a kernel launch the driver refused (or, with `sync-check`, that faulted)
    #[error("launch of `{kernel}` (grid {grid:?}, block {block}, smem {smem} B) failed: {msg}")]
    Launch { kernel: &'static str, grid: (u32, u32, u32), block: u32, smem: u32, msg: String },
    /// any other CUDA driver call
    #[error("CUDA {what} failed: {msg}")]
    Cuda { what: String, msg: String },
}

pub type Result<T> = std::result::Result<T, KernelError>;

/// Checks that `buf` holds exactly `expected` elements.
#[inline]
pub fn check_len(op: &'static str, buf: &'static str, got: usize, expected: usize) -> Result<()> {
    if got != expected {
        return Err(KernelError::Shape { op, buf, expected, got });
    }
    Ok(())
}

/// Checks that `buf` holds at least `expected` elements.
#[inline]
pub fn check_min_len(op: &'static str, buf: &'static str, got: usize, expected: usize) -> Result<()> {
    if got < expected {
        return Err(KernelError::Shape { op, buf, expected, got });
    }
    Ok(())
}

/// Returns an argument error.
pub fn arg_err<T>(op: &'static str, msg: impl Into<String>) -> Result<T> {
    Err(KernelError::Arg { op, msg: msg.into() })
}

/// A raw pointer that may be shared between rayon tasks which write disjoint
/// parts of the buffer it points into. Every use states why the parts are
/// disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: the pointer is only dereferenced at indices that the tasks
// partition among themselves (each use site documents the partition).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// The start of a slice (shared among tasks that write disjoint parts).
    #[inline]
    pub(crate) fn from_slice(s: &mut [T]) -> Self {
        SharedMut(s.as_mut_ptr())
    }

    /// The raw pointer (a method, so closures capture the whole wrapper).
    #[inline]
    pub(crate) fn ptr(&self) -> *mut T {
        self.0
    }

    /// # Safety
    /// `[off, off+len)` must lie inside the allocation and no other task may
    /// access it while the returned slice lives.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Dot product of the common prefix of `a` and `b`.
///
/// On x86-64 the widest instruction set the CPU has is chosen at run time
/// (AVX-512F, else AVX2+FMA): the default build targets baseline x86-64
/// (SSE2), where the portable loop gets 4-wide vectors and no FMA, and this
/// is the inner loop of decoding (`matmul::gemv_rows`). The SIMD versions
/// sum 4 vector accumulators with FMA; the portable one 16 scalar lanes.
/// The summation order differs between them (float32 rounding only).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F (checked just above)
            return unsafe { simd::dot_avx512(a, b) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has AVX2 and FMA (checked just above)
            return unsafe { simd::dot_avx2(a, b) };
        }
    }
    dot_portable(a, b)
}

/// The portable [`dot`]: 16 independent accumulators, so the compiler keeps
/// them in vector registers, then a pairwise sum of the lanes.
pub fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let chunks = n / 16;
    for i in 0..chunks {
        let (x, y) = (&a[i * 16..i * 16 + 16], &b[i * 16..i * 16 + 16]);
        for j in 0..16 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = 0f32;
    for i in chunks * 16..n {
        s += a[i] * b[i];
    }
    // pairwise sum of the lanes
    let mut w = 8;
    while w > 0 {
        for j in 0..w {
            acc[j] += acc[j + w];
        }
        w /= 2;
    }
    acc[0] + s
}

/// `Σ x` with 16 independent accumulators (vectorised; the order of the
/// additions is fixed by the length, so results do not depend on threads).
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    let mut s = 0f32;
    for v in rest {
        s += v;
    }
    let mut w = 8;
    while w > 0 {
        for j in 0..w {
            acc[j] += acc[j + w];
        }
        w /= 2;
    }
    acc[0] + s
}

/// `max x` (−inf for an empty slice), vectorised like [`sum`].
#[inline]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 16];
    let chunks = x.chunks_exact(16);
    let rest = chunks.remainder();
    for c in chunks {
        for j in 0..16 {
            acc[j] = if c[j] > acc[j] { c[j] } else { acc[j] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in rest {
        m = if v > m { v } else { m };
    }
    acc.iter().fold(m, |a, &b| if b > a { b } else { a })
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// AVX-512F: 4 x 16 lanes per step (4 independent FMA chains hide the
    /// FMA latency), then 16 at a time, then a masked tail.
    ///
    /// # Safety
    /// The CPU must support AVX-512F; `a.len() == b.len()`.
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 64 <= n, i + 16 <= n, or the mask covers
        // only the n - i < 16 remaining elements
        while i + 64 <= n {
            for (u, acc_u) in acc.iter_mut().enumerate() {
                let o = i + 16 * u;
                *acc_u = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *acc_u);
            }
            i += 64;
        }
        while i + 16 <= n {
            acc[0] = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(i)), _mm512_loadu_ps(pb.add(i)), acc[0]);
            i += 16;
        }
        if i < n {
            let m: __mmask16 = (1u32 << (n - i)) as u16 - 1;
            acc[1] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, pa.add(i)), _mm512_maskz_loadu_ps(m, pb.add(i)), acc[1]);
        }
        let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        _mm512_reduce_add_ps(s)
    }

    /// AVX2 + FMA: 4 x 8 lanes per step, then 8 at a time, then scalars.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `a.len() == b.len()`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY (all loads): i + 32 <= n or i + 8 <= n
        while i + 32 <= n {
            for (u, acc_u) in acc.iter_mut().enumerate() {
                let o = i + 8 * u;
                *acc_u = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *acc_u);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        // horizontal sum of 8 lanes
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        let mut r = _mm_cvtss_f32(h);
        while i < n {
            r += *pa.add(i) * *pb.add(i);
            i += 1;
        }
        r
    }
}

/// `y += alpha * x`
#[inline]
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// Which per-thread scratch buffer a kernel uses: `Outer` for a buffer held
/// by the calling thread across a parallel loop, `Task` for one used inside
/// a single task of that loop (a thread waiting in the loop runs other tasks
/// of it, so the two must differ).
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    Outer,
    Task,
}

thread_local! {
    static SCRATCH_OUTER: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    static SCRATCH_TASK: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a zeroed scratch slice of `n` floats that lives in a
/// per-thread buffer reused across calls. Fresh large allocations are
/// mapped to the zero page, so every first write page-faults and flushes
/// TLBs on all cores; reusing the buffer keeps the pages mapped. Falls back
/// to a fresh allocation if the buffer is in use (re-entrant call).
pub(crate) fn with_scratch<R>(which: Scratch, n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let key = match which {
        Scratch::Outer => &SCRATCH_OUTER,
        Scratch::Task => &SCRATCH_TASK,
    };
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut v) => {
            if v.len() < n {
                v.resize(n, 0.0);
            }
            let s = &mut v[..n];
            s.fill(0.0);
            f(s)
        }
        Err(_) => f(&mut vec![0f32; n]),
    })
}

#[cfg(test)]
mod dot_tests {
    use super::*;

    /// Every SIMD path the CPU has agrees with a float64 dot product, at
    /// lengths around every unroll boundary (tails of 0..63).
    #[test]
    fn dot_paths_match_f64() {
        let mut s = 7u64;
        let mut rnd = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for n in (0..200).chain([511, 512, 513, 1376, 4096 + 17]) {
            let a: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
            let abs: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 * *y as f64).abs()).sum();
            // float32 summation of n terms in any order: |err| <= n * 2^-24 * sum|x_i y_i|
            // (Higham, Accuracy and Stability, 3.1); FMA only removes roundings
            let tol = n as f64 * (1.0 / (1u64 << 24) as f64) * abs + 1e-30;
            let mut paths: Vec<(&str, f32)> = vec![("portable", dot_portable(&a, &b)), ("dispatch", dot(&a, &b))];
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx512f") {
                    paths.push(("avx512", unsafe { simd::dot_avx512(&a, &b) }));
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    paths.push(("avx2", unsafe { simd::dot_avx2(&a, &b) }));
                }
            }
            for (name, got) in paths {
                assert!((got as f64 - want).abs() <= tol, "{name} n={n}: {got} vs {want} (tol {tol:e})");
            }
        }
        // the common prefix is used when the lengths differ
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[1.0, 1.0]), 3.0);
    }
}

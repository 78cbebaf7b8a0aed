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
//! - [`KernelError`]: shape and argument errors of the CPU kernels
//! - families: [`matmul`], [`embedding`], [`rmsnorm`], [`rope`], [`attention`],
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

/// Dot product with 16 independent accumulators, so the compiler keeps it in
/// vector registers (AVX-512: one zmm; AVX2: two ymm).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
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

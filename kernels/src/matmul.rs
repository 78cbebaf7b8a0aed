//! Matrix products: `C (m, n) = op(A) (m, k) · op(B) (k, n)`, row-major,
//! with `op` the identity or the transpose ([`Trans`]), written or
//! accumulated into C ([`GradWrite`]).
//!
//! CPU: the `gemm` crate (AVX-512 kernels where the CPU has them, selected at
//! run time), parallel on the caller's rayon pool. CUDA: cuBLASLt (runtime
//! crate), bf16 operands with fp32 accumulation.
//!
//! The model's three uses, for a Linear layer `y = x W^T` with W `(out, in)`:
//! - forward   `y (N, out)   = x (N, in) · W^T`            : (N, T)
//! - dinput    `dx (N, in)   = dy (N, out) · W`            : (N, N)
//! - dweight   `dW (out, in) += dy^T (out, N) · x (N, in)` : (T, N), Accumulate

use crate::{arg_err, check_min_len, GradWrite, Result, Trans};

/// Shape and flags of one matrix product.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// A is stored `(m, k)` if `N`, `(k, m)` if `T`
    pub ta: Trans,
    /// B is stored `(k, n)` if `N`, `(n, k)` if `T`
    pub tb: Trans,
    pub write: GradWrite,
}

/// Row and column strides of an operand stored row-major as `rows x cols`
/// (as stored) and read through `t`.
#[inline]
fn strides(t: Trans, stored_cols: usize) -> (isize, isize) {
    let sc = stored_cols as isize;
    match t {
        // element (i, p) at i*cols + p
        Trans::N => (sc, 1),
        // element (i, p) of the transpose is stored (p, i): at p*cols + i
        Trans::T => (1, sc),
    }
}

/// `C = op(A) op(B)` (or `+=`) on the CPU. `threads` is how many rayon
/// threads gemm may use (1 inside an already parallel region).
pub fn matmul_cpu(c: &mut [f32], a: &[f32], b: &[f32], g: Gemm, threads: usize) -> Result<()> {
    const OP: &str = "matmul";
    let Gemm { m, n, k, ta, tb, write } = g;
    check_min_len(OP, "c", c.len(), m * n)?;
    check_min_len(OP, "a", a.len(), m * k)?;
    check_min_len(OP, "b", b.len(), k * n)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if write == GradWrite::Overwrite {
            c[..m * n].fill(0.0);
        }
        return Ok(());
    }
    if m <= GEMV_MAX_ROWS && ta == Trans::N && tb == Trans::T {
        gemv_rows(c, a, b, m, n, k, write);
        return Ok(());
    }
    let (a_rs, a_cs) = strides(ta, if ta == Trans::N { k } else { m });
    let (b_rs, b_cs) = strides(tb, if tb == Trans::N { n } else { k });
    if threads == 0 {
        return arg_err(OP, "threads must be >= 1");
    }
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    let read_dst = write == GradWrite::Accumulate;
    // SAFETY: the length checks above cover every index gemm touches:
    // C: (m-1)*n + n-1 < m*n; A: max index (m-1)*a_rs + (k-1)*a_cs < m*k for
    // both layouts; likewise B. The three buffers are distinct borrows.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, read_dst, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, 1.0, 1.0, false, false, false, par);
    }
    Ok(())
}

/// Up to this many rows of A, `A · B^T` (a Linear layer at decode time) is
/// done as dot products against the rows of B: B is read once, straight
/// from memory, instead of being packed first as gemm does (packing costs
/// more than the product when A has a few rows: decoding is bound by
/// reading the weights).
pub const GEMV_MAX_ROWS: usize = 8;
/// Rows of B per parallel task in the decode path.
const GEMV_ROWS_PER_TASK: usize = 32;

/// `C (m, n) (=|+=) A (m, k) · B^T`, B stored `(n, k)`, for small m.
fn gemv_rows(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, write: GradWrite) {
    use rayon::prelude::*;
    let cp = crate::SharedMut(c.as_mut_ptr());
    (0..n.div_ceil(GEMV_ROWS_PER_TASK)).into_par_iter().for_each(|task| {
        let j0 = task * GEMV_ROWS_PER_TASK;
        let j1 = (j0 + GEMV_ROWS_PER_TASK).min(n);
        for j in j0..j1 {
            let brow = &b[j * k..(j + 1) * k];
            for i in 0..m {
                let d = crate::dot(&a[i * k..(i + 1) * k], brow);
                // SAFETY: column j of C belongs to this task only
                let cij = unsafe { &mut cp.slice(i * n + j, 1)[0] };
                match write {
                    GradWrite::Overwrite => *cij = d,
                    GradWrite::Accumulate => *cij += d,
                }
            }
        }
    });
}

/// Strided single-threaded product used inside other kernels (attention):
/// `C = beta_dst * C + alpha * A B` with arbitrary element strides.
///
/// # Safety
/// Every index `i*rs + j*cs` for the given extents must lie inside the
/// corresponding allocation, and C must not alias A or B.
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    c: *mut f32,
    c_rs: isize,
    c_cs: isize,
    accumulate: bool,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    alpha: f32,
) {
    gemm::gemm(m, n, k, c, c_cs, c_rs, accumulate, a, a_cs, a_rs, b, b_cs, b_rs, 1.0, alpha, false, false, false, gemm::Parallelism::None);
}

/// Naive f64 reference of [`matmul_cpu`] for tests.
pub fn matmul_naive_f64(a: &[f32], b: &[f32], g: Gemm) -> Vec<f64> {
    let Gemm { m, n, k, ta, tb, .. } = g;
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0f64;
            for p in 0..k {
                let av = match ta {
                    Trans::N => a[i * k + p],
                    Trans::T => a[p * m + i],
                };
                let bv = match tb {
                    Trans::N => b[p * n + j],
                    Trans::T => b[j * k + p],
                };
                s += av as f64 * bv as f64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn all_transposes_match_naive() {
        for (m, n, k) in [(37, 29, 53), (3, 70, 45), (1, 33, 17)] {
            for ta in [Trans::N, Trans::T] {
                for tb in [Trans::N, Trans::T] {
                    for write in [GradWrite::Overwrite, GradWrite::Accumulate] {
                        let a = rnd(m * k, 1);
                        let b = rnd(k * n, 2);
                        let c0 = rnd(m * n, 3);
                        let mut c = c0.clone();
                        let g = Gemm { m, n, k, ta, tb, write };
                        matmul_cpu(&mut c, &a, &b, g, 2).unwrap();
                        let r = matmul_naive_f64(&a, &b, g);
                        for i in 0..m * n {
                            let want = r[i] + if write == GradWrite::Accumulate { c0[i] as f64 } else { 0.0 };
                            // f32 sums of 53 products of values in [-1, 1]:
                            // error well under 1e-5 absolute
                            assert!((c[i] as f64 - want).abs() < 1e-4, "{ta:?}{tb:?}{write:?} {i}: {} vs {want}", c[i]);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let g = Gemm { m: 4, n: 4, k: 4, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite };
        let mut c = vec![0f32; 15];
        assert!(matmul_cpu(&mut c, &[0.0; 16], &[0.0; 16], g, 1).is_err());
    }
}

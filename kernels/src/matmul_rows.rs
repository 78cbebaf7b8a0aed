//! Row-invariant products `C (m, n) (=|+=) A (m, k) · B^T`, B stored
//! `(n, k)`: a Linear layer's forward (`y = x W^T`) on the CPU.
//!
//! "Row-invariant" (batch-invariant): element `(i, j)` of C is computed by
//! the same instructions in the same order whatever `m`, whatever the other
//! rows of A, whatever the row's index and the thread count: two vector
//! accumulators of [`lanes`] lanes over `k` (alternate vectors of k, FMA,
//! a masked tail), their sum, then a fixed horizontal sum. So a sequence's hidden states, logits and
//! sampled tokens are bit for bit the same whether it is decoded alone or in
//! a batch of 16, at any position of the batch, and prefilled alone or with
//! other prompts (the other per-row ops of the model are per row already;
//! attention is per (sequence, head)). The gemm crate's blocking of `k`
//! depends on `m` and `n`, so it does not have this property.
//!
//! Speed: register tiles of [`MR`] rows of A by [`NR`] rows of B (AVX-512:
//! 24 accumulators, 14 loads per 24 FMAs), the next tile of B prefetched
//! while one is computed (one row of it per pass); parallel tasks over blocks of [`TASK_COLS`] rows
//! of B and [`ROW_BLOCK`] rows of A (a B tile stays in L1 while the A block
//! streams from L2). A decode step of B sequences is one such product per
//! weight (the weight is read once for all rows), not B matrix-vector
//! products. A single row of A (one sequence decoding) goes through B one
//! row at a time, front to back, which is what the hardware prefetcher
//! streams fastest. Why two accumulators per element: one makes the
//! single-row product wait on FMA latency (measured 13-16 GB/s of weights
//! on one core), four (the order of `crate::dot`) leave room for tiles of
//! only 2 x 3 (55 GFLOP/s at 16 rows); two give both: 19-25 GB/s for one
//! row (as `dot`), 67-75 GFLOP/s per core at 16 rows (the gemm crate: 13,
//! as it packs B first), 67-73 at 2048 rows (gemm: 94). Measured in CPU
//! time of one thread on this project's 2-core EPYC VM, huge pages on.
//!
//! Paths, chosen once per process by the CPU's features: AVX-512F (16
//! lanes), AVX2+FMA (8 lanes), portable (8 scalar lanes, no FMA). Results
//! are invariant within a path; paths differ by float32 rounding only.
//!
//! Public items: [`matmul_rows_cpu`], [`lanes`], [`MR`], [`NR`],
//! [`TASK_COLS`], [`ROW_BLOCK`].

use crate::{check_min_len, GradWrite, Result, SharedMut};
use rayon::prelude::*;

/// Rows of A per register tile (AVX-512 path).
pub const MR: usize = 4;
/// Rows of B per register tile (AVX-512 path): 2·MR·NR = 24 accumulators
/// (two per element) + MR A vectors + 1 B vector = 29 of the 32 vector
/// registers.
pub const NR: usize = 3;
/// Rows of B per parallel task at most (16 tiles); the tasks of a product
/// are made equal and a multiple of the pool's threads.
pub const TASK_COLS: usize = 48;
/// Rows of A per parallel task: 128 rows of k = 512 floats are 256 KiB, in L2.
pub const ROW_BLOCK: usize = 128;

/// Accumulator lanes of the path this CPU runs (16, 8 or the portable 8).
pub fn lanes() -> usize {
    match path() {
        Path::Avx512 => 16,
        Path::Avx2 | Path::Portable => 8,
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Avx512,
    Avx2,
    Portable,
}

fn path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
            return Path::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return Path::Avx2;
        }
    }
    Path::Portable
}

/// `C (m, n) (=|+=) A (m, k) · B^T` with B stored `(n, k)`, row-invariant
/// (see the module header), on the caller's rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn matmul_rows_cpu(c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, write: GradWrite) -> Result<()> {
    matmul_rows_on(path(), c, a, b, m, n, k, write)
}

/// [`matmul_rows_cpu`] on a given path (the tests run every path the CPU has).
#[allow(clippy::too_many_arguments)]
fn matmul_rows_on(p: Path, c: &mut [f32], a: &[f32], b: &[f32], m: usize, n: usize, k: usize, write: GradWrite) -> Result<()> {
    const OP: &str = "matmul_rows";
    check_min_len(OP, "c", c.len(), m * n)?;
    check_min_len(OP, "a", a.len(), m * k)?;
    check_min_len(OP, "b", b.len(), n * k)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (col_tasks, row_tasks) = (col_tasks(n, rayon::current_num_threads()), m.div_ceil(ROW_BLOCK));
    let tiles = n.div_ceil(NR);
    let cp = SharedMut::from_slice(c);
    let acc = write == GradWrite::Accumulate;
    (0..col_tasks * row_tasks).into_par_iter().for_each(|task| {
        let (cj, ri) = (task % col_tasks, task / col_tasks);
        // tiles split evenly among the column tasks (none holds more than
        // one tile more than another)
        let (j0, j1) = ((tiles * cj / col_tasks * NR).min(n), (tiles * (cj + 1) / col_tasks * NR).min(n));
        if j0 == j1 {
            return;
        }
        let (i0, i1) = (ri * ROW_BLOCK, ((ri + 1) * ROW_BLOCK).min(m));
        // SAFETY: the task writes C[i0..i1, j0..j1] only (tasks partition the
        // (row block, column block) grid); every A row i < m and B row j < n
        // holds k elements (lengths checked above).
        unsafe { block(p, cp.ptr(), a.as_ptr(), b.as_ptr(), n, k, (i0, i1), (j0, j1), acc) };
    });
    Ok(())
}

/// How many column tasks a product of `n` columns is split into on a pool
/// of `threads`: a multiple of the thread count, each of at most
/// [`TASK_COLS`] columns. The tasks are equal to within one tile, so every
/// thread gets the same share: with 48 columns per task, the 512 columns of
/// a projection made 11 tasks (6 for one thread of two, 5 for the other)
/// and the 256 of a key projection 6 tasks of which one a third full, a
/// thread idle for about an eighth of each such product while decoding.
fn col_tasks(n: usize, threads: usize) -> usize {
    let (tiles, per) = (n.div_ceil(NR), TASK_COLS / NR);
    let t = threads.max(1);
    (t * tiles.div_ceil(per * t)).max(1)
}

/// One task: C[i0..i1, j0..j1] through register tiles.
///
/// # Safety
/// As [`matmul_rows_cpu`]'s task: the ranges lie inside C (row stride `n`),
/// A and B, and no other thread touches that part of C.
#[allow(clippy::too_many_arguments)]
unsafe fn block(p: Path, c: *mut f32, a: *const f32, b: *const f32, n: usize, k: usize, (i0, i1): (usize, usize), (j0, j1): (usize, usize), acc: bool) {
    let (mr, nr) = match p {
        // one row of A: one row of B at a time, front to back (a single
        // sequential stream: measured 19-25 GB/s on one core, against
        // 10-11 GB/s for tiles of interleaved rows)
        Path::Avx512 if i1 - i0 == 1 => (1, 1),
        Path::Avx512 => (MR, NR),
        Path::Avx2 if i1 - i0 == 1 => (1, 1),
        Path::Avx2 => (AVX2_MR, AVX2_NR),
        Path::Portable => (1, 1),
    };
    let mut j = j0;
    while j < j1 {
        let cn = nr.min(j1 - j);
        // the next tile of B, fetched into L1 while this one is computed
        // (decoding streams every weight from memory; without it a tile's
        // first pass waits for memory, then computes). Its rows are asked
        // for one per pass over A's row tiles rather than all in the first
        // pass: measured at 16 rows of A with weights streamed from memory
        // (one thread, a loaded machine), 44-50 -> 49-57 GFLOP/s
        let next = (nr > 1 && j + cn < j1).then(|| (b.add((j + cn) * k), nr.min(j1 - j - cn)));
        let mut i = i0;
        while i < i1 {
            let rm = mr.min(i1 - i);
            let (ap, bp, cpp) = (a.add(i * k), b.add(j * k), c.add(i * n + j));
            // the next tile's rows prefetched one per pass (the last pass
            // takes the rest), so the fetches spread over the whole tile
            let (pass, passes) = ((i - i0) / mr, (i1 - i0).div_ceil(mr));
            let pf = next.and_then(|(ptr, rows)| match pass {
                q if q + 1 == passes && q < rows => Some((ptr.add(q * k), rows - q)),
                q if q < rows => Some((ptr.add(q * k), 1)),
                _ => None,
            });
            match p {
                #[cfg(target_arch = "x86_64")]
                Path::Avx512 => x86::tile512_dispatch(rm, cn, k, ap, bp, cpp, n, acc, pf),
                #[cfg(target_arch = "x86_64")]
                Path::Avx2 => x86::tile256_dispatch(rm, cn, k, ap, bp, cpp, n, acc),
                _ => portable_elem(k, ap, bp, cpp, acc),
            }
            i += rm;
        }
        j += cn;
    }
}

/// Rows of A / of B per register tile on the AVX2 path: 2·2·2 = 8
/// accumulators + 2 A vectors + 1 B vector = 11 of the 16 vector registers.
const AVX2_MR: usize = 2;
const AVX2_NR: usize = 2;

/// The portable element: 8 scalar lanes over `k` in order, a zero-padded
/// tail, then the lanes summed pairwise.
///
/// # Safety
/// `a` and `b` hold `k` elements; `c` is writable.
unsafe fn portable_elem(k: usize, a: *const f32, b: *const f32, c: *mut f32, acc: bool) {
    let (x, w) = (std::slice::from_raw_parts(a, k), std::slice::from_raw_parts(b, k));
    let mut l = [0f32; 8];
    let full = k / 8 * 8;
    for p in (0..full).step_by(8) {
        for u in 0..8 {
            l[u] += x[p + u] * w[p + u];
        }
    }
    for u in 0..k - full {
        l[u] += x[full + u] * w[full + u];
    }
    let s = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
    if acc {
        *c += s;
    } else {
        *c = s;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::hsum16x4;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// An `R x C` tile: `R` rows of A against `C` rows of B. Each element:
    /// two 16-lane accumulators over steps of 32 (the first takes elements
    /// `p..p+16`, the second `p+16..p+32`), then a step of 16 into the
    /// first, a masked tail into the second, their sum, then the horizontal
    /// sum; the same for every tile shape, so any tile agrees bit for bit.
    ///
    /// `pf`: rows of the next tile of B (at most C) to prefetch, one line
    /// each per 16 elements (results do not depend on it).
    ///
    /// # Safety
    /// AVX-512F and VL (VL lets the compiler use all 32 vector registers for
    /// the accumulators; without it LLVM spills); rows `0..R` of A (stride
    /// k) and `0..C` of B (stride k) hold `k` elements; C's tile (row stride
    /// `ldc`) is writable.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn tile512<const R: usize, const C: usize>(
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        acc_c: bool,
        pf: Option<(*const f32, usize)>,
    ) {
        let mut acc = [[[_mm512_setzero_ps(); 2]; C]; R];
        let mut p = 0;
        let (pf_ptr, pf_rows) = pf.unwrap_or((b, 0));
        while p + 32 <= k {
            for u in 0..2 {
                let o = p + 16 * u;
                for j in 0..pf_rows {
                    _mm_prefetch::<_MM_HINT_T0>(pf_ptr.add(j * k + o) as *const i8);
                }
                let mut x = [_mm512_setzero_ps(); R];
                for r in 0..R {
                    x[r] = _mm512_loadu_ps(a.add(r * k + o));
                }
                for j in 0..C {
                    let w = _mm512_loadu_ps(b.add(j * k + o));
                    for r in 0..R {
                        acc[r][j][u] = _mm512_fmadd_ps(x[r], w, acc[r][j][u]);
                    }
                }
            }
            p += 32;
        }
        while p + 16 <= k {
            for r in 0..R {
                let x = _mm512_loadu_ps(a.add(r * k + p));
                for j in 0..C {
                    acc[r][j][0] = _mm512_fmadd_ps(x, _mm512_loadu_ps(b.add(j * k + p)), acc[r][j][0]);
                }
            }
            p += 16;
        }
        if p < k {
            // masked tail: the lanes past k load 0 and add 0·0 to the sum
            let m: __mmask16 = ((1u32 << (k - p)) - 1) as u16;
            for r in 0..R {
                let x = _mm512_maskz_loadu_ps(m, a.add(r * k + p));
                for j in 0..C {
                    acc[r][j][1] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, b.add(j * k + p)), acc[r][j][1]);
                }
            }
        }
        // the horizontal sums, four elements at a time (a tile's last group
        // padded with zeros, which do not touch the other lanes' sums)
        let mut sums = [_mm512_setzero_ps(); 16];
        for r in 0..R {
            for j in 0..C {
                sums[r * C + j] = _mm512_add_ps(acc[r][j][0], acc[r][j][1]);
            }
        }
        let mut out = [0f32; 16];
        for g in 0..(R * C).div_ceil(4) {
            let v = hsum16x4(sums[4 * g], sums[4 * g + 1], sums[4 * g + 2], sums[4 * g + 3]);
            _mm_storeu_ps(out.as_mut_ptr().add(4 * g), v);
        }
        for r in 0..R {
            for j in 0..C {
                let s = out[r * C + j];
                let d = c.add(r * ldc + j);
                *d = if acc_c { *d + s } else { s };
            }
        }
    }

    /// The horizontal sums of four 16-lane vectors, by one fixed tree for
    /// every lane: `x_i + x_{i+8}`, then `+` the same at `i + 4`, then at
    /// `i + 2`, then at `i + 1` (the tree of `_mm512_reduce_add_ps`, done on
    /// four vectors at once: 13 instructions instead of 4 x 8).
    ///
    /// # Safety
    /// AVX-512F.
    #[target_feature(enable = "avx512f,avx512vl")]
    #[inline]
    pub(crate) unsafe fn hsum16x4(a: __m512, b: __m512, c: __m512, d: __m512) -> __m128 {
        // 128-bit blocks: [a0 a1 b0 b1] + [a2 a3 b2 b3]: lanes i + i+8
        let ab = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(a, b), _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b));
        let cd = _mm512_add_ps(_mm512_shuffle_f32x4::<0b01_00_01_00>(c, d), _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d));
        // [ab0 ab2 cd0 cd2] + [ab1 ab3 cd1 cd3]: + lanes i+4; one block per vector
        let u = _mm512_add_ps(_mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd), _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd));
        // within each block: + lanes i+2, then + lanes i+1
        let w = _mm512_add_ps(u, _mm512_permute_ps::<0b01_00_11_10>(u));
        let z = _mm512_add_ps(w, _mm512_permute_ps::<0b10_11_00_01>(w));
        // lane 0 of each block
        _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), z))
    }

    /// The tile of `rm x cn` (at most `MR x NR`).
    ///
    /// # Safety
    /// As [`tile512`], with `1 <= rm <= MR`, `1 <= cn <= NR`; `pf` rows lie
    /// inside B.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile512_dispatch(
        rm: usize,
        cn: usize,
        k: usize,
        a: *const f32,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        acc: bool,
        pf: Option<(*const f32, usize)>,
    ) {
        let pf = pf.map(|(p, r)| (p, r.min(cn)));
        macro_rules! cols {
            ($r:literal) => {
                match cn {
                    3 => tile512::<$r, 3>(k, a, b, c, ldc, acc, pf),
                    2 => tile512::<$r, 2>(k, a, b, c, ldc, acc, pf),
                    _ => tile512::<$r, 1>(k, a, b, c, ldc, acc, pf),
                }
            };
        }
        match rm {
            4 => cols!(4),
            3 => cols!(3),
            2 => cols!(2),
            _ => cols!(1),
        }
    }

    /// Fixed-order horizontal sum of 8 lanes.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(s: __m256) -> f32 {
        let h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        _mm_cvtss_f32(h)
    }

    /// [`tile512`] on AVX2+FMA: two 8-lane accumulators per element over
    /// steps of 16, then a step of 8 into the first, a masked tail into the
    /// second, their sum, then the fixed horizontal sum.
    ///
    /// # Safety
    /// AVX2 and FMA; as [`tile512`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn tile256<const R: usize, const C: usize>(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc_c: bool) {
        let mut acc = [[[_mm256_setzero_ps(); 2]; C]; R];
        let mut p = 0;
        while p + 16 <= k {
            for u in 0..2 {
                let o = p + 8 * u;
                let mut x = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    x[r] = _mm256_loadu_ps(a.add(r * k + o));
                }
                for j in 0..C {
                    let w = _mm256_loadu_ps(b.add(j * k + o));
                    for r in 0..R {
                        acc[r][j][u] = _mm256_fmadd_ps(x[r], w, acc[r][j][u]);
                    }
                }
            }
            p += 16;
        }
        if p + 8 <= k {
            for r in 0..R {
                let x = _mm256_loadu_ps(a.add(r * k + p));
                for j in 0..C {
                    acc[r][j][0] = _mm256_fmadd_ps(x, _mm256_loadu_ps(b.add(j * k + p)), acc[r][j][0]);
                }
            }
            p += 8;
        }
        if p < k {
            let rem = (k - p) as i32;
            let lane = |i: i32| if rem > i { -1 } else { 0 };
            let mask = _mm256_setr_epi32(lane(0), lane(1), lane(2), lane(3), lane(4), lane(5), lane(6), 0);
            for r in 0..R {
                let x = _mm256_maskload_ps(a.add(r * k + p), mask);
                for j in 0..C {
                    acc[r][j][1] = _mm256_fmadd_ps(x, _mm256_maskload_ps(b.add(j * k + p), mask), acc[r][j][1]);
                }
            }
        }
        for r in 0..R {
            for j in 0..C {
                let s = hsum256(_mm256_add_ps(acc[r][j][0], acc[r][j][1]));
                let d = c.add(r * ldc + j);
                *d = if acc_c { *d + s } else { s };
            }
        }
    }

    /// The AVX2 tile of `rm x cn` (at most `AVX2_MR x AVX2_NR`).
    ///
    /// # Safety
    /// As [`tile256`], with `1 <= rm <= 2`, `1 <= cn <= 2`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile256_dispatch(rm: usize, cn: usize, k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, acc: bool) {
        macro_rules! cols {
            ($r:literal) => {
                match cn {
                    2 => tile256::<$r, 2>(k, a, b, c, ldc, acc),
                    _ => tile256::<$r, 1>(k, a, b, c, ldc, acc),
                }
            };
        }
        match rm {
            2 => cols!(2),
            _ => cols!(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{matmul_naive_f64, Gemm};
    use crate::Trans;

    fn rnd(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Every path this CPU can run.
    fn paths() -> Vec<Path> {
        let mut v = vec![Path::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                v.push(Path::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                v.push(Path::Avx512);
            }
        }
        v
    }

    fn pool(t: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap()
    }

    /// Against a float64 product, at every tile edge (m, n not multiples of
    /// the tile; k around the vector width), both write rules.
    #[test]
    fn matches_f64_reference() {
        for (p, (m, n, k)) in paths()
            .into_iter()
            .flat_map(|p| [(1, 1, 1), (3, 7, 15), (5, 13, 16), (9, 50, 17), (37, 29, 53), (130, 49, 100), (4, 6, 512), (1, 9, 33)].map(move |s| (p, s)))
        {
            for write in [GradWrite::Overwrite, GradWrite::Accumulate] {
                let (a, b, c0) = (rnd(m * k, 1), rnd(n * k, 2), rnd(m * n, 3));
                let mut c = c0.clone();
                pool(if n % 2 == 0 { 3 } else { 2 }).install(|| matmul_rows_on(p, &mut c, &a, &b, m, n, k, write)).unwrap();
                let r = matmul_naive_f64(&a, &b, Gemm { m, n, k, ta: Trans::N, tb: Trans::T, write });
                let abs: Vec<f64> = (0..m * n).map(|x| (0..k).map(|p| (a[x / n * k + p] * b[x % n * k + p]).abs() as f64).sum()).collect();
                for x in 0..m * n {
                    let want = r[x] + if write == GradWrite::Accumulate { c0[x] as f64 } else { 0.0 };
                    // float32 summation of k products in any order: |err| <=
                    // k·2^-24·Σ|a b| (Higham 3.1), + the accumulate's rounding
                    let tol = (k as f64 + 1.0) * (1.0 / (1u64 << 24) as f64) * (abs[x] + c0[x].abs() as f64) + 1e-30;
                    assert!((c[x] as f64 - want).abs() <= tol, "{p:?} {m}x{n}x{k} {write:?} [{x}]: {} vs {want}", c[x]);
                }
            }
        }
    }

    /// The property the module exists for: each row of C is bit for bit the
    /// same computed alone, in any sub-batch, at any offset, on 1 or 2
    /// threads.
    #[test]
    fn rows_are_bitwise_invariant() {
        let (m, n, k) = (23, 101, 77);
        let (a, b) = (rnd(m * k, 4), rnd(n * k, 5));
        let mut full = vec![0f32; m * n];
        pool(2).install(|| matmul_rows_cpu(&mut full, &a, &b, m, n, k, GradWrite::Overwrite)).unwrap();
        for threads in [1, 2] {
            for (start, len) in [(0, 1), (7, 1), (22, 1), (3, 5), (0, 16), (5, 18)] {
                let mut part = vec![0f32; len * n];
                pool(threads).install(|| matmul_rows_cpu(&mut part, &a[start * k..(start + len) * k], &b, len, n, k, GradWrite::Overwrite)).unwrap();
                for i in 0..len {
                    let (got, want) = (&part[i * n..(i + 1) * n], &full[(start + i) * n..(start + i + 1) * n]);
                    assert!(
                        got.iter().zip(want).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "row {} of a batch of {len} at {start}, {threads} threads",
                        start + i
                    );
                }
            }
        }
    }

    /// The column tasks (as `matmul_rows_on` cuts them) cover every column
    /// once, in tiles, none wider than TASK_COLS, their count a multiple of
    /// the threads, their widths within one tile of each other.
    #[test]
    fn column_tasks_are_even() {
        for threads in [1, 2, 3, 4, 16] {
            for n in [1, 2, 3, 4, 47, 48, 49, 96, 256, 512, 1376, 32000] {
                let (tasks, tiles) = (col_tasks(n, threads), n.div_ceil(NR));
                assert_eq!(tasks % threads, 0, "n {n}, {threads} threads: {tasks} tasks");
                let spans: Vec<(usize, usize)> = (0..tasks).map(|cj| ((tiles * cj / tasks * NR).min(n), (tiles * (cj + 1) / tasks * NR).min(n))).collect();
                let mut next = 0;
                for &(j0, j1) in &spans {
                    assert_eq!(j0, next, "n {n}: a gap or an overlap at {j0}");
                    assert!(j1 - j0 <= TASK_COLS && j0 % NR == 0, "n {n}: task {j0}..{j1}");
                    next = j1;
                }
                assert_eq!(next, n);
                let tile_counts: Vec<usize> = (0..tasks).map(|cj| tiles * (cj + 1) / tasks - tiles * cj / tasks).collect();
                let (lo, hi) = (tile_counts.iter().min().copied().unwrap_or(0), tile_counts.iter().max().copied().unwrap_or(0));
                assert!(hi - lo <= 1, "n {n}, {threads} threads: tasks of {lo} to {hi} tiles");
            }
        }
    }

    #[test]
    fn short_buffers_are_errors() {
        let mut c = vec![0f32; 5];
        assert!(matmul_rows_cpu(&mut c, &[0.0; 6], &[0.0; 6], 2, 3, 2, GradWrite::Overwrite).is_err());
    }
}

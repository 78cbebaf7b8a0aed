//! Causal scaled-dot-product attention with grouped-query attention (GQA),
//! flash-attention style: the `(t, t)` score matrix is never stored. Forward
//! keeps the row log-sum-exp (`lse`, f32) and backward recomputes the
//! probabilities from it (Dao et al. 2022, "FlashAttention", Alg. 1 and 2).
//!
//! Layouts (transformers' projections before the head transpose):
//! - `q, out (b, tq, n_head, hd)`
//! - `k, v (b, cap, n_kv_head, hd)`, of which rows `0..tkv` are valid; `cap`
//!   is `tkv` in training and the cache length in decoding
//! - `lse (b, n_head, tq)`
//!
//! Query head `h` reads KV head `h / (n_head / n_kv_head)` (transformers'
//! `repeat_kv`). Query row `i` sits at position `tkv − tq + i` and sees keys
//! `0 ..= tkv − tq + i`. Scale `1/sqrt(hd)`.
//!
//! Ragged batches ([`Ragged`], right padding): query row `i` of sequence
//! `bi` sits at position `pos0[bi] + i`; rows at or past `len[bi]` are
//! padding: the forward writes 0 there, the backward writes 0 gradients,
//! and no key past a sequence's last valid position is ever read.
//!
//! CPU: blocks of [`Q_BLOCK`] query rows against all visible keys, products
//! through gemm (a block of one row, as in decoding: the `decode` module's
//! scores and weighted sum, AVX-512 where the CPU has it, else dot products
//! and axpys), rayon over (batch, head, block). Backward is parallel over
//! (batch, head) with per-head dK/dV partials summed over the heads of a
//! group in a fixed order, so results do not depend on the thread count.
//! Write rule: `out`, `lse`, `dq`, `dk`, `dv` are overwritten.

use crate::math::exp;
use crate::matmul::gemm_strided;
use crate::{arg_err, check_len, check_min_len, with_scratch, Ragged, Result, Scratch, SharedMut};
use rayon::prelude::*;

/// Query rows per block on the CPU (a block's scores are `Q_BLOCK x tkv`).
pub const Q_BLOCK: usize = 64;

/// Shape of an attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    /// query rows
    pub tq: usize,
    /// valid key rows (the query rows are the last `tq` positions of these)
    pub tkv: usize,
    /// key rows allocated per batch row in k and v (>= tkv)
    pub cap: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hd: usize,
}

impl AttnShape {
    /// Training shape: `tq = tkv = cap = t`.
    pub fn causal(b: usize, t: usize, n_head: usize, n_kv_head: usize, hd: usize) -> Self {
        AttnShape { b, tq: t, tkv: t, cap: t, n_head, n_kv_head, hd }
    }

    pub fn validate(&self, op: &'static str) -> Result<()> {
        let s = self;
        if s.n_kv_head == 0 || !s.n_head.is_multiple_of(s.n_kv_head) {
            return arg_err(op, format!("n_head {} must be a multiple of n_kv_head {}", s.n_head, s.n_kv_head));
        }
        if s.tq > s.tkv || s.tkv > s.cap {
            return arg_err(op, format!("need tq {} <= tkv {} <= cap {}", s.tq, s.tkv, s.cap));
        }
        if s.hd == 0 {
            return arg_err(op, "head_dim must be > 0");
        }
        Ok(())
    }

    fn q_len(&self) -> usize {
        self.b * self.tq * self.n_head * self.hd
    }
    fn kv_len(&self) -> usize {
        self.b * self.cap * self.n_kv_head * self.hd
    }
    fn lse_len(&self) -> usize {
        self.b * self.n_head * self.tq
    }
}

/// Forward: `out = softmax(q k^T / sqrt(hd) + causal mask) v`, `lse` saved.
pub fn attention_fwd_cpu(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> Result<()> {
    attention_fwd_impl(out, lse, q, k, v, s, None)
}

/// Forward of a ragged batch: query row `i` of sequence `bi` sits at
/// position `r.pos0[bi] + i` and sees keys `0 ..= r.pos0[bi] + i`; rows
/// `i >= r.len[bi]` are padding: `out` 0 and `lse` 0 there, and no key
/// beyond a sequence's last valid position is ever read.
#[allow(clippy::too_many_arguments)]
pub fn attention_fwd_ragged_cpu(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape, r: Ragged) -> Result<()> {
    attention_fwd_impl(out, lse, q, k, v, s, Some(r))
}

#[allow(clippy::too_many_arguments)]
fn attention_fwd_impl(out: &mut [f32], lse: &mut [f32], q: &[f32], k: &[f32], v: &[f32], s: AttnShape, rows: Option<Ragged>) -> Result<()> {
    const OP: &str = "attention_fwd";
    s.validate(OP)?;
    if let Some(r) = rows {
        r.check(OP, s.b, s.tq, s.cap)?;
    }
    check_len(OP, "out", out.len(), s.q_len())?;
    check_len(OP, "lse", lse.len(), s.lse_len())?;
    check_len(OP, "q", q.len(), s.q_len())?;
    check_min_len(OP, "k", k.len(), s.kv_len())?;
    check_min_len(OP, "v", v.len(), s.kv_len())?;
    let AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd } = s;
    if tq == 0 || b == 0 {
        return Ok(());
    }
    let group = nh / nkv;
    let blocks = tq.div_ceil(Q_BLOCK);
    let scale = 1.0 / (hd as f32).sqrt();
    let off = tkv - tq;
    let outp = SharedMut(out.as_mut_ptr());
    let lsep = SharedMut(lse.as_mut_ptr());
    (0..b * nh * blocks).into_par_iter().for_each(|task| {
        let bi = task / (nh * blocks);
        let h = (task / blocks) % nh;
        let blk = task % blocks;
        let g = h / group;
        // position of row 0 and valid rows of this sequence
        let (off, valid) = match rows {
            None => (off, tq),
            Some(r) => (r.pos0[bi] as usize, r.len[bi] as usize),
        };
        let i0 = blk * Q_BLOCK;
        let q_rs = (nh * hd) as isize;
        let kv_rs = (nkv * hd) as isize;
        // padding rows of the block: out = 0, lse = 0
        for i in i0.max(valid)..(i0 + Q_BLOCK).min(tq) {
            // SAFETY: row i of head h of sequence bi belongs to this task only
            unsafe {
                outp.slice(((bi * tq + i) * nh + h) * hd, hd).fill(0.0);
                lsep.slice((bi * nh + h) * tq + i, 1)[0] = 0.0;
            }
        }
        if i0 >= valid {
            return;
        }
        let i1 = (i0 + Q_BLOCK).min(valid);
        let qn = i1 - i0;
        let nk = off + i1; // keys visible to the last row of the block
        let qbase = ((bi * tq + i0) * nh + h) * hd;
        let kbase = (bi * cap * nkv + g) * hd;
        with_scratch(Scratch::Task, qn * nk, |sc| {
            if qn == 1 {
                // one query row (decoding): dot products against each key; a
                // product of shape (1, nk, hd) costs gemm's set-up per call
                decode::scores(decode::path(), sc, &q[qbase..qbase + hd], &k[kbase..], kv_rs as usize, scale);
            } else {
                // SAFETY: S (qn, nk) is local; q rows i0..i1 of head h and k rows
                // 0..nk of kv head g lie inside q and k (lengths checked above).
                unsafe {
                    gemm_strided(qn, nk, hd, sc.as_mut_ptr(), nk as isize, 1, false, q.as_ptr().add(qbase), q_rs, 1, k.as_ptr().add(kbase), 1, kv_rs, scale);
                }
            }
            for r in 0..qn {
                let vis = off + i0 + r + 1; // keys 0..vis are visible
                let row = &mut sc[r * nk..(r + 1) * nk];
                let m = crate::max(&row[..vis]);
                for x in row[..vis].iter_mut() {
                    *x = exp(*x - m);
                }
                let sum = crate::sum(&row[..vis]);
                let inv = 1.0 / sum;
                for x in row[..vis].iter_mut() {
                    *x *= inv;
                }
                row[vis..].fill(0.0);
                // SAFETY: lse element (bi, h, i0+r) belongs to this task only
                unsafe { lsep.slice((bi * nh + h) * tq + i0 + r, 1)[0] = m + sum.ln() };
            }
            if qn == 1 {
                // SAFETY: out row i0 of head h belongs to this task only
                let o = unsafe { outp.slice(qbase, hd) };
                decode::weighted_sum(decode::path(), o, sc, &v[kbase..], kv_rs as usize);
            } else {
                // SAFETY: out rows i0..i1 of head h (row stride nh*hd) belong to
                // this task only; v rows 0..nk of kv head g are in bounds.
                unsafe {
                    gemm_strided(qn, hd, nk, outp.ptr().add(qbase), q_rs, 1, false, sc.as_ptr(), nk as isize, 1, v.as_ptr().add(kbase), kv_rs, 1, 1.0);
                }
            }
        });
    });
    Ok(())
}

/// Backward of [`attention_fwd_cpu`] for the training shape (`tq = tkv`):
/// `dq`, `dk`, `dv` overwritten. `out` and `lse` are the forward's.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_cpu(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
) -> Result<()> {
    attention_bwd_impl(dq, dk, dv, dout, q, k, v, out, lse, s, None)
}

/// Backward of [`attention_fwd_ragged_cpu`] for a training batch (every
/// `r.pos0` is 0): rows `i >= r.len[bi]` are padding and get `dq`, `dk`,
/// `dv` = 0; nothing is read from them.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd_ragged_cpu(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
    r: Ragged,
) -> Result<()> {
    attention_bwd_impl(dq, dk, dv, dout, q, k, v, out, lse, s, Some(r))
}

#[allow(clippy::too_many_arguments)]
fn attention_bwd_impl(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    s: AttnShape,
    rows: Option<Ragged>,
) -> Result<()> {
    const OP: &str = "attention_bwd";
    s.validate(OP)?;
    if s.tq != s.tkv || s.cap != s.tkv {
        return arg_err(OP, format!("backward needs tq == tkv == cap, got {} {} {}", s.tq, s.tkv, s.cap));
    }
    if let Some(r) = rows {
        r.check(OP, s.b, s.tq, s.cap)?;
        if let Some(bi) = r.pos0.iter().position(|&p| p != 0) {
            return arg_err(OP, format!("backward needs every sequence to start at position 0, sequence {bi} starts at {}", r.pos0[bi]));
        }
    }
    for (name, len) in [("dq", dq.len()), ("dout", dout.len()), ("q", q.len()), ("out", out.len())] {
        check_len(OP, name, len, s.q_len())?;
    }
    for (name, len) in [("dk", dk.len()), ("dv", dv.len()), ("k", k.len()), ("v", v.len())] {
        check_len(OP, name, len, s.kv_len())?;
    }
    check_len(OP, "lse", lse.len(), s.lse_len())?;
    let AttnShape { b, tq: t, n_head: nh, n_kv_head: nkv, hd, .. } = s;
    if t == 0 || b == 0 {
        return Ok(());
    }
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let q_rs = (nh * hd) as isize;
    let kv_rs = (nkv * hd) as isize;
    // per query head partials of dK and dV: (b, nh, t, hd) each
    let slab = b * nh * t * hd;
    with_scratch(Scratch::Outer, 2 * slab, |partials| {
        let (pk, pv) = partials.split_at_mut(slab);
        let dqp = SharedMut(dq.as_mut_ptr());
        let pkp = SharedMut(pk.as_mut_ptr());
        let pvp = SharedMut(pv.as_mut_ptr());
        (0..b * nh).into_par_iter().for_each(|task| {
            let bi = task / nh;
            let h = task % nh;
            let g = h / group;
            let kbase = (bi * t * nkv + g) * hd;
            let valid = rows.map_or(t, |r| r.len[bi] as usize);
            for i in valid..t {
                // SAFETY: dq row i of head h of sequence bi belongs to this task only
                unsafe { dqp.slice(((bi * t + i) * nh + h) * hd, hd).fill(0.0) };
            }
            // SAFETY: partial slabs (bi, h) are owned by this task.
            let (dkh, dvh) = unsafe { (pkp.slice(task * t * hd, t * hd), pvp.slice(task * t * hd, t * hd)) };
            with_scratch(Scratch::Task, 2 * Q_BLOCK * t, |pdp| {
                let (p, dp) = pdp.split_at_mut(Q_BLOCK * t);
                for i0 in (0..valid).step_by(Q_BLOCK) {
                    let i1 = (i0 + Q_BLOCK).min(valid);
                    let qn = i1 - i0;
                    let nk = i1;
                    let qbase = ((bi * t + i0) * nh + h) * hd;
                    let (p, dp) = (&mut p[..qn * nk], &mut dp[..qn * nk]);
                    // SAFETY (all gemm calls below): q/dout/out rows i0..i1 of head h
                    // (stride nh*hd), k/v rows 0..nk of kv head g (stride nkv*hd),
                    // local P/dP (qn, nk) and this task's partial slabs (t, hd); dq
                    // rows i0..i1 of head h belong to this task only.
                    unsafe {
                        gemm_strided(qn, nk, hd, p.as_mut_ptr(), nk as isize, 1, false, q.as_ptr().add(qbase), q_rs, 1, k.as_ptr().add(kbase), 1, kv_rs, scale);
                    }
                    for r in 0..qn {
                        let vis = i0 + r + 1;
                        let l = lse[(bi * nh + h) * t + i0 + r];
                        let row = &mut p[r * nk..(r + 1) * nk];
                        for x in row[..vis].iter_mut() {
                            *x = exp(*x - l);
                        }
                        row[vis..].fill(0.0);
                    }
                    unsafe {
                        // dV_h (nk, hd) += P^T (nk, qn) dO (qn, hd)
                        gemm_strided(nk, hd, qn, dvh.as_mut_ptr(), hd as isize, 1, true, p.as_ptr(), 1, nk as isize, dout.as_ptr().add(qbase), q_rs, 1, 1.0);
                        // dP (qn, nk) = dO (qn, hd) V^T (hd, nk)
                        gemm_strided(
                            qn,
                            nk,
                            hd,
                            dp.as_mut_ptr(),
                            nk as isize,
                            1,
                            false,
                            dout.as_ptr().add(qbase),
                            q_rs,
                            1,
                            v.as_ptr().add(kbase),
                            1,
                            kv_rs,
                            1.0,
                        );
                    }
                    for r in 0..qn {
                        let o = qbase + r * nh * hd;
                        let d = crate::dot(&dout[o..o + hd], &out[o..o + hd]);
                        let (pr, dpr) = (&p[r * nk..(r + 1) * nk], &mut dp[r * nk..(r + 1) * nk]);
                        for (x, &pp) in dpr.iter_mut().zip(pr) {
                            // dS = P ⊙ (dP − D); the masked entries have P = 0
                            *x = pp * (*x - d);
                        }
                    }
                    unsafe {
                        // dQ (qn, hd) = scale · dS (qn, nk) K (nk, hd)
                        gemm_strided(qn, hd, nk, dqp.ptr().add(qbase), q_rs, 1, false, dp.as_ptr(), nk as isize, 1, k.as_ptr().add(kbase), kv_rs, 1, scale);
                        // dK_h (nk, hd) += scale · dS^T (nk, qn) Q (qn, hd)
                        gemm_strided(nk, hd, qn, dkh.as_mut_ptr(), hd as isize, 1, true, dp.as_ptr(), 1, nk as isize, q.as_ptr().add(qbase), q_rs, 1, scale);
                    }
                }
            });
        });
        // sum the partials of the heads of each group, in head order
        let dkp = SharedMut(dk.as_mut_ptr());
        let dvp = SharedMut(dv.as_mut_ptr());
        (0..b * t).into_par_iter().for_each(|bt| {
            let bi = bt / t;
            let ti = bt % t;
            for g in 0..nkv {
                let o = (bt * nkv + g) * hd;
                // SAFETY: row (bi, ti) of dk/dv belongs to this task only
                let (dkr, dvr) = unsafe { (dkp.slice(o, hd), dvp.slice(o, hd)) };
                dkr.fill(0.0);
                dvr.fill(0.0);
                for h in g * group..(g + 1) * group {
                    let po = ((bi * nh + h) * t + ti) * hd;
                    for j in 0..hd {
                        dkr[j] += pk[po + j];
                        dvr[j] += pv[po + j];
                    }
                }
            }
        });
    });
    Ok(())
}

/// Naive reference (f64, full score matrix) for tests: returns (out, lse).
pub fn attention_naive_f64(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> (Vec<f64>, Vec<f64>) {
    let AttnShape { b, tq, tkv, cap, n_head: nh, n_kv_head: nkv, hd } = s;
    let group = nh / nkv;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0f64; b * tq * nh * hd];
    let mut lse = vec![0f64; b * nh * tq];
    for bi in 0..b {
        for h in 0..nh {
            let g = h / group;
            for i in 0..tq {
                let vis = tkv - tq + i + 1;
                let qo = ((bi * tq + i) * nh + h) * hd;
                let sc: Vec<f64> = (0..vis)
                    .map(|j| {
                        let ko = ((bi * cap + j) * nkv + g) * hd;
                        (0..hd).map(|d| q[qo + d] as f64 * k[ko + d] as f64).sum::<f64>() * scale
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                lse[(bi * nh + h) * tq + i] = m + sum.ln();
                for (j, x) in sc.iter().enumerate() {
                    let p = (x - m).exp() / sum;
                    let vo = ((bi * cap + j) * nkv + g) * hd;
                    for d in 0..hd {
                        out[qo + d] += p * v[vo + d] as f64;
                    }
                }
            }
        }
    }
    (out, lse)
}

/// One query row of attention against the `nk` keys it sees (decoding: a
/// block of one row): the scores `scale · q · k_j` and the weighted sum
/// `Σ_j p_j v_j`. Two paths, chosen at run time: AVX-512 (head widths that
/// are multiples of 16 up to 128: the query, or the output, stays in
/// registers and each key or value row is read once; the sums of four keys
/// share one reduction tree) and the generic loops ([`crate::dot`],
/// [`crate::axpy`]), which run everywhere else and are the fallback. Either
/// path's result for a row depends on that row's query and keys only (the
/// same instructions in the same order whatever the batch), so a sequence
/// attends the same way in any batch; the two paths differ by float32
/// rounding only.
pub(crate) mod decode {
    /// Which code computes a decode row.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(crate) enum Path {
        /// AVX-512F+VL, where the head width allows (else `Generic`)
        Avx512,
        /// the generic loops
        Generic,
    }

    /// Head widths up to 16·MAX_NV take the AVX-512 path.
    #[cfg(target_arch = "x86_64")]
    const MAX_NV: usize = 8;

    /// The path this CPU runs.
    pub(crate) fn path() -> Path {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512vl") {
                return Path::Avx512;
            }
        }
        Path::Generic
    }

    /// Whether `p` runs the vector code for `nk` rows of width `hd`,
    /// stride `rs`, inside a buffer of `len` elements.
    fn vector(p: Path, nk: usize, hd: usize, rs: usize, len: usize) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            // the CPU's features are checked here too, so a path asked for
            // where the CPU lacks it falls back instead of faulting
            p == Path::Avx512 && nk > 0 && hd.is_multiple_of(16) && hd <= 16 * MAX_NV && (nk - 1) * rs + hd <= len && path() == Path::Avx512
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (p, nk, hd, rs, len);
            false
        }
    }

    /// `sc[j] = scale · (q · k_j)` for the key rows `k[j·rs ..][.. q.len()]`,
    /// `j < sc.len()` (they must lie inside `k`).
    pub(crate) fn scores(p: Path, sc: &mut [f32], q: &[f32], k: &[f32], rs: usize, scale: f32) {
        let hd = q.len();
        if vector(p, sc.len(), hd, rs, k.len()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `vector` checked that the CPU has AVX-512F+VL, hd = 16·nv
            // with nv <= 8, and that rows 0..sc.len() of k (stride rs) hold hd
            // elements
            unsafe {
                x86::scores(sc, q, k, rs, scale)
            };
            return;
        }
        for (j, x) in sc.iter_mut().enumerate() {
            let kr = j * rs;
            *x = crate::dot(q, &k[kr..kr + hd]) * scale;
        }
    }

    /// `o = Σ_j p_j v_j` (overwritten) for the value rows
    /// `v[j·rs ..][.. o.len()]`, `j < p.len()` (they must lie inside `v`).
    pub(crate) fn weighted_sum(path: Path, o: &mut [f32], p: &[f32], v: &[f32], rs: usize) {
        let hd = o.len();
        if vector(path, p.len(), hd, rs, v.len()) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `scores`, for the rows of v
            unsafe {
                x86::weighted_sum(o, p, v, rs)
            };
            return;
        }
        o.fill(0.0);
        for (j, &pj) in p.iter().enumerate() {
            let vr = j * rs;
            crate::axpy(pj, &v[vr..vr + hd], o);
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use crate::matmul_rows::hsum16x4;
        use std::arch::x86_64::*;

        /// # Safety
        /// AVX-512F and VL; `q.len() = 16·nv`, `1 <= nv <= 8`; rows
        /// `0..sc.len()` of `k` (stride `rs`) hold `q.len()` elements.
        pub(super) unsafe fn scores(sc: &mut [f32], q: &[f32], k: &[f32], rs: usize, scale: f32) {
            let (qp, kp) = (q.as_ptr(), k.as_ptr());
            match q.len() / 16 {
                1 => scores_nv::<1>(sc, qp, kp, rs, scale),
                2 => scores_nv::<2>(sc, qp, kp, rs, scale),
                3 => scores_nv::<3>(sc, qp, kp, rs, scale),
                4 => scores_nv::<4>(sc, qp, kp, rs, scale),
                5 => scores_nv::<5>(sc, qp, kp, rs, scale),
                6 => scores_nv::<6>(sc, qp, kp, rs, scale),
                7 => scores_nv::<7>(sc, qp, kp, rs, scale),
                _ => scores_nv::<8>(sc, qp, kp, rs, scale),
            }
        }

        /// # Safety
        /// As [`scores`], with `o.len() = 16·nv` and `p.len()` rows of `v`.
        pub(super) unsafe fn weighted_sum(o: &mut [f32], p: &[f32], v: &[f32], rs: usize) {
            let (op, vp) = (o.as_mut_ptr(), v.as_ptr());
            match o.len() / 16 {
                1 => weighted_sum_nv::<1>(op, p, vp, rs),
                2 => weighted_sum_nv::<2>(op, p, vp, rs),
                3 => weighted_sum_nv::<3>(op, p, vp, rs),
                4 => weighted_sum_nv::<4>(op, p, vp, rs),
                5 => weighted_sum_nv::<5>(op, p, vp, rs),
                6 => weighted_sum_nv::<6>(op, p, vp, rs),
                7 => weighted_sum_nv::<7>(op, p, vp, rs),
                _ => weighted_sum_nv::<8>(op, p, vp, rs),
            }
        }

        /// Scores of keys `j..j+4` (lanes past `n` of the four are zero
        /// vectors, whose sums are not stored): each key's 16-lane products
        /// summed over the head width in order, then [`hsum16x4`]'s tree
        /// (lane by lane the same for any of the four), then `· scale`.
        ///
        /// # Safety
        /// As [`scores`]; `j + n <= sc.len()`, `1 <= n <= 4`.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[allow(clippy::needless_range_loop)]
        #[inline]
        unsafe fn four<const NV: usize>(sc: *mut f32, qv: &[__m512; NV], k: *const f32, rs: usize, scale: __m128, j: usize, n: usize) {
            let mut a = [_mm512_setzero_ps(); 4];
            for u in 0..n {
                let kr = k.add((j + u) * rs);
                let mut s = _mm512_mul_ps(qv[0], _mm512_loadu_ps(kr));
                for c in 1..NV {
                    s = _mm512_fmadd_ps(qv[c], _mm512_loadu_ps(kr.add(16 * c)), s);
                }
                a[u] = s;
            }
            let r = _mm_mul_ps(hsum16x4(a[0], a[1], a[2], a[3]), scale);
            if n == 4 {
                _mm_storeu_ps(sc.add(j), r);
            } else {
                let mut t = [0f32; 4];
                _mm_storeu_ps(t.as_mut_ptr(), r);
                for u in 0..n {
                    *sc.add(j + u) = t[u];
                }
            }
        }

        /// # Safety
        /// As [`scores`] with `q.len() = 16·NV`.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[allow(clippy::needless_range_loop)]
        unsafe fn scores_nv<const NV: usize>(sc: &mut [f32], q: *const f32, k: *const f32, rs: usize, scale: f32) {
            let mut qv = [_mm512_setzero_ps(); NV];
            for c in 0..NV {
                qv[c] = _mm512_loadu_ps(q.add(16 * c));
            }
            let (nk, s, scp) = (sc.len(), _mm_set1_ps(scale), sc.as_mut_ptr());
            let mut j = 0;
            // eight keys per turn: two independent groups of four in flight
            while j + 8 <= nk {
                four::<NV>(scp, &qv, k, rs, s, j, 4);
                four::<NV>(scp, &qv, k, rs, s, j + 4, 4);
                j += 8;
            }
            while j < nk {
                let n = (nk - j).min(4);
                four::<NV>(scp, &qv, k, rs, s, j, n);
                j += n;
            }
        }

        /// `o = Σ_j p_j v_j`: even keys into one set of accumulators, odd
        /// keys into another (two FMA chains per output vector), then their
        /// sum.
        ///
        /// # Safety
        /// As [`weighted_sum`] with `o.len() = 16·NV`.
        #[target_feature(enable = "avx512f,avx512vl")]
        #[allow(clippy::needless_range_loop)]
        unsafe fn weighted_sum_nv<const NV: usize>(o: *mut f32, p: &[f32], v: *const f32, rs: usize) {
            let mut acc = [[_mm512_setzero_ps(); NV]; 2];
            let nk = p.len();
            let mut j = 0;
            while j + 2 <= nk {
                let (b0, b1) = (_mm512_set1_ps(p[j]), _mm512_set1_ps(p[j + 1]));
                let (v0, v1) = (v.add(j * rs), v.add((j + 1) * rs));
                for c in 0..NV {
                    acc[0][c] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(v0.add(16 * c)), acc[0][c]);
                    acc[1][c] = _mm512_fmadd_ps(b1, _mm512_loadu_ps(v1.add(16 * c)), acc[1][c]);
                }
                j += 2;
            }
            if j < nk {
                let (b0, v0) = (_mm512_set1_ps(p[j]), v.add(j * rs));
                for c in 0..NV {
                    acc[0][c] = _mm512_fmadd_ps(b0, _mm512_loadu_ps(v0.add(16 * c)), acc[0][c]);
                }
            }
            for c in 0..NV {
                _mm512_storeu_ps(o.add(16 * c), _mm512_add_ps(acc[0][c], acc[1][c]));
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A float32 sum of n terms in any order is within
        /// `n · 2^-24 · Σ|term|` of the exact sum (Higham, Accuracy and
        /// Stability, 3.1; FMA only removes roundings): the two paths and
        /// the float64 reference differ by their orders of summation only.
        const SUM_ERR_PER_TERM: f64 = 1.0 / (1u64 << 24) as f64;

        fn rnd(s: &mut u64) -> f32 {
            *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((*s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        }

        /// Both paths (the vector one where this CPU has it) against a
        /// float64 sum, at head widths that take the vector path (16..128)
        /// and that do not (8, 24, 136), key counts around the groups of
        /// four and eight, a row stride wider than the head.
        #[test]
        fn decode_paths_match_f64() {
            let mut seed = 11u64;
            let mut paths = vec![Path::Generic];
            if path() == Path::Avx512 {
                paths.push(Path::Avx512);
            }
            let mut vector_runs = 0;
            for hd in [8, 16, 24, 32, 48, 64, 80, 96, 112, 128, 136] {
                for nk in [1, 2, 3, 4, 5, 7, 8, 9, 13, 37, 100] {
                    let rs = hd * 2 + 16;
                    let q: Vec<f32> = (0..hd).map(|_| rnd(&mut seed)).collect();
                    let k: Vec<f32> = (0..(nk - 1) * rs + hd).map(|_| rnd(&mut seed)).collect();
                    let p: Vec<f32> = (0..nk).map(|_| rnd(&mut seed).abs()).collect();
                    let scale = 1.0 / (hd as f32).sqrt();
                    for &pa in &paths {
                        vector_runs += vector(pa, nk, hd, rs, k.len()) as usize;
                        let mut sc = vec![f32::NAN; nk];
                        scores(pa, &mut sc, &q, &k, rs, scale);
                        for (j, &got) in sc.iter().enumerate() {
                            let terms = (0..hd).map(|d| q[d] as f64 * k[j * rs + d] as f64);
                            let want: f64 = terms.clone().sum::<f64>() * scale as f64;
                            let abs: f64 = terms.map(f64::abs).sum::<f64>() * scale as f64;
                            let tol = (hd + 1) as f64 * SUM_ERR_PER_TERM * abs + 1e-30;
                            assert!((got as f64 - want).abs() <= tol, "{pa:?} score hd {hd} nk {nk} key {j}: {got} vs {want}");
                        }
                        let mut o = vec![f32::NAN; hd];
                        weighted_sum(pa, &mut o, &p, &k, rs);
                        for (d, &got) in o.iter().enumerate() {
                            let terms = (0..nk).map(|j| p[j] as f64 * k[j * rs + d] as f64);
                            let want: f64 = terms.clone().sum();
                            let abs: f64 = terms.map(f64::abs).sum();
                            let tol = nk as f64 * SUM_ERR_PER_TERM * abs + 1e-30;
                            assert!((got as f64 - want).abs() <= tol, "{pa:?} weighted sum hd {hd} nk {nk} lane {d}: {got} vs {want}");
                        }
                    }
                }
            }
            // on an AVX-512 machine the vector code ran (8, 24 and 136 fall back)
            assert_eq!(vector_runs > 0, paths.len() == 2);
        }

        /// The vector path against the generic one on the same data: equal
        /// within the bound above for both (their difference is at most the
        /// sum of the two errors).
        #[test]
        fn decode_vector_path_matches_generic() {
            if path() != Path::Avx512 {
                return; // nothing to compare on this CPU: decode_paths_match_f64 covers the generic path
            }
            let mut seed = 5u64;
            for (hd, nk) in [(64, 138), (128, 31), (16, 6)] {
                let rs = hd * 4;
                let q: Vec<f32> = (0..hd).map(|_| rnd(&mut seed)).collect();
                let k: Vec<f32> = (0..(nk - 1) * rs + hd).map(|_| rnd(&mut seed)).collect();
                let p: Vec<f32> = (0..nk).map(|_| rnd(&mut seed).abs()).collect();
                let (mut a, mut b) = (vec![0f32; nk], vec![0f32; nk]);
                scores(Path::Avx512, &mut a, &q, &k, rs, 0.125);
                scores(Path::Generic, &mut b, &q, &k, rs, 0.125);
                for j in 0..nk {
                    let abs: f64 = (0..hd).map(|d| (q[d] as f64 * k[j * rs + d] as f64).abs()).sum::<f64>() * 0.125;
                    let tol = 2.0 * (hd + 1) as f64 * SUM_ERR_PER_TERM * abs;
                    assert!(((a[j] - b[j]) as f64).abs() <= tol, "hd {hd} key {j}: {} vs {}", a[j], b[j]);
                }
                let (mut oa, mut ob) = (vec![0f32; hd], vec![0f32; hd]);
                weighted_sum(Path::Avx512, &mut oa, &p, &k, rs);
                weighted_sum(Path::Generic, &mut ob, &p, &k, rs);
                for d in 0..hd {
                    let abs: f64 = (0..nk).map(|j| (p[j] as f64 * k[j * rs + d] as f64).abs()).sum();
                    let tol = 2.0 * nk as f64 * SUM_ERR_PER_TERM * abs;
                    assert!(((oa[d] - ob[d]) as f64).abs() <= tol, "hd {hd} lane {d}: {} vs {}", oa[d], ob[d]);
                }
            }
        }
    }
}

//! gpu-check rows of the fused projections (issue 17): `qkv_fwd` (one
//! product over the stacked `[Wq; Wk; Wv]`, then the split kernel that
//! rotates q and k) and `qkv_bwd` (the pack kernel, then one product each
//! for dx and dW), `mlp_in_fwd` and `mlp_in_bwd` (the same with
//! `[Wgate; Wup]` and SwiGLU), each against the CPU backend's unfused
//! default (the trait's composition of products, RoPE and SwiGLU in f32).
//!
//! The device stores bf16 where the CPU keeps f32 (the packed product
//! before RoPE/SwiGLU, the split outputs, the packed gradients, dx), so each
//! output is compared under flash-attn's rule against an explicit naive
//! reference: the CPU's own f32 steps rounded to bf16 at those points
//! ([`PROJ_FACTOR`]); the f32 weight gradients with [`PROJ_FACTOR`] times
//! the naive error plus the f32 sum noise of the matmul rows (`F32_SUM`).
//! On the CPU layer also: the fused kernels equal the device's own unfused
//! kernels on the same product bit for bit (the packed scratch the op leaves
//! holds that product; the layer compiles without FMA contraction). A
//! scratch too short for the fused path takes the unfused ops: on a GPU
//! compared with the CPU as the fused path is, on the layer (which refuses
//! their `matmul`) shown by that refusal.

use super::*;

/// The fused projections' outputs against the CPU's f32 path may err by at
/// most this times the naive bf16 reference's error (flash-attn's forward
/// factor, as the matmul rows): the device rounds at the naive reference's
/// points, and differs from it only by the products' f32 summation order,
/// which now and then moves a stored value across a bf16 rounding boundary
/// (one bf16 step on that element, the size of the naive error itself).
const PROJ_FACTOR: f64 = FA_FWD;

/// Extra elements of the scratch the rows pass (the model's is sized for the
/// wider of the two projections): the op must use its first `n·width` only.
const SCRATCH_SLACK: usize = 40;

/// `n` rows of `parts` (row-major, each `n × widths[i]`) side by side:
/// `(n, Σ widths)`.
fn pack_rows(parts: &[&[f32]], widths: &[usize], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n * widths.iter().sum::<usize>());
    for r in 0..n {
        for (p, &w) in parts.iter().zip(widths) {
            out.extend_from_slice(&p[r * w..(r + 1) * w]);
        }
    }
    out
}

/// The inverse of [`pack_rows`]: the column blocks of `(n, Σ widths)`.
fn split_rows(packed: &[f32], widths: &[usize], n: usize) -> Vec<Vec<f32>> {
    let total: usize = widths.iter().sum();
    let mut out: Vec<Vec<f32>> = widths.iter().map(|&w| Vec::with_capacity(n * w)).collect();
    for r in 0..n {
        let mut off = r * total;
        for (o, &w) in out.iter_mut().zip(widths) {
            o.extend_from_slice(&packed[off..off + w]);
            off += w;
        }
    }
    out
}

/// A zeroed Act buffer of `len` (a CPU output).
fn zeros<B: Backend>(be: &B, len: usize) -> Result<B::Buf> {
    put(be, &vec![0.0; len], BufKind::Act)
}

/// A NaN-filled Act buffer of `len` (a device output: NaN never passes).
fn nans<B: Backend>(be: &B, len: usize) -> Result<B::Buf> {
    nan_buf(be, len, BufKind::Act)
}

fn round_all(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&e| bfr(e)).collect()
}

const EXACT: Rule = Rule::Elem { rtol: 0.0, atol: 0.0 };

impl<G: Dut> Checker<G> {
    /// `op(a)·op(b)` on the CPU backend, f32 (`c0` the initial value when
    /// accumulating).
    fn cpu_product(&self, a: &[f32], b: &[f32], g: Gemm, c0: Option<&[f32]>) -> anyhow::Result<Vec<f32>> {
        let (ca, cb) = (put(&self.cpu, a, BufKind::Act)?, put(&self.cpu, b, BufKind::Act)?);
        let init = c0.map_or_else(|| vec![0.0; g.m * g.n], <[f32]>::to_vec);
        let mut cc = put(&self.cpu, &init, BufKind::F32)?;
        self.cpu.matmul(vm(&mut cc), v(&ca), v(&cb), g)?;
        Ok(get(&self.cpu, &cc)?)
    }

    /// RoPE (or its inverse) of `x` on the CPU backend (dense or ragged), f32.
    fn cpu_rope(&self, x: &[f32], table: &CpuBuf, s: RopeShape, r: Option<Ragged>, inverse: bool) -> anyhow::Result<Vec<f32>> {
        let mut cx = put(&self.cpu, x, BufKind::Act)?;
        match (r, inverse) {
            (None, false) => self.cpu.rope_fwd(vm(&mut cx), v(table), s)?,
            (None, true) => self.cpu.rope_bwd(vm(&mut cx), v(table), s)?,
            (Some(r), false) => self.cpu.rope_fwd_ragged(vm(&mut cx), v(table), s, r)?,
            (Some(r), true) => self.cpu.rope_bwd_ragged(vm(&mut cx), v(table), s, r)?,
        }
        Ok(get(&self.cpu, &cx)?)
    }

    /// RoPE (or its inverse) of `x` on the device under test.
    fn dut_rope(&self, x: &[f32], table: &G::Buf, s: RopeShape, r: Option<Ragged>, inverse: bool) -> anyhow::Result<Vec<f32>> {
        let mut gx = put(&self.gpu, x, BufKind::Act)?;
        match (r, inverse) {
            (None, false) => self.gpu.rope_fwd(vm(&mut gx), v(table), s)?,
            (None, true) => self.gpu.rope_bwd(vm(&mut gx), v(table), s)?,
            (Some(r), false) => self.gpu.rope_fwd_ragged(vm(&mut gx), v(table), s, r)?,
            (Some(r), true) => self.gpu.rope_bwd_ragged(vm(&mut gx), v(table), s, r)?,
        }
        Ok(get(&self.gpu, &gx)?)
    }

    /// The f32 weight gradient `dw` (`+=`) of a fused backward against the
    /// CPU's (`r`), per block of rows of the stacked weight (`parts`: name
    /// and rows), with the naive reference `naive` (the product of the
    /// bf16-rounded packed gradient): PROJ_FACTOR times its error plus the
    /// f32 sum noise of the matmul rows.
    fn cmp_dw(&mut self, tag: &str, g: &[f32], r: &[f32], naive: &[f32], parts: &[(&str, usize)], c: usize) {
        let mut off = 0;
        for &(name, rows) in parts {
            let span = off..off + rows * c;
            let (gs, rs, ns) = (&g[span.clone()], &r[span.clone()], &naive[span]);
            let max_ref = rs.iter().fold(0f64, |m, &x| m.max((x as f64).abs()));
            let naive_err = ns.iter().zip(rs).fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
            let limit = PROJ_FACTOR * naive_err + F32_SUM * max_ref;
            self.cmp(format!("{tag}: dw[{name}] (+=)"), gs, rs, Rule::MaxAbs { limit });
            off += rows * c;
        }
    }

    /// A forward whose scratch is too short for the fused path takes the
    /// unfused composition. On a GPU its rows compare it with the CPU; on the
    /// CPU layer, which refuses the composition's `matmul` (cuBLASLt), that
    /// refusal is the evidence of the path (the fused path runs there).
    fn record_unfused_refused(&mut self, tag: &str, res: Result<()>) {
        let took = matches!(&res, Err(RtError::Op { op: "matmul", .. }));
        self.record(format!("{tag} fwd: a short scratch takes the unfused ops (the layer refuses their matmul)"), if took { 0.0 } else { 1.0 }, 0.0);
    }

    /// `qkv_fwd` at shape `s` (a ragged batch when `r` is given; `invariant`
    /// as at inference), then, when `bwd`, `qkv_bwd` at the same shape;
    /// `fallback`: also the forward with a scratch too short for the fused
    /// path (the unfused ops).
    pub(in crate::cmd::gpu_check) fn qkv(
        &mut self,
        s: QkvShape,
        r: Option<(&[u32], &[u32])>,
        invariant: bool,
        bwd: bool,
        fallback: bool,
    ) -> anyhow::Result<()> {
        let QkvShape { b, t, c, n_head: nh, n_kv_head: nkv, hd, pos0 } = s;
        let (n, qd, kvd, wd) = (s.rows(), s.q_dim(), s.kv_dim(), s.width());
        let rg = r.map(|(p, l)| Ragged { pos0: p, len: l });
        let tag = match r {
            None => format!("qkv b={b} t={t} c={c} hd={hd} h={nh} kv={nkv} pos0={pos0}{}", if invariant { " invariant" } else { "" }),
            Some((p, l)) => format!("qkv ragged b={b} t={t} c={c} hd={hd} h={nh} kv={nkv} pos0={p:?} len={l:?}{}", if invariant { " invariant" } else { "" }),
        };
        let max_pos = pos0 + t + r.map_or(0, |(p, _)| p.iter().copied().max().unwrap_or(0) as usize);
        let table = rope_table(max_pos, hd, 10000.0);
        let x = self.randn(n * c, 1.0);
        let w = self.randn(wd * c, 1.0 / (c as f32).sqrt());
        let (ct, cx, cw) = (put(&self.cpu, &table, BufKind::F32)?, put(&self.cpu, &x, BufKind::Act)?, put(&self.cpu, &w, BufKind::Param)?);
        let (gt, gx, gw) = (put(&self.gpu, &table, BufKind::F32)?, put(&self.gpu, &x, BufKind::Act)?, put(&self.gpu, &w, BufKind::Param)?);
        let (mut cq, mut ck, mut cv, mut cscr) = (zeros(&self.cpu, n * qd)?, zeros(&self.cpu, n * kvd)?, zeros(&self.cpu, n * kvd)?, zeros(&self.cpu, 0)?);
        self.cpu.qkv_fwd(vm(&mut cq), vm(&mut ck), vm(&mut cv), vm(&mut cscr), v(&cx), v(&cw), v(&ct), s, rg, invariant)?;
        let (mut gq, mut gk, mut gv, mut gscr) =
            (nans(&self.gpu, n * qd)?, nans(&self.gpu, n * kvd)?, nans(&self.gpu, n * kvd)?, nans(&self.gpu, n * wd + SCRATCH_SLACK)?);
        self.gpu.qkv_fwd(vm(&mut gq), vm(&mut gk), vm(&mut gv), vm(&mut gscr), v(&gx), v(&gw), v(&gt), s, rg, invariant)?;
        // the naive reference: the CPU's product rounded to bf16, split, RoPE in f32, rounded
        let prod = round_all(&self.cpu_product(&x, &w, Gemm { m: n, n: wd, k: c, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite }, None)?);
        let parts = split_rows(&prod, &[qd, kvd, kvd], n);
        let nq = round_all(&self.cpu_rope(&parts[0], &ct, s.rope_q(), rg, false)?);
        let nk = round_all(&self.cpu_rope(&parts[1], &ct, s.rope_k(), rg, false)?);
        let outs = [get(&self.gpu, &gq)?, get(&self.gpu, &gk)?, get(&self.gpu, &gv)?];
        let refs = [get(&self.cpu, &cq)?, get(&self.cpu, &ck)?, get(&self.cpu, &cv)?];
        for (i, (name, naive)) in [("q", &nq), ("k", &nk), ("v", &parts[2])].into_iter().enumerate() {
            self.cmp_naive(format!("{tag} fwd: {name}"), &outs[i], &refs[i], naive, PROJ_FACTOR);
        }
        if self.shapes == Shapes::Sim {
            // the split kernel = the device's rope_fwd on the packed product the op left in its scratch
            let packed = get(&self.gpu, &gscr)?;
            let dev = split_rows(&packed[..n * wd], &[qd, kvd, kvd], n);
            let uq = self.dut_rope(&dev[0], &gt, s.rope_q(), rg, false)?;
            let uk = self.dut_rope(&dev[1], &gt, s.rope_k(), rg, false)?;
            for (i, (name, u)) in [("q", &uq), ("k", &uk), ("v", &dev[2])].into_iter().enumerate() {
                self.cmp(format!("{tag} fwd: {name} = the device's rope on its product (bit-exact)"), &outs[i], u, EXACT);
            }
        }
        if fallback {
            // a scratch too short (not sized by fuses_projections): the unfused ops
            let (mut fq, mut fk, mut fv, mut fscr) =
                (nans(&self.gpu, n * qd)?, nans(&self.gpu, n * kvd)?, nans(&self.gpu, n * kvd)?, nans(&self.gpu, n * wd - 1)?);
            let res = self.gpu.qkv_fwd(vm(&mut fq), vm(&mut fk), vm(&mut fv), vm(&mut fscr), v(&gx), v(&gw), v(&gt), s, rg, invariant);
            if self.gpu.has_blas() {
                res?;
                let f = [get(&self.gpu, &fq)?, get(&self.gpu, &fk)?, get(&self.gpu, &fv)?];
                for (i, (name, naive)) in [("q", &nq), ("k", &nk), ("v", &parts[2])].into_iter().enumerate() {
                    self.cmp_naive(format!("{tag} fwd, a short scratch (the unfused ops): {name}"), &f[i], &refs[i], naive, PROJ_FACTOR);
                }
            } else {
                self.record_unfused_refused(&tag, res);
            }
        }
        if !bwd {
            return Ok(());
        }
        let (dq, dk, dv) = (self.randn(n * qd, 1.0), self.randn(n * kvd, 1.0), self.randn(n * kvd, 1.0));
        let dw0 = self.randn(wd * c, 1.0);
        let (mut cdx, mut cdw) = (zeros(&self.cpu, n * c)?, put(&self.cpu, &dw0, BufKind::F32)?);
        let (mut cdq, mut cdk, cdv) = (put(&self.cpu, &dq, BufKind::Act)?, put(&self.cpu, &dk, BufKind::Act)?, put(&self.cpu, &dv, BufKind::Act)?);
        self.cpu.qkv_bwd(vm(&mut cdx), vm(&mut cdw), vm(&mut cdq), vm(&mut cdk), v(&cdv), vm(&mut cscr), v(&cx), v(&cw), v(&ct), s, rg)?;
        let (mut gdx, mut gdw) = (nans(&self.gpu, n * c)?, put(&self.gpu, &dw0, BufKind::F32)?);
        let (mut gdq, mut gdk, gdv) = (put(&self.gpu, &dq, BufKind::Act)?, put(&self.gpu, &dk, BufKind::Act)?, put(&self.gpu, &dv, BufKind::Act)?);
        let mut gscr = nans(&self.gpu, n * wd + SCRATCH_SLACK)?;
        self.gpu.qkv_bwd(vm(&mut gdx), vm(&mut gdw), vm(&mut gdq), vm(&mut gdk), v(&gdv), vm(&mut gscr), v(&gx), v(&gw), v(&gt), s, rg)?;
        // naive: the rotated-back gradients rounded to bf16, packed, the two products in f32 (dx rounded)
        let ndq = round_all(&self.cpu_rope(&dq, &ct, s.rope_q(), rg, true)?);
        let ndk = round_all(&self.cpu_rope(&dk, &ct, s.rope_k(), rg, true)?);
        let gpk = pack_rows(&[&ndq, &ndk, &dv], &[qd, kvd, kvd], n);
        let ndx = round_all(&self.cpu_product(&gpk, &w, Gemm { m: n, n: c, k: wd, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite }, None)?);
        let ndw = self.cpu_product(&gpk, &x, Gemm { m: wd, n: c, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate }, Some(&dw0))?;
        let (g, r) = (get(&self.gpu, &gdx)?, get(&self.cpu, &cdx)?);
        self.cmp_naive(format!("{tag} bwd: dx"), &g, &r, &ndx, PROJ_FACTOR);
        let (g, r) = (get(&self.gpu, &gdw)?, get(&self.cpu, &cdw)?);
        self.cmp_dw(&format!("{tag} bwd"), &g, &r, &ndw, &[("q", qd), ("k", kvd), ("v", kvd)], c);
        if self.shapes == Shapes::Sim {
            // the pack kernel = the device's rope_bwd on dq, dk, beside dv
            let (uq, uk) = (self.dut_rope(&dq, &gt, s.rope_q(), rg, true)?, self.dut_rope(&dk, &gt, s.rope_k(), rg, true)?);
            let want = pack_rows(&[&uq, &uk, &dv], &[qd, kvd, kvd], n);
            let packed = get(&self.gpu, &gscr)?;
            self.cmp(format!("{tag} bwd: packed gradient = the device's rope_bwd (bit-exact)"), &packed[..n * wd], &want, EXACT);
        }
        Ok(())
    }

    /// `mlp_in_fwd` and `mlp_in_bwd` at `n` rows, intermediate `i`, width `c`;
    /// `fallback` as in [`Self::qkv`].
    pub(in crate::cmd::gpu_check) fn mlp_in(&mut self, n: usize, i: usize, c: usize, fallback: bool) -> anyhow::Result<()> {
        let tag = format!("mlp_in n={n} i={i} c={c}");
        let x = self.randn(n * c, 1.0);
        let w = self.randn(2 * i * c, 1.0 / (c as f32).sqrt());
        let (cx, cw, gx, gw) =
            (put(&self.cpu, &x, BufKind::Act)?, put(&self.cpu, &w, BufKind::Param)?, put(&self.gpu, &x, BufKind::Act)?, put(&self.gpu, &w, BufKind::Param)?);
        let (mut cg, mut cu, mut ch, mut cscr) = (zeros(&self.cpu, n * i)?, zeros(&self.cpu, n * i)?, zeros(&self.cpu, n * i)?, zeros(&self.cpu, 0)?);
        self.cpu.mlp_in_fwd(vm(&mut cg), vm(&mut cu), vm(&mut ch), vm(&mut cscr), v(&cx), v(&cw), (n, i, c), false)?;
        let (mut gg, mut gu, mut gh, mut gscr) =
            (nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?, nans(&self.gpu, 2 * n * i + SCRATCH_SLACK)?);
        self.gpu.mlp_in_fwd(vm(&mut gg), vm(&mut gu), vm(&mut gh), vm(&mut gscr), v(&gx), v(&gw), (n, i, c), false)?;
        // naive: the CPU's product rounded, split, SwiGLU in f32, rounded
        let prod = round_all(&self.cpu_product(&x, &w, Gemm { m: n, n: 2 * i, k: c, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite }, None)?);
        let parts = split_rows(&prod, &[i, i], n);
        let (pg, pu) = (put(&self.cpu, &parts[0], BufKind::Act)?, put(&self.cpu, &parts[1], BufKind::Act)?);
        let mut nh = zeros(&self.cpu, n * i)?;
        self.cpu.swiglu_fwd(vm(&mut nh), v(&pg), v(&pu))?;
        let nh = round_all(&get(&self.cpu, &nh)?);
        let outs = [get(&self.gpu, &gg)?, get(&self.gpu, &gu)?, get(&self.gpu, &gh)?];
        let refs = [get(&self.cpu, &cg)?, get(&self.cpu, &cu)?, get(&self.cpu, &ch)?];
        for (j, (name, naive)) in [("gate", &parts[0]), ("up", &parts[1]), ("h", &nh)].into_iter().enumerate() {
            self.cmp_naive(format!("{tag} fwd: {name}"), &outs[j], &refs[j], naive, PROJ_FACTOR);
        }
        if self.shapes == Shapes::Sim {
            // gate, up = the packed product the op left in its scratch; h = the device's swiglu_fwd on them
            let packed = get(&self.gpu, &gscr)?;
            let dev = split_rows(&packed[..2 * n * i], &[i, i], n);
            let mut uh = nans(&self.gpu, n * i)?;
            self.gpu.swiglu_fwd(vm(&mut uh), v(&gg), v(&gu))?;
            let uh = get(&self.gpu, &uh)?;
            for (j, (name, u)) in [("gate", &dev[0]), ("up", &dev[1]), ("h", &uh)].into_iter().enumerate() {
                self.cmp(format!("{tag} fwd: {name} = the device's product / swiglu_fwd (bit-exact)"), &outs[j], u, EXACT);
            }
        }
        if fallback {
            let (mut fg, mut fu, mut fh, mut fscr) = (nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?, nans(&self.gpu, 0)?);
            let res = self.gpu.mlp_in_fwd(vm(&mut fg), vm(&mut fu), vm(&mut fh), vm(&mut fscr), v(&gx), v(&gw), (n, i, c), false);
            if self.gpu.has_blas() {
                res?;
                let f = [get(&self.gpu, &fg)?, get(&self.gpu, &fu)?, get(&self.gpu, &fh)?];
                for (j, (name, naive)) in [("gate", &parts[0]), ("up", &parts[1]), ("h", &nh)].into_iter().enumerate() {
                    self.cmp_naive(format!("{tag} fwd, no scratch (the unfused ops): {name}"), &f[j], &refs[j], naive, PROJ_FACTOR);
                }
            } else {
                self.record_unfused_refused(&tag, res);
            }
        }
        // backward from fresh gate, up (bf16 values, as the forward stores them)
        let (dh, gate, up) = (self.randn(n * i, 1.0), self.randn(n * i, 2.0), self.randn(n * i, 1.0));
        let dw0 = self.randn(2 * i * c, 1.0);
        let (cdh, cgate, cup) = (put(&self.cpu, &dh, BufKind::Act)?, put(&self.cpu, &gate, BufKind::Act)?, put(&self.cpu, &up, BufKind::Act)?);
        let (mut cdx, mut cdw, mut cdg, mut cdu) =
            (zeros(&self.cpu, n * c)?, put(&self.cpu, &dw0, BufKind::F32)?, zeros(&self.cpu, n * i)?, zeros(&self.cpu, n * i)?);
        self.cpu.mlp_in_bwd(vm(&mut cdx), vm(&mut cdw), vm(&mut cdg), vm(&mut cdu), vm(&mut cscr), v(&cdh), v(&cgate), v(&cup), v(&cx), v(&cw), (n, i, c))?;
        let (gdh, ggate, gup) = (put(&self.gpu, &dh, BufKind::Act)?, put(&self.gpu, &gate, BufKind::Act)?, put(&self.gpu, &up, BufKind::Act)?);
        let (mut gdx, mut gdw, mut gdg, mut gdu) =
            (nans(&self.gpu, n * c)?, put(&self.gpu, &dw0, BufKind::F32)?, nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?);
        let mut gscr = nans(&self.gpu, 2 * n * i + SCRATCH_SLACK)?;
        self.gpu.mlp_in_bwd(vm(&mut gdx), vm(&mut gdw), vm(&mut gdg), vm(&mut gdu), vm(&mut gscr), v(&gdh), v(&ggate), v(&gup), v(&gx), v(&gw), (n, i, c))?;
        // naive: dgate, dup rounded to bf16, packed, the two products in f32 (dx rounded)
        let (mut ndg, mut ndu) = (zeros(&self.cpu, n * i)?, zeros(&self.cpu, n * i)?);
        self.cpu.swiglu_bwd(vm(&mut ndg), vm(&mut ndu), v(&cdh), v(&cgate), v(&cup))?;
        let (ndg, ndu) = (round_all(&get(&self.cpu, &ndg)?), round_all(&get(&self.cpu, &ndu)?));
        let gpk = pack_rows(&[&ndg, &ndu], &[i, i], n);
        let ndx = round_all(&self.cpu_product(&gpk, &w, Gemm { m: n, n: c, k: 2 * i, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite }, None)?);
        let ndw = self.cpu_product(&gpk, &x, Gemm { m: 2 * i, n: c, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate }, Some(&dw0))?;
        let (g, r) = (get(&self.gpu, &gdx)?, get(&self.cpu, &cdx)?);
        self.cmp_naive(format!("{tag} bwd: dx"), &g, &r, &ndx, PROJ_FACTOR);
        let (g, r) = (get(&self.gpu, &gdw)?, get(&self.cpu, &cdw)?);
        self.cmp_dw(&format!("{tag} bwd"), &g, &r, &ndw, &[("gate", i), ("up", i)], c);
        if self.shapes == Shapes::Sim {
            // the pack kernel = the device's swiglu_bwd
            let (mut ug, mut uu) = (nans(&self.gpu, n * i)?, nans(&self.gpu, n * i)?);
            self.gpu.swiglu_bwd(vm(&mut ug), vm(&mut uu), v(&gdh), v(&ggate), v(&gup))?;
            let want = pack_rows(&[&get(&self.gpu, &ug)?, &get(&self.gpu, &uu)?], &[i, i], n);
            let packed = get(&self.gpu, &gscr)?;
            self.cmp(format!("{tag} bwd: packed gradient = the device's swiglu_bwd (bit-exact)"), &packed[..2 * n * i], &want, EXACT);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_and_split_rows_are_inverse_column_blocks() {
        // 2 rows of widths 3, 1, 2
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [7.0, 8.0];
        let c = [9.0, 10.0, 11.0, 12.0];
        let p = pack_rows(&[&a, &b, &c], &[3, 1, 2], 2);
        assert_eq!(p, vec![1.0, 2.0, 3.0, 7.0, 9.0, 10.0, 4.0, 5.0, 6.0, 8.0, 11.0, 12.0]);
        let s = split_rows(&p, &[3, 1, 2], 2);
        assert_eq!(s, vec![a.to_vec(), b.to_vec(), c.to_vec()]);
    }
}

//! The fused projections on the CPU layer, as `runtime/src/cuda/backend/fused.rs`
//! does them on a GPU (the same checks, launchers and order; a scratch too
//! short takes the unfused composition, whose products the layer refuses),
//! with one difference: the products. The CUDA backend runs them on
//! cuBLASLt, which has no CPU layer (the layer's `matmul` is refused); here
//! they are a host stand-in ([`SimBackend::standin_gemm`]: the CPU's GEMM on
//! the bf16 values cuBLASLt reads, stored as cuBLASLt stores them), so that
//! `gpu-check --sim` runs the fused ops' own kernels and wiring (the
//! products' shapes and transposes, the packed layout of the scratch) end to
//! end. The stand-in is not a check of cuBLASLt: the matmul rows on a GPU are.

use super::*;

impl SimBackend {
    /// `c (=|+=) op(a)·op(b)` as [`Backend::matmul`] with cuBLASLt's
    /// numerics: operands read as bf16 (a Param's working copy; F32 rounded
    /// to bf16, as the CUDA backend's conversion), f32 accumulation (the
    /// CPU's GEMM), the result rounded once to bf16 in an Act window
    /// (after adding the old value when accumulating), f32 in an F32 one.
    pub(super) fn standin_gemm(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, g: Gemm) -> Result<()> {
        const OP: &str = "matmul (stand-in)";
        let (m, n, k) = (g.m, g.n, g.k);
        check_min_len(OP, "c", c.len, m * n)?;
        check_min_len(OP, "a", a.len, m * k)?;
        check_min_len(OP, "b", b.len, k * n)?;
        let c = c.sub(0, m * n)?;
        let (av, bv) = (self.read_bf16(a.sub(0, m * k)?)?, self.read_bf16(b.sub(0, k * n)?)?);
        let mut out = vec![0f32; m * n];
        if g.write == GradWrite::Accumulate {
            self.download(c.as_view(), &mut out)?;
        }
        let threads = std::thread::available_parallelism().map(|t| t.get()).unwrap_or(1);
        llama2_runtime::kernels::matmul::matmul_cpu(&mut out, &av, &bv, g, threads)?;
        self.upload(c, &out)
    }

    /// A window's values as a bf16 kernel reads them (see `standin_gemm`).
    fn read_bf16(&self, v: View<Self>) -> Result<Vec<f32>> {
        if v.buf.kind == BufKind::Param {
            return self.download_work(v);
        }
        let mut out = vec![0f32; v.len];
        self.download(v, &mut out)?;
        if v.buf.kind == BufKind::F32 {
            out.iter_mut().for_each(|x| *x = half::bf16::from_f32(*x).to_f32());
        }
        Ok(out)
    }

    fn proj_ragged(&self, op: &'static str, r: Option<Ragged>, table: &View<Self>, s: &QkvShape) -> Result<(Option<(SimMem, SimMem)>, usize)> {
        let max_pos = table.len / s.hd.max(1);
        match r {
            None => Ok((None, max_pos)),
            Some(r) => {
                r.check(op, s.b, s.t, max_pos)?;
                Ok((Some(self.upload_ragged(r)?), max_pos))
            }
        }
    }

    /// The forward product of a fused projection (`linear_fwd`'s product,
    /// invariant or not: one stand-in).
    fn proj_fwd_product(&self, y: ViewMut<Self>, x: View<Self>, w: View<Self>, (m, n, k): (usize, usize, usize)) -> Result<()> {
        self.standin_gemm(y, x, w, Gemm { m, n, k, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_qkv_fwd(
        &self,
        q: ViewMut<Self>,
        k: ViewMut<Self>,
        v: ViewMut<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        table: View<Self>,
        s: QkvShape,
        r: Option<Ragged>,
        invariant: bool,
    ) -> Result<()> {
        const OP: &str = "qkv_fwd";
        let (n, c, wd) = (s.rows(), s.c, s.width());
        check_len(OP, "q", q.len, n * s.q_dim())?;
        check_len(OP, "k", k.len, n * s.kv_dim())?;
        check_len(OP, "v", v.len, n * s.kv_dim())?;
        check_len(OP, "x", x.len, n * c)?;
        check_len(OP, "w", w.len, wd * c)?;
        if n == 0 {
            return Ok(());
        }
        if !fits(&scratch, n * wd) {
            return unfused::qkv_fwd(self, q, k, v, scratch, x, w, table, s, r, invariant);
        }
        let (rg, max_pos) = self.proj_ragged(OP, r, &table, &s)?;
        let mut sc = scratch.sub(0, n * wd)?;
        self.proj_fwd_product(sc.reborrow(), x, w, (n, wd, c))?;
        let (pk, _t1) = self.in_bf16(sc.as_view())?;
        let (tb, _t2) = self.in_f32(table)?;
        let qo = self.out_bf16(q, false)?;
        let ko = self.out_bf16(k, false)?;
        let vo = self.out_bf16(v, false)?;
        let p = kc::rope::QkvPtrs { packed: pk, q: qo.ptr, k: ko.ptr, v: vo.ptr };
        match &rg {
            None => kc::rope::qkv_split_rope_bf16(self.target(), &p, tb, kshape(&s))?,
            Some((rp, rl)) => kc::rope::qkv_split_rope_ragged_bf16(self.target(), &p, tb, kshape(&s), ragged_ptrs(rp, rl, s.b), max_pos)?,
        }
        self.finish_bf16(qo)?;
        self.finish_bf16(ko)?;
        self.finish_bf16(vo)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_qkv_bwd(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: View<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        table: View<Self>,
        s: QkvShape,
        r: Option<Ragged>,
    ) -> Result<()> {
        const OP: &str = "qkv_bwd";
        let (n, c, wd) = (s.rows(), s.c, s.width());
        check_len(OP, "dx", dx.len, n * c)?;
        check_len(OP, "dw", dw.len, wd * c)?;
        check_len(OP, "dq", dq.len, n * s.q_dim())?;
        check_len(OP, "dk", dk.len, n * s.kv_dim())?;
        check_len(OP, "dv", dv.len, n * s.kv_dim())?;
        check_len(OP, "x", x.len, n * c)?;
        check_len(OP, "w", w.len, wd * c)?;
        if n == 0 {
            return Ok(());
        }
        if !fits(&scratch, n * wd) {
            return unfused::qkv_bwd(self, dx, dw, dq, dk, dv, scratch, x, w, table, s, r);
        }
        let (rg, max_pos) = self.proj_ragged(OP, r, &table, &s)?;
        let mut sc = scratch.sub(0, n * wd)?;
        {
            let (dqp, _t1) = self.in_bf16(dq.as_view())?;
            let (dkp, _t2) = self.in_bf16(dk.as_view())?;
            let (dvp, _t3) = self.in_bf16(dv)?;
            let (tb, _t4) = self.in_f32(table)?;
            let o = self.out_bf16(sc.reborrow(), false)?;
            let p = kc::rope::QkvPtrs { packed: o.ptr, q: dqp, k: dkp, v: dvp };
            match &rg {
                None => kc::rope::qkv_rope_bwd_pack_bf16(self.target(), &p, tb, kshape(&s))?,
                Some((rp, rl)) => kc::rope::qkv_rope_bwd_pack_ragged_bf16(self.target(), &p, tb, kshape(&s), ragged_ptrs(rp, rl, s.b), max_pos)?,
            }
            self.finish_bf16(o)?;
        }
        self.proj_bwd_products(dx, dw, sc.as_view(), x, w, (n, wd, c))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_mlp_in_fwd(
        &self,
        gate: ViewMut<Self>,
        up: ViewMut<Self>,
        h: ViewMut<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, i, c): (usize, usize, usize),
        invariant: bool,
    ) -> Result<()> {
        const OP: &str = "mlp_in_fwd";
        check_len(OP, "gate", gate.len, n * i)?;
        check_len(OP, "up", up.len, n * i)?;
        check_len(OP, "h", h.len, n * i)?;
        check_len(OP, "x", x.len, n * c)?;
        check_len(OP, "w", w.len, 2 * i * c)?;
        if n == 0 {
            return Ok(());
        }
        if !fits(&scratch, n * 2 * i) {
            return unfused::mlp_in_fwd(self, gate, up, h, scratch, x, w, (n, i, c), invariant);
        }
        let mut sc = scratch.sub(0, n * 2 * i)?;
        self.proj_fwd_product(sc.reborrow(), x, w, (n, 2 * i, c))?;
        let (pk, _t1) = self.in_bf16(sc.as_view())?;
        let go = self.out_bf16(gate, false)?;
        let uo = self.out_bf16(up, false)?;
        let ho = self.out_bf16(h, false)?;
        kc::swiglu::swiglu_split_fwd_bf16(self.target(), go.ptr, uo.ptr, ho.ptr, pk, n, i)?;
        self.finish_bf16(go)?;
        self.finish_bf16(uo)?;
        self.finish_bf16(ho)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn fused_mlp_in_bwd(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        dgate: ViewMut<Self>,
        dup: ViewMut<Self>,
        scratch: ViewMut<Self>,
        dh: View<Self>,
        gate: View<Self>,
        up: View<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, i, c): (usize, usize, usize),
    ) -> Result<()> {
        const OP: &str = "mlp_in_bwd";
        check_len(OP, "dx", dx.len, n * c)?;
        check_len(OP, "dw", dw.len, 2 * i * c)?;
        check_len(OP, "dgate", dgate.len, n * i)?;
        check_len(OP, "dup", dup.len, n * i)?;
        check_len(OP, "dh", dh.len, n * i)?;
        check_len(OP, "gate", gate.len, n * i)?;
        check_len(OP, "up", up.len, n * i)?;
        check_len(OP, "x", x.len, n * c)?;
        check_len(OP, "w", w.len, 2 * i * c)?;
        if n == 0 {
            return Ok(());
        }
        if !fits(&scratch, n * 2 * i) {
            return unfused::mlp_in_bwd(self, dx, dw, dgate, dup, scratch, dh, gate, up, x, w, (n, i, c));
        }
        let mut sc = scratch.sub(0, n * 2 * i)?;
        {
            let (d, _t1) = self.in_bf16(dh)?;
            let (g, _t2) = self.in_bf16(gate)?;
            let (u, _t3) = self.in_bf16(up)?;
            let o = self.out_bf16(sc.reborrow(), false)?;
            kc::swiglu::swiglu_bwd_pack_bf16(self.target(), o.ptr, d, g, u, n, i)?;
            self.finish_bf16(o)?;
        }
        self.proj_bwd_products(dx, dw, sc.as_view(), x, w, (n, 2 * i, c))
    }

    fn proj_bwd_products(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        g: View<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, wd, c): (usize, usize, usize),
    ) -> Result<()> {
        self.standin_gemm(dx, g, w, Gemm { m: n, n: c, k: wd, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite })?;
        self.standin_gemm(dw, g, x, Gemm { m: wd, n: c, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate })
    }
}

/// As the CUDA backend's: an Act window of at least `len` elements.
fn fits(scratch: &ViewMut<SimBackend>, len: usize) -> bool {
    scratch.buf.kind == BufKind::Act && scratch.len >= len
}

fn kshape(s: &QkvShape) -> kc::rope::QkvRopeShape {
    kc::rope::QkvRopeShape { b: s.b, t: s.t, n_head: s.n_head, n_kv_head: s.n_kv_head, hd: s.hd, pos0: s.pos0 }
}

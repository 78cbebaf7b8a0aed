//! The CUDA backend's fused projections (issue 17): the bodies of
//! [`Backend::qkv_fwd`], [`Backend::qkv_bwd`], [`Backend::mlp_in_fwd`] and
//! [`Backend::mlp_in_bwd`] (the trait impl in the parent module calls them).
//!
//! Forward: ONE product of `x (n, c)` by the layer's stacked weight (`[Wq;
//! Wk; Wv]` or `[Wgate; Wup]`, adjacent in the parameter arena) into the
//! caller's scratch `(n, width)` (cuBLASLt through [`Backend::matmul`], or
//! [`Backend::matmul_rows`] when `invariant`, as the unfused path's
//! `linear_fwd`), then one kernel that splits the packed rows into their
//! buffers: RoPE on q and k in that pass (`qkv_split_rope_bf16`), SwiGLU's h
//! beside gate and up (`swiglu_split_fwd_bf16`). Backward: one kernel packs
//! the gradients of the products' outputs into the scratch (q and k rotated
//! back, `qkv_rope_bwd_pack_bf16`; dgate and dup from dh,
//! `swiglu_bwd_pack_bf16`), then one product for dx (`=`) and one for the
//! stacked weight's gradient (`+=`, f32).
//!
//! A scratch that is not a bf16 (Act) window of at least `n·width` elements
//! (a caller that did not size it by [`Backend::fuses_projections`]) takes
//! the unfused composition instead ([`unfused`], the trait's default).

use super::*;

/// A ragged batch's positions and lengths on the device (i32 each).
type DevRagged = (CudaSlice<i32>, CudaSlice<i32>);

/// Whether the caller's scratch holds the fused product: an Act (bf16)
/// window of at least `len` elements.
fn fits(scratch: &ViewMut<CudaBackend>, len: usize) -> bool {
    scratch.buf.kind == BufKind::Act && scratch.len >= len
}

impl CudaBackend {
    /// A ragged batch's positions and lengths checked against the table
    /// (as the unfused ragged RoPE) and uploaded; `None` for a dense batch.
    fn proj_ragged(&self, op: &'static str, r: Option<Ragged>, table: &View<Self>, s: &QkvShape) -> Result<(Option<DevRagged>, usize)> {
        let max_pos = table.len / s.hd.max(1);
        match r {
            None => Ok((None, max_pos)),
            Some(r) => {
                r.check(op, s.b, s.t, max_pos)?;
                Ok((Some(self.upload_ragged(r)?), max_pos))
            }
        }
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
        linear_fwd(self, sc.reborrow(), x, w, n, wd, c, invariant)?;
        let (pk, _t1) = self.in_bf16(sc.as_view())?;
        let (tb, _t2) = self.in_f32(table)?;
        let qo = self.out_bf16(q, false)?;
        let ko = self.out_bf16(k, false)?;
        let vo = self.out_bf16(v, false)?;
        let p = kc::rope::QkvPtrs { packed: pk, q: qo.ptr, k: ko.ptr, v: vo.ptr };
        match &rg {
            None => kc::rope::qkv_split_rope_bf16(self.target(), &p, tb, kshape(&s))?,
            Some((rp, rl)) => kc::rope::qkv_split_rope_ragged_bf16(self.target(), &p, tb, kshape(&s), self.ragged_ptrs(rp, rl, s.b), max_pos)?,
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
            // no rows: dx is empty and dW gains nothing (as the unfused products)
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
                Some((rp, rl)) => kc::rope::qkv_rope_bwd_pack_ragged_bf16(self.target(), &p, tb, kshape(&s), self.ragged_ptrs(rp, rl, s.b), max_pos)?,
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
        linear_fwd(self, sc.reborrow(), x, w, n, 2 * i, c, invariant)?;
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
        // workspace of the unfused path; the fused one packs into the scratch instead
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

    /// The two products of a fused projection's backward from the packed
    /// gradient `g (n, width)`: `dx (n, c) = g·W` (`=`) and `dw (width, c) +=
    /// gᵀ·x`.
    fn proj_bwd_products(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        g: View<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, wd, c): (usize, usize, usize),
    ) -> Result<()> {
        self.matmul(dx, g, w, Gemm { m: n, n: c, k: wd, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite })?;
        self.matmul(dw, g, x, Gemm { m: wd, n: c, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate })
    }
}

/// The kernels' shape of a fused QKV split or pack.
fn kshape(s: &QkvShape) -> kc::rope::QkvRopeShape {
    kc::rope::QkvRopeShape { b: s.b, t: s.t, n_head: s.n_head, n_kv_head: s.n_kv_head, hd: s.hd, pos0: s.pos0 }
}

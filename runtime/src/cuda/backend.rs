//! The CUDA backend: bf16 activations, fp32 master weights with a bf16
//! working copy, fp32 gradients and optimizer state, fp32 accumulation in
//! every kernel. Each op validates on the host, then enqueues our kernels
//! (`llama2_kernels::cuda`) or cuBLASLt ([`super::gemm`]) on the backend's
//! one stream (never the default stream).
//!
//! Buffer kinds: `Act` → bf16; `F32` → f32; `Param` → an f32 master copy
//! and a bf16 working copy kept equal to bf16(master) by every op that
//! writes the buffer (upload, copy, AdamW, ...). Kernels read a `Param` as
//! its bf16 copy where they take bf16 and as its master where they take
//! f32. Where an op gets a buffer of another kind than its kernel takes,
//! the window is converted through a stream-ordered temporary (correct,
//! slower; the model uses the native kinds).
//!
//! Public items: [`CudaBackend`], [`CudaBuf`], [`AttnImpl`], [`MMA_MIN_TQ`],
//! [`SPLITK_MIN_TKV`].

use super::gemm::{Blas, OutType};
use crate::backend::*;
use crate::error::{Result, RtError};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr};
use half::bf16;
use llama2_kernels::cuda::{self as kc, cross_entropy::CeMode, Bf16, DPtr, KernelStore};
use llama2_kernels::{check_len, check_min_len};
use std::sync::Arc;

mod fused;
mod setup;

/// Storage of a device buffer by kind.
enum Store {
    Bf16(CudaSlice<u16>),
    F32(CudaSlice<f32>),
    Param { master: CudaSlice<f32>, work: CudaSlice<u16> },
}

/// A device buffer.
pub struct CudaBuf {
    kind: BufKind,
    len: usize,
    st: Store,
}

impl Buffer for CudaBuf {
    type Be = CudaBackend;
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> BufKind {
        self.kind
    }
}

/// Which attention kernels (forward and backward) the backend launches.
///
/// `Auto` is a fixed rule by shape, not a measurement: v3 for tq >=
/// `MMA_MIN_TQ` (the kernels written to be the fastest: ldmatrix,
/// cp.async stages, one backward pass); below (decoding: a 128-row
/// tensor-core block would idle most of its rows) the split-K decode
/// forward when the call reads at least `SPLITK_MIN_TKV` cached keys, v1
/// otherwise. The rule looks at tq and tkv only (never the batch or the
/// GPU), so a sequence decoded alone or in a batch runs the same kernels.
/// No GPU has timed any of them yet; gpu-check checks all of them and its
/// bench times them, so the first GPU run shows whether the rule holds.
/// `LLAMA2_ATTN=simple|mma|v3|splitk|auto` overrides it at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnImpl {
    /// v3 for tq >= MMA_MIN_TQ; below, split-K for tkv >= SPLITK_MIN_TKV, else v1
    Auto,
    /// the warp-per-row f32 kernels (v1, the reference GPU path)
    Simple,
    /// the tensor-core kernels (v2) at every shape (ragged batches: v1)
    Mma,
    /// the v3 tensor-core kernels at every shape, ragged batches included
    V3,
    /// the split-K decode forward at every shape, ragged included (a
    /// forward only: the backward runs v1)
    SplitK,
}

/// Below this many query rows (decoding) `Auto` uses the warp-per-row kernel.
pub const MMA_MIN_TQ: usize = 16;

/// From this many keys per call (`tkv`; a ragged call's cache length `cap`)
/// `Auto` runs a decoding forward (tq < `MMA_MIN_TQ`) on split-K: 4 chunks
/// of `SPLITK_CHUNK` keys, so at least 4x the blocks of v1's grid, against
/// one extra launch (the combine) and the partials' round trip (1/8 of the
/// K/V bytes at 16 rows per KV head). A fixed rule, not a measurement.
pub const SPLITK_MIN_TKV: usize = 4 * kc::attention::SPLITK_CHUNK;

impl AttnImpl {
    /// The kernels a call with `tq` query rows against `tkv` keys runs
    /// under this choice (never `Auto`; `SplitK` only for forwards).
    pub fn resolve(self, tq: usize, tkv: usize) -> AttnImpl {
        match self {
            AttnImpl::Auto if tq >= MMA_MIN_TQ => AttnImpl::V3,
            AttnImpl::Auto if tkv >= SPLITK_MIN_TKV => AttnImpl::SplitK,
            AttnImpl::Auto => AttnImpl::Simple,
            x => x,
        }
    }
    /// `LLAMA2_ATTN` (simple, mma, v3, splitk, auto); unset or anything else: `Auto`.
    pub fn from_env() -> AttnImpl {
        match std::env::var("LLAMA2_ATTN").as_deref() {
            Ok("simple") => AttnImpl::Simple,
            Ok("mma") => AttnImpl::Mma,
            Ok("v3") => AttnImpl::V3,
            Ok("splitk") => AttnImpl::SplitK,
            _ => AttnImpl::Auto,
        }
    }
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ks: KernelStore,
    blas: Blas,
    attn: std::sync::Mutex<AttnImpl>,
    /// how device memory is allocated, in words
    allocator: String,
    /// pinned host memory the per-step index uploads go through
    staging: std::sync::Mutex<super::staging::Staging>,
}

#[track_caller]
fn cu_err(what: &str, e: impl std::fmt::Display) -> RtError {
    let l = std::panic::Location::caller();
    RtError::Cuda { what: what.to_string(), location: format!("{}:{}", l.file(), l.line()), msg: e.to_string() }
}

fn addr<T>(s: &CudaSlice<T>, st: &CudaStream) -> u64 {
    // event tracking is off (one stream), so the guard records nothing
    s.device_ptr(st).0
}

fn to_bf16_bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| bf16::from_f32(v).to_bits()).collect()
}

/// A bf16 window an op writes: the buffer itself, or a temporary copied
/// back by [`CudaBackend::finish_bf16`].
struct OutB<'a> {
    ptr: DPtr<Bf16>,
    tmp: Option<CudaSlice<u16>>,
    dst: ViewMut<'a, CudaBackend>,
}

/// An f32 window an op writes (see [`OutB`]).
struct OutF<'a> {
    ptr: DPtr<f32>,
    tmp: Option<CudaSlice<f32>>,
    dst: ViewMut<'a, CudaBackend>,
}

fn check_ids(op: &'static str, ids: &[u32], bound: usize, what: &str) -> Result<()> {
    if let Some((i, &t)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= bound) {
        return Err(RtError::Op { op, msg: format!("{what} {t} at position {i} is out of range for {bound}") });
    }
    Ok(())
}

impl Backend for CudaBackend {
    type Buf = CudaBuf;

    fn name(&self) -> String {
        format!("cuda:{}", self.ctx.ordinal())
    }

    fn alloc(&self, n: usize, kind: BufKind) -> Result<CudaBuf> {
        let m = n.max(1); // the driver refuses 0-byte allocations
        let e = |e| cu_err("allocation", e);
        let st = match kind {
            BufKind::Act => Store::Bf16(self.stream.alloc_zeros::<u16>(m).map_err(e)?),
            BufKind::F32 => Store::F32(self.stream.alloc_zeros::<f32>(m).map_err(e)?),
            BufKind::Param => Store::Param { master: self.stream.alloc_zeros::<f32>(m).map_err(e)?, work: self.stream.alloc_zeros::<u16>(m).map_err(e)? },
        };
        Ok(CudaBuf { kind, len: n, st })
    }

    fn upload(&self, dst: ViewMut<Self>, src: &[f32]) -> Result<()> {
        check_len("upload", "src", src.len(), dst.len)?;
        if src.is_empty() {
            return Ok(());
        }
        let (off, len) = (dst.off, dst.len);
        let e = |e| cu_err("upload", e);
        match &mut dst.buf.st {
            Store::Bf16(s) => self.stream.memcpy_htod(&to_bf16_bits(src), &mut s.slice_mut(off..off + len)).map_err(e)?,
            Store::F32(s) => self.stream.memcpy_htod(src, &mut s.slice_mut(off..off + len)).map_err(e)?,
            Store::Param { master, work } => {
                self.stream.memcpy_htod(src, &mut master.slice_mut(off..off + len)).map_err(e)?;
                self.stream.memcpy_htod(&to_bf16_bits(src), &mut work.slice_mut(off..off + len)).map_err(e)?;
            }
        }
        Ok(())
    }

    fn download(&self, src: View<Self>, dst: &mut [f32]) -> Result<()> {
        check_len("download", "dst", dst.len(), src.len)?;
        if dst.is_empty() {
            return Ok(());
        }
        let (off, len) = (src.off, src.len);
        let e = |e| cu_err("download", e);
        match &src.buf.st {
            Store::Bf16(s) => {
                let mut bits = vec![0u16; len];
                self.stream.memcpy_dtoh(&s.slice(off..off + len), &mut bits).map_err(e)?;
                self.stream.synchronize().map_err(e)?;
                for (d, b) in dst.iter_mut().zip(bits) {
                    *d = bf16::from_bits(b).to_f32();
                }
            }
            Store::F32(s) | Store::Param { master: s, .. } => {
                self.stream.memcpy_dtoh(&s.slice(off..off + len), dst).map_err(e)?;
                self.stream.synchronize().map_err(e)?;
            }
        }
        Ok(())
    }

    fn zero(&self, dst: ViewMut<Self>) -> Result<()> {
        let (off, len) = (dst.off, dst.len);
        if len == 0 {
            return Ok(());
        }
        let e = |e| cu_err("zero", e);
        match &mut dst.buf.st {
            Store::Bf16(s) => self.stream.memset_zeros(&mut s.slice_mut(off..off + len)).map_err(e)?,
            Store::F32(s) => self.stream.memset_zeros(&mut s.slice_mut(off..off + len)).map_err(e)?,
            Store::Param { master, work } => {
                self.stream.memset_zeros(&mut master.slice_mut(off..off + len)).map_err(e)?;
                self.stream.memset_zeros(&mut work.slice_mut(off..off + len)).map_err(e)?;
            }
        }
        Ok(())
    }

    fn copy(&self, dst: ViewMut<Self>, src: View<Self>) -> Result<()> {
        check_len("copy", "src", src.len, dst.len)?;
        let len = src.len;
        if len == 0 {
            return Ok(());
        }
        let e = |e| cu_err("copy", e);
        let (doff, soff) = (dst.off, src.off);
        match (&mut dst.buf.st, &src.buf.st) {
            (Store::Bf16(d), Store::Bf16(s)) => self.stream.memcpy_dtod(&s.slice(soff..soff + len), &mut d.slice_mut(doff..doff + len)).map_err(e)?,
            (Store::F32(d), Store::F32(s) | Store::Param { master: s, .. }) => {
                self.stream.memcpy_dtod(&s.slice(soff..soff + len), &mut d.slice_mut(doff..doff + len)).map_err(e)?
            }
            (Store::Param { master, work }, Store::Param { master: sm, work: sw }) => {
                self.stream.memcpy_dtod(&sm.slice(soff..soff + len), &mut master.slice_mut(doff..doff + len)).map_err(e)?;
                self.stream.memcpy_dtod(&sw.slice(soff..soff + len), &mut work.slice_mut(doff..doff + len)).map_err(e)?;
            }
            (Store::Bf16(d), Store::Param { work: s, .. }) => {
                self.stream.memcpy_dtod(&s.slice(soff..soff + len), &mut d.slice_mut(doff..doff + len)).map_err(e)?
            }
            (Store::Bf16(d), Store::F32(s)) => kc::elementwise::cast_f32_to_bf16(self.target(), self.dp_bf16(d, doff, len), self.dp_f32(s, soff, len), len)?,
            (Store::F32(d), Store::Bf16(s)) => kc::elementwise::cast_bf16_to_f32(self.target(), self.dp_f32(d, doff, len), self.dp_bf16(s, soff, len), len)?,
            (Store::Param { master, work }, Store::F32(s)) => {
                self.stream.memcpy_dtod(&s.slice(soff..soff + len), &mut master.slice_mut(doff..doff + len)).map_err(e)?;
                kc::elementwise::cast_f32_to_bf16(self.target(), self.dp_bf16(work, doff, len), self.dp_f32(s, soff, len), len)?;
            }
            (Store::Param { master, work }, Store::Bf16(s)) => {
                kc::elementwise::cast_bf16_to_f32(self.target(), self.dp_f32(master, doff, len), self.dp_bf16(s, soff, len), len)?;
                self.stream.memcpy_dtod(&s.slice(soff..soff + len), &mut work.slice_mut(doff..doff + len)).map_err(e)?;
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| cu_err("synchronize", e))
    }

    fn embedding_fwd(&self, out: ViewMut<Self>, tokens: &[u32], table: View<Self>, v: usize, c: usize) -> Result<()> {
        const OP: &str = "embedding_fwd";
        check_len(OP, "out", out.len, tokens.len() * c)?;
        check_len(OP, "table", table.len, v * c)?;
        check_ids(OP, tokens, v, "token")?;
        let ids = self.upload_idx(tokens)?;
        let (tb, _t) = self.in_bf16(table)?;
        let o = self.out_bf16(out, false)?;
        kc::embedding::embedding_fwd_bf16(self.target(), o.ptr, DPtr::new(addr(&ids, &self.stream), tokens.len()), tb, tokens.len(), v, c)?;
        self.finish_bf16(o)
    }

    fn embedding_bwd(&self, dtable: ViewMut<Self>, dout: View<Self>, tokens: &[u32], v: usize, c: usize) -> Result<()> {
        const OP: &str = "embedding_bwd";
        check_len(OP, "dout", dout.len, tokens.len() * c)?;
        check_len(OP, "dtable", dtable.len, v * c)?;
        check_ids(OP, tokens, v, "token")?;
        if tokens.is_empty() {
            return Ok(());
        }
        let (uniq, offsets, order) = kc::embedding::group_rows(tokens);
        let (du, doff, dord) = (self.upload_idx(&uniq)?, self.upload_idx(&offsets)?, self.upload_idx(&order)?);
        let (d, _t) = self.in_bf16(dout)?;
        let o = self.out_f32(dtable, true)?;
        let st = &self.stream;
        kc::embedding::embedding_bwd_f32(
            self.target(),
            o.ptr,
            d,
            DPtr::new(addr(&du, st), uniq.len()),
            DPtr::new(addr(&doff, st), offsets.len()),
            DPtr::new(addr(&dord, st), order.len()),
            uniq.len(),
            tokens.len(),
            v,
            c,
        )?;
        self.finish_f32(o)
    }

    fn matmul(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, g: Gemm) -> Result<()> {
        const OP: &str = "matmul";
        let Gemm { m, n, k, ta, tb, write } = g;
        check_min_len(OP, "c", c.len, m * n)?;
        check_min_len(OP, "a", a.len, m * k)?;
        check_min_len(OP, "b", b.len, k * n)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let c = ViewMut { buf: c.buf, off: c.off, len: m * n };
        if k == 0 {
            return if write == GradWrite::Overwrite { self.zero(c) } else { Ok(()) };
        }
        let (ap, _ta) = self.in_bf16(a)?;
        let (bp, _tb) = self.in_bf16(b)?;
        let accumulate = write == GradWrite::Accumulate;
        if c.buf.kind == BufKind::Act {
            let o = self.out_bf16(c, accumulate)?;
            // SAFETY: a, b, c windows hold m*k, k*n, m*n elements (checked above).
            unsafe { self.blas.matmul(&self.stream, o.ptr.addr, OutType::Bf16, ap.addr, bp.addr, m, n, k, ta, tb, write)? };
            self.finish_bf16(o)
        } else {
            let o = self.out_f32(c, accumulate)?;
            // SAFETY: as above, C as f32.
            unsafe { self.blas.matmul(&self.stream, o.ptr.addr, OutType::F32, ap.addr, bp.addr, m, n, k, ta, tb, write)? };
            self.finish_f32(o)
        }
    }

    fn rmsnorm_fwd(&self, out: ViewMut<Self>, rstd: ViewMut<Self>, inp: View<Self>, weight: View<Self>, n: usize, c: usize, eps: f32) -> Result<()> {
        const OP: &str = "rmsnorm_fwd";
        check_len(OP, "out", out.len, n * c)?;
        check_len(OP, "rstd", rstd.len, n)?;
        check_len(OP, "inp", inp.len, n * c)?;
        check_len(OP, "weight", weight.len, c)?;
        if n == 0 {
            return Ok(());
        }
        let (x, _t1) = self.in_bf16(inp)?;
        let (w, _t2) = self.in_bf16(weight)?;
        let o = self.out_bf16(out, false)?;
        let r = self.out_f32(rstd, false)?;
        kc::rmsnorm::rmsnorm_fwd_bf16(self.target(), o.ptr, r.ptr, x, w, n, c, eps)?;
        self.finish_bf16(o)?;
        self.finish_f32(r)
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
        const OP: &str = "rmsnorm_bwd";
        check_len(OP, "dinp", dinp.len, n * c)?;
        check_len(OP, "dweight", dweight.len, c)?;
        check_len(OP, "dout", dout.len, n * c)?;
        check_len(OP, "inp", inp.len, n * c)?;
        check_len(OP, "weight", weight.len, c)?;
        check_len(OP, "rstd", rstd.len, n)?;
        if n == 0 {
            return Ok(());
        }
        let (dy, _t1) = self.in_bf16(dout)?;
        let (x, _t2) = self.in_bf16(inp)?;
        let (w, _t3) = self.in_bf16(weight)?;
        let (r, _t4) = self.in_f32(rstd)?;
        let parts = kc::rmsnorm::bwd_blocks(n);
        let partial = self.tmp_f32(parts * c)?;
        let pp = self.dp_f32(&partial, 0, parts * c);
        let di = self.out_bf16(dinp, dinp_write == GradWrite::Accumulate)?;
        let dw = self.out_f32(dweight, true)?;
        kc::rmsnorm::rmsnorm_bwd_bf16(self.target(), di.ptr, pp, dy, x, w, r, n, c, dinp_write)?;
        kc::rmsnorm::rmsnorm_bwd_dweight_f32(self.target(), dw.ptr, pp, parts, c)?;
        self.finish_bf16(di)?;
        self.finish_f32(dw)
    }

    fn add_rmsnorm_fwd(
        &self,
        res: ViewMut<Self>,
        out: ViewMut<Self>,
        rstd: ViewMut<Self>,
        a: View<Self>,
        b: View<Self>,
        weight: View<Self>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        const OP: &str = "add_rmsnorm_fwd";
        check_len(OP, "res", res.len, n * c)?;
        check_len(OP, "out", out.len, n * c)?;
        check_len(OP, "rstd", rstd.len, n)?;
        check_len(OP, "a", a.len, n * c)?;
        check_len(OP, "b", b.len, n * c)?;
        check_len(OP, "weight", weight.len, c)?;
        if n == 0 {
            return Ok(());
        }
        if res.buf.kind != BufKind::Act {
            // the residual stream is an Act buffer in the model; anything else
            // takes the unfused path, which converts
            let mut res = res;
            self.add(res.reborrow(), a, b)?;
            return self.rmsnorm_fwd(out, rstd, res.as_view(), weight, n, c, eps);
        }
        let (ap, _t1) = self.in_bf16(a)?;
        let (bp, _t2) = self.in_bf16(b)?;
        let (w, _t3) = self.in_bf16(weight)?;
        let rs = self.out_bf16(res, false)?;
        let o = self.out_bf16(out, false)?;
        let r = self.out_f32(rstd, false)?;
        kc::rmsnorm::add_rmsnorm_fwd_bf16(self.target(), rs.ptr, o.ptr, r.ptr, ap, bp, w, n, c, eps)?;
        self.finish_bf16(rs)?;
        self.finish_bf16(o)?;
        self.finish_f32(r)
    }

    fn rope_fwd(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        check_len("rope_fwd", "x", x.len, s.b * s.t * s.heads * s.hd)?;
        let (tb, _t) = self.in_f32(table)?;
        let o = self.out_bf16(x, true)?;
        kc::rope::rope_fwd_bf16(self.target(), o.ptr, tb, s)?;
        self.finish_bf16(o)
    }

    fn rope_bwd(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        check_len("rope_bwd", "dx", dx.len, s.b * s.t * s.heads * s.hd)?;
        let (tb, _t) = self.in_f32(table)?;
        let o = self.out_bf16(dx, true)?;
        kc::rope::rope_bwd_bf16(self.target(), o.ptr, tb, s)?;
        self.finish_bf16(o)
    }

    fn attention_fwd(&self, out: ViewMut<Self>, lse: ViewMut<Self>, q: View<Self>, k: View<Self>, v: View<Self>, s: AttnShape) -> Result<()> {
        const OP: &str = "attention_fwd";
        s.validate(OP)?;
        check_len(OP, "out", out.len, s.b * s.tq * s.n_head * s.hd)?;
        check_len(OP, "lse", lse.len, s.b * s.n_head * s.tq)?;
        if s.b == 0 || s.tq == 0 {
            return Ok(());
        }
        let (qp, _t1) = self.in_bf16(q)?;
        let (kp, _t2) = self.in_bf16(k)?;
        let (vp, _t3) = self.in_bf16(v)?;
        let o = self.out_bf16(out, false)?;
        let l = self.out_f32(lse, false)?;
        let p = kc::attention::AttnFwdParams { out: o.ptr, lse: l.ptr, q: qp, k: kp, v: vp, shape: s };
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => kc::attention::attention_fwd_v3_bf16(self.target(), &p)?,
            AttnImpl::Mma => kc::attention::attention_fwd_mma_bf16(self.target(), &p)?,
            AttnImpl::SplitK => {
                let (op, ml) = self.splitk_scratch(&s, false)?;
                let sc = kc::attention::AttnSplitKScratch { opart: self.dp_f32(&op, 0, op.len()), ml: self.dp_f32(&ml, 0, ml.len()) };
                kc::attention::attention_fwd_splitk_bf16(self.target(), &p, &sc, None)?
            }
            _ => kc::attention::attention_fwd_bf16(self.target(), &p)?,
        }
        self.finish_bf16(o)?;
        self.finish_f32(l)
    }

    fn attention_bwd(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
    ) -> Result<()> {
        const OP: &str = "attention_bwd";
        s.validate(OP)?;
        check_len(OP, "dq", dq.len, s.b * s.tq * s.n_head * s.hd)?;
        check_len(OP, "dk", dk.len, s.b * s.cap * s.n_kv_head * s.hd)?;
        check_len(OP, "dv", dv.len, s.b * s.cap * s.n_kv_head * s.hd)?;
        if s.b == 0 || s.tq == 0 {
            return Ok(());
        }
        let (dop, _t1) = self.in_bf16(dout)?;
        let (qp, _t2) = self.in_bf16(q)?;
        let (kp, _t3) = self.in_bf16(k)?;
        let (vp, _t4) = self.in_bf16(v)?;
        let (op, _t5) = self.in_bf16(out)?;
        let (lp, _t6) = self.in_f32(lse)?;
        let nd = s.b * s.n_head * s.tq;
        let delta = self.tmp_f32(nd)?;
        let dq = self.out_bf16(dq, false)?;
        let dk = self.out_bf16(dk, false)?;
        let dv = self.out_bf16(dv, false)?;
        let dl = self.dp_f32(&delta, 0, nd);
        let p = kc::attention::AttnBwdParams { dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, delta: dl, dout: dop, q: qp, k: kp, v: vp, out: op, lse: lp, shape: s };
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => {
                let (acc, sync) = self.v3_scratch(&s)?;
                let sc = kc::attention::AttnBwdV3Scratch { dq_acc: self.dp_f32(&acc, 0, acc.len()), sync: DPtr::new(addr(&sync, &self.stream), sync.len()) };
                kc::attention::attention_bwd_v3_bf16(self.target(), &p, &sc, None)?;
            }
            AttnImpl::Mma => kc::attention::attention_bwd_mma_bf16(self.target(), &p)?,
            _ => kc::attention::attention_bwd_bf16(self.target(), &p)?,
        }
        self.finish_bf16(dq)?;
        self.finish_bf16(dk)?;
        self.finish_bf16(dv)
    }

    // The fused projections: one product and one split kernel forward, one
    // pack kernel and two products backward (`fused.rs`).
    fn qkv_fwd(
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
        self.fused_qkv_fwd(q, k, v, scratch, x, w, table, s, r, invariant)
    }

    fn qkv_bwd(
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
        self.fused_qkv_bwd(dx, dw, dq, dk, dv, scratch, x, w, table, s, r)
    }

    fn mlp_in_fwd(
        &self,
        gate: ViewMut<Self>,
        up: ViewMut<Self>,
        h: ViewMut<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        shape: (usize, usize, usize),
        invariant: bool,
    ) -> Result<()> {
        self.fused_mlp_in_fwd(gate, up, h, scratch, x, w, shape, invariant)
    }

    fn mlp_in_bwd(
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
        shape: (usize, usize, usize),
    ) -> Result<()> {
        self.fused_mlp_in_bwd(dx, dw, dgate, dup, scratch, dh, gate, up, x, w, shape)
    }

    fn fuses_projections(&self) -> bool {
        true
    }

    fn swiglu_fwd(&self, out: ViewMut<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        check_len("swiglu_fwd", "gate", gate.len, out.len)?;
        check_len("swiglu_fwd", "up", up.len, out.len)?;
        let n = out.len;
        let (g, _t1) = self.in_bf16(gate)?;
        let (u, _t2) = self.in_bf16(up)?;
        let o = self.out_bf16(out, false)?;
        kc::swiglu::swiglu_fwd_bf16(self.target(), o.ptr, g, u, n)?;
        self.finish_bf16(o)
    }

    fn swiglu_bwd(&self, dgate: ViewMut<Self>, dup: ViewMut<Self>, dout: View<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        let n = dout.len;
        for (name, len) in [("dgate", dgate.len), ("dup", dup.len), ("gate", gate.len), ("up", up.len)] {
            check_len("swiglu_bwd", name, len, n)?;
        }
        let (d, _t1) = self.in_bf16(dout)?;
        let (g, _t2) = self.in_bf16(gate)?;
        let (u, _t3) = self.in_bf16(up)?;
        let dg = self.out_bf16(dgate, false)?;
        let du = self.out_bf16(dup, false)?;
        kc::swiglu::swiglu_bwd_bf16(self.target(), dg.ptr, du.ptr, d, g, u, n)?;
        self.finish_bf16(dg)?;
        self.finish_bf16(du)
    }

    fn cross_entropy(&self, logits: ViewMut<Self>, losses: ViewMut<Self>, targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
        const OP: &str = "cross_entropy";
        let n = targets.len();
        check_len(OP, "logits", logits.len, n * v)?;
        check_len(OP, "losses", losses.len, n)?;
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= 0 && t as usize >= v) {
            return Err(RtError::Op { op: OP, msg: format!("target {t} at row {i} is out of range for vocabulary {v}") });
        }
        if let CeGrad::PerRow(cf) = grad {
            check_len(OP, "coef", cf.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let tg = self.upload_idx(targets)?;
        let coef = match grad {
            CeGrad::PerRow(cf) => Some(self.upload_idx(cf)?),
            _ => None,
        };
        let mode = match grad {
            CeGrad::None => CeMode::LossOnly,
            CeGrad::Uniform(s) => CeMode::Uniform(s),
            CeGrad::PerRow(_) => CeMode::PerRow(coef.as_ref().map(|c| self.dp_f32(c, 0, n)).ok_or_else(|| cu_err(OP, "coefficients"))?),
        };
        let writes = !matches!(grad, CeGrad::None);
        let lg = self.out_bf16(logits, true)?;
        let ls = self.out_f32(losses, false)?;
        kc::cross_entropy::cross_entropy_fwd_bwd_bf16(self.target(), lg.ptr, ls.ptr, DPtr::new(addr(&tg, &self.stream), n), mode, n, v)?;
        if writes {
            self.finish_bf16(lg)?;
        }
        self.finish_f32(ls)
    }

    fn add(&self, out: ViewMut<Self>, a: View<Self>, b: View<Self>) -> Result<()> {
        check_len("add", "a", a.len, out.len)?;
        check_len("add", "b", b.len, out.len)?;
        let n = out.len;
        let kinds = [out.buf.kind, a.buf.kind, b.buf.kind];
        if Self::all_kind(BufKind::Act, &kinds) {
            let (ap, _t1) = self.in_bf16(a)?;
            let (bp, _t2) = self.in_bf16(b)?;
            let o = self.out_bf16(out, false)?;
            kc::elementwise::add_fwd_bf16(self.target(), o.ptr, ap, bp, n)?;
            self.finish_bf16(o)
        } else {
            let (ap, _t1) = self.in_f32(a)?;
            let (bp, _t2) = self.in_f32(b)?;
            let o = self.out_f32(out, false)?;
            kc::elementwise::add_fwd_f32(self.target(), o.ptr, ap, bp, n)?;
            self.finish_f32(o)
        }
    }

    fn add_assign(&self, x: ViewMut<Self>, y: View<Self>) -> Result<()> {
        check_len("add_assign", "y", y.len, x.len)?;
        let n = x.len;
        if x.buf.kind == BufKind::Act && y.buf.kind == BufKind::Act {
            let (yp, _t) = self.in_bf16(y)?;
            let o = self.out_bf16(x, true)?;
            kc::elementwise::add_assign_bf16(self.target(), o.ptr, yp, n)?;
            self.finish_bf16(o)
        } else {
            let (yp, _t) = self.in_f32(y)?;
            let o = self.out_f32(x, true)?;
            kc::elementwise::add_assign_f32(self.target(), o.ptr, yp, n)?;
            self.finish_f32(o)
        }
    }

    fn scale(&self, x: ViewMut<Self>, s: f32) -> Result<()> {
        let n = x.len;
        if x.buf.kind == BufKind::Act {
            let o = self.out_bf16(x, true)?;
            kc::elementwise::scale_bf16(self.target(), o.ptr, s, n)?;
            self.finish_bf16(o)
        } else {
            let o = self.out_f32(x, true)?;
            kc::elementwise::scale_f32(self.target(), o.ptr, s, n)?;
            self.finish_f32(o)
        }
    }

    fn gather_rows(&self, out: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        const OP: &str = "gather_rows";
        check_len(OP, "out", out.len, rows.len() * c)?;
        let src_rows = src.len.checked_div(c).unwrap_or(0);
        check_ids(OP, rows, src_rows, "row")?;
        if rows.is_empty() || c == 0 {
            return Ok(());
        }
        let r = self.upload_idx(rows)?;
        let rp = DPtr::new(addr(&r, &self.stream), rows.len());
        if out.buf.kind == BufKind::Act && src.buf.kind == BufKind::Act {
            let (sp, _t) = self.in_bf16(src)?;
            let o = self.out_bf16(out, false)?;
            kc::elementwise::gather_rows_bf16(self.target(), o.ptr, sp, src_rows, rp, rows.len(), c)?;
            self.finish_bf16(o)
        } else {
            let (sp, _t) = self.in_f32(src)?;
            let o = self.out_f32(out, false)?;
            kc::elementwise::gather_rows_f32(self.target(), o.ptr, sp, src_rows, rp, rows.len(), c)?;
            self.finish_f32(o)
        }
    }

    fn scatter_add_rows(&self, dst: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        const OP: &str = "scatter_add_rows";
        check_len(OP, "src", src.len, rows.len() * c)?;
        let dst_rows = dst.len.checked_div(c).unwrap_or(0);
        check_ids(OP, rows, dst_rows, "row")?;
        if rows.is_empty() || c == 0 {
            return Ok(());
        }
        let r = self.upload_idx(rows)?;
        let rp = DPtr::new(addr(&r, &self.stream), rows.len());
        if dst.buf.kind == BufKind::Act && src.buf.kind == BufKind::Act {
            let (sp, _t) = self.in_bf16(src)?;
            let o = self.out_bf16(dst, true)?;
            kc::elementwise::scatter_add_rows_bf16(self.target(), o.ptr, dst_rows, sp, rp, rows.len(), c)?;
            self.finish_bf16(o)
        } else {
            let (sp, _t) = self.in_f32(src)?;
            let o = self.out_f32(dst, true)?;
            kc::elementwise::scatter_add_rows_f32(self.target(), o.ptr, dst_rows, sp, rp, rows.len(), c)?;
            self.finish_f32(o)
        }
    }

    fn kv_write(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
        const OP: &str = "kv_write";
        if pos0 + t > cap {
            return Err(RtError::Op { op: OP, msg: format!("positions {pos0}..{} exceed the cache length {cap}", pos0 + t) });
        }
        check_len(OP, "new", new.len, b * t * w)?;
        check_min_len(OP, "cache", cache.len, b * cap * w)?;
        if b * t * w == 0 {
            return Ok(());
        }
        if cache.buf.kind == BufKind::Act && new.buf.kind == BufKind::Act {
            let (sp, _t) = self.in_bf16(new)?;
            let o = self.out_bf16(cache, true)?;
            kc::elementwise::kv_write_bf16(self.target(), o.ptr, sp, b, t, cap, w, pos0)?;
            self.finish_bf16(o)
        } else {
            let (sp, _t) = self.in_f32(new)?;
            let o = self.out_f32(cache, true)?;
            kc::elementwise::kv_write_f32(self.target(), o.ptr, sp, b, t, cap, w, pos0)?;
            self.finish_f32(o)
        }
    }

    fn sum_squares(&self, x: View<Self>) -> Result<f64> {
        let n = x.len;
        if n == 0 {
            return Ok(0.0);
        }
        let blocks = kc::elementwise::sum_squares_blocks(n);
        // SAFETY: the kernel writes all `blocks` partials before they are read.
        let partial = unsafe { self.stream.alloc::<f64>(blocks) }.map_err(|e| cu_err("allocation", e))?;
        let pp = DPtr::new(addr(&partial, &self.stream), blocks);
        match &x.buf.st {
            Store::Bf16(s) => kc::elementwise::sum_squares_bf16(self.target(), pp, self.dp_bf16(s, x.off, n), n)?,
            Store::F32(s) | Store::Param { master: s, .. } => kc::elementwise::sum_squares_f32(self.target(), pp, self.dp_f32(s, x.off, n), n)?,
        }
        let mut host = vec![0f64; blocks];
        self.stream.memcpy_dtoh(&partial, &mut host).map_err(|e| cu_err("download", e))?;
        self.stream.synchronize().map_err(|e| cu_err("synchronize", e))?;
        // in block order: the same sum on every run
        Ok(host.iter().sum())
    }

    fn adamw(&self, params: ViewMut<Self>, grads: View<Self>, m: ViewMut<Self>, v: ViewMut<Self>, h: AdamWStep) -> Result<()> {
        const OP: &str = "adamw";
        let n = params.len;
        check_len(OP, "grads", grads.len, n)?;
        check_len(OP, "m", m.len, n)?;
        check_len(OP, "v", v.len, n)?;
        if n == 0 {
            return Ok(());
        }
        let (g, _t) = self.in_f32(grads)?;
        let mo = self.out_f32(m, true)?;
        let vo = self.out_f32(v, true)?;
        let (poff, plen) = (params.off, params.len);
        match &params.buf.st {
            Store::Param { master, work } => {
                let (pm, pw) = (self.dp_f32(master, poff, plen), self.dp_bf16(work, poff, plen));
                kc::adamw::adamw_step_f32(self.target(), pm, pw, g, mo.ptr, vo.ptr, n, &h)?;
            }
            _ => {
                // not a Param: update an f32 view; the bf16 copy goes to a scratch
                let scratch = self.tmp_u16(n)?;
                let sp = self.dp_bf16(&scratch, 0, n);
                let po = self.out_f32(params, true)?;
                kc::adamw::adamw_step_f32(self.target(), po.ptr, sp, g, mo.ptr, vo.ptr, n, &h)?;
                self.finish_f32(po)?;
            }
        }
        self.finish_f32(mo)?;
        self.finish_f32(vo)
    }

    // ---- ragged batches and per-token statistics --------------------------
    // The per-sequence positions and lengths are checked on the host
    // (`Ragged::check`) and uploaded as i32; the kernels read them as
    // `RaggedPtrs`. Attention on ragged batches runs on the v3 kernels (v1
    // under `LLAMA2_ATTN=simple|mma`: v2 has no ragged form).

    fn rope_fwd_ragged(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.rope_ragged(x, table, s, r, false)
    }

    fn rope_bwd_ragged(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.rope_ragged(dx, table, s, r, true)
    }

    fn attention_fwd_ragged(&self, out: ViewMut<Self>, lse: ViewMut<Self>, q: View<Self>, k: View<Self>, v: View<Self>, s: AttnShape, r: Ragged) -> Result<()> {
        const OP: &str = "attention_fwd_ragged";
        s.validate(OP)?;
        r.check(OP, s.b, s.tq, s.cap)?;
        check_len(OP, "out", out.len, s.b * s.tq * s.n_head * s.hd)?;
        check_len(OP, "lse", lse.len, s.b * s.n_head * s.tq)?;
        if s.b == 0 || s.tq == 0 {
            return Ok(());
        }
        let (rp, rl) = self.upload_ragged(r)?;
        let (qp, _t1) = self.in_bf16(q)?;
        let (kp, _t2) = self.in_bf16(k)?;
        let (vp, _t3) = self.in_bf16(v)?;
        let o = self.out_bf16(out, false)?;
        let l = self.out_f32(lse, false)?;
        let p = kc::attention::AttnFwdParams { out: o.ptr, lse: l.ptr, q: qp, k: kp, v: vp, shape: s };
        let rg = self.ragged_ptrs(&rp, &rl, s.b);
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => kc::attention::attention_fwd_v3_ragged_bf16(self.target(), &p, rg)?,
            AttnImpl::SplitK => {
                let (op, ml) = self.splitk_scratch(&s, true)?;
                let sc = kc::attention::AttnSplitKScratch { opart: self.dp_f32(&op, 0, op.len()), ml: self.dp_f32(&ml, 0, ml.len()) };
                kc::attention::attention_fwd_splitk_bf16(self.target(), &p, &sc, Some(rg))?
            }
            // v2 has no ragged form
            _ => kc::attention::attention_fwd_ragged_bf16(self.target(), &p, rg)?,
        }
        self.finish_bf16(o)?;
        self.finish_f32(l)
    }

    fn attention_bwd_ragged(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()> {
        const OP: &str = "attention_bwd_ragged";
        s.validate(OP)?;
        r.check(OP, s.b, s.tq, s.cap)?;
        if let Some(bi) = r.pos0.iter().position(|&p| p != 0) {
            return Err(RtError::Op { op: OP, msg: format!("backward needs every sequence to start at position 0, sequence {bi} starts at {}", r.pos0[bi]) });
        }
        check_len(OP, "dq", dq.len, s.b * s.tq * s.n_head * s.hd)?;
        check_len(OP, "dk", dk.len, s.b * s.cap * s.n_kv_head * s.hd)?;
        check_len(OP, "dv", dv.len, s.b * s.cap * s.n_kv_head * s.hd)?;
        if s.b == 0 || s.tq == 0 {
            return Ok(());
        }
        let (rp, rl) = self.upload_ragged(r)?;
        let (dop, _t1) = self.in_bf16(dout)?;
        let (qp, _t2) = self.in_bf16(q)?;
        let (kp, _t3) = self.in_bf16(k)?;
        let (vp, _t4) = self.in_bf16(v)?;
        let (op, _t5) = self.in_bf16(out)?;
        let (lp, _t6) = self.in_f32(lse)?;
        let nd = s.b * s.n_head * s.tq;
        let delta = self.tmp_f32(nd)?;
        let dq = self.out_bf16(dq, false)?;
        let dk = self.out_bf16(dk, false)?;
        let dv = self.out_bf16(dv, false)?;
        let dl = self.dp_f32(&delta, 0, nd);
        let p = kc::attention::AttnBwdParams { dq: dq.ptr, dk: dk.ptr, dv: dv.ptr, delta: dl, dout: dop, q: qp, k: kp, v: vp, out: op, lse: lp, shape: s };
        let rg = self.ragged_ptrs(&rp, &rl, s.b);
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => {
                let (acc, sync) = self.v3_scratch(&s)?;
                let sc = kc::attention::AttnBwdV3Scratch { dq_acc: self.dp_f32(&acc, 0, acc.len()), sync: DPtr::new(addr(&sync, &self.stream), sync.len()) };
                kc::attention::attention_bwd_v3_bf16(self.target(), &p, &sc, Some(rg))?;
            }
            _ => kc::attention::attention_bwd_ragged_bf16(self.target(), &p, rg)?,
        }
        self.finish_bf16(dq)?;
        self.finish_bf16(dk)?;
        self.finish_bf16(dv)
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
        const OP: &str = "cross_entropy_entropy";
        let n = targets.len();
        check_len(OP, "logits", logits.len, n * v)?;
        check_len(OP, "losses", losses.len, n)?;
        check_len(OP, "entropy", entropy.len, n)?;
        if let Some((i, &t)) = targets.iter().enumerate().find(|(_, &t)| t >= 0 && t as usize >= v) {
            return Err(RtError::Op { op: OP, msg: format!("target {t} at row {i} is out of range for vocabulary {v}") });
        }
        if let CeGrad::PerRow(cf) = grad {
            check_len(OP, "coef", cf.len(), n)?;
        }
        if n == 0 {
            return Ok(());
        }
        let tg = self.upload_idx(targets)?;
        let coef = match grad {
            CeGrad::PerRow(cf) => Some(self.upload_idx(cf)?),
            _ => None,
        };
        let mode = match grad {
            CeGrad::None => CeMode::LossOnly,
            CeGrad::Uniform(s) => CeMode::Uniform(s),
            CeGrad::PerRow(_) => CeMode::PerRow(coef.as_ref().map(|c| self.dp_f32(c, 0, n)).ok_or_else(|| cu_err(OP, "coefficients"))?),
        };
        let writes = !matches!(grad, CeGrad::None);
        let lg = self.out_bf16(logits, true)?;
        let ls = self.out_f32(losses, false)?;
        let en = self.out_f32(entropy, false)?;
        kc::cross_entropy::cross_entropy_fwd_bwd_ent_bf16(self.target(), lg.ptr, ls.ptr, en.ptr, DPtr::new(addr(&tg, &self.stream), n), mode, n, v)?;
        if writes {
            self.finish_bf16(lg)?;
        }
        self.finish_f32(ls)?;
        self.finish_f32(en)
    }

    fn kv_write_ragged(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, r: Ragged) -> Result<()> {
        const OP: &str = "kv_write_ragged";
        r.check(OP, b, t, cap)?;
        check_len(OP, "new", new.len, b * t * w)?;
        check_min_len(OP, "cache", cache.len, b * cap * w)?;
        if b * t * w == 0 {
            return Ok(());
        }
        let (rp, rl) = self.upload_ragged(r)?;
        let ptrs = self.ragged_ptrs(&rp, &rl, b);
        if cache.buf.kind == BufKind::Act && new.buf.kind == BufKind::Act {
            let (sp, _t) = self.in_bf16(new)?;
            let o = self.out_bf16(cache, true)?;
            kc::elementwise::kv_write_ragged_bf16(self.target(), o.ptr, sp, ptrs, b, t, cap, w)?;
            self.finish_bf16(o)
        } else {
            let (sp, _t) = self.in_f32(new)?;
            let o = self.out_f32(cache, true)?;
            kc::elementwise::kv_write_ragged_f32(self.target(), o.ptr, sp, ptrs, b, t, cap, w)?;
            self.finish_f32(o)
        }
    }
}

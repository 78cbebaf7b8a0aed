//! The CUDA backend's kernels on the CPU layer (feature `cuda-sim`): a
//! [`Backend`] with the CUDA backend's storage (bf16 `Act`, f32 `F32`, f32
//! master + bf16 working copy for `Param`) whose ops call the same
//! launchers (`llama2_kernels::cuda`) as `CudaBackend`, with
//! [`Target::Sim`]: the kernels' own `.cu` sources run on the CPU, every
//! CUDA thread a fiber. gpu-check's kernel rows run on it exactly as on a GPU
//! (`train-tool gpu-check --sim`).
//!
//! It mirrors `runtime/src/cuda/backend.rs` op by op (the same launcher per
//! op, the same temporaries for windows of another kind, the same
//! Param-copy refresh), with device memory from the layer (`SimMem`) and
//! copies instead of driver memcpys. Not here: cuBLASLt (matmul is refused:
//! it is not our kernel and has no CPU layer) and timing. The fused
//! projections (`qkv_fwd`, `mlp_in_fwd` and their backwards, in `fused.rs`)
//! run their products on a host stand-in instead, so that their own kernels
//! run end to end (their unfused fallback, a scratch too short, does not run
//! here: its products are `matmul`).
//!
//! Why one file of ~900 lines: it is one `impl Backend` (a trait impl
//! cannot be split across files) kept op for op beside the CUDA backend's.
//!
//! Public items: [`SimBackend`], [`SimBuf`].

use llama2_runtime::kernels::cuda::sim::{SimConfig, SimDevice, SimMem};
use llama2_runtime::kernels::cuda::{self as kc, cross_entropy::CeMode, Bf16, DPtr, Target};
use llama2_runtime::kernels::{check_len, check_min_len};
use llama2_runtime::*;

mod fused;

/// Storage of a buffer by kind (as the CUDA backend's `Store`).
enum Store {
    Bf16(SimMem),
    F32(SimMem),
    Param { master: SimMem, work: SimMem },
}

/// A buffer of [`SimBackend`].
pub struct SimBuf {
    kind: BufKind,
    len: usize,
    st: Store,
}

impl Buffer for SimBuf {
    type Be = SimBackend;
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> BufKind {
        self.kind
    }
}

/// The CUDA backend's kernels on the CPU layer.
pub struct SimBackend {
    dev: SimDevice,
    attn: std::sync::Mutex<AttnImpl>,
}

fn bits(x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect()
}

/// A bf16 window an op writes: the buffer itself, or a temporary copied back.
struct OutB<'a> {
    ptr: DPtr<Bf16>,
    tmp: Option<SimMem>,
    dst: ViewMut<'a, SimBackend>,
}
/// An f32 window an op writes.
struct OutF<'a> {
    ptr: DPtr<f32>,
    tmp: Option<SimMem>,
    dst: ViewMut<'a, SimBackend>,
}

fn dp_bf16(m: &SimMem, off: usize, len: usize) -> DPtr<Bf16> {
    DPtr::new(m.addr() + 2 * off as u64, len)
}
fn dp_f32(m: &SimMem, off: usize, len: usize) -> DPtr<f32> {
    DPtr::new(m.addr() + 4 * off as u64, len)
}

fn ragged_ptrs(pos0: &SimMem, len: &SimMem, b: usize) -> kc::rope::RaggedPtrs {
    kc::rope::RaggedPtrs { pos0: DPtr::new(pos0.addr(), b), len: DPtr::new(len.addr(), b) }
}

fn check_ids(op: &'static str, ids: &[u32], bound: usize, what: &str) -> Result<()> {
    if let Some((i, &t)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= bound) {
        return Err(RtError::Op { op, msg: format!("{what} {t} at position {i} is out of range for {bound}") });
    }
    Ok(())
}

impl SimBackend {
    pub fn new(cfg: SimConfig) -> Self {
        SimBackend { dev: SimDevice::new(cfg), attn: std::sync::Mutex::new(AttnImpl::from_env()) }
    }
    /// The CPU layer's device (its configuration, plants and work counters).
    pub fn device(&self) -> &SimDevice {
        &self.dev
    }
    fn target(&self) -> Target<'_> {
        Target::Sim(&self.dev)
    }
    pub fn set_attention_impl(&self, a: AttnImpl) {
        if let Ok(mut g) = self.attn.lock() {
            *g = a;
        }
    }
    pub fn attention_impl(&self) -> AttnImpl {
        self.attn.lock().map(|g| *g).unwrap_or(AttnImpl::Auto)
    }
    /// The attention kernels a call with `tq` query rows runs (as the CUDA backend).
    fn attn_for(&self, tq: usize, tkv: usize) -> AttnImpl {
        self.attention_impl().resolve(tq, tkv)
    }

    /// The split-K forward's scratch (NaN-filled, as an uninitialised device
    /// allocation) and its pointers.
    fn splitk_scratch(&self, s: &AttnShape, ragged: bool) -> Result<(SimMem, SimMem, kc::attention::AttnSplitKScratch)> {
        let (no, nm) = kc::attention::splitk_scratch_len(s, ragged);
        let (op, ml) = (self.tmp(4 * no)?, self.tmp(4 * nm)?);
        let sc = kc::attention::AttnSplitKScratch { opart: dp_f32(&op, 0, no), ml: dp_f32(&ml, 0, nm) };
        Ok((op, ml, sc))
    }

    /// The zeroed scratch of the v3 backward, and its pointers.
    fn v3_scratch(&self, s: &AttnShape) -> Result<(SimMem, SimMem, kc::attention::AttnBwdV3Scratch)> {
        let (na, ns) = (s.b * s.tq * s.n_head * s.hd, kc::attention::bwd_v3_sync_len(s));
        let (acc, sync) = (self.dev.alloc(4 * na)?, self.dev.alloc(4 * ns)?);
        let sc = kc::attention::AttnBwdV3Scratch { dq_acc: dp_f32(&acc, 0, na), sync: DPtr::new(sync.addr(), ns) };
        Ok((acc, sync, sc))
    }

    /// The bf16 working copy of a `Param` window, as f32.
    pub fn download_work(&self, src: View<Self>) -> Result<Vec<f32>> {
        let Store::Param { work, .. } = &src.buf.st else {
            return Err(RtError::Op { op: "download_work", msg: "not a Param buffer".into() });
        };
        let mut b = vec![0u16; src.len];
        work.read(2 * src.off, &mut b);
        Ok(b.into_iter().map(|x| half::bf16::from_bits(x).to_f32()).collect())
    }

    /// A temporary the kernel must write before it reads (0xff bytes: NaN),
    /// as the CUDA backend's uninitialised stream allocations.
    fn tmp(&self, bytes: usize) -> Result<SimMem> {
        Ok(self.dev.alloc_filled(bytes.max(4), 0xff)?)
    }
    /// A ragged batch's positions and lengths in device memory (i32).
    fn upload_ragged(&self, r: Ragged) -> Result<(SimMem, SimMem)> {
        let to_i32 = |x: &[u32], what: &str| -> Result<Vec<i32>> {
            x.iter().map(|&v| i32::try_from(v).map_err(|_| RtError::Op { op: "ragged", msg: format!("{what} {v} does not fit an i32") })).collect()
        };
        Ok((self.upload_idx(&to_i32(r.pos0, "position")?)?, self.upload_idx(&to_i32(r.len, "length")?)?))
    }

    /// RoPE (or its inverse) on the valid rows of a ragged batch.
    fn rope_ragged(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged, inverse: bool) -> Result<()> {
        const OP: &str = "rope_ragged";
        check_len(OP, "x", x.len, s.b * s.t * s.heads * s.hd)?;
        let max_pos = table.len / s.hd.max(1);
        r.check(OP, s.b, s.t, max_pos)?;
        if s.b * s.t == 0 {
            return Ok(());
        }
        let (rp, rl) = self.upload_ragged(r)?;
        let ptrs = ragged_ptrs(&rp, &rl, s.b);
        let (tb, _t) = self.in_f32(table)?;
        let o = self.out_bf16(x, true)?;
        if inverse {
            kc::rope::rope_bwd_ragged_bf16(self.target(), o.ptr, tb, s, ptrs, max_pos)?;
        } else {
            kc::rope::rope_fwd_ragged_bf16(self.target(), o.ptr, tb, s, ptrs, max_pos)?;
        }
        self.finish_bf16(o)
    }

    fn upload_idx<T: bytemuck::Pod>(&self, x: &[T]) -> Result<SimMem> {
        let m = self.dev.alloc(std::mem::size_of_val(x).max(4))?;
        m.write(0, x);
        Ok(m)
    }

    fn in_bf16(&self, v: View<Self>) -> Result<(DPtr<Bf16>, Option<SimMem>)> {
        match &v.buf.st {
            Store::Bf16(s) | Store::Param { work: s, .. } => Ok((dp_bf16(s, v.off, v.len), None)),
            Store::F32(s) => {
                let t = self.tmp(2 * v.len)?;
                let p = dp_bf16(&t, 0, v.len);
                kc::elementwise::cast_f32_to_bf16(self.target(), p, dp_f32(s, v.off, v.len), v.len)?;
                Ok((p, Some(t)))
            }
        }
    }
    fn in_f32(&self, v: View<Self>) -> Result<(DPtr<f32>, Option<SimMem>)> {
        match &v.buf.st {
            Store::F32(s) | Store::Param { master: s, .. } => Ok((dp_f32(s, v.off, v.len), None)),
            Store::Bf16(s) => {
                let t = self.tmp(4 * v.len)?;
                let p = dp_f32(&t, 0, v.len);
                kc::elementwise::cast_bf16_to_f32(self.target(), p, dp_bf16(s, v.off, v.len), v.len)?;
                Ok((p, Some(t)))
            }
        }
    }
    fn out_bf16<'a>(&self, v: ViewMut<'a, Self>, init: bool) -> Result<OutB<'a>> {
        let (off, len) = (v.off, v.len);
        match &v.buf.st {
            Store::Bf16(s) => {
                let ptr = dp_bf16(s, off, len);
                Ok(OutB { ptr, tmp: None, dst: v })
            }
            Store::F32(s) | Store::Param { master: s, .. } => {
                let t = self.tmp(2 * len)?;
                let ptr = dp_bf16(&t, 0, len);
                if init {
                    kc::elementwise::cast_f32_to_bf16(self.target(), ptr, dp_f32(s, off, len), len)?;
                }
                Ok(OutB { ptr, tmp: Some(t), dst: v })
            }
        }
    }
    fn finish_bf16(&self, o: OutB<'_>) -> Result<()> {
        let Some(t) = o.tmp else { return Ok(()) };
        let (off, len) = (o.dst.off, o.dst.len);
        let src = dp_bf16(&t, 0, len);
        match &o.dst.buf.st {
            Store::Bf16(_) => Ok(()),
            Store::F32(s) => Ok(kc::elementwise::cast_bf16_to_f32(self.target(), dp_f32(s, off, len), src, len)?),
            Store::Param { master, work } => {
                kc::elementwise::cast_bf16_to_f32(self.target(), dp_f32(master, off, len), src, len)?;
                work.copy_from(2 * off, &t, 0, 2 * len);
                Ok(())
            }
        }
    }
    fn out_f32<'a>(&self, v: ViewMut<'a, Self>, init: bool) -> Result<OutF<'a>> {
        let (off, len) = (v.off, v.len);
        match &v.buf.st {
            Store::F32(s) | Store::Param { master: s, .. } => {
                let ptr = dp_f32(s, off, len);
                Ok(OutF { ptr, tmp: None, dst: v })
            }
            Store::Bf16(s) => {
                let t = self.tmp(4 * len)?;
                let ptr = dp_f32(&t, 0, len);
                if init {
                    kc::elementwise::cast_bf16_to_f32(self.target(), ptr, dp_bf16(s, off, len), len)?;
                }
                Ok(OutF { ptr, tmp: Some(t), dst: v })
            }
        }
    }
    fn finish_f32(&self, o: OutF<'_>) -> Result<()> {
        let (off, len) = (o.dst.off, o.dst.len);
        match &o.dst.buf.st {
            Store::F32(_) => Ok(()),
            Store::Param { master, work } => Ok(kc::elementwise::cast_f32_to_bf16(self.target(), dp_bf16(work, off, len), dp_f32(master, off, len), len)?),
            Store::Bf16(s) => {
                let t = o.tmp.as_ref().ok_or_else(|| RtError::Op { op: "finish", msg: "missing temporary".into() })?;
                Ok(kc::elementwise::cast_f32_to_bf16(self.target(), dp_bf16(s, off, len), dp_f32(t, 0, len), len)?)
            }
        }
    }
    fn all_kind(kind: BufKind, kinds: &[BufKind]) -> bool {
        kinds.iter().all(|&k| k == kind)
    }
}

impl Backend for SimBackend {
    type Buf = SimBuf;

    fn name(&self) -> String {
        "cuda-sim (the CUDA kernels on the CPU layer)".into()
    }

    fn alloc(&self, n: usize, kind: BufKind) -> Result<SimBuf> {
        let st = match kind {
            BufKind::Act => Store::Bf16(self.dev.alloc(2 * n)?),
            BufKind::F32 => Store::F32(self.dev.alloc(4 * n)?),
            BufKind::Param => Store::Param { master: self.dev.alloc(4 * n)?, work: self.dev.alloc(2 * n)? },
        };
        Ok(SimBuf { kind, len: n, st })
    }

    fn upload(&self, dst: ViewMut<Self>, src: &[f32]) -> Result<()> {
        check_len("upload", "src", src.len(), dst.len)?;
        let off = dst.off;
        match &dst.buf.st {
            Store::Bf16(s) => s.write(2 * off, &bits(src)),
            Store::F32(s) => s.write(4 * off, src),
            Store::Param { master, work } => {
                master.write(4 * off, src);
                work.write(2 * off, &bits(src));
            }
        }
        Ok(())
    }

    fn download(&self, src: View<Self>, dst: &mut [f32]) -> Result<()> {
        check_len("download", "dst", dst.len(), src.len)?;
        let off = src.off;
        match &src.buf.st {
            Store::Bf16(s) => {
                let mut b = vec![0u16; dst.len()];
                s.read(2 * off, &mut b);
                for (d, x) in dst.iter_mut().zip(b) {
                    *d = half::bf16::from_bits(x).to_f32();
                }
            }
            Store::F32(s) | Store::Param { master: s, .. } => s.read(4 * off, dst),
        }
        Ok(())
    }

    fn zero(&self, dst: ViewMut<Self>) -> Result<()> {
        let (off, len) = (dst.off, dst.len);
        match &dst.buf.st {
            Store::Bf16(s) => s.fill(2 * off, 2 * len, 0),
            Store::F32(s) => s.fill(4 * off, 4 * len, 0),
            Store::Param { master, work } => {
                master.fill(4 * off, 4 * len, 0);
                work.fill(2 * off, 2 * len, 0);
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
        let (doff, soff) = (dst.off, src.off);
        match (&dst.buf.st, &src.buf.st) {
            (Store::Bf16(d), Store::Bf16(s)) | (Store::Bf16(d), Store::Param { work: s, .. }) => d.copy_from(2 * doff, s, 2 * soff, 2 * len),
            (Store::F32(d), Store::F32(s) | Store::Param { master: s, .. }) => d.copy_from(4 * doff, s, 4 * soff, 4 * len),
            (Store::Param { master, work }, Store::Param { master: sm, work: sw }) => {
                master.copy_from(4 * doff, sm, 4 * soff, 4 * len);
                work.copy_from(2 * doff, sw, 2 * soff, 2 * len);
            }
            (Store::Bf16(d), Store::F32(s)) => kc::elementwise::cast_f32_to_bf16(self.target(), dp_bf16(d, doff, len), dp_f32(s, soff, len), len)?,
            (Store::F32(d), Store::Bf16(s)) => kc::elementwise::cast_bf16_to_f32(self.target(), dp_f32(d, doff, len), dp_bf16(s, soff, len), len)?,
            (Store::Param { master, work }, Store::F32(s)) => {
                master.copy_from(4 * doff, s, 4 * soff, 4 * len);
                kc::elementwise::cast_f32_to_bf16(self.target(), dp_bf16(work, doff, len), dp_f32(s, soff, len), len)?;
            }
            (Store::Param { master, work }, Store::Bf16(s)) => {
                kc::elementwise::cast_bf16_to_f32(self.target(), dp_f32(master, doff, len), dp_bf16(s, soff, len), len)?;
                work.copy_from(2 * doff, s, 2 * soff, 2 * len);
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn embedding_fwd(&self, out: ViewMut<Self>, tokens: &[u32], table: View<Self>, v: usize, c: usize) -> Result<()> {
        const OP: &str = "embedding_fwd";
        check_len(OP, "out", out.len, tokens.len() * c)?;
        check_len(OP, "table", table.len, v * c)?;
        check_ids(OP, tokens, v, "token")?;
        let ids = self.upload_idx(tokens)?;
        let (tb, _t) = self.in_bf16(table)?;
        let o = self.out_bf16(out, false)?;
        kc::embedding::embedding_fwd_bf16(self.target(), o.ptr, DPtr::new(ids.addr(), tokens.len()), tb, tokens.len(), v, c)?;
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
        kc::embedding::embedding_bwd_f32(
            self.target(),
            o.ptr,
            d,
            DPtr::new(du.addr(), uniq.len()),
            DPtr::new(doff.addr(), offsets.len()),
            DPtr::new(dord.addr(), order.len()),
            uniq.len(),
            tokens.len(),
            v,
            c,
        )?;
        self.finish_f32(o)
    }

    fn matmul(&self, _c: ViewMut<Self>, _a: View<Self>, _b: View<Self>, _g: Gemm) -> Result<()> {
        Err(RtError::Op { op: "matmul", msg: "cuBLASLt is not one of our kernels and has no CPU layer; HINT: the matmul rows of gpu-check need a GPU".into() })
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
        let partial = self.tmp(4 * parts * c)?;
        let pp = dp_f32(&partial, 0, parts * c);
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
                let (_op, _ml, sc) = self.splitk_scratch(&s, false)?;
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
        let delta = self.tmp(4 * nd)?;
        let dq = self.out_bf16(dq, false)?;
        let dk = self.out_bf16(dk, false)?;
        let dv = self.out_bf16(dv, false)?;
        let p = kc::attention::AttnBwdParams {
            dq: dq.ptr,
            dk: dk.ptr,
            dv: dv.ptr,
            delta: dp_f32(&delta, 0, nd),
            dout: dop,
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            shape: s,
        };
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => {
                let (_acc, _sync, sc) = self.v3_scratch(&s)?;
                kc::attention::attention_bwd_v3_bf16(self.target(), &p, &sc, None)?;
            }
            AttnImpl::Mma => kc::attention::attention_bwd_mma_bf16(self.target(), &p)?,
            _ => kc::attention::attention_bwd_bf16(self.target(), &p)?,
        }
        self.finish_bf16(dq)?;
        self.finish_bf16(dk)?;
        self.finish_bf16(dv)
    }

    // The fused projections, as the CUDA backend's (`fused.rs`; the
    // products on a host stand-in, the same whether `invariant` or not).
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
            CeGrad::PerRow(_) => CeMode::PerRow(coef.as_ref().map(|c| dp_f32(c, 0, n)).ok_or_else(|| RtError::Op { op: OP, msg: "coefficients".into() })?),
        };
        let writes = !matches!(grad, CeGrad::None);
        let lg = self.out_bf16(logits, true)?;
        let ls = self.out_f32(losses, false)?;
        kc::cross_entropy::cross_entropy_fwd_bwd_bf16(self.target(), lg.ptr, ls.ptr, DPtr::new(tg.addr(), n), mode, n, v)?;
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
        let rp = DPtr::new(r.addr(), rows.len());
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
        let rp = DPtr::new(r.addr(), rows.len());
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
        let partial = self.tmp(8 * blocks)?;
        let pp = DPtr::new(partial.addr(), blocks);
        match &x.buf.st {
            Store::Bf16(s) => kc::elementwise::sum_squares_bf16(self.target(), pp, dp_bf16(s, x.off, n), n)?,
            Store::F32(s) | Store::Param { master: s, .. } => kc::elementwise::sum_squares_f32(self.target(), pp, dp_f32(s, x.off, n), n)?,
        }
        let mut host = vec![0f64; blocks];
        partial.read(0, &mut host);
        // in block order, as the CUDA backend
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
                kc::adamw::adamw_step_f32(self.target(), dp_f32(master, poff, plen), dp_bf16(work, poff, plen), g, mo.ptr, vo.ptr, n, &h)?;
            }
            _ => {
                let scratch = self.tmp(2 * n)?;
                let sp = dp_bf16(&scratch, 0, n);
                let po = self.out_f32(params, true)?;
                kc::adamw::adamw_step_f32(self.target(), po.ptr, sp, g, mo.ptr, vo.ptr, n, &h)?;
                self.finish_f32(po)?;
            }
        }
        self.finish_f32(mo)?;
        self.finish_f32(vo)
    }

    // ---- ragged batches and per-token statistics (as runtime/src/cuda/backend.rs)

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
        let rg = ragged_ptrs(&rp, &rl, s.b);
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => kc::attention::attention_fwd_v3_ragged_bf16(self.target(), &p, rg)?,
            AttnImpl::SplitK => {
                let (_op, _ml, sc) = self.splitk_scratch(&s, true)?;
                kc::attention::attention_fwd_splitk_bf16(self.target(), &p, &sc, Some(rg))?
            }
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
        let delta = self.tmp(4 * nd)?;
        let dq = self.out_bf16(dq, false)?;
        let dk = self.out_bf16(dk, false)?;
        let dv = self.out_bf16(dv, false)?;
        let p = kc::attention::AttnBwdParams {
            dq: dq.ptr,
            dk: dk.ptr,
            dv: dv.ptr,
            delta: dp_f32(&delta, 0, nd),
            dout: dop,
            q: qp,
            k: kp,
            v: vp,
            out: op,
            lse: lp,
            shape: s,
        };
        let rg = ragged_ptrs(&rp, &rl, s.b);
        match self.attn_for(s.tq, s.tkv) {
            AttnImpl::V3 => {
                let (_acc, _sync, sc) = self.v3_scratch(&s)?;
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
            CeGrad::PerRow(_) => CeMode::PerRow(coef.as_ref().map(|c| dp_f32(c, 0, n)).ok_or_else(|| RtError::Op { op: OP, msg: "coefficients".into() })?),
        };
        let writes = !matches!(grad, CeGrad::None);
        let lg = self.out_bf16(logits, true)?;
        let ls = self.out_f32(losses, false)?;
        let en = self.out_f32(entropy, false)?;
        kc::cross_entropy::cross_entropy_fwd_bwd_ent_bf16(self.target(), lg.ptr, ls.ptr, en.ptr, DPtr::new(tg.addr(), n), mode, n, v)?;
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
        let ptrs = ragged_ptrs(&rp, &rl, b);
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

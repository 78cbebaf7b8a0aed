//! The CUDA backend's set-up and argument marshalling: construction (the
//! device, stream, kernels, cuBLASLt, memory pool), the attention choice,
//! temporaries, and the conversion of a [`View`] to the pointer type a
//! kernel takes (through a stream-ordered temporary when the buffer is of
//! another kind). The `Backend` ops themselves are in the parent module.

use super::*;

impl CudaBackend {
    /// The backend on GPU `ordinal`. Errors (no panic) when there is no
    /// driver, no such device, or the kernels do not load.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only asks the dynamic loader whether libcuda exists.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(RtError::NoDevice("the NVIDIA driver (libcuda.so) is not installed".into()));
        }
        let count = CudaContext::device_count().map_err(|e| RtError::NoDevice(format!("cuInit/device count failed: {e}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(RtError::NoDevice(format!("device {ordinal} requested, {count} present")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| cu_err("creating the context", e))?;
        let allocator = Self::keep_pool_memory(&ctx)?;
        // One stream: ordering is the stream's, no per-buffer events needed.
        // SAFETY: no buffer of this context exists yet.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| cu_err("creating the stream", e))?;
        let ks = KernelStore::new(ctx.clone());
        ks.load_all()?;
        let blas = Blas::new(&stream)?;
        // LLAMA2_ATTN=simple|mma|v3|auto overrides the kernel choice
        let attn = AttnImpl::from_env();
        let staging = super::super::staging::Staging::new(&ctx).map_err(|e| cu_err("creating the pinned upload ring", e))?;
        Ok(CudaBackend { ctx, stream, ks, blas, attn: std::sync::Mutex::new(attn), allocator, staging: std::sync::Mutex::new(staging) })
    }

    /// cudarc allocates with `cuMemAllocAsync` from the device's default
    /// stream-ordered pool where the device supports pools
    /// (`CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED`), and with plain
    /// `cuMemAlloc` / `cuMemFree` (a synchronize before each free) where it
    /// does not. A pool's release threshold is 0 by default: at every
    /// synchronisation the pool hands its free memory back to the driver, and
    /// the next step allocates it again. The threshold is raised to the
    /// maximum, so freed blocks stay in the pool for reuse. Returns the
    /// choice, in words (gpu-check prints it).
    pub(super) fn keep_pool_memory(ctx: &Arc<CudaContext>) -> Result<String> {
        if !ctx.has_async_alloc() {
            return Ok("cuMemAlloc/cuMemFree (the device has no stream-ordered memory pools; cudarc falls back to them)".into());
        }
        use cudarc::driver::{result, sys};
        ctx.bind_to_thread().map_err(|e| cu_err("binding the context", e))?;
        // SAFETY: cu_device() is the context's device, from cuDeviceGet.
        let pool = unsafe { result::device::get_default_mem_pool(ctx.cu_device()) }.map_err(|e| cu_err("cuDeviceGetDefaultMemPool", e))?;
        let mut threshold: u64 = u64::MAX;
        // SAFETY: a valid pool; RELEASE_THRESHOLD takes a cuuint64_t.
        unsafe {
            result::mem_pool::set_attribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            )
        }
        .map_err(|e| cu_err("cuMemPoolSetAttribute(RELEASE_THRESHOLD)", e))?;
        Ok("cuMemAllocAsync from the device's default memory pool, release threshold raised to the maximum (freed memory stays in the pool)".into())
    }

    /// How device memory is allocated (`keep_pool_memory`).
    pub fn allocator(&self) -> &str {
        &self.allocator
    }

    /// Chooses the attention kernels (gpu-check runs each).
    pub fn set_attention_impl(&self, a: AttnImpl) {
        if let Ok(mut g) = self.attn.lock() {
            *g = a;
        }
    }

    /// The attention kernels chosen now (`LLAMA2_ATTN` at start, then
    /// [`Self::set_attention_impl`]).
    pub fn attention_impl(&self) -> AttnImpl {
        self.attn.lock().map(|g| *g).unwrap_or(AttnImpl::Auto)
    }

    /// The attention kernels a call with `tq` query rows against `tkv` keys runs.
    pub(super) fn attn_for(&self, tq: usize, tkv: usize) -> AttnImpl {
        self.attention_impl().resolve(tq, tkv)
    }

    /// The scratch of the split-K forward (`opart`, `ml`; uninitialised:
    /// the kernels read only what they wrote).
    pub(super) fn splitk_scratch(&self, s: &AttnShape, ragged: bool) -> Result<(CudaSlice<f32>, CudaSlice<f32>)> {
        let (no, nm) = kc::attention::splitk_scratch_len(s, ragged);
        Ok((self.tmp_f32(no)?, self.tmp_f32(nm)?))
    }

    /// The zeroed scratch of the v3 backward ([`kc::attention::AttnBwdV3Scratch`]).
    pub(super) fn v3_scratch(&self, s: &AttnShape) -> Result<(CudaSlice<f32>, CudaSlice<i32>)> {
        let e = |e| cu_err("attention scratch", e);
        let acc = self.stream.alloc_zeros::<f32>(s.b * s.tq * s.n_head * s.hd).map_err(e)?;
        let sync = self.stream.alloc_zeros::<i32>(kc::attention::bwd_v3_sync_len(s)).map_err(e)?;
        Ok((acc, sync))
    }

    /// Where the launchers run this backend's kernels: its device and stream.
    pub(super) fn target(&self) -> kc::Target<'_> {
        kc::Target::Cuda { ks: &self.ks, stream: &self.stream }
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub fn kernels(&self) -> &KernelStore {
        &self.ks
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// Device name as the driver reports it.
    pub fn device_name(&self) -> String {
        self.ctx.name().unwrap_or_else(|_| "unknown".into())
    }

    /// Device time in ms of the work `f` enqueues on this backend's stream,
    /// between two CUDA events (waits for the end event).
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let e0 = self.ctx.new_event(flags).map_err(|e| cu_err("event", e))?;
        let e1 = self.ctx.new_event(flags).map_err(|e| cu_err("event", e))?;
        e0.record(&self.stream).map_err(|e| cu_err("event record", e))?;
        f()?;
        e1.record(&self.stream).map_err(|e| cu_err("event record", e))?;
        e0.elapsed_ms(&e1).map_err(|e| cu_err("event elapsed", e))
    }

    /// The bf16 working copy of a `Param` window, as f32 (for checks: it
    /// must equal bf16(master) after every op that writes the buffer).
    pub fn download_work(&self, src: View<Self>) -> Result<Vec<f32>> {
        let Store::Param { work, .. } = &src.buf.st else {
            return Err(RtError::Op { op: "download_work", msg: "not a Param buffer".into() });
        };
        let mut bits = vec![0u16; src.len];
        if src.len > 0 {
            self.stream.memcpy_dtoh(&work.slice(src.off..src.off + src.len), &mut bits).map_err(|e| cu_err("download", e))?;
            self.stream.synchronize().map_err(|e| cu_err("synchronize", e))?;
        }
        Ok(bits.into_iter().map(|b| bf16::from_bits(b).to_f32()).collect())
    }

    pub(super) fn tmp_u16(&self, n: usize) -> Result<CudaSlice<u16>> {
        // SAFETY: every use writes the temporary fully before reading it.
        unsafe { self.stream.alloc::<u16>(n.max(1)) }.map_err(|e| cu_err("temporary allocation", e))
    }
    pub(super) fn tmp_f32(&self, n: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: as tmp_u16.
        unsafe { self.stream.alloc::<f32>(n.max(1)) }.map_err(|e| cu_err("temporary allocation", e))
    }
    /// A ragged batch's per-sequence positions and lengths on the device (i32).
    pub(super) fn upload_ragged(&self, r: Ragged) -> Result<(CudaSlice<i32>, CudaSlice<i32>)> {
        let to_i32 = |x: &[u32], what: &str| -> Result<Vec<i32>> {
            x.iter().map(|&v| i32::try_from(v).map_err(|_| RtError::Op { op: "ragged", msg: format!("{what} {v} does not fit an i32") })).collect()
        };
        Ok((self.upload_idx(&to_i32(r.pos0, "position")?)?, self.upload_idx(&to_i32(r.len, "length")?)?))
    }

    pub(super) fn ragged_ptrs(&self, pos0: &CudaSlice<i32>, len: &CudaSlice<i32>, b: usize) -> kc::rope::RaggedPtrs {
        kc::rope::RaggedPtrs { pos0: DPtr::new(addr(pos0, &self.stream), b), len: DPtr::new(addr(len, &self.stream), b) }
    }

    /// RoPE (or its inverse) on the valid rows of a ragged batch.
    pub(super) fn rope_ragged(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged, inverse: bool) -> Result<()> {
        const OP: &str = "rope_ragged";
        check_len(OP, "x", x.len, s.b * s.t * s.heads * s.hd)?;
        let max_pos = table.len / s.hd.max(1);
        r.check(OP, s.b, s.t, max_pos)?;
        if s.b * s.t == 0 {
            return Ok(());
        }
        let (rp, rl) = self.upload_ragged(r)?;
        let ptrs = self.ragged_ptrs(&rp, &rl, s.b);
        let (tb, _t) = self.in_f32(table)?;
        let o = self.out_bf16(x, true)?;
        if inverse {
            kc::rope::rope_bwd_ragged_bf16(self.target(), o.ptr, tb, s, ptrs, max_pos)?;
        } else {
            kc::rope::rope_fwd_ragged_bf16(self.target(), o.ptr, tb, s, ptrs, max_pos)?;
        }
        self.finish_bf16(o)
    }

    /// Host indices, targets or coefficients to a new device buffer,
    /// through the pinned staging ring (queued without waiting for the
    /// stream, see `cuda::staging`). An empty `x` gives one zero.
    pub(super) fn upload_idx<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + bytemuck::Pod>(&self, x: &[T]) -> Result<CudaSlice<T>> {
        if x.is_empty() {
            return self.stream.alloc_zeros::<T>(1).map_err(|e| cu_err("index upload", e));
        }
        // SAFETY: every element is written by the copy below before any
        // kernel reads it (stream order).
        let dst = unsafe { self.stream.alloc::<T>(x.len()) }.map_err(|e| cu_err("index upload", e))?;
        let dptr = addr(&dst, &self.stream);
        let mut ring = self.staging.lock().map_err(|_| RtError::Op { op: "index upload", msg: "the staging ring's lock is poisoned".into() })?;
        // SAFETY: dst is this context's device memory of x.len() elements,
        // alive until the copy has run (it is freed in stream order, after
        // the kernels that read it); the stream is the backend's own.
        unsafe { ring.upload(&self.stream, dptr, bytemuck::cast_slice(x)) }.map_err(|e| cu_err("index upload", e))?;
        Ok(dst)
    }

    pub(super) fn dp_bf16(&self, s: &CudaSlice<u16>, off: usize, len: usize) -> DPtr<Bf16> {
        DPtr::new(addr(s, &self.stream) + 2 * off as u64, len)
    }
    pub(super) fn dp_f32(&self, s: &CudaSlice<f32>, off: usize, len: usize) -> DPtr<f32> {
        DPtr::new(addr(s, &self.stream) + 4 * off as u64, len)
    }

    /// A window read as bf16 (a Param's working copy; F32 converted).
    pub(super) fn in_bf16(&self, v: View<Self>) -> Result<(DPtr<Bf16>, Option<CudaSlice<u16>>)> {
        match &v.buf.st {
            Store::Bf16(s) | Store::Param { work: s, .. } => Ok((self.dp_bf16(s, v.off, v.len), None)),
            Store::F32(s) => {
                let t = self.tmp_u16(v.len)?;
                let p = self.dp_bf16(&t, 0, v.len);
                kc::elementwise::cast_f32_to_bf16(self.target(), p, self.dp_f32(s, v.off, v.len), v.len)?;
                Ok((p, Some(t)))
            }
        }
    }

    /// A window read as f32 (a Param's master copy; Act converted).
    pub(super) fn in_f32(&self, v: View<Self>) -> Result<(DPtr<f32>, Option<CudaSlice<f32>>)> {
        match &v.buf.st {
            Store::F32(s) | Store::Param { master: s, .. } => Ok((self.dp_f32(s, v.off, v.len), None)),
            Store::Bf16(s) => {
                let t = self.tmp_f32(v.len)?;
                let p = self.dp_f32(&t, 0, v.len);
                kc::elementwise::cast_bf16_to_f32(self.target(), p, self.dp_bf16(s, v.off, v.len), v.len)?;
                Ok((p, Some(t)))
            }
        }
    }

    /// A window written as bf16; `init` copies the current values in first
    /// (for in-place and accumulating ops).
    pub(super) fn out_bf16<'a>(&self, v: ViewMut<'a, Self>, init: bool) -> Result<OutB<'a>> {
        let (off, len) = (v.off, v.len);
        match &v.buf.st {
            Store::Bf16(s) => {
                let ptr = self.dp_bf16(s, off, len);
                Ok(OutB { ptr, tmp: None, dst: v })
            }
            Store::F32(s) | Store::Param { master: s, .. } => {
                let t = self.tmp_u16(len)?;
                let ptr = self.dp_bf16(&t, 0, len);
                if init {
                    kc::elementwise::cast_f32_to_bf16(self.target(), ptr, self.dp_f32(s, off, len), len)?;
                }
                Ok(OutB { ptr, tmp: Some(t), dst: v })
            }
        }
    }

    pub(super) fn finish_bf16(&self, o: OutB<'_>) -> Result<()> {
        let Some(t) = o.tmp else { return Ok(()) };
        let (off, len) = (o.dst.off, o.dst.len);
        let src = self.dp_bf16(&t, 0, len);
        match &mut o.dst.buf.st {
            Store::Bf16(_) => Ok(()),
            Store::F32(s) => Ok(kc::elementwise::cast_bf16_to_f32(self.target(), self.dp_f32(s, off, len), src, len)?),
            Store::Param { master, work } => {
                kc::elementwise::cast_bf16_to_f32(self.target(), self.dp_f32(master, off, len), src, len)?;
                let mut w = work.slice_mut(off..off + len);
                self.stream.memcpy_dtod(&t.slice(0..len), &mut w).map_err(|e| cu_err("copy", e))
            }
        }
    }

    /// A window written as f32 (a Param's master, its bf16 copy refreshed
    /// by [`Self::finish_f32`]); `init` as in [`Self::out_bf16`].
    pub(super) fn out_f32<'a>(&self, v: ViewMut<'a, Self>, init: bool) -> Result<OutF<'a>> {
        let (off, len) = (v.off, v.len);
        match &v.buf.st {
            Store::F32(s) | Store::Param { master: s, .. } => {
                let ptr = self.dp_f32(s, off, len);
                Ok(OutF { ptr, tmp: None, dst: v })
            }
            Store::Bf16(s) => {
                let t = self.tmp_f32(len)?;
                let ptr = self.dp_f32(&t, 0, len);
                if init {
                    kc::elementwise::cast_bf16_to_f32(self.target(), ptr, self.dp_bf16(s, off, len), len)?;
                }
                Ok(OutF { ptr, tmp: Some(t), dst: v })
            }
        }
    }

    pub(super) fn finish_f32(&self, o: OutF<'_>) -> Result<()> {
        let (off, len) = (o.dst.off, o.dst.len);
        match &o.dst.buf.st {
            Store::F32(_) => Ok(()),
            Store::Param { master, work } => {
                Ok(kc::elementwise::cast_f32_to_bf16(self.target(), self.dp_bf16(work, off, len), self.dp_f32(master, off, len), len)?)
            }
            Store::Bf16(s) => {
                let t = o.tmp.as_ref().ok_or_else(|| cu_err("finish", "missing temporary"))?;
                Ok(kc::elementwise::cast_f32_to_bf16(self.target(), self.dp_bf16(s, off, len), self.dp_f32(t, 0, len), len)?)
            }
        }
    }

    /// For the NCCL communicator (`crate::comm::nccl`): the device address of a window's f32 storage (an F32 buffer, or a
    /// Param's master copy); `None` for a bf16 (Act) buffer.
    pub(crate) fn comm_f32_addr(&self, v: &ViewMut<Self>) -> Option<u64> {
        match &v.buf.st {
            Store::F32(s) | Store::Param { master: s, .. } => Some(addr(s, &self.stream) + 4 * v.off as u64),
            Store::Bf16(_) => None,
        }
    }

    /// After a collective wrote a Param window's master copy: its bf16
    /// working copy = bf16(master) (a no-op for other kinds).
    pub(crate) fn comm_refresh_work(&self, v: ViewMut<Self>) -> Result<()> {
        let (off, len) = (v.off, v.len);
        if let Store::Param { master, work } = &mut v.buf.st {
            if len > 0 {
                kc::elementwise::cast_f32_to_bf16(self.target(), self.dp_bf16(work, off, len), self.dp_f32(master, off, len), len)?;
            }
        }
        Ok(())
    }

    /// Whether every window is stored as bf16 (Act) / f32 (F32).
    pub(super) fn all_kind(kind: BufKind, kinds: &[BufKind]) -> bool {
        kinds.iter().all(|&k| k == kind)
    }
}

//! Pinned (page-locked) host staging for the small host-to-device uploads
//! of every step: token ids, targets, per-row coefficients, row lists,
//! ragged positions and lengths.
//!
//! An asynchronous copy from pageable memory may first wait for the stream
//! to drain, so that the driver can stage it through its own pinned buffer;
//! each step's token upload would then stop the host until the GPU has
//! finished the previous step's work, and the host could never queue
//! ahead. From pinned memory the copy is queued like a kernel. (A CUDA
//! graph can only capture copies from pinned memory, too.)
//!
//! A ring of [`SLOTS`] slots. A slot's bytes are rewritten only after the
//! event recorded behind its previous copy has fired, so the host waits
//! only when it is a whole ring of uploads ahead of the GPU. Slots grow to
//! the largest upload they have held (a training step uploads the same
//! sizes every step, so after the first step nothing is allocated).
//!
//! Public items: none outside the CUDA backend ([`Staging`]).

use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaStream, DriverError};
use std::sync::Arc;

/// Slots in the ring: more than the uploads of one micro-batch (tokens,
/// the embedding backward's three lists, targets, coefficients, a ragged
/// batch's positions and lengths), so one step never waits on itself.
pub const SLOTS: usize = 16;

/// Smallest slot, in bytes (a 4096-token batch of u32 ids is 16 KiB).
const MIN_SLOT: usize = 16 << 10;

struct Slot {
    /// page-locked host memory from `cuMemHostAlloc` (null while `cap` is 0)
    ptr: *mut u8,
    cap: usize,
    /// recorded on the stream behind the last copy out of this slot
    done: CudaEvent,
}

// SAFETY: the pointer is owned page-locked memory, touched only through
// `&mut Staging` (the backend keeps the ring behind a mutex).
unsafe impl Send for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.ptr.is_null() {
            // no copy may still read the memory it frees
            let _ = self.done.synchronize();
            // SAFETY: ptr came from malloc_host and is freed once.
            let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
        }
    }
}

/// The ring of pinned slots.
pub struct Staging {
    ctx: Arc<CudaContext>,
    slots: Vec<Slot>,
    next: usize,
}

impl Staging {
    /// An empty ring (slots are allocated on first use).
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, DriverError> {
        let mut slots = Vec::with_capacity(SLOTS);
        for _ in 0..SLOTS {
            slots.push(Slot { ptr: std::ptr::null_mut(), cap: 0, done: ctx.new_event(None)? });
        }
        Ok(Staging { ctx: ctx.clone(), slots, next: 0 })
    }

    /// Queues a copy of `src` into device memory at `dst` (at least
    /// `src.len()` bytes) on `stream`, through the next slot of the ring.
    ///
    /// # Safety
    /// `dst` must be device memory of this context valid for `src.len()`
    /// bytes until the copy has run (stream order), and `stream` must be of
    /// this context.
    pub unsafe fn upload(&mut self, stream: &CudaStream, dst: sys::CUdeviceptr, src: &[u8]) -> Result<(), DriverError> {
        if src.is_empty() {
            return Ok(());
        }
        let i = self.next;
        self.next = (self.next + 1) % SLOTS;
        let slot = &mut self.slots[i];
        // the copy queued from this slot a ring ago has read it
        slot.done.synchronize()?;
        if slot.cap < src.len() {
            let cap = src.len().next_power_of_two().max(MIN_SLOT);
            self.ctx.bind_to_thread()?;
            let p = result::malloc_host(cap, 0)? as *mut u8;
            if !slot.ptr.is_null() {
                result::free_host(slot.ptr as *mut std::ffi::c_void)?;
            }
            slot.ptr = p;
            slot.cap = cap;
        }
        // SAFETY: the slot holds cap >= src.len() bytes, not read by any
        // queued copy (its event has fired), and does not overlap src.
        std::ptr::copy_nonoverlapping(src.as_ptr(), slot.ptr, src.len());
        let staged = std::slice::from_raw_parts(slot.ptr as *const u8, src.len());
        result::memcpy_htod_async(dst, staged, stream.cu_stream())?;
        slot.done.record(stream)
    }
}

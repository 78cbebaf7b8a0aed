//! NCCL (feature `cuda`): the communicator of CUDA processes, one GPU per
//! rank, through cudarc's NCCL bindings (`libnccl.so.2` loaded at run
//! time, like the other CUDA libraries, so the binary builds and starts
//! where NCCL is absent). Rank 0 makes the NCCL unique id and the host
//! communicator (MPI) broadcasts it, as llm.c does; host values (loss
//! sums, counts, norms, byte gathers) travel over that host communicator.
//!
//! Collectives run on the backend's stream and are waited for (stream
//! synchronize) inside the watchdog's window, so a rank that stops
//! answering makes the others leave with an error instead of hanging.
//! Buffers: F32 buffers and `Param` buffers (the fp32 master copy is
//! reduced or gathered, then the bf16 working copy is re-derived).
//!
//! ZeRO-1 with shards of different lengths: the reduce-scatter is a group
//! of one in-place `ncclReduce` per shard (root = its owner), the
//! all-gather a group of one in-place `ncclBroadcast` per shard.
//!
//! NOT YET RUN ON A GPU (no GPU where it was written): compiled in CI; see
//! docs/distributed.md and docs/gpu-validation.md.
//!
//! Public items: [`NcclComm`], [`nccl_available`].

use super::{check_root, check_shards, Comm, HostComm, Launch, Shards};
use crate::backend::ViewMut;
use crate::cuda::CudaBackend;
use crate::error::{Result, RtError};
use cudarc::nccl::{result, sys};
use std::rc::Rc;

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> RtError {
    RtError::Cuda { what: what.to_string(), location: "comm::nccl".into(), msg: format!("{e:?}") }
}

/// Whether `libnccl` can be loaded here (never panics).
pub fn nccl_available() -> bool {
    // SAFETY: only asks the dynamic loader whether the library exists.
    unsafe { sys::is_culib_present() }
}

/// NCCL over one GPU per rank, with a host communicator beside it.
pub struct NcclComm {
    comm: sys::ncclComm_t,
    launch: Launch,
    host: Rc<dyn HostComm>,
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // SAFETY: `comm` was initialised by ncclCommInitRank and is
        // destroyed once, here.
        unsafe {
            let _ = result::comm_destroy(self.comm);
        }
    }
}

impl NcclComm {
    /// Joins the NCCL clique of the launch `host` describes, on `be`'s
    /// device: rank 0 makes the unique id, `host` broadcasts it.
    pub fn new(be: &CudaBackend, host: Rc<dyn HostComm>) -> Result<Self> {
        if !nccl_available() {
            return Err(RtError::NoDevice(
                "libnccl.so.2 is not installed; HINT: install NCCL (the nvidia-nccl-cu13 wheel or the distribution's libnccl2)".into(),
            ));
        }
        let launch = host.launch();
        let mut id = [0u8; 128];
        if launch.rank == 0 {
            let uid = result::get_uniqueid().map_err(|e| nccl_err("ncclGetUniqueId", e))?;
            for (d, s) in id.iter_mut().zip(uid.internal.iter()) {
                *d = *s as u8;
            }
        }
        host.broadcast_bytes(&mut id, 0)?;
        let mut uid = sys::ncclUniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id.iter()) {
            *d = *s as core::ffi::c_char;
        }
        let nranks = i32::try_from(launch.world).map_err(|e| nccl_err("world size", e))?;
        let rank = i32::try_from(launch.rank).map_err(|e| nccl_err("rank", e))?;
        let mut comm = std::mem::MaybeUninit::uninit();
        let _g = host.enter("ncclCommInitRank");
        be.stream().context().bind_to_thread().map_err(|e| nccl_err("binding the context", e))?;
        // SAFETY: `comm` is written by ncclCommInitRank before it is read;
        // the id is the one rank 0 made, identical on every rank.
        let comm = unsafe {
            result::comm_init_rank(comm.as_mut_ptr(), nranks, uid, rank).map_err(|e| nccl_err("ncclCommInitRank", e))?;
            comm.assume_init()
        };
        drop(_g);
        Ok(NcclComm { comm, launch, host })
    }

    fn stream(be: &CudaBackend) -> sys::cudaStream_t {
        be.stream().cu_stream() as sys::cudaStream_t
    }

    fn addr(op: &'static str, be: &CudaBackend, x: &ViewMut<CudaBackend>) -> Result<u64> {
        be.comm_f32_addr(x).ok_or_else(|| RtError::Op { op, msg: "collectives take F32 or Param buffers, not bf16 activations".into() })
    }

    /// Waits for the collectives queued on the stream, under the watchdog.
    fn wait(&self, be: &CudaBackend, op: &'static str) -> Result<()> {
        let _g = self.host.enter(op);
        be.stream().synchronize().map_err(|e| nccl_err(op, e))
    }

    fn check(op: &'static str, r: std::result::Result<result::NcclStatus, result::NcclError>) -> Result<()> {
        r.map(|_| ()).map_err(|e| nccl_err(op, e))
    }
}

const F32: sys::ncclDataType_t = sys::ncclDataType_t::ncclFloat32;
const SUM: sys::ncclRedOp_t = sys::ncclRedOp_t::ncclSum;

impl Comm<CudaBackend> for NcclComm {
    fn rank(&self) -> usize {
        self.launch.rank
    }
    fn world(&self) -> usize {
        self.launch.world
    }
    fn engine(&self) -> &'static str {
        "nccl"
    }

    fn all_reduce_sum(&self, be: &CudaBackend, mut x: ViewMut<CudaBackend>) -> Result<()> {
        const OP: &str = "ncclAllReduce";
        let p = Self::addr(OP, be, &x)? as *mut core::ffi::c_void;
        // SAFETY: `p` addresses x.len f32 on this device (the window); in
        // place is allowed by NCCL; the stream is the backend's.
        Self::check(OP, unsafe { result::all_reduce(p, p, x.len, F32, SUM, self.comm, Self::stream(be)) })?;
        be.comm_refresh_work(x.reborrow())?;
        self.wait(be, OP)
    }

    fn reduce_scatter_sum(&self, be: &CudaBackend, x: ViewMut<CudaBackend>, shards: &Shards) -> Result<()> {
        const OP: &str = "ncclReduce (reduce-scatter)";
        check_shards(OP, x.len, shards, self.launch.world)?;
        let base = Self::addr(OP, be, &x)?;
        Self::check(OP, result::group_start())?;
        for (r, &(off, len)) in shards.ranges.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let p = (base + 4 * off as u64) as *mut core::ffi::c_void;
            // SAFETY: [off, off + len) lies inside the window (check_shards);
            // in place at the root is allowed by NCCL.
            let r = unsafe { result::reduce(p, p, len, F32, SUM, r as i32, self.comm, Self::stream(be)) };
            if let Err(e) = r {
                let _ = result::group_end();
                return Err(nccl_err(OP, e));
            }
        }
        Self::check(OP, result::group_end())?;
        self.wait(be, OP)
    }

    fn all_gather(&self, be: &CudaBackend, mut x: ViewMut<CudaBackend>, shards: &Shards) -> Result<()> {
        const OP: &str = "ncclBroadcast (all-gather)";
        check_shards(OP, x.len, shards, self.launch.world)?;
        let base = Self::addr(OP, be, &x)?;
        Self::check(OP, result::group_start())?;
        for (r, &(off, len)) in shards.ranges.iter().enumerate() {
            if len == 0 {
                continue;
            }
            let p = (base + 4 * off as u64) as *mut core::ffi::c_void;
            // SAFETY: as in reduce_scatter_sum; in-place broadcast.
            let r = unsafe { result::broadcast(p, p, len, F32, r as i32, self.comm, Self::stream(be)) };
            if let Err(e) = r {
                let _ = result::group_end();
                return Err(nccl_err(OP, e));
            }
        }
        Self::check(OP, result::group_end())?;
        be.comm_refresh_work(x.reborrow())?;
        self.wait(be, OP)
    }

    fn broadcast(&self, be: &CudaBackend, mut x: ViewMut<CudaBackend>, root: usize) -> Result<()> {
        const OP: &str = "ncclBroadcast";
        check_root(root, self.launch.world)?;
        let p = Self::addr(OP, be, &x)? as *mut core::ffi::c_void;
        // SAFETY: `p` addresses the window's x.len f32; in place.
        Self::check(OP, unsafe { result::broadcast(p, p, x.len, F32, root as i32, self.comm, Self::stream(be)) })?;
        be.comm_refresh_work(x.reborrow())?;
        self.wait(be, OP)
    }

    fn barrier(&self) -> Result<()> {
        self.host.barrier()
    }
    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()> {
        self.host.all_reduce_f64(x)
    }
    fn all_reduce_u64(&self, x: &mut [u64]) -> Result<()> {
        self.host.all_reduce_u64(x)
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.host.all_gather_bytes(mine)
    }
    fn seconds(&self) -> f64 {
        self.host.seconds()
    }
}

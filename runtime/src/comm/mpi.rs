//! MPI (feature `mpi`): the communicator of CPU processes started by
//! `mpirun`, through the `mpi` crate (rsmpi) on the system's MPI (Debian's
//! Open MPI). [`MpiWorld`] initialises MPI once per process (and finalises
//! it when dropped); [`MpiComm`] runs the collectives on CPU buffers and
//! the host-side ones for every backend (the NCCL communicator uses it (shared through an `Rc`) for
//! scalars, byte gathers and its unique id).
//!
//! Reductions: `MPI_SUM` over `MPI_FLOAT` / `MPI_DOUBLE` / `MPI_UINT64_T`.
//! With two ranks every sum is one addition `a + b`, which is commutative
//! in IEEE arithmetic, so the result is the same whatever the algorithm;
//! with more ranks the association is the MPI library's (deterministic for
//! a given launch, not necessarily the rank order).
//!
//! Errors: MPI's default handler (`MPI_ERRORS_ARE_FATAL`) ends the job on
//! any transport error; [`abort`] ends every rank after an error on one.
//!
//! Public items: [`MpiWorld`], [`MpiComm`], [`abort`].

use super::{check_root, check_shards, Comm, CommTimer, HostComm, InFlight, Launch, Shards, Watchdog};
use crate::backend::ViewMut;
use crate::cpu::{sl_mut, CpuBackend};
use crate::error::{Result, RtError};
use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
use mpi::datatype::PartitionMut;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::AsRaw;
use mpi::Count;
use std::rc::Rc;

/// MPI, initialised for this process: `MPI_COMM_WORLD`, this rank, the
/// watchdog and the communication timer.
pub struct MpiWorld {
    // dropped last: MPI_Finalize
    world: SimpleCommunicator,
    launch: Launch,
    dog: Watchdog,
    timer: CommTimer,
    _universe: mpi::environment::Universe,
}

fn count(op: &'static str, n: usize) -> Result<Count> {
    Count::try_from(n)
        .map_err(|_| RtError::Op { op, msg: format!("{n} elements exceed MPI's count (i32); HINT: a model this large needs the NCCL path or a newer MPI") })
}

impl MpiWorld {
    /// Initialises MPI (once per process) and reads this rank's place;
    /// the local rank comes from the launcher's environment.
    pub fn init() -> Result<Rc<Self>> {
        let (universe, _threading) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| RtError::Op { op: "MPI_Init", msg: "MPI is already initialised in this process".into() })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        let env = Launch::from_env();
        let launch = Launch { rank, world: size, local_rank: if env.world == size { env.local_rank } else { rank } };
        Ok(Rc::new(MpiWorld { world, launch, dog: Watchdog::start(rank), timer: CommTimer::default(), _universe: universe }))
    }

    fn all_reduce_f32(&self, x: &mut [f32]) -> Result<()> {
        count("all_reduce_sum", x.len())?;
        let _g = self.enter("all_reduce_sum");
        let send = x.to_vec();
        self.world.all_reduce_into(&send[..], x, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_f32(&self, x: &mut [f32], shards: &Shards) -> Result<()> {
        let counts: Vec<Count> = shards.ranges.iter().map(|&(_, l)| count("reduce_scatter_sum", l)).collect::<Result<_>>()?;
        let (off, len) = shards.of(self.launch.rank);
        let mut mine = vec![0f32; len];
        let _g = self.enter("reduce_scatter_sum");
        // SAFETY: `x` holds Σ counts = shards.total elements (checked by the
        // caller), `mine` this rank's count; f32 with MPI_FLOAT and MPI_SUM;
        // the communicator is MPI_COMM_WORLD, alive while `self` is.
        let rc = unsafe {
            mpi::ffi::MPI_Reduce_scatter(
                x.as_ptr() as *const std::ffi::c_void,
                mine.as_mut_ptr() as *mut std::ffi::c_void,
                counts.as_ptr(),
                mpi::ffi::RSMPI_FLOAT,
                mpi::ffi::RSMPI_SUM,
                self.world.as_raw(),
            )
        };
        if rc != 0 {
            return Err(RtError::Op { op: "MPI_Reduce_scatter", msg: format!("error code {rc}") });
        }
        x[off..off + len].copy_from_slice(&mine);
        Ok(())
    }

    fn all_gather_f32(&self, x: &mut [f32], shards: &Shards) -> Result<()> {
        let counts: Vec<Count> = shards.ranges.iter().map(|&(_, l)| count("all_gather", l)).collect::<Result<_>>()?;
        let displs: Vec<Count> = shards.ranges.iter().map(|&(o, _)| count("all_gather", o)).collect::<Result<_>>()?;
        let (off, len) = shards.of(self.launch.rank);
        let mine = x[off..off + len].to_vec();
        let _g = self.enter("all_gather");
        let mut part = PartitionMut::new(x, &counts[..], &displs[..]);
        self.world.all_gather_varcount_into(&mine[..], &mut part);
        Ok(())
    }

    fn broadcast_f32(&self, x: &mut [f32], root: usize) -> Result<()> {
        check_root(root, self.launch.world)?;
        count("broadcast", x.len())?;
        let _g = self.enter("broadcast");
        self.world.process_at_rank(root as i32).broadcast_into(x);
        Ok(())
    }
}

impl HostComm for MpiWorld {
    fn launch(&self) -> Launch {
        self.launch
    }

    fn enter(&self, op: &'static str) -> InFlight<'_> {
        self.dog.enter(op, &self.timer)
    }

    fn seconds(&self) -> f64 {
        self.timer.seconds()
    }

    fn barrier(&self) -> Result<()> {
        let _g = self.enter("barrier");
        self.world.barrier();
        Ok(())
    }

    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()> {
        count("all_reduce_f64", x.len())?;
        let _g = self.enter("all_reduce_f64");
        let send = x.to_vec();
        self.world.all_reduce_into(&send[..], x, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_u64(&self, x: &mut [u64]) -> Result<()> {
        count("all_reduce_u64", x.len())?;
        let _g = self.enter("all_reduce_u64");
        let send = x.to_vec();
        self.world.all_reduce_into(&send[..], x, SystemOperation::sum());
        Ok(())
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        let n = self.launch.world;
        let _g = self.enter("all_gather_bytes");
        let mut lens = vec![0u64; n];
        self.world.all_gather_into(&(mine.len() as u64), &mut lens[..]);
        let counts: Vec<Count> = lens.iter().map(|&l| count("all_gather_bytes", l as usize)).collect::<Result<_>>()?;
        let mut displs = Vec::with_capacity(n);
        let mut at: usize = 0;
        for &l in &lens {
            displs.push(count("all_gather_bytes", at)?);
            at += l as usize;
        }
        let mut all = vec![0u8; at];
        {
            let mut part = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            self.world.all_gather_varcount_into(mine, &mut part);
        }
        let mut out = Vec::with_capacity(n);
        let mut at = 0;
        for &l in &lens {
            out.push(all[at..at + l as usize].to_vec());
            at += l as usize;
        }
        Ok(out)
    }

    /// `x = root's x` on host bytes of the same length on every rank.
    fn broadcast_bytes(&self, x: &mut [u8], root: usize) -> Result<()> {
        check_root(root, self.launch.world)?;
        count("broadcast_bytes", x.len())?;
        let _g = self.enter("broadcast_bytes");
        self.world.process_at_rank(root as i32).broadcast_into(x);
        Ok(())
    }
}

/// Ends every rank of the job with `code` (after this rank reported an
/// error): `MPI_Abort` on `MPI_COMM_WORLD`. Never returns.
pub fn abort(code: i32) -> ! {
    // SAFETY: MPI_Abort takes the world communicator and an exit code; it
    // does not return. Called only after MpiWorld::init succeeded.
    unsafe {
        mpi::ffi::MPI_Abort(mpi::ffi::RSMPI_COMM_WORLD, code);
    }
    std::process::exit(code)
}

/// The MPI communicator of CPU processes.
#[derive(Clone)]
pub struct MpiComm {
    pub world: Rc<MpiWorld>,
}

impl MpiComm {
    pub fn new(world: Rc<MpiWorld>) -> Self {
        MpiComm { world }
    }
}

impl Comm<CpuBackend> for MpiComm {
    fn rank(&self) -> usize {
        self.world.launch.rank
    }
    fn world(&self) -> usize {
        self.world.launch.world
    }
    fn engine(&self) -> &'static str {
        "mpi"
    }
    fn all_reduce_sum(&self, _be: &CpuBackend, x: ViewMut<CpuBackend>) -> Result<()> {
        self.world.all_reduce_f32(sl_mut(x))
    }
    fn reduce_scatter_sum(&self, _be: &CpuBackend, x: ViewMut<CpuBackend>, shards: &Shards) -> Result<()> {
        check_shards("reduce_scatter_sum", x.len, shards, self.world.launch.world)?;
        self.world.reduce_scatter_f32(sl_mut(x), shards)
    }
    fn all_gather(&self, _be: &CpuBackend, x: ViewMut<CpuBackend>, shards: &Shards) -> Result<()> {
        check_shards("all_gather", x.len, shards, self.world.launch.world)?;
        self.world.all_gather_f32(sl_mut(x), shards)
    }
    fn broadcast(&self, _be: &CpuBackend, x: ViewMut<CpuBackend>, root: usize) -> Result<()> {
        self.world.broadcast_f32(sl_mut(x), root)
    }
    fn barrier(&self) -> Result<()> {
        self.world.barrier()
    }
    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()> {
        self.world.all_reduce_f64(x)
    }
    fn all_reduce_u64(&self, x: &mut [u64]) -> Result<()> {
        self.world.all_reduce_u64(x)
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.world.all_gather_bytes(mine)
    }
    fn seconds(&self) -> f64 {
        self.world.seconds()
    }
}

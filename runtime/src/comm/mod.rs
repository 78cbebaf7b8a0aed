//! The communicator seam: the collectives data-parallel training needs,
//! on backend buffers and on small host values, over engines that exist
//! (no home-made transport):
//! - [`Single`]: one process (world size 1); every collective is a no-op;
//! - `MpiComm` (feature `mpi`, module `mpi`): CPU processes over MPI (the
//!   `mpi` crate on the system's Open MPI), started by `mpirun`;
//! - `NcclComm` (feature `cuda`, module `nccl`): CUDA buffers over NCCL
//!   (cudarc's bindings, `libnccl` loaded at run time); MPI hands out the
//!   NCCL unique id and carries the host-side values, as llm.c does.
//!
//! The buffer collectives work on F32 buffers laid out like the parameter
//! arena (gradients) and on `Param` buffers (all-gather of the weights;
//! on CUDA the fp32 master is gathered and the bf16 copy re-derived).
//! ZeRO-1 cuts the arena into one contiguous shard per rank ([`Shards`]);
//! every shard starts at a multiple of [`SHARD_ALIGN`] elements, so each
//! shard's `Σ g²` partials (over the CPU backend's fixed blocks) are the
//! same numbers one process computes, and the global gradient norm is the
//! same sum in the same order at every world size.
//!
//! Failure: every collective of a multi-process communicator runs under a
//! watchdog ([`Watchdog`]): a rank that waits longer than the timeout for
//! the others prints why and exits with an error, which makes `mpirun`
//! end every other rank. A rank that dies is seen by `mpirun` directly.
//!
//! Public items: [`Comm`], [`HostComm`], [`Single`], [`SingleHost`], [`COMM_ENV`], [`Shards`], [`SHARD_ALIGN`],
//! [`Launch`], [`Watchdog`], [`CommTimer`], [`config_hash`];
//! `mpi::{MpiWorld, MpiComm, abort}` (feature `mpi`); `nccl::NcclComm`
//! (feature `cuda`).

use crate::backend::{Backend, ViewMut};
use crate::error::{Result, RtError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "cuda")]
pub mod nccl;

/// Shards start at multiples of this many elements: a multiple of the CPU
/// backend's `Σ x²` block ([`crate::cpu::SUMSQ_BLOCK`]), so per-shard
/// partials are the whole arena's partials; also keeps every shard 32 KiB
/// aligned for vectorised kernels and the transports.
pub const SHARD_ALIGN: usize = 8192;

/// ZeRO-1's cut of a buffer of `total` elements into one contiguous shard
/// per rank: rank `r` owns `[off(r), off(r) + len(r))`. Every shard but the
/// last holds the same number of elements, a multiple of [`SHARD_ALIGN`]
/// (so a small arena may leave the last ranks empty shards).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shards {
    pub total: usize,
    /// `(off, len)` per rank
    pub ranges: Vec<(usize, usize)>,
}

impl Shards {
    /// The cut of `total` elements over `world` ranks.
    pub fn new(total: usize, world: usize) -> Self {
        let world = world.max(1);
        let per = total.div_ceil(world).next_multiple_of(SHARD_ALIGN).max(SHARD_ALIGN);
        let ranges = (0..world)
            .map(|r| {
                let off = (r * per).min(total);
                (off, (off + per).min(total) - off)
            })
            .collect();
        Shards { total, ranges }
    }

    /// The whole buffer as one shard (world size 1).
    pub fn whole(total: usize) -> Self {
        Shards { total, ranges: vec![(0, total)] }
    }

    /// Rank `r`'s `(off, len)`.
    pub fn of(&self, r: usize) -> (usize, usize) {
        self.ranges.get(r).copied().unwrap_or((self.total, 0))
    }

    pub fn world(&self) -> usize {
        self.ranges.len()
    }
}

/// Collectives over backend `B`'s buffers and over host values. Buffer
/// views must have the same length on every rank; host slices too
/// (except [`Comm::all_gather_bytes`]). Every rank must call the same
/// collectives in the same order.
pub trait Comm<B: Backend> {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// Number of ranks.
    fn world(&self) -> usize;
    /// "single", "mpi" or "nccl"
    fn engine(&self) -> &'static str;
    /// `x = Σ over ranks of x` (F32 buffer).
    fn all_reduce_sum(&self, be: &B, x: ViewMut<B>) -> Result<()>;
    /// ZeRO-1's gradient reduction: afterwards `x[shard(rank)]` holds the
    /// sum over ranks of that range; the rest of `x` is unspecified.
    /// `x` covers `shards.total` elements (F32 buffer).
    fn reduce_scatter_sum(&self, be: &B, x: ViewMut<B>, shards: &Shards) -> Result<()>;
    /// ZeRO-1's weight update: afterwards every `x[shard(r)]` is rank
    /// `r`'s (F32 or `Param` buffer of `shards.total` elements).
    fn all_gather(&self, be: &B, x: ViewMut<B>, shards: &Shards) -> Result<()>;
    /// `x = root's x`.
    fn broadcast(&self, be: &B, x: ViewMut<B>, root: usize) -> Result<()>;
    /// Waits for every rank.
    fn barrier(&self) -> Result<()>;
    /// `x = Σ over ranks of x`, element-wise.
    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()>;
    /// `x = Σ over ranks of x`, element-wise.
    fn all_reduce_u64(&self, x: &mut [u64]) -> Result<()>;
    /// Every rank's bytes (any length per rank), in rank order.
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Seconds spent inside collectives so far (waiting included).
    fn seconds(&self) -> f64;
}

/// The host-side collectives of a launch (small values: loss sums,
/// counts, norms, metrics, configuration fingerprints, rollouts): MPI's
/// `MpiWorld` implements them; the NCCL communicator carries its host
/// values over one.
pub trait HostComm {
    fn launch(&self) -> Launch;
    /// Marks a collective in flight (watchdog, timer) until the guard drops.
    fn enter(&self, op: &'static str) -> InFlight<'_>;
    fn barrier(&self) -> Result<()>;
    fn all_reduce_f64(&self, x: &mut [f64]) -> Result<()>;
    fn all_reduce_u64(&self, x: &mut [u64]) -> Result<()>;
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// `x = root's x` (the same length on every rank).
    fn broadcast_bytes(&self, x: &mut [u8], root: usize) -> Result<()>;
    fn seconds(&self) -> f64;
}

/// The host side of a world of one process, for running a device
/// communicator (NCCL) at world size 1 without MPI (the device check):
/// every collective is the identity, timed and watched like the others.
pub struct SingleHost {
    dog: Watchdog,
    timer: CommTimer,
}

impl SingleHost {
    pub fn new() -> Self {
        SingleHost { dog: Watchdog::start(0), timer: CommTimer::default() }
    }
}

impl Default for SingleHost {
    fn default() -> Self {
        Self::new()
    }
}

impl HostComm for SingleHost {
    fn launch(&self) -> Launch {
        Launch::SINGLE
    }
    fn enter(&self, op: &'static str) -> InFlight<'_> {
        self.dog.enter(op, &self.timer)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _x: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_u64(&self, _x: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn broadcast_bytes(&self, _x: &mut [u8], root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn seconds(&self) -> f64 {
        self.timer.seconds()
    }
}

/// Environment variable that makes a one-process run use the device
/// communicator anyway (`nccl`: NCCL at world size 1 over [`SingleHost`];
/// the device check runs the NCCL path this way on a machine without MPI).
pub const COMM_ENV: &str = "LLAMA2_COMM";

/// One process: the world of size 1, where every collective is the
/// identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Single;

impl<B: Backend> Comm<B> for Single {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn engine(&self) -> &'static str {
        "single"
    }
    fn all_reduce_sum(&self, _be: &B, _x: ViewMut<B>) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&self, _be: &B, x: ViewMut<B>, shards: &Shards) -> Result<()> {
        check_shards("reduce_scatter_sum", x.len, shards, 1)
    }
    fn all_gather(&self, _be: &B, x: ViewMut<B>, shards: &Shards) -> Result<()> {
        check_shards("all_gather", x.len, shards, 1)
    }
    fn broadcast(&self, _be: &B, _x: ViewMut<B>, root: usize) -> Result<()> {
        check_root(root, 1)
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn all_reduce_f64(&self, _x: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_u64(&self, _x: &mut [u64]) -> Result<()> {
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![mine.to_vec()])
    }
    fn seconds(&self) -> f64 {
        0.0
    }
}

pub(crate) fn check_shards(op: &'static str, len: usize, shards: &Shards, world: usize) -> Result<()> {
    if shards.total != len || shards.world() != world {
        return Err(RtError::Op {
            op,
            msg: format!("shards of {} elements over {} ranks for a window of {len} on {world} ranks", shards.total, shards.world()),
        });
    }
    Ok(())
}

pub(crate) fn check_root(root: usize, world: usize) -> Result<()> {
    if root >= world {
        return Err(RtError::Op { op: "broadcast", msg: format!("root {root} outside a world of {world}") });
    }
    Ok(())
}

/// Where this process sits in a launch, read from the launcher's
/// environment (`mpirun` of Open MPI: `OMPI_COMM_WORLD_*`; MPICH and
/// PMIx launchers: `PMI_*` / `PMIX_RANK`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub rank: usize,
    pub world: usize,
    /// rank among the processes of this node (the GPU it takes)
    pub local_rank: usize,
}

impl Launch {
    /// One process.
    pub const SINGLE: Launch = Launch { rank: 0, world: 1, local_rank: 0 };

    /// The launch the environment describes ([`Launch::SINGLE`] when no
    /// launcher started this process).
    pub fn from_env() -> Self {
        let get = |keys: &[&str]| keys.iter().find_map(|k| std::env::var(k).ok().and_then(|v| v.trim().parse::<usize>().ok()));
        let world = get(&["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS"]).unwrap_or(1).max(1);
        let rank = get(&["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]).unwrap_or(0);
        let local_rank = get(&["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"]).unwrap_or(rank);
        Launch { rank, world, local_rank }
    }

    pub fn is_distributed(&self) -> bool {
        self.world > 1
    }
}

/// FNV-1a 64 of a text: the fingerprint of a resolved configuration that
/// every rank compares at start.
pub fn config_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// Time spent in collectives (the scaling benchmark's "communication per
/// step"), shared by the clones of a communicator.
#[derive(Clone, Debug, Default)]
pub struct CommTimer {
    nanos: Arc<AtomicU64>,
}

impl CommTimer {
    pub fn add(&self, d: Duration) {
        self.nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }
}

/// Ends this process with an error when one collective waits longer than
/// the timeout (a rank died or hung): the ranks still alive leave instead
/// of hanging, and the launcher ends the job. One background thread that
/// wakes once a second; the collective in flight is marked by
/// [`Watchdog::enter`].
pub struct Watchdog {
    /// 0 when idle, else milliseconds since `epoch` at entry + 1
    since_ms: Arc<AtomicU64>,
    op: Arc<std::sync::Mutex<&'static str>>,
    epoch: Instant,
    pub timeout: Duration,
}

/// Environment variable that sets the collective timeout in seconds
/// (`train-tool --comm-timeout` sets it for its ranks).
pub const TIMEOUT_ENV: &str = "LLAMA2_COMM_TIMEOUT";
/// Default collective timeout: longer than any legitimate wait of a rank
/// for the others (rank 0 writing a large checkpoint, validation), short
/// enough that a hung job is noticed.
pub const DEFAULT_TIMEOUT_S: u64 = 900;

/// Marks a collective in flight; its drop marks the end.
pub struct InFlight<'a> {
    w: &'a Watchdog,
    t0: Instant,
    timer: &'a CommTimer,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.w.since_ms.store(0, Ordering::SeqCst);
        self.timer.add(self.t0.elapsed());
    }
}

impl Watchdog {
    /// A watchdog for rank `rank` with the timeout of [`TIMEOUT_ENV`]
    /// (default [`DEFAULT_TIMEOUT_S`]).
    pub fn start(rank: usize) -> Self {
        let secs = std::env::var(TIMEOUT_ENV).ok().and_then(|s| s.parse::<u64>().ok()).filter(|&s| s > 0).unwrap_or(DEFAULT_TIMEOUT_S);
        let w = Watchdog {
            since_ms: Arc::new(AtomicU64::new(0)),
            op: Arc::new(std::sync::Mutex::new("")),
            epoch: Instant::now(),
            timeout: Duration::from_secs(secs),
        };
        let (since, op, epoch, timeout) = (w.since_ms.clone(), w.op.clone(), w.epoch, w.timeout);
        let spawned = std::thread::Builder::new().name("llama2-comm-watchdog".into()).spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let s = since.load(Ordering::SeqCst);
            if s == 0 {
                continue;
            }
            let waited = epoch.elapsed().saturating_sub(Duration::from_millis(s - 1));
            if waited > timeout {
                let name = op.lock().map(|g| *g).unwrap_or("?");
                eprintln!(
                    "error: rank {rank}: the collective `{name}` has waited {:.0} s for the other ranks (timeout {} s); another rank has died or hung; HINT: see the other ranks' errors above; raise the timeout with --comm-timeout (env {TIMEOUT_ENV}) if a rank legitimately works that long alone",
                    waited.as_secs_f64(),
                    timeout.as_secs()
                );
                std::process::exit(3);
            }
        });
        if let Err(e) = spawned {
            eprintln!("warning: no collective watchdog ({e}); a dead rank may leave the others waiting");
        }
        w
    }

    /// Marks `op` in flight until the returned guard drops; the guard adds
    /// the time to `timer`.
    pub fn enter<'a>(&'a self, op: &'static str, timer: &'a CommTimer) -> InFlight<'a> {
        if let Ok(mut g) = self.op.lock() {
            *g = op;
        }
        self.since_ms.store(self.epoch.elapsed().as_millis() as u64 + 1, Ordering::SeqCst);
        InFlight { w: self, t0: Instant::now(), timer }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_arena_in_aligned_pieces() {
        for total in [0, 1, 8191, 8192, 8193, 100_000, 1_234_567] {
            for world in 1..=5 {
                let s = Shards::new(total, world);
                assert_eq!(s.world(), world);
                let mut next = 0;
                for r in 0..world {
                    let (off, len) = s.of(r);
                    assert_eq!(off, next, "total {total} world {world} rank {r}");
                    assert!(off.is_multiple_of(SHARD_ALIGN) || off == total, "rank {r} starts at {off}");
                    next = off + len;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn the_hash_tells_configurations_apart() {
        assert_eq!(config_hash(""), 0xcbf29ce484222325);
        assert_ne!(config_hash("{\"lr\":0.001}"), config_hash("{\"lr\":0.002}"));
    }
}

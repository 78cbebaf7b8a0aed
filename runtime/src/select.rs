//! Choosing a backend by name, for programs that embed the runtime: the
//! model code is generic over [`Backend`], so a program writes its work once
//! as a [`BackendJob`] and runs it on the backend a name selects.
//!
//! ```
//! use llama2_runtime::{select::{run_on, BackendJob, DeviceSpec}, Backend};
//!
//! struct Name;
//! impl BackendJob for Name {
//!     type Out = String;
//!     fn run<B: Backend>(self, be: &B) -> String {
//!         be.name()
//!     }
//! }
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! assert_eq!(run_on(spec, 1, Name).unwrap(), "cpu");
//! ```
//!
//! Data-parallel programs join their launch first ([`Cluster::join`]) and
//! run a [`DistJob`], which gets the backend of its rank and the
//! communicator that goes with it ([`crate::comm`]).
//!
//! Public items: [`DeviceSpec`], [`BackendJob`], [`run_on`], [`cuda_available`],
//! [`DistJob`], [`Cluster`].

use crate::backend::Backend;
use crate::comm::{Comm, Launch, Single};
use crate::cpu::CpuBackend;
use crate::error::{Result, RtError};
use std::str::FromStr;

/// Which backend to run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// CUDA device 0 when built with CUDA and a GPU is present, else the CPU
    Auto,
    Cpu,
    /// CUDA device N
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = RtError;
    /// `auto`, `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(DeviceSpec::Cuda).ok_or_else(|| RtError::UnknownDevice(s.to_string())),
        }
    }
}

/// Work that runs on any backend.
pub trait BackendJob {
    type Out;
    fn run<B: Backend>(self, be: &B) -> Self::Out;
}

/// Whether this build has CUDA and a GPU is present (never panics without
/// a driver).
pub fn cuda_available() -> bool {
    #[cfg(feature = "cuda")]
    {
        crate::cuda::device_count().map(|n| n > 0).unwrap_or(false)
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

/// Creates the backend `spec` names (`threads` CPU threads, 0 = one per
/// core) and runs `job` on it. Errors when the backend cannot be created
/// (no CUDA in this build, no GPU, a bad thread count).
pub fn run_on<J: BackendJob>(spec: DeviceSpec, threads: usize, job: J) -> Result<J::Out> {
    match spec {
        DeviceSpec::Cpu => Ok(job.run(&CpuBackend::new(threads)?)),
        DeviceSpec::Cuda(n) => run_cuda(n, job),
        DeviceSpec::Auto if cuda_available() => run_cuda(0, job),
        DeviceSpec::Auto => Ok(job.run(&CpuBackend::new(threads)?)),
    }
}

#[cfg(feature = "cuda")]
fn run_cuda<J: BackendJob>(ordinal: usize, job: J) -> Result<J::Out> {
    Ok(job.run(&crate::cuda::CudaBackend::new(ordinal)?))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: BackendJob>(_ordinal: usize, _job: J) -> Result<J::Out> {
    Err(RtError::NotCompiledWithCuda)
}

/// Work that runs on any backend on every rank of a launch, with the
/// communicator of its backend.
pub trait DistJob {
    type Out;
    fn run<B: Backend>(self, be: &B, comm: &dyn Comm<B>) -> Self::Out;
}

/// This process's place in a launch, joined: one process, or a rank of an
/// `mpirun` launch with MPI initialised (feature `mpi`). Holds MPI until
/// dropped (`MPI_Finalize`); on an error a rank calls [`Cluster::abort`]
/// instead, so the others do not wait for it.
pub struct Cluster {
    pub launch: Launch,
    #[cfg(feature = "mpi")]
    mpi: Option<std::rc::Rc<crate::comm::mpi::MpiWorld>>,
}

impl Cluster {
    /// Joins the launch the environment describes (MPI is initialised only
    /// under a launcher with more than one rank).
    pub fn join() -> Result<Self> {
        let env = Launch::from_env();
        if !env.is_distributed() {
            return Ok(Cluster {
                launch: Launch::SINGLE,
                #[cfg(feature = "mpi")]
                mpi: None,
            });
        }
        #[cfg(feature = "mpi")]
        {
            let w = crate::comm::mpi::MpiWorld::init()?;
            use crate::comm::HostComm;
            Ok(Cluster { launch: w.launch(), mpi: Some(w) })
        }
        #[cfg(not(feature = "mpi"))]
        Err(RtError::Op {
            op: "launch",
            msg: format!(
                "started as rank {} of {} but this binary was built without MPI; HINT: rebuild with `cargo build --release --features mpi` (bash tools/install-mpi.sh installs Open MPI)",
                env.rank, env.world
            ),
        })
    }

    /// Creates the backend `spec` names for this rank (CUDA: the GPU of
    /// its local rank) and its communicator, and runs `job` on them.
    pub fn run<J: DistJob>(&self, spec: DeviceSpec, threads: usize, job: J) -> Result<J::Out> {
        let cuda = match spec {
            DeviceSpec::Cpu => false,
            DeviceSpec::Cuda(_) => true,
            DeviceSpec::Auto => cuda_available(),
        };
        if !self.launch.is_distributed() {
            return if cuda {
                let n = if let DeviceSpec::Cuda(n) = spec { n } else { 0 };
                let nccl = std::env::var(crate::comm::COMM_ENV).is_ok_and(|v| v == "nccl");
                run_cuda_single(n, nccl, job)
            } else {
                Ok(job.run(&CpuBackend::new(threads)?, &Single))
            };
        }
        #[cfg(feature = "mpi")]
        {
            let Some(w) = self.mpi.clone() else { return Err(RtError::Op { op: "launch", msg: "MPI is not initialised".into() }) };
            if cuda {
                run_cuda_nccl(self.launch.local_rank, w, job)
            } else {
                Ok(job.run(&CpuBackend::new(threads)?, &crate::comm::mpi::MpiComm::new(w)))
            }
        }
        #[cfg(not(feature = "mpi"))]
        {
            let _ = (cuda, threads, job);
            Err(RtError::Op { op: "launch", msg: "data parallelism needs MPI; HINT: rebuild with --features mpi".into() })
        }
    }

    /// Waits for every rank (a no-op for one process).
    pub fn barrier(&self) -> Result<()> {
        #[cfg(feature = "mpi")]
        if let Some(w) = &self.mpi {
            use crate::comm::HostComm;
            return w.barrier();
        }
        Ok(())
    }

    /// Ends this process with `code`, and with it every rank of the launch
    /// (`MPI_Abort`), without waiting for the others.
    pub fn abort(&self, code: i32) -> ! {
        #[cfg(feature = "mpi")]
        if self.mpi.is_some() {
            crate::comm::mpi::abort(code)
        }
        std::process::exit(code)
    }
}

/// One GPU: the identity communicator, or (`nccl`) NCCL at world size 1.
#[cfg(feature = "cuda")]
fn run_cuda_single<J: DistJob>(ordinal: usize, nccl: bool, job: J) -> Result<J::Out> {
    let be = crate::cuda::CudaBackend::new(ordinal)?;
    if nccl {
        let comm = crate::comm::nccl::NcclComm::new(&be, std::rc::Rc::new(crate::comm::SingleHost::new()))?;
        return Ok(job.run(&be, &comm));
    }
    Ok(job.run(&be, &Single))
}

#[cfg(not(feature = "cuda"))]
fn run_cuda_single<J: DistJob>(_ordinal: usize, _nccl: bool, _job: J) -> Result<J::Out> {
    Err(RtError::NotCompiledWithCuda)
}

#[cfg(all(feature = "cuda", feature = "mpi"))]
fn run_cuda_nccl<J: DistJob>(local_rank: usize, w: std::rc::Rc<crate::comm::mpi::MpiWorld>, job: J) -> Result<J::Out> {
    let be = crate::cuda::CudaBackend::new(local_rank)?;
    let comm = crate::comm::nccl::NcclComm::new(&be, w)?;
    Ok(job.run(&be, &comm))
}

#[cfg(all(not(feature = "cuda"), feature = "mpi"))]
fn run_cuda_nccl<J: DistJob>(_local_rank: usize, _w: std::rc::Rc<crate::comm::mpi::MpiWorld>, _job: J) -> Result<J::Out> {
    Err(RtError::NotCompiledWithCuda)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_names_are_refused() {
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            let e = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(e.contains("HINT"), "{bad}: {e}");
        }
    }
}

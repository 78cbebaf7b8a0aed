//! `--device` and `--threads`: the backend a command runs on, chosen by
//! name through the runtime's [`llama2_runtime::select`]; training commands
//! run as a [`DistJob`] on every rank of an `mpirun` launch
//! ([`dispatch_dist`]).

use anyhow::Result;
use clap::{Args, ValueEnum};
use llama2_runtime::comm::Comm;
use llama2_runtime::select::{run_on, BackendJob, Cluster, DeviceSpec};
use llama2_runtime::Backend;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// CUDA when built with it and a GPU is present, else CPU
    Auto,
    Cpu,
    Cuda,
}

#[derive(Args, Clone, Debug)]
pub struct DeviceOpts {
    /// Where to run: auto (CUDA if built with it and a GPU is present), cpu or cuda
    #[arg(long, value_enum, default_value = "auto")]
    pub device: DeviceKind,
    /// CPU threads (default: every available core)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
}

impl DeviceOpts {
    pub fn threads(&self) -> usize {
        self.threads.map(|t| t as usize).unwrap_or(0)
    }

    pub fn spec(&self) -> DeviceSpec {
        match self.device {
            DeviceKind::Auto => DeviceSpec::Auto,
            DeviceKind::Cpu => DeviceSpec::Cpu,
            DeviceKind::Cuda => DeviceSpec::Cuda(0),
        }
    }
}

/// A job that can run on any backend.
pub trait Job {
    type Out;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Out>;
}

struct Adapt<J>(J);

impl<J: Job> BackendJob for Adapt<J> {
    type Out = Result<J::Out>;
    fn run<B: Backend>(self, be: &B) -> Result<J::Out> {
        self.0.run(be)
    }
}

/// Creates the backend `opts` asks for and runs `job` on it.
pub fn dispatch<J: Job>(opts: &DeviceOpts, job: J) -> Result<J::Out> {
    run_on(opts.spec(), opts.threads(), Adapt(job))?
}

/// A job that runs on every rank of a launch (one process: rank 0 of 1),
/// with its backend's communicator.
pub trait DistJob {
    type Out;
    fn run<B: Backend>(self, be: &B, comm: &dyn Comm<B>) -> Result<Self::Out>;
}

/// An error every rank reaches together (a refused launch: mismatched
/// configurations, a batch the world size does not divide): each rank
/// reports it and they leave after a barrier, so every rank's message is
/// printed before the launcher ends the job.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

struct AdaptDist<J>(J);

impl<J: DistJob> llama2_runtime::select::DistJob for AdaptDist<J> {
    type Out = Result<J::Out>;
    fn run<B: Backend>(self, be: &B, comm: &dyn Comm<B>) -> Result<J::Out> {
        self.0.run(be, comm)
    }
}

/// Joins the launch (MPI under `mpirun`), creates this rank's backend and
/// communicator and runs `job`. Under a launch of several ranks an error
/// ends every rank: it is printed with the rank, then this rank aborts the
/// job (MPI_Abort), or for a [`Refused`] launch leaves after a barrier.
pub fn dispatch_dist<J: DistJob>(opts: &DeviceOpts, job: J) -> Result<J::Out> {
    let cluster = Cluster::join()?;
    let l = cluster.launch;
    let res = cluster.run(opts.spec(), opts.threads(), AdaptDist(job)).map_err(anyhow::Error::from).and_then(|r| r);
    match res {
        Err(e) if l.is_distributed() => {
            eprintln!("error: rank {} of {}: {e:#}", l.rank, l.world);
            if e.chain().any(|c| c.downcast_ref::<Refused>().is_some()) {
                let _ = cluster.barrier();
                std::process::exit(2);
            }
            cluster.abort(1)
        }
        r => r,
    }
}

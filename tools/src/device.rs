//! `--device` and `--threads`: choosing and creating the backend, and running
//! a backend-generic job on it.

use anyhow::Result;
use clap::{Args, ValueEnum};
use llama2_runtime::{Backend, CpuBackend};

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
}

/// A job that can run on any backend.
pub trait Job {
    type Out;
    fn run<B: Backend>(self, be: &B) -> Result<Self::Out>;
}

/// Creates the backend `opts` asks for and runs `job` on it.
pub fn dispatch<J: Job>(opts: &DeviceOpts, job: J) -> Result<J::Out> {
    match opts.device {
        DeviceKind::Cpu => job.run(&CpuBackend::new(opts.threads())?),
        DeviceKind::Cuda => run_cuda(opts, job),
        DeviceKind::Auto => {
            if cfg!(feature = "cuda") && cuda_present() {
                run_cuda(opts, job)
            } else {
                job.run(&CpuBackend::new(opts.threads())?)
            }
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_present() -> bool {
    llama2_runtime::cuda::device_count().map(|n| n > 0).unwrap_or(false)
}

#[cfg(not(feature = "cuda"))]
fn cuda_present() -> bool {
    false
}

#[cfg(feature = "cuda")]
fn run_cuda<J: Job>(_opts: &DeviceOpts, job: J) -> Result<J::Out> {
    let be = llama2_runtime::cuda::CudaBackend::new(0)?;
    job.run(&be)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda<J: Job>(_opts: &DeviceOpts, _job: J) -> Result<J::Out> {
    anyhow::bail!("{}", llama2_runtime::RtError::NotCompiledWithCuda)
}

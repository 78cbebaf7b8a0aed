//! `--device` and `--threads`: the backend a command runs on, chosen by
//! name through the runtime's [`llama2_runtime::select`].

use anyhow::Result;
use clap::{Args, ValueEnum};
use llama2_runtime::select::{run_on, BackendJob, DeviceSpec};
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

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
//! Public items: [`DeviceSpec`], [`BackendJob`], [`run_on`], [`cuda_available`].

use crate::backend::Backend;
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

//! The CUDA backend (feature `cuda`) or, without the feature, a stub whose
//! constructor returns `RtError::NotCompiledWithCuda`.
//!
//! Public items: [`CudaBackend`] (and with the feature `CudaBuf`,
//! `AttnImpl`, `device_count`, `gemm`).

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
mod staging;
#[cfg(feature = "cuda")]
pub use backend::{AttnImpl, CudaBackend, CudaBuf};

/// Number of CUDA devices; `Ok(0)` where there is no NVIDIA driver (never
/// panics: the driver library is looked up before any call into it).
#[cfg(feature = "cuda")]
pub fn device_count() -> crate::Result<usize> {
    // SAFETY: only asks the dynamic loader whether libcuda exists.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Ok(0);
    }
    let n = cudarc::driver::CudaContext::device_count().map_err(|e| crate::RtError::NoDevice(format!("cuInit/device count failed: {e}")))?;
    Ok(n.max(0) as usize)
}

#[cfg(not(feature = "cuda"))]
mod stub {
    use crate::error::{Result, RtError};

    /// Stand-in for the CUDA backend in a build without the `cuda` feature.
    pub struct CudaBackend {
        _private: (),
    }

    impl CudaBackend {
        /// Always `Err(NotCompiledWithCuda)` in this build.
        pub fn new(_ordinal: usize) -> Result<Self> {
            Err(RtError::NotCompiledWithCuda)
        }
    }
}
#[cfg(not(feature = "cuda"))]
pub use stub::CudaBackend;

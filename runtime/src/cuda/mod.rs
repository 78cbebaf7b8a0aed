//! The CUDA backend (feature `cuda`) or, without the feature, a stub whose
//! constructor returns [`RtError::NotCompiledWithCuda`].
//!
//! Public items: [`CudaBackend`] (and with the feature [`CudaBuf`], [`gemm`]).

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub use backend::{AttnFwd, CudaBackend, CudaBuf};

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

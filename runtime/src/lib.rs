//! llama2-runtime: the backend seam and its implementations.
//!
//! Public items:
//! - [`Backend`], [`Buffer`], [`BufKind`], [`View`], [`ViewMut`], [`v`], [`vm`]:
//!   the op set of the model and its memory windows ([`backend`])
//! - [`CpuBackend`], [`CpuBuf`]: the f32 CPU backend ([`cpu`])
//! - [`CudaBackend`]: the CUDA backend ([`cuda`], feature `cuda`; without it
//!   a stub whose `new` returns `Err(NotCompiledWithCuda)`)
//! - [`RtError`], [`Result`] ([`error`])
//! - [`rng::Rng`]: the seeded random number generator every stream derives from
//! - [`comm`]: the communicator seam of data-parallel training ([`comm::Comm`],
//!   [`comm::Single`]; MPI with feature `mpi`, NCCL with feature `cuda`)
//! - [`select`]: a backend chosen by name (`cpu`, `cuda:N`, `auto`) for
//!   programs that embed the runtime ([`select::run_on`])
//! - re-exported kernel types: [`Gemm`], [`Trans`], [`GradWrite`], [`AttnShape`],
//!   [`RopeShape`], [`CeGrad`], [`AdamWStep`]

pub mod backend;
pub mod comm;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod rng;
pub mod select;

pub use backend::*;
pub use cpu::{CpuBackend, CpuBuf};
pub use cuda::CudaBackend;
#[cfg(feature = "cuda")]
pub use cuda::{AttnImpl, CudaBuf};
pub use error::{Result, RtError};
pub use llama2_kernels as kernels;

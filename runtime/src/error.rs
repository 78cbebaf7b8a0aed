//! Errors of the runtime.

use llama2_kernels::KernelError;

/// Everything the runtime can report. Errors the user can cause carry a hint.
#[derive(Debug, thiserror::Error)]
pub enum RtError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("window [{off}, {off}+{len}) outside a buffer of {have} elements")]
    Range { off: usize, len: usize, have: usize },
    #[error("{op}: {msg}")]
    Op { op: &'static str, msg: String },
    #[error("this binary was built without CUDA; HINT: rebuild with `cargo build --release --features cuda`")]
    NotCompiledWithCuda,
    #[error("no CUDA device: {0}; HINT: use --device cpu")]
    NoDevice(String),
    #[error("CUDA error in {what} at {location}: {msg}")]
    Cuda { what: String, location: String, msg: String },
    #[error("unknown device `{0}`; HINT: use `cpu` or `cuda` (or `cuda:N`)")]
    UnknownDevice(String),
    #[error("could not build a thread pool of {threads} threads: {msg}")]
    ThreadPool { threads: usize, msg: String },
}

pub type Result<T> = std::result::Result<T, RtError>;

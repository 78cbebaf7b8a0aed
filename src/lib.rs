//! llama2: the Llama 2 system in Rust on hand-written CUDA kernels.
//!
//! This root crate re-exports the workspace's crates and owns the
//! end-to-end tests (`tests/`) and benchmarks (`benches/`).
//!
//! - [`kernels`]: every kernel (CPU implementations; CUDA with `cuda`)
//! - [`runtime`]: the `Backend` trait, the CPU and CUDA backends
//! - [`model`]: the Llama model, weights, tokenizer, generation
//! - [`train`]: optimizer, data, checkpoints and the training loops

pub use llama2_kernels as kernels;
pub use llama2_model as model;
pub use llama2_runtime as runtime;
pub use llama2_train as train;

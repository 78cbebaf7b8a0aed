//! The graph: the model's parameters on a backend, its activations, the
//! forward and backward passes written against the `Backend` trait, the
//! KV cache and generation, and a debug probe of attention probabilities.

pub mod acts;
pub mod attn_probe;
pub mod backward;
pub mod chunked;
pub mod forward;
pub mod generate;
pub mod model;
pub mod params;

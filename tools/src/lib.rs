//! llama2-tools: the library half of the tools crate, for what `train-tool` and its tests
//! share and what is too specific to the command line for the training library.
//!
//! Public items:
//! - [`plot`]: report charts as PNG files (line charts, grouped bars, heat maps)

pub mod plot;

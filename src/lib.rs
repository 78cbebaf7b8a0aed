//! llama2

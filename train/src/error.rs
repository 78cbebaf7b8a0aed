//! Errors of the training crate.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Model(#[from] llama2_model::ModelError),
    #[error(transparent)]
    Runtime(#[from] llama2_runtime::RtError),
    #[error(transparent)]
    Shard(#[from] llama2_model::shards::ShardError),
    #[error("{path}: {msg}; HINT: {hint}")]
    BadFile { path: PathBuf, msg: String, hint: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

impl TrainError {
    pub fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        TrainError::Io { path: path.to_path_buf(), err: source }
    }
}

pub type Result<T> = std::result::Result<T, TrainError>;

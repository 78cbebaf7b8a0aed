//! Errors of the model crate. Errors the user can cause name the file and
//! end with a hint.

use llama2_runtime::RtError;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Runtime(#[from] RtError),
    #[error("config: {0}")]
    Config(String),
    #[error("{path}: {msg}; HINT: {hint}")]
    BadFile { path: PathBuf, msg: String, hint: &'static str },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error(transparent)]
    Gguf(#[from] crate::formats::gguf::GgufError),
    #[error(transparent)]
    Template(#[from] crate::text::template::TemplateError),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        ModelError::Io { path: path.to_path_buf(), err: source }
    }
}

pub type Result<T> = std::result::Result<T, ModelError>;

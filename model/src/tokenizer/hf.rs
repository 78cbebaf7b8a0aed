//! Hugging Face `tokenizer.json` of Llama-style BPE models (placeholder).
//!
//! Public items: none yet.

use std::path::Path;

use super::{Result, Tokenizer, TokenizerError};

pub(crate) fn load(path: &Path) -> Result<Tokenizer> {
    Err(TokenizerError::Unsupported {
        path: path.into(),
        what: "tokenizer.json".into(),
        hint: "convert it to a SentencePiece .model or GGUF vocabulary",
    })
}

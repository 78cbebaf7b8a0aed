//! Text: the tokenizer (SentencePiece BPE and its file formats, BPE
//! training) and the chat format.

pub mod chat;
pub mod tokenizer;

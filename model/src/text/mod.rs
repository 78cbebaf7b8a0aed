//! Text: the tokenizer (SentencePiece and byte-level BPE, their file
//! formats, BPE training), the chat formats (Llama-2-chat built in) and the
//! models' own Jinja chat templates.

pub mod chat;
pub mod template;
pub mod tokenizer;

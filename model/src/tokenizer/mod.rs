//! The Llama 2 tokenizer (tokenizer issue).

//! The vocabulary of a GGUF file (llama.cpp's format): its `tokenizer.*`
//! metadata, read through the project's one GGUF parser
//! ([`crate::formats::gguf`]; the tensor data is memory-mapped, never read).
//!
//! Two kinds (`tokenizer.ggml.model`): "llama" (SentencePiece BPE: tokens,
//! scores, token types) and "gpt2" (byte-level BPE: tokens, token types,
//! ranked merges, the pre-tokenizer name `tokenizer.ggml.pre`). Both may carry
//! BOS/EOS/UNK/PAD/EOT ids, add-BOS/EOS flags and the model's Jinja chat
//! template (`tokenizer.chat_template`).
//!
//! Public items: [`GgufVocab`], [`read_vocab`].

use crate::formats::gguf::{GgufFile, GgufValue};

/// The tokenizer metadata of a GGUF file.
#[derive(Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a "gpt2" vocabulary.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// Empty when the file has none (byte-level vocabularies need none).
    pub scores: Vec<f32>,
    /// llama.cpp token types, the same codes as SentencePiece's piece types.
    pub token_types: Vec<i32>,
    /// Ranked merges "a b" (byte-level vocabularies).
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    /// End of turn (`tokenizer.ggml.eot_token_id`), where the chat format
    /// stops generating.
    pub eot_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub remove_extra_whitespaces: Option<bool>,
    /// `tokenizer.chat_template`
    pub chat_template: Option<String>,
}

fn wrong(k: &str, v: &GgufValue, want: &str) -> String {
    format!("{k} is {}, expected {want}", v.describe())
}

fn strings(f: &GgufFile, k: &str) -> Result<Option<Vec<String>>, String> {
    match f.get(k) {
        None => Ok(None),
        Some(v @ GgufValue::Array(8, items)) => {
            items.iter().map(|s| s.as_str().map(String::from).ok_or_else(|| wrong(k, v, "an array of string"))).collect::<Result<_, _>>().map(Some)
        }
        Some(v) => Err(wrong(k, v, "an array of string")),
    }
}

/// Reads the vocabulary of an opened GGUF file.
pub fn read_vocab(f: &GgufFile) -> Result<GgufVocab, String> {
    let mut out = GgufVocab::default();
    match f.get("tokenizer.ggml.model") {
        Some(GgufValue::Str(m)) => out.model = m.clone(),
        Some(v) => return Err(wrong("tokenizer.ggml.model", v, "a string")),
        None => return Err("no tokenizer.ggml.model key: this GGUF has no vocabulary".into()),
    }
    out.tokens = strings(f, "tokenizer.ggml.tokens")?.ok_or("no tokenizer.ggml.tokens key")?;
    let n = out.tokens.len();
    match f.get("tokenizer.ggml.scores") {
        Some(GgufValue::Array(6, items)) => out.scores = items.iter().map(|x| if let GgufValue::F32(s) = x { *s } else { 0.0 }).collect(),
        Some(v) => return Err(wrong("tokenizer.ggml.scores", v, "an array of float32")),
        None if out.model == "llama" => return Err("no tokenizer.ggml.scores key (a SentencePiece vocabulary needs scores)".into()),
        None => {}
    }
    match f.get("tokenizer.ggml.token_type") {
        Some(v @ GgufValue::Array(_, items)) => {
            out.token_types = items
                .iter()
                .map(|x| {
                    x.as_i64()
                        .ok_or_else(|| wrong("tokenizer.ggml.token_type", v, "an array of int32"))
                        .and_then(|x| i32::try_from(x).map_err(|_| format!("token type {x} out of range")))
                })
                .collect::<Result<_, _>>()?
        }
        Some(v) => return Err(wrong("tokenizer.ggml.token_type", v, "an array of int32")),
        None => out.token_types = vec![1; n],
    }
    if (!out.scores.is_empty() && out.scores.len() != n) || out.token_types.len() != n || (out.model == "llama" && out.scores.len() != n) {
        return Err(format!("{n} tokens but {} scores and {} token types", out.scores.len(), out.token_types.len()));
    }
    out.merges = strings(f, "tokenizer.ggml.merges")?.unwrap_or_default();
    let id = |k: &str| -> Result<Option<u32>, String> {
        match f.get(k) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(i) if i < 0 => Ok(None),
                Some(i) => {
                    let i = u32::try_from(i).map_err(|_| format!("{k} = {i} too large"))?;
                    if i as usize >= n {
                        return Err(format!("{k} {i} is out of range for {n} tokens"));
                    }
                    Ok(Some(i))
                }
                None => Err(wrong(k, v, "an integer")),
            },
        }
    };
    out.bos_id = id("tokenizer.ggml.bos_token_id")?;
    out.eos_id = id("tokenizer.ggml.eos_token_id")?;
    out.unk_id = id("tokenizer.ggml.unknown_token_id")?;
    out.pad_id = id("tokenizer.ggml.padding_token_id")?;
    out.eot_id = id("tokenizer.ggml.eot_token_id")?;
    let flag = |k: &str| -> Result<Option<bool>, String> {
        match f.get(k) {
            None => Ok(None),
            Some(GgufValue::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(k, v, "a bool")),
        }
    };
    out.add_bos = flag("tokenizer.ggml.add_bos_token")?;
    out.add_eos = flag("tokenizer.ggml.add_eos_token")?;
    out.add_space_prefix = flag("tokenizer.ggml.add_space_prefix")?;
    out.remove_extra_whitespaces = flag("tokenizer.ggml.remove_extra_whitespaces")?;
    let text = |k: &str| -> Result<Option<String>, String> {
        match f.get(k) {
            None => Ok(None),
            Some(GgufValue::Str(s)) => Ok(Some(s.clone())),
            Some(v) => Err(wrong(k, v, "a string")),
        }
    };
    out.pre = text("tokenizer.ggml.pre")?;
    out.chat_template = text("tokenizer.chat_template")?;
    Ok(out)
}

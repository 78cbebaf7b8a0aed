//! Saving a [`Tokenizer`]: as a SentencePiece `.model`, as GGUF metadata,
//! or beside a model directory (with its chat template).

use super::*;

impl Tokenizer {
    /// Writes the model as a SentencePiece `.model` (loadable by the
    /// `sentencepiece` package), via a temporary file and rename.
    pub fn save_spm_model(&self, path: impl AsRef<Path>) -> Result<()> {
        if self.byte_level.is_some() {
            return Err(TokenizerError::Unsupported {
                path: self.path.clone(),
                what: "writing a byte-level BPE tokenizer as a SentencePiece .model".into(),
                hint: "save it as tokenizer.json (Tokenizer::save_beside)",
            });
        }
        if self.hf.as_ref().is_some_and(|h| h.prefix_only_if_absent || !h.fuse_unk) {
            return Err(TokenizerError::Unsupported {
                path: self.path.clone(),
                what: "writing as .model a tokenizer.json whose Metaspace prefix rule or unfused UNKs SentencePiece cannot express".into(),
                hint: "keep using the tokenizer.json",
            });
        }
        write_atomic(path.as_ref(), &self.proto.to_bytes())
    }

    /// The tokenizer as GGUF metadata (`tokenizer.*` keys, llama.cpp's
    /// layout): "llama" (tokens, scores, token types) or "gpt2" (tokens,
    /// token types, merges, `tokenizer.ggml.pre`), special ids, add-BOS/EOS
    /// flags, and the chat template.
    pub fn gguf_metadata(&self) -> Vec<(String, crate::formats::gguf::GgufValue)> {
        use crate::formats::gguf::GgufValue as V;
        let strs = |v: Vec<String>| V::Array(8, v.into_iter().map(V::Str).collect());
        let mut kv: Vec<(String, V)> = Vec::new();
        let mut put = |k: &str, v: V| kv.push((format!("tokenizer.{k}"), v));
        match (&self.byte_level, &self.json) {
            (Some(bl), Some(j)) => {
                put("ggml.model", V::Str("gpt2".into()));
                put("ggml.pre", V::Str(bl.pre.name.clone()));
                put("ggml.tokens", strs(self.pieces.iter().map(|p| p.text.clone()).collect()));
                put("ggml.token_type", V::Array(5, self.pieces.iter().map(|p| V::I32(p.kind as i32)).collect()));
                let merges: Vec<String> = j["model"]["merges"]
                    .as_array()
                    .map(|m| {
                        m.iter()
                            .filter_map(|x| match x {
                                serde_json::Value::String(s) => Some(s.clone()),
                                serde_json::Value::Array(a) => Some(format!("{} {}", a.first()?.as_str()?, a.get(1)?.as_str()?)),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                put("ggml.merges", strs(merges));
            }
            _ => {
                put("ggml.model", V::Str("llama".into()));
                put("ggml.tokens", strs(self.pieces.iter().map(|p| p.text.clone()).collect()));
                put("ggml.scores", V::Array(6, self.pieces.iter().map(|p| V::F32(p.score)).collect()));
                put("ggml.token_type", V::Array(5, self.pieces.iter().map(|p| V::I32(p.kind as i32)).collect()));
                put("ggml.unknown_token_id", V::U32(self.unk_id));
                put("ggml.add_space_prefix", V::Bool(self.proto.normalizer.add_dummy_prefix));
            }
        }
        for (k, id) in [("bos", self.bos_id), ("eos", self.eos_id), ("padding", self.pad_id), ("eot", self.eot_id)] {
            if let Some(i) = id {
                put(&format!("ggml.{k}_token_id"), V::U32(i));
            }
        }
        put("ggml.add_bos_token", V::Bool(self.add_bos_default));
        put("ggml.add_eos_token", V::Bool(self.add_eos_default));
        if let Some(t) = &self.chat_template {
            put("chat_template", V::Str(t.clone()));
        }
        kv
    }

    /// Writes the tokenizer into a model directory so the directory is
    /// self-contained: `tokenizer.model` (SentencePiece) or `tokenizer.json`
    /// (byte-level, loadable by `tokenizers`), and `tokenizer_config.json`
    /// with the chat template and the BOS/EOS tokens when there is a
    /// template. Returns the tokenizer file written.
    pub fn save_beside(&self, dir: &Path) -> Result<PathBuf> {
        let file = match &self.json {
            Some(j) => {
                let p = dir.join("tokenizer.json");
                write_atomic(&p, serde_json::to_string(j).map_err(|e| TokenizerError::Train(e.to_string()))?.as_bytes())?;
                p
            }
            None => {
                let p = dir.join("tokenizer.model");
                self.save_spm_model(&p)?;
                p
            }
        };
        if let Some(t) = &self.chat_template {
            let name = |id: Option<u32>| id.and_then(|i| self.id_to_piece(i)).map(String::from);
            let cfg = serde_json::json!({
                "chat_template": t,
                "bos_token": name(self.bos_id),
                "eos_token": name(self.eos_id),
                "eot_token": name(self.eot_id),
                "add_bos_token": self.add_bos_default,
            });
            write_atomic(&dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg).map_err(|e| TokenizerError::Train(e.to_string()))?.as_bytes())?;
        }
        Ok(file)
    }
}

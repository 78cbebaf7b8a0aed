//! Hugging Face `tokenizer.json` of Llama-style BPE models: `model.type`
//! "BPE" with byte fallback (or without, then UNK), vocabulary and ranked
//! merges, added tokens, and either layout transformers writes for Llama:
//! the legacy normaliser `Sequence[Prepend("▁"), Replace(" ", "▁")]`
//! (exactly SentencePiece's identity normalisation), or the current
//! `Metaspace` pre-tokenizer (replacement "▁", split false; prepend_scheme
//! "first"/"always" adds "▁" only when the text does not start with a space,
//! "never" adds none).
//!
//! Reference: the `tokenizers` library's serialization of `BPE`,
//! `Metaspace`, `Prepend`/`Replace` and added tokens, and transformers'
//! `LlamaConverter`; checked against `tokenizers` outputs in
//! tests/tokenizer.rs (fixture by tools/scripts/make_hf_tokenizer_cases.py).
//! Mapping onto SentencePiece terms: special added tokens are CONTROL pieces
//! (the UNK token UNKNOWN), other added tokens USER_DEFINED, `<0xHH>`
//! tokens BYTE. Known difference: `tokenizers` cuts special added tokens out
//! of the input text (`"<s>"` typed in text becomes BOS); SentencePiece and we
//! treat such text as text. Byte-level BPE (GPT-2, Llama 3) is rejected.
//!
//! Public items: none (loaded through [`super::Tokenizer::load`]).

use std::path::Path;

use serde_json::Value;

use super::spm_proto::{ModelProto, ModelType, NormalizerSpec, SpmPiece, TrainerSpec};
use super::{parse_byte_piece, HfExtras, PieceKind, Result, SourceFormat, Tokenizer, TokenizerError, META};

fn bad(path: &Path, what: impl Into<String>) -> TokenizerError {
    TokenizerError::HfJson { path: path.into(), what: what.into() }
}

fn type_of(v: &Value) -> &str {
    v.get("type").and_then(Value::as_str).unwrap_or("?")
}

/// (add_dummy_prefix, prefix_only_if_absent) from the normaliser and
/// pre-tokenizer, or an error naming what is not Llama-style.
fn prefix_rule(path: &Path, v: &Value) -> Result<(bool, bool)> {
    let norm = v.get("normalizer").unwrap_or(&Value::Null);
    let pre = v.get("pre_tokenizer").unwrap_or(&Value::Null);
    let meta = META.to_string();
    let legacy = |n: &Value| -> Option<bool> {
        // Sequence[Prepend("▁")?, Replace(" " -> "▁")]
        let list = match type_of(n) {
            "Sequence" => n.get("normalizers")?.as_array()?.clone(),
            _ => vec![n.clone()],
        };
        let mut prepend = false;
        let mut replace = false;
        for x in &list {
            match type_of(x) {
                "Prepend" if x.get("prepend")?.as_str()? == meta => prepend = true,
                "Replace" if x.get("pattern")?.get("String")?.as_str()? == " " && x.get("content")?.as_str()? == meta => replace = true,
                _ => return None,
            }
        }
        replace.then_some(prepend)
    };
    match (norm.is_null(), pre.is_null()) {
        (false, true) => match legacy(norm) {
            Some(prepend) => Ok((prepend, false)),
            None => Err(bad(path, format!("normalizer {} is not Llama's Prepend(\"▁\") + Replace(\" \", \"▁\")", norm))),
        },
        (true, false) if type_of(pre) == "Metaspace" => {
            if pre.get("replacement").and_then(Value::as_str) != Some(meta.as_str()) {
                return Err(bad(path, "Metaspace replacement is not \"▁\""));
            }
            if pre.get("split").and_then(Value::as_bool).unwrap_or(true) {
                return Err(bad(path, "Metaspace with split=true (only split=false, as Llama, is supported)"));
            }
            // older files say add_prefix_space instead of prepend_scheme
            let scheme = match pre.get("prepend_scheme").and_then(Value::as_str) {
                Some(s) => s.to_string(),
                None => if pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true) { "always" } else { "never" }.to_string(),
            };
            match scheme.as_str() {
                "first" | "always" => Ok((true, true)),
                "never" => Ok((false, false)),
                s => Err(bad(path, format!("Metaspace prepend_scheme {s:?}"))),
            }
        }
        (true, false) if type_of(pre) == "ByteLevel" => Err(TokenizerError::Unsupported {
            path: path.into(),
            what: "byte-level BPE (GPT-2 / Llama 3 style)".into(),
            hint: "this tokenizer reads SentencePiece-style (Llama 1/2) vocabularies",
        }),
        _ => Err(bad(path, format!("normalizer {norm} with pre_tokenizer {pre} is not a Llama layout"))),
    }
}

pub(crate) fn load(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Read { path: path.into(), source: e })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
    let model = v.get("model").ok_or_else(|| bad(path, "no \"model\""))?;
    if type_of(model) != "BPE" {
        return Err(TokenizerError::Unsupported {
            path: path.into(),
            what: format!("model.type {:?}", type_of(model)),
            hint: "only BPE tokenizer.json files are read",
        });
    }
    for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(k).is_some_and(|x| !x.is_null()) {
            return Err(bad(path, format!("model.{k} is set (not Llama-style)")));
        }
    }
    let (add_dummy_prefix, prefix_only_if_absent) = prefix_rule(path, &v)?;
    let byte_fallback = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
    let fuse_unk = model.get("fuse_unk").and_then(Value::as_bool).unwrap_or(false);

    // id -> (text, kind), from the vocabulary then the added tokens
    let vocab = model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad(path, "model.vocab is not an object"))?;
    let mut slots: Vec<Option<(String, PieceKind)>> = Vec::new();
    let put = |id: u64, t: &str, kind: PieceKind, slots: &mut Vec<Option<(String, PieceKind)>>| -> Result<()> {
        let id = usize::try_from(id).ok().filter(|&i| i < 1 << 24).ok_or_else(|| bad(path, format!("id {id} of {t:?} is too large")))?;
        if slots.len() <= id {
            slots.resize(id + 1, None);
        }
        slots[id] = Some((t.to_string(), kind));
        Ok(())
    };
    for (t, id) in vocab {
        let id = id.as_u64().ok_or_else(|| bad(path, format!("vocab id of {t:?} is not a non-negative integer")))?;
        let kind = if byte_fallback && parse_byte_piece(t).is_some() { PieceKind::Byte } else { PieceKind::Normal };
        put(id, t, kind, &mut slots)?;
    }
    let unk_token = model.get("unk_token").and_then(Value::as_str);
    for a in v.get("added_tokens").and_then(Value::as_array).map_or(&[][..], |x| x.as_slice()) {
        let (Some(id), Some(t)) = (a.get("id").and_then(Value::as_u64), a.get("content").and_then(Value::as_str)) else {
            return Err(bad(path, format!("added token {a} lacks id or content")));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        let kind = if Some(t) == unk_token {
            PieceKind::Unknown
        } else if special {
            PieceKind::Control
        } else {
            PieceKind::UserDefined
        };
        put(id, t, kind, &mut slots)?;
    }
    if let Some(u) = unk_token {
        let id = vocab.get(u).and_then(Value::as_u64).ok_or_else(|| bad(path, format!("unk_token {u:?} is not in the vocabulary")))?;
        if let Some(Some(s)) = slots.get_mut(id as usize) {
            s.1 = PieceKind::Unknown;
        }
    }
    let mut names: Vec<(String, PieceKind)> = Vec::with_capacity(slots.len());
    for (i, s) in slots.into_iter().enumerate() {
        names.push(s.ok_or_else(|| bad(path, format!("no token has id {i} (ids must be 0..n without gaps)")))?);
    }

    // ranked merges: "a b" strings or [a, b] pairs
    let mut merges = Vec::new();
    for (i, m) in model.get("merges").and_then(Value::as_array).map_or(&[][..], |x| x.as_slice()).iter().enumerate() {
        let pair = match m {
            Value::String(s) => s.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())),
            Value::Array(a) if a.len() == 2 => match (a[0].as_str(), a[1].as_str()) {
                (Some(x), Some(y)) => Some((x.to_string(), y.to_string())),
                _ => None,
            },
            _ => None,
        };
        merges.push(pair.ok_or_else(|| bad(path, format!("merge {i} is {m}, not \"a b\" or [a, b]")))?);
    }
    // piece scores for a .model: minus the rank of the first merge making it
    let mut score: rustc_hash::FxHashMap<String, f32> = rustc_hash::FxHashMap::default();
    for (rank, (a, b)) in merges.iter().enumerate() {
        score.entry(format!("{a}{b}")).or_insert(-(rank as f32));
    }
    let id_of = |t: &str| names.iter().position(|n| n.0 == t).map_or(-1, |i| i as i32);
    let unk_id = names.iter().position(|n| n.1 == PieceKind::Unknown).map_or(-1, |i| i as i32);
    let add_bos = v.get("post_processor").map(|p| p.to_string().contains("\"<s>\"")).unwrap_or(false);
    let pieces: Vec<SpmPiece> = names.iter().map(|(t, k)| SpmPiece { piece: t.clone(), score: score.get(t).copied().unwrap_or(0.0), kind: *k }).collect();
    let proto = ModelProto {
        trainer: TrainerSpec {
            model_type: ModelType::Bpe,
            vocab_size: pieces.len() as i32,
            byte_fallback,
            allow_whitespace_only_pieces: true,
            unk_id,
            bos_id: id_of("<s>"),
            eos_id: id_of("</s>"),
            pad_id: -1,
            ..TrainerSpec::default()
        },
        normalizer: NormalizerSpec {
            name: "identity".into(),
            precompiled_charsmap: vec![],
            add_dummy_prefix,
            remove_extra_whitespaces: false,
            escape_whitespaces: true,
        },
        pieces,
        has_trainer_spec: true,
        has_normalizer_spec: true,
    };
    let mut t = Tokenizer::build(proto, path, SourceFormat::HfJson, Some(HfExtras { merges, prefix_only_if_absent, fuse_unk }))?;
    t.add_bos_default = add_bos;
    Ok(t)
}

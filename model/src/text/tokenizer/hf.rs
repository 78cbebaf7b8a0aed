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
//! treat such text as text ([`super::Tokenizer::encode_special`] cuts them).
//!
//! Byte-level BPE `tokenizer.json` files (GPT-2, Llama 3, SmolLM /
//! StarCoder): `model.type` "BPE" with a `ByteLevel` pre-tokenizer or
//! decoder; the pre-tokenizer chain of `ByteLevel`, `Split` (regex,
//! Isolated) and `Digits` steps, no normaliser; `ignore_merges`; added
//! tokens (special ones CONTROL, others USER_DEFINED). The same model from
//! a GGUF `gpt2` vocabulary, its pre-tokenizer named by `tokenizer.ggml.pre`.
//!
//! Beside a `tokenizer.json`, a `tokenizer_config.json` gives the chat
//! template (`chat_template`, a string or a list with a "default" entry) and
//! the BOS/EOS tokens (`bos_token`, `eos_token`, strings or AddedToken
//! objects) and `add_bos_token`, as transformers reads them.
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
        _ => Err(bad(path, format!("normalizer {norm} with pre_tokenizer {pre} is not a Llama layout"))),
    }
}

pub(crate) fn load(path: &Path) -> Result<Tokenizer> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenizerError::Read { path: path.into(), source: e })?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(path, format!("not valid JSON: {e}")))?;
    let mut t = if is_byte_level(&v) { load_byte_level(path, v)? } else { load_spm(path, &v)? };
    apply_config(path, &mut t)?;
    Ok(t)
}

fn mentions_byte_level(x: Option<&Value>) -> bool {
    match x {
        Some(x) if type_of(x) == "ByteLevel" => true,
        Some(x) => x.get("pretokenizers").or_else(|| x.get("decoders")).and_then(Value::as_array).is_some_and(|a| a.iter().any(|y| type_of(y) == "ByteLevel")),
        None => false,
    }
}

fn is_byte_level(v: &Value) -> bool {
    mentions_byte_level(v.get("pre_tokenizer")) || mentions_byte_level(v.get("decoder"))
}

/// A token named in tokenizer_config.json: a string or `{"content": ..}`.
fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(String::from),
        _ => None,
    }
}

/// Reads `tokenizer_config.json` beside `path`, if any: chat template,
/// BOS/EOS tokens, add_bos_token.
fn apply_config(path: &Path, t: &mut Tokenizer) -> Result<()> {
    let Some(cfg_path) = path.parent().map(|d| d.join("tokenizer_config.json")).filter(|p| p.is_file()) else { return Ok(()) };
    let bad_cfg = |what: String| TokenizerError::HfJson { path: cfg_path.clone(), what };
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| TokenizerError::Read { path: cfg_path.clone(), source: e })?;
    let c: Value = serde_json::from_str(&text).map_err(|e| bad_cfg(format!("not valid JSON: {e}")))?;
    let template = match c.get("chat_template") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let pick = list.iter().find(|x| x.get("name").and_then(Value::as_str) == Some("default")).or(list.first());
            pick.and_then(|x| x.get("template")).and_then(Value::as_str).map(String::from)
        }
        Some(other) => return Err(bad_cfg(format!("chat_template is {other}, not a string"))),
    };
    let id = |k: &str| -> Result<Option<u32>> {
        match token_str(c.get(k)) {
            None => Ok(None),
            Some(s) => t.piece_to_id(&s).map(Some).ok_or_else(|| bad_cfg(format!("{k} {s:?} is not a token of {}", path.display()))),
        }
    };
    let (bos, eos, eot) = (id("bos_token")?, id("eos_token")?, id("eot_token")?);
    if bos.is_some() {
        t.bos_id = bos;
    }
    if eos.is_some() {
        t.eos_id = eos;
    }
    if let Some(b) = c.get("add_bos_token").and_then(Value::as_bool) {
        t.add_bos_default = b;
    }
    t.set_chat(template, eot.or(t.eot_id()));
    Ok(())
}

/// Byte-level BPE from a tokenizer.json value.
fn load_byte_level(path: &Path, v: Value) -> Result<Tokenizer> {
    use super::bytelevel::{compile, Added, ByteLevel, PreStep, PreTok};
    let unsupported = |what: String| TokenizerError::Unsupported {
        path: path.into(),
        what,
        hint: "byte-level tokenizer.json files with ByteLevel / Split(regex) / Digits pre-tokenizers and no normaliser are supported",
    };
    let model = v.get("model").ok_or_else(|| bad(path, "no \"model\""))?;
    if type_of(model) != "BPE" {
        return Err(unsupported(format!("model.type {:?}", type_of(model))));
    }
    if v.get("normalizer").is_some_and(|n| !n.is_null()) {
        return Err(unsupported(format!("normalizer {}", v["normalizer"])));
    }
    for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
        if model.get(k).and_then(Value::as_str).is_some_and(|x| !x.is_empty()) {
            return Err(unsupported(format!("model.{k}")));
        }
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported("byte_fallback in a byte-level model".into()));
    }
    if model.get("dropout").is_some_and(|d| !d.is_null()) {
        return Err(unsupported("BPE dropout".into()));
    }
    // the pre-tokenizer chain
    let pre_json = v.get("pre_tokenizer").cloned().unwrap_or(Value::Null);
    let list: Vec<Value> = match type_of(&pre_json) {
        "Sequence" => pre_json.get("pretokenizers").and_then(Value::as_array).cloned().unwrap_or_default(),
        _ if pre_json.is_null() => vec![],
        _ => vec![pre_json.clone()],
    };
    let mut steps = Vec::new();
    let mut desc = Vec::new();
    for x in &list {
        match type_of(x) {
            "ByteLevel" => {
                let use_regex = x.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
                steps.push(PreStep::ByteLevel { add_prefix_space: x.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false), use_regex });
                desc.push(if use_regex { "ByteLevel(gpt2 regex)".to_string() } else { "ByteLevel".to_string() });
            }
            "Digits" => {
                let individual = x.get("individual_digits").and_then(Value::as_bool).unwrap_or(false);
                steps.push(PreStep::Digits { individual });
                desc.push(format!("Digits(individual={individual})"));
            }
            "Split" => {
                let re = match (x.get("pattern").and_then(|p| p.get("Regex")), x.get("pattern").and_then(|p| p.get("String"))) {
                    (Some(Value::String(r)), _) => r.clone(),
                    (_, Some(Value::String(s))) => fancy_regex::escape(s).into_owned(),
                    _ => return Err(bad(path, format!("Split pattern {x} has no Regex or String"))),
                };
                if x.get("behavior").and_then(Value::as_str) != Some("Isolated") || x.get("invert").and_then(Value::as_bool) == Some(true) {
                    return Err(unsupported(format!("Split behaviour {} (only Isolated, not inverted)", x.get("behavior").unwrap_or(&Value::Null))));
                }
                desc.push(if re == super::bytelevel::LLAMA3_REGEX { "Split(llama3 regex)".into() } else { format!("Split({re:?})") });
                steps.push(PreStep::Split(compile(&re).map_err(|e| bad(path, e))?));
            }
            other => return Err(unsupported(format!("pre-tokenizer {other}"))),
        }
    }
    if !steps.iter().any(|s| matches!(s, PreStep::ByteLevel { .. })) {
        return Err(unsupported("a byte-level decoder without a ByteLevel pre-tokenizer".into()));
    }
    let name = match desc.join(" + ").as_str() {
        "ByteLevel(gpt2 regex)" => "gpt-2".to_string(),
        "Split(llama3 regex) + ByteLevel" => "llama3".to_string(),
        "Digits(individual=true) + ByteLevel(gpt2 regex)" => "starcoder".to_string(),
        d => d.to_string(),
    };
    let pre = PreTok::new(&name, steps, pre_json).map_err(|e| bad(path, e))?;

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
        put(id.as_u64().ok_or_else(|| bad(path, format!("vocab id of {t:?} is not a non-negative integer")))?, t, PieceKind::Normal, &mut slots)?;
    }
    let mut added = Vec::new();
    for a in v.get("added_tokens").and_then(Value::as_array).map_or(&[][..], |x| x.as_slice()) {
        let (Some(id), Some(t)) = (a.get("id").and_then(Value::as_u64), a.get("content").and_then(Value::as_str)) else {
            return Err(bad(path, format!("added token {a} lacks id or content")));
        };
        for k in ["lstrip", "rstrip", "single_word"] {
            if a.get(k).and_then(Value::as_bool) == Some(true) {
                return Err(unsupported(format!("added token {t:?} with {k}")));
            }
        }
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        put(id, t, if special { PieceKind::Control } else { PieceKind::UserDefined }, &mut slots)?;
        added.push(Added { text: t.to_string(), id: id as u32 });
    }
    let unk = model.get("unk_token").and_then(Value::as_str).and_then(|u| vocab.get(u)).and_then(Value::as_u64).map(|x| x as u32);
    let mut pieces = Vec::with_capacity(slots.len());
    for (i, s) in slots.into_iter().enumerate() {
        let (text, kind) = s.ok_or_else(|| bad(path, format!("no token has id {i} (ids must be 0..n without gaps)")))?;
        pieces.push(super::Piece { text, score: 0.0, kind });
    }
    let merges = parse_merges(path, model)?;
    let tokens: Vec<String> = pieces.iter().map(|p| p.text.clone()).collect();
    let ignore = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
    let bl = ByteLevel::new(pre, &tokens, &merges, added, ignore, unk).map_err(|e| bad(path, e))?;
    // BOS: the first special token of a TemplateProcessing post-processor (Llama 3)
    let bos = v
        .get("post_processor")
        .and_then(|p| {
            if type_of(p) == "Sequence" {
                p.get("processors").and_then(Value::as_array).and_then(|a| a.iter().find(|x| type_of(x) == "TemplateProcessing")).cloned()
            } else {
                Some(p.clone())
            }
        })
        .filter(|p| type_of(p) == "TemplateProcessing")
        .and_then(|p| {
            p.get("single")
                .and_then(Value::as_array)
                .and_then(|s| s.first())
                .and_then(|x| x.get("SpecialToken"))
                .and_then(|x| x.get("id"))
                .and_then(Value::as_str)
                .map(String::from)
        });
    let bos_id = bos.as_deref().and_then(|b| tokens.iter().position(|t| t == b)).map(|i| i as u32);
    let mut t = Tokenizer::from_byte_level(pieces, bl, bos_id, None, path, SourceFormat::HfJson, v)?;
    t.add_bos_default = bos_id.is_some();
    Ok(t)
}

/// Ranked merges: "a b" strings or [a, b] pairs.
fn parse_merges(path: &Path, model: &Value) -> Result<Vec<(String, String)>> {
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
    Ok(merges)
}

/// Byte-level BPE from a GGUF `gpt2` vocabulary.
pub(crate) fn byte_level_from_gguf(v: &super::gguf::GgufVocab, path: &Path) -> Result<Tokenizer> {
    use super::bytelevel::{Added, ByteLevel, PreTok};
    let gerr = |what: String| TokenizerError::Gguf { path: path.into(), what };
    let pre_name = v.pre.clone().unwrap_or_else(|| "default".into());
    let (pre, ignore) = PreTok::from_gguf_name(&pre_name)
        .ok_or_else(|| TokenizerError::Unsupported {
            path: path.into(),
            what: format!("tokenizer.ggml.pre \"{pre_name}\""),
            hint: "known byte-level pre-tokenizers: default / gpt-2, llama3 / llama-bpe, starcoder / smollm / refact / codeshell",
        })?
        .map_err(gerr)?;
    if v.merges.is_empty() {
        return Err(gerr("a gpt2 vocabulary without tokenizer.ggml.merges".into()));
    }
    let merges: Vec<(String, String)> = v
        .merges
        .iter()
        .enumerate()
        .map(|(i, m)| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| gerr(format!("merge {i} {m:?} is not \"a b\""))))
        .collect::<Result<_>>()?;
    let mut pieces = Vec::with_capacity(v.tokens.len());
    let mut added = Vec::new();
    for (i, (t, &ty)) in v.tokens.iter().zip(&v.token_types).enumerate() {
        let kind = PieceKind::from_code(i64::from(ty)).ok_or_else(|| gerr(format!("token {i} has unknown token type {ty}")))?;
        let kind = match kind {
            PieceKind::Control | PieceKind::UserDefined => {
                added.push(Added { text: t.clone(), id: i as u32 });
                kind
            }
            PieceKind::Unknown => PieceKind::Unknown,
            _ => PieceKind::Normal,
        };
        pieces.push(super::Piece { text: t.clone(), score: 0.0, kind });
    }
    let bl = ByteLevel::new(pre.clone(), &v.tokens, &merges, added.clone(), ignore, v.unk_id).map_err(gerr)?;
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added.iter().map(|a| serde_json::json!({"id": a.id, "content": a.text, "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": pieces[a.id as usize].kind == PieceKind::Control})).collect::<Vec<_>>(),
        "normalizer": null,
        "pre_tokenizer": pre.json,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": v.unk_id.map(|u| v.tokens[u as usize].clone()), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": ignore,
            "vocab": v.tokens.iter().enumerate().map(|(i, t)| (t.clone(), serde_json::json!(i))).collect::<serde_json::Map<_, _>>(),
            "merges": v.merges},
    });
    let mut t = Tokenizer::from_byte_level(pieces, bl, v.bos_id, v.eos_id, path, SourceFormat::Gguf, json)?;
    t.add_bos_default = v.add_bos.unwrap_or(false);
    t.add_eos_default = v.add_eos.unwrap_or(false);
    t.pad_id = v.pad_id;
    Ok(t)
}

/// A SentencePiece-kind (Llama 1/2) tokenizer.json.
fn load_spm(path: &Path, v: &Value) -> Result<Tokenizer> {
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
    let (add_dummy_prefix, prefix_only_if_absent) = prefix_rule(path, v)?;
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

    let merges = parse_merges(path, model)?;
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

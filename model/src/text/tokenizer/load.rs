//! Loading a [`Tokenizer`]: by content ([`Tokenizer::load`]), beside a
//! model ([`Tokenizer::find`]), from GGUF metadata, SentencePiece `.model`
//! bytes, or a parsed `ModelProto`.

use super::*;

impl Tokenizer {
    /// Loads a tokenizer, recognising the format by content: GGUF magic,
    /// JSON (`tokenizer.json`), else a SentencePiece `.model`.
    pub fn load(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let mut head = [0u8; 8];
        let n = {
            use std::io::Read;
            let mut f = std::fs::File::open(path).map_err(|e| TokenizerError::Read { path: path.into(), source: e })?;
            let mut n = 0;
            while n < head.len() {
                match f.read(&mut head[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(TokenizerError::Read { path: path.into(), source: e }),
                }
            }
            n
        };
        let head = &head[..n];
        if head.starts_with(b"GGUF") {
            return Self::from_gguf_file(path);
        }
        let first = head.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'{') {
            return hf::load(path);
        }
        // A ModelProto starts with field 1 (pieces), length-delimited: 0x0a
        // (serializers write fields in order); or trust a .model name.
        if head.first() == Some(&0x0a) || path.extension().is_some_and(|e| e == "model") {
            return Self::from_spm_file(path);
        }
        Err(TokenizerError::UnknownFormat { path: path.into(), head: head.to_vec() })
    }

    /// The tokenizer of a model: `path` may be a tokenizer file (GGUF,
    /// including a whole GGUF model; `.model`; `tokenizer.json`) or a model
    /// directory holding `tokenizer.json`, `tokenizer.model` or
    /// `tokenizer.gguf` (first found).
    pub fn find(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Self::load(path);
        }
        for f in ["tokenizer.json", "tokenizer.model", "tokenizer.gguf"] {
            let p = path.join(f);
            if p.is_file() {
                return Self::load(&p);
            }
        }
        Err(TokenizerError::Read {
            path: path.join("tokenizer.json"),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no tokenizer.json, tokenizer.model or tokenizer.gguf in the model directory"),
        })
    }

    /// Loads the vocabulary of a GGUF file (only its metadata is read; the
    /// tensors are mapped, not touched): SentencePiece ("llama") or
    /// byte-level ("gpt2"), with the chat template when the file has one.
    pub fn from_gguf_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        use crate::formats::gguf::{GgufError, GgufFile};
        let path = path.as_ref();
        let f = GgufFile::open(path).map_err(|e| match e {
            GgufError::Io { err, .. } => TokenizerError::Read { path: path.into(), source: err },
            GgufError::Format { msg, .. } => TokenizerError::Gguf { path: path.into(), what: msg },
            other => TokenizerError::Gguf { path: path.into(), what: other.to_string() },
        })?;
        let v = gguf::read_vocab(&f).map_err(|what| TokenizerError::Gguf { path: path.into(), what })?;
        let (template, eot, model) = (v.chat_template.clone(), v.eot_id, v.model.clone());
        let mut t = match model.as_str() {
            "llama" => Self::spm_from_gguf(v, path)?,
            "gpt2" => hf::byte_level_from_gguf(&v, path)?,
            other => {
                return Err(TokenizerError::Unsupported {
                    path: path.into(),
                    what: format!("tokenizer.ggml.model \"{other}\" (only \"llama\", SentencePiece BPE, and \"gpt2\", byte-level BPE)"),
                    hint: "use a Llama (SentencePiece) or byte-level BPE vocabulary",
                })
            }
        };
        t.set_chat(template, eot);
        Ok(t)
    }

    fn spm_from_gguf(v: gguf::GgufVocab, path: &Path) -> Result<Tokenizer> {
        let mut pieces = Vec::with_capacity(v.tokens.len());
        for (i, ((t, &s), &k)) in v.tokens.into_iter().zip(&v.scores).zip(&v.token_types).enumerate() {
            let kind = PieceKind::from_code(i64::from(k))
                .ok_or_else(|| TokenizerError::Gguf { path: path.into(), what: format!("token {i} has unknown token type {k}") })?;
            pieces.push(SpmPiece { piece: t, score: s, kind });
        }
        let n_bytes = pieces.iter().filter(|p| p.kind == PieceKind::Byte).count();
        // llama.cpp falls back to bytes whenever the vocabulary has them
        let byte_fallback = n_bytes == 256;
        // trained with split_digits if no piece holds a digit with other characters
        let split_digits = !pieces.iter().any(|p| p.kind == PieceKind::Normal && p.piece.chars().count() > 1 && p.piece.chars().any(|c| c.is_ascii_digit()));
        let unk_id = match v.unk_id {
            Some(u) => u,
            None => pieces.iter().position(|p| p.kind == PieceKind::Unknown).ok_or_else(|| TokenizerError::Vocab {
                path: path.into(),
                what: "no UNKNOWN token and no tokenizer.ggml.unknown_token_id".into(),
                hint: "a SentencePiece vocabulary needs an <unk> token (token type 2)",
            })? as u32,
        };
        let id = |x: Option<u32>| x.map_or(-1, |v| v as i32);
        let proto = ModelProto {
            trainer: TrainerSpec {
                model_type: ModelType::Bpe,
                vocab_size: pieces.len() as i32,
                byte_fallback,
                split_digits,
                allow_whitespace_only_pieces: true,
                unk_id: unk_id as i32,
                bos_id: id(v.bos_id),
                eos_id: id(v.eos_id),
                pad_id: id(v.pad_id),
                ..TrainerSpec::default()
            },
            normalizer: NormalizerSpec {
                name: "identity".into(),
                precompiled_charsmap: vec![],
                add_dummy_prefix: v.add_space_prefix.unwrap_or(true),
                remove_extra_whitespaces: v.remove_extra_whitespaces.unwrap_or(false),
                escape_whitespaces: true,
            },
            pieces,
            has_trainer_spec: true,
            has_normalizer_spec: true,
        };
        let mut t = Self::from_proto(proto, path, SourceFormat::Gguf)?;
        // transformers' GGUF tokenizer (GGUFLlamaConverter) is Metaspace "first"
        t.prefix_after_special = false;
        t.add_bos_default = v.add_bos.unwrap_or(true);
        t.add_eos_default = v.add_eos.unwrap_or(false);
        Ok(t)
    }

    /// Loads a SentencePiece `.model` file.
    pub fn from_spm_file(path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let b = std::fs::read(path).map_err(|e| TokenizerError::Read { path: path.into(), source: e })?;
        Self::from_spm_bytes(&b, path)
    }

    /// Parses a serialized `ModelProto`; `path` names it in errors.
    pub fn from_spm_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Tokenizer> {
        let path = path.as_ref();
        let proto = ModelProto::parse(bytes).map_err(|what| TokenizerError::Proto { path: path.into(), what })?;
        // real .model files always carry both specs after the pieces; a file
        // cut at a piece boundary parses but lacks them
        for (has, name) in [(proto.has_trainer_spec, "trainer_spec"), (proto.has_normalizer_spec, "normalizer_spec")] {
            if !has {
                return Err(TokenizerError::Proto { path: path.into(), what: format!("no {name} after the {} pieces", proto.pieces.len()) });
            }
        }
        Self::from_proto(proto, path, SourceFormat::SpmModel)
    }

    /// Builds a tokenizer from a model description, validating it as
    /// sentencepiece does at load (unique pieces, one UNK at unk_id, special
    /// ids in range, all 256 byte pieces when byte_fallback is set).
    pub fn from_proto(proto: ModelProto, path: impl AsRef<Path>, format: SourceFormat) -> Result<Tokenizer> {
        Self::build(proto, path.as_ref(), format, None)
    }

    pub(crate) fn build(proto: ModelProto, path: &Path, format: SourceFormat, hf: Option<HfExtras>) -> Result<Tokenizer> {
        let path = path.to_path_buf();
        let bad = |what: String, hint: &'static str| TokenizerError::Vocab { path: path.clone(), what, hint };
        const HINT_FILE: &str = "the file is damaged or was written by an incompatible tool";
        let n = proto.pieces.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(bad(format!("{n} pieces"), HINT_FILE));
        }
        let t = &proto.trainer;
        if t.treat_whitespace_as_suffix {
            return Err(TokenizerError::Unsupported {
                path,
                what: "treat_whitespace_as_suffix".into(),
                hint: "retrain the vocabulary with treat_whitespace_as_suffix=false",
            });
        }
        let mut piece_ids: FxHashMap<String, u32> = FxHashMap::default();
        let mut byte_value = vec![None; n];
        let mut byte_ids = [u32::MAX; 256];
        let mut unk_ids = vec![];
        for (i, p) in proto.pieces.iter().enumerate() {
            if p.piece.is_empty() {
                return Err(bad(format!("piece {i} is empty"), HINT_FILE));
            }
            if piece_ids.insert(p.piece.clone(), i as u32).is_some() {
                return Err(bad(format!("piece {:?} appears twice (second at id {i})", p.piece), HINT_FILE));
            }
            match p.kind {
                PieceKind::Unknown => unk_ids.push(i as u32),
                PieceKind::Byte => {
                    let b = parse_byte_piece(&p.piece).ok_or_else(|| bad(format!("byte piece {i} is {:?}, not <0xHH>", p.piece), HINT_FILE))?;
                    byte_value[i] = Some(b);
                    byte_ids[b as usize] = i as u32;
                }
                _ => {}
            }
        }
        let unk_id = u32::try_from(t.unk_id)
            .ok()
            .filter(|&u| (u as usize) < n)
            .ok_or_else(|| bad(format!("unk_id {} is out of range for {n} pieces", t.unk_id), HINT_FILE))?;
        if unk_ids != [unk_id] {
            return Err(bad(format!("unk_id is {unk_id} but the UNKNOWN pieces are at {unk_ids:?} (exactly one is needed)"), HINT_FILE));
        }
        let special = |id: i32, name: &str| -> Result<Option<u32>> {
            if id < 0 {
                return Ok(None);
            }
            if id as usize >= n {
                return Err(bad(format!("{name}_id {id} is out of range for {n} pieces"), HINT_FILE));
            }
            Ok(Some(id as u32))
        };
        let bos_id = special(t.bos_id, "bos")?;
        let eos_id = special(t.eos_id, "eos")?;
        let pad_id = special(t.pad_id, "pad")?;
        if t.byte_fallback {
            if let Some(b) = byte_ids.iter().position(|&x| x == u32::MAX) {
                return Err(bad(format!("byte_fallback is set but there is no byte piece <0x{b:02X}>"), HINT_FILE));
            }
        }
        let charsmap = if proto.normalizer.precompiled_charsmap.is_empty() {
            None
        } else {
            Some(CharsMap::parse(&proto.normalizer.precompiled_charsmap).map_err(|what| TokenizerError::Proto { path: path.clone(), what })?)
        };
        let mut user_defined: Vec<String> = proto.pieces.iter().filter(|p| p.kind == PieceKind::UserDefined).map(|p| p.piece.clone()).collect();
        user_defined.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let normalizer = Normalizer {
            charsmap,
            add_dummy_prefix: proto.normalizer.add_dummy_prefix,
            remove_extra_whitespaces: proto.normalizer.remove_extra_whitespaces,
            escape_whitespaces: proto.normalizer.escape_whitespaces,
            prefix_only_if_absent: hf.as_ref().is_some_and(|h| h.prefix_only_if_absent),
            user_defined,
        };
        let bpe = match t.model_type {
            ModelType::Bpe => {
                let tuples: Vec<(&str, f32, PieceKind)> = proto.pieces.iter().map(|p| (p.piece.as_str(), p.score, p.kind)).collect();
                let merges = hf.as_ref().map(|h| h.merges.as_slice());
                let fuse_unk = hf.as_ref().is_none_or(|h| h.fuse_unk);
                Some(bpe::Bpe::new(&tuples, unk_id, t.byte_fallback.then_some(byte_ids), merges, fuse_unk))
            }
            ModelType::Unigram => None,
            other => {
                return Err(TokenizerError::Unsupported {
                    path,
                    what: format!("model type {other:?}"),
                    hint: "use a BPE (or, to read only, unigram) SentencePiece model",
                })
            }
        };
        let surface = proto.pieces.iter().map(|p| p.piece.replace(META, " ").into_boxed_str()).collect();
        let prefix_after_special = !hf.as_ref().is_some_and(|h| h.prefix_only_if_absent);
        let mut spm_specials: Vec<(String, u32)> = proto
            .pieces
            .iter()
            .enumerate()
            .filter(|(_, p)| matches!(p.kind, PieceKind::Control | PieceKind::UserDefined))
            .map(|(i, p)| (p.piece.clone(), i as u32))
            .collect();
        spm_specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let pieces = proto.pieces.iter().map(|p| Piece { text: p.piece.clone(), score: p.score, kind: p.kind }).collect();
        Ok(Tokenizer {
            pieces,
            piece_ids,
            unk_id,
            bos_id,
            eos_id,
            pad_id,
            byte_value,
            byte_fallback: t.byte_fallback,
            normalizer,
            bpe,
            model_type: t.model_type,
            unk_surface: t.unk_surface.clone(),
            proto,
            add_bos_default: true,
            add_eos_default: false,
            format,
            path,
            surface,
            hf,
            byte_level: None,
            spm_specials,
            chat_template: None,
            eot_id: None,
            prefix_after_special,
            json: None,
        })
    }

    /// A byte-level tokenizer: `pieces[id]` (text in GPT-2's stand-in
    /// characters; added tokens CONTROL when special, else USER_DEFINED),
    /// its BPE model, and the `tokenizer.json` that describes it (what
    /// [`Tokenizer::save_beside`] writes).
    pub(crate) fn from_byte_level(
        pieces: Vec<Piece>,
        model: bytelevel::ByteLevel,
        bos_id: Option<u32>,
        eos_id: Option<u32>,
        path: &Path,
        format: SourceFormat,
        json: serde_json::Value,
    ) -> Result<Tokenizer> {
        let n = pieces.len();
        for (name, id) in [("bos", bos_id), ("eos", eos_id)] {
            if id.is_some_and(|i| i as usize >= n) {
                return Err(TokenizerError::Vocab {
                    path: path.into(),
                    what: format!("{name} id {id:?} is out of range for {n} tokens"),
                    hint: "the file is damaged",
                });
            }
        }
        let mut piece_ids = FxHashMap::default();
        for (i, p) in pieces.iter().enumerate() {
            piece_ids.entry(p.text.clone()).or_insert(i as u32);
        }
        let unk_id = pieces.iter().position(|p| p.kind == PieceKind::Unknown).map_or(u32::MAX, |i| i as u32);
        let proto = ModelProto {
            trainer: TrainerSpec { model_type: ModelType::Bpe, vocab_size: n as i32, unk_id: -1, bos_id: -1, eos_id: -1, pad_id: -1, ..TrainerSpec::default() },
            normalizer: NormalizerSpec {
                name: "byte_level".into(),
                precompiled_charsmap: vec![],
                add_dummy_prefix: false,
                remove_extra_whitespaces: false,
                escape_whitespaces: false,
            },
            pieces: vec![],
            has_trainer_spec: false,
            has_normalizer_spec: false,
        };
        Ok(Tokenizer {
            byte_value: vec![None; n],
            surface: vec![],
            pieces,
            piece_ids,
            unk_id,
            bos_id,
            eos_id,
            pad_id: None,
            byte_fallback: false,
            normalizer: Normalizer {
                charsmap: None,
                add_dummy_prefix: false,
                remove_extra_whitespaces: false,
                escape_whitespaces: false,
                prefix_only_if_absent: false,
                user_defined: vec![],
            },
            bpe: None,
            model_type: ModelType::Bpe,
            proto,
            add_bos_default: false,
            add_eos_default: false,
            format,
            path: path.into(),
            unk_surface: String::new(),
            hf: None,
            byte_level: Some(Box::new(model)),
            spm_specials: vec![],
            chat_template: None,
            eot_id: None,
            prefix_after_special: false,
            json: Some(json),
        })
    }
}

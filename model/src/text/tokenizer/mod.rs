//! The tokenizer every command uses, of two kinds behind one type:
//! SentencePiece BPE (Llama 1/2, PAPER.md section 2), token-exact with the
//! `sentencepiece` library, loaded from GGUF vocabularies (llama.cpp),
//! SentencePiece `.model` files, or Hugging Face `tokenizer.json` files of
//! Llama-style BPE models; and byte-level BPE (GPT-2, Llama 3, SmolLM /
//! StarCoder; see [`bytelevel`]), token-exact with the `tokenizers` library,
//! from `tokenizer.json` or GGUF (`tokenizer.ggml.model = gpt2`). Plus BPE
//! training (SentencePiece kind), and the model's chat template when its
//! files carry one (`tokenizer_config.json` beside a `tokenizer.json`, GGUF
//! `tokenizer.chat_template`).
//!
//! Encoding follows sentencepiece's `SentencePieceProcessor::Encode` for BPE
//! models: normalise (charsmap rules, dummy prefix, spaces as U+2581), merge
//! by piece score (see [`bpe`]), byte fallback or UNK for what the
//! vocabulary lacks; BOS/EOS only when asked. Decoding follows
//! `SentencePieceProcessor::Decode`: control pieces vanish, UNK shows as the
//! unk surface (" ⁇ "), the first piece loses the dummy-prefix U+2581, byte
//! pieces are gathered and decoded as UTF-8 with one U+FFFD per byte that
//! does not start a valid sequence.
//!
//! Byte-level encoding and decoding are `tokenizers`' (see [`bytelevel`]);
//! [`Tokenizer::encode`] keeps added tokens typed in text as text (as
//! SentencePiece does), [`Tokenizer::encode_special`] cuts them out as their
//! ids (as `tokenizers` and transformers' chat templates do).
//!
//! Public items: [`Tokenizer`] (load, find, encode, encode_special, encode_batch,
//! decode, save_spm_model, save_beside, info, chat_template, token_text),
//! [`Kind`], [`EncodeOptions`], [`DecodeOptions`],
//! [`EncodeCache`], [`Piece`], [`PieceKind`], [`TokenizerInfo`],
//! [`SourceFormat`], [`TokenizerError`], and the submodules
//! [`spm_proto`] (the `.model` protobuf), [`gguf`] (the GGUF metadata
//! reader), [`train`] (the BPE trainer), [`hf`] (`tokenizer.json`),
//! [`bytelevel`] (byte-level BPE).

pub mod bpe;
pub mod bytelevel;
pub mod gguf;
pub mod hf;
mod load;
mod normalize;
mod save;
pub mod spm_proto;
pub mod train;

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rustc_hash::FxHashMap;

pub use bpe::EncodeCache;
use normalize::{CharsMap, Normalizer};
use spm_proto::{ModelProto, ModelType, NormalizerSpec, SpmPiece, TrainerSpec};

/// SentencePiece's whitespace symbol, U+2581 ("▁").
pub const META: char = '\u{2581}';

/// Errors of the tokenizer module. Those the user can cause end with a HINT.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("cannot read {}: {source}; HINT: check the path", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {}: {source}; HINT: check the directory exists and is writable", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{}: not a tokenizer file we know (first bytes {head:02x?}); HINT: give a GGUF vocabulary, a SentencePiece .model or a tokenizer.json", path.display())]
    UnknownFormat { path: PathBuf, head: Vec<u8> },
    #[error("{}: malformed GGUF: {what}; HINT: the file is truncated or not a GGUF vocabulary (re-download or re-convert it)", path.display())]
    Gguf { path: PathBuf, what: String },
    #[error("{}: malformed SentencePiece model: {what}; HINT: the file is truncated or not a SentencePiece .model (load it with the sentencepiece package to check)", path.display())]
    Proto { path: PathBuf, what: String },
    #[error("{}: malformed tokenizer.json: {what}; HINT: BPE tokenizer.json files of the Llama (SentencePiece, byte fallback) or byte-level (GPT-2 / Llama 3) kind are supported", path.display())]
    HfJson { path: PathBuf, what: String },
    #[error("{}: invalid vocabulary: {what}; HINT: {hint}", path.display())]
    Vocab { path: PathBuf, what: String, hint: &'static str },
    #[error("{}: {what} is not supported; HINT: {hint}", path.display())]
    Unsupported { path: PathBuf, what: String, hint: &'static str },
    #[error("token id {id} is out of range for a vocabulary of {vocab_size}; HINT: the ids were made with another tokenizer")]
    IdOutOfRange { id: u32, vocab_size: usize },
    #[error("{0}")]
    Train(String),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// SentencePiece piece types (the same codes in GGUF's token_type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PieceKind {
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl PieceKind {
    pub fn from_code(c: i64) -> Option<PieceKind> {
        Some(match c {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            PieceKind::Normal => "normal",
            PieceKind::Unknown => "unknown",
            PieceKind::Control => "control",
            PieceKind::UserDefined => "user_defined",
            PieceKind::Unused => "unused",
            PieceKind::Byte => "byte",
        }
    }
}

/// One vocabulary entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// Where a tokenizer was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFormat {
    Gguf,
    SpmModel,
    HfJson,
    /// Built in memory (trainer, tests).
    Memory,
}

/// Options of [`Tokenizer::encode`].
#[derive(Clone, Copy, Debug, Default)]
pub struct EncodeOptions {
    /// Prepend BOS.
    pub bos: bool,
    /// Append EOS.
    pub eos: bool,
}

/// Options of [`Tokenizer::decode_with`]; the default is SentencePiece's
/// `DecodeIds`.
#[derive(Clone, Copy, Debug)]
pub struct DecodeOptions {
    /// Write control pieces (`<s>`, `</s>`) as their text instead of nothing.
    pub keep_control: bool,
    /// Drop the U+2581 of the dummy prefix at the start of the first piece.
    pub strip_dummy_prefix: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions { keep_control: false, strip_dummy_prefix: true }
    }
}

/// The two kinds of tokenizer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Kind {
    /// SentencePiece BPE (Llama 1/2)
    SentencePiece,
    /// byte-level BPE (GPT-2, Llama 3, SmolLM, ...)
    ByteLevel,
}

/// A summary of a tokenizer, for `train-tool tokenizer info`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TokenizerInfo {
    pub format: String,
    pub kind: Kind,
    pub model_type: String,
    pub vocab_size: usize,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// end of turn, where a chat template's answers end (GGUF eot, or the
    /// template's end-of-turn token)
    pub eot_id: Option<u32>,
    pub unk_id: u32,
    pub pad_id: Option<u32>,
    pub add_bos_default: bool,
    pub add_eos_default: bool,
    pub byte_fallback: bool,
    pub normalizer: String,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub split_digits: bool,
    /// Count of pieces of each kind, by kind name.
    pub piece_kinds: Vec<(String, usize)>,
    /// (left, right) -> merged entries in the encoder's table.
    pub merge_pairs: usize,
    /// Whether the encoder may cut text into words (see `bpe`).
    pub word_split: bool,
    /// The pre-tokenizer of a byte-level tokenizer.
    pub pre_tokenizer: Option<String>,
    pub has_chat_template: bool,
}

/// A loaded tokenizer. Immutable and `Sync`: share one across threads.
#[derive(Debug)]
pub struct Tokenizer {
    pieces: Vec<Piece>,
    /// Every piece's text -> id (first id if duplicated).
    piece_ids: FxHashMap<String, u32>,
    unk_id: u32,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
    /// Byte value of each byte piece (`<0x41>` -> 0x41).
    byte_value: Vec<Option<u8>>,
    byte_fallback: bool,
    normalizer: Normalizer,
    /// None for model types we read but cannot encode with (unigram).
    bpe: Option<bpe::Bpe>,
    model_type: ModelType,
    /// What `save_spm_model` writes (trainer and normalizer specs).
    proto: ModelProto,
    add_bos_default: bool,
    add_eos_default: bool,
    format: SourceFormat,
    path: PathBuf,
    /// Decoding: each piece's text with U+2581 turned into spaces.
    surface: Vec<Box<str>>,
    unk_surface: String,
    /// Hugging Face settings beyond SentencePiece's (tokenizer.json only).
    hf: Option<HfExtras>,
    /// The byte-level model (None: SentencePiece).
    byte_level: Option<Box<bytelevel::ByteLevel>>,
    /// Control and user-defined pieces, longest first: what
    /// [`Tokenizer::encode_special`] cuts out of SentencePiece text.
    spm_specials: Vec<(String, u32)>,
    /// The model's Jinja chat template, if its files carry one.
    chat_template: Option<String>,
    /// End-of-turn id (GGUF `tokenizer.ggml.eot_token_id`).
    eot_id: Option<u32>,
    /// SentencePiece, [`Tokenizer::encode_special`]: whether text after an
    /// added token gets the dummy prefix (sentencepiece / legacy
    /// tokenizer.json: yes; a Metaspace "first" tokenizer.json and
    /// transformers' tokenizer of a GGUF vocabulary: only at the start).
    prefix_after_special: bool,
    /// What `save_beside` writes for a byte-level tokenizer (tokenizer.json).
    json: Option<serde_json::Value>,
}

/// What a Hugging Face `tokenizer.json` says that a `ModelProto` cannot.
#[derive(Clone, Debug, Default)]
pub(crate) struct HfExtras {
    /// The ranked merge list (pairs not in it never merge).
    pub merges: Vec<(String, String)>,
    /// Metaspace pre-tokenizer: prefix only when the text lacks a leading space.
    pub prefix_only_if_absent: bool,
    pub fuse_unk: bool,
}

/// Parses `<0xAB>` to 0xAB.
pub(crate) fn parse_byte_piece(t: &str) -> Option<u8> {
    let h = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if h.len() != 2 {
        return None;
    }
    u8::from_str_radix(h, 16).ok()
}

impl Tokenizer {
    /// Sets the chat template (a Jinja string) and the end-of-turn id.
    pub fn set_chat(&mut self, template: Option<String>, eot_id: Option<u32>) {
        self.chat_template = template;
        self.eot_id = eot_id;
    }

    /// The model's own chat template (Jinja), if its files carry one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// End-of-turn id (GGUF `tokenizer.ggml.eot_token_id`), if known.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot_id
    }

    /// SentencePiece or byte-level.
    pub fn kind(&self) -> Kind {
        if self.byte_level.is_some() {
            Kind::ByteLevel
        } else {
            Kind::SentencePiece
        }
    }

    /// The text a token stands for as a template names it (`<s>`,
    /// `<|im_end|>`): the piece text of control and added tokens.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.id_to_piece(id)
    }

    // ------------------------------------------------------------ accessors
    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }
    /// The UNK id (u32::MAX for a byte-level vocabulary without one).
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }
    /// The file's own default for adding BOS (GGUF `add_bos_token`; true for
    /// `.model`, as Llama does).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos_default
    }
    pub fn add_eos_default(&self) -> bool {
        self.add_eos_default
    }
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }
    pub fn id_to_piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(|p| p.text.as_str())
    }
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.piece_ids.get(piece).copied()
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The model as a SentencePiece `ModelProto` (what `save_spm_model` writes).
    pub fn model_proto(&self) -> &ModelProto {
        &self.proto
    }

    pub fn info(&self) -> TokenizerInfo {
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for k in [PieceKind::Normal, PieceKind::Unknown, PieceKind::Control, PieceKind::UserDefined, PieceKind::Unused, PieceKind::Byte] {
            let c = self.pieces.iter().filter(|p| p.kind == k).count();
            if c > 0 {
                kinds.push((k.name().to_string(), c));
            }
        }
        let nm = &self.proto.normalizer;
        TokenizerInfo {
            format: format!("{:?}", self.format),
            kind: self.kind(),
            model_type: if self.byte_level.is_some() { "ByteLevelBpe".into() } else { format!("{:?}", self.model_type) },
            vocab_size: self.vocab_size(),
            bos_id: self.bos_id,
            eos_id: self.eos_id,
            eot_id: self.eot_id,
            unk_id: self.unk_id,
            pad_id: self.pad_id,
            add_bos_default: self.add_bos_default,
            add_eos_default: self.add_eos_default,
            byte_fallback: self.byte_fallback,
            normalizer: if nm.name.is_empty() { "(unnamed)".into() } else { nm.name.clone() },
            add_dummy_prefix: nm.add_dummy_prefix,
            remove_extra_whitespaces: nm.remove_extra_whitespaces,
            split_digits: self.proto.trainer.split_digits,
            piece_kinds: kinds,
            merge_pairs: self.bpe.as_ref().map_or(0, |b| b.n_pairs()) + self.byte_level.as_ref().map_or(0, |b| b.n_merges()),
            word_split: self.bpe.as_ref().is_some_and(|b| b.chunkable) || self.byte_level.is_some(),
            pre_tokenizer: self.byte_level.as_ref().map(|b| b.pre.name.clone()),
            has_chat_template: self.chat_template.is_some(),
        }
    }

    // ------------------------------------------------------------- encoding
    fn bpe(&self) -> Result<&bpe::Bpe> {
        self.bpe.as_ref().ok_or_else(|| TokenizerError::Unsupported {
            path: self.path.clone(),
            what: format!("encoding with a {:?} model", self.model_type),
            hint: "only BPE models encode; unigram models can be read and decoded",
        })
    }

    /// Normalises `text` as the model's normalizer spec says.
    pub fn normalize(&self, text: &str) -> String {
        let mut s = String::new();
        self.normalizer.normalize(text, true, &mut s);
        s
    }

    /// Encodes `text` to ids, as SentencePiece's `EncodeAsIds`.
    pub fn encode(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>> {
        let mut cache = EncodeCache::new();
        self.encode_with(text, opts, &mut cache)
    }

    /// [`Tokenizer::encode`] with a caller-owned word cache (reuse it across
    /// calls on one thread; it changes no output).
    pub fn encode_with(&self, text: &str, opts: EncodeOptions, cache: &mut EncodeCache) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.encode_into(text, opts, true, true, cache, &mut out)?;
        Ok(out)
    }

    /// Appends the ids of `text` to `out`. `dummy_prefix: false` encodes a
    /// continuation segment of a longer text (see [`Tokenizer::segment_safe`]);
    /// `use_cache: false` disables the word cache (for measuring it).
    pub fn encode_into(&self, text: &str, opts: EncodeOptions, dummy_prefix: bool, use_cache: bool, cache: &mut EncodeCache, out: &mut Vec<u32>) -> Result<()> {
        if let Some(bl) = &self.byte_level {
            if opts.bos {
                out.extend(self.bos_id);
            }
            if !use_cache {
                cache.bl_words.clear();
            }
            bl.encode(text, false, &mut cache.bl_words, out);
            if opts.eos {
                out.extend(self.eos_id);
            }
            return Ok(());
        }
        let bpe = self.bpe()?;
        if opts.bos {
            if let Some(b) = self.bos_id {
                out.push(b);
            }
        }
        let mut norm = std::mem::take(&mut cache.norm);
        self.normalizer.normalize(text, dummy_prefix, &mut norm);
        bpe.encode(&norm, out, cache, use_cache);
        cache.norm = norm;
        if opts.eos {
            if let Some(e) = self.eos_id {
                out.push(e);
            }
        }
        Ok(())
    }

    /// Encodes `text` with its added tokens (control and user-defined
    /// pieces; a byte-level vocabulary's added tokens) cut out and mapped to
    /// their ids, as `tokenizers` and transformers do (`<s>` typed in the
    /// text becomes BOS). Between them the text is encoded as by
    /// [`Tokenizer::encode`]; for SentencePiece, a segment after an added
    /// token gets the dummy prefix only when the tokenizer is a
    /// sentencepiece `.model` or a legacy tokenizer.json (a Metaspace
    /// "first" tokenizer.json, and a GGUF vocabulary as transformers
    /// converts it, add it at the start of the text only).
    pub fn encode_special(&self, text: &str, opts: EncodeOptions) -> Result<Vec<u32>> {
        let mut cache = EncodeCache::new();
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if let Some(bl) = &self.byte_level {
            out.extend(self.bos_id.filter(|_| opts.bos));
            bl.encode(text, true, &mut cache.bl_words, &mut out);
            out.extend(self.eos_id.filter(|_| opts.eos));
            return Ok(out);
        }
        out.extend(self.bos_id.filter(|_| opts.bos));
        let none = EncodeOptions { bos: false, eos: false };
        let later_prefix = self.prefix_after_special;
        let (mut start, mut i, mut first) = (0, 0, true);
        while i < text.len() {
            let hit = text.is_char_boundary(i).then(|| self.spm_specials.iter().find(|(t, _)| text.as_bytes()[i..].starts_with(t.as_bytes()))).flatten();
            match hit {
                Some((t, id)) => {
                    if start < i {
                        self.encode_into(&text[start..i], none, first || later_prefix, true, &mut cache, &mut out)?;
                    }
                    out.push(*id);
                    first = false;
                    i += t.len();
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < text.len() {
            self.encode_into(&text[start..], none, first || later_prefix, true, &mut cache, &mut out)?;
        }
        out.extend(self.eos_id.filter(|_| opts.eos));
        Ok(out)
    }

    /// Encodes many texts in parallel (rayon, the current pool), in order.
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S], opts: EncodeOptions) -> Result<Vec<Vec<u32>>> {
        if self.byte_level.is_none() {
            self.bpe()?;
        }
        texts.par_iter().map_init(EncodeCache::new, |cache, t| self.encode_with(t.as_ref(), opts, cache)).collect()
    }

    /// Whether a long text may be encoded in segments cut just before a
    /// space that follows a non-space (continuations without dummy prefix)
    /// with the same result as in one piece: true when the encoder splits at
    /// those points anyway and normalisation is per character.
    pub fn segment_safe(&self) -> bool {
        self.byte_level.is_none()
            && self.bpe.as_ref().is_some_and(|b| b.chunkable)
            && self.normalizer.charsmap.is_none()
            && !self.normalizer.remove_extra_whitespaces
            && self.normalizer.escape_whitespaces
    }

    // ------------------------------------------------------------- decoding
    /// Decodes ids to text, as SentencePiece's `DecodeIds`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_with(ids, DecodeOptions::default())
    }

    /// Decodes with options (see [`DecodeOptions`]).
    pub fn decode_with(&self, ids: &[u32], opts: DecodeOptions) -> Result<String> {
        if let Some(bl) = &self.byte_level {
            // `tokenizers`' decode: special tokens dropped unless kept, every
            // token's bytes through the ByteLevel decoder, lossy UTF-8
            let mut bytes = Vec::with_capacity(ids.len() * 4);
            for &id in ids {
                let p = self.pieces.get(id as usize).ok_or(TokenizerError::IdOutOfRange { id, vocab_size: self.pieces.len() })?;
                if p.kind == PieceKind::Control && !opts.keep_control {
                    continue;
                }
                bl.token_bytes(&p.text, &mut bytes);
            }
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        }
        let strip = opts.strip_dummy_prefix && (self.proto.normalizer.add_dummy_prefix || self.proto.normalizer.remove_extra_whitespaces);
        let mut text = String::with_capacity(ids.len() * 4);
        let mut bytes: Vec<u8> = Vec::new();
        let mut bos_ws = true;
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else {
                return Err(TokenizerError::IdOutOfRange { id, vocab_size: self.pieces.len() });
            };
            if let Some(b) = self.byte_value[id as usize] {
                bytes.push(b);
                bos_ws = false;
                continue;
            }
            flush_bytes(&mut bytes, &mut text);
            match p.kind {
                PieceKind::Control => {
                    if opts.keep_control {
                        text.push_str(&p.text);
                        bos_ws = false;
                    }
                }
                PieceKind::Unknown => {
                    text.push_str(&self.unk_surface);
                    bos_ws = false;
                }
                _ => {
                    let s = &self.surface[id as usize];
                    if bos_ws && strip && p.text.starts_with(META) {
                        text.push_str(&s[1..]);
                    } else {
                        text.push_str(s);
                    }
                    bos_ws = false;
                }
            }
        }
        flush_bytes(&mut bytes, &mut text);
        Ok(text)
    }
}

/// Writes `bytes` to `path` through the project's atomic writer
/// ([`crate::formats::atomic`]).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::formats::atomic::write_atomic(path, bytes).map_err(|e| TokenizerError::Write { path: path.into(), source: e })
}

/// Appends gathered byte-piece bytes as text: each valid UTF-8 sequence as
/// its character, each byte that starts none as U+FFFD (SentencePiece
/// replaces byte by byte, so a truncated 4-byte sequence gives as many
/// U+FFFD as it has bytes).
fn flush_bytes(bytes: &mut Vec<u8>, text: &mut String) {
    let mut i = 0;
    while i < bytes.len() {
        let lead = bytes[i];
        let n = match lead {
            0x00..=0x7f => 1,
            0xc2..=0xdf => 2,
            0xe0..=0xef => 3,
            0xf0..=0xf4 => 4,
            _ => 0,
        };
        match bytes.get(i..i + n).filter(|_| n > 0).and_then(|s| std::str::from_utf8(s).ok()) {
            Some(s) => {
                text.push_str(s);
                i += n;
            }
            None => {
                text.push('\u{FFFD}');
                i += 1;
            }
        }
    }
    bytes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_piece_names() {
        assert_eq!(parse_byte_piece("<0x0A>"), Some(10));
        assert_eq!(parse_byte_piece("<0xff>"), Some(255));
        assert_eq!(parse_byte_piece("<0x1>"), None);
        assert_eq!(parse_byte_piece("0x41"), None);
    }

    #[test]
    fn invalid_utf8_bytes_become_one_replacement_each() {
        let mut t = String::new();
        flush_bytes(&mut vec![0xf0, 0x9f, 0xa6, 0x99], &mut t);
        assert_eq!(t, "🦙");
        t.clear();
        flush_bytes(&mut vec![0xf0, 0x9f, b'a'], &mut t);
        assert_eq!(t, "\u{FFFD}\u{FFFD}a");
        t.clear();
        flush_bytes(&mut vec![0xed, 0xa0, 0x80, 0xc0, 0xaf], &mut t);
        assert_eq!(t, "\u{FFFD}".repeat(5));
    }
}

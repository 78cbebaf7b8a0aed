//! SentencePiece `ModelProto` (`.model` files): a hand-written reader and
//! writer for the subset of the protobuf schema that tokenisation needs.
//!
//! Reference: sentencepiece's `sentencepiece_model.proto` (field numbers
//! below) and the protobuf wire format (varint, fixed32, length-delimited).
//! Unknown fields are skipped on read, so newer `.model` files load; groups
//! (wire types 3/4) are rejected, as the schema has none.
//!
//! Public items: [`ModelProto`], [`SpmPiece`], [`TrainerSpec`],
//! [`NormalizerSpec`], [`ModelType`], [`ModelProto::parse`],
//! [`ModelProto::to_bytes`].

use super::PieceKind;

/// `ModelProto.trainer_spec.model_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelType {
    Unigram = 1,
    Bpe = 2,
    Word = 3,
    Char = 4,
}

/// One `ModelProto.SentencePiece`.
#[derive(Clone, Debug, PartialEq)]
pub struct SpmPiece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceKind,
}

/// The `TrainerSpec` fields we read and write (others are skipped on read).
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerSpec {
    pub model_type: ModelType,
    pub vocab_size: i32,
    pub character_coverage: f32,
    pub max_sentence_length: i32,
    pub max_sentencepiece_length: i32,
    pub split_by_unicode_script: bool,
    pub split_by_whitespace: bool,
    pub split_by_number: bool,
    pub treat_whitespace_as_suffix: bool,
    pub allow_whitespace_only_pieces: bool,
    pub split_digits: bool,
    pub byte_fallback: bool,
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    /// The protobuf schema's defaults.
    fn default() -> Self {
        TrainerSpec {
            model_type: ModelType::Unigram,
            vocab_size: 8000,
            character_coverage: 0.9995,
            max_sentence_length: 4192,
            max_sentencepiece_length: 16,
            split_by_unicode_script: true,
            split_by_whitespace: true,
            split_by_number: true,
            treat_whitespace_as_suffix: false,
            allow_whitespace_only_pieces: false,
            split_digits: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_surface: " \u{2047} ".to_string(),
        }
    }
}

/// `NormalizerSpec` (also used for the optional denormalizer).
#[derive(Clone, Debug, PartialEq)]
pub struct NormalizerSpec {
    pub name: String,
    /// Darts double-array trie + NUL-separated replacement strings.
    pub precompiled_charsmap: Vec<u8>,
    pub add_dummy_prefix: bool,
    pub remove_extra_whitespaces: bool,
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    /// The protobuf schema's defaults.
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            precompiled_charsmap: Vec::new(),
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The parts of a SentencePiece model that tokenisation needs.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct ModelProto {
    pub pieces: Vec<SpmPiece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
    /// Whether the file carried a `trainer_spec` / `normalizer_spec` at all.
    pub has_trainer_spec: bool,
    pub has_normalizer_spec: bool,
}

// ---------------------------------------------------------------- wire format
const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_FIXED32: u8 = 5;

/// A cursor over a protobuf message; errors are plain strings, wrapped with
/// the file path by the caller.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Message name, for error messages.
    ctx: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], ctx: &'static str) -> Self {
        Reader { buf, pos: 0, ctx }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("{}: truncated varint at byte {}", self.ctx, self.pos));
            };
            self.pos += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("{}: varint longer than 10 bytes at byte {}", self.ctx, self.pos))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| format!("{}: field of {n} bytes at byte {} runs past the end of the message ({} bytes)", self.ctx, self.pos, self.buf.len()))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    /// Next (field number, wire type).
    fn key(&mut self) -> Result<(u32, u8), String> {
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| format!("{}: field number too large", self.ctx))?;
        if field == 0 {
            return Err(format!("{}: field number 0 at byte {}", self.ctx, self.pos));
        }
        Ok((field, (k & 7) as u8))
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| format!("{}: length {n} too large", self.ctx))?;
        self.take(n)
    }

    fn skip(&mut self, field: u32, wt: u8) -> Result<(), String> {
        match wt {
            WT_VARINT => self.varint().map(|_| ()),
            WT_FIXED64 => self.take(8).map(|_| ()),
            WT_LEN => self.len_delimited().map(|_| ()),
            WT_FIXED32 => self.take(4).map(|_| ()),
            _ => Err(format!("{}: field {field} has unsupported wire type {wt}", self.ctx)),
        }
    }

    fn want_wire(&self, field: u32, wt: u8, want: u8, what: &str) -> Result<(), String> {
        if wt == want {
            Ok(())
        } else {
            Err(format!("{}: field {field} ({what}) has wire type {wt}, expected {want}", self.ctx))
        }
    }

    fn string(&mut self, field: u32, wt: u8, what: &str) -> Result<String, String> {
        self.want_wire(field, wt, WT_LEN, what)?;
        let b = self.len_delimited()?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{}: {what} is not valid UTF-8", self.ctx))
    }

    fn bool(&mut self, field: u32, wt: u8, what: &str) -> Result<bool, String> {
        self.want_wire(field, wt, WT_VARINT, what)?;
        Ok(self.varint()? != 0)
    }

    /// int32 fields: negative values are sign-extended 10-byte varints.
    fn int32(&mut self, field: u32, wt: u8, what: &str) -> Result<i32, String> {
        self.want_wire(field, wt, WT_VARINT, what)?;
        let v = self.varint()? as i64;
        i32::try_from(v).map_err(|_| format!("{}: {what} = {v} is out of int32 range", self.ctx))
    }

    fn float(&mut self, field: u32, wt: u8, what: &str) -> Result<f32, String> {
        self.want_wire(field, wt, WT_FIXED32, what)?;
        let b = self.take(4)?;
        Ok(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn parse_piece(buf: &[u8], index: usize) -> Result<SpmPiece, String> {
    let mut r = Reader::new(buf, "SentencePiece");
    let mut piece = None;
    let mut score = 0.0f32;
    let mut kind = PieceKind::Normal;
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => piece = Some(r.string(f, wt, "piece")?),
            2 => score = r.float(f, wt, "score")?,
            3 => {
                r.want_wire(f, wt, WT_VARINT, "type")?;
                let t = r.varint()?;
                kind = PieceKind::from_code(t as i64).ok_or_else(|| format!("piece {index}: unknown piece type {t}"))?;
            }
            _ => r.skip(f, wt)?,
        }
    }
    let piece = piece.ok_or_else(|| format!("piece {index} has no text (field 1)"))?;
    Ok(SpmPiece { piece, score, kind })
}

fn parse_trainer(buf: &[u8]) -> Result<TrainerSpec, String> {
    let mut r = Reader::new(buf, "TrainerSpec");
    let mut t = TrainerSpec::default();
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            3 => {
                let v = r.int32(f, wt, "model_type")?;
                t.model_type = match v {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    _ => return Err(format!("TrainerSpec: unknown model_type {v}")),
                };
            }
            4 => t.vocab_size = r.int32(f, wt, "vocab_size")?,
            10 => t.character_coverage = r.float(f, wt, "character_coverage")?,
            18 => t.max_sentence_length = r.int32(f, wt, "max_sentence_length")?,
            20 => t.max_sentencepiece_length = r.int32(f, wt, "max_sentencepiece_length")?,
            21 => t.split_by_unicode_script = r.bool(f, wt, "split_by_unicode_script")?,
            22 => t.split_by_whitespace = r.bool(f, wt, "split_by_whitespace")?,
            23 => t.split_by_number = r.bool(f, wt, "split_by_number")?,
            24 => t.treat_whitespace_as_suffix = r.bool(f, wt, "treat_whitespace_as_suffix")?,
            25 => t.split_digits = r.bool(f, wt, "split_digits")?,
            26 => t.allow_whitespace_only_pieces = r.bool(f, wt, "allow_whitespace_only_pieces")?,
            35 => t.byte_fallback = r.bool(f, wt, "byte_fallback")?,
            40 => t.unk_id = r.int32(f, wt, "unk_id")?,
            41 => t.bos_id = r.int32(f, wt, "bos_id")?,
            42 => t.eos_id = r.int32(f, wt, "eos_id")?,
            43 => t.pad_id = r.int32(f, wt, "pad_id")?,
            44 => t.unk_surface = r.string(f, wt, "unk_surface")?,
            _ => r.skip(f, wt)?,
        }
    }
    Ok(t)
}

fn parse_normalizer(buf: &[u8]) -> Result<NormalizerSpec, String> {
    let mut r = Reader::new(buf, "NormalizerSpec");
    let mut n = NormalizerSpec::default();
    while !r.done() {
        let (f, wt) = r.key()?;
        match f {
            1 => n.name = r.string(f, wt, "name")?,
            2 => {
                r.want_wire(f, wt, WT_LEN, "precompiled_charsmap")?;
                n.precompiled_charsmap = r.len_delimited()?.to_vec();
            }
            3 => n.add_dummy_prefix = r.bool(f, wt, "add_dummy_prefix")?,
            4 => n.remove_extra_whitespaces = r.bool(f, wt, "remove_extra_whitespaces")?,
            5 => n.escape_whitespaces = r.bool(f, wt, "escape_whitespaces")?,
            _ => r.skip(f, wt)?,
        }
    }
    Ok(n)
}

impl ModelProto {
    /// Parses a serialized `ModelProto`. The error names what is wrong.
    pub fn parse(buf: &[u8]) -> Result<ModelProto, String> {
        let mut r = Reader::new(buf, "ModelProto");
        let mut m = ModelProto::default();
        while !r.done() {
            let (f, wt) = r.key()?;
            match f {
                1 => {
                    r.want_wire(f, wt, WT_LEN, "pieces")?;
                    let b = r.len_delimited()?;
                    m.pieces.push(parse_piece(b, m.pieces.len())?);
                }
                2 => {
                    r.want_wire(f, wt, WT_LEN, "trainer_spec")?;
                    m.trainer = parse_trainer(r.len_delimited()?)?;
                    m.has_trainer_spec = true;
                }
                3 => {
                    r.want_wire(f, wt, WT_LEN, "normalizer_spec")?;
                    m.normalizer = parse_normalizer(r.len_delimited()?)?;
                    m.has_normalizer_spec = true;
                }
                _ => r.skip(f, wt)?,
            }
        }
        if m.pieces.is_empty() {
            return Err("ModelProto has no pieces".to_string());
        }
        Ok(m)
    }

    /// Serializes to the protobuf wire format that `sentencepiece` loads.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for p in &self.pieces {
            let mut sp = Vec::new();
            put_bytes(&mut sp, 1, p.piece.as_bytes());
            put_float(&mut sp, 2, p.score);
            if p.kind != PieceKind::Normal {
                put_varint_field(&mut sp, 3, p.kind as i64);
            }
            put_bytes(&mut out, 1, &sp);
        }
        let t = &self.trainer;
        let mut ts = Vec::new();
        put_varint_field(&mut ts, 3, t.model_type as i64);
        put_varint_field(&mut ts, 4, i64::from(t.vocab_size));
        put_float(&mut ts, 10, t.character_coverage);
        put_varint_field(&mut ts, 18, i64::from(t.max_sentence_length));
        put_varint_field(&mut ts, 20, i64::from(t.max_sentencepiece_length));
        put_varint_field(&mut ts, 21, i64::from(t.split_by_unicode_script));
        put_varint_field(&mut ts, 22, i64::from(t.split_by_whitespace));
        put_varint_field(&mut ts, 23, i64::from(t.split_by_number));
        put_varint_field(&mut ts, 24, i64::from(t.treat_whitespace_as_suffix));
        put_varint_field(&mut ts, 25, i64::from(t.split_digits));
        put_varint_field(&mut ts, 26, i64::from(t.allow_whitespace_only_pieces));
        put_varint_field(&mut ts, 35, i64::from(t.byte_fallback));
        put_varint_field(&mut ts, 40, i64::from(t.unk_id));
        put_varint_field(&mut ts, 41, i64::from(t.bos_id));
        put_varint_field(&mut ts, 42, i64::from(t.eos_id));
        put_varint_field(&mut ts, 43, i64::from(t.pad_id));
        put_bytes(&mut ts, 44, t.unk_surface.as_bytes());
        put_bytes(&mut out, 2, &ts);
        let n = &self.normalizer;
        let mut ns = Vec::new();
        put_bytes(&mut ns, 1, n.name.as_bytes());
        if !n.precompiled_charsmap.is_empty() {
            put_bytes(&mut ns, 2, &n.precompiled_charsmap);
        }
        put_varint_field(&mut ns, 3, i64::from(n.add_dummy_prefix));
        put_varint_field(&mut ns, 4, i64::from(n.remove_extra_whitespaces));
        put_varint_field(&mut ns, 5, i64::from(n.escape_whitespaces));
        put_bytes(&mut out, 3, &ns);
        out
    }
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut v = v;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// Varint field; negative int32 values are written sign-extended to 64 bits,
/// as protobuf does.
fn put_varint_field(out: &mut Vec<u8>, field: u32, v: i64) {
    put_varint(out, u64::from(field) << 3 | u64::from(WT_VARINT));
    put_varint(out, v as u64);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    put_varint(out, u64::from(field) << 3 | u64::from(WT_LEN));
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn put_float(out: &mut Vec<u8>, field: u32, f: f32) {
    put_varint(out, u64::from(field) << 3 | u64::from(WT_FIXED32));
    out.extend_from_slice(&f.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_small_model() {
        let m = ModelProto {
            pieces: vec![
                SpmPiece { piece: "<unk>".into(), score: 0.0, kind: PieceKind::Unknown },
                SpmPiece { piece: "\u{2581}a".into(), score: -1.5, kind: PieceKind::Normal },
            ],
            trainer: TrainerSpec { model_type: ModelType::Bpe, vocab_size: 2, pad_id: -1, ..Default::default() },
            normalizer: NormalizerSpec { name: "identity".into(), ..Default::default() },
            has_trainer_spec: true,
            has_normalizer_spec: true,
        };
        let b = m.to_bytes();
        assert_eq!(ModelProto::parse(&b).unwrap(), m);
        // every strict prefix is either rejected or parses to something else
        for cut in [1, 5, b.len() / 2, b.len() - 1] {
            assert_ne!(ModelProto::parse(&b[..cut]).ok(), Some(m.clone()), "cut {cut}");
        }
    }

    #[test]
    fn negative_int32_is_ten_bytes() {
        let mut v = Vec::new();
        put_varint_field(&mut v, 43, -1);
        assert_eq!(v.len(), 2 + 10);
        let mut r = Reader::new(&v, "t");
        let (f, wt) = r.key().unwrap();
        assert_eq!(r.int32(f, wt, "pad_id").unwrap(), -1);
    }
}

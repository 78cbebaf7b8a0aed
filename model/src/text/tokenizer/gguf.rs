//! GGUF vocabulary reader: the `tokenizer.ggml.*` metadata of a GGUF file
//! (llama.cpp's format), read from a stream without touching the tensor data,
//! so a multi-GB model file costs only its header.
//!
//! Reference: the GGUF specification in ggml's `docs/gguf.md`: magic "GGUF",
//! version (2 or 3; v1 had 32-bit counts and is rejected), tensor count and
//! metadata count as u64, then key/value pairs (key: u64 length + UTF-8;
//! value: u32 type + payload; arrays: element type u32, count u64, items).
//!
//! Public items: [`GgufVocab`], [`read_gguf_vocab`].

use std::collections::HashMap;
use std::io::Read;

/// The tokenizer metadata of a GGUF file.
#[derive(Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` ("llama" for SentencePiece BPE vocabularies).
    pub model: String,
    pub tokens: Vec<String>,
    pub scores: Vec<f32>,
    /// llama.cpp token types, the same codes as SentencePiece's piece types.
    pub token_types: Vec<i32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    pub add_space_prefix: Option<bool>,
    pub remove_extra_whitespaces: Option<bool>,
}

const MAGIC: &[u8; 4] = b"GGUF";

/// A GGUF metadata value (only what the vocabulary needs is kept).
#[derive(Debug)]
enum Value {
    Int(i64),
    UInt(u64),
    Float,
    Bool(bool),
    Str(String),
    Strings(Vec<String>),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    /// An array we do not need (merges, other metadata), skipped.
    OtherArray(&'static str),
}

fn type_name(t: u32) -> &'static str {
    match t {
        0 => "uint8",
        1 => "int8",
        2 => "uint16",
        3 => "int16",
        4 => "uint32",
        5 => "int32",
        6 => "float32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "uint64",
        11 => "int64",
        12 => "float64",
        _ => "unknown",
    }
}

fn value_desc(v: &Value) -> String {
    match v {
        Value::Int(_) => "a signed integer".into(),
        Value::UInt(_) => "an unsigned integer".into(),
        Value::Float => "a float".into(),
        Value::Bool(_) => "a bool".into(),
        Value::Str(_) => "a string".into(),
        Value::Strings(_) => "an array of string".into(),
        Value::Floats(_) => "an array of float32".into(),
        Value::Ints(_) => "an array of integers".into(),
        Value::OtherArray(t) => format!("an array of {t}"),
    }
}

/// Reads with a running byte count and the file length, so that a corrupt
/// count fails with a message instead of a huge allocation.
struct Src<R: Read> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read> Src<R> {
    fn bytes<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|e| format!("truncated at byte {} (reading {N} bytes: {e})", self.pos))?;
        self.pos += N as u64;
        Ok(b)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes::<4>()?))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes::<8>()?))
    }
    /// Checks that `count` items of at least `min_size` bytes fit in the rest.
    fn check_fits(&self, count: u64, min_size: u64, what: &str) -> Result<(), String> {
        let need = count.saturating_mul(min_size);
        if need > self.len.saturating_sub(self.pos) {
            return Err(format!("{what}: {count} items at byte {} cannot fit in a file of {} bytes", self.pos, self.len));
        }
        Ok(())
    }
    fn string(&mut self) -> Result<String, String> {
        let n = self.u64()?;
        self.check_fits(n, 1, "string")?;
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|e| format!("truncated string at byte {}: {e}", self.pos))?;
        self.pos += n;
        String::from_utf8(b).map_err(|_| format!("string at byte {} is not valid UTF-8", self.pos - n))
    }
    fn skip(&mut self, n: u64) -> Result<(), String> {
        self.check_fits(n, 1, "skip")?;
        let got = std::io::copy(&mut (&mut self.r).take(n), &mut std::io::sink()).map_err(|e| format!("read error at byte {}: {e}", self.pos))?;
        if got != n {
            return Err(format!("truncated at byte {}", self.pos + got));
        }
        self.pos += n;
        Ok(())
    }

    fn scalar(&mut self, t: u32) -> Result<Value, String> {
        Ok(match t {
            0 => Value::UInt(u64::from(self.bytes::<1>()?[0])),
            1 => Value::Int(i64::from(self.bytes::<1>()?[0] as i8)),
            2 => Value::UInt(u64::from(u16::from_le_bytes(self.bytes::<2>()?))),
            3 => Value::Int(i64::from(i16::from_le_bytes(self.bytes::<2>()?))),
            4 => Value::UInt(u64::from(self.u32()?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(self.bytes::<4>()?))),
            6 => {
                self.bytes::<4>()?;
                Value::Float
            }
            7 => {
                let b = self.bytes::<1>()?[0];
                if b > 1 {
                    return Err(format!("bool value {b} at byte {}", self.pos - 1));
                }
                Value::Bool(b == 1)
            }
            8 => Value::Str(self.string()?),
            10 => Value::UInt(self.u64()?),
            11 => Value::Int(i64::from_le_bytes(self.bytes::<8>()?)),
            12 => {
                self.bytes::<8>()?;
                Value::Float
            }
            _ => return Err(format!("unknown value type {t} at byte {}", self.pos)),
        })
    }

    /// Reads a value; arrays we need are kept, others skipped. `keep` says
    /// whether the key is one we use (so other string arrays are not stored).
    fn value(&mut self, t: u32, keep: bool) -> Result<Value, String> {
        if t != 9 {
            return self.scalar(t);
        }
        let et = self.u32()?;
        let n = self.u64()?;
        let size = match et {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            8 => 8, // a string is at least its u64 length
            9 => return Err(format!("nested arrays are not supported (byte {})", self.pos)),
            _ => return Err(format!("unknown array element type {et} at byte {}", self.pos)),
        };
        self.check_fits(n, size, "array")?;
        if !keep {
            if et == 8 {
                for _ in 0..n {
                    let len = self.u64()?;
                    self.skip(len)?;
                }
            } else {
                self.skip(n * size)?;
            }
            return Ok(Value::OtherArray(type_name(et)));
        }
        Ok(match et {
            8 => {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.string()?);
                }
                Value::Strings(v)
            }
            6 => {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(f32::from_le_bytes(self.bytes::<4>()?));
                }
                Value::Floats(v)
            }
            0..=5 | 10 | 11 => {
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(match self.scalar(et)? {
                        Value::Int(i) => i,
                        Value::UInt(u) => i64::try_from(u).map_err(|_| "array value too large".to_string())?,
                        _ => return Err(format!("array element type {et} is not an integer")),
                    });
                }
                Value::Ints(v)
            }
            _ => {
                self.skip(n * size)?;
                Value::OtherArray(type_name(et))
            }
        })
    }
}

/// Keys whose values we keep.
const KEYS: &[&str] = &[
    "tokenizer.ggml.model",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.unknown_token_id",
    "tokenizer.ggml.padding_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.ggml.add_eos_token",
    "tokenizer.ggml.add_space_prefix",
    "tokenizer.ggml.remove_extra_whitespaces",
];

/// Reads the tokenizer metadata of a GGUF stream of `file_len` bytes.
pub fn read_gguf_vocab<R: Read>(r: R, file_len: u64) -> Result<GgufVocab, String> {
    let mut s = Src { r, pos: 0, len: file_len };
    let magic = s.bytes::<4>().map_err(|_| "file too short for a GGUF header".to_string())?;
    if &magic != MAGIC {
        return Err(format!("bad magic {magic:02x?}, expected \"GGUF\""));
    }
    let version = s.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let _n_tensors = s.u64()?;
    let n_kv = s.u64()?;
    // each key/value is at least 8 (key length) + 4 (type) + 1 bytes
    s.check_fits(n_kv, 13, "metadata")?;
    let mut kv: HashMap<String, Value> = HashMap::new();
    for _ in 0..n_kv {
        let key = s.string()?;
        let t = s.u32()?;
        let keep = KEYS.contains(&key.as_str());
        let v = s.value(t, keep).map_err(|e| format!("key {key}: {e}"))?;
        if keep {
            kv.insert(key, v);
        }
    }

    let mut out = GgufVocab::default();
    let wrong = |k: &str, v: &Value, want: &str| format!("{k} is {}, expected {want}", value_desc(v));
    let mut take = |k: &str| kv.remove(k);
    match take("tokenizer.ggml.model") {
        Some(Value::Str(m)) => out.model = m,
        Some(v) => return Err(wrong("tokenizer.ggml.model", &v, "a string")),
        None => return Err("no tokenizer.ggml.model key: this GGUF has no vocabulary".into()),
    }
    match take("tokenizer.ggml.tokens") {
        Some(Value::Strings(t)) => out.tokens = t,
        Some(v) => return Err(wrong("tokenizer.ggml.tokens", &v, "an array of string")),
        None => return Err("no tokenizer.ggml.tokens key".into()),
    }
    let n = out.tokens.len();
    match take("tokenizer.ggml.scores") {
        Some(Value::Floats(t)) => out.scores = t,
        Some(v) => return Err(wrong("tokenizer.ggml.scores", &v, "an array of float32")),
        None => return Err("no tokenizer.ggml.scores key (a SentencePiece vocabulary needs scores)".into()),
    }
    match take("tokenizer.ggml.token_type") {
        Some(Value::Ints(t)) => {
            out.token_types = t.into_iter().map(|x| i32::try_from(x).map_err(|_| format!("token type {x} out of range"))).collect::<Result<_, _>>()?
        }
        Some(v) => return Err(wrong("tokenizer.ggml.token_type", &v, "an array of int32")),
        None => out.token_types = vec![1; n],
    }
    if out.scores.len() != n || out.token_types.len() != n {
        return Err(format!("{n} tokens but {} scores and {} token types", out.scores.len(), out.token_types.len()));
    }
    let mut id = |k: &str| -> Result<Option<u32>, String> {
        match take(k) {
            None => Ok(None),
            Some(Value::UInt(u)) => Ok(Some(u32::try_from(u).map_err(|_| format!("{k} = {u} too large"))?)),
            Some(Value::Int(i)) if i < 0 => Ok(None),
            Some(Value::Int(i)) => Ok(Some(u32::try_from(i).map_err(|_| format!("{k} = {i} too large"))?)),
            Some(v) => Err(wrong(k, &v, "an integer")),
        }
    };
    out.bos_id = id("tokenizer.ggml.bos_token_id")?;
    out.eos_id = id("tokenizer.ggml.eos_token_id")?;
    out.unk_id = id("tokenizer.ggml.unknown_token_id")?;
    out.pad_id = id("tokenizer.ggml.padding_token_id")?;
    let mut flag = |k: &str| -> Result<Option<bool>, String> {
        match take(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(v) => Err(wrong(k, &v, "a bool")),
        }
    };
    out.add_bos = flag("tokenizer.ggml.add_bos_token")?;
    out.add_eos = flag("tokenizer.ggml.add_eos_token")?;
    out.add_space_prefix = flag("tokenizer.ggml.add_space_prefix")?;
    out.remove_extra_whitespaces = flag("tokenizer.ggml.remove_extra_whitespaces")?;
    for (name, id) in [("bos", out.bos_id), ("eos", out.eos_id), ("unk", out.unk_id), ("pad", out.pad_id)] {
        if let Some(i) = id {
            if i as usize >= n {
                return Err(format!("{name} token id {i} is out of range for {n} tokens"));
            }
        }
    }
    Ok(out)
}

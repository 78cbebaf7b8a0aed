//! GGUF files (llama.cpp's format): the one parser of the project (the
//! tokenizer reads its vocabulary through it too), Llama models read from
//! them (config from the `llama.*` metadata, every tensor dequantized to f32
//! straight from the memory map into the parameter arena) and written to
//! them (F32, F16, BF16, Q8_0), so a model trained here runs in llama.cpp.
//!
//! Reference: ggml `docs/gguf.md` and the `gguf` Python package
//! (`gguf_reader.py`, `gguf_writer.py`, `constants.py`): magic "GGUF",
//! version u32 (2 or 3; v1 had 32-bit counts and is rejected), tensor count
//! and metadata count u64, the key/value pairs (key: u64 length + UTF-8;
//! value: u32 type + payload; arrays: element type u32, count u64, items),
//! the tensor infos (name, n_dims u32, dims u64 innermost first, ggml type
//! u32, offset u64 from the data section), padding to `general.alignment`
//! (32 by default), the data section.
//!
//! Llama in GGUF (llama.cpp `convert_hf_to_gguf.py`, `LlamaModel`): tensor
//! names `token_embd`, `output_norm`, `output` (absent when tied), and per
//! block `blk.{l}.attn_norm`, `attn_q`, `attn_k`, `attn_v`, `attn_output`,
//! `ffn_norm`, `ffn_gate`, `ffn_up`, `ffn_down`; a matrix `[out, in]` is
//! stored with dims `[in, out]`; q and k rows are permuted within each head
//! from HF's rotate-half layout to interleaved pairs (`LlamaModel.permute`),
//! which the reader undoes ([`crate::llama2c::interleaved_to_hf`], q with
//! the head count, k with the KV head count) and the writer redoes.
//!
//! Every file is validated before use: counts against the file size, each
//! tensor's type, dims and byte range against the file, alignment, the
//! config implied by the metadata against the tensors. What is not a plain
//! Llama (another architecture, RoPE scaling, experts, biases, an unknown
//! quant type) is refused with an error naming the file and the key or
//! tensor.
//!
//! Public items: [`GgufFile`], [`GgufValue`], [`TensorInfo`], [`GgufError`],
//! [`LlamaGguf`], [`load_llama`], [`load_if_gguf`], [`is_gguf`],
//! [`write_llama`], [`WriteDtype`], [`hf_dir_to_gguf`], [`gguf_to_hf_dir`],
//! [`dir_tokenizer`], [`Written`],
//! [`tensor_name`], and the type module [`crate::formats::ggml_quants`].

use crate::config::Config;
use crate::formats::ggml_quants::{self, GgmlType};
use crate::llama2c::interleaved_to_hf;
use crate::params::{ParamId, ParamLayout};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Default data alignment (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
const MAGIC: &[u8; 4] = b"GGUF";

/// Errors of GGUF files. Each names the file; those the user can fix end
/// with a hint.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Not a valid GGUF file (truncated, corrupt, inconsistent).
    #[error("{path}: malformed GGUF: {msg}; HINT: the file is truncated or not a GGUF file (re-download or re-convert it)")]
    Format { path: PathBuf, msg: String },
    /// A valid file that holds something we do not run.
    #[error("{path}: {what} is not supported; HINT: {hint}")]
    Unsupported { path: PathBuf, what: String, hint: String },
    /// A metadata key is missing or of the wrong type.
    #[error("{path}: metadata key `{key}`: {msg}; HINT: {hint}")]
    Key { path: PathBuf, key: String, msg: String, hint: String },
    /// A tensor is missing, of the wrong shape, or cannot be written.
    #[error("{path}: tensor `{name}`: {msg}; HINT: {hint}")]
    Tensor { path: PathBuf, name: String, msg: String, hint: String },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
}

pub type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value. Arrays keep their element type code (for writing an
/// empty array back, and for messages).
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(u32, Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// The GGUF value type names, by code.
fn value_type_name(t: u32) -> &'static str {
    ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string", "array", "uint64", "int64", "float64"]
        .get(t as usize)
        .copied()
        .unwrap_or("unknown")
}

impl GgufValue {
    /// The GGUF type code.
    pub fn type_code(&self) -> u32 {
        match self {
            GgufValue::U8(_) => 0,
            GgufValue::I8(_) => 1,
            GgufValue::U16(_) => 2,
            GgufValue::I16(_) => 3,
            GgufValue::U32(_) => 4,
            GgufValue::I32(_) => 5,
            GgufValue::F32(_) => 6,
            GgufValue::Bool(_) => 7,
            GgufValue::Str(_) => 8,
            GgufValue::Array(..) => 9,
            GgufValue::U64(_) => 10,
            GgufValue::I64(_) => 11,
            GgufValue::F64(_) => 12,
        }
    }

    /// "a string", "an array of int32", ... (for messages).
    pub fn describe(&self) -> String {
        match self {
            GgufValue::Array(t, _) => format!("an array of {}", value_type_name(*t)),
            v => {
                let n = value_type_name(v.type_code());
                format!("{} {n}", if n.starts_with(['a', 'i']) { "an" } else { "a" })
            }
        }
    }

    /// Any integer type as i64 (None for others, or a u64 beyond i64).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            GgufValue::U8(x) => x.into(),
            GgufValue::I8(x) => x.into(),
            GgufValue::U16(x) => x.into(),
            GgufValue::I16(x) => x.into(),
            GgufValue::U32(x) => x.into(),
            GgufValue::I32(x) => x.into(),
            GgufValue::U64(x) => i64::try_from(x).ok()?,
            GgufValue::I64(x) => x,
            _ => return None,
        })
    }

    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x.into()),
            GgufValue::F64(x) => Some(x),
            _ => self.as_i64().map(|x| x as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            GgufValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// (element type code, items) of an array.
    pub fn as_array(&self) -> Option<(u32, &[GgufValue])> {
        match self {
            GgufValue::Array(t, v) => Some((*t, v)),
            _ => None,
        }
    }

    /// Writes the value (type code first when `with_type`).
    fn write(&self, out: &mut Vec<u8>, with_type: bool) {
        if with_type {
            out.extend(self.type_code().to_le_bytes());
        }
        match self {
            GgufValue::U8(x) => out.push(*x),
            GgufValue::I8(x) => out.push(*x as u8),
            GgufValue::U16(x) => out.extend(x.to_le_bytes()),
            GgufValue::I16(x) => out.extend(x.to_le_bytes()),
            GgufValue::U32(x) => out.extend(x.to_le_bytes()),
            GgufValue::I32(x) => out.extend(x.to_le_bytes()),
            GgufValue::F32(x) => out.extend(x.to_le_bytes()),
            GgufValue::Bool(x) => out.push(u8::from(*x)),
            GgufValue::Str(s) => write_str(out, s),
            GgufValue::Array(t, items) => {
                out.extend(t.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(out, false);
                }
            }
            GgufValue::U64(x) => out.extend(x.to_le_bytes()),
            GgufValue::I64(x) => out.extend(x.to_le_bytes()),
            GgufValue::F64(x) => out.extend(x.to_le_bytes()),
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

/// One tensor of the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml dims, innermost (columns) first
    pub dims: Vec<u64>,
    /// the ggml type code (see [`ggml_quants::type_name`])
    pub type_code: u32,
    /// absolute byte offset in the file
    pub offset: u64,
    /// bytes (None for types we do not know the block size of)
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// Elements.
    pub fn n_elems(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The shape as numpy / HF write it (outermost first).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// Reads little-endian values from the mapped bytes with bounds checks.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| format!("truncated at byte {} (reading {n} bytes)", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// Checks that `count` items of at least `min_size` bytes fit in the rest.
    fn check_fits(&self, count: u64, min_size: u64, what: &str) -> std::result::Result<(), String> {
        if count.saturating_mul(min_size) > (self.b.len() - self.pos) as u64 {
            return Err(format!("{what}: {count} items at byte {} cannot fit in a file of {} bytes", self.pos, self.b.len()));
        }
        Ok(())
    }
    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.u64()?;
        self.check_fits(n, 1, "string")?;
        let at = self.pos;
        let b = self.take(n as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("string at byte {at} is not valid UTF-8"))
    }
    fn value(&mut self, t: u32) -> std::result::Result<GgufValue, String> {
        Ok(match t {
            0 => GgufValue::U8(self.arr::<1>()?[0]),
            1 => GgufValue::I8(self.arr::<1>()?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.arr()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.arr()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.arr()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.arr()?)),
            7 => {
                let b = self.arr::<1>()?[0];
                if b > 1 {
                    return Err(format!("bool value {b} at byte {}", self.pos - 1));
                }
                GgufValue::Bool(b == 1)
            }
            8 => GgufValue::Str(self.string()?),
            9 => {
                let et = self.u32()?;
                let n = self.u64()?;
                let size = match et {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8, // a string is at least its u64 length
                    9 => return Err(format!("nested arrays are not supported (byte {})", self.pos)),
                    _ => return Err(format!("unknown array element type {et} at byte {}", self.pos)),
                };
                self.check_fits(n, size, "array")?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(et)?);
                }
                GgufValue::Array(et, v)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr()?)),
            _ => return Err(format!("unknown value type {t} at byte {}", self.pos)),
        })
    }
}

/// An opened GGUF file: metadata and tensor infos parsed, data mapped.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// key → value, in file order of keys is not kept (BTreeMap)
    pub metadata: BTreeMap<String, GgufValue>,
    /// tensors in file order
    pub tensors: Vec<TensorInfo>,
    map: memmap2::Mmap,
}

impl GgufFile {
    /// Maps and parses `path`, validating every count and tensor range.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let io = |err| GgufError::Io { path: path.to_path_buf(), err };
        let f = std::fs::File::open(path).map_err(io)?;
        // SAFETY: read-only map; we require the file not to change while
        // it is open (as every mmap reader does).
        let map = unsafe { memmap2::Mmap::map(&f) }.map_err(io)?;
        let (version, metadata, tensors) = parse(&map).map_err(|msg| GgufError::Format { path: path.to_path_buf(), msg })?;
        Ok(GgufFile { path: path.to_path_buf(), version, metadata, tensors, map })
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (its range was checked at open).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Option<&[u8]> {
        let n = t.n_bytes?;
        self.map.get(t.offset as usize..(t.offset + n) as usize)
    }

    fn key_err(&self, key: &str, msg: String, hint: &str) -> GgufError {
        GgufError::Key { path: self.path.clone(), key: key.into(), msg, hint: hint.into() }
    }

    /// A required unsigned integer key.
    pub fn req_usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| {
            self.key_err(key, "missing".into(), "the file lacks the model's hyper-parameters; re-convert it with llama.cpp's convert_hf_to_gguf.py")
        })
    }

    /// An optional unsigned integer key.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_i64() {
                Some(x) if x >= 0 => Ok(Some(x as usize)),
                _ => Err(self.key_err(
                    key,
                    format!("is {}, expected a non-negative integer", v.describe()),
                    "a per-layer or non-integer value is not a plain Llama",
                )),
            },
        }
    }

    /// An optional number key.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.key_err(key, format!("is {}, expected a number", v.describe()), "re-convert the file")),
        }
    }

    /// An optional string key.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(Some).ok_or_else(|| self.key_err(key, format!("is {}, expected a string", v.describe()), "re-convert the file")),
        }
    }

    /// Dequantizes tensor `t` into `dst` (its element count), f32.
    pub fn read_into(&self, t: &TensorInfo, dst: &mut [f32]) -> Result<()> {
        let ty = GgmlType::from_code(t.type_code).ok_or_else(|| GgufError::Unsupported {
            path: self.path.clone(),
            what: format!("tensor `{}` of ggml type {}", t.name, ggml_quants::type_name(t.type_code)),
            hint: "we read F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K; re-quantize with llama-quantize to one of those".into(),
        })?;
        let bytes =
            self.tensor_bytes(t).ok_or_else(|| GgufError::Format { path: self.path.clone(), msg: format!("tensor `{}` lies outside the file", t.name) })?;
        if dst.len() as u64 != t.n_elems() {
            return Err(self.tensor_err(&t.name, format!("{} elements, destination holds {}", t.n_elems(), dst.len()), "the file does not match its metadata"));
        }
        ggml_quants::dequantize(ty, bytes, dst).map_err(|msg| GgufError::Format { path: self.path.clone(), msg: format!("tensor `{}`: {msg}", t.name) })
    }

    /// A whole tensor as f32 with its shape (outermost first).
    pub fn read(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.tensor(name).ok_or_else(|| self.tensor_err(name, "missing".into(), "the file does not hold this tensor"))?;
        let mut out = vec![0f32; t.n_elems() as usize];
        self.read_into(t, &mut out)?;
        Ok((t.shape(), out))
    }

    fn tensor_err(&self, name: &str, msg: String, hint: &str) -> GgufError {
        GgufError::Tensor { path: self.path.clone(), name: name.into(), msg, hint: hint.into() }
    }
}

type Parsed = (u32, BTreeMap<String, GgufValue>, Vec<TensorInfo>);

fn parse(b: &[u8]) -> std::result::Result<Parsed, String> {
    let mut c = Cursor { b, pos: 0 };
    let magic = c.arr::<4>().map_err(|_| "file too short for a GGUF header".to_string())?;
    if &magic != MAGIC {
        return Err(format!("bad magic {magic:02x?}, expected \"GGUF\""));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (2 or 3)"));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // a key/value is at least 8 (key length) + 4 (type) + 1 bytes
    c.check_fits(n_kv, 13, "metadata")?;
    let mut kv = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let t = c.u32()?;
        let v = c.value(t).map_err(|e| format!("key {key}: {e}"))?;
        if kv.insert(key.clone(), v).is_some() {
            return Err(format!("key {key} appears twice"));
        }
    }
    // a tensor info is at least 8 + 4 + 4 + 8 bytes
    c.check_fits(n_tensors, 24, "tensor infos")?;
    let mut infos = Vec::with_capacity(n_tensors as usize);
    for _ in 0..n_tensors {
        let name = c.string()?;
        let nd = c.u32()?;
        if nd == 0 || nd > 4 {
            return Err(format!("tensor {name}: {nd} dimensions (1 to 4)"));
        }
        let mut dims = Vec::with_capacity(nd as usize);
        for _ in 0..nd {
            dims.push(c.u64()?);
        }
        let type_code = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, dims, type_code, offset));
    }
    let align = match kv.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_i64() {
            Some(a) if a > 0 && (a as u64).is_power_of_two() => a as u64,
            _ => return Err(format!("general.alignment is {v:?}, not a power of two")),
        },
    };
    let data_start = (c.pos as u64).div_ceil(align) * align;
    let mut tensors = Vec::with_capacity(infos.len());
    let mut names = std::collections::HashSet::new();
    for (name, dims, type_code, offset) in infos {
        if !names.insert(name.clone()) {
            return Err(format!("tensor {name} appears twice"));
        }
        if !offset.is_multiple_of(align) {
            return Err(format!("tensor {name}: offset {offset} is not a multiple of the alignment {align}"));
        }
        let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| format!("tensor {name}: dims {dims:?} overflow"))?;
        let n_bytes = match GgmlType::from_code(type_code) {
            Some(ty) => {
                if !dims[0].is_multiple_of(ty.block_elems() as u64) {
                    return Err(format!("tensor {name}: row length {} is not a multiple of the {} block size {}", dims[0], ty.name(), ty.block_elems()));
                }
                Some(ty.bytes_for(n).ok_or_else(|| format!("tensor {name}: size overflow"))?)
            }
            None => None,
        };
        let abs = data_start.checked_add(offset).ok_or_else(|| format!("tensor {name}: offset overflow"))?;
        if let Some(nb) = n_bytes {
            let end = abs.checked_add(nb).ok_or_else(|| format!("tensor {name}: size overflow"))?;
            if end > b.len() as u64 {
                return Err(format!("tensor {name}: bytes {abs}..{end} lie beyond the end of the file ({} bytes)", b.len()));
            }
        }
        tensors.push(TensorInfo { name, dims, type_code, offset: abs, n_bytes });
    }
    Ok((version, kv, tensors))
}

// ---------------------------------------------------------------------------
// Llama models

/// The GGUF name of parameter `id` of layer `l`.
pub fn tensor_name(id: ParamId, l: usize) -> String {
    match id {
        ParamId::Embed => "token_embd.weight".into(),
        ParamId::LmHead => "output.weight".into(),
        // llama.cpp has no sequence-classification head for `llama`; the
        // writer refuses such models, this name only labels errors
        ParamId::Score => "score.weight".into(),
        ParamId::Lnf => "output_norm.weight".into(),
        ParamId::Wq => format!("blk.{l}.attn_q.weight"),
        ParamId::Wk => format!("blk.{l}.attn_k.weight"),
        ParamId::Wv => format!("blk.{l}.attn_v.weight"),
        ParamId::Wo => format!("blk.{l}.attn_output.weight"),
        ParamId::Wgate => format!("blk.{l}.ffn_gate.weight"),
        ParamId::Wup => format!("blk.{l}.ffn_up.weight"),
        ParamId::Wdown => format!("blk.{l}.ffn_down.weight"),
        ParamId::Ln1 => format!("blk.{l}.attn_norm.weight"),
        ParamId::Ln2 => format!("blk.{l}.ffn_norm.weight"),
    }
}

const HINT_ARCH: &str = "only plain Llama-architecture models (llama.cpp arch `llama`) are supported";

/// A Llama GGUF file: the opened file and the config its metadata implies.
pub struct LlamaGguf {
    pub file: GgufFile,
    pub cfg: Config,
}

impl LlamaGguf {
    /// Opens `path` and reads the config from its `llama.*` metadata,
    /// checking that the tensors are those of a plain Llama.
    pub fn open(path: &Path) -> Result<LlamaGguf> {
        let file = GgufFile::open(path)?;
        let cfg = llama_config(&file)?;
        Ok(LlamaGguf { file, cfg })
    }

    /// Fills the parameter arena `dst (layout.total)` with every tensor
    /// dequantized to f32 (q and k rows back in HF's rotate-half layout).
    pub fn load_into(&self, layout: &ParamLayout, dst: &mut [f32]) -> Result<()> {
        let (f, c) = (&self.file, &self.cfg);
        if dst.len() != layout.total {
            return Err(f.tensor_err("(arena)", format!("{} values for a layout of {}", dst.len(), layout.total), "internal"));
        }
        for (id, l, _) in layout.hf_tensors(c) {
            let name = tensor_name(id, l);
            let t = f.tensor(&name).ok_or_else(|| f.tensor_err(&name, "missing".into(), "the file is not a complete llama.cpp Llama model"))?;
            let want = id.hf_shape(c);
            if t.shape() != want {
                return Err(f.tensor_err(
                    &name,
                    format!("shape {:?}, the metadata implies {want:?}", t.shape()),
                    "the tensors do not match the llama.* metadata",
                ));
            }
            let (o, n) = layout.range(id, l);
            let out = &mut dst[o..o + n];
            match id {
                ParamId::Wq | ParamId::Wk => {
                    let heads = if id == ParamId::Wq { c.n_heads } else { c.n_kv_heads };
                    let mut tmp = vec![0f32; n];
                    f.read_into(t, &mut tmp)?;
                    out.copy_from_slice(&interleaved_to_hf(&tmp, heads, c.head_dim, c.hidden));
                }
                _ => f.read_into(t, out)?,
            }
        }
        Ok(())
    }
}

/// The config of a Llama GGUF (see the module header for the keys).
fn llama_config(f: &GgufFile) -> Result<Config> {
    let arch = f
        .opt_str("general.architecture")?
        .ok_or_else(|| f.key_err("general.architecture", "missing".into(), "not a llama.cpp model file (a vocabulary-only GGUF has no weights)"))?;
    if arch != "llama" {
        return Err(GgufError::Unsupported { path: f.path.clone(), what: format!("general.architecture `{arch}`"), hint: HINT_ARCH.into() });
    }
    let k = |s: &str| format!("llama.{s}");
    if f.opt_usize(&k("expert_count"))?.unwrap_or(0) > 0 {
        return Err(GgufError::Unsupported { path: f.path.clone(), what: "a mixture of experts (llama.expert_count > 0)".into(), hint: HINT_ARCH.into() });
    }
    if let Some(s) = f.opt_str(&k("rope.scaling.type"))? {
        if s != "none" {
            return Err(GgufError::Unsupported {
                path: f.path.clone(),
                what: format!("llama.rope.scaling.type `{s}`"),
                hint: "only the default RoPE is implemented".into(),
            });
        }
    }
    let hidden = f.req_usize(&k("embedding_length"))?;
    let n_heads = f.req_usize(&k("attention.head_count"))?;
    let n_kv_heads = f.opt_usize(&k("attention.head_count_kv"))?.unwrap_or(n_heads);
    let head_dim = f.opt_usize(&k("attention.key_length"))?.unwrap_or(hidden.checked_div(n_heads).unwrap_or(0));
    if let Some(v) = f.opt_usize(&k("attention.value_length"))? {
        if v != head_dim {
            return Err(GgufError::Unsupported {
                path: f.path.clone(),
                what: format!("llama.attention.value_length {v} != key_length {head_dim}"),
                hint: HINT_ARCH.into(),
            });
        }
    }
    if let Some(r) = f.opt_usize(&k("rope.dimension_count"))? {
        if r != head_dim {
            return Err(GgufError::Unsupported {
                path: f.path.clone(),
                what: format!("partial RoPE (llama.rope.dimension_count {r}, head dim {head_dim})"),
                hint: HINT_ARCH.into(),
            });
        }
    }
    let embd = f.tensor("token_embd.weight").ok_or_else(|| f.tensor_err("token_embd.weight", "missing".into(), "not a complete llama.cpp model"))?;
    let vocab = match f.opt_usize(&k("vocab_size"))? {
        Some(v) => v,
        None => embd.shape()[0],
    };
    for t in &f.tensors {
        let known = t.name == "token_embd.weight" || t.name == "output.weight" || t.name == "output_norm.weight" || {
            let parts: Vec<&str> = t.name.split('.').collect();
            parts.len() == 4
                && parts[0] == "blk"
                && parts[3] == "weight"
                && ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"].contains(&parts[2])
        };
        if !known {
            let what = if t.name == "rope_freqs.weight" {
                "RoPE frequency factors (tensor `rope_freqs.weight`, Llama 3.1 rope scaling)".to_string()
            } else {
                format!("tensor `{}`", t.name)
            };
            return Err(GgufError::Unsupported { path: f.path.clone(), what, hint: HINT_ARCH.into() });
        }
    }
    let tok_id = |key: &str, d: u32| -> Result<u32> { Ok(f.opt_usize(key)?.map_or(d, |x| x as u32)) };
    let cfg = Config {
        vocab_size: vocab,
        hidden,
        intermediate: f.req_usize(&k("feed_forward_length"))?,
        n_layers: f.req_usize(&k("block_count"))?,
        n_heads,
        n_kv_heads,
        head_dim,
        max_seq_len: f.opt_usize(&k("context_length"))?.unwrap_or(4096),
        rms_eps: f.opt_f64(&k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: f.opt_f64(&k("rope.freq_base"))?.unwrap_or(10000.0),
        tie_embeddings: f.tensor("output.weight").is_none(),
        bos_id: tok_id("tokenizer.ggml.bos_token_id", 1)?,
        eos_id: tok_id("tokenizer.ggml.eos_token_id", 2)?,
        pad_id: f.opt_usize("tokenizer.ggml.padding_token_id")?.map(|x| x as u32),
        head: crate::config::Head::Lm,
    };
    cfg.validate().map_err(|e| GgufError::Unsupported {
        path: f.path.clone(),
        what: format!("the config of the llama.* keys ({e})"),
        hint: HINT_ARCH.into(),
    })?;
    if f.tensors
        .iter()
        .filter(|t| t.name.starts_with("blk."))
        .any(|t| t.name.split('.').nth(1).and_then(|l| l.parse::<usize>().ok()).is_none_or(|l| l >= cfg.n_layers))
    {
        return Err(f.key_err(
            &k("block_count"),
            format!("{} blocks, but the file has tensors of other blocks", cfg.n_layers),
            "the file is inconsistent; re-convert it",
        ));
    }
    Ok(cfg)
}

/// Reads a Llama GGUF: its config and the parameter arena in f32, each
/// tensor dequantized straight from the memory map into the arena.
pub fn load_llama(path: &Path) -> Result<(Config, Vec<f32>)> {
    let g = LlamaGguf::open(path)?;
    let layout = ParamLayout::new(&g.cfg);
    let mut host = vec![0f32; layout.total];
    g.load_into(&layout, &mut host)?;
    Ok((g.cfg, host))
}

/// Whether `path` is a GGUF file (a file starting with the magic "GGUF").
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 4];
    path.is_file() && std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == MAGIC
}

/// [`load_llama`] if `path` is a GGUF file, None otherwise (a model
/// directory): the one dispatch of `Model::load_path`.
pub fn load_if_gguf(path: &Path) -> Result<Option<(Config, Vec<f32>)>> {
    if is_gguf(path) {
        return load_llama(path).map(Some);
    }
    Ok(None)
}

mod write;
pub use write::{dir_tokenizer, gguf_to_hf_dir, hf_dir_to_gguf, write_llama, WriteDtype, Written};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_descriptions_read_well() {
        assert_eq!(GgufValue::Str("x".into()).describe(), "a string");
        assert_eq!(GgufValue::U32(1).describe(), "a uint32");
        assert_eq!(GgufValue::Array(5, vec![]).describe(), "an array of int32");
    }
}

//! llama2.c checkpoints (`.bin`, float32) to and from our model: a
//! [`Config`] plus [`HostWeights`] under Hugging Face tensor names, in HF's
//! rotate-half q/k layout.
//!
//! Why one file of ~880 lines: reader and writer of three layouts share the
//! header and tensor-order tables, and each layout is read and written side
//! by side so that a change to one is seen beside the other.
//!
//! The formats are described byte by byte in `docs/llama2c-formats.md`
//! (sources: karpathy/llama2.c `export.py` `legacy_export` /
//! `version1_export`, its `run.c`, and the early `run.c` packaged as
//! llamac2py 0.1.4). In short, three layouts ([`Layout`]):
//!
//! - **legacy** (export.py "version 0", read by karpathy's run.c): a 28-byte
//!   header of 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads,
//!   n_kv_heads, vocab_size, seq_len; a negative vocab_size means the file
//!   ends with its own classifier), then embedding, attention norms, wq, wk,
//!   wv, wo, ffn norms, w1, w2, w3, final norm, the RoPE tables
//!   `freq_cis_real`/`freq_cis_imag` `(seq_len, hd/2)` (which current run.c
//!   skips: it uses θ = 10000), and the classifier if unshared.
//! - **v1** (export.py version 1): a 256-byte header (uint32 magic
//!   0x616b3432 "ak42", int32 version 1, the 7 int32 with vocab_size always
//!   positive, a shared-classifier byte, zero padding), then the norms
//!   first, embedding, wq..w3, classifier if unshared; no tables, θ = 10000.
//! - **early** (the run.c of llamac2py 0.1.4): the legacy header and order,
//!   but **no GQA**: wk and wv are `dim x dim` per layer and n_kv_heads is
//!   ignored; and RoPE is **taken from the stored tables**, so the file can
//!   carry any θ.
//!
//! How the legacy and early layouts differ, and how [`read_bin`] tells them
//! apart: both start with the same 28-byte header and hold the tables. With
//! GQA (header n_kv_heads < n_heads) the legacy file's wk/wv are
//! `n_kv_heads * hd` rows and the early file's are `dim` rows, so the file
//! size tells which one it is. Without GQA the two are the same bytes; they
//! then differ only in what a reader does with the tables: the early run.c
//! uses them, karpathy's current run.c uses θ = 10000. So when the tables
//! encode θ = 10000 (or cannot tell, seq_len < 2 or hd < 4) the file is
//! read as legacy (same model either way); when they encode another θ the
//! reader refuses to guess and asks for an explicit layout.
//!
//! Conversions: q_proj/k_proj rows are permuted within each head between
//! llama2.c's interleaved pairs `(2i, 2i+1)` and HF's halves `(i, i+hd/2)`
//! ([`interleaved_to_hf`], [`hf_to_interleaved`]; transformers'
//! `convert_llama_weights_to_hf.py` `permute`), with n_heads heads for q and
//! n_kv_heads for k. Constants the files do not carry are the ones run.c
//! hard-codes: rms_norm_eps 1e-5, BOS 1, EOS 2; `max_position_embeddings` is
//! seq_len and `tie_word_embeddings` is the shared-classifier flag. θ is
//! recovered from the tables where they exist ([`theta_from_tables`]).
//! The RoPE tables we write follow one exact rule ([`rope_tables`]) that
//! `tools/scripts/llama2c_ref.py` implements too, so both writers produce
//! the same bytes.
//!
//! Every file is validated before use: magic and version, positive header
//! fields that divide as the layout needs, and the exact file size the
//! header implies (run.c walks its mmap without such a check). Writing
//! refuses what a layout cannot hold (GQA in the early layout, head_dim *
//! n_heads != hidden, fields beyond int32, int overflow in the early run.c)
//! and, unless forced, what run.c would compute differently (θ != 10000 in
//! legacy/v1, rms_norm_eps != 1e-5, BOS != 1). Files are written atomically
//! (temporary file in the same directory, fsync, rename).
//!
//! Public items: [`Layout`], [`Header`], [`Imported`], [`Llama2cError`],
//! [`read_bin`], [`write_bin`], [`check_writable`], [`expected_file_size`],
//! [`rope_tables`], [`theta_from_tables`], [`interleaved_to_hf`],
//! [`hf_to_interleaved`], [`RUNC_THETA`], [`RUNC_RMS_EPS`], [`V1_MAGIC`].

use crate::config::Config;
use crate::params::{ParamId, ParamLayout};
use crate::weights::{HostTensor, HostWeights};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// RoPE base that karpathy's run.c hard-codes (`powf(10000.0f, ...)`) and
/// llama2.c's model.py always writes.
pub const RUNC_THETA: f64 = 10000.0;
/// RMSNorm epsilon run.c hard-codes (`ss += 1e-5f`).
pub const RUNC_RMS_EPS: f64 = 1e-5;
/// The BOS id run.c starts every sequence with (`int token = 1`).
pub const RUNC_BOS: u32 = 1;
/// EOS of the Llama SentencePiece vocabulary (run.c never stops on it).
pub const RUNC_EOS: u32 = 2;
/// `"ak42"` as a little-endian uint32 (on disk: the bytes `32 34 6b 61`).
pub const V1_MAGIC: u32 = 0x616b_3432;
/// Bytes of the legacy / early header (7 x int32).
pub const LEGACY_HEADER_BYTES: usize = 28;
/// Bytes of the version-1 header.
pub const V1_HEADER_BYTES: usize = 256;

/// Tolerance of the RoPE-table check, per entry, as `ATOL + RTOL_ANGLE *
/// |angle|`. Writers compute the same float32 angle `t * inv_freq` but may
/// round cos/sin differently (torch's SLEEF float32 cos/sin: <= 1 ulp;
/// Meta's complex `polar`: a few ulp): 2^-21 is 4 ulp at 1.0. A writer
/// that forms the angle in another order (or in float64) differs by about
/// one float32 ulp of the angle, 2^-23 |angle|; we allow 2^-21 |angle|.
/// A θ off by 1e-4 relative already moves entries by ~|angle| 1e-4.
const TABLE_ATOL: f64 = 1.0 / (1u64 << 21) as f64;
const TABLE_RTOL_ANGLE: f64 = 1.0 / (1u64 << 21) as f64;

/// One of llama2.c's float32 layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// export.py version 0: 28-byte header, tables stored (ignored by run.c)
    Legacy,
    /// export.py version 1: 256-byte "ak42" header, norms first, no tables
    V1,
    /// early run.c (llamac2py 0.1.4): legacy header, no GQA, tables used
    Early,
}

impl Layout {
    pub const ALL: [Layout; 3] = [Layout::Legacy, Layout::V1, Layout::Early];

    pub fn name(self) -> &'static str {
        match self {
            Layout::Legacy => "legacy",
            Layout::V1 => "v1",
            Layout::Early => "early",
        }
    }

    fn header_bytes(self) -> usize {
        match self {
            Layout::V1 => V1_HEADER_BYTES,
            Layout::Legacy | Layout::Early => LEGACY_HEADER_BYTES,
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "legacy" => Ok(Layout::Legacy),
            "v1" => Ok(Layout::V1),
            "early" => Ok(Layout::Early),
            _ => Err(format!("unknown llama2.c layout `{s}` (legacy, v1, early)")),
        }
    }
}

/// The header fields of a `.bin` (llama2.c `Config`), vocab_size as a
/// count with the shared-classifier flag separate (on disk a legacy file
/// stores `-vocab_size` when unshared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,        // hidden size
    pub hidden_dim: usize, // FFN size (w1/w3 rows)
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize, // as stored (the early layout ignores it)
    pub vocab_size: usize,
    pub seq_len: usize, // max positions, rows of the RoPE tables
    pub shared: bool,   // the embedding is the classifier
}

/// A `.bin` read into our terms.
#[derive(Clone, Debug)]
pub struct Imported {
    pub cfg: Config,
    /// HF-named tensors, q_proj/k_proj in HF's rotate-half layout
    pub weights: HostWeights,
    /// the layout the file was read as
    pub layout: Layout,
    pub header: Header,
    /// θ the RoPE tables encode (legacy/early; None if they cannot tell or
    /// the layout has none). `cfg.rope_theta` is this for the early
    /// layout and [`RUNC_THETA`] for legacy and v1, as their readers use.
    pub table_theta: Option<f64>,
}

/// Errors of reading and writing llama2.c files. Each names the file; the
/// ones a user can fix end with a hint.
#[derive(Debug, thiserror::Error)]
pub enum Llama2cError {
    /// The file is not a valid llama2.c checkpoint (or not of the layout asked for).
    #[error("{path}: {msg}; HINT: {hint}")]
    Format { path: PathBuf, msg: String, hint: String },
    /// The model cannot be written in the layout asked for.
    #[error("{path}: the {layout} layout cannot hold this model: {msg}; HINT: {hint}")]
    Unsupported { path: PathBuf, layout: Layout, msg: String, hint: String },
    /// A tensor given to the writer is missing or has the wrong shape.
    #[error("{path}: tensor `{name}`: {msg}; HINT: the weights do not match the config")]
    Tensor { path: PathBuf, name: String, msg: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub type Result<T> = std::result::Result<T, Llama2cError>;

fn format_err<T>(path: &Path, msg: impl Into<String>, hint: impl Into<String>) -> Result<T> {
    Err(Llama2cError::Format { path: path.to_path_buf(), msg: msg.into(), hint: hint.into() })
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Llama2cError + '_ {
    move |source| Llama2cError::Io { path: path.to_path_buf(), source }
}

const HINT_CORRUPT: &str = "the file is truncated or corrupt, or not a llama2.c float32 checkpoint; re-export it";

// ---------------------------------------------------------------------------
// tensor order of each layout

/// The tensors of a file, in file order. Per-layer tensors are stacked over
/// layers, layer 0 first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Embed,    // (V, dim)              model.embed_tokens.weight
    AttNorm,  // (L, dim)              input_layernorm
    Wq,       // (L, H*hd, dim)        q_proj, interleaved
    Wk,       // (L, KV*hd, dim)       k_proj, interleaved (early: (L, dim, dim))
    Wv,       // (L, KV*hd, dim)       v_proj (early: (L, dim, dim))
    Wo,       // (L, dim, H*hd)        o_proj
    FfnNorm,  // (L, dim)              post_attention_layernorm
    W1,       // (L, hidden_dim, dim)  gate_proj
    W2,       // (L, dim, hidden_dim)  down_proj
    W3,       // (L, hidden_dim, dim)  up_proj
    Norm,     // (dim,)                model.norm.weight
    FreqReal, // (seq_len, hd/2)       cos table
    FreqImag, // (seq_len, hd/2)       sin table
    Wcls,     // (V, dim)              lm_head.weight, only if unshared
}

fn parts(layout: Layout, shared: bool) -> Vec<Part> {
    use Part::*;
    let mut p = match layout {
        Layout::Legacy | Layout::Early => vec![Embed, AttNorm, Wq, Wk, Wv, Wo, FfnNorm, W1, W2, W3, Norm, FreqReal, FreqImag],
        Layout::V1 => vec![AttNorm, FfnNorm, Norm, Embed, Wq, Wk, Wv, Wo, W1, W2, W3],
    };
    if !shared {
        p.push(Wcls);
    }
    p
}

impl Part {
    /// (layers, rows, cols) of the part: `layers` is 1 for unstacked tensors.
    /// u128 so that a hostile header cannot overflow the size computation.
    fn dims(self, h: &Header, layout: Layout) -> (u128, u128, u128) {
        let (l, d, f, v, s) = (h.n_layers as u128, h.dim as u128, h.hidden_dim as u128, h.vocab_size as u128, h.seq_len as u128);
        let hd = d / (h.n_heads.max(1) as u128);
        let kv_rows = match layout {
            Layout::Early => d,
            _ => h.n_kv_heads as u128 * hd,
        };
        let q_rows = h.n_heads as u128 * hd;
        match self {
            Part::Embed | Part::Wcls => (1, v, d),
            Part::AttNorm | Part::FfnNorm => (l, 1, d),
            Part::Wq => (l, q_rows, d),
            Part::Wk | Part::Wv => (l, kv_rows, d),
            Part::Wo => (l, d, q_rows),
            Part::W1 | Part::W3 => (l, f, d),
            Part::W2 => (l, d, f),
            Part::Norm => (1, 1, d),
            Part::FreqReal | Part::FreqImag => (1, s, hd / 2),
        }
    }

    fn elems(self, h: &Header, layout: Layout) -> u128 {
        let (a, b, c) = self.dims(h, layout);
        a * b * c
    }
}

/// The exact size in bytes of a `layout` file with header `h`.
pub fn expected_file_size(h: &Header, layout: Layout) -> u128 {
    let elems: u128 = parts(layout, h.shared).iter().map(|p| p.elems(h, layout)).sum();
    layout.header_bytes() as u128 + 4 * elems
}

// ---------------------------------------------------------------------------
// q/k permutation

/// llama2.c / Meta q or k rows `(n*hd, cols)` to HF's rotate-half layout:
/// within each head, HF row `i` is interleaved row `2i` and HF row
/// `hd/2 + i` is interleaved row `2i + 1` (transformers' `permute`).
pub fn interleaved_to_hf(w: &[f32], n_heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for (half, src) in [(0, 2 * i), (1, 2 * i + 1)] {
                let dst = h * hd + half * (hd / 2) + i;
                let src = h * hd + src;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Inverse of [`interleaved_to_hf`]: HF q or k rows to llama2.c's
/// interleaved pairs (llama2.c export.py `permute_reverse`).
pub fn hf_to_interleaved(w: &[f32], n_heads: usize, hd: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for (half, dst) in [(0, 2 * i), (1, 2 * i + 1)] {
                let src = h * hd + half * (hd / 2) + i;
                let dst = h * hd + dst;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// RoPE tables

/// The tables we write, `(seq_len, hd/2)` each: `cos` and `sin` of the
/// angle `t * inv_freq[j]`, where (all float32 as transformers and
/// llama2.c's model.py compute it) `x_j = (2j) / hd`, `inv_freq[j] = 1 /
/// θ^x_j` with the power rounded to float32 from its exact value, and the
/// product rounded to float32. cos and sin are evaluated in float64 and
/// rounded: correctly rounded values, reproducible by any libm (torch's own
/// float32 cos/sin differ from them by <= 1 ulp in ~1% of entries).
/// `tools/scripts/llama2c_ref.py rope_tables` implements the same rule.
pub fn rope_tables(seq_len: usize, hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let inv: Vec<f32> = (0..half)
        .map(|j| {
            let x = (2 * j) as f32 / hd as f32;
            1.0f32 / (theta.powf(x as f64) as f32)
        })
        .collect();
    let mut re = Vec::with_capacity(seq_len * half);
    let mut im = Vec::with_capacity(seq_len * half);
    for t in 0..seq_len {
        for &f in &inv {
            let ang = (t as f32 * f) as f64;
            re.push(ang.cos() as f32);
            im.push(ang.sin() as f32);
        }
    }
    (re, im)
}

/// θ encoded by RoPE tables `real, imag (seq_len, hd/2)`: estimated from the
/// last column at t = 1 (angle `θ^-(hd-2)/hd`, the least amplified by the
/// inversion), then the decimal with the fewest significant digits whose
/// tables match the file within the tolerance (so 10000 reads back as
/// exactly 10000). `Ok(None)` when the tables cannot tell (seq_len < 2 or
/// hd < 4); `Err(msg)` when they are not RoPE tables for any θ.
pub fn theta_from_tables(real: &[f32], imag: &[f32], seq_len: usize, hd: usize) -> std::result::Result<Option<f64>, String> {
    let half = hd / 2;
    if real.len() != seq_len * half || imag.len() != seq_len * half {
        return Err(format!("tables hold {} / {} values, expected {seq_len} x {half}", real.len(), imag.len()));
    }
    if real.iter().chain(imag).any(|x| !x.is_finite()) {
        return Err("the RoPE tables hold non-finite values".into());
    }
    // row 0 is angle 0 whatever θ is
    if real[..half].iter().any(|&c| c != 1.0) || imag[..half].iter().any(|&s| s != 0.0) {
        return Err("row 0 of the RoPE tables is not cos 1, sin 0".into());
    }
    if seq_len < 2 || hd < 4 {
        return Ok(None);
    }
    let j = half - 1;
    let ang = (imag[half + j] as f64).atan2(real[half + j] as f64); // = θ^(-2j/hd)
    if !(ang > 0.0 && ang < 1.0) {
        return Err(format!("angle {ang} at t=1, column {j} is not that of a RoPE base > 1"));
    }
    let est = (-ang.ln() * hd as f64 / (2 * j) as f64).exp();
    let matches = |theta: f64| {
        let (c, s) = rope_tables(seq_len, hd, theta);
        (0..seq_len * half).all(|i| {
            let t = (i / half) as f64;
            let ang = t / theta.powf((2 * (i % half)) as f64 / hd as f64);
            let tol = TABLE_ATOL + TABLE_RTOL_ANGLE * ang;
            ((c[i] - real[i]) as f64).abs() <= tol && ((s[i] - imag[i]) as f64).abs() <= tol
        })
    };
    for digits in 1..=9 {
        let snapped = round_significant(est, digits);
        if matches(snapped) {
            return Ok(Some(snapped));
        }
    }
    if matches(est) {
        return Ok(Some(est));
    }
    Err(format!("the RoPE tables are not cos/sin tables for any θ (closest θ ≈ {est:.6e})"))
}

/// `x` rounded to `digits` significant decimal digits, as the f64 nearest
/// to that decimal (through its text form, so 5e5 is exactly 500000).
fn round_significant(x: f64, digits: usize) -> f64 {
    format!("{:.*e}", digits.saturating_sub(1), x).parse().unwrap_or(x)
}

// ---------------------------------------------------------------------------
// reading

fn read_i32(b: &[u8], off: usize) -> i32 {
    i32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// The 7 int32 fields (dim .. seq_len) at `b[off..off+28]`, checked positive
/// except vocab_size (whose sign the caller interprets).
fn parse_fields(path: &Path, b: &[u8], off: usize) -> Result<[i32; 7]> {
    let names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"];
    let mut f = [0i32; 7];
    for (i, x) in f.iter_mut().enumerate() {
        *x = read_i32(b, off + 4 * i);
    }
    for (i, &x) in f.iter().enumerate() {
        // n_kv_heads (4) is checked per layout; vocab_size (5) may be negative
        if i != 4 && i != 5 && x <= 0 {
            return format_err(path, format!("header field {} = {x} must be positive", names[i]), HINT_CORRUPT);
        }
    }
    if f[5] == 0 || f[5] == i32::MIN {
        return format_err(path, format!("header field vocab_size = {}", f[5]), HINT_CORRUPT);
    }
    Ok(f)
}

/// Reads a llama2.c `.bin`. `layout`: `None` detects it (see the module
/// header), `Some(l)` insists on `l` (needed for a non-GQA legacy/early
/// file whose tables encode θ != 10000).
pub fn read_bin(path: &Path, layout: Option<Layout>) -> Result<Imported> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    let size = file.metadata().map_err(io_err(path))?.len();
    if size < LEGACY_HEADER_BYTES as u64 {
        return format_err(path, format!("{size} bytes, shorter than the 28-byte llama2.c header"), HINT_CORRUPT);
    }
    let mut head = vec![0u8; (size as usize).min(V1_HEADER_BYTES)];
    (&file).read_exact(&mut head).map_err(io_err(path))?;
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);

    // header and the candidate layouts
    let (header, mut lay) = if magic == V1_MAGIC {
        if let Some(l @ (Layout::Legacy | Layout::Early)) = layout {
            return format_err(
                path,
                format!("the file starts with the \"ak42\" magic of export.py version >= 1, not a {l} header"),
                "drop --layout, or pass --layout v1",
            );
        }
        if size < V1_HEADER_BYTES as u64 {
            return format_err(path, format!("{size} bytes, shorter than the 256-byte version-1 header"), HINT_CORRUPT);
        }
        let version = read_i32(&head, 4);
        match version {
            1 => {}
            2 => {
                return format_err(
                    path,
                    "llama2.c version 2 file (Q8_0 quantized weights); only float32 layouts are read",
                    "re-export with llama2.c export.py --version 1 (or 0)",
                )
            }
            v => {
                return format_err(
                    path,
                    format!("unknown llama2.c file version {v} after the \"ak42\" magic"),
                    "only version 1 (float32) is read; re-export with export.py --version 1",
                )
            }
        }
        let f = parse_fields(path, &head, 8)?;
        if f[5] < 0 {
            return format_err(path, format!("vocab_size {} is negative in a version-1 header (the shared flag is a separate byte)", f[5]), HINT_CORRUPT);
        }
        let shared = match head[36] {
            0 => false,
            1 => true,
            x => return format_err(path, format!("shared-classifier byte at offset 36 is {x}, not 0 or 1"), HINT_CORRUPT),
        };
        if let Some(i) = head[37..V1_HEADER_BYTES].iter().position(|&x| x != 0) {
            return format_err(path, format!("nonzero byte in the version-1 header padding at offset {}", 37 + i), HINT_CORRUPT);
        }
        let h = header_from(f, shared);
        (h, Layout::V1)
    } else {
        if layout == Some(Layout::V1) {
            return format_err(
                path,
                format!("no \"ak42\" magic (first word {magic:#010x}): not a version-1 file"),
                "drop --layout to detect the layout, or pass --layout legacy or early",
            );
        }
        let f = parse_fields(path, &head, 0)?;
        let h = header_from(f, f[5] > 0);
        (h, layout.unwrap_or(Layout::Legacy))
    };

    // shapes the layouts need
    if header.dim % header.n_heads != 0 {
        return format_err(path, format!("dim {} is not a multiple of n_heads {}", header.dim, header.n_heads), HINT_CORRUPT);
    }
    let hd = header.dim / header.n_heads;
    if hd % 2 != 0 {
        return format_err(path, format!("head size {hd} = dim {} / n_heads {} is odd (RoPE needs pairs)", header.dim, header.n_heads), HINT_CORRUPT);
    }
    let kv_ok = header.n_kv_heads > 0 && header.n_heads % header.n_kv_heads == 0;
    let early_size = expected_file_size(&header, Layout::Early);
    let auto_legacy = layout.is_none() && lay == Layout::Legacy;
    if auto_legacy {
        // legacy or early? (module header)
        let legacy_size = kv_ok.then(|| expected_file_size(&header, Layout::Legacy));
        if legacy_size != Some(size as u128) && early_size == size as u128 {
            lay = Layout::Early;
        }
    }
    if lay != Layout::Early && !kv_ok {
        return format_err(
            path,
            format!("n_kv_heads {} does not divide n_heads {}", header.n_kv_heads, header.n_heads),
            if lay == Layout::V1 { HINT_CORRUPT } else { "if the file is for the early run.c (no GQA), pass --layout early" },
        );
    }
    let want = expected_file_size(&header, lay);
    if want != size as u128 {
        let mut msg = format!("{size} bytes, but this header ({}) in the {lay} layout means {want}", describe(&header));
        if auto_legacy {
            msg = format!("{size} bytes, but this header ({}) implies {want} (legacy) or {early_size} (early, no GQA)", describe(&header));
        }
        return format_err(path, msg, "the file is truncated or corrupt, or of another layout (--layout legacy|v1|early)");
    }

    // the tensors
    // SAFETY: read-only map of a file we do not modify; its length was
    // checked against the header above, so every slice below is in bounds.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err(path))?;
    let mut off = lay.header_bytes();
    let mut raw: Vec<(Part, Vec<f32>)> = Vec::new();
    for p in parts(lay, header.shared) {
        let n = p.elems(&header, lay) as usize; // fits: the file holds 4n bytes
        let bytes = &map[off..off + 4 * n];
        raw.push((p, bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()));
        off += 4 * n;
    }
    let take = |p: Part| raw.iter().find(|(q, _)| *q == p).map(|(_, d)| d.as_slice()).unwrap_or(&[]);

    // θ
    let table_theta = if lay == Layout::V1 {
        None
    } else {
        theta_from_tables(take(Part::FreqReal), take(Part::FreqImag), header.seq_len, hd)
            .or_else(|m| format_err(path, m, "the freq_cis tables after the final norm are damaged; re-export the file"))?
    };
    let n_kv = if lay == Layout::Early { header.n_heads } else { header.n_kv_heads };
    if auto_legacy && lay == Layout::Legacy && n_kv == header.n_heads {
        if let Some(t) = table_theta.filter(|&t| t != RUNC_THETA) {
            return format_err(
                path,
                format!("without GQA the legacy and early layouts are the same bytes, and this file's RoPE tables encode θ = {t}, not {RUNC_THETA}: the early run.c would use θ = {t}, karpathy's current run.c θ = {RUNC_THETA}"),
                format!("pass --layout early to read θ = {t} from the tables, or --layout legacy for θ = {RUNC_THETA}"),
            );
        }
    }
    let theta = match lay {
        Layout::Early => table_theta.unwrap_or(RUNC_THETA),
        Layout::Legacy | Layout::V1 => RUNC_THETA,
    };

    let cfg = Config {
        vocab_size: header.vocab_size,
        hidden: header.dim,
        intermediate: header.hidden_dim,
        n_layers: header.n_layers,
        n_heads: header.n_heads,
        n_kv_heads: n_kv,
        head_dim: hd,
        max_seq_len: header.seq_len,
        rms_eps: RUNC_RMS_EPS,
        rope_theta: theta,
        tie_embeddings: header.shared,
        bos_id: RUNC_BOS,
        eos_id: RUNC_EOS,
        pad_id: None,
        head: crate::config::Head::Lm,
    };
    if let Err(e) = cfg.validate() {
        return format_err(path, format!("the header describes a model we cannot run: {e}"), "a vocabulary needs at least 3 entries (BOS 1, EOS 2)");
    }

    // to HF names, q/k permuted
    let (dim, l_n) = (header.dim, header.n_layers);
    let mut w = HostWeights::new();
    for (p, data) in raw {
        let (layers, rows, cols) = {
            let (a, b, c) = p.dims(&header, lay);
            (a as usize, b as usize, c as usize)
        };
        let per = rows * cols;
        let id = match p {
            Part::Embed => ParamId::Embed,
            Part::Wcls => ParamId::LmHead,
            Part::Norm => ParamId::Lnf,
            Part::AttNorm => ParamId::Ln1,
            Part::FfnNorm => ParamId::Ln2,
            Part::Wq => ParamId::Wq,
            Part::Wk => ParamId::Wk,
            Part::Wv => ParamId::Wv,
            Part::Wo => ParamId::Wo,
            Part::W1 => ParamId::Wgate,
            Part::W2 => ParamId::Wdown,
            Part::W3 => ParamId::Wup,
            Part::FreqReal | Part::FreqImag => continue,
        };
        debug_assert_eq!(layers, if id.per_layer() { l_n } else { 1 });
        for l in 0..layers {
            let slice = &data[l * per..(l + 1) * per];
            let t = match p {
                Part::Wq => interleaved_to_hf(slice, header.n_heads, hd, dim),
                Part::Wk => interleaved_to_hf(slice, n_kv, hd, dim),
                _ => slice.to_vec(),
            };
            w.insert(id.hf_name(l), HostTensor::new(id.hf_shape(&cfg), t));
        }
    }
    Ok(Imported { cfg, weights: w, layout: lay, header, table_theta })
}

fn header_from(f: [i32; 7], shared: bool) -> Header {
    Header {
        dim: f[0] as usize,
        hidden_dim: f[1] as usize,
        n_layers: f[2] as usize,
        n_heads: f[3] as usize,
        n_kv_heads: f[4].max(0) as usize,
        vocab_size: f[5].unsigned_abs() as usize,
        seq_len: f[6] as usize,
        shared,
    }
}

fn describe(h: &Header) -> String {
    format!(
        "dim {}, hidden_dim {}, layers {}, heads {}, kv heads {}, vocab {}{}, seq_len {}",
        h.dim,
        h.hidden_dim,
        h.n_layers,
        h.n_heads,
        h.n_kv_heads,
        h.vocab_size,
        if h.shared { " shared" } else { " + own classifier" },
        h.seq_len
    )
}

// ---------------------------------------------------------------------------
// writing

/// Checks that `cfg` can be written as `layout`. Hard limits always fail;
/// the constants run.c hard-codes (θ for legacy/v1, eps, BOS) fail unless
/// `force`. `path` only names the target in the error.
pub fn check_writable(path: &Path, cfg: &Config, layout: Layout, force: bool) -> Result<Header> {
    let unsupported = |msg: String, hint: &str| Err(Llama2cError::Unsupported { path: path.to_path_buf(), layout, msg, hint: hint.into() });
    if let Err(e) = cfg.validate() {
        return unsupported(format!("invalid config: {e}"), "fix config.json");
    }
    if cfg.head != crate::config::Head::Lm {
        return unsupported("a reward/value model (score head) has no llama2.c form".into(), "llama2.c files hold causal language models only");
    }
    if cfg.head_dim * cfg.n_heads != cfg.hidden {
        return unsupported(
            format!("head_dim {} * n_heads {} != hidden {} (llama2.c derives head_size = dim / n_heads)", cfg.head_dim, cfg.n_heads, cfg.hidden),
            "such a model has no llama2.c form; keep it in HF format",
        );
    }
    if layout == Layout::Early && cfg.n_kv_heads != cfg.n_heads {
        return unsupported(
            format!("GQA (n_kv_heads {} != n_heads {}): the early run.c has dim x dim k/v projections", cfg.n_kv_heads, cfg.n_heads),
            "use --layout legacy or v1",
        );
    }
    let i32_max = i32::MAX as usize;
    for (name, x) in [
        ("hidden", cfg.hidden),
        ("intermediate", cfg.intermediate),
        ("n_layers", cfg.n_layers),
        ("n_heads", cfg.n_heads),
        ("n_kv_heads", cfg.n_kv_heads),
        ("vocab_size", cfg.vocab_size),
        ("max_position_embeddings", cfg.max_seq_len),
    ] {
        if x > i32_max {
            return unsupported(format!("{name} {x} does not fit the header's int32"), "such a model has no llama2.c form");
        }
    }
    if cfg.max_seq_len == 0 {
        return unsupported("max_position_embeddings is 0 (the header's seq_len)".into(), "set max_position_embeddings in config.json");
    }
    if layout == Layout::Early {
        // the early run.c computes these offsets and sizes in C int
        let (l, d, f, v, s, h) =
            (cfg.n_layers as u128, cfg.hidden as u128, cfg.intermediate as u128, cfg.vocab_size as u128, cfg.max_seq_len as u128, cfg.n_heads as u128);
        for (what, x) in [
            ("vocab_size * dim", v * d),
            ("n_layers * dim * dim", l * d * d),
            ("n_layers * dim * hidden_dim", l * d * f),
            ("n_layers * seq_len * dim (its KV cache)", l * s * d),
            ("n_heads * seq_len", h * s),
        ] {
            if x > i32_max as u128 {
                return unsupported(format!("{what} = {x} overflows the C int the early run.c computes it in"), "use --layout legacy or v1");
            }
        }
    }
    let mut problems = Vec::new();
    if layout != Layout::Early && cfg.rope_theta != RUNC_THETA {
        let why = if layout == Layout::V1 { "v1 stores no RoPE tables" } else { "karpathy's run.c ignores the stored tables" };
        problems.push(format!("rope_theta {} ({why} and uses {RUNC_THETA})", cfg.rope_theta));
    }
    if cfg.rms_eps != RUNC_RMS_EPS {
        problems.push(format!("rms_norm_eps {} (run.c hard-codes {RUNC_RMS_EPS})", cfg.rms_eps));
    }
    if cfg.bos_id != RUNC_BOS {
        problems.push(format!("bos_token_id {} (run.c starts every sequence with token {RUNC_BOS})", cfg.bos_id));
    }
    if !problems.is_empty() && !force {
        let hint = if layout != Layout::Early && cfg.rope_theta != RUNC_THETA && cfg.n_kv_heads == cfg.n_heads {
            "--layout early carries θ in its tables; or pass --force to write it anyway (run.c will compute with its constants)"
        } else {
            "pass --force to write it anyway (run.c will compute with its constants)"
        };
        return unsupported(problems.join("; "), hint);
    }
    Ok(Header {
        dim: cfg.hidden,
        hidden_dim: cfg.intermediate,
        n_layers: cfg.n_layers,
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        vocab_size: cfg.vocab_size,
        seq_len: cfg.max_seq_len,
        shared: cfg.tie_embeddings,
    })
}

fn header_bytes(h: &Header, layout: Layout) -> Vec<u8> {
    let v = h.vocab_size as i32;
    let fields = [h.dim as i32, h.hidden_dim as i32, h.n_layers as i32, h.n_heads as i32, h.n_kv_heads as i32];
    let mut b = Vec::with_capacity(layout.header_bytes());
    match layout {
        Layout::Legacy | Layout::Early => {
            for x in fields {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b.extend_from_slice(&(if h.shared { v } else { -v }).to_le_bytes());
            b.extend_from_slice(&(h.seq_len as i32).to_le_bytes());
        }
        Layout::V1 => {
            b.extend_from_slice(&V1_MAGIC.to_le_bytes());
            b.extend_from_slice(&1i32.to_le_bytes());
            for x in fields {
                b.extend_from_slice(&x.to_le_bytes());
            }
            b.extend_from_slice(&v.to_le_bytes());
            b.extend_from_slice(&(h.seq_len as i32).to_le_bytes());
            b.push(h.shared as u8);
            b.resize(V1_HEADER_BYTES, 0);
        }
    }
    b
}

/// Writes `cfg` + `w` (HF names; q/k in HF's layout) as a `layout` file,
/// atomically. Returns the number of bytes written. See [`check_writable`]
/// for what is refused; `force` writes θ/eps/BOS that run.c will not use.
/// An untied model is written with its own classifier even if `lm_head`
/// happens to equal the embedding (llama2.c's export.py would share it).
pub fn write_bin(path: &Path, cfg: &Config, w: &HostWeights, layout: Layout, force: bool) -> Result<u64> {
    let header = check_writable(path, cfg, layout, force)?;
    // every tensor present with its shape, before anything is written
    let lay = ParamLayout::new(cfg);
    for (id, _, name) in lay.hf_tensors(cfg) {
        let want = id.hf_shape(cfg);
        match w.get(&name) {
            None => return Err(Llama2cError::Tensor { path: path.to_path_buf(), name, msg: "missing".into() }),
            Some(t) if t.shape != want || t.data.len() != want.iter().product::<usize>() => {
                return Err(Llama2cError::Tensor {
                    path: path.to_path_buf(),
                    name,
                    msg: format!("shape {:?} ({} values), config implies {want:?}", t.shape, t.data.len()),
                })
            }
            Some(_) => {}
        }
    }
    let hd = cfg.head_dim;
    let total = expected_file_size(&header, layout);
    let tables = if layout == Layout::V1 { None } else { Some(rope_tables(cfg.max_seq_len, hd, cfg.rope_theta)) };
    write_file_atomic(path, |out| {
        out.write_all(&header_bytes(&header, layout))?;
        let put = |out: &mut dyn Write, x: &[f32]| -> std::io::Result<()> {
            // little-endian f32 whatever the host's byte order
            let mut buf = Vec::with_capacity(4 * x.len().min(1 << 16));
            for ch in x.chunks(1 << 16) {
                buf.clear();
                for v in ch {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                out.write_all(&buf)?;
            }
            Ok(())
        };
        let layers = |out: &mut dyn Write, id: ParamId, f: &dyn Fn(&[f32]) -> Vec<f32>| -> std::io::Result<()> {
            for l in 0..cfg.n_layers {
                put(out, &f(&w[&id.hf_name(l)].data))?;
            }
            Ok(())
        };
        let same = |x: &[f32]| x.to_vec();
        for p in parts(layout, header.shared) {
            match p {
                Part::Embed => put(out, &w[&ParamId::Embed.hf_name(0)].data)?,
                Part::Wcls => put(out, &w[&ParamId::LmHead.hf_name(0)].data)?,
                Part::Norm => put(out, &w[&ParamId::Lnf.hf_name(0)].data)?,
                Part::AttNorm => layers(out, ParamId::Ln1, &same)?,
                Part::FfnNorm => layers(out, ParamId::Ln2, &same)?,
                Part::Wq => layers(out, ParamId::Wq, &|x| hf_to_interleaved(x, cfg.n_heads, hd, cfg.hidden))?,
                Part::Wk => layers(out, ParamId::Wk, &|x| hf_to_interleaved(x, cfg.n_kv_heads, hd, cfg.hidden))?,
                Part::Wv => layers(out, ParamId::Wv, &same)?,
                Part::Wo => layers(out, ParamId::Wo, &same)?,
                Part::W1 => layers(out, ParamId::Wgate, &same)?,
                Part::W2 => layers(out, ParamId::Wdown, &same)?,
                Part::W3 => layers(out, ParamId::Wup, &same)?,
                Part::FreqReal => put(out, tables.as_ref().map(|t| t.0.as_slice()).unwrap_or(&[]))?,
                Part::FreqImag => put(out, tables.as_ref().map(|t| t.1.as_slice()).unwrap_or(&[]))?,
            }
        }
        Ok(())
    })?;
    let written = std::fs::metadata(path).map_err(io_err(path))?.len();
    if written as u128 != total {
        // cannot happen unless the tensors changed under us; never leave a bad file
        let _ = std::fs::remove_file(path);
        return format_err(path, format!("wrote {written} bytes, expected {total}"), "this is a bug; please report it");
    }
    Ok(written)
}

/// Streams a file through the project's atomic writer
/// ([`crate::formats::atomic`]).
fn write_file_atomic(path: &Path, body: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let res = (|| -> std::io::Result<()> {
        let mut f = crate::formats::atomic::AtomicFile::create(path)?;
        body(&mut f)?;
        f.commit()
    })();
    res.map_err(|e| Llama2cError::Io { path: path.to_path_buf(), source: e })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_moves_rows() {
        // 2 heads of hd 8, 3 columns: row r holds r in every column
        let (n, hd, cols) = (2, 8, 3);
        let w: Vec<f32> = (0..n * hd).flat_map(|r| std::iter::repeat_n(r as f32, cols)).collect();
        let hf = interleaved_to_hf(&w, n, hd, cols);
        // HF row h*hd + i = interleaved 2i; row h*hd + 4 + i = interleaved 2i+1
        let rows: Vec<f32> = hf.chunks(cols).map(|c| c[0]).collect();
        assert_eq!(rows, vec![0., 2., 4., 6., 1., 3., 5., 7., 8., 10., 12., 14., 9., 11., 13., 15.]);
        assert_eq!(hf_to_interleaved(&hf, n, hd, cols), w);
    }

    #[test]
    fn tables_give_back_theta() {
        for (s, hd, theta) in [(64, 8, 10000.0), (256, 64, 10000.0), (128, 16, 500000.0), (300, 32, 1e6), (40, 12, 12345.0)] {
            let (c, sn) = rope_tables(s, hd, theta);
            assert_eq!(theta_from_tables(&c, &sn, s, hd), Ok(Some(theta)), "{s} {hd} {theta}");
        }
        let (c, sn) = rope_tables(1, 8, 10000.0);
        assert_eq!(theta_from_tables(&c, &sn, 1, 8), Ok(None));
        // a perturbed table is not a RoPE table
        let (mut c, sn) = rope_tables(64, 8, 10000.0);
        c[8 * 4 + 2] += 1e-3;
        assert!(theta_from_tables(&c, &sn, 64, 8).is_err());
    }
}

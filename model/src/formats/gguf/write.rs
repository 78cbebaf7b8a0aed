//! Writing GGUF (part of [`super`]): a Llama model as GGUF v3 (F32, F16,
//! BF16 or Q8_0 matrices, F32 norms, q/k permuted to llama.cpp's layout,
//! the tokenizer as `tokenizer.*` metadata), and the whole-model
//! conversions of `train-tool convert` between GGUF and HF directories.
//!
//! Public items (re-exported by [`super`]): [`write_llama`], [`WriteDtype`],
//! [`hf_dir_to_gguf`], [`gguf_to_hf_dir`], [`dir_tokenizer`], [`Written`].

use super::{load_llama, tensor_name, write_str, GgufError, GgufFile, GgufValue, Result, DEFAULT_ALIGNMENT, MAGIC};
use crate::config::Config;
use crate::formats::atomic::AtomicFile;
use crate::formats::ggml_quants::{self, GgmlType};
use crate::llama2c::hf_to_interleaved;
use crate::params::{ParamId, ParamLayout};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// writing

/// Precision of the matrices of a written GGUF (norms are always F32, as
/// llama.cpp writes them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteDtype {
    F32,
    F16,
    BF16,
    Q8_0,
}

impl WriteDtype {
    pub fn ggml(self) -> GgmlType {
        match self {
            WriteDtype::F32 => GgmlType::F32,
            WriteDtype::F16 => GgmlType::F16,
            WriteDtype::BF16 => GgmlType::BF16,
            WriteDtype::Q8_0 => GgmlType::Q8_0,
        }
    }

    /// llama.cpp's `general.file_type` (`LlamaFileType`).
    fn file_type(self) -> u32 {
        match self {
            WriteDtype::F32 => 0,
            WriteDtype::F16 => 1,
            WriteDtype::Q8_0 => 7,
            WriteDtype::BF16 => 32,
        }
    }
}

impl std::str::FromStr for WriteDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(WriteDtype::F32),
            "f16" => Ok(WriteDtype::F16),
            "bf16" => Ok(WriteDtype::BF16),
            "q8_0" => Ok(WriteDtype::Q8_0),
            _ => Err(format!("unknown GGUF dtype `{s}` (f32, f16, bf16, q8_0)")),
        }
    }
}

/// Writes a Llama model as GGUF v3, atomically: the `llama.*` metadata of
/// `cfg`, then `extra` metadata (the tokenizer's `tokenizer.*` keys, a chat
/// template), then the tensors of the arena `params` (laid out by
/// `ParamLayout::new(cfg)`), q and k permuted to llama.cpp's interleaved
/// layout, matrices in `dtype`. One tensor is converted at a time.
pub fn write_llama(path: &Path, cfg: &Config, params: &[f32], dtype: WriteDtype, name: &str, extra: &[(String, GgufValue)]) -> Result<u64> {
    let layout = ParamLayout::new(cfg);
    let terr = |n: &str, msg: String, hint: &str| GgufError::Tensor { path: path.to_path_buf(), name: n.into(), msg, hint: hint.into() };
    if params.len() != layout.total {
        return Err(terr("(arena)", format!("{} values for a layout of {}", params.len(), layout.total), "internal"));
    }
    if cfg.head != crate::config::Head::Lm {
        return Err(terr(
            "score.weight",
            "a reward/value model (score head) has no llama.cpp form".into(),
            "GGUF `llama` files hold causal language models only",
        ));
    }
    let mut kv: Vec<(String, GgufValue)> = vec![
        ("general.architecture".into(), GgufValue::Str("llama".into())),
        ("general.name".into(), GgufValue::Str(name.into())),
        ("llama.block_count".into(), GgufValue::U32(cfg.n_layers as u32)),
        ("llama.context_length".into(), GgufValue::U32(cfg.max_seq_len as u32)),
        ("llama.embedding_length".into(), GgufValue::U32(cfg.hidden as u32)),
        ("llama.feed_forward_length".into(), GgufValue::U32(cfg.intermediate as u32)),
        ("llama.attention.head_count".into(), GgufValue::U32(cfg.n_heads as u32)),
        ("llama.attention.head_count_kv".into(), GgufValue::U32(cfg.n_kv_heads as u32)),
        ("llama.rope.freq_base".into(), GgufValue::F32(cfg.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon".into(), GgufValue::F32(cfg.rms_eps as f32)),
        ("llama.attention.key_length".into(), GgufValue::U32(cfg.head_dim as u32)),
        ("llama.attention.value_length".into(), GgufValue::U32(cfg.head_dim as u32)),
        ("llama.rope.dimension_count".into(), GgufValue::U32(cfg.head_dim as u32)),
        ("llama.vocab_size".into(), GgufValue::U32(cfg.vocab_size as u32)),
        ("general.file_type".into(), GgufValue::U32(dtype.file_type())),
    ];
    if dtype == WriteDtype::Q8_0 {
        kv.push(("general.quantization_version".into(), GgufValue::U32(2)));
    }
    for (k, v) in extra {
        if kv.iter().any(|(x, _)| x == k) {
            return Err(GgufError::Key { path: path.to_path_buf(), key: k.clone(), msg: "given twice".into(), hint: "internal".into() });
        }
        kv.push((k.clone(), v.clone()));
    }
    // tensor infos: (gguf name, id, layer, type)
    let mut tensors = Vec::new();
    for (id, l, _) in layout.hf_tensors(cfg) {
        let shape = id.hf_shape(cfg);
        let ty = if shape.len() == 1 { GgmlType::F32 } else { dtype.ggml() };
        let cols = shape[shape.len() - 1];
        if !cols.is_multiple_of(ty.block_elems()) {
            return Err(terr(
                &tensor_name(id, l),
                format!("rows of {cols} values are not whole {} blocks of {}", ty.name(), ty.block_elems()),
                "write f16, bf16 or f32 instead",
            ));
        }
        tensors.push((tensor_name(id, l), id, l, ty, shape));
    }
    let mut head = Vec::new();
    head.extend(MAGIC);
    head.extend(3u32.to_le_bytes());
    head.extend((tensors.len() as u64).to_le_bytes());
    head.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in &kv {
        write_str(&mut head, k);
        v.write(&mut head, true);
    }
    let mut off = 0u64;
    let mut sizes = Vec::new();
    for (name, _, _, ty, shape) in &tensors {
        write_str(&mut head, name);
        head.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            head.extend((*d as u64).to_le_bytes());
        }
        head.extend(ty.code().to_le_bytes());
        head.extend(off.to_le_bytes());
        let n = ty.bytes_for(shape.iter().product::<usize>() as u64).unwrap_or(0);
        sizes.push(n);
        off += n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT;
    }
    head.resize((head.len() as u64).div_ceil(DEFAULT_ALIGNMENT) as usize * DEFAULT_ALIGNMENT as usize, 0);
    let io = |err| GgufError::Io { path: path.to_path_buf(), err };
    let mut out = AtomicFile::create(path).map_err(io)?;
    out.write_all(&head).map_err(io)?;
    let mut total = head.len() as u64;
    for ((name, id, l, ty, _), n) in tensors.iter().zip(sizes) {
        let (o, len) = layout.range(*id, *l);
        let src = &params[o..o + len];
        let permuted;
        let src = match id {
            ParamId::Wq => {
                permuted = hf_to_interleaved(src, cfg.n_heads, cfg.head_dim, cfg.hidden);
                &permuted[..]
            }
            ParamId::Wk => {
                permuted = hf_to_interleaved(src, cfg.n_kv_heads, cfg.head_dim, cfg.hidden);
                &permuted[..]
            }
            _ => src,
        };
        let bytes = ggml_quants::quantize(*ty, src).map_err(|m| terr(name, m, "write another dtype"))?;
        debug_assert_eq!(bytes.len() as u64, n);
        out.write_all(&bytes).map_err(io)?;
        let pad = n.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT - n;
        out.write_all(&vec![0u8; pad as usize]).map_err(io)?;
        total += n + pad;
    }
    out.commit().map_err(io)?;
    Ok(total)
}

// ---------------------------------------------------------------------------
// whole-model conversions (train-tool convert)

/// The tokenizer of an HF model directory (`tokenizer.json`, else
/// `tokenizer.model`), if it has one.
pub fn dir_tokenizer(dir: &Path) -> crate::Result<Option<crate::tokenizer::Tokenizer>> {
    for f in ["tokenizer.json", "tokenizer.model"] {
        let p = dir.join(f);
        if p.is_file() {
            return Ok(Some(crate::tokenizer::Tokenizer::load(&p)?));
        }
    }
    Ok(None)
}

/// What [`hf_dir_to_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub cfg: Config,
    pub bytes: u64,
    pub with_tokenizer: bool,
}

/// Writes the HF model directory `src` (config.json, safetensors, and its
/// tokenizer if any, with the chat template of tokenizer_config.json) as
/// the GGUF file `dst`; `general.name` is the directory's name.
pub fn hf_dir_to_gguf(src: &Path, dst: &Path, dtype: WriteDtype) -> crate::Result<Written> {
    let cfg = Config::from_hf_file(&src.join("config.json"))?;
    let ck = crate::weights::Checkpoint::open(src)?;
    let layout = ParamLayout::new(&cfg);
    let mut host = vec![0f32; layout.total];
    layout.load(&cfg, &ck, &mut host)?;
    let tok = dir_tokenizer(src)?;
    if let Some(t) = &tok {
        if t.vocab_size() != cfg.vocab_size {
            return Err(crate::ModelError::Invalid(format!(
                "the tokenizer of {} has {} tokens but the model's vocabulary is {}; HINT: the directory mixes two models",
                src.display(),
                t.vocab_size(),
                cfg.vocab_size
            )));
        }
    }
    let extra = tok.as_ref().map(|t| t.gguf_metadata()).unwrap_or_default();
    let name = src.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let bytes = write_llama(dst, &cfg, &host, dtype, name, &extra)?;
    Ok(Written { cfg, bytes, with_tokenizer: tok.is_some() })
}

/// Writes the GGUF model `src` as an HF directory `dst` (config.json,
/// model.safetensors in f32, and its vocabulary with `save_beside` when the
/// file has one). Returns the config and the tokenizer file written.
pub fn gguf_to_hf_dir(src: &Path, dst: &Path) -> crate::Result<(Config, Option<PathBuf>)> {
    let (cfg, host) = load_llama(src)?;
    std::fs::create_dir_all(dst).map_err(|e| crate::ModelError::io(dst, e))?;
    let json = serde_json::to_string_pretty(&cfg.to_hf_json()).map_err(|e| crate::ModelError::Invalid(e.to_string()))?;
    crate::weights::write_atomic(&dst.join("config.json"), json.as_bytes())?;
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    crate::weights::save_safetensors(&dst.join("model.safetensors"), &ParamLayout::new(&cfg).to_host(&cfg, &host), crate::weights::SaveDtype::F32, Some(meta))?;
    let f = GgufFile::open(src)?;
    let tok_file = if f.get("tokenizer.ggml.model").is_some() { Some(crate::tokenizer::Tokenizer::from_gguf_file(src)?.save_beside(dst)?) } else { None };
    Ok((cfg, tok_file))
}

//! Hugging Face safetensors checkpoints: reading (single file or shards with
//! `model.safetensors.index.json`; f32, bf16, f16; memory-mapped) and writing
//! (atomically: temporary name, fsync, rename).
//!
//! Every file is validated before use: the safetensors crate checks the
//! header length and tensor offsets against the file size; we check dtype
//! and shape against what the config asks for and report missing tensors by
//! name.
//!
//! Public items: [`Checkpoint`] (opened files), [`HostTensor`],
//! [`HostWeights`] (name → tensor), [`save_safetensors`], [`write_atomic`].

use crate::error::{ModelError, Result};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A tensor on the host in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor { shape, data }
    }
}

/// Tensors by their HF name, in name order.
pub type HostWeights = BTreeMap<String, HostTensor>;

/// One memory-mapped safetensors file.
struct MappedFile {
    path: PathBuf,
    map: memmap2::Mmap,
}

/// An opened safetensors checkpoint (one file or a set of shards).
pub struct Checkpoint {
    files: Vec<MappedFile>,
    /// tensor name → index into `files`
    index: BTreeMap<String, usize>,
}

fn bad(path: &Path, msg: String, hint: &'static str) -> ModelError {
    ModelError::BadFile { path: path.to_path_buf(), msg, hint }
}

const HINT_RESAVE: &str = "the file is damaged or not a safetensors file; re-export it (transformers: model.save_pretrained)";

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed in
    /// `dir/model.safetensors.index.json`, or `path` itself if it is a file.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_file() {
            return Self::open_files(&[path.to_path_buf()]);
        }
        let single = path.join("model.safetensors");
        if single.is_file() {
            return Self::open_files(&[single]);
        }
        let index = path.join("model.safetensors.index.json");
        if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| bad(&index, format!("not valid JSON: {e}"), "re-save the model with transformers"))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| bad(&index, "no `weight_map` object".into(), "re-save the model with transformers"))?;
            let mut names: Vec<String> = map.values().filter_map(|f| f.as_str().map(String::from)).collect();
            names.sort();
            names.dedup();
            for n in &names {
                if n.contains('/') || n.contains("..") {
                    return Err(bad(&index, format!("shard name `{n}` is not a plain file name"), "shards must sit beside the index"));
                }
            }
            let files: Vec<PathBuf> = names.iter().map(|n| path.join(n)).collect();
            let ck = Self::open_files(&files)?;
            // every tensor the index names must be in the shard it names
            for (name, f) in map {
                let f = f.as_str().unwrap_or_default();
                match ck.index.get(name) {
                    Some(&i) if ck.files[i].path.file_name().and_then(|x| x.to_str()) == Some(f) => {}
                    _ => {
                        return Err(bad(
                            &index,
                            format!("tensor `{name}` is listed in shard `{f}` but not found there"),
                            "the index and the shards do not match",
                        ))
                    }
                }
            }
            return Ok(ck);
        }
        Err(bad(
            path,
            "no model.safetensors or model.safetensors.index.json here".into(),
            "pass the directory of a Hugging Face model (config.json + model.safetensors)",
        ))
    }

    fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = BTreeMap::new();
        for p in paths {
            let f = std::fs::File::open(p).map_err(|e| ModelError::io(p, e))?;
            // SAFETY: the file is opened read-only; we require that it is not
            // modified while the checkpoint is open (as every mmap reader does).
            let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| ModelError::io(p, e))?;
            let st = SafeTensors::deserialize(&map).map_err(|e| bad(p, format!("invalid safetensors: {e}"), HINT_RESAVE))?;
            for name in st.names() {
                if index.insert(name.to_string(), files.len()).is_some() {
                    return Err(bad(p, format!("tensor `{name}` appears in more than one shard"), "the shards overlap"));
                }
            }
            files.push(MappedFile { path: p.clone(), map });
        }
        Ok(Checkpoint { files, index })
    }

    /// The `__metadata__` of file `i` (0 for a single file).
    pub fn metadata(&self, i: usize) -> Result<std::collections::HashMap<String, String>> {
        let f = self.files.get(i).ok_or_else(|| ModelError::Invalid(format!("no file {i} in this checkpoint")))?;
        let (_, meta) = SafeTensors::read_metadata(&f.map).map_err(|e| bad(&f.path, format!("invalid safetensors: {e}"), HINT_RESAVE))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Names of all tensors.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The path of the file holding `name` (for error messages).
    pub fn path_of(&self, name: &str) -> Option<&Path> {
        self.index.get(name).map(|&i| self.files[i].path.as_path())
    }

    /// Shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        let (_, view) = self.view(name)?;
        Ok(view.shape().to_vec())
    }

    fn view(&self, name: &str) -> Result<(&Path, TensorView<'_>)> {
        let &i = self.index.get(name).ok_or_else(|| ModelError::Tensor { name: name.into(), msg: "missing from the checkpoint".into() })?;
        let f = &self.files[i];
        let st = SafeTensors::deserialize(&f.map).map_err(|e| bad(&f.path, format!("invalid safetensors: {e}"), HINT_RESAVE))?;
        let view = st.tensor(name).map_err(|e| bad(&f.path, format!("tensor `{name}`: {e}"), HINT_RESAVE))?;
        Ok((&f.path, view))
    }

    /// Reads tensor `name` into `dst` as f32, checking that its shape is
    /// `expected` and its dtype f32, bf16 or f16.
    pub fn read_into(&self, name: &str, expected: &[usize], dst: &mut [f32]) -> Result<()> {
        let (path, view) = self.view(name)?;
        if view.shape() != expected {
            return Err(bad(
                path,
                format!("tensor `{name}` has shape {:?}, config.json implies {expected:?}", view.shape()),
                "the weights do not belong to this config.json",
            ));
        }
        let n: usize = expected.iter().product();
        if dst.len() != n {
            return Err(ModelError::Tensor { name: name.into(), msg: format!("destination holds {} values, tensor {n}", dst.len()) });
        }
        let bytes = view.data();
        match view.dtype() {
            Dtype::F32 => {
                for (d, ch) in dst.iter_mut().zip(bytes.chunks_exact(4)) {
                    *d = f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
                }
            }
            Dtype::BF16 => {
                for (d, ch) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::bf16::from_le_bytes([ch[0], ch[1]]).to_f32();
                }
            }
            Dtype::F16 => {
                for (d, ch) in dst.iter_mut().zip(bytes.chunks_exact(2)) {
                    *d = half::f16::from_le_bytes([ch[0], ch[1]]).to_f32();
                }
            }
            other => {
                return Err(bad(path, format!("tensor `{name}` has dtype {other:?}"), "only F32, BF16 and F16 weights are supported"));
            }
        }
        Ok(())
    }

    /// Reads a whole tensor (any shape) as f32.
    pub fn read(&self, name: &str) -> Result<HostTensor> {
        let shape = self.shape(name)?;
        let mut data = vec![0f32; shape.iter().product()];
        self.read_into(name, &shape, &mut data)?;
        Ok(HostTensor { shape, data })
    }

    /// Reads every tensor.
    pub fn read_all(&self) -> Result<HostWeights> {
        let mut out = HostWeights::new();
        for name in self.index.keys() {
            out.insert(name.clone(), self.read(name)?);
        }
        Ok(out)
    }

    /// Reads an integer tensor (I32 or I64) as i64 values, with its shape.
    pub fn read_ints(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let (path, view) = self.view(name)?;
        let b = view.data();
        let vals = match view.dtype() {
            Dtype::I32 => b.chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64).collect(),
            Dtype::I64 => b.chunks_exact(8).map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect(),
            other => return Err(bad(path, format!("tensor `{name}` has dtype {other:?}, expected an integer type"), "re-create the file")),
        };
        Ok((view.shape().to_vec(), vals))
    }
}

/// Precision of saved weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    F32,
    BF16,
}

/// Writes `tensors` (name → tensor) as one safetensors file, atomically.
pub fn save_safetensors(path: &Path, tensors: &HostWeights, dtype: SaveDtype, metadata: Option<BTreeMap<String, String>>) -> Result<()> {
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let n: usize = t.shape.iter().product();
        if n != t.data.len() {
            return Err(ModelError::Tensor { name: name.clone(), msg: format!("shape {:?} but {} values", t.shape, t.data.len()) });
        }
        let b = match dtype {
            SaveDtype::F32 => bytemuck::cast_slice::<f32, u8>(&t.data).to_vec(),
            SaveDtype::BF16 => t.data.iter().flat_map(|&x| half::bf16::from_f32(x).to_le_bytes()).collect(),
        };
        bytes.push((name.clone(), t.shape.clone(), b));
    }
    let dt = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::BF16 => Dtype::BF16,
    };
    let mut views = Vec::with_capacity(bytes.len());
    for (name, shape, b) in &bytes {
        let v = TensorView::new(dt, shape.clone(), b).map_err(|e| ModelError::Tensor { name: name.clone(), msg: e.to_string() })?;
        views.push((name.clone(), v));
    }
    let meta: Option<std::collections::HashMap<String, String>> = metadata.map(|m| m.into_iter().collect());
    let data = safetensors::serialize(views, meta).map_err(|e| ModelError::Invalid(format!("serialising {}: {e}", path.display())))?;
    write_atomic(path, &data)
}

/// Writes `data` to `path` atomically (the project's one writer,
/// [`crate::formats::atomic`]).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    crate::formats::atomic::write_atomic(path, data).map_err(|e| ModelError::io(path, e))
}

//! The model: config, parameter arena on a backend, RoPE table. Loading and
//! saving in Hugging Face format; random initialisation as transformers
//! does it (normal(0, 0.02) for every matrix, ones for the norms).
//!
//! Loading a GGUF file instead goes through [`Model::load_path`].
//!
//! Public items: [`Model`], [`KvCache`], [`param_view`], [`param_view_mut`],
//! [`param_span_mut`].

use crate::config::Config;
use crate::error::{ModelError, Result};
use crate::params::{ParamId, ParamLayout};
use crate::weights::{save_safetensors, write_atomic, Checkpoint, HostWeights, SaveDtype};
use llama2_runtime::kernels::rope::rope_table;
use llama2_runtime::rng::Rng;
use llama2_runtime::{vm, Backend, BufKind, View, ViewMut};
use std::path::Path;

/// A Llama model on a backend.
pub struct Model<B: Backend> {
    pub cfg: Config,
    pub layout: ParamLayout,
    /// the parameter arena (`BufKind::Param`), laid out by `layout`
    pub params: B::Buf,
    /// RoPE cos/sin table `(rope_len, head_dim/2, 2)`, F32
    pub rope: B::Buf,
    /// positions covered by `rope`
    pub rope_len: usize,
}

/// Window of parameter `id` (layer `l`) in an arena laid out by `lay`.
pub fn param_view<'a, B: Backend>(buf: &'a B::Buf, lay: &ParamLayout, id: ParamId, l: usize) -> View<'a, B> {
    let (off, len) = lay.range(id, l);
    View { buf, off, len }
}

/// Exclusive window of parameter `id` (layer `l`), for gradients.
pub fn param_view_mut<'a, B: Backend>(buf: &'a mut B::Buf, lay: &ParamLayout, id: ParamId, l: usize) -> ViewMut<'a, B> {
    let (off, len) = lay.range(id, l);
    ViewMut { buf, off, len }
}

/// Exclusive window of layer `l`'s tensors `first ..= last` of one
/// [`ParamId::group`] (gradients of a fused product; see [`Model::p_span`]).
pub fn param_span_mut<'a, B: Backend>(buf: &'a mut B::Buf, lay: &ParamLayout, first: ParamId, last: ParamId, l: usize) -> Result<ViewMut<'a, B>> {
    let (off, len) = span_of(lay, first, last, l)?;
    Ok(ViewMut { buf, off, len })
}

fn span_of(lay: &ParamLayout, first: ParamId, last: ParamId, l: usize) -> Result<(usize, usize)> {
    lay.span(first, last, l).ok_or_else(|| ModelError::Invalid(format!("{first:?} ..= {last:?} of layer {l} are not one window of the parameter arena")))
}

/// Keys and values of past positions for incremental decoding, with one
/// length per sequence (sequences of a batch may be at different positions).
pub struct KvCache<B: Backend> {
    pub k: B::Buf, // (L, b, cap, kv_dim)
    pub v: B::Buf, // (L, b, cap, kv_dim)
    pub b: usize,
    pub cap: usize,
    /// positions filled so far, per sequence `(b)`
    pub lens: Vec<usize>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(be: &B, cfg: &Config, b: usize, cap: usize) -> Result<Self> {
        let n = cfg.n_layers * b * cap * cfg.kv_dim();
        Ok(KvCache { k: be.alloc(n, BufKind::Act)?, v: be.alloc(n, BufKind::Act)?, b, cap, lens: vec![0; b] })
    }

    /// Empties every sequence.
    pub fn reset(&mut self) {
        self.lens.fill(0);
    }

    /// The common length if every sequence has the same one.
    pub fn uniform_len(&self) -> Option<usize> {
        let first = *self.lens.first()?;
        self.lens.iter().all(|&l| l == first).then_some(first)
    }
}

impl<B: Backend> Model<B> {
    /// A model with its parameters taken from the host arena `host (total)`.
    pub fn from_host(be: &B, cfg: Config, host: &[f32]) -> Result<Self> {
        Self::from_host_as(be, cfg, host, BufKind::Param)
    }

    /// [`Model::from_host`] with the arena stored as `kind`: `Param` for a
    /// model that trains (CUDA: fp32 master + bf16 copy), `Act` for a frozen
    /// one (CUDA: bf16 only; the CPU stores both in f32).
    fn from_host_as(be: &B, cfg: Config, host: &[f32], kind: BufKind) -> Result<Self> {
        cfg.validate()?;
        let layout = ParamLayout::new(&cfg);
        if host.len() != layout.total {
            return Err(ModelError::Invalid(format!("{} parameter values for a layout of {}", host.len(), layout.total)));
        }
        let mut params = be.alloc(layout.total, kind)?;
        be.upload(vm(&mut params), host)?;
        let rope_len = cfg.max_seq_len.max(1);
        let tab = rope_table(rope_len, cfg.head_dim, cfg.rope_theta as f32);
        let mut rope = be.alloc(tab.len(), BufKind::F32)?;
        be.upload(vm(&mut rope), &tab)?;
        Ok(Model { cfg, layout, params, rope, rope_len })
    }

    /// Random initialisation as transformers' `_init_weights` for Llama:
    /// every matrix normal(0, 0.02), every RMSNorm gain 1.
    pub fn init_random(be: &B, cfg: Config, seed: u64) -> Result<Self> {
        let layout = ParamLayout::new(&cfg);
        use rayon::prelude::*;
        // drawn in the stacked order (each tensor whole, in ParamId::ALL order),
        // so a seed gives the weights it gave before the arena interleaved
        // wq|wk|wv and wgate|wup (the same split: matrices, then the gains)
        let mut stacked = vec![0f32; layout.total];
        const INIT_STD: f32 = 0.02; // transformers' initializer_range default
                                    // one seeded stream per chunk: the same weights on any thread count,
                                    // and a 1B-parameter model in seconds instead of a minute
        const CHUNK: usize = 1 << 20;
        stacked.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, xs)| {
            let mut rng = Rng::derive(seed, &format!("init/{ci}"));
            for (j, x) in xs.iter_mut().enumerate() {
                *x = if ci * CHUNK + j < layout.n_decay { rng.normal() * INIT_STD } else { 1.0 };
            }
        });
        let mut host = vec![0f32; layout.total];
        layout.from_stacked(&cfg, &stacked, &mut host)?;
        Self::from_host(be, cfg, &host)
    }

    /// Loads a Hugging Face model directory (config.json + safetensors):
    /// a `LlamaForCausalLM` or a `LlamaForSequenceClassification` (one label).
    ///
    /// ```
    /// use llama2_model::{Acts, LogitRows, Model};
    /// use llama2_runtime::CpuBackend;
    ///
    /// let be = CpuBackend::new(1)?;
    /// let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gqa");
    /// let model = Model::load(&be, &dir)?;
    /// // next-token logits of one sequence of 3 tokens
    /// let mut acts = Acts::new(&be, &model.cfg, 1, 3, false, LogitRows::Last)?;
    /// model.forward(&be, &mut acts, &[1, 72, 9], None)?;
    /// assert_eq!(acts.a.logits.data.len(), model.cfg.vocab_size);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(be: &B, dir: &Path) -> Result<Self> {
        let cfg = Config::from_hf_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        let layout = ParamLayout::new(&cfg);
        let mut host = vec![0f32; layout.total];
        layout.load(&cfg, &ck, &mut host)?;
        Self::from_host(be, cfg, &host)
    }

    /// [`Model::load`] for a model that is only read (a reference policy, a
    /// reward model during PPO): its weights are stored as activations
    /// (bf16 on CUDA, no fp32 master copy), and it gets no gradients or
    /// optimizer state. On the CPU it computes exactly what a trainable
    /// model does.
    pub fn load_frozen(be: &B, dir: &Path) -> Result<Self> {
        if let Some((cfg, host)) = crate::gguf::load_if_gguf(dir)? {
            return Self::from_host_as(be, cfg, &host, BufKind::Act);
        }
        let cfg = Config::from_hf_file(&dir.join("config.json"))?;
        let ck = Checkpoint::open(dir)?;
        let layout = ParamLayout::new(&cfg);
        let mut host = vec![0f32; layout.total];
        layout.load(&cfg, &ck, &mut host)?;
        Self::from_host_as(be, cfg, &host, BufKind::Act)
    }

    /// Loads a model from a Hugging Face directory or a GGUF file (llama.cpp;
    /// every tensor dequantized to f32, see [`crate::gguf`]).
    pub fn load_path(be: &B, path: &Path) -> Result<Self> {
        match crate::gguf::load_if_gguf(path)? {
            Some((cfg, host)) => Self::from_host(be, cfg, &host),
            None => Self::load(be, path),
        }
    }

    /// The parameters on the host (f32; the master copy on CUDA).
    pub fn params_host(&self, be: &B) -> Result<Vec<f32>> {
        let mut host = vec![0f32; self.layout.total];
        be.download(View::of(&self.params), &mut host)?;
        Ok(host)
    }

    /// The parameters as named HF tensors.
    pub fn to_hf(&self, be: &B) -> Result<HostWeights> {
        Ok(self.layout.to_host(&self.cfg, &self.params_host(be)?))
    }

    /// Writes `dir/config.json` and `dir/model.safetensors` (creating `dir`).
    pub fn save(&self, be: &B, dir: &Path, dtype: SaveDtype) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        let cfg = serde_json::to_string_pretty(&self.cfg.to_hf_json()).map_err(|e| ModelError::Invalid(e.to_string()))?;
        write_atomic(&dir.join("config.json"), cfg.as_bytes())?;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        save_safetensors(&dir.join("model.safetensors"), &self.to_hf(be)?, dtype, Some(meta))
    }

    /// Window of parameter `id` of layer `l`.
    pub fn p(&self, id: ParamId, l: usize) -> View<'_, B> {
        param_view::<B>(&self.params, &self.layout, id, l)
    }

    /// Layer `l`'s tensors `first ..= last` of one [`ParamId::group`] as one
    /// window: `(Wq, Wv)` gives `[Wq; Wk; Wv] (q_dim + 2 kv_dim, C)`,
    /// `(Wgate, Wup)` gives `[Wgate; Wup] (2I, C)`.
    pub fn p_span(&self, first: ParamId, last: ParamId, l: usize) -> Result<View<'_, B>> {
        let (off, len) = span_of(&self.layout, first, last, l)?;
        Ok(View { buf: &self.params, off, len })
    }

    /// The output head's weight: `lm_head`, or the embedding when tied.
    pub fn head_id(&self) -> ParamId {
        if self.cfg.tie_embeddings {
            ParamId::Embed
        } else {
            ParamId::LmHead
        }
    }
}

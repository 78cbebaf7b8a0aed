//! The parameters of the model as one arena with one named field per
//! tensor (llm.c `ParameterTensors`). The same struct holds sizes, offsets,
//! and (in the train crate) gradients and AdamW moments.
//!
//! Per-layer tensors hold one slice per layer: `wq` holds transformers'
//! `model.layers.{l}.self_attn.q_proj.weight` at layer l.
//!
//! Arena order: every matrix first (the weight-decay group), then the 1-D
//! RMSNorm gains (no weight decay), so AdamW runs as two contiguous calls.
//! Within that, tensors in [`ParamId::ALL`] order, each stacked over layers
//! `(L, rows, C)`, except the tensors one product reads together
//! ([`ParamId::group`]): layer l's `wq, wk, wv` are adjacent, one
//! `(q_dim + 2 kv_dim, C)` matrix, before layer l+1's; likewise `wgate,
//! wup` as one `(2I, C)`. So the attention block's input projections (and
//! the MLP's) can run as one GEMM on a window of the arena
//! ([`ParamLayout::span`]). [`ARENA_ORDER`] names this order.
//!
//! Public items: [`ParamTensors`], [`ParamId`], [`ParamLayout`].

use crate::config::{Config, Head};
use crate::error::{ModelError, Result};
use crate::weights::{Checkpoint, HostTensor, HostWeights};

/// The arena order's name, recorded with anything stored by arena offset
/// (the optimizer shards of a data-parallel checkpoint), so that files of
/// another order are refused instead of misread.
pub const ARENA_ORDER: &str = "llama2-arena-2 (wq|wk|wv and wgate|wup adjacent per layer)";

/// One field per parameter tensor.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamTensors<T> {
    pub embed: T,   // (V, C)             model.embed_tokens.weight
    pub lm_head: T, // (V, C)             lm_head.weight (empty when tied or with a score head)
    pub score: T,   // (1, C)             score.weight (a score head only)
    pub wq: T,      // (L, q_dim, C)      self_attn.q_proj.weight
    pub wk: T,      // (L, kv_dim, C)     self_attn.k_proj.weight
    pub wv: T,      // (L, kv_dim, C)     self_attn.v_proj.weight
    pub wo: T,      // (L, C, q_dim)      self_attn.o_proj.weight
    pub wgate: T,   // (L, I, C)          mlp.gate_proj.weight
    pub wup: T,     // (L, I, C)          mlp.up_proj.weight
    pub wdown: T,   // (L, C, I)          mlp.down_proj.weight
    pub ln1: T,     // (L, C)             input_layernorm.weight
    pub ln2: T,     // (L, C)             post_attention_layernorm.weight
    pub lnf: T,     // (C)                model.norm.weight
}

/// The parameter tensors, in arena order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamId {
    Embed,
    LmHead,
    Score,
    Wq,
    Wk,
    Wv,
    Wo,
    Wgate,
    Wup,
    Wdown,
    Ln1,
    Ln2,
    Lnf,
}

impl ParamId {
    pub const ALL: [ParamId; 13] = [
        ParamId::Embed,
        ParamId::LmHead,
        ParamId::Score,
        ParamId::Wq,
        ParamId::Wk,
        ParamId::Wv,
        ParamId::Wo,
        ParamId::Wgate,
        ParamId::Wup,
        ParamId::Wdown,
        ParamId::Ln1,
        ParamId::Ln2,
        ParamId::Lnf,
    ];

    /// Stacked over layers?
    pub fn per_layer(self) -> bool {
        !matches!(self, ParamId::Embed | ParamId::LmHead | ParamId::Score | ParamId::Lnf)
    }

    /// Does a model of config `c` have this tensor? (`lm_head` not when
    /// tied or under a score head; `score` only under a score head.)
    pub fn present(self, c: &Config) -> bool {
        match self {
            ParamId::LmHead => c.head == Head::Lm && !c.tie_embeddings,
            ParamId::Score => c.head == Head::Score,
            _ => true,
        }
    }

    /// The tensors stored interleaved by layer with this one (so one product
    /// reads them as one matrix): `[Wq, Wk, Wv]` and `[Wgate, Wup]`; a
    /// tensor of its own otherwise. Members are consecutive in [`Self::ALL`].
    pub fn group(self) -> &'static [ParamId] {
        match self {
            ParamId::Wq | ParamId::Wk | ParamId::Wv => &[ParamId::Wq, ParamId::Wk, ParamId::Wv],
            ParamId::Wgate | ParamId::Wup => &[ParamId::Wgate, ParamId::Wup],
            ParamId::Embed => &[ParamId::Embed],
            ParamId::LmHead => &[ParamId::LmHead],
            ParamId::Score => &[ParamId::Score],
            ParamId::Wo => &[ParamId::Wo],
            ParamId::Wdown => &[ParamId::Wdown],
            ParamId::Ln1 => &[ParamId::Ln1],
            ParamId::Ln2 => &[ParamId::Ln2],
            ParamId::Lnf => &[ParamId::Lnf],
        }
    }

    /// Gets weight decay (2-D tensors)?
    pub fn decays(self) -> bool {
        !matches!(self, ParamId::Ln1 | ParamId::Ln2 | ParamId::Lnf)
    }

    /// The HF tensor name (of layer `l` for per-layer tensors).
    pub fn hf_name(self, l: usize) -> String {
        match self {
            ParamId::Embed => "model.embed_tokens.weight".into(),
            ParamId::LmHead => "lm_head.weight".into(),
            ParamId::Score => "score.weight".into(),
            ParamId::Lnf => "model.norm.weight".into(),
            ParamId::Wq => format!("model.layers.{l}.self_attn.q_proj.weight"),
            ParamId::Wk => format!("model.layers.{l}.self_attn.k_proj.weight"),
            ParamId::Wv => format!("model.layers.{l}.self_attn.v_proj.weight"),
            ParamId::Wo => format!("model.layers.{l}.self_attn.o_proj.weight"),
            ParamId::Wgate => format!("model.layers.{l}.mlp.gate_proj.weight"),
            ParamId::Wup => format!("model.layers.{l}.mlp.up_proj.weight"),
            ParamId::Wdown => format!("model.layers.{l}.mlp.down_proj.weight"),
            ParamId::Ln1 => format!("model.layers.{l}.input_layernorm.weight"),
            ParamId::Ln2 => format!("model.layers.{l}.post_attention_layernorm.weight"),
        }
    }

    /// Shape of one HF tensor (one layer's slice for per-layer tensors).
    pub fn hf_shape(self, c: &Config) -> Vec<usize> {
        let (h, v, i, q, kv) = (c.hidden, c.vocab_size, c.intermediate, c.q_dim(), c.kv_dim());
        match self {
            ParamId::Embed => vec![v, h],
            ParamId::LmHead => {
                if c.tie_embeddings || c.head != Head::Lm {
                    vec![0]
                } else {
                    vec![v, h]
                }
            }
            ParamId::Score => {
                if c.head == Head::Score {
                    vec![1, h]
                } else {
                    vec![0]
                }
            }
            ParamId::Wq => vec![q, h],
            ParamId::Wk | ParamId::Wv => vec![kv, h],
            ParamId::Wo => vec![h, q],
            ParamId::Wgate | ParamId::Wup => vec![i, h],
            ParamId::Wdown => vec![h, i],
            ParamId::Ln1 | ParamId::Ln2 | ParamId::Lnf => vec![h],
        }
    }
}

fn set<T>(t: &mut ParamTensors<T>, id: ParamId, x: T) {
    *match id {
        ParamId::Embed => &mut t.embed,
        ParamId::LmHead => &mut t.lm_head,
        ParamId::Score => &mut t.score,
        ParamId::Wq => &mut t.wq,
        ParamId::Wk => &mut t.wk,
        ParamId::Wv => &mut t.wv,
        ParamId::Wo => &mut t.wo,
        ParamId::Wgate => &mut t.wgate,
        ParamId::Wup => &mut t.wup,
        ParamId::Wdown => &mut t.wdown,
        ParamId::Ln1 => &mut t.ln1,
        ParamId::Ln2 => &mut t.ln2,
        ParamId::Lnf => &mut t.lnf,
    } = x;
}

impl<T> ParamTensors<T> {
    pub fn get(&self, id: ParamId) -> &T {
        match id {
            ParamId::Embed => &self.embed,
            ParamId::LmHead => &self.lm_head,
            ParamId::Score => &self.score,
            ParamId::Wq => &self.wq,
            ParamId::Wk => &self.wk,
            ParamId::Wv => &self.wv,
            ParamId::Wo => &self.wo,
            ParamId::Wgate => &self.wgate,
            ParamId::Wup => &self.wup,
            ParamId::Wdown => &self.wdown,
            ParamId::Ln1 => &self.ln1,
            ParamId::Ln2 => &self.ln2,
            ParamId::Lnf => &self.lnf,
        }
    }

    /// Builds a struct field by field.
    pub fn from_fn(mut f: impl FnMut(ParamId) -> T) -> Self {
        ParamTensors {
            embed: f(ParamId::Embed),
            lm_head: f(ParamId::LmHead),
            score: f(ParamId::Score),
            wq: f(ParamId::Wq),
            wk: f(ParamId::Wk),
            wv: f(ParamId::Wv),
            wo: f(ParamId::Wo),
            wgate: f(ParamId::Wgate),
            wup: f(ParamId::Wup),
            wdown: f(ParamId::Wdown),
            ln1: f(ParamId::Ln1),
            ln2: f(ParamId::Ln2),
            lnf: f(ParamId::Lnf),
        }
    }
}

/// Sizes and offsets of every tensor in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// elements of each tensor, over all its layers
    pub size: ParamTensors<usize>,
    /// first element of each tensor (of its layer 0 slice)
    offset: ParamTensors<usize>,
    /// elements from one layer's slice of a tensor to the next layer's
    stride: ParamTensors<usize>,
    /// total number of elements
    pub total: usize,
    /// elements `[0, n_decay)` get weight decay, `[n_decay, total)` do not
    pub n_decay: usize,
    pub n_layers: usize,
}

impl ParamLayout {
    pub fn new(c: &Config) -> Self {
        // elements of one layer's slice (the whole tensor if not per layer)
        let one = ParamTensors::from_fn(|id| if id.present(c) { id.hf_shape(c).iter().product::<usize>() } else { 0 });
        let size = ParamTensors::from_fn(|id| if id.per_layer() { one.get(id) * c.n_layers } else { *one.get(id) });
        let mut offset = ParamTensors::from_fn(|_| 0);
        let mut stride = ParamTensors::from_fn(|_| 0);
        let (mut off, mut n_decay) = (0, 0);
        let mut i = 0;
        while i < ParamId::ALL.len() {
            let group = ParamId::ALL[i].group();
            // one layer of the group: its members' slices, in order
            let per_layer: usize = group.iter().map(|&g| *one.get(g)).sum();
            let mut inner = 0;
            for &g in group {
                set(&mut offset, g, off + inner);
                set(&mut stride, g, per_layer);
                inner += *one.get(g);
            }
            let layers = if ParamId::ALL[i].per_layer() { c.n_layers } else { 1 };
            off += per_layer * layers;
            if ParamId::ALL[i].decays() {
                n_decay = off;
            }
            i += group.len();
        }
        ParamLayout { size, offset, stride, total: off, n_decay, n_layers: c.n_layers }
    }

    /// `(offset, len)` of tensor `id`, of layer `l` for per-layer tensors.
    pub fn range(&self, id: ParamId, l: usize) -> (usize, usize) {
        let (o, s) = (*self.offset.get(id), *self.size.get(id));
        if id.per_layer() {
            (o + l * *self.stride.get(id), s / self.n_layers)
        } else {
            (o, s)
        }
    }

    /// `(offset, len)` of layer `l`'s slices of the tensors `first ..= last`
    /// of one [`ParamId::group`], adjacent in the arena (`Wq ..= Wv`: the
    /// `(q_dim + 2 kv_dim, C)` matrix `[Wq; Wk; Wv]`). None if they are not
    /// one window.
    pub fn span(&self, first: ParamId, last: ParamId, l: usize) -> Option<(usize, usize)> {
        let group = first.group();
        let (a, b) = (group.iter().position(|&g| g == first)?, group.iter().position(|&g| g == last)?);
        if a > b {
            return None;
        }
        let (o, _) = self.range(first, l);
        let mut end = o;
        for &g in &group[a..=b] {
            let (go, gn) = self.range(g, l);
            if go != end {
                return None;
            }
            end = go + gn;
        }
        Some((o, end - o))
    }

    /// Tensor `id`'s elements over all its layers (layer 0's slice, then
    /// layer 1's, ...) from an arena-sized vector: one tensor of
    /// parameters, gradients or moments, wherever the arena keeps its layers.
    pub fn gather(&self, id: ParamId, arena: &[f32]) -> Vec<f32> {
        let layers = if id.per_layer() { self.n_layers } else { 1 };
        let mut out = Vec::with_capacity(*self.size.get(id));
        for l in 0..layers {
            let (o, n) = self.range(id, l);
            out.extend_from_slice(&arena[o..o + n]);
        }
        out
    }

    /// Copies an arena-sized vector in the stacked order (every tensor
    /// whole, `(L, rows, C)`, in [`ParamId::ALL`] order: the arena order
    /// before [`ARENA_ORDER`]) into this layout's order.
    pub fn from_stacked(&self, c: &Config, stacked: &[f32], dst: &mut [f32]) -> Result<()> {
        if stacked.len() != self.total || dst.len() != self.total {
            return Err(ModelError::Invalid(format!("{} and {} values for a layout of {}", stacked.len(), dst.len(), self.total)));
        }
        let mut at = 0;
        for (id, l, _) in self.hf_tensors(c) {
            let (o, n) = self.range(id, l);
            dst[o..o + n].copy_from_slice(&stacked[at..at + n]);
            at += n;
        }
        Ok(())
    }

    /// Every HF tensor: (id, layer, name).
    pub fn hf_tensors<'a>(&'a self, c: &'a Config) -> impl Iterator<Item = (ParamId, usize, String)> + 'a {
        ParamId::ALL.into_iter().filter(move |&id| id.present(c)).flat_map(move |id| {
            let layers = if id.per_layer() { c.n_layers } else { 1 };
            (0..layers).map(move |l| (id, l, id.hf_name(l)))
        })
    }

    /// Fills the host arena `dst (total)` from a checkpoint, checking every
    /// tensor's presence, shape and dtype.
    pub fn load(&self, c: &Config, ck: &Checkpoint, dst: &mut [f32]) -> Result<()> {
        if dst.len() != self.total {
            return Err(ModelError::Invalid(format!("arena of {} values, layout needs {}", dst.len(), self.total)));
        }
        for (id, l, name) in self.hf_tensors(c) {
            let (o, n) = self.range(id, l);
            if !ck.contains(&name) {
                return Err(ModelError::Tensor { name, msg: "missing from the checkpoint; HINT: the weights do not belong to this config.json".into() });
            }
            ck.read_into(&name, &id.hf_shape(c), &mut dst[o..o + n])?;
        }
        Ok(())
    }

    /// Fills the arena from named host tensors (same checks as [`Self::load`]).
    pub fn load_host(&self, c: &Config, w: &HostWeights, dst: &mut [f32]) -> Result<()> {
        for (id, l, name) in self.hf_tensors(c) {
            let (o, n) = self.range(id, l);
            let t = w.get(&name).ok_or_else(|| ModelError::Tensor { name: name.clone(), msg: "missing".into() })?;
            let want = id.hf_shape(c);
            if t.shape != want {
                return Err(ModelError::Tensor { name, msg: format!("shape {:?}, config implies {want:?}", t.shape) });
            }
            dst[o..o + n].copy_from_slice(&t.data);
        }
        Ok(())
    }

    /// The arena as named HF tensors.
    pub fn to_host(&self, c: &Config, src: &[f32]) -> HostWeights {
        let mut w = HostWeights::new();
        for (id, l, name) in self.hf_tensors(c) {
            let (o, n) = self.range(id, l);
            w.insert(name, HostTensor::new(id.hf_shape(c), src[o..o + n].to_vec()));
        }
        w
    }
}

//! Forward pass, one launcher call per line, read top to bottom
//! (transformers `modeling_llama.py`): the trunk, then a head.
//!
//! ```text
//! trunk:   x = embed(tokens)
//!          per layer: h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))), n1 = rmsnorm1(x)
//!                     x = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                n2 = rmsnorm2(h)
//!          hidden = rmsnorm_f(x)
//! ```
//!
//! The attention block's q, k, v projections with RoPE are one call,
//! `Backend::qkv_fwd`, and the MLP's gate and up projections with SwiGLU
//! another, `Backend::mlp_in_fwd`: each one GEMM over the layer's adjacent
//! weights (`[Wq; Wk; Wv]`, `[Wgate; Wup]`, see `params`) on CUDA, the
//! unfused products on the CPU (the trait's defaults).
//!
//! Each residual add and the RMSNorm that reads its sum are one call,
//! `Backend::add_rmsnorm_fwd` (h and n2; x and the next layer's n1, or the
//! final norm after the last layer): one fused kernel on CUDA, the unfused
//! add + rmsnorm on the CPU (the trait's default, so CPU results are
//! unchanged). Only the first layer's n1 is a plain `rmsnorm_fwd`.
//!
//! ```text
//! LM head:    logits = lm_head(hidden)            (LlamaForCausalLM)
//! score head: score  = score(hidden[rows])        (LlamaForSequenceClassification, 1 label)
//! ```
//!
//! Linear layers: in inference (activations made with `training` false)
//! through the backend's row-invariant product (`Backend::matmul_rows`),
//! so a sequence's logits and tokens do not depend on its batch; in
//! training through the general product.
//!
//! Batches are `(b, t)` tokens. A ragged batch ([`Lens`]) has right
//! padding: sequence `s` holds `lens[s]` valid tokens; causal attention
//! keeps every valid position from seeing a pad, padding rows get zero
//! outputs and are never read as keys, and the LM head's `LogitRows::Last`
//! and the score head read the last valid row.
//!
//! With a [`KvCache`], the new keys and values are written into the cache
//! after each sequence's cached positions and attention reads the cache
//! (incremental decoding; sequences may sit at different positions);
//! without one, attention is causal over the batch. The LM head is not
//! computed by [`Model::trunk`]: a score or a hidden state costs no
//! vocabulary-sized product.
//!
//! Public items: [`Model::trunk`], [`Model::lm_head`], [`Model::forward`],
//! [`Model::forward_ragged`], [`Model::loss`], [`Model::token_logprobs`],
//! [`Model::score_rows`], [`Model::last_rows`], [`TokenStats`], [`Lens`].

use crate::acts::{Acts, LogitRows};
use crate::config::Head;
use crate::error::{ModelError, Result};
use crate::model::{KvCache, Model};
use crate::params::ParamId as P;
use llama2_runtime::{linear_fwd, v, vm, AttnShape, Backend, CeGrad, QkvShape, Ragged, View, ViewMut};

/// Valid tokens per sequence of a right-padded batch (`None`: every row of
/// every sequence is valid).
pub type Lens<'a> = Option<&'a [u32]>;

/// Per-token results of the LM head against targets, on the host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenStats {
    /// `log p(target)` per logit row (0 where the target is ignored)
    pub logprobs: Vec<f32>,
    /// entropy of each row's softmax (0 where the target is ignored), when asked
    pub entropy: Option<Vec<f32>>,
}

/// Which product a Linear layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rows {
    /// inference: row-invariant (`Backend::matmul_rows`), so a sequence's
    /// outputs do not depend on the batch it is decoded or scored in
    Invariant,
    /// training: the backend's general product
    Any,
}

impl Rows {
    pub(crate) fn of(training: bool) -> Self {
        if training {
            Rows::Any
        } else {
            Rows::Invariant
        }
    }
}

/// The error of an op that needs every row's logits stored, called on
/// activations made with `LogitRows::Chunked`.
fn chunked_refused(op: &str) -> ModelError {
    ModelError::Invalid(format!(
        "{op}: these activations keep one chunk of logits (LogitRows::Chunked), not every row; HINT: use Model::lm_loss_chunked, or make the activations with LogitRows::All"
    ))
}

/// A Linear layer's forward: `y (m, n) = x (m, k) · W^T`, W stored `(n, k)`.
/// (`llama2_runtime::linear_fwd`, the product the fused ops' unfused
/// compositions use too.)
pub(crate) fn linear<B: Backend>(be: &B, rows: Rows, y: ViewMut<B>, x: View<B>, w: View<B>, (m, n, k): (usize, usize, usize)) -> Result<()> {
    Ok(linear_fwd(be, y, x, w, m, n, k, rows == Rows::Invariant)?)
}

/// Where the rows of one trunk call sit: `None` for a dense batch at one
/// position, or per-sequence positions and lengths (kept on the host; the
/// kernels read them as [`Ragged`]).
pub(crate) struct RowPlan {
    pub pos0: usize,
    pub ragged: Option<(Vec<u32>, Vec<u32>)>,
}

impl RowPlan {
    pub(crate) fn ragged(&self) -> Option<Ragged<'_>> {
        self.ragged.as_ref().map(|(p, l)| Ragged { pos0: p, len: l })
    }

    /// Dense when every sequence is full and starts at the same position
    /// (the fast path every backend has had from the start); ragged else.
    pub(crate) fn new(b: usize, t: usize, lens: Lens, cache: Option<&[usize]>) -> Result<Self> {
        if let Some(l) = lens {
            if l.len() != b {
                return Err(ModelError::Invalid(format!("{} sequence lengths for a batch of {b}", l.len())));
            }
            if let Some((s, &x)) = l.iter().enumerate().find(|(_, &x)| x as usize > t) {
                return Err(ModelError::Invalid(format!("sequence {s} has length {x}, more than the {t} positions of the batch")));
            }
        }
        let full = lens.is_none_or(|l| l.iter().all(|&x| x as usize == t));
        let pos: Vec<usize> = cache.map_or(vec![0; b], |c| c.to_vec());
        let uniform = pos.iter().all(|&p| p == pos[0]);
        if full && uniform {
            return Ok(RowPlan { pos0: pos.first().copied().unwrap_or(0), ragged: None });
        }
        let p = pos.iter().map(|&x| x as u32).collect();
        let l = match lens {
            Some(l) => l.to_vec(),
            None => vec![t as u32; b],
        };
        Ok(RowPlan { pos0: 0, ragged: Some((p, l)) })
    }
}

impl<B: Backend> Model<B> {
    /// Runs the LM on `tokens (b, t)` and leaves the logits in
    /// `acts.a.logits`. With `cache`, the tokens continue the cached
    /// sequences and the cache grows by `t`.
    pub fn forward(&self, be: &B, acts: &mut Acts<B>, tokens: &[u32], cache: Option<&mut KvCache<B>>) -> Result<()> {
        self.forward_ragged(be, acts, tokens, None, cache)
    }

    /// [`Model::forward`] of a ragged batch: trunk, then the LM head.
    pub fn forward_ragged(&self, be: &B, acts: &mut Acts<B>, tokens: &[u32], lens: Lens, cache: Option<&mut KvCache<B>>) -> Result<()> {
        self.trunk(be, acts, tokens, lens, cache)?;
        self.lm_head(be, acts, lens)
    }

    /// The trunk: embedding, layers, final norm. Leaves the hidden states
    /// `(b*t, C)` in `acts.a.lnf` (padding rows hold values that are never
    /// used). With `cache`, sequence `s` continues at position
    /// `cache.lens[s]` and the cache grows by its valid tokens. A cache with
    /// more sequences than the batch serves its first `b` (a batched decoder
    /// keeps its live sequences in the first rows); the others are untouched.
    pub fn trunk(&self, be: &B, acts: &mut Acts<B>, tokens: &[u32], lens: Lens, mut cache: Option<&mut KvCache<B>>) -> Result<()> {
        let cfg = &self.cfg;
        let (b, t, ls) = (acts.b, acts.t, acts.layers);
        let n = b * t;
        let (c, nh, nkv, hd) = (cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (qd, kvd, inter, vocab) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.vocab_size);
        let eps = cfg.rms_eps as f32;
        if tokens.len() != n {
            return Err(ModelError::Invalid(format!("forward: {} tokens for a batch of {b} x {t}", tokens.len())));
        }
        if let Some(kc) = &cache {
            if kc.b < b {
                return Err(ModelError::Invalid(format!("forward: cache for {} sequences, batch of {b}", kc.b)));
            }
            if t > kc.cap {
                return Err(ModelError::Invalid(format!("forward: {t} new positions per sequence exceed the cache length {}", kc.cap)));
            }
            if let Some(s) = (0..b).find(|&s| kc.lens[s] + lens.map_or(t, |l| l.get(s).copied().unwrap_or(0) as usize) > kc.cap) {
                return Err(ModelError::Invalid(format!("forward: sequence {s}: {} cached + new positions exceed the cache length {}", kc.lens[s], kc.cap)));
            }
        }
        let plan = RowPlan::new(b, t, lens, cache.as_deref().map(|kc| &kc.lens[..b]))?;
        let max_pos = match &plan.ragged {
            None => plan.pos0 + t,
            Some((p, l)) => p.iter().zip(l).map(|(&p, &l)| (p + l) as usize).max().unwrap_or(0),
        };
        if max_pos > self.rope_len {
            return Err(ModelError::Invalid(format!(
                "sequence of {max_pos} positions is longer than max_position_embeddings {}; HINT: use a shorter --seq-len or raise max_position_embeddings in config.json",
                self.rope_len
            )));
        }
        let rg = plan.ragged();
        let pos0 = plan.pos0;
        let inv = Rows::of(acts.training);
        let qkv = QkvShape { b, t, c, n_head: nh, n_kv_head: nkv, hd, pos0 };
        let a = &mut acts.a;

        be.embedding_fwd(vm(&mut a.emb), tokens, self.p(P::Embed, 0), vocab, c)?;
        for l in 0..cfg.n_layers {
            let s = if ls == 1 { 0 } else { l }; // storage slot of this layer
            let res_in: View<B> = if l == 0 { v(&a.emb) } else { v(&a.res_out).part(if ls == 1 { 0 } else { l - 1 }, ls)? };
            if l == 0 {
                // later layers' ln1 comes from the previous layer's fused residual add
                be.rmsnorm_fwd(vm(&mut a.ln1).part(s, ls)?, vm(&mut a.rstd1).part(s, ls)?, res_in, self.p(P::Ln1, l), n, c, eps)?;
            }
            // q, k, v and RoPE: one fused GEMM where the backend has it
            be.qkv_fwd(
                vm(&mut a.q).part(s, ls)?,
                vm(&mut a.k).part(s, ls)?,
                vm(&mut a.v).part(s, ls)?,
                vm(&mut a.proj),
                v(&a.ln1).part(s, ls)?,
                self.p_span(P::Wq, P::Wv, l)?,
                v(&self.rope),
                qkv,
                rg,
                inv == Rows::Invariant,
            )?;
            match (cache.as_deref_mut(), rg) {
                (None, None) => {
                    let shape = AttnShape::causal(b, t, nh, nkv, hd);
                    be.attention_fwd(
                        vm(&mut a.att).part(s, ls)?,
                        vm(&mut a.lse).part(s, ls)?,
                        v(&a.q).part(s, ls)?,
                        v(&a.k).part(s, ls)?,
                        v(&a.v).part(s, ls)?,
                        shape,
                    )?;
                }
                (None, Some(r)) => {
                    let shape = AttnShape::causal(b, t, nh, nkv, hd);
                    be.attention_fwd_ragged(
                        vm(&mut a.att).part(s, ls)?,
                        vm(&mut a.lse).part(s, ls)?,
                        v(&a.q).part(s, ls)?,
                        v(&a.k).part(s, ls)?,
                        v(&a.v).part(s, ls)?,
                        shape,
                        r,
                    )?;
                }
                (Some(kc), None) => {
                    let (cap, nl) = (kc.cap, cfg.n_layers);
                    be.kv_write(vm(&mut kc.k).part(l, nl)?, v(&a.k).part(s, ls)?, b, t, cap, kvd, pos0)?;
                    be.kv_write(vm(&mut kc.v).part(l, nl)?, v(&a.v).part(s, ls)?, b, t, cap, kvd, pos0)?;
                    let shape = AttnShape { b, tq: t, tkv: pos0 + t, cap, n_head: nh, n_kv_head: nkv, hd };
                    be.attention_fwd(
                        vm(&mut a.att).part(s, ls)?,
                        vm(&mut a.lse).part(s, ls)?,
                        v(&a.q).part(s, ls)?,
                        v(&kc.k).part(l, nl)?,
                        v(&kc.v).part(l, nl)?,
                        shape,
                    )?;
                }
                (Some(kc), Some(r)) => {
                    let (cap, nl) = (kc.cap, cfg.n_layers);
                    be.kv_write_ragged(vm(&mut kc.k).part(l, nl)?, v(&a.k).part(s, ls)?, b, t, cap, kvd, r)?;
                    be.kv_write_ragged(vm(&mut kc.v).part(l, nl)?, v(&a.v).part(s, ls)?, b, t, cap, kvd, r)?;
                    // every key row of the cache may be valid for some sequence; each
                    // sequence reads only its own 0..=position (r)
                    let shape = AttnShape { b, tq: t, tkv: cap, cap, n_head: nh, n_kv_head: nkv, hd };
                    be.attention_fwd_ragged(
                        vm(&mut a.att).part(s, ls)?,
                        vm(&mut a.lse).part(s, ls)?,
                        v(&a.q).part(s, ls)?,
                        v(&kc.k).part(l, nl)?,
                        v(&kc.v).part(l, nl)?,
                        shape,
                        r,
                    )?;
                }
            }
            linear(be, inv, vm(&mut a.scratch), v(&a.att).part(s, ls)?, self.p(P::Wo, l), (n, c, qd))?;
            be.add_rmsnorm_fwd(
                vm(&mut a.res_mid).part(s, ls)?,
                vm(&mut a.ln2).part(s, ls)?,
                vm(&mut a.rstd2).part(s, ls)?,
                res_in,
                v(&a.scratch),
                self.p(P::Ln2, l),
                n,
                c,
                eps,
            )?;
            be.mlp_in_fwd(
                vm(&mut a.gate).part(s, ls)?,
                vm(&mut a.up).part(s, ls)?,
                vm(&mut a.h).part(s, ls)?,
                vm(&mut a.proj),
                v(&a.ln2).part(s, ls)?,
                self.p_span(P::Wgate, P::Wup, l)?,
                (n, inter, c),
                inv == Rows::Invariant,
            )?;
            linear(be, inv, vm(&mut a.scratch), v(&a.h).part(s, ls)?, self.p(P::Wdown, l), (n, c, inter))?;
            // the residual add with the norm that reads it: the next layer's ln1, or the final norm
            if l + 1 < cfg.n_layers {
                let s1 = if ls == 1 { 0 } else { l + 1 };
                be.add_rmsnorm_fwd(
                    vm(&mut a.res_out).part(s, ls)?,
                    vm(&mut a.ln1).part(s1, ls)?,
                    vm(&mut a.rstd1).part(s1, ls)?,
                    v(&a.res_mid).part(s, ls)?,
                    v(&a.scratch),
                    self.p(P::Ln1, l + 1),
                    n,
                    c,
                    eps,
                )?;
            } else {
                be.add_rmsnorm_fwd(
                    vm(&mut a.res_out).part(s, ls)?,
                    vm(&mut a.lnf),
                    vm(&mut a.rstdf),
                    v(&a.res_mid).part(s, ls)?,
                    v(&a.scratch),
                    self.p(P::Lnf, 0),
                    n,
                    c,
                    eps,
                )?;
            }
        }
        if let Some(kc) = cache {
            for (sq, len) in kc.lens.iter_mut().take(b).enumerate() {
                *len += lens.map_or(t, |l| l[sq] as usize);
            }
        }
        Ok(())
    }

    /// Row index (in the `(b*t)` rows) of the last valid token of each
    /// sequence.
    pub fn last_rows(b: usize, t: usize, lens: Lens) -> Result<Vec<u32>> {
        (0..b)
            .map(|r| {
                let l = lens.map_or(t, |l| l[r] as usize);
                if l == 0 {
                    return Err(ModelError::Invalid(format!("sequence {r} is empty: it has no last token")));
                }
                Ok((r * t + l - 1) as u32)
            })
            .collect()
    }

    /// The LM head on the trunk's hidden states: logits `(b*t, V)` for
    /// `LogitRows::All`, or `(b, V)` at each sequence's last valid row for
    /// `LogitRows::Last`.
    pub fn lm_head(&self, be: &B, acts: &mut Acts<B>, lens: Lens) -> Result<()> {
        let cfg = &self.cfg;
        if cfg.head != Head::Lm {
            return Err(ModelError::Invalid("this model has a score head, not a language-model head; HINT: score it (reward model) instead".into()));
        }
        let (b, t) = (acts.b, acts.t);
        let (c, vocab) = (cfg.hidden, cfg.vocab_size);
        let inv = Rows::of(acts.training);
        let a = &mut acts.a;
        match acts.rows {
            LogitRows::All => linear(be, inv, vm(&mut a.logits), v(&a.lnf), self.p(self.head_id(), 0), (b * t, vocab, c))?,
            LogitRows::Last => {
                let rows = Self::last_rows(b, t, lens)?;
                be.gather_rows(vm(&mut a.head_in), v(&a.lnf), &rows, c)?;
                linear(be, inv, vm(&mut a.logits), v(&a.head_in), self.p(self.head_id(), 0), (b, vocab, c))?;
            }
            LogitRows::Chunked(_) => return Err(chunked_refused("lm_head")),
        }
        Ok(())
    }

    /// The score head at rows `at` of the trunk's hidden states (e.g.
    /// [`Model::last_rows`] for a reward model, every row for a value
    /// model): returns one scalar per row. Keeps the rows in `acts` for
    /// [`Model::backward_from`].
    pub fn score_rows(&self, be: &B, acts: &mut Acts<B>, at: &[u32]) -> Result<Vec<f32>> {
        let cfg = &self.cfg;
        if cfg.head != Head::Score {
            return Err(ModelError::Invalid(
                "this model has a language-model head, not a score head; HINT: `train-tool rm init` makes a reward model from it".into(),
            ));
        }
        let (m, c, n) = (at.len(), cfg.hidden, acts.b * acts.t);
        if m > n {
            return Err(ModelError::Invalid(format!("score: {m} rows asked of a batch of {n}")));
        }
        let inv = Rows::of(acts.training);
        let a = &mut acts.a;
        be.gather_rows(vm(&mut a.head_in).sub(0, m * c)?, v(&a.lnf), at, c)?;
        linear(be, inv, vm(&mut a.scores).sub(0, m)?, v(&a.head_in).sub(0, m * c)?, self.p(P::Score, 0), (m, 1, c))?;
        let mut out = vec![0f32; m];
        be.download(v(&a.scores).sub(0, m)?, &mut out)?;
        Ok(out)
    }

    /// Cross-entropy of the logits in `acts` against `targets` (one per logit
    /// row; negative = ignored). Returns (sum of losses, number of counted
    /// targets). With `grad`, the logits are replaced by dlogits for
    /// [`Model::backward`] (`CeGrad::Uniform(1/count)` for the mean loss,
    /// `CeGrad::PerRow` for one weight per row).
    pub fn loss(&self, be: &B, acts: &mut Acts<B>, targets: &[i32], grad: CeGrad) -> Result<(f64, usize)> {
        if let LogitRows::Chunked(_) = acts.rows {
            return Err(chunked_refused("loss"));
        }
        let rows = acts.logit_rows();
        if targets.len() != rows {
            return Err(ModelError::Invalid(format!("loss: {} targets for {rows} rows of logits", targets.len())));
        }
        let a = &mut acts.a;
        let losses: ViewMut<B> = vm(&mut a.losses).sub(0, rows)?;
        be.cross_entropy(vm(&mut a.logits), losses, targets, self.cfg.vocab_size, grad)?;
        let mut host = vec![0f32; rows];
        be.download(v(&a.losses).sub(0, rows)?, &mut host)?;
        let count = targets.iter().filter(|&&x| x >= 0).count();
        Ok((host.iter().map(|&x| x as f64).sum(), count))
    }

    /// `log p(target)` of every logit row (and the entropy of each row's
    /// softmax with `entropy`) from the fused cross-entropy kernel in one
    /// pass; the logits stay as they are (a later [`Model::loss`] with a
    /// gradient can still use them).
    pub fn token_logprobs(&self, be: &B, acts: &mut Acts<B>, targets: &[i32], entropy: bool) -> Result<TokenStats> {
        if let LogitRows::Chunked(_) = acts.rows {
            return Err(chunked_refused("token_logprobs"));
        }
        let rows = acts.logit_rows();
        if targets.len() != rows {
            return Err(ModelError::Invalid(format!("token_logprobs: {} targets for {rows} rows of logits", targets.len())));
        }
        let vocab = self.cfg.vocab_size;
        let a = &mut acts.a;
        let mut logprobs = vec![0f32; rows];
        let ent = if entropy {
            be.cross_entropy_entropy(vm(&mut a.logits), vm(&mut a.losses).sub(0, rows)?, vm(&mut a.entropy).sub(0, rows)?, targets, vocab, CeGrad::None)?;
            let mut e = vec![0f32; rows];
            be.download(v(&a.entropy).sub(0, rows)?, &mut e)?;
            Some(e)
        } else {
            be.cross_entropy(vm(&mut a.logits), vm(&mut a.losses).sub(0, rows)?, targets, vocab, CeGrad::None)?;
            None
        };
        be.download(v(&a.losses).sub(0, rows)?, &mut logprobs)?;
        for x in logprobs.iter_mut() {
            *x = 0.0 - *x; // the kernel's loss is -log p; ignored rows stay +0
        }
        Ok(TokenStats { logprobs, entropy: ent })
    }
}

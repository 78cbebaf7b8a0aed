//! Activation buffers: what forward stores for backward (`ActTensors`), and
//! the activation gradients backward reuses across layers (`GradActTensors`).
//! Each field is its own buffer, so an op that reads one activation and
//! writes another borrows two distinct fields (the borrow checker sees every
//! read and write).
//!
//! `layers` is `L` when training (every layer's activations are kept for
//! backward) and 1 for inference (one slot reused by every layer).
//!
//! Public items: [`ActTensors`], [`Acts`], [`GradActTensors`], [`GradActs`],
//! [`LogitRows`].

use crate::config::{Config, Head};
use crate::error::{ModelError, Result};
use llama2_runtime::{Backend, BufKind, Buffer};

/// Which rows get logits (LM head).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitRows {
    /// every position: `(b*t, V)` (training, scoring)
    All,
    /// the last (valid) position of each sequence: `(b, V)` (generation)
    Last,
    /// every position, `R` rows at a time (training): only an `(R, V)`
    /// scratch is stored, never `(b*t, V)`; the logits, the loss and the
    /// head's gradient come from [`Model::lm_loss_chunked`] (the plain
    /// `lm_head`/`loss` refuse these activations). `R` in `1..=b*t`.
    ///
    /// [`Model::lm_loss_chunked`]: crate::model::Model::lm_loss_chunked
    Chunked(usize),
}

/// Activations kept by forward. `N = b*t`, `S` = stored layers (L or 1).
pub struct ActTensors<T> {
    pub emb: T,     // (N, C)        token embeddings (layer 0's input)
    pub ln1: T,     // (S, N, C)     input_layernorm output
    pub rstd1: T,   // (S, N)        F32
    pub q: T,       // (S, N, q_dim) after RoPE
    pub k: T,       // (S, N, kv_dim) after RoPE
    pub v: T,       // (S, N, kv_dim)
    pub att: T,     // (S, N, q_dim) attention output before o_proj
    pub lse: T,     // (S, b, n_heads, t) F32
    pub res_mid: T, // (S, N, C)     residual after attention
    pub ln2: T,     // (S, N, C)     post_attention_layernorm output
    pub rstd2: T,   // (S, N)        F32
    pub gate: T,    // (S, N, I)
    pub up: T,      // (S, N, I)
    pub h: T,       // (S, N, I)     silu(gate) * up
    pub res_out: T, // (S, N, C)     residual after the MLP (layer output)
    pub lnf: T,     // (N, C)        final norm output: the trunk's hidden states
    pub rstdf: T,   // (N)           F32
    pub head_in: T, // (M, C)        hidden states of the rows a head reads (LM: b rows for LogitRows::Last; score: up to N)
    pub logits: T,  // (N, b or R, V) logits (R: a chunk's scratch); overwritten by dlogits (LM head only)
    pub losses: T,  // (N or R)      F32 per-position loss
    pub entropy: T, // (N)           F32 per-position entropy of the softmax (LM head only)
    pub scores: T,  // (N)           F32 score head outputs of the rows read (score head only)
    pub scratch: T, // (N, C)        o_proj / down_proj output before the residual add
    pub proj: T,    // (N, P)        a fused projection's output ([q|k|v] or [gate|up] rows), on a backend that fuses them (else empty)
}

/// The activations of one forward shape.
pub struct Acts<B: Backend> {
    pub b: usize,
    pub t: usize,
    /// stored layers: L (training) or 1 (inference)
    pub layers: usize,
    /// made for training (backward follows); inference uses the
    /// row-invariant products (`Backend::matmul_rows`)
    pub training: bool,
    pub rows: LogitRows,
    pub a: ActTensors<B::Buf>,
}

impl<B: Backend> Acts<B> {
    /// Allocates activations for batches of `b` sequences of `t` tokens.
    /// The head's buffers follow `cfg.head`: logits (and `rows`) for the LM
    /// head, row scores for a score head (no vocabulary-sized buffer).
    pub fn new(be: &B, cfg: &Config, b: usize, t: usize, training: bool, rows: LogitRows) -> Result<Self> {
        let n = b * t;
        if let LogitRows::Chunked(r) = rows {
            if r == 0 || r > n {
                return Err(ModelError::Invalid(format!(
                    "logit chunk of {r} rows for a batch of {b} x {t} = {n} rows; HINT: use 1..={n} rows per chunk, or turn chunking off (0)"
                )));
            }
        }
        let s = if training { cfg.n_layers } else { 1 };
        let (c, q, kv, i, v) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.vocab_size);
        let lm = cfg.head == Head::Lm;
        let nl = match rows {
            LogitRows::All => n,
            LogitRows::Last => b,
            LogitRows::Chunked(r) => r,
        };
        let head_rows = match (lm, rows) {
            (true, LogitRows::All | LogitRows::Chunked(_)) => 0,
            (true, LogitRows::Last) => b,
            (false, _) => n,
        };
        let act = |len: usize| be.alloc(len, BufKind::Act);
        let f32b = |len: usize| be.alloc(len, BufKind::F32);
        let a = ActTensors {
            emb: act(n * c)?,
            ln1: act(s * n * c)?,
            rstd1: f32b(s * n)?,
            q: act(s * n * q)?,
            k: act(s * n * kv)?,
            v: act(s * n * kv)?,
            att: act(s * n * q)?,
            lse: f32b(s * b * cfg.n_heads * t)?,
            res_mid: act(s * n * c)?,
            ln2: act(s * n * c)?,
            rstd2: f32b(s * n)?,
            gate: act(s * n * i)?,
            up: act(s * n * i)?,
            h: act(s * n * i)?,
            res_out: act(s * n * c)?,
            lnf: act(n * c)?,
            rstdf: f32b(n)?,
            head_in: act(head_rows * c)?,
            logits: act(if lm { nl * v } else { 0 })?,
            losses: f32b(if lm { nl } else { 0 })?,
            entropy: f32b(if lm { nl } else { 0 })?,
            scores: f32b(if lm { 0 } else { n })?,
            scratch: act(n * c)?,
            proj: act(proj_len(be, cfg, n))?,
        };
        Ok(Acts { b, t, layers: s, training, rows, a })
    }

    /// Number of rows that have logits (with `LogitRows::Chunked`: every
    /// row, a chunk at a time).
    pub fn logit_rows(&self) -> usize {
        match self.rows {
            LogitRows::All | LogitRows::Chunked(_) => self.b * self.t,
            LogitRows::Last => self.b,
        }
    }

    /// Elements allocated for these activations, over every buffer (the
    /// memory a run holds: times 4 bytes for f32 buffers, 2 for bf16).
    pub fn elements(&self) -> usize {
        let a = &self.a;
        [
            &a.emb, &a.ln1, &a.rstd1, &a.q, &a.k, &a.v, &a.att, &a.lse, &a.res_mid, &a.ln2, &a.rstd2, &a.gate, &a.up, &a.h, &a.res_out, &a.lnf, &a.rstdf,
            &a.head_in, &a.logits, &a.losses, &a.entropy, &a.scores, &a.scratch, &a.proj,
        ]
        .iter()
        .map(|x| x.len())
        .sum()
    }

    /// Bytes of activation memory if every element is stored in f32: what
    /// [`Acts::new`] allocates for this shape, plus what [`GradActs::new`]
    /// allocates when `training` (backward's buffers). `fused`: the
    /// backend runs fused projections (`Backend::fuses_projections`, the
    /// CUDA backend), which adds their scratch. A bf16 backend stores the
    /// same elements in half the bytes (its f32 buffers, rstd, lse and the
    /// losses, are a small share).
    pub fn bytes_f32(cfg: &Config, b: usize, t: usize, training: bool, rows: LogitRows, fused: bool) -> usize {
        let n = b * t;
        let s = if training { cfg.n_layers } else { 1 };
        let (c, q, kv, i, v) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.vocab_size);
        let per_layer = n * (4 * c + 2 * q + 2 * kv + 3 * i + 2) + b * cfg.n_heads * t;
        let head = match (cfg.head, rows) {
            (Head::Lm, LogitRows::All) => n * (v + 2),
            (Head::Lm, LogitRows::Last) => b * (v + 2 + c),
            (Head::Lm, LogitRows::Chunked(r)) => r * (v + 2),
            (Head::Score, _) => n * (c + 1),
        };
        let proj = if fused { n * (q + 2 * kv).max(2 * i) } else { 0 };
        let grads = if training {
            let score = if cfg.head == Head::Score { n * (c + 1) } else { 0 };
            n * (2 * c + 2 * q + 2 * kv + 3 * i) + score + proj
        } else {
            0
        };
        4 * (s * per_layer + n * (3 * c + 1) + head + proj + grads)
    }
}

impl<B: Backend> GradActs<B> {
    /// Elements allocated for these gradients, over every buffer.
    pub fn elements(&self) -> usize {
        let g = &self.g;
        [&g.dres, &g.dln, &g.dq, &g.dk, &g.dv, &g.datt, &g.dgate, &g.dup, &g.dh, &g.dhead_in, &g.dscores, &g.dproj].iter().map(|x| x.len()).sum()
    }
}

/// Elements of the scratch a fused projection writes (`Backend::qkv_fwd`,
/// `Backend::mlp_in_fwd` and their backwards): `n` rows of the wider of
/// `[q|k|v]` and `[gate|up]` where the backend fuses them, none elsewhere.
fn proj_len<B: Backend>(be: &B, cfg: &Config, n: usize) -> usize {
    if be.fuses_projections() {
        n * (cfg.q_dim() + 2 * cfg.kv_dim()).max(2 * cfg.intermediate)
    } else {
        0
    }
}

/// Activation gradients of one layer, reused by every layer in backward.
pub struct GradActTensors<T> {
    pub dres: T,     // (N, C)      gradient of the residual stream (accumulated)
    pub dln: T,      // (N, C)      gradient of a norm's output
    pub dq: T,       // (N, q_dim)
    pub dk: T,       // (N, kv_dim)
    pub dv: T,       // (N, kv_dim)
    pub datt: T,     // (N, q_dim)
    pub dgate: T,    // (N, I)
    pub dup: T,      // (N, I)
    pub dh: T,       // (N, I)
    pub dhead_in: T, // (N, C)   gradient of the rows a score head read (score head only)
    pub dscores: T,  // (N)      d(loss)/d(score) of those rows (score head only)
    pub dproj: T,    // (N, P)   a fused projection's packed gradient (as `ActTensors::proj`)
}

/// Activation gradients for batches of `b x t`.
pub struct GradActs<B: Backend> {
    pub b: usize,
    pub t: usize,
    pub g: GradActTensors<B::Buf>,
}

impl<B: Backend> GradActs<B> {
    pub fn new(be: &B, cfg: &Config, b: usize, t: usize) -> Result<Self> {
        let n = b * t;
        let (c, q, kv, i) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate);
        let score = cfg.head == Head::Score;
        let act = |len: usize| be.alloc(len, BufKind::Act);
        Ok(GradActs {
            b,
            t,
            g: GradActTensors {
                dres: act(n * c)?,
                dln: act(n * c)?,
                dq: act(n * q)?,
                dk: act(n * kv)?,
                dv: act(n * kv)?,
                datt: act(n * q)?,
                dgate: act(n * i)?,
                dup: act(n * i)?,
                dh: act(n * i)?,
                dhead_in: act(if score { n * c } else { 0 })?,
                dscores: act(if score { n } else { 0 })?,
                dproj: act(proj_len(be, cfg, n))?,
            },
        })
    }
}

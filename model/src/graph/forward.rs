//! Forward pass of `LlamaForCausalLM`, one launcher call per line, read top
//! to bottom (transformers `modeling_llama.py`):
//!
//! ```text
//! x = embed(tokens)
//! per layer: h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))), n1 = rmsnorm1(x)
//!            x = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),                n2 = rmsnorm2(h)
//! logits = lm_head(rmsnorm_f(x))
//! ```
//!
//! With a [`KvCache`], the new keys and values are written into the cache
//! at positions `cache.len ..` and attention reads the whole cache
//! (incremental decoding); without one, attention is causal over the batch.
//!
//! Public items: [`Model::forward`], [`Model::loss`].

use crate::acts::{Acts, LogitRows};
use crate::error::{ModelError, Result};
use crate::model::{KvCache, Model};
use crate::params::ParamId as P;
use llama2_runtime::{v, vm, AttnShape, Backend, CeGrad, Gemm, GradWrite, RopeShape, Trans, View, ViewMut};

impl<B: Backend> Model<B> {
    /// Runs the model on `tokens (b, t)` and leaves the logits in
    /// `acts.a.logits`. With `cache`, the tokens continue the cached
    /// sequences (positions `cache.len ..`) and the cache grows by `t`.
    pub fn forward(&self, be: &B, acts: &mut Acts<B>, tokens: &[u32], mut cache: Option<&mut KvCache<B>>) -> Result<()> {
        let cfg = &self.cfg;
        let (b, t, ls) = (acts.b, acts.t, acts.layers);
        let n = b * t;
        let (c, nh, nkv, hd) = (cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (qd, kvd, inter, vocab) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.vocab_size);
        let eps = cfg.rms_eps as f32;
        if tokens.len() != n {
            return Err(ModelError::Invalid(format!("forward: {} tokens for a batch of {b} x {t}", tokens.len())));
        }
        let pos0 = match &cache {
            Some(kc) => {
                if kc.b != b {
                    return Err(ModelError::Invalid(format!("forward: cache for {} sequences, batch of {b}", kc.b)));
                }
                if kc.len + t > kc.cap {
                    return Err(ModelError::Invalid(format!("forward: {} cached + {t} new positions exceed the cache length {}", kc.len, kc.cap)));
                }
                kc.len
            }
            None => 0,
        };
        if pos0 + t > self.rope_len {
            return Err(ModelError::Invalid(format!(
                "sequence of {} positions is longer than max_position_embeddings {}; HINT: use a shorter --seq-len or raise max_position_embeddings in config.json",
                pos0 + t,
                self.rope_len
            )));
        }
        let lin = |m: usize, nn: usize, k: usize| Gemm { m, n: nn, k, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite };
        let rope_q = RopeShape { b, t, heads: nh, hd, pos0 };
        let rope_k = RopeShape { b, t, heads: nkv, hd, pos0 };
        let a = &mut acts.a;

        be.embedding_fwd(vm(&mut a.emb), tokens, self.p(P::Embed, 0), vocab, c)?;
        for l in 0..cfg.n_layers {
            let s = if ls == 1 { 0 } else { l }; // storage slot of this layer
            let res_in: View<B> = if l == 0 { v(&a.emb) } else { v(&a.res_out).part(if ls == 1 { 0 } else { l - 1 }, ls)? };
            be.rmsnorm_fwd(vm(&mut a.ln1).part(s, ls)?, vm(&mut a.rstd1).part(s, ls)?, res_in, self.p(P::Ln1, l), n, c, eps)?;
            be.matmul(vm(&mut a.q).part(s, ls)?, v(&a.ln1).part(s, ls)?, self.p(P::Wq, l), lin(n, qd, c))?;
            be.matmul(vm(&mut a.k).part(s, ls)?, v(&a.ln1).part(s, ls)?, self.p(P::Wk, l), lin(n, kvd, c))?;
            be.matmul(vm(&mut a.v).part(s, ls)?, v(&a.ln1).part(s, ls)?, self.p(P::Wv, l), lin(n, kvd, c))?;
            be.rope_fwd(vm(&mut a.q).part(s, ls)?, v(&self.rope), rope_q)?;
            be.rope_fwd(vm(&mut a.k).part(s, ls)?, v(&self.rope), rope_k)?;
            match cache.as_deref_mut() {
                None => {
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
                Some(kc) => {
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
            }
            be.matmul(vm(&mut a.scratch), v(&a.att).part(s, ls)?, self.p(P::Wo, l), lin(n, c, qd))?;
            be.add(vm(&mut a.res_mid).part(s, ls)?, res_in, v(&a.scratch))?;
            be.rmsnorm_fwd(vm(&mut a.ln2).part(s, ls)?, vm(&mut a.rstd2).part(s, ls)?, v(&a.res_mid).part(s, ls)?, self.p(P::Ln2, l), n, c, eps)?;
            be.matmul(vm(&mut a.gate).part(s, ls)?, v(&a.ln2).part(s, ls)?, self.p(P::Wgate, l), lin(n, inter, c))?;
            be.matmul(vm(&mut a.up).part(s, ls)?, v(&a.ln2).part(s, ls)?, self.p(P::Wup, l), lin(n, inter, c))?;
            be.swiglu_fwd(vm(&mut a.h).part(s, ls)?, v(&a.gate).part(s, ls)?, v(&a.up).part(s, ls)?)?;
            be.matmul(vm(&mut a.scratch), v(&a.h).part(s, ls)?, self.p(P::Wdown, l), lin(n, c, inter))?;
            be.add(vm(&mut a.res_out).part(s, ls)?, v(&a.res_mid).part(s, ls)?, v(&a.scratch))?;
        }
        let last = if ls == 1 { 0 } else { cfg.n_layers - 1 };
        be.rmsnorm_fwd(vm(&mut a.lnf), vm(&mut a.rstdf), v(&a.res_out).part(last, ls)?, self.p(P::Lnf, 0), n, c, eps)?;
        match acts.rows {
            LogitRows::All => be.matmul(vm(&mut a.logits), v(&a.lnf), self.p(self.head_id(), 0), lin(n, vocab, c))?,
            LogitRows::Last => {
                let rows: Vec<u32> = (0..b).map(|r| (r * t + t - 1) as u32).collect();
                be.gather_rows(vm(&mut a.lnf_last), v(&a.lnf), &rows, c)?;
                be.matmul(vm(&mut a.logits), v(&a.lnf_last), self.p(self.head_id(), 0), lin(b, vocab, c))?;
            }
        }
        if let Some(kc) = cache {
            kc.len += t;
        }
        Ok(())
    }

    /// Cross-entropy of the logits in `acts` against `targets` (one per logit
    /// row; negative = ignored). Returns (sum of losses, number of counted
    /// targets). With `grad`, the logits are replaced by dlogits for
    /// [`Model::backward`] (`CeGrad::Uniform(1/count)` for the mean loss).
    pub fn loss(&self, be: &B, acts: &mut Acts<B>, targets: &[i32], grad: CeGrad) -> Result<(f64, usize)> {
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
}

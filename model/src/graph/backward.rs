//! Backward pass, written out by hand in exactly the reverse order of
//! [`Model::forward`](crate::model::Model::forward). Starts from the head's
//! gradient ([`HeadGrad`]): the dlogits that
//! [`Model::loss`](crate::model::Model::loss) left in `acts.a.logits` (LM
//! head), or d(loss)/d(score) of the rows that
//! [`Model::score_rows`](crate::model::Model::score_rows) read (score head),
//! or d(loss)/d(final hidden) that
//! [`Model::lm_loss_chunked`](crate::model::Model::lm_loss_chunked) left in
//! `gacts.g.dln` (the LM head in row chunks).
//! Ragged batches ([`Lens`]) give padding rows zero gradients.
//!
//! Write rules: every parameter gradient is accumulated (`+=`) into `grads`
//! (so micro-batches accumulate; zero it before the first); activation
//! gradients are overwritten, except `dres` (the residual stream), which
//! collects `+=` from both branches of each block.
//!
//! Public items: [`Model::backward`], [`Model::backward_from`], [`HeadGrad`].

use crate::acts::{Acts, GradActs, LogitRows};
use crate::config::Head;
use crate::error::{ModelError, Result};
use crate::forward::{Lens, RowPlan};
use crate::model::{param_span_mut, param_view_mut, Model};
use crate::params::ParamId as P;
use llama2_runtime::{v, vm, AttnShape, Backend, Gemm, GradWrite, QkvShape, Trans, View};

/// Where backward starts.
#[derive(Clone, Copy, Debug)]
pub enum HeadGrad<'a> {
    /// the LM head: dlogits are in `acts.a.logits` (all rows)
    Logits,
    /// d(loss)/d(final hidden states) is already in `gacts.g.dln` (all
    /// `b*t` rows) and the head's parameter gradient in `grads`: left there
    /// by [`Model::lm_loss_chunked`] (the LM head in row chunks)
    Hidden,
    /// the score head: `dscore[i]` = d(loss)/d(score of row `at[i]`), for
    /// the rows the last [`Model::score_rows`] call read
    Score { at: &'a [u32], dscore: &'a [f32] },
}

impl<B: Backend> Model<B> {
    /// Accumulates d(loss)/d(parameter) into `grads` (an F32 buffer laid out
    /// like the parameters), for the batch `tokens (b, t)` that the forward
    /// in `acts` ran on (training activations, all logit rows).
    pub fn backward(&self, be: &B, acts: &Acts<B>, gacts: &mut GradActs<B>, grads: &mut B::Buf, tokens: &[u32]) -> Result<()> {
        self.backward_from(be, acts, gacts, grads, tokens, None, HeadGrad::Logits)
    }

    /// [`Model::backward`] of a (possibly ragged) batch from the gradient of
    /// either head.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_from(&self, be: &B, acts: &Acts<B>, gacts: &mut GradActs<B>, grads: &mut B::Buf, tokens: &[u32], lens: Lens, head: HeadGrad) -> Result<()> {
        let cfg = &self.cfg;
        let (b, t, ls) = (acts.b, acts.t, acts.layers);
        let n = b * t;
        let (c, nh, nkv, hd) = (cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (qd, inter, vocab) = (cfg.q_dim(), cfg.intermediate, cfg.vocab_size);
        let logits_needed = matches!(head, HeadGrad::Logits) && cfg.head == Head::Lm;
        if ls != cfg.n_layers || (logits_needed && acts.rows != LogitRows::All) {
            return Err(ModelError::Invalid(
                "backward needs training activations (all layers, and all logit rows from HeadGrad::Logits); HINT: activations with LogitRows::Chunked start backward from HeadGrad::Hidden after Model::lm_loss_chunked".into(),
            ));
        }
        if gacts.b != b || gacts.t != t || tokens.len() != n || grads.len() != self.layout.total {
            return Err(ModelError::Invalid(format!(
                "backward: buffers for {}x{} / {} tokens / {} grads, batch {b}x{t}",
                gacts.b,
                gacts.t,
                tokens.len(),
                grads.len()
            )));
        }
        let plan = RowPlan::new(b, t, lens, None)?;
        let rg = plan.ragged();
        use llama2_runtime::Buffer;
        let lay = &self.layout;
        // dx = dy · W           (the input gradient of y = x W^T)
        let dx = |m: usize, nn: usize, k: usize, write: GradWrite| Gemm { m, n: nn, k, ta: Trans::N, tb: Trans::N, write };
        // dW += dy^T · x        (the weight gradient, accumulated)
        let dw = |m: usize, nn: usize, k: usize| Gemm { m, n: nn, k, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate };
        let ow = GradWrite::Overwrite;
        let acc = GradWrite::Accumulate;
        let qkv = QkvShape { b, t, c, n_head: nh, n_kv_head: nkv, hd, pos0: 0 };
        let shape = AttnShape::causal(b, t, nh, nkv, hd);
        let a = &acts.a;
        let g = &mut gacts.g;

        // the head
        match (head, cfg.head) {
            (HeadGrad::Logits, Head::Lm) => {
                let hid = self.head_id();
                be.matmul(vm(&mut g.dln), v(&a.logits), self.p(hid, 0), dx(n, c, vocab, ow))?;
                be.matmul(param_view_mut::<B>(grads, lay, hid, 0), v(&a.logits), v(&a.lnf), dw(vocab, c, n))?;
            }
            (HeadGrad::Score { at, dscore }, Head::Score) => {
                let m = at.len();
                if dscore.len() != m || m > n {
                    return Err(ModelError::Invalid(format!("backward: {} score gradients for {m} rows (batch of {n})", dscore.len())));
                }
                be.upload(vm(&mut g.dscores).sub(0, m)?, dscore)?;
                // score (m, 1) = head_in (m, C) · w (1, C)^T
                be.matmul(vm(&mut g.dhead_in).sub(0, m * c)?, v(&g.dscores).sub(0, m)?, self.p(P::Score, 0), dx(m, c, 1, ow))?;
                be.matmul(param_view_mut::<B>(grads, lay, P::Score, 0), v(&g.dscores).sub(0, m)?, v(&a.head_in).sub(0, m * c)?, dw(1, c, m))?;
                be.zero(vm(&mut g.dln))?;
                be.scatter_add_rows(vm(&mut g.dln), v(&g.dhead_in).sub(0, m * c)?, at, c)?;
            }
            // d(hidden) is in g.dln already (Model::lm_loss_chunked)
            (HeadGrad::Hidden, _) => {}
            _ => return Err(ModelError::Invalid(format!("backward: the head gradient does not match the model's {:?} head", cfg.head))),
        }
        // final norm
        let last = v(&a.res_out).part(cfg.n_layers - 1, ls)?;
        be.rmsnorm_bwd(vm(&mut g.dres), param_view_mut::<B>(grads, lay, P::Lnf, 0), v(&g.dln), last, self.p(P::Lnf, 0), v(&a.rstdf), n, c, ow)?;

        for l in (0..cfg.n_layers).rev() {
            let res_in: View<B> = if l == 0 { v(&a.emb) } else { v(&a.res_out).part(l - 1, ls)? };
            // MLP: res_out = res_mid + down(silu(gate(n2)) * up(n2))
            be.matmul(vm(&mut g.dh), v(&g.dres), self.p(P::Wdown, l), dx(n, inter, c, ow))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wdown, l), v(&g.dres), v(&a.h).part(l, ls)?, dw(c, inter, n))?;
            be.mlp_in_bwd(
                vm(&mut g.dln),
                param_span_mut::<B>(grads, lay, P::Wgate, P::Wup, l)?,
                vm(&mut g.dgate),
                vm(&mut g.dup),
                vm(&mut g.dproj),
                v(&g.dh),
                v(&a.gate).part(l, ls)?,
                v(&a.up).part(l, ls)?,
                v(&a.ln2).part(l, ls)?,
                self.p_span(P::Wgate, P::Wup, l)?,
                (n, inter, c),
            )?;
            be.rmsnorm_bwd(
                vm(&mut g.dres),
                param_view_mut::<B>(grads, lay, P::Ln2, l),
                v(&g.dln),
                v(&a.res_mid).part(l, ls)?,
                self.p(P::Ln2, l),
                v(&a.rstd2).part(l, ls)?,
                n,
                c,
                acc,
            )?;
            // attention: res_mid = res_in + o(attn(rope(q(n1)), rope(k(n1)), v(n1)))
            be.matmul(vm(&mut g.datt), v(&g.dres), self.p(P::Wo, l), dx(n, qd, c, ow))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wo, l), v(&g.dres), v(&a.att).part(l, ls)?, dw(c, qd, n))?;
            match rg {
                None => {
                    be.attention_bwd(
                        vm(&mut g.dq),
                        vm(&mut g.dk),
                        vm(&mut g.dv),
                        v(&g.datt),
                        v(&a.q).part(l, ls)?,
                        v(&a.k).part(l, ls)?,
                        v(&a.v).part(l, ls)?,
                        v(&a.att).part(l, ls)?,
                        v(&a.lse).part(l, ls)?,
                        shape,
                    )?;
                }
                Some(r) => {
                    be.attention_bwd_ragged(
                        vm(&mut g.dq),
                        vm(&mut g.dk),
                        vm(&mut g.dv),
                        v(&g.datt),
                        v(&a.q).part(l, ls)?,
                        v(&a.k).part(l, ls)?,
                        v(&a.v).part(l, ls)?,
                        v(&a.att).part(l, ls)?,
                        v(&a.lse).part(l, ls)?,
                        shape,
                        r,
                    )?;
                }
            }
            // RoPE backward, q, k, v input and weight gradients: one GEMM each where the backend fuses them
            be.qkv_bwd(
                vm(&mut g.dln),
                param_span_mut::<B>(grads, lay, P::Wq, P::Wv, l)?,
                vm(&mut g.dq),
                vm(&mut g.dk),
                v(&g.dv),
                vm(&mut g.dproj),
                v(&a.ln1).part(l, ls)?,
                self.p_span(P::Wq, P::Wv, l)?,
                v(&self.rope),
                qkv,
                rg,
            )?;
            be.rmsnorm_bwd(
                vm(&mut g.dres),
                param_view_mut::<B>(grads, lay, P::Ln1, l),
                v(&g.dln),
                res_in,
                self.p(P::Ln1, l),
                v(&a.rstd1).part(l, ls)?,
                n,
                c,
                acc,
            )?;
        }
        be.embedding_bwd(param_view_mut::<B>(grads, lay, P::Embed, 0), v(&g.dres), tokens, vocab, c)?;
        Ok(())
    }
}

//! Backward pass, written out by hand in exactly the reverse order of
//! [`Model::forward`](crate::model::Model::forward). Starts from the dlogits
//! that [`Model::loss`](crate::model::Model::loss) left in `acts.a.logits`.
//!
//! Write rules: every parameter gradient is accumulated (`+=`) into `grads`
//! (so micro-batches accumulate; zero it before the first); activation
//! gradients are overwritten, except `dres` (the residual stream), which
//! collects `+=` from both branches of each block.
//!
//! Public items: [`Model::backward`].

use crate::acts::{Acts, GradActs, LogitRows};
use crate::error::{ModelError, Result};
use crate::model::{param_view_mut, Model};
use crate::params::ParamId as P;
use llama2_runtime::{v, vm, AttnShape, Backend, Gemm, GradWrite, RopeShape, Trans, View};

impl<B: Backend> Model<B> {
    /// Accumulates d(loss)/d(parameter) into `grads` (an F32 buffer laid out
    /// like the parameters), for the batch `tokens (b, t)` that the forward
    /// in `acts` ran on (training activations, all logit rows).
    pub fn backward(&self, be: &B, acts: &Acts<B>, gacts: &mut GradActs<B>, grads: &mut B::Buf, tokens: &[u32]) -> Result<()> {
        let cfg = &self.cfg;
        let (b, t, ls) = (acts.b, acts.t, acts.layers);
        let n = b * t;
        let (c, nh, nkv, hd) = (cfg.hidden, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let (qd, kvd, inter, vocab) = (cfg.q_dim(), cfg.kv_dim(), cfg.intermediate, cfg.vocab_size);
        if ls != cfg.n_layers || acts.rows != LogitRows::All {
            return Err(ModelError::Invalid("backward needs training activations (all layers, all logit rows)".into()));
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
        use llama2_runtime::Buffer;
        let lay = &self.layout;
        // dx = dy · W           (the input gradient of y = x W^T)
        let dx = |m: usize, nn: usize, k: usize, write: GradWrite| Gemm { m, n: nn, k, ta: Trans::N, tb: Trans::N, write };
        // dW += dy^T · x        (the weight gradient, accumulated)
        let dw = |m: usize, nn: usize, k: usize| Gemm { m, n: nn, k, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate };
        let ow = GradWrite::Overwrite;
        let acc = GradWrite::Accumulate;
        let rope_q = RopeShape { b, t, heads: nh, hd, pos0: 0 };
        let rope_k = RopeShape { b, t, heads: nkv, hd, pos0: 0 };
        let shape = AttnShape::causal(b, t, nh, nkv, hd);
        let a = &acts.a;
        let g = &mut gacts.g;
        let head = self.head_id();

        // output head and final norm
        be.matmul(vm(&mut g.dln), v(&a.logits), self.p(head, 0), dx(n, c, vocab, ow))?;
        be.matmul(param_view_mut::<B>(grads, lay, head, 0), v(&a.logits), v(&a.lnf), dw(vocab, c, n))?;
        let last = v(&a.res_out).part(cfg.n_layers - 1, ls)?;
        be.rmsnorm_bwd(vm(&mut g.dres), param_view_mut::<B>(grads, lay, P::Lnf, 0), v(&g.dln), last, self.p(P::Lnf, 0), v(&a.rstdf), n, c, ow)?;

        for l in (0..cfg.n_layers).rev() {
            let res_in: View<B> = if l == 0 { v(&a.emb) } else { v(&a.res_out).part(l - 1, ls)? };
            // MLP: res_out = res_mid + down(silu(gate(n2)) * up(n2))
            be.matmul(vm(&mut g.dh), v(&g.dres), self.p(P::Wdown, l), dx(n, inter, c, ow))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wdown, l), v(&g.dres), v(&a.h).part(l, ls)?, dw(c, inter, n))?;
            be.swiglu_bwd(vm(&mut g.dgate), vm(&mut g.dup), v(&g.dh), v(&a.gate).part(l, ls)?, v(&a.up).part(l, ls)?)?;
            be.matmul(vm(&mut g.dln), v(&g.dgate), self.p(P::Wgate, l), dx(n, c, inter, ow))?;
            be.matmul(vm(&mut g.dln), v(&g.dup), self.p(P::Wup, l), dx(n, c, inter, acc))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wgate, l), v(&g.dgate), v(&a.ln2).part(l, ls)?, dw(inter, c, n))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wup, l), v(&g.dup), v(&a.ln2).part(l, ls)?, dw(inter, c, n))?;
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
            be.rope_bwd(vm(&mut g.dq), v(&self.rope), rope_q)?;
            be.rope_bwd(vm(&mut g.dk), v(&self.rope), rope_k)?;
            be.matmul(vm(&mut g.dln), v(&g.dq), self.p(P::Wq, l), dx(n, c, qd, ow))?;
            be.matmul(vm(&mut g.dln), v(&g.dk), self.p(P::Wk, l), dx(n, c, kvd, acc))?;
            be.matmul(vm(&mut g.dln), v(&g.dv), self.p(P::Wv, l), dx(n, c, kvd, acc))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wq, l), v(&g.dq), v(&a.ln1).part(l, ls)?, dw(qd, c, n))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wk, l), v(&g.dk), v(&a.ln1).part(l, ls)?, dw(kvd, c, n))?;
            be.matmul(param_view_mut::<B>(grads, lay, P::Wv, l), v(&g.dv), v(&a.ln1).part(l, ls)?, dw(kvd, c, n))?;
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

//! The LM head and the cross-entropy in row chunks, so the full logits
//! `(b*t, V)` are never stored (issue 17, the fused training step). For
//! each chunk of rows `[r0, r1)` of the trunk's hidden states, with `m =
//! r1 - r0` and `W = lm_head (V, C)`:
//!
//! ```text
//! logits  (m, V)  = lnf[r0:r1] (m, C) · W^T             Backend::matmul, into the (R, V) scratch
//! losses  (m)     , logits := dlogits                   Backend::cross_entropy (fused fwd + bwd, in place)
//! dW      (V, C) += dlogits^T · lnf[r0:r1]              Backend::matmul (parameter grad: +=)
//! dln[r0:r1] (m, C) = dlogits · W                       Backend::matmul (activation grad: =)
//! ```
//!
//! then backward starts from `gacts.g.dln` ([`HeadGrad::Hidden`]). The
//! same ops as [`Model::lm_head`] + [`Model::loss`] + the head of
//! [`Model::backward`], row chunk by row chunk: only existing backend ops,
//! so every backend has it. The loss and its scaling are those of
//! [`Model::loss`] (`CeGrad::Uniform(s)`, `CeGrad::PerRow(coef)` sliced per
//! chunk; targets < 0 ignored). Results differ from the unchunked path only
//! by the order of the `dW` sums (chunk by chunk instead of one product).
//!
//! The activations must be made with `LogitRows::Chunked(R)`: they hold an
//! `(R, V)` scratch instead of `(b*t, V)` logits.
//!
//! Public items: [`Model::lm_loss_chunked`].
//!
//! [`HeadGrad::Hidden`]: crate::backward::HeadGrad::Hidden

use crate::acts::{Acts, GradActs, LogitRows};
use crate::config::Head;
use crate::error::{ModelError, Result};
use crate::forward::{linear, Rows};
use crate::model::{param_view_mut, Model};
use llama2_runtime::{v, vm, Backend, Buffer, CeGrad, Gemm, GradWrite, Trans};

impl<B: Backend> Model<B> {
    /// Logits, cross-entropy against `targets (b*t)` (negative = ignored)
    /// and, with `back = Some((gacts, grads))`, the head's backward, chunk
    /// by chunk (module doc). Returns (sum of losses, counted targets) as
    /// [`Model::loss`] does. With a gradient (`grad` not `CeGrad::None`,
    /// which needs `back`): d(lm_head) is accumulated (`+=`) into `grads`
    /// and d(final hidden) overwrites `gacts.g.dln`, for
    /// `backward_from(.., HeadGrad::Hidden)`.
    pub fn lm_loss_chunked(
        &self,
        be: &B,
        acts: &mut Acts<B>,
        targets: &[i32],
        grad: CeGrad,
        back: Option<(&mut GradActs<B>, &mut B::Buf)>,
    ) -> Result<(f64, usize)> {
        let cfg = &self.cfg;
        if cfg.head != Head::Lm {
            return Err(ModelError::Invalid("lm_loss_chunked: this model has a score head, not a language-model head".into()));
        }
        let LogitRows::Chunked(r) = acts.rows else {
            return Err(ModelError::Invalid(
                "lm_loss_chunked: the activations hold every row's logits; HINT: make them with LogitRows::Chunked(rows), or use Model::loss".into(),
            ));
        };
        let (b, t) = (acts.b, acts.t);
        let n = b * t;
        let (c, vocab) = (cfg.hidden, cfg.vocab_size);
        if targets.len() != n {
            return Err(ModelError::Invalid(format!("lm_loss_chunked: {} targets for {n} rows", targets.len())));
        }
        if let CeGrad::PerRow(coef) = grad {
            if coef.len() != n {
                return Err(ModelError::Invalid(format!("lm_loss_chunked: {} row coefficients for {n} rows", coef.len())));
            }
        }
        let mut back = match (grad, back) {
            (CeGrad::None, None) => None,
            (CeGrad::None, Some(_)) => return Err(ModelError::Invalid("lm_loss_chunked: gradient buffers given but no gradient asked (CeGrad::None)".into())),
            (_, None) => return Err(ModelError::Invalid("lm_loss_chunked: a gradient asked but no gradient buffers given".into())),
            (_, Some((gacts, grads))) => {
                if gacts.b != b || gacts.t != t || grads.len() != self.layout.total || !acts.training {
                    return Err(ModelError::Invalid(format!(
                        "lm_loss_chunked: gradient buffers for {}x{} / {} grads (training activations: {}), batch {b}x{t}",
                        gacts.b,
                        gacts.t,
                        grads.len(),
                        acts.training
                    )));
                }
                Some((gacts, grads))
            }
        };
        let hid = self.head_id();
        let rows = Rows::of(acts.training);
        let a = &mut acts.a;
        let mut host = vec![0f32; r];
        let mut sum = 0f64;
        let mut r0 = 0;
        while r0 < n {
            let m = r.min(n - r0);
            let lnf = v(&a.lnf).sub(r0 * c, m * c)?;
            // logits (m, V) = lnf[r0:r1] (m, C) · W^T
            linear(be, rows, vm(&mut a.logits).sub(0, m * vocab)?, lnf, self.p(hid, 0), (m, vocab, c))?;
            let g = match grad {
                CeGrad::PerRow(coef) => CeGrad::PerRow(&coef[r0..r0 + m]),
                other => other,
            };
            be.cross_entropy(vm(&mut a.logits).sub(0, m * vocab)?, vm(&mut a.losses).sub(0, m)?, &targets[r0..r0 + m], vocab, g)?;
            be.download(v(&a.losses).sub(0, m)?, &mut host[..m])?;
            for &x in &host[..m] {
                sum += x as f64; // row by row, in the order Model::loss sums
            }
            if let Some((gacts, grads)) = back.as_mut() {
                let dlogits = v(&a.logits).sub(0, m * vocab)?;
                // dW (V, C) += dlogits^T (V, m) · lnf[r0:r1] (m, C)
                let dw = Gemm { m: vocab, n: c, k: m, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate };
                be.matmul(param_view_mut::<B>(grads, &self.layout, hid, 0), dlogits, v(&a.lnf).sub(r0 * c, m * c)?, dw)?;
                // dln[r0:r1] (m, C) = dlogits (m, V) · W (V, C)
                let dx = Gemm { m, n: c, k: vocab, ta: Trans::N, tb: Trans::N, write: GradWrite::Overwrite };
                be.matmul(vm(&mut gacts.g.dln).sub(r0 * c, m * c)?, v(&a.logits).sub(0, m * vocab)?, self.p(hid, 0), dx)?;
            }
            r0 += m;
        }
        let count = targets.iter().filter(|&&x| x >= 0).count();
        Ok((sum, count))
    }
}

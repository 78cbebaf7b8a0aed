//! The backend seam: the fixed op set of the Llama model.
//!
//! The model's forward and backward are written once against [`Backend`];
//! the CPU backend ([`crate::cpu::CpuBackend`], f32) and the CUDA backend
//! (feature `cuda`: bf16 activations, fp32 master weights and optimizer
//! state, fp32 accumulation) implement it.
//!
//! Memory: a backend owns its buffers ([`Backend::Buf`]); each is allocated
//! with a [`BufKind`] that tells the backend which precision to store it in.
//! Ops take windows of buffers: [`View`] (shared) and [`ViewMut`]
//! (exclusive), so the borrow checker sees which buffers an op reads and
//! which it writes. Host data (token ids, targets) is passed as slices.
//!
//! Every op documents its shapes and its write rule (`=` or `+=`).

use crate::error::{Result, RtError};
pub use llama2_kernels::adamw::AdamWStep;
pub use llama2_kernels::attention::AttnShape;
pub use llama2_kernels::cross_entropy::CeGrad;
pub use llama2_kernels::matmul::Gemm;
pub use llama2_kernels::rope::RopeShape;
pub use llama2_kernels::{GradWrite, Ragged, Trans};

/// What a buffer holds, so the backend can choose its precision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufKind {
    /// activations and activation gradients (CPU f32; CUDA bf16)
    Act,
    /// model weights (CPU f32; CUDA fp32 master copy + bf16 working copy)
    Param,
    /// always f32: parameter gradients, optimizer moments, norm statistics
    /// (rstd, lse), losses, the RoPE table
    F32,
}

/// An owned buffer of a backend.
pub trait Buffer: Send + Sync + Sized {
    /// the backend that owns buffers of this type
    type Be: Backend<Buf = Self>;
    /// number of elements
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn kind(&self) -> BufKind;
}

/// A shared window `[off, off + len)` of a buffer.
pub struct View<'a, B: Backend> {
    pub buf: &'a B::Buf,
    pub off: usize,
    pub len: usize,
}

impl<B: Backend> Clone for View<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for View<'_, B> {}

/// An exclusive window `[off, off + len)` of a buffer.
pub struct ViewMut<'a, B: Backend> {
    pub buf: &'a mut B::Buf,
    pub off: usize,
    pub len: usize,
}

impl<'a, B: Backend> View<'a, B> {
    /// The whole buffer.
    pub fn of(buf: &'a B::Buf) -> Self {
        View { buf, off: 0, len: buf.len() }
    }
    /// Elements `[off, off + len)` of this window.
    pub fn sub(self, off: usize, len: usize) -> Result<Self> {
        check_range(off, len, self.len)?;
        Ok(View { buf: self.buf, off: self.off + off, len })
    }
    /// Part `i` of `n` equal parts (layer `i` of a per-layer buffer).
    pub fn part(self, i: usize, n: usize) -> Result<Self> {
        let len = part_len(self.len, n)?;
        self.sub(i * len, len)
    }
}

impl<'a, B: Backend> ViewMut<'a, B> {
    /// The whole buffer.
    pub fn of(buf: &'a mut B::Buf) -> Self {
        let len = buf.len();
        ViewMut { buf, off: 0, len }
    }
    /// Elements `[off, off + len)` of this window.
    pub fn sub(self, off: usize, len: usize) -> Result<Self> {
        check_range(off, len, self.len)?;
        Ok(ViewMut { buf: self.buf, off: self.off + off, len })
    }
    /// Part `i` of `n` equal parts.
    pub fn part(self, i: usize, n: usize) -> Result<Self> {
        let len = part_len(self.len, n)?;
        self.sub(i * len, len)
    }
    /// A shorter-lived exclusive window over the same elements.
    pub fn reborrow(&mut self) -> ViewMut<'_, B> {
        ViewMut { buf: self.buf, off: self.off, len: self.len }
    }
    /// A shared window over the same elements.
    pub fn as_view(&self) -> View<'_, B> {
        View { buf: self.buf, off: self.off, len: self.len }
    }
}

fn check_range(off: usize, len: usize, have: usize) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= have => Ok(()),
        _ => Err(RtError::Range { off, len, have }),
    }
}

fn part_len(len: usize, n: usize) -> Result<usize> {
    if n == 0 || !len.is_multiple_of(n) {
        return Err(RtError::Range { off: 0, len: n, have: len });
    }
    Ok(len / n)
}

/// Shorthand for a shared window of a whole buffer.
pub fn v<T: Buffer>(buf: &T) -> View<'_, T::Be> {
    View::of(buf)
}

/// Shorthand for an exclusive window of a whole buffer.
pub fn vm<T: Buffer>(buf: &mut T) -> ViewMut<'_, T::Be> {
    ViewMut::of(buf)
}

/// Shapes of the attention block's input projections
/// ([`Backend::qkv_fwd`], [`Backend::qkv_bwd`]): `n = b*t` rows of width
/// `c` in, `q (n, n_head*hd)`, `k, v (n, n_kv_head*hd)` out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QkvShape {
    pub b: usize,
    pub t: usize,
    pub c: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hd: usize,
    /// position of row 0 of every sequence (dense batches; a ragged call
    /// takes its positions from its [`Ragged`])
    pub pos0: usize,
}

impl QkvShape {
    pub fn rows(&self) -> usize {
        self.b * self.t
    }
    pub fn q_dim(&self) -> usize {
        self.n_head * self.hd
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.hd
    }
    /// Rows of the stacked weight `[Wq; Wk; Wv]`: `q_dim + 2 kv_dim`.
    pub fn width(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }
    pub fn rope_q(&self) -> RopeShape {
        RopeShape { b: self.b, t: self.t, heads: self.n_head, hd: self.hd, pos0: self.pos0 }
    }
    pub fn rope_k(&self) -> RopeShape {
        RopeShape { b: self.b, t: self.t, heads: self.n_kv_head, hd: self.hd, pos0: self.pos0 }
    }
}

/// `y (m, n) = x (m, k) · W^T` (W stored `(n, k)`, `=`): through
/// [`Backend::matmul_rows`] when `invariant` (inference), else
/// [`Backend::matmul`] (training).
#[allow(clippy::too_many_arguments)]
pub fn linear_fwd<B: Backend>(be: &B, y: ViewMut<B>, x: View<B>, w: View<B>, m: usize, n: usize, k: usize, invariant: bool) -> Result<()> {
    if invariant {
        be.matmul_rows(y, x, w, m, n, k)
    } else {
        be.matmul(y, x, w, Gemm { m, n, k, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite })
    }
}

fn check_op_len(op: &'static str, what: &str, have: usize, want: usize) -> Result<()> {
    if have != want {
        return Err(RtError::Op { op, msg: format!("{what} holds {have} elements, the shape needs {want}") });
    }
    Ok(())
}

/// The unfused compositions the fused ops' defaults run: the reference a
/// fusing backend is checked against, and its fallback. Each is exactly
/// the sequence of ops the model ran before the op existed.
pub mod unfused {
    use super::*;

    /// The unfused composition behind [`Backend::qkv_fwd`]'s default (also
    /// the fallback of a backend that overrides it).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_fwd<B: Backend>(
        be: &B,
        q: ViewMut<B>,
        k: ViewMut<B>,
        v: ViewMut<B>,
        scratch: ViewMut<B>,
        x: View<B>,
        w: View<B>,
        table: View<B>,
        s: QkvShape,
        r: Option<Ragged>,
        invariant: bool,
    ) -> Result<()> {
        let _ = scratch;
        const OP: &str = "qkv_fwd";
        let (n, c, qd, kvd) = (s.rows(), s.c, s.q_dim(), s.kv_dim());
        check_op_len(OP, "w", w.len, s.width() * c)?;
        let (mut q, mut k) = (q, k);
        linear_fwd(be, q.reborrow(), x, w.sub(0, qd * c)?, n, qd, c, invariant)?;
        linear_fwd(be, k.reborrow(), x, w.sub(qd * c, kvd * c)?, n, kvd, c, invariant)?;
        linear_fwd(be, v, x, w.sub((qd + kvd) * c, kvd * c)?, n, kvd, c, invariant)?;
        match r {
            None => {
                be.rope_fwd(q, table, s.rope_q())?;
                be.rope_fwd(k, table, s.rope_k())
            }
            Some(r) => {
                be.rope_fwd_ragged(q, table, s.rope_q(), r)?;
                be.rope_fwd_ragged(k, table, s.rope_k(), r)
            }
        }
    }

    /// The unfused composition behind [`Backend::qkv_bwd`]'s default (also
    /// the fallback of a backend that overrides it).
    #[allow(clippy::too_many_arguments)]
    pub fn qkv_bwd<B: Backend>(
        be: &B,
        dx: ViewMut<B>,
        dw: ViewMut<B>,
        dq: ViewMut<B>,
        dk: ViewMut<B>,
        dv: View<B>,
        scratch: ViewMut<B>,
        x: View<B>,
        w: View<B>,
        table: View<B>,
        s: QkvShape,
        r: Option<Ragged>,
    ) -> Result<()> {
        let _ = scratch;
        const OP: &str = "qkv_bwd";
        let (n, c, qd, kvd) = (s.rows(), s.c, s.q_dim(), s.kv_dim());
        check_op_len(OP, "w", w.len, s.width() * c)?;
        check_op_len(OP, "dw", dw.len, s.width() * c)?;
        let (mut dx, mut dw, mut dq, mut dk) = (dx, dw, dq, dk);
        match r {
            None => {
                be.rope_bwd(dq.reborrow(), table, s.rope_q())?;
                be.rope_bwd(dk.reborrow(), table, s.rope_k())?;
            }
            Some(r) => {
                be.rope_bwd_ragged(dq.reborrow(), table, s.rope_q(), r)?;
                be.rope_bwd_ragged(dk.reborrow(), table, s.rope_k(), r)?;
            }
        }
        let gx = |m: usize, nn: usize, k: usize, write: GradWrite| Gemm { m, n: nn, k, ta: Trans::N, tb: Trans::N, write };
        let gw = |m: usize, nn: usize, k: usize| Gemm { m, n: nn, k, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate };
        let parts = [(0, qd), (qd * c, kvd), ((qd + kvd) * c, kvd)];
        let grads = [dq.as_view(), dk.as_view(), dv];
        for (i, (&(off, rows), g)) in parts.iter().zip(grads).enumerate() {
            let write = if i == 0 { GradWrite::Overwrite } else { GradWrite::Accumulate };
            be.matmul(dx.reborrow(), g, w.sub(off, rows * c)?, gx(n, c, rows, write))?;
        }
        for (&(off, rows), g) in parts.iter().zip([dq.as_view(), dk.as_view(), dv]) {
            be.matmul(dw.reborrow().sub(off, rows * c)?, g, x, gw(rows, c, n))?;
        }
        Ok(())
    }

    /// The unfused composition behind [`Backend::mlp_in_fwd`]'s default (also
    /// the fallback of a backend that overrides it).
    #[allow(clippy::too_many_arguments)]
    pub fn mlp_in_fwd<B: Backend>(
        be: &B,
        gate: ViewMut<B>,
        up: ViewMut<B>,
        h: ViewMut<B>,
        scratch: ViewMut<B>,
        x: View<B>,
        w: View<B>,
        (n, i, c): (usize, usize, usize),
        invariant: bool,
    ) -> Result<()> {
        let _ = scratch;
        check_op_len("mlp_in_fwd", "w", w.len, 2 * i * c)?;
        let (mut gate, mut up) = (gate, up);
        linear_fwd(be, gate.reborrow(), x, w.sub(0, i * c)?, n, i, c, invariant)?;
        linear_fwd(be, up.reborrow(), x, w.sub(i * c, i * c)?, n, i, c, invariant)?;
        be.swiglu_fwd(h, gate.as_view(), up.as_view())
    }

    /// The unfused composition behind [`Backend::mlp_in_bwd`]'s default (also
    /// the fallback of a backend that overrides it).
    #[allow(clippy::too_many_arguments)]
    pub fn mlp_in_bwd<B: Backend>(
        be: &B,
        dx: ViewMut<B>,
        dw: ViewMut<B>,
        dgate: ViewMut<B>,
        dup: ViewMut<B>,
        scratch: ViewMut<B>,
        dh: View<B>,
        gate: View<B>,
        up: View<B>,
        x: View<B>,
        w: View<B>,
        (n, i, c): (usize, usize, usize),
    ) -> Result<()> {
        let _ = scratch;
        check_op_len("mlp_in_bwd", "w", w.len, 2 * i * c)?;
        check_op_len("mlp_in_bwd", "dw", dw.len, 2 * i * c)?;
        let (mut dx, mut dw, mut dgate, mut dup) = (dx, dw, dgate, dup);
        be.swiglu_bwd(dgate.reborrow(), dup.reborrow(), dh, gate, up)?;
        let gx = |write: GradWrite| Gemm { m: n, n: c, k: i, ta: Trans::N, tb: Trans::N, write };
        let gw = Gemm { m: i, n: c, k: n, ta: Trans::T, tb: Trans::N, write: GradWrite::Accumulate };
        be.matmul(dx.reborrow(), dgate.as_view(), w.sub(0, i * c)?, gx(GradWrite::Overwrite))?;
        be.matmul(dx.reborrow(), dup.as_view(), w.sub(i * c, i * c)?, gx(GradWrite::Accumulate))?;
        be.matmul(dw.reborrow().sub(0, i * c)?, dgate.as_view(), x, gw)?;
        be.matmul(dw.reborrow().sub(i * c, i * c)?, dup.as_view(), x, gw)
    }
}

/// The op set of the Llama model. All shapes are row-major; `n` is a number
/// of rows (`b * t`), `c` the model width.
pub trait Backend: Send + Sync + Sized + 'static {
    type Buf: Buffer<Be = Self>;

    /// "cpu" or "cuda:N"
    fn name(&self) -> String;

    // ---- memory -------------------------------------------------------
    /// A zero-filled buffer of `n` elements.
    fn alloc(&self, n: usize, kind: BufKind) -> Result<Self::Buf>;
    /// Host f32 → buffer window (converted to the buffer's precision).
    fn upload(&self, dst: ViewMut<Self>, src: &[f32]) -> Result<()>;
    /// Buffer window → host f32. For a `Param` buffer: the master copy.
    fn download(&self, src: View<Self>, dst: &mut [f32]) -> Result<()>;
    /// `dst = 0`
    fn zero(&self, dst: ViewMut<Self>) -> Result<()>;
    /// `dst = src` (same length)
    fn copy(&self, dst: ViewMut<Self>, src: View<Self>) -> Result<()>;
    /// Waits until all queued work is done (a no-op on the CPU).
    fn synchronize(&self) -> Result<()>;
    /// Runs `f`, a sequence of many small ops (a decoding loop), where the
    /// ops are cheapest to issue. The CPU backend runs it on a thread of its
    /// pool, so each op runs there directly instead of handing its work to
    /// the pool and sleeping until it is done (two trips through the OS
    /// scheduler per op). Elsewhere: `f()` here.
    fn run_batched<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    // ---- layers -------------------------------------------------------
    /// `out (n, c) = table (v, c)[tokens (n)]`
    fn embedding_fwd(&self, out: ViewMut<Self>, tokens: &[u32], table: View<Self>, v: usize, c: usize) -> Result<()>;
    /// `dtable (v, c)[tokens[i]] += dout (n, c)[i]` (parameter grad: `+=`)
    fn embedding_bwd(&self, dtable: ViewMut<Self>, dout: View<Self>, tokens: &[u32], v: usize, c: usize) -> Result<()>;
    /// `C (m, n) (=|+=) op(A) (m, k) · op(B) (k, n)`
    fn matmul(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, g: Gemm) -> Result<()>;
    /// `C (m, n) = A (m, k) · B^T`, B stored `(n, k)` (a Linear layer's
    /// forward), ROW-INVARIANT where the backend can: each row of C is
    /// computed from the same row of A by the same instructions whatever
    /// `m` and the other rows, so a sequence's hidden states, logits and
    /// sampled tokens do not depend on the batch it is decoded or scored in.
    /// Inference uses it; training uses [`Backend::matmul`]. Default: that
    /// product (no invariance promised). CPU:
    /// `llama2_kernels::matmul_rows`.
    fn matmul_rows(&self, c: ViewMut<Self>, a: View<Self>, b: View<Self>, m: usize, n: usize, k: usize) -> Result<()> {
        self.matmul(c, a, b, Gemm { m, n, k, ta: Trans::N, tb: Trans::T, write: GradWrite::Overwrite })
    }
    /// `out (n, c) = x·rstd ⊙ weight`, `rstd (n)` saved (F32 buffer)
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_fwd(&self, out: ViewMut<Self>, rstd: ViewMut<Self>, inp: View<Self>, weight: View<Self>, n: usize, c: usize, eps: f32) -> Result<()>;
    /// `dinp (n, c)` per `dinp_write`; `dweight (c) +=`
    #[allow(clippy::too_many_arguments)]
    fn rmsnorm_bwd(
        &self,
        dinp: ViewMut<Self>,
        dweight: ViewMut<Self>,
        dout: View<Self>,
        inp: View<Self>,
        weight: View<Self>,
        rstd: View<Self>,
        n: usize,
        c: usize,
        dinp_write: GradWrite,
    ) -> Result<()>;
    /// The residual add and the RMSNorm after it: `res (n, c) = a + b`, then
    /// `out (n, c) = res·rstd ⊙ weight` with `rstd (n)` saved (all `=`).
    /// Default: [`Backend::add`] then [`Backend::rmsnorm_fwd`] (the unfused
    /// reference; the CPU backend keeps it). CUDA: one kernel
    /// (`add_rmsnorm_fwd_bf16`), one pass over the row.
    #[allow(clippy::too_many_arguments)]
    fn add_rmsnorm_fwd(
        &self,
        res: ViewMut<Self>,
        out: ViewMut<Self>,
        rstd: ViewMut<Self>,
        a: View<Self>,
        b: View<Self>,
        weight: View<Self>,
        n: usize,
        c: usize,
        eps: f32,
    ) -> Result<()> {
        let mut res = res;
        self.add(res.reborrow(), a, b)?;
        self.rmsnorm_fwd(out, rstd, res.as_view(), weight, n, c, eps)
    }
    /// In place on `x (b, t, heads, hd)`; `table (max_t, hd/2, 2)` F32 from
    /// `llama2_kernels::rope::rope_table`
    fn rope_fwd(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()>;
    /// In place on the gradient `(b, t, heads, hd)`
    fn rope_bwd(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()>;
    /// Causal GQA attention: `out (b, tq, n_head, hd)`, `lse (b, n_head, tq)`
    /// F32; `k, v (b, cap, n_kv_head, hd)`. See `llama2_kernels::attention`.
    fn attention_fwd(&self, out: ViewMut<Self>, lse: ViewMut<Self>, q: View<Self>, k: View<Self>, v: View<Self>, s: AttnShape) -> Result<()>;
    /// Backward (training shape): `dq, dk, dv` overwritten.
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
    ) -> Result<()>;
    /// [`Backend::rope_fwd`] on a ragged batch: row `i` of sequence `bi` at
    /// position `r.pos0[bi] + i`; padding rows untouched (`s.pos0` unused)
    fn rope_fwd_ragged(&self, x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()>;
    /// [`Backend::rope_bwd`] on a ragged batch
    fn rope_bwd_ragged(&self, dx: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()>;
    /// [`Backend::attention_fwd`] on a ragged batch (`llama2_kernels::Ragged`):
    /// query row `i` of sequence `bi` sits at `r.pos0[bi] + i` and sees keys
    /// `0 ..= r.pos0[bi] + i`; padding rows (`i >= r.len[bi]`) get `out` 0,
    /// `lse` 0, and no key past a sequence's last valid position is read
    #[allow(clippy::too_many_arguments)]
    fn attention_fwd_ragged(&self, out: ViewMut<Self>, lse: ViewMut<Self>, q: View<Self>, k: View<Self>, v: View<Self>, s: AttnShape, r: Ragged) -> Result<()>;
    /// [`Backend::attention_bwd`] on a ragged training batch (every
    /// `r.pos0` 0): padding rows get zero gradients
    #[allow(clippy::too_many_arguments)]
    fn attention_bwd_ragged(
        &self,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()>;
    /// The attention block's input projections with RoPE (all `=`):
    /// `q = x·Wq^T`, `k = x·Wk^T`, `v = x·Wv^T`, then RoPE on `q` and `k`
    /// (dense at `s.pos0`, or per `r`: padding rows un-rotated). `x (n, c)`;
    /// `w` holds one layer's `[Wq; Wk; Wv]` stacked by rows,
    /// `(q_dim + 2 kv_dim, c)` (the parameter arena keeps them adjacent);
    /// `invariant`: the inference product ([`Backend::matmul_rows`]).
    /// `scratch`: `(n, q_dim + 2 kv_dim)` on a backend whose
    /// [`Backend::fuses_projections`] is true (any length otherwise; it is
    /// not touched). Default: three products and the RoPE ops, the unfused
    /// reference (the CPU keeps it). CUDA: one GEMM into `scratch`, then one
    /// kernel that rotates q and k and splits the rows into q, k, v.
    #[allow(clippy::too_many_arguments)]
    fn qkv_fwd(
        &self,
        q: ViewMut<Self>,
        k: ViewMut<Self>,
        v: ViewMut<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        table: View<Self>,
        s: QkvShape,
        r: Option<Ragged>,
        invariant: bool,
    ) -> Result<()> {
        unfused::qkv_fwd(self, q, k, v, scratch, x, w, table, s, r, invariant)
    }
    /// Backward of [`Backend::qkv_fwd`] (training shapes: `s.pos0` 0, a
    /// ragged batch's positions 0): from `dq, dk` (of the rotated q, k) and
    /// `dv`, `dx (n, c) = dq'·Wq + dk'·Wk + dv·Wv` (`=`) and
    /// `dw (q_dim + 2 kv_dim, c) += [dq'; dk'; dv]^T · x` (`+=`, a parameter
    /// gradient laid out like `w`), where `dq', dk'` are `dq, dk` through the
    /// RoPE backward. `dq, dk` are workspace: their contents afterwards are
    /// unspecified. `scratch` as in [`Backend::qkv_fwd`]. Default: the RoPE
    /// backward in place, three input-gradient and three weight-gradient
    /// products (the unfused reference). CUDA: one kernel packs the rotated
    /// gradients into `scratch (n, q_dim + 2 kv_dim)`, then one GEMM each.
    #[allow(clippy::too_many_arguments)]
    fn qkv_bwd(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        dq: ViewMut<Self>,
        dk: ViewMut<Self>,
        dv: View<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        table: View<Self>,
        s: QkvShape,
        r: Option<Ragged>,
    ) -> Result<()> {
        unfused::qkv_bwd(self, dx, dw, dq, dk, dv, scratch, x, w, table, s, r)
    }
    /// The MLP's input projections and activation (all `=`):
    /// `gate (n, i) = x·Wgate^T`, `up (n, i) = x·Wup^T`,
    /// `h (n, i) = silu(gate) ⊙ up`. `w` holds one layer's `[Wgate; Wup]`
    /// stacked by rows, `(2i, c)`; `scratch (n, 2i)` when
    /// [`Backend::fuses_projections`] (else untouched). Default: two products
    /// and [`Backend::swiglu_fwd`] (the unfused reference). CUDA: one GEMM
    /// into `scratch`, then one kernel writes gate, up and h.
    #[allow(clippy::too_many_arguments)]
    fn mlp_in_fwd(
        &self,
        gate: ViewMut<Self>,
        up: ViewMut<Self>,
        h: ViewMut<Self>,
        scratch: ViewMut<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, i, c): (usize, usize, usize),
        invariant: bool,
    ) -> Result<()> {
        unfused::mlp_in_fwd(self, gate, up, h, scratch, x, w, (n, i, c), invariant)
    }
    /// Backward of [`Backend::mlp_in_fwd`]: from `dh (n, i)`,
    /// `dx (n, c) = dgate·Wgate + dup·Wup` (`=`) and
    /// `dw (2i, c) += [dgate; dup]^T · x` (`+=`). `dgate, dup (n, i)` are
    /// workspace (contents afterwards unspecified); `scratch` as in
    /// [`Backend::mlp_in_fwd`]. Default: [`Backend::swiglu_bwd`], two
    /// input-gradient and two weight-gradient products. CUDA: one kernel
    /// writes `[dgate | dup]` rows into `scratch (n, 2i)`, then one GEMM each.
    #[allow(clippy::too_many_arguments)]
    fn mlp_in_bwd(
        &self,
        dx: ViewMut<Self>,
        dw: ViewMut<Self>,
        dgate: ViewMut<Self>,
        dup: ViewMut<Self>,
        scratch: ViewMut<Self>,
        dh: View<Self>,
        gate: View<Self>,
        up: View<Self>,
        x: View<Self>,
        w: View<Self>,
        (n, i, c): (usize, usize, usize),
    ) -> Result<()> {
        unfused::mlp_in_bwd(self, dx, dw, dgate, dup, scratch, dh, gate, up, x, w, (n, i, c))
    }
    /// Do [`Backend::qkv_fwd`], [`Backend::mlp_in_fwd`] and their backwards
    /// run their projections as one product each, through a scratch the
    /// caller provides? The model sizes its scratch buffers by it
    /// (`max(q_dim + 2 kv_dim, 2i)` per row, or nothing). Default: false.
    fn fuses_projections(&self) -> bool {
        false
    }
    /// `out = silu(gate) ⊙ up` (same lengths)
    fn swiglu_fwd(&self, out: ViewMut<Self>, gate: View<Self>, up: View<Self>) -> Result<()>;
    /// `dgate, dup` overwritten
    fn swiglu_bwd(&self, dgate: ViewMut<Self>, dup: ViewMut<Self>, dout: View<Self>, gate: View<Self>, up: View<Self>) -> Result<()>;
    /// Fused softmax-cross-entropy over `logits (n, v)`: `losses (n)` F32
    /// overwritten; logits overwritten by dlogits unless `grad` is `None`.
    /// Negative targets are ignored (loss 0, grad 0).
    fn cross_entropy(&self, logits: ViewMut<Self>, losses: ViewMut<Self>, targets: &[i32], v: usize, grad: CeGrad) -> Result<()>;

    /// [`Backend::cross_entropy`] that also writes `entropy (n)` F32, the
    /// entropy of each row's softmax (0 on ignored rows), in the same pass:
    /// with the losses (`-log p(target)`) it gives PPO's per-token
    /// log-probabilities and entropies without a second sweep
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy_entropy(
        &self,
        logits: ViewMut<Self>,
        losses: ViewMut<Self>,
        entropy: ViewMut<Self>,
        targets: &[i32],
        v: usize,
        grad: CeGrad,
    ) -> Result<()>;

    // ---- element-wise ---------------------------------------------------
    /// `out = a + b`
    fn add(&self, out: ViewMut<Self>, a: View<Self>, b: View<Self>) -> Result<()>;
    /// `x += y`
    fn add_assign(&self, x: ViewMut<Self>, y: View<Self>) -> Result<()>;
    /// `x *= s`
    fn scale(&self, x: ViewMut<Self>, s: f32) -> Result<()>;
    /// `out (rows.len(), c) = src (n, c)[rows]`
    fn gather_rows(&self, out: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()>;
    /// `dst (n, c)[rows[i]] += src (rows.len(), c)[i]`
    fn scatter_add_rows(&self, dst: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()>;
    /// `cache (b, cap, w)[:, pos0..pos0+t] = new (b, t, w)`
    #[allow(clippy::too_many_arguments)]
    fn kv_write(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()>;

    /// The valid rows of a ragged `new (b, t, w)` into `cache (b, cap, w)`:
    /// sequence `bi`'s rows `0..r.len[bi]` at `r.pos0[bi]..`; padding rows
    /// are not written
    #[allow(clippy::too_many_arguments)]
    fn kv_write_ragged(&self, cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, r: Ragged) -> Result<()>;

    // ---- optimizer ------------------------------------------------------
    /// `Σ x²` (f64 on the host), for the global gradient norm
    fn sum_squares(&self, x: View<Self>) -> Result<f64>;
    /// Partial sums of `Σ x²` whose in-order sum is exactly
    /// [`Backend::sum_squares`] of `x`. The CPU backend returns one per
    /// block of `cpu::SUMSQ_BLOCK` elements from the window's start, so the
    /// partials of windows that start at multiples of it concatenate into
    /// the partials of the whole (data parallelism sums a sharded
    /// gradient's norm in the order one process does). Default: one
    /// partial, the whole sum.
    fn sum_squares_partials(&self, x: View<Self>) -> Result<Vec<f64>> {
        Ok(vec![self.sum_squares(x)?])
    }
    /// One fused AdamW step (`llama2_kernels::adamw`). `params` is a `Param`
    /// buffer window (the CUDA backend updates the fp32 master copy and
    /// writes the bf16 copy in the same pass); `grads, m, v` are F32.
    fn adamw(&self, params: ViewMut<Self>, grads: View<Self>, m: ViewMut<Self>, v: ViewMut<Self>, h: AdamWStep) -> Result<()>;
}

//! A CPU stand-in for the CUDA backend's storage precision, for tests only:
//! the CPU backend, with every `Act` buffer window an op writes (and every
//! upload into one) rounded to bf16, as the CUDA backend stores activations.
//! It lets the model-level checks of gpu-check ([`super::model_check`]) be
//! run, and their tolerances measured, without a GPU.
//!
//! Not simulated: Param buffers are used at f32 (the CUDA kernels read their
//! bf16 working copy; the model check starts from bf16-exact weights, so the
//! first step's gradients see no difference), the tensor-core attention's
//! bf16 rounding of P and dS, and f32 summation orders.
//!
//! Public items: [`Bf16Sim`], [`SimBuf`].

use super::reference::bfr;
use llama2_runtime::*;

/// The CPU backend rounding its `Act` outputs to bf16.
pub struct Bf16Sim {
    cpu: CpuBackend,
}

/// A buffer of [`Bf16Sim`]: a CPU buffer.
pub struct SimBuf(CpuBuf);

impl Buffer for SimBuf {
    type Be = Bf16Sim;
    fn len(&self) -> usize {
        self.0.len()
    }
    fn kind(&self) -> BufKind {
        self.0.kind()
    }
}

impl Bf16Sim {
    pub fn new(threads: usize) -> Result<Self> {
        Ok(Bf16Sim { cpu: CpuBackend::new(threads)? })
    }
}

fn cv<'a>(x: View<'a, Bf16Sim>) -> View<'a, CpuBackend> {
    View { buf: &x.buf.0, off: x.off, len: x.len }
}
fn cm<'a, 'b>(x: &'b mut ViewMut<'a, Bf16Sim>) -> ViewMut<'b, CpuBackend> {
    ViewMut { buf: &mut x.buf.0, off: x.off, len: x.len }
}
/// Rounds an `Act` window to bf16 (other kinds are stored at f32 on CUDA).
fn round(x: ViewMut<'_, Bf16Sim>) {
    if x.buf.0.kind() == BufKind::Act {
        x.buf.0.data[x.off..x.off + x.len].iter_mut().for_each(|e| *e = bfr(*e));
    }
}

impl Backend for Bf16Sim {
    type Buf = SimBuf;

    fn name(&self) -> String {
        "cpu-bf16-sim".into()
    }
    fn alloc(&self, n: usize, kind: BufKind) -> Result<SimBuf> {
        Ok(SimBuf(self.cpu.alloc(n, kind)?))
    }
    fn upload(&self, mut dst: ViewMut<Self>, src: &[f32]) -> Result<()> {
        self.cpu.upload(cm(&mut dst), src)?;
        round(dst);
        Ok(())
    }
    fn download(&self, src: View<Self>, dst: &mut [f32]) -> Result<()> {
        self.cpu.download(cv(src), dst)
    }
    fn zero(&self, mut dst: ViewMut<Self>) -> Result<()> {
        self.cpu.zero(cm(&mut dst))
    }
    fn copy(&self, mut dst: ViewMut<Self>, src: View<Self>) -> Result<()> {
        self.cpu.copy(cm(&mut dst), cv(src))?;
        round(dst);
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn embedding_fwd(&self, mut out: ViewMut<Self>, tokens: &[u32], table: View<Self>, v: usize, c: usize) -> Result<()> {
        self.cpu.embedding_fwd(cm(&mut out), tokens, cv(table), v, c)?;
        round(out);
        Ok(())
    }
    fn embedding_bwd(&self, mut dtable: ViewMut<Self>, dout: View<Self>, tokens: &[u32], v: usize, c: usize) -> Result<()> {
        self.cpu.embedding_bwd(cm(&mut dtable), cv(dout), tokens, v, c)?;
        round(dtable);
        Ok(())
    }
    fn matmul(&self, mut c: ViewMut<Self>, a: View<Self>, b: View<Self>, g: Gemm) -> Result<()> {
        self.cpu.matmul(cm(&mut c), cv(a), cv(b), g)?;
        round(c);
        Ok(())
    }
    fn rmsnorm_fwd(&self, mut out: ViewMut<Self>, mut rstd: ViewMut<Self>, inp: View<Self>, weight: View<Self>, n: usize, c: usize, eps: f32) -> Result<()> {
        self.cpu.rmsnorm_fwd(cm(&mut out), cm(&mut rstd), cv(inp), cv(weight), n, c, eps)?;
        round(out);
        Ok(())
    }
    fn rmsnorm_bwd(
        &self,
        mut dinp: ViewMut<Self>,
        mut dweight: ViewMut<Self>,
        dout: View<Self>,
        inp: View<Self>,
        weight: View<Self>,
        rstd: View<Self>,
        n: usize,
        c: usize,
        dinp_write: GradWrite,
    ) -> Result<()> {
        self.cpu.rmsnorm_bwd(cm(&mut dinp), cm(&mut dweight), cv(dout), cv(inp), cv(weight), cv(rstd), n, c, dinp_write)?;
        round(dinp);
        round(dweight);
        Ok(())
    }
    fn rope_fwd(&self, mut x: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        self.cpu.rope_fwd(cm(&mut x), cv(table), s)?;
        round(x);
        Ok(())
    }
    fn rope_bwd(&self, mut dx: ViewMut<Self>, table: View<Self>, s: RopeShape) -> Result<()> {
        self.cpu.rope_bwd(cm(&mut dx), cv(table), s)?;
        round(dx);
        Ok(())
    }
    fn attention_fwd(&self, mut out: ViewMut<Self>, mut lse: ViewMut<Self>, q: View<Self>, k: View<Self>, v: View<Self>, s: AttnShape) -> Result<()> {
        self.cpu.attention_fwd(cm(&mut out), cm(&mut lse), cv(q), cv(k), cv(v), s)?;
        round(out);
        Ok(())
    }
    fn attention_bwd(
        &self,
        mut dq: ViewMut<Self>,
        mut dk: ViewMut<Self>,
        mut dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
    ) -> Result<()> {
        self.cpu.attention_bwd(cm(&mut dq), cm(&mut dk), cm(&mut dv), cv(dout), cv(q), cv(k), cv(v), cv(out), cv(lse), s)?;
        round(dq);
        round(dk);
        round(dv);
        Ok(())
    }
    fn swiglu_fwd(&self, mut out: ViewMut<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        self.cpu.swiglu_fwd(cm(&mut out), cv(gate), cv(up))?;
        round(out);
        Ok(())
    }
    fn swiglu_bwd(&self, mut dgate: ViewMut<Self>, mut dup: ViewMut<Self>, dout: View<Self>, gate: View<Self>, up: View<Self>) -> Result<()> {
        self.cpu.swiglu_bwd(cm(&mut dgate), cm(&mut dup), cv(dout), cv(gate), cv(up))?;
        round(dgate);
        round(dup);
        Ok(())
    }
    fn cross_entropy(&self, mut logits: ViewMut<Self>, mut losses: ViewMut<Self>, targets: &[i32], v: usize, grad: CeGrad) -> Result<()> {
        self.cpu.cross_entropy(cm(&mut logits), cm(&mut losses), targets, v, grad)?;
        round(logits);
        Ok(())
    }
    fn add(&self, mut out: ViewMut<Self>, a: View<Self>, b: View<Self>) -> Result<()> {
        self.cpu.add(cm(&mut out), cv(a), cv(b))?;
        round(out);
        Ok(())
    }
    fn add_assign(&self, mut x: ViewMut<Self>, y: View<Self>) -> Result<()> {
        self.cpu.add_assign(cm(&mut x), cv(y))?;
        round(x);
        Ok(())
    }
    fn scale(&self, mut x: ViewMut<Self>, s: f32) -> Result<()> {
        self.cpu.scale(cm(&mut x), s)?;
        round(x);
        Ok(())
    }
    fn gather_rows(&self, mut out: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        self.cpu.gather_rows(cm(&mut out), cv(src), rows, c)?;
        round(out);
        Ok(())
    }
    fn scatter_add_rows(&self, mut dst: ViewMut<Self>, src: View<Self>, rows: &[u32], c: usize) -> Result<()> {
        self.cpu.scatter_add_rows(cm(&mut dst), cv(src), rows, c)?;
        round(dst);
        Ok(())
    }
    fn kv_write(&self, mut cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, pos0: usize) -> Result<()> {
        self.cpu.kv_write(cm(&mut cache), cv(new), b, t, cap, w, pos0)?;
        round(cache);
        Ok(())
    }
    fn sum_squares(&self, x: View<Self>) -> Result<f64> {
        self.cpu.sum_squares(cv(x))
    }
    fn adamw(&self, mut params: ViewMut<Self>, grads: View<Self>, mut m: ViewMut<Self>, mut v: ViewMut<Self>, h: AdamWStep) -> Result<()> {
        self.cpu.adamw(cm(&mut params), cv(grads), cm(&mut m), cm(&mut v), h)
    }

    fn rope_fwd_ragged(&self, mut x: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.cpu.rope_fwd_ragged(cm(&mut x), cv(table), s, r)?;
        round(x);
        Ok(())
    }
    fn rope_bwd_ragged(&self, mut dx: ViewMut<Self>, table: View<Self>, s: RopeShape, r: Ragged) -> Result<()> {
        self.cpu.rope_bwd_ragged(cm(&mut dx), cv(table), s, r)?;
        round(dx);
        Ok(())
    }
    fn attention_fwd_ragged(
        &self,
        mut out: ViewMut<Self>,
        mut lse: ViewMut<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()> {
        self.cpu.attention_fwd_ragged(cm(&mut out), cm(&mut lse), cv(q), cv(k), cv(v), s, r)?;
        round(out);
        Ok(())
    }
    fn attention_bwd_ragged(
        &self,
        mut dq: ViewMut<Self>,
        mut dk: ViewMut<Self>,
        mut dv: ViewMut<Self>,
        dout: View<Self>,
        q: View<Self>,
        k: View<Self>,
        v: View<Self>,
        out: View<Self>,
        lse: View<Self>,
        s: AttnShape,
        r: Ragged,
    ) -> Result<()> {
        self.cpu.attention_bwd_ragged(cm(&mut dq), cm(&mut dk), cm(&mut dv), cv(dout), cv(q), cv(k), cv(v), cv(out), cv(lse), s, r)?;
        round(dq);
        round(dk);
        round(dv);
        Ok(())
    }
    fn cross_entropy_entropy(
        &self,
        mut logits: ViewMut<Self>,
        mut losses: ViewMut<Self>,
        entropy: ViewMut<Self>,
        targets: &[i32],
        v: usize,
        grad: CeGrad,
    ) -> Result<()> {
        let mut entropy = entropy;
        self.cpu.cross_entropy_entropy(cm(&mut logits), cm(&mut losses), cm(&mut entropy), targets, v, grad)?;
        round(logits);
        Ok(())
    }
    fn kv_write_ragged(&self, mut cache: ViewMut<Self>, new: View<Self>, b: usize, t: usize, cap: usize, w: usize, r: Ragged) -> Result<()> {
        self.cpu.kv_write_ragged(cm(&mut cache), cv(new), b, t, cap, w, r)?;
        round(cache);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// gpu-check's model-level tolerances hold for bf16 activations: the
    /// CPU with its activations rounded as the CUDA backend stores them
    /// passes every model-level check (prints how much of each tolerance
    /// it uses, the baseline to read a GPU run against).
    #[test]
    fn the_model_checks_pass_with_bf16_activations() {
        let cpu = CpuBackend::new(0).expect("cpu");
        let sim = Bf16Sim::new(0).expect("sim");
        let mut rows = Vec::new();
        super::super::model_check::compare(&cpu, &sim, 11, super::super::model_check::Part::Both, &mut |name, err, limit| rows.push((name, err, limit)))
            .expect("runs");
        for (name, err, limit) in &rows {
            println!("{:5.1}% of tolerance: {name} ({err:.3e} vs {limit:.3e})", 100.0 * err / limit);
        }
        for (name, err, limit) in &rows {
            assert!(err <= limit, "{name}: {err} > {limit}");
        }
        // the rounding is really there: the gradients differ from the f32 ones
        assert!(rows.iter().any(|(name, err, _)| name.contains("gradient") && *err > 1e-4), "{rows:?}");
    }
}

//! Data parallelism for the one trainer: N processes (ranks) each run
//! forward + backward on their share of a global step's micro-batches, the
//! gradients are summed across ranks, clipped by the global norm and
//! applied by AdamW with its state sharded over the ranks (ZeRO-1).
//!
//! What N ranks compute is what one process computes with the whole
//! global batch:
//! - the step's micro-batches are cut as one process reads them; rank `r`
//!   takes micro-batches `r, r + N, ...` ([`Dist::take`]);
//! - the loss is the mean over the global count ([`crate::trainer::Objective::count`]
//!   summed over ranks), so every micro-batch's gradient has the scale it
//!   has in one process;
//! - each micro-batch's gradient is computed into a zeroed buffer and then
//!   added to the rank's accumulator (when a process runs more than one
//!   micro-batch per step; one micro-batch goes straight into the zeroed
//!   gradients): one process with `--grad-accum 2` then computes
//!   `g0 + g1`, the same float additions as two ranks' reduction of `g0`
//!   and `g1` (a GEMM that accumulated `g1` into `g0` would round
//!   differently);
//! - the global norm is the in-order sum of `Σ g²` partials over fixed
//!   blocks (`Backend::sum_squares_partials`); shards start on block
//!   boundaries, so every world size adds the same partials in the same
//!   order as one process (bit-identical on the CPU backend);
//! - ZeRO-1: gradients are reduce-scattered, each rank steps AdamW on its
//!   shard (element-wise, the weight-decay split respected inside the
//!   shard), and the new weights are all-gathered. Without ZeRO
//!   (`zero: false`) the gradients are all-reduced and every rank steps
//!   the whole arena: the same weights, more optimizer memory.
//!
//! With [`comm::Single`] and one micro-batch per step this is exactly
//! [`crate::trainer::train_step`].
//!
//! Public items: [`Dist`], [`merge_sums`], [`eval_sums`], [`check_same_config`].

use crate::error::{Result, TrainError};
use crate::run::BatchSource;
use crate::trainer::{Objective, StepStats, Sums};
use llama2_runtime::comm::{self, Comm, Shards};
use llama2_runtime::{v, vm, Backend, BufKind, Buffer};
use serde_json::{json, Value};

/// The data-parallel context of a run: the communicator, whether the
/// optimizer state is sharded, and the per-part accumulation buffers.
pub struct Dist<'c, B: Backend> {
    pub comm: &'c dyn Comm<B>,
    /// ZeRO-1: each rank keeps AdamW state for its shard only
    pub zero: bool,
    /// per trained part: the buffer a micro-batch's gradient is computed
    /// into while the accumulator waits (allocated when first needed)
    scratch: Vec<Option<B::Buf>>,
}

impl<'c, B: Backend> Dist<'c, B> {
    pub fn new(comm: &'c dyn Comm<B>, zero: bool) -> Self {
        Dist { comm, zero, scratch: Vec::new() }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// Whether the collectives run: several ranks, or a real engine at
    /// world size 1 (`LLAMA2_COMM=nccl`, the device check of the NCCL
    /// path); the [`comm::Single`] identity skips them.
    pub fn collective(&self) -> bool {
        self.world() > 1 || self.comm.engine() != "single"
    }

    /// Whether the optimizer state is cut into shards.
    pub fn sharded(&self) -> bool {
        self.zero && self.collective()
    }

    /// The ZeRO-1 cut of an arena of `total` elements.
    pub fn shards(&self, total: usize) -> Shards {
        if self.sharded() {
            Shards::new(total, self.world())
        } else {
            Shards::whole(total)
        }
    }

    /// Cuts every part's optimizer to this rank's shard (ZeRO-1; a no-op
    /// otherwise). Call before restoring moments from a checkpoint.
    pub fn shard_optimizers<O: Objective<B>>(&self, be: &B, obj: &mut O) -> Result<()> {
        if !self.sharded() {
            return Ok(());
        }
        for p in obj.parts() {
            let sh = self.shards(p.model.layout.total).of(self.rank());
            if p.opt.shard != sh {
                p.opt.reshard(be, &p.model.layout, sh)?;
            }
        }
        Ok(())
    }

    /// This rank's micro-batches of a global step: `n` (= micro-batches per
    /// rank x world) read in order, every `world`-th kept from `rank` on.
    /// Every rank reads the same stream, so the data position stays the
    /// same on every rank (and resume is exact).
    pub fn take<T>(&self, src: &mut dyn BatchSource<T>, per_rank: usize) -> Result<Vec<T>> {
        let (w, r) = (self.world(), self.rank());
        let mut mine = Vec::with_capacity(per_rank);
        for j in 0..per_rank * w {
            match src.next_batch()? {
                Some(mb) if j % w == r => mine.push(mb),
                Some(_) => {}
                None => return Err(TrainError::Invalid("the training data ran out; HINT: fewer --steps, or data that wraps around".into())),
            }
        }
        Ok(mine)
    }

    /// One optimizer step of `obj` over this rank's micro-batches `micro`
    /// of the global step (see the module header).
    pub fn step<O: Objective<B>>(&mut self, be: &B, obj: &mut O, micro: &[O::Batch], lrs: &[f64]) -> Result<StepStats> {
        let mut total = [obj.count(micro) as u64];
        self.comm.all_reduce_u64(&mut total)?;
        let total = total[0] as usize;
        let parts_n = obj.parts().len();
        if lrs.len() != 1 && lrs.len() != parts_n {
            return Err(TrainError::Invalid(format!("{} learning rates for {parts_n} trained models", lrs.len())));
        }
        for p in obj.parts() {
            be.zero(vm(p.grads))?;
        }
        let mut sums = Sums::default();
        if total > 0 {
            for (k, mb) in micro.iter().enumerate() {
                if k == 0 {
                    sums.add(&obj.forward_backward(be, mb, total)?);
                    continue;
                }
                // this micro-batch's gradient into zeroed buffers, then
                // accumulator += it
                self.swap_scratch(be, obj, true)?;
                sums.add(&obj.forward_backward(be, mb, total)?);
                for (i, p) in obj.parts().into_iter().enumerate() {
                    let acc = self.scratch[i].as_mut().ok_or_else(|| TrainError::Invalid("no accumulator".into()))?;
                    be.add_assign(vm(acc), v(p.grads))?;
                }
                self.swap_scratch(be, obj, false)?;
            }
        }
        let sums = merge_sums(self.comm, &sums)?;
        let loss = sums.mean_loss();
        if !loss.is_finite() {
            return Err(TrainError::Invalid(format!("loss is {loss}; HINT: lower the learning rate")));
        }
        let mut norms = Vec::new();
        let (rank, world, sharded, collective) = (self.rank(), self.world(), self.sharded(), self.collective());
        for (i, p) in obj.parts().into_iter().enumerate() {
            let lr = if lrs.len() == 1 { lrs[0] } else { lrs[i] };
            if total == 0 {
                norms.push((p.name, 0.0));
                continue;
            }
            let lay = &p.model.layout;
            let st = if !collective {
                p.opt.update(be, &mut p.model.params, p.grads, lay, lr)?
            } else if !sharded {
                self.comm.all_reduce_sum(be, vm(p.grads))?;
                p.opt.update(be, &mut p.model.params, p.grads, lay, lr)?
            } else {
                let shards = Shards::new(lay.total, world);
                let (off, len) = shards.of(rank);
                if p.opt.shard != (off, len) {
                    return Err(TrainError::Invalid(format!("{}: optimizer shard {:?} is not rank {rank}'s {:?}", p.name, p.opt.shard, (off, len))));
                }
                self.comm.reduce_scatter_sum(be, vm(p.grads), &shards)?;
                let norm = global_norm(self.comm, be, p.grads, (off, len))?;
                let st = p.opt.clip_from_norm(norm)?;
                p.opt.apply(be, &mut p.model.params, p.grads, lay, lr, st)?;
                self.comm.all_gather(be, vm(&mut p.model.params), &shards)?;
                st
            };
            norms.push((p.name, st.grad_norm));
        }
        Ok(StepStats {
            loss,
            grad_norm: norms.first().map_or(0.0, |n| n.1),
            grad_norms: norms,
            lr: lrs.first().copied().unwrap_or(0.0),
            targets: sums.count,
            tokens: sums.tokens,
            metrics: sums.mean_metrics(),
        })
    }

    /// Exchanges every part's gradients with its scratch buffer (zeroed
    /// first when `zero`): the accumulator waits in the scratch slot while
    /// a micro-batch is computed into the gradients.
    fn swap_scratch<O: Objective<B>>(&mut self, be: &B, obj: &mut O, zero: bool) -> Result<()> {
        for (i, p) in obj.parts().into_iter().enumerate() {
            if self.scratch.len() <= i {
                self.scratch.resize_with(i + 1, || None);
            }
            let s = match &mut self.scratch[i] {
                Some(s) if s.len() == p.grads.len() => s,
                slot => slot.insert(be.alloc(p.grads.len(), BufKind::F32)?),
            };
            if zero {
                be.zero(vm(s))?;
            }
            std::mem::swap(p.grads, s);
        }
        Ok(())
    }
}

/// `‖g‖` of the whole (reduced) gradient from this rank's shard: every
/// rank's `Σ g²` partials, gathered and added in global order.
fn global_norm<B: Backend>(comm: &dyn Comm<B>, be: &B, grads: &B::Buf, (off, len): (usize, usize)) -> Result<f64> {
    let mine = if len == 0 { Vec::new() } else { be.sum_squares_partials(v(grads).sub(off, len)?)? };
    let bytes: Vec<u8> = mine.iter().flat_map(|x| x.to_le_bytes()).collect();
    let all: Vec<f64> = comm
        .all_gather_bytes(&bytes)?
        .iter()
        .flat_map(|b| b.chunks_exact(8).map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect::<Vec<_>>())
        .collect();
    // the order `sum_squares` adds its partials in
    let sq: f64 = all.iter().sum();
    Ok(sq.sqrt())
}

/// Interns a metric name received from another rank (names are a small
/// fixed set, so each is leaked once at most).
fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut g) = NAMES.lock() else { return "metric" };
    if let Some(n) = g.iter().find(|n| **n == name) {
        return n;
    }
    let n: &'static str = Box::leak(name.to_string().into_boxed_str());
    g.push(n);
    n
}

/// Every rank's sums added in rank order (the sums one process with the
/// whole global batch reports; metrics by name).
pub fn merge_sums<B: Backend>(comm: &dyn Comm<B>, s: &Sums) -> Result<Sums> {
    if comm.world() == 1 {
        return Ok(s.clone());
    }
    let mine = json!({"loss": s.loss, "count": s.count, "tokens": s.tokens, "metrics": s.metrics.iter().map(|(k, x)| json!([k, x])).collect::<Vec<_>>()});
    let mut out = Sums::default();
    for b in comm.all_gather_bytes(mine.to_string().as_bytes())? {
        let v: Value = serde_json::from_slice(&b).map_err(|e| TrainError::Invalid(format!("sums from another rank: {e}")))?;
        let metrics = v["metrics"].as_array().map(|a| a.iter().filter_map(|m| Some((intern(m[0].as_str()?), m[1].as_f64()?))).collect()).unwrap_or_default();
        out.add(&Sums {
            loss: v["loss"].as_f64().unwrap_or(f64::NAN),
            count: v["count"].as_u64().unwrap_or(0) as usize,
            tokens: v["tokens"].as_u64().unwrap_or(0) as usize,
            metrics,
        });
    }
    Ok(out)
}

/// Sums of `obj` over up to `max_batches` batches of `src` from its
/// start, spread over the ranks (rank `r` evaluates batches `r, r + N,
/// ...`) and merged.
pub fn eval_sums<B: Backend, O: Objective<B>>(
    be: &B,
    comm: &dyn Comm<B>,
    obj: &mut O,
    src: &mut dyn BatchSource<O::Batch>,
    max_batches: usize,
) -> Result<Sums> {
    src.seek(Default::default())?;
    let (w, r) = (comm.world(), comm.rank());
    let mut sums = Sums::default();
    for i in 0..max_batches {
        let Some(mb) = src.next_batch()? else { break };
        if i % w == r {
            sums.add(&obj.evaluate(be, &mb)?);
        }
    }
    let sums = merge_sums(comm, &sums)?;
    if sums.count == 0 {
        return Err(TrainError::Invalid("validation data holds no complete batch; HINT: use a smaller --batch-size or --seq-len".into()));
    }
    Ok(sums)
}

/// Refuses a launch whose ranks resolved different configurations: every
/// rank compares the fingerprints of all ranks (the `device` entry, which
/// names each rank's own GPU, left out) and reports the same verdict.
pub fn check_same_config<B: Backend>(comm: &dyn Comm<B>, resolved: &Value) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    let mut r = resolved.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("device");
    }
    let h = comm::config_hash(&r.to_string());
    let all = comm.all_gather_bytes(&h.to_le_bytes())?;
    let hashes: Vec<String> = all.iter().map(|b| b.iter().rev().map(|x| format!("{x:02x}")).collect()).collect();
    if let Some(bad) = hashes.iter().position(|x| *x != hashes[0]) {
        return Err(TrainError::Invalid(format!(
            "rank {bad} resolved another configuration than rank 0 (fingerprints {}); HINT: launch every rank with the same flags and data (mpirun -np N train-tool ... runs one command line everywhere)",
            hashes.join(", ")
        )));
    }
    Ok(())
}

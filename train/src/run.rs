//! The outer loop of every objective ([`crate::trainer::Objective`]):
//! learning-rate schedule, micro-batch accumulation, validation every N
//! steps, checkpoints every N steps (every trained model with its
//! optimizer), metrics and progress, resume. Pretraining, SFT and reward
//! models differ only in their objective and where batches come from.
//!
//! Public items: [`BatchSource`], [`RunConfig`], [`RunSummary`], [`run`],
//! [`run_dist`], [`run_lm`], [`eval_loss`], [`eval_sums`].

use crate::checkpoint::{self, TrainState};
use crate::data::{BatchReader, DataPosition};
use crate::dist::Dist;
use crate::error::{Result, TrainError};
use crate::metrics::{Energy, MetricsLog, Progress};
use crate::schedule::LrSchedule;
use crate::step::{LmTrainer, MicroBatch};
use crate::trainer::{Objective, Sums};
use llama2_runtime::comm::Single;
use llama2_runtime::Backend;
use serde_json::json;
use std::path::Path;
use std::time::Instant;

/// A stream of micro-batches with a position that checkpoints can save.
pub trait BatchSource<T = MicroBatch> {
    /// The next micro-batch, or None when the data is exhausted.
    fn next_batch(&mut self) -> Result<Option<T>>;
    fn position(&self) -> DataPosition;
    fn seek(&mut self, pos: DataPosition) -> Result<()>;
}

impl BatchSource for BatchReader {
    fn next_batch(&mut self) -> Result<Option<MicroBatch>> {
        BatchReader::next_batch(self)
    }
    fn position(&self) -> DataPosition {
        self.pos
    }
    fn seek(&mut self, pos: DataPosition) -> Result<()> {
        BatchReader::seek(self, pos)
    }
}

/// Settings of the outer loop.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// optimizer steps in the whole run
    pub steps: u64,
    /// stop after this many steps in this invocation (checkpointing first)
    pub stop_after: Option<u64>,
    /// micro-batches per optimizer step
    pub grad_accum: usize,
    pub schedule: LrSchedule,
    /// checkpoint every N steps (0 = none during the run)
    pub save_every: u64,
    /// checkpoints to keep (0 = all)
    pub keep_last: usize,
    /// validation every N steps (0 = only at the end)
    pub val_every: u64,
    /// validation batches per evaluation
    pub val_batches: usize,
    /// progress label, e.g. "pretrain"
    pub label: String,
    /// no progress output
    pub quiet: bool,
    pub energy: Energy,
    /// the device's peak FLOP/s, for MFU (None on CPU)
    pub peak_flops: Option<f64>,
    /// the resolved configuration, saved with every checkpoint
    pub resolved: serde_json::Value,
}

/// What a run did (`steps < RunConfig::steps` when stopped early).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub steps: u64,
    pub last_loss: f64,
    /// (step, validation loss) of every evaluation
    pub val: Vec<(u64, f64)>,
    pub seconds: f64,
    pub tokens: u64,
    /// (device-hours, kWh, kg CO2eq)
    pub energy: (f64, f64, f64),
}

/// Sums of `obj` over up to `max_batches` batches of `src` from its start
/// (forward only).
pub fn eval_sums<B: Backend, O: Objective<B>>(be: &B, obj: &mut O, src: &mut dyn BatchSource<O::Batch>, max_batches: usize) -> Result<Sums> {
    src.seek(DataPosition::default())?;
    let mut sums = Sums::default();
    for _ in 0..max_batches {
        let Some(mb) = src.next_batch()? else { break };
        sums.add(&obj.evaluate(be, &mb)?);
    }
    if sums.count == 0 {
        return Err(TrainError::Invalid("validation data holds no complete batch; HINT: use a smaller --batch-size or --seq-len".into()));
    }
    Ok(sums)
}

/// Mean loss over up to `max_batches` batches of `src` from its start,
/// using the trainer's activation buffers (forward only).
pub fn eval_loss<B: Backend>(be: &B, tr: &mut LmTrainer<B>, src: &mut dyn BatchSource, max_batches: usize) -> Result<f64> {
    Ok(eval_sums(be, tr, src, max_batches)?.mean_loss())
}

/// [`run`] for the language-modelling objective (pretraining, SFT).
#[allow(clippy::too_many_arguments)]
pub fn run_lm<B: Backend>(
    be: &B,
    tr: &mut LmTrainer<B>,
    train: &mut dyn BatchSource,
    val: Option<&mut dyn BatchSource>,
    rc: &RunConfig,
    out: &Path,
    state: TrainState,
    resumed: bool,
) -> Result<RunSummary> {
    let flops_per_token = tr.model.cfg.train_flops_per_token(tr.t);
    run(be, tr, train, val, rc, out, state, resumed, flops_per_token)
}

/// Trains `obj` from `state.step` to `rc.steps`, writing `out/metrics.jsonl`
/// and checkpoints under `out`. `resumed` says whether `state` came from a
/// checkpoint (the metrics log is then continued, not restarted). Every
/// trained model gets the schedule's learning rate. `flops_per_token`
/// (training FLOPs per input token) gives the MFU where the device's peak
/// is known. One process: [`run_dist`] over [`Single`].
#[allow(clippy::too_many_arguments)]
pub fn run<B: Backend, O: Objective<B>>(
    be: &B,
    obj: &mut O,
    train: &mut dyn BatchSource<O::Batch>,
    val: Option<&mut dyn BatchSource<O::Batch>>,
    rc: &RunConfig,
    out: &Path,
    state: TrainState,
    resumed: bool,
    flops_per_token: f64,
) -> Result<RunSummary> {
    run_dist(be, &mut Dist::new(&Single, true), obj, train, val, rc, out, state, resumed, flops_per_token)
}

/// [`run`] on every rank of a data-parallel launch ([`Dist`]): each rank
/// takes its share of every global step's `rc.grad_accum x world`
/// micro-batches and of the validation batches; rank 0 alone writes the
/// metrics log and shows progress; every rank takes part in checkpoints
/// (rank 0 writes the models, each rank its optimizer shard). The
/// optimizers must already be cut to the ranks' shards
/// ([`Dist::shard_optimizers`]).
#[allow(clippy::too_many_arguments)]
pub fn run_dist<B: Backend, O: Objective<B>>(
    be: &B,
    dist: &mut Dist<'_, B>,
    obj: &mut O,
    train: &mut dyn BatchSource<O::Batch>,
    mut val: Option<&mut dyn BatchSource<O::Batch>>,
    rc: &RunConfig,
    out: &Path,
    mut state: TrainState,
    resumed: bool,
    flops_per_token: f64,
) -> Result<RunSummary> {
    let lead = dist.rank() == 0;
    std::fs::create_dir_all(out).map_err(|e| TrainError::io(out, e))?;
    let mut log = if lead { Some(MetricsLog::open(&out.join("metrics.jsonl"), if resumed { Some(state.step) } else { None })?) } else { None };
    if resumed {
        train.seek(state.data)?;
    }
    let progress = Progress::new(&rc.label, rc.steps, state.step, rc.quiet || !lead);
    let mut summary = RunSummary { steps: state.step, last_loss: f64::NAN, val: Vec::new(), seconds: 0.0, tokens: state.tokens_seen, energy: (0.0, 0.0, 0.0) };
    let run_start = Instant::now();
    let elapsed0 = state.elapsed_s;
    let stop_at = rc.stop_after.map_or(rc.steps, |n| (state.step + n).min(rc.steps));
    while state.step < stop_at {
        let t0 = Instant::now();
        let comm0 = dist.comm.seconds();
        let micro = dist.take(train, rc.grad_accum)?;
        let lr = rc.schedule.lr(state.step);
        let st = dist.step(be, obj, &micro, &[lr])?;
        be.synchronize()?;
        let comm_s = dist.comm.seconds() - comm0;
        let dt = t0.elapsed().as_secs_f64();
        state.step += 1;
        state.data = train.position();
        state.tokens_seen += st.tokens as u64;
        state.elapsed_s = elapsed0 + run_start.elapsed().as_secs_f64();
        let tps = st.tokens as f64 / dt;
        let mut rec = json!({
            "step": state.step, "loss": st.loss, "lr": lr, "grad_norm": st.grad_norm,
            "tokens_per_s": tps, "elapsed_s": state.elapsed_s, "tokens": state.tokens_seen,
        });
        if st.grad_norms.len() > 1 {
            for (name, g) in &st.grad_norms {
                rec[format!("grad_norm.{name}")] = json!(g);
            }
        }
        for (k, x) in &st.metrics {
            rec[*k] = json!(x);
        }
        if let Some(peak) = rc.peak_flops {
            rec["mfu"] = json!(flops_per_token * tps / peak / dist.world() as f64);
        }
        if dist.world() > 1 {
            // seconds this rank spent in collectives (waiting included)
            rec["comm_s"] = json!(comm_s);
        }
        let is_last = state.step == rc.steps;
        if let Some(v) = val.as_deref_mut() {
            if is_last || (rc.val_every > 0 && state.step.is_multiple_of(rc.val_every)) {
                let vs = crate::dist::eval_sums(be, dist.comm, obj, v, rc.val_batches)?;
                let vl = vs.mean_loss();
                rec["val_loss"] = json!(vl);
                for (k, x) in vs.mean_metrics() {
                    rec[format!("val_{k}")] = json!(x);
                }
                summary.val.push((state.step, vl));
            }
        }
        if let Some(log) = log.as_mut() {
            log.write(&rec)?;
        }
        summary.last_loss = st.loss;
        if lead {
            progress.update(state.step, rc.steps, &format!("loss {:.4} lr {:.2e} |g| {:.3} {:.0} tok/s", st.loss, lr, st.grad_norm, tps));
        }
        if rc.save_every > 0 && (state.step.is_multiple_of(rc.save_every) || is_last || state.step == stop_at) {
            let mut s = state.clone();
            s.config = rc.resolved.clone();
            checkpoint::save_parts_dist(be, dist.comm, out, &obj.parts(), &s, rc.keep_last)?;
        }
    }
    progress.finish();
    summary.steps = state.step;
    summary.seconds = state.elapsed_s;
    summary.tokens = state.tokens_seen;
    summary.energy = rc.energy.estimate(state.elapsed_s);
    Ok(summary)
}

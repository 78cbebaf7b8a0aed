//! The command-line flag groups shared by the subcommands (one place for
//! each: every command that trains takes [`OptFlags`] and [`RunFlags`],
//! every command that reads a model and token shards takes [`ModelData`])
//! and the value parsers that reject out-of-range values (never clamp).
//!
//! Public items: [`OptFlags`], [`RunFlags`], [`ModelData`], the `parse_*`
//! value parsers.

use anyhow::{Context, Result};
use clap::Args;
use llama2_model::Model;
use llama2_runtime::Backend;
use llama2_train::data::{BatchReader, ShardSet};
use llama2_train::metrics::Energy;
use llama2_train::optim::AdamWConfig;
use llama2_train::run::RunConfig;
use llama2_train::schedule::LrSchedule;
use llama2_train::session::Resolved;
use std::path::PathBuf;

pub fn parse_lr(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x > 0.0 && x < 1.0) {
        return Err(format!("learning rate {x} must be in (0, 1)"));
    }
    Ok(x)
}

pub fn parse_unit(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x} must be in [0, 1]"));
    }
    Ok(x)
}

pub fn parse_beta(s: &str) -> std::result::Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!("beta {x} must be in [0, 1)"));
    }
    Ok(x)
}

pub fn parse_nonneg(s: &str) -> std::result::Result<f32, String> {
    let x: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x >= 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number >= 0"));
    }
    Ok(x)
}

pub fn parse_pos(s: &str) -> std::result::Result<f64, String> {
    let x: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if !(x > 0.0 && x.is_finite()) {
        return Err(format!("{x} must be a finite number > 0"));
    }
    Ok(x)
}

/// How a language-modelling run computes its LM head and loss (`pretrain`,
/// `sft`).
#[derive(Args, Clone, Debug, Default)]
pub struct LmHeadFlags {
    /// Compute the LM head and cross-entropy in chunks of this many rows, so the (batch-size x seq-len, vocab) logits are never stored, only (ROWS, vocab); 1..=batch-size x seq-len, 0: off (every row at once, the default)
    #[arg(long, default_value_t = 0, value_name = "ROWS")]
    pub logit_chunk: u32,
}

impl LmHeadFlags {
    /// The chunk in rows (0: off), checked against a micro-batch of `b x t`.
    pub fn logit_chunk(&self, b: usize, t: usize) -> Result<usize> {
        let r = self.logit_chunk as usize;
        if r > b * t {
            anyhow::bail!("--logit-chunk {r} is more than the {b} x {t} = {} rows of a micro-batch; HINT: use at most {} (--batch-size x --seq-len), or 0 to turn chunking off", b * t, b * t);
        }
        Ok(r)
    }
}

/// AdamW hyper-parameters (defaults: the paper's).
#[derive(Args, Clone, Debug)]
pub struct OptFlags {
    /// Decoupled weight decay on the matrices (not on the RMSNorm gains)
    #[arg(long, default_value_t = 0.1, value_parser = parse_nonneg)]
    pub weight_decay: f32,
    /// AdamW beta1
    #[arg(long, default_value_t = 0.9, value_parser = parse_beta)]
    pub beta1: f32,
    /// AdamW beta2
    #[arg(long, default_value_t = 0.95, value_parser = parse_beta)]
    pub beta2: f32,
    /// AdamW epsilon
    #[arg(long, default_value_t = 1e-5, value_parser = parse_nonneg)]
    pub eps: f32,
    /// Clip the global gradient norm to this (0 = off)
    #[arg(long, default_value_t = 1.0, value_parser = parse_nonneg)]
    pub grad_clip: f32,
}

impl OptFlags {
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig { beta1: self.beta1, beta2: self.beta2, eps: self.eps, weight_decay: self.weight_decay, grad_clip: self.grad_clip }
    }
}

/// Run length, checkpoints, output, accounting.
#[derive(Args, Clone, Debug)]
pub struct RunFlags {
    /// Optimizer steps in the whole run (default: pretrain 1000; sft from --epochs)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Micro-batches accumulated per optimizer step on each rank (global batch = batch size x grad-accum x ranks)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub grad_accum: u32,
    /// Under mpirun: 1 = ZeRO-1 (AdamW state sharded over the ranks), 0 = every rank keeps all of it (same weights)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub zero: u8,
    /// Write a checkpoint every N steps (0 = only the final model)
    #[arg(long, default_value_t = 0)]
    pub save_every: u64,
    /// Keep the newest K checkpoints (0 = all)
    #[arg(long, default_value_t = 3)]
    pub keep_last: usize,
    /// Continue from a checkpoint (a ckpt-* directory, or a run's --out for its newest)
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Output directory (checkpoints, metrics.jsonl, plots, final/)
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Seed of every random stream (initialisation, shuffling, sampling)
    #[arg(long, default_value_t = 1337)]
    pub seed: u64,
    /// Validation loss every N steps (0 = only at the end)
    #[arg(long, default_value_t = 0)]
    pub val_every: u64,
    /// Batches per validation
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub val_batches: u32,
    /// Stop after this many steps in this invocation (the schedule still spans --steps); resume later with --resume
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub stop_after: Option<u64>,
    /// No progress output
    #[arg(long)]
    pub quiet: bool,
    /// Power per device in watts for the energy estimate (default: 700 for a GPU, the H100 SXM TDP; 15 per CPU thread)
    #[arg(long, value_parser = parse_pos)]
    pub power_watts: Option<f64>,
    /// Grid carbon intensity in kg CO2eq per kWh for the estimate
    #[arg(long, default_value_t = 0.385, value_parser = parse_pos)]
    pub carbon_intensity: f64,
    /// Peak device FLOP/s in TFLOP/s for MFU (default: 989 on CUDA, the H100/H200 dense bf16 peak; none on CPU)
    #[arg(long, value_parser = parse_pos)]
    pub peak_tflops: Option<f64>,
}

impl RunFlags {
    /// The resolved configuration of a run with these flags: the shared
    /// fields; the job's own go into `job_args`.
    #[allow(clippy::too_many_arguments)]
    pub fn resolve<B: Backend>(
        &self,
        be: &B,
        job: &str,
        model: &llama2_model::Config,
        data: Vec<PathBuf>,
        (batch_size, seq_len): (usize, usize),
        steps: u64,
        schedule: LrSchedule,
        opt: &OptFlags,
    ) -> Resolved {
        Resolved {
            job: job.into(),
            device: be.name(),
            model: model.to_hf_json(),
            data,
            batch_size,
            seq_len,
            grad_accum: self.grad_accum as usize,
            world_size: 1,
            zero: self.zero == 1,
            steps,
            schedule,
            adamw: opt.adamw(),
            seed: self.seed,
            save_every: self.save_every,
            keep_last: self.keep_last,
            val_every: self.val_every,
            val_batches: self.val_batches as usize,
            job_args: Default::default(),
        }
    }

    /// The outer loop's settings for a run resolved as `r`.
    pub fn run_config<B: Backend>(&self, label: &str, be: &B, r: &Resolved) -> RunConfig {
        let (steps, schedule, resolved) = (r.steps, r.schedule, r.to_json());
        let cuda = be.name().starts_with("cuda");
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
        let watts = self.power_watts.unwrap_or(if cuda { 700.0 } else { 15.0 * threads });
        let peak = self.peak_tflops.or(if cuda { Some(989.0) } else { None }).map(|t| t * 1e12);
        RunConfig {
            steps,
            stop_after: self.stop_after,
            grad_accum: self.grad_accum as usize,
            schedule,
            save_every: self.save_every,
            keep_last: self.keep_last,
            val_every: self.val_every,
            val_batches: self.val_batches as usize,
            label: label.to_string(),
            quiet: self.quiet,
            energy: Energy { devices: r.world_size as f64, watts_per_device: watts, kg_co2_per_kwh: self.carbon_intensity },
            peak_flops: peak,
            resolved,
        }
    }
}

pub fn parse_temperature(s: &str) -> std::result::Result<f32, String> {
    let t: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=100.0).contains(&t) {
        return Err(format!("temperature {t} must be in [0, 100]"));
    }
    Ok(t)
}

pub fn parse_top_p(s: &str) -> std::result::Result<f32, String> {
    let p: f32 = s.parse().map_err(|e| format!("{e}"))?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(format!("top-p {p} must be in (0, 1]"));
    }
    Ok(p)
}

/// A model and the token shards it reads, in batches (shared by
/// `eval-loss` and `debug grads`).
#[derive(Args, Clone, Debug)]
pub struct ModelData {
    /// Model: an HF directory (config.json + model.safetensors) or a GGUF file
    #[arg(long)]
    pub model: PathBuf,
    /// Token shard (llm.c format) or a directory of shards
    #[arg(long)]
    pub data: PathBuf,
    /// Sequences per batch
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Tokens per sequence
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub seq_len: u32,
}

impl ModelData {
    /// The model and a reader of its data that stops at the end.
    pub fn open<B: Backend>(&self, be: &B) -> Result<(Model<B>, BatchReader)> {
        let model = Model::load_path(be, &self.model).with_context(|| format!("loading the model from {}", self.model.display()))?;
        let reader = BatchReader::new(ShardSet::open(&self.data)?, self.batch_size as usize, self.seq_len as usize, model.cfg.vocab_size, false, None)?;
        Ok((model, reader))
    }
}

//! `train-tool pretrain`: next-token pretraining on token shards with the
//! paper's recipe (PAPER.md section 3): AdamW (0.9, 0.95, eps 1e-5), weight
//! decay 0.1, clipping at 1.0, warm-up then cosine to 10% of the peak.

use crate::cmd::train_common::{print_resolved, OptFlags, RunFlags};
use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::weights::SaveDtype;
use llama2_model::{Config, Model};
use llama2_runtime::rng::Rng;
use llama2_runtime::Backend;
use llama2_train::checkpoint::{self, TrainState};
use llama2_train::data::{BatchReader, ShardSet};
use llama2_train::run::{run_lm, BatchSource};
use llama2_train::step::LmTrainer;
use serde_json::json;
use std::path::PathBuf;

#[derive(Args, Clone, Debug)]
pub struct PretrainArgs {
    /// Start from this model (HF format directory)
    #[arg(long, conflicts_with = "preset")]
    pub init: Option<PathBuf>,
    /// Start from random weights of a preset shape (tiny, small, ref-tiny, ref-small, 1b, 7b, 13b, 34b, 70b)
    #[arg(long)]
    pub preset: Option<String>,
    /// Vocabulary size for --preset (must cover every id in the data)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub vocab: Option<u32>,
    /// Training token shards: a file or a directory of *.bin (llm.c format)
    #[arg(long)]
    pub data: PathBuf,
    /// Validation token shards (file or directory)
    #[arg(long)]
    pub val_data: Option<PathBuf>,
    /// Sequences per micro-batch
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub batch_size: u32,
    /// Tokens per sequence
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1048576))]
    pub seq_len: u32,
    /// Read the batch windows of each shard in a seeded random order
    #[arg(long)]
    pub shuffle: bool,
    /// Peak learning rate (the paper: 3e-4 for 7B/13B)
    #[arg(long, default_value_t = 3e-4, value_parser = crate::cmd::train_common::parse_lr)]
    pub lr: f64,
    /// Linear warm-up steps (the paper: 2000)
    #[arg(long, default_value_t = 2000)]
    pub warmup_steps: u64,
    /// The cosine schedule ends at this fraction of the peak (the paper: 0.1)
    #[arg(long, default_value_t = 0.1, value_parser = crate::cmd::train_common::parse_unit)]
    pub min_lr_ratio: f64,
    #[command(flatten)]
    pub opt: OptFlags,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct PretrainJob(PretrainArgs);

impl Job for PretrainJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.batch_size as usize, a.seq_len as usize);
        let out = a.run.out.clone();
        // the model: resumed, loaded, or fresh
        let (model, state, moments, resumed) = if let Some(r) = &a.run.resume {
            let ld = checkpoint::load(be, r).with_context(|| format!("resuming from {}", r.display()))?;
            crate::cmd::train_common::check_resume(
                &ld.state.config,
                &[("batch_size", json!(b)), ("seq_len", json!(t)), ("grad_accum", json!(a.run.grad_accum)), ("data", json!(a.data))],
            )?;
            eprintln!("resuming from {} at step {}", ld.dir.display(), ld.state.step);
            (ld.model, ld.state, Some(ld.moments), true)
        } else {
            let m = match (&a.init, &a.preset) {
                (Some(dir), None) => Model::load_path(be, dir).with_context(|| format!("loading {}", dir.display()))?,
                (None, Some(p)) => {
                    let cfg = Config::preset(p, Some(a.vocab.unwrap_or(32000) as usize))?;
                    Model::init_random(be, cfg, a.run.seed)?
                }
                _ => bail!("give exactly one of --init DIR or --preset NAME (or --resume DIR)"),
            };
            let st = TrainState {
                step: 0,
                data: Default::default(),
                rng: Rng::derive(a.run.seed, "run").state(),
                tokens_seen: 0,
                elapsed_s: 0.0,
                config: json!(null),
            };
            (m, st, None, false)
        };
        let cfg = model.cfg.clone();
        let set = ShardSet::open(&a.data)?;
        let mut train = BatchReader::new(set, b, t, cfg.vocab_size, true, if a.shuffle { Some(a.run.seed) } else { None })?;
        let mut val = match &a.val_data {
            Some(p) => Some(BatchReader::new(ShardSet::open(p)?, b, t, cfg.vocab_size, false, None)?),
            None => None,
        };
        let mut tr = LmTrainer::new(be, model, b, t, a.opt.adamw())?;
        if let Some(m) = &moments {
            checkpoint::restore_optimizer(be, &mut tr.opt, m)?;
        }
        let steps = a.run.steps.unwrap_or(1000);
        let schedule = llama2_train::schedule::LrSchedule::Cosine { peak: a.lr, warmup: a.warmup_steps, total: steps, min_ratio: a.min_lr_ratio };
        let resolved = json!({
            "job": "pretrain", "model": cfg.to_hf_json(), "n_params": cfg.n_params(), "device": be.name(),
            "init": a.init, "preset": a.preset, "data": a.data, "val_data": a.val_data,
            "batch_size": b, "seq_len": t, "grad_accum": a.run.grad_accum, "tokens_per_step": b * t * a.run.grad_accum as usize,
            "steps": steps, "lr": a.lr, "warmup_steps": a.warmup_steps, "min_lr_ratio": a.min_lr_ratio,
            "adamw": a.opt.to_json(), "shuffle": a.shuffle, "seed": a.run.seed, "save_every": a.run.save_every,
            "keep_last": a.run.keep_last, "val_every": a.run.val_every, "val_batches": a.run.val_batches,
        });
        print_resolved(&resolved, &out)?;
        let rc = a.run.run_config("pretrain", steps, schedule, be, resolved.clone());
        let summary = run_lm(be, &mut tr, &mut train, val.as_mut().map(|v| v as &mut dyn BatchSource), &rc, &out, state, resumed)?;
        if summary.steps < steps {
            eprintln!("stopped at step {} of {steps}; continue with --resume {}", summary.steps, out.display());
            return Ok(());
        }
        let final_dir = out.join("final");
        tr.model.save(be, &final_dir, SaveDtype::F32)?;
        crate::cmd::train_common::finish(&out, &summary, &rc)?;
        eprintln!("final model: {}", final_dir.display());
        Ok(())
    }
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, PretrainJob(a))
}

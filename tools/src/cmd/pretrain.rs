//! `train-tool pretrain`: next-token pretraining on token shards with the
//! paper's recipe (PAPER.md section 3): AdamW (0.9, 0.95, eps 1e-5), weight
//! decay 0.1, clipping at 1.0, warm-up then cosine to 10% of the peak.

use crate::cmd::train_common::{lm_job, LmPlan};
use crate::device::{dispatch_dist, DeviceOpts, DistJob};
use crate::flags::{LmHeadFlags, OptFlags, RunFlags};
use anyhow::{bail, Context, Result};
use clap::Args;
use llama2_model::{Config, Model};
use llama2_runtime::comm::Comm;
use llama2_runtime::Backend;
use llama2_train::data::{BatchReader, ShardSet};
use llama2_train::run::BatchSource;
use llama2_train::schedule::LrSchedule;
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
    #[arg(long, default_value_t = 3e-4, value_parser = crate::flags::parse_lr)]
    pub lr: f64,
    /// Linear warm-up steps (the paper: 2000)
    #[arg(long, default_value_t = 2000)]
    pub warmup_steps: u64,
    /// The cosine schedule ends at this fraction of the peak (the paper: 0.1)
    #[arg(long, default_value_t = 0.1, value_parser = crate::flags::parse_unit)]
    pub min_lr_ratio: f64,
    #[command(flatten)]
    pub opt: OptFlags,
    #[command(flatten)]
    pub run: RunFlags,
    #[command(flatten)]
    pub head: LmHeadFlags,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct PretrainJob(PretrainArgs);

impl DistJob for PretrainJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B, comm: &dyn Comm<B>) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.batch_size as usize, a.seq_len as usize);
        let fresh = || -> Result<Model<B>> {
            match (&a.init, &a.preset) {
                (Some(dir), None) => Model::load_path(be, dir).with_context(|| format!("loading {}", dir.display())),
                (None, Some(p)) => Ok(Model::init_random(be, Config::preset(p, Some(a.vocab.unwrap_or(32000) as usize))?, a.run.seed)?),
                _ => bail!("give exactly one of --init DIR or --preset NAME (or --resume DIR)"),
            }
        };
        let plan = |model: &Model<B>, _: Option<&std::path::Path>| -> Result<LmPlan> {
            let cfg = &model.cfg;
            let train = BatchReader::new(ShardSet::open(&a.data)?, b, t, cfg.vocab_size, true, if a.shuffle { Some(a.run.seed) } else { None })?;
            let val: Option<Box<dyn BatchSource>> = match &a.val_data {
                Some(p) => Some(Box::new(BatchReader::new(ShardSet::open(p)?, b, t, cfg.vocab_size, false, None)?)),
                None => None,
            };
            let steps = a.run.steps.unwrap_or(1000);
            let schedule = LrSchedule::Cosine { peak: a.lr, warmup: a.warmup_steps, total: steps, min_ratio: a.min_lr_ratio };
            let mut r = a.run.resolve(be, "pretrain", cfg, vec![a.data.clone()], (b, t), steps, schedule, &a.opt);
            r.job_args = json!({
                "n_params": cfg.n_params(), "init": a.init, "preset": a.preset, "val_data": a.val_data,
                "tokens_per_step": b * t * a.run.grad_accum as usize * comm.world(), "shuffle": a.shuffle,
            })
            .as_object()
            .cloned()
            .unwrap_or_default();
            Ok(LmPlan { train: Box::new(train), val, resolved: r })
        };
        lm_job(be, comm, "pretrain", &a.run, &a.opt, &a.head, (b, t), fresh, plan)?;
        Ok(())
    }
}

pub fn run(a: PretrainArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch_dist(&dev, PretrainJob(a))
}

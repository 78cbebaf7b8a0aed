//! `train-tool eval-loss`: mean cross-entropy of a model over token shards.

use crate::device::{dispatch, DeviceOpts, Job};
use anyhow::{Context, Result};
use clap::Args;
use llama2_model::{Acts, LogitRows, Model};
use llama2_runtime::{Backend, CeGrad};
use llama2_train::data::{BatchReader, ShardSet};
use std::path::PathBuf;

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

#[derive(Args, Clone, Debug)]
pub struct EvalLossArgs {
    #[command(flatten)]
    pub md: ModelData,
    /// Stop after this many batches (default: all the data)
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batches: Option<u64>,
    #[command(flatten)]
    pub dev: DeviceOpts,
}

struct EvalJob(EvalLossArgs);

impl Job for EvalJob {
    type Out = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        let a = self.0;
        let (b, t) = (a.md.batch_size as usize, a.md.seq_len as usize);
        let (model, mut reader) = a.md.open(be)?;
        let mut acts = Acts::new(be, &model.cfg, b, t, false, LogitRows::All)?;
        let (mut sum, mut count, mut batches) = (0f64, 0usize, 0u64);
        while a.max_batches.is_none_or(|m| batches < m) {
            let Some(mb) = reader.next_batch()? else { break };
            model.forward(be, &mut acts, &mb.inputs, None)?;
            let (s, n) = model.loss(be, &mut acts, &mb.targets, CeGrad::None)?;
            sum += s;
            count += n;
            batches += 1;
        }
        if batches == 0 {
            anyhow::bail!("{}: no complete batch of {b} x {t} (+1) tokens; HINT: use a smaller --batch-size or --seq-len", a.md.data.display());
        }
        println!("{}", serde_json::json!({"loss": sum / count as f64, "batches": batches, "tokens": count}));
        Ok(())
    }
}

pub fn run(a: EvalLossArgs) -> Result<()> {
    let dev = a.dev.clone();
    dispatch(&dev, EvalJob(a))
}

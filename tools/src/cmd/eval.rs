//! `train-tool eval-loss`: mean cross-entropy of a model over token shards.

use crate::device::{dispatch, DeviceOpts, Job};
use crate::flags::ModelData;
use anyhow::Result;
use clap::Args;
use llama2_model::{Acts, LogitRows};
use llama2_runtime::{Backend, CeGrad};

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
